"""GMF and MLP, the two neural collaborative filtering models of He et al. (WWW'17), trained as NCF trains them:
the log loss (binary cross-entropy) of each observed (u, i) against NEGATIVES_PER_POSITIVE unobserved items.

    GMF: x_ui = h . (p_u * q_i)
    MLP: x_ui = h . phi([p_u, q_i]),  phi: the NCF tower 2K -> K -> K/2 with ReLUs

Both learn from the interactions alone: they are content-unaware, like BPR-MF.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines.bpr import factor_matrix

NEGATIVES_PER_POSITIVE = 4  # NCF's sampling ratio
MLP_ACTIVATION_BUDGET = {"cpu": 2**24, "cuda": 2**27}   # hidden activations per scoring pass of the MLP


def log_loss(model, users, positives, negatives, reg):
    items = torch.cat([positives[:, None], negatives], dim=1)
    scores = model(users, items)
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1
    return F.binary_cross_entropy_with_logits(scores, labels) + reg / 2 * model.penalty(users, items).mean()


class GMF(nn.Module):
    def __init__(self, usernum, itemnum, factors):
        super().__init__()
        self.itemnum = itemnum
        self.p_user = factor_matrix(usernum, factors)
        self.q_item = factor_matrix(itemnum, factors)
        self.h = nn.Parameter(torch.ones(factors))   # GMF starts as plain MF and learns the weighting

    def forward(self, users, items):
        return (self.p_user[users][:, None, :] * self.q_item[items]) @ self.h

    def penalty(self, users, items):
        return self.p_user[users].pow(2).sum(1) + self.q_item[items].pow(2).sum((1, 2)) + self.h.pow(2).sum()

    def scorer(self):
        return lambda users: (self.p_user[users] * self.h) @ self.q_item.T


class MLP(nn.Module):
    def __init__(self, usernum, itemnum, factors):
        super().__init__()
        self.itemnum = itemnum
        self.p_user = factor_matrix(usernum, factors)
        self.q_item = factor_matrix(itemnum, factors)
        self.layer1 = nn.Linear(2 * factors, factors)
        self.layer2 = nn.Linear(factors, max(factors // 2, 1))
        self.h = nn.Linear(max(factors // 2, 1), 1)
        for layer in (self.layer1, self.layer2, self.h):   # NCF's (Keras') initialisation
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def tower(self, first_layer):
        """The tower above the first layer's pre-activation; [p_u, q_i] W1^T splits into a user and an item part."""
        return self.h(F.relu(self.layer2(F.relu(first_layer))))[..., 0]

    def user_part(self, users):
        return self.p_user[users] @ self.layer1.weight[:, :self.q_item.shape[1]].T + self.layer1.bias

    def item_part(self, items):
        return self.q_item[items] @ self.layer1.weight[:, self.q_item.shape[1]:].T

    def forward(self, users, items):
        return self.tower(self.user_part(users)[:, None, :] + self.item_part(items))

    def penalty(self, users, items):
        shared = sum(layer.weight.pow(2).sum() for layer in (self.layer1, self.layer2, self.h))
        return self.p_user[users].pow(2).sum(1) + self.q_item[items].pow(2).sum((1, 2)) + shared

    def scorer(self):
        items = self.item_part(torch.arange(self.itemnum, device=self.q_item.device))
        rows = max(1, MLP_ACTIVATION_BUDGET[items.device.type] // items.numel())

        def score(users):
            user_parts = self.user_part(users)
            return torch.cat([self.tower(part[:, None, :] + items) for part in user_parts.split(rows)])
        return score


def gmf_column(ctx):
    return ctx.learned(lambda k: GMF(ctx.dataset.usernum, ctx.dataset.itemnum, k), log_loss, NEGATIVES_PER_POSITIVE)


def mlp_column(ctx):
    return ctx.learned(lambda k: MLP(ctx.dataset.usernum, ctx.dataset.itemnum, k), log_loss, NEGATIVES_PER_POSITIVE)
