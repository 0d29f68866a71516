"""Factorization Machine (Rendle, ICDM'10) as LightFM's hybrid model (Kula, 2015), trained with the BPR loss.

As the paper uses it, the only interactions are (user, item) and (user, item's CNN feature): a user is its
identity feature, an item is its identity feature plus its visual features f_i, and a representation is the sum
of its features' embeddings (dense features weighted by their values):

    x_ui = <v_u, v_i + E f_i> + b_i + w . f_i

(the user bias cancels in BPR and is left out).
"""
import torch
import torch.nn as nn

from baselines.bpr import bpr_loss, factor_matrix


class FactorizationMachine(nn.Module):
    def __init__(self, usernum, features, factors):
        super().__init__()
        self.itemnum, dims = features.shape
        self.register_buffer("features", features.float(), persistent=False)
        self.v_user = factor_matrix(usernum, factors)
        self.v_item = factor_matrix(self.itemnum, factors)
        self.feature_embedding = factor_matrix(dims, factors)    # E^T: one embedding per feature dimension
        self.b_item = nn.Parameter(torch.zeros(self.itemnum))
        self.w_feature = nn.Parameter(torch.zeros(dims))

    def item_vectors(self, items):
        return self.v_item[items] + self.features[items] @ self.feature_embedding

    def item_biases(self, items):
        return self.b_item[items] + self.features[items] @ self.w_feature

    def forward(self, users, items):
        return (self.v_user[users][:, None, :] * self.item_vectors(items)).sum(-1) + self.item_biases(items)

    def penalty(self, users, items):
        shared = self.feature_embedding.pow(2).sum() + self.w_feature.pow(2).sum()
        return (self.v_user[users].pow(2).sum(1) + self.v_item[items].pow(2).sum((1, 2))
                + self.b_item[items].pow(2).sum(1) + shared)

    def scorer(self):
        every_item = torch.arange(self.itemnum, device=self.features.device)
        vectors, biases = self.item_vectors(every_item), self.item_biases(every_item)
        return lambda users: biases + self.v_user[users] @ vectors.T


def column(ctx):
    return ctx.learned(lambda k: FactorizationMachine(ctx.dataset.usernum, ctx.features, k), bpr_loss)
