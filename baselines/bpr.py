"""BPR-MF (Rendle et al., UAI'09): matrix factorisation, paper eq. 1, trained with the BPR loss.

    x_ui = alpha + beta_u + beta_i + gamma_u . gamma_i

alpha and beta_u are the same for all of a user's items, cancel in x_ui - x_uj and are left out.
The BPR loss here is also FM's and VBPR's.
"""
import torch
import torch.nn as nn

from common.bpr import bpr_loss as bpr


def factor_matrix(rows, factors):
    return nn.Parameter(torch.randn(rows, factors) * 0.01)


def bpr_loss(model, users, positives, negatives, reg):
    """Mean over triplets of -ln sigma(x_ui - x_uj) + reg/2 * (squared norms of the parameters the triplet uses),
    i.e. BPR-Opt as Rendle's SGD applies it; parameters shared by all items count once per triplet."""
    items = torch.cat([positives[:, None], negatives], dim=1)
    scores = model(users, items)
    return bpr(scores[:, :1] - scores[:, 1:], "mean") + reg / 2 * model.penalty(users, items).mean()


class BPRMF(nn.Module):
    def __init__(self, usernum, itemnum, factors):
        super().__init__()
        self.itemnum = itemnum
        self.gamma_user = factor_matrix(usernum, factors)
        self.gamma_item = factor_matrix(itemnum, factors)
        self.beta_item = nn.Parameter(torch.zeros(itemnum))

    def forward(self, users, items):
        preference = (self.gamma_user[users][:, None, :] * self.gamma_item[items]).sum(-1)
        return self.beta_item[items] + preference

    def penalty(self, users, items):
        return (self.gamma_user[users].pow(2).sum(1) + self.gamma_item[items].pow(2).sum((1, 2))
                + self.beta_item[items].pow(2).sum(1))

    def scorer(self):
        return lambda users: self.beta_item + self.gamma_user[users] @ self.gamma_item.T


def column(ctx):
    return ctx.learned(lambda k: BPRMF(ctx.dataset.usernum, ctx.dataset.itemnum, k), bpr_loss)
