"""VisRank: a content-based nearest-neighbour ranking by pre-trained visual features.

The paper ranks items by their average distance to the items the user bought; the distance here is the cosine
similarity of the CNN features: x_ui = mean over j in I_u+ of cos(f_i, f_j) = <mean_j f_j/|f_j|, f_i/|f_i|>.
"""
import torch
import torch.nn.functional as F

from common.metrics import gather_rows


class VisRank:
    def __init__(self, dataset, features):
        indptr, items = dataset.train_csr()
        self.unit_features = F.normalize(features.float(), dim=1)
        self.indptr = torch.as_tensor(indptr, dtype=torch.long, device=features.device)
        self.items = torch.as_tensor(items, dtype=torch.long, device=features.device)

    def user_profiles(self, users):
        """Mean unit feature of each user's training items."""
        rows, bought = gather_rows(self.indptr, self.items, users)
        total = torch.zeros(len(users), self.unit_features.shape[1], device=users.device)
        total.index_add_(0, rows, self.unit_features[bought])
        return total / (self.indptr[users + 1] - self.indptr[users]).clamp(min=1)[:, None]

    def scorer(self):
        return lambda users: self.user_profiles(users) @ self.unit_features.T


def column(ctx):
    return ctx.unlearned(VisRank(ctx.dataset, ctx.features))
