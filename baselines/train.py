"""What every baseline shares: triplet sampling, the training loop, evaluation and the validation grid search.

A baseline is an object with `scorer() -> score_fn(user_ids) -> [B, itemnum]` (item-side tables computed once
per call, for evaluation). A learned baseline is also an nn.Module with
    forward(users [B], items [B, T]) -> scores [B, T]
    penalty(users [B], items [B, T]) -> [B]: the squared norms of the parameters each row's scores use
and is trained by `fit` with a loss(model, users, positives, negatives, reg) -> scalar:
BPR (bpr.py), WARP (warp.py) or NCF's log loss (ncf.py).

Triplets are drawn as DVBPR draws them (reference §3.5): u uniform over users, i uniform over u's training items,
negatives uniform over the items outside u's training set; an epoch is as many triplets as training interactions.
"""
import copy
import math
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from common.data import DatasetError
from common.metrics import evaluate_auc

SPLIT_SEED_OFFSET = {"validation": 0, "test": 1}


@dataclass
class FitSettings:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 0.005
    negatives: int = 1          # drawn per positive: 1 for BPR, WARP's maximum trials, NCF's 4
    protocol: str = "exact"
    seed: int = 0


@dataclass
class Fitted:
    model: object
    valid: dict                 # evaluate_auc on the validation split, at the kept epoch
    epoch: int | None = None    # the epoch kept (best validation AUC); None for models without training


@dataclass
class Selection:
    """The outcome of a grid search: the setting with the best validation AUC, and its test AUC."""
    name: str
    params: dict
    epoch: int | None
    valid: dict
    test: dict
    trials: list = field(default_factory=list)   # every setting tried, with its validation AUC


class Interactions:
    """The training (user, item) pairs of a dataset on a device, and the triplet sampler."""

    def __init__(self, dataset, device):
        indptr, items = dataset.train_csr()
        self.device = torch.device(device)
        self.indptr = torch.as_tensor(indptr, dtype=torch.long, device=self.device)
        self.items = torch.as_tensor(items, dtype=torch.long, device=self.device)
        self.lengths = self.indptr.diff()
        self.usernum, self.itemnum = dataset.usernum, dataset.itemnum
        users = torch.repeat_interleave(torch.arange(self.usernum, device=self.device), self.lengths)
        self.keys = torch.unique(users * self.itemnum + self.items)   # sorted, for membership tests
        self.num_interactions = len(self.items)
        distinct = torch.bincount(self.keys // self.itemnum, minlength=self.usernum)
        if (distinct == 0).any() or (distinct == self.itemnum).any():
            offender = int(torch.nonzero((distinct == 0) | (distinct == self.itemnum))[0])
            raise DatasetError(f"user {offender} has {int(distinct[offender])} distinct training items of "
                               f"{self.itemnum}: triplets need a positive and a negative for every user")

    def contains(self, users, items):
        """Whether each (user, item) is a training pair; users broadcast against items."""
        keys = users * self.itemnum + items
        found = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        return self.keys[found] == keys

    def sample(self, batch_size, num_negatives, generator):
        """users [B], positives [B], negatives [B, num_negatives]."""
        users = torch.randint(self.usernum, (batch_size,), device=self.device, generator=generator)
        offsets = (torch.rand(batch_size, device=self.device, generator=generator) * self.lengths[users]).long()
        positives = self.items[self.indptr[users] + offsets]
        negatives = torch.randint(self.itemnum, (batch_size, num_negatives), device=self.device, generator=generator)
        while (taken := self.contains(users[:, None], negatives)).any():
            negatives[taken] = torch.randint(self.itemnum, (int(taken.sum()),), device=self.device,
                                             generator=generator)
        return users, positives, negatives


@torch.no_grad()
def evaluate(model, dataset, split, device, protocol="exact", seed=0):
    """AUC dict of the model on a split; sampled100 draws its negatives as dvbpr/main.py does (seed, seed + 1)."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    return evaluate_auc(dataset, model.scorer(), split=split, protocol=protocol, device=device,
                        seed=seed + SPLIT_SEED_OFFSET[split])


def fit(model, dataset, loss, reg, settings, device, desc="fit"):
    """Train with Adam on `loss`, evaluate on validation after every epoch, keep the best epoch's weights."""
    device = torch.device(device)
    model.to(device)
    data = Interactions(dataset, device)
    generator = torch.Generator(device).manual_seed(settings.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    steps = math.ceil(data.num_interactions / settings.batch_size)
    best, best_state = None, None
    bar = tqdm(range(1, settings.epochs + 1), desc=desc, unit="epoch", leave=False)
    for epoch in bar:
        model.train()
        for _ in range(steps):
            value = loss(model, *data.sample(settings.batch_size, settings.negatives, generator), reg)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
        valid = evaluate(model, dataset, "validation", device, settings.protocol, settings.seed)
        if best is None or valid["all"] > best.valid["all"]:
            best = Fitted(model, valid, epoch)
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{value.item():.4f}", valid_auc=f"{valid['all']:.4f}", best_epoch=best.epoch)
    model.load_state_dict(best_state)
    return best


def unlearned(model, dataset, device, protocol="exact", seed=0):
    """A model without training or hyper-parameters (RAND, PopRank, VisRank), evaluated on validation."""
    return Fitted(model, evaluate(model, dataset, "validation", device, protocol, seed))


def parameter_grid(factors, regs):
    return [{"factors": k, "reg": reg} for k in factors for reg in regs]


def grid_search(name, dataset, train, grid, device, protocol="exact", seed=0):
    """Train one model per setting (train(**setting) -> Fitted), select by validation All-Items AUC only,
    and evaluate the test split for the selected model alone."""
    best, best_params, trials = None, None, []
    for params in tqdm(grid, desc=f"{name} grid", unit="setting", leave=False):
        fitted = train(**params)
        trials.append({**params, "epoch": fitted.epoch, "valid_all": fitted.valid["all"],
                       "valid_cold": fitted.valid["cold"]})
        if best is None or fitted.valid["all"] > best.valid["all"]:
            best, best_params = fitted, params
    test = evaluate(best.model, dataset, "test", device, protocol, seed)
    return Selection(name, best_params, best.epoch, best.valid, test, trials)
