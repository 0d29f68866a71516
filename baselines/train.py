"""What every baseline shares: triplet sampling, the training loop (common/training.py, DVBPR's), evaluation and
the validation grid search.

A baseline is an object with `scorer() -> score_fn(user_ids) -> [B, itemnum]` (item-side tables computed once
per call, for evaluation). A learned baseline is also an nn.Module with
    forward(users [B], items [B, T]) -> scores [B, T]
    penalty(users [B], items [B, T]) -> [B]: the squared norms of the parameters each row's scores use
and is trained by `fit` with a loss(model, users, positives, negatives, reg) -> scalar:
BPR (bpr.py), WARP (warp.py) or NCF's log loss (ncf.py).

Triplets come from DVBPR's sampler (common/sampling.py): u uniform over users, i uniform over u's training items,
negatives uniform over the items outside u's training set; an epoch is as many triplets as training interactions.
"""
import copy
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from common.distributed import Ranks
from common.metrics import evaluate_auc
from common.sampling import TripletSampler
from common.seeding import seed_everything
from common.training import Trainee, new_progress, train_epochs

SPLIT_SEED_OFFSET = {"validation": 0, "test": 1}


@dataclass
class FitSettings:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 0.005
    negatives: int = 1          # drawn per positive: 1 for BPR, WARP's maximum trials, NCF's 4
    protocol: str = "exact"
    seed: int = 0
    ties: str = "fail"
    lr_schedule: str = "constant"   # the shared loop's settings, at the baselines' fixed values
    warmup_epochs: float = 0.0
    select: str = "best-valid"
    bf16: bool = False


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


@torch.no_grad()
def evaluate(model, dataset, split, device, protocol="exact", seed=0, ties="fail"):
    """AUC dict of the model on a split; sampled100 draws its negatives as dvbpr/main.py does (seed, seed + 1)."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    return evaluate_auc(dataset, model.scorer(), split=split, protocol=protocol, device=device,
                        seed=seed + SPLIT_SEED_OFFSET[split], ties=ties)


def fit(model, dataset, loss, reg, settings, device, desc="fit"):
    """Train with Adam on `loss` through the shared loop (common/training.py), evaluate on validation after every
    epoch, keep the best epoch's weights."""
    ranks = Ranks(device=torch.device(device))
    model.to(ranks.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    feed = lambda rows: (tuple(part.to(ranks.device) for part in batch) for batch in rows)
    objective = lambda network, batch: loss(network, *batch, reg)

    def evaluate_epoch():
        valid = evaluate(model, dataset, "validation", ranks.device, settings.protocol, settings.seed, settings.ties)
        return dict(valid_auc=valid["all"], valid=valid), None
    trainee = Trainee(model, optimizer, TripletSampler(dataset, settings.seed), feed, objective, evaluate_epoch,
                      settings.negatives)
    kept_state = {}

    def keep(record, _):
        if progress["kept"] is record:
            kept_state.update(copy.deepcopy(model.state_dict()))
    progress = new_progress()
    train_epochs(trainee, settings, ranks, progress, dataset.num_train_interactions, keep, desc=f"{desc} ")
    model.load_state_dict(kept_state)
    return Fitted(model, progress["kept"]["valid"], progress["kept"]["epoch"])


def unlearned(model, dataset, device, protocol="exact", seed=0, ties="fail"):
    """A model without training or hyper-parameters (RAND, PopRank, VisRank), evaluated on validation."""
    return Fitted(model, evaluate(model, dataset, "validation", device, protocol, seed, ties))


def parameter_grid(factors, regs):
    return [{"factors": k, "reg": reg} for k in factors for reg in regs]


def grid_search(name, dataset, train, grid, device, protocol="exact", seed=0, ties="fail"):
    """Train one model per setting (train(**setting) -> Fitted), select by validation All-Items AUC only,
    and evaluate the test split for the selected model alone."""
    best, best_params, trials = None, None, []
    for params in tqdm(grid, desc=f"{name} grid", unit="setting", leave=False):
        fitted = train(**params)
        trials.append({**params, "epoch": fitted.epoch, "valid_all": fitted.valid["all"],
                       "valid_cold": fitted.valid["cold"]})
        if best is None or fitted.valid["all"] > best.valid["all"]:
            best, best_params = fitted, params
    test = evaluate(best.model, dataset, "test", device, protocol, seed, ties)
    return Selection(name, best_params, best.epoch, best.valid, test, trials)


@dataclass
class Context:
    """What every method of Table III runs with; `label` is the method's column."""
    label: str
    dataset: object
    features: torch.Tensor | None
    cfg: object
    device: torch.device
    out: object
    embedded: bool

    def learned(self, build, loss, negatives=1):
        """Grid search over (factors, regulariser) of a model build(factors) trained with `loss`."""
        cfg = self.cfg
        settings = FitSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, negatives=negatives,
                               protocol=cfg.protocol, seed=cfg.seed, ties=cfg.ties)

        def train(factors, reg):
            seed_everything(cfg.seed)
            return fit(build(factors), self.dataset, loss, reg, settings, self.device,
                       desc=f"{self.label} K={factors} reg={reg}")
        return grid_search(self.label, self.dataset, train, parameter_grid(cfg.factors, cfg.regs), self.device,
                           cfg.protocol, cfg.seed, cfg.ties)

    def unlearned(self, model):
        """A method with nothing to train or tune, evaluated once."""
        cfg = self.cfg
        train = lambda: unlearned(model, self.dataset, self.device, cfg.protocol, cfg.seed, cfg.ties)
        return grid_search(self.label, self.dataset, train, [{}], self.device, cfg.protocol, cfg.seed, cfg.ties)
