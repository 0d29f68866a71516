"""VBPR (He & McAuley, AAAI'16), paper eq. 2 in full, trained with the BPR loss:

    x_ui = alpha + beta_u + beta_i + gamma_u . gamma_i + theta_u . (E f_i) + beta' . f_i

gamma: non-visual factors, theta_u: the user's visual factors, E: the embedding of the pre-trained CNN feature
f_i into the visual factor space, beta': the visual bias. alpha and beta_u cancel in BPR and are left out.
The visual and non-visual factor spaces get the same width (the grid's `factors`).
"""
import torch
import torch.nn as nn

from baselines.bpr import bpr_loss, factor_matrix


class VBPR(nn.Module):
    def __init__(self, usernum, features, factors):
        super().__init__()
        self.itemnum, dims = features.shape
        self.register_buffer("features", features.float(), persistent=False)
        self.beta_item = nn.Parameter(torch.zeros(self.itemnum))
        self.gamma_user = factor_matrix(usernum, factors)
        self.gamma_item = factor_matrix(self.itemnum, factors)
        self.theta_user = factor_matrix(usernum, factors)
        self.embedding = factor_matrix(dims, factors)            # E^T
        self.beta_visual = nn.Parameter(torch.zeros(dims))     # beta'

    def forward(self, users, items):
        features = self.features[items]
        non_visual = (self.gamma_user[users][:, None, :] * self.gamma_item[items]).sum(-1)
        visual = (self.theta_user[users][:, None, :] * (features @ self.embedding)).sum(-1)
        return self.beta_item[items] + non_visual + visual + features @ self.beta_visual

    def penalty(self, users, items):
        shared = self.embedding.pow(2).sum() + self.beta_visual.pow(2).sum()
        return (self.gamma_user[users].pow(2).sum(1) + self.theta_user[users].pow(2).sum(1)
                + self.gamma_item[items].pow(2).sum((1, 2)) + self.beta_item[items].pow(2).sum(1) + shared)

    def scorer(self):
        visual_items = self.features @ self.embedding
        biases = self.beta_item + self.features @ self.beta_visual
        return lambda users: (biases + self.gamma_user[users] @ self.gamma_item.T
                              + self.theta_user[users] @ visual_items.T)


def column(ctx):
    return ctx.learned(lambda k: VBPR(ctx.dataset.usernum, ctx.features, k), bpr_loss)
