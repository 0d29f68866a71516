"""What every baseline shares: triplet sampling, the training loop (common/training.py, DVBPR's), evaluation and
the validation grid search.

Every model is evaluated by common/metrics.py's evaluate_ranking (AUC, and Recall@K, NDCG@K and MRR under the exact
protocol); the epoch and the setting kept are the best by `select_metric` on validation (AUC, as the paper, unless
asked otherwise).

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
from common.metrics import CUTOFFS, evaluate_ranking, evaluation_users
from common.sampling import TripletSampler
from common.seeding import seed_everything
from common.training import Trainee, beats, new_progress, train_epochs

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
    cutoffs: tuple = CUTOFFS
    select_metric: str = "valid_auc"   # a validation metric of evaluate_ranking's, named as in metrics.jsonl
    eval_users: int | None = None      # a fixed random subset of the users evaluated (None: every user)


@dataclass
class Fitted:
    model: object
    valid: dict                 # evaluate_ranking on the validation split, at the kept epoch
    epoch: int | None = None    # the epoch kept (best validation metric); None for models without training


@dataclass
class Selection:
    """The outcome of a grid search: the setting with the best validation metric, and its test metrics."""
    name: str
    params: dict
    epoch: int | None
    valid: dict
    test: dict
    trials: list = field(default_factory=list)   # every setting tried, with its validation AUCs


@torch.no_grad()
def evaluate(model, dataset, split, device, settings=None):
    """evaluate_ranking's dict of the model on a split under settings' protocol, ties and cutoffs (default:
    FitSettings'); sampled100 draws its negatives as dvbpr/main.py does (seed, seed + 1)."""
    settings = settings or FitSettings()
    if isinstance(model, torch.nn.Module):
        model.eval()
    return evaluate_ranking(dataset, model.scorer(), split=split, protocol=settings.protocol, device=device,
                            seed=settings.seed + SPLIT_SEED_OFFSET[split], ties=settings.ties,
                            cutoffs=settings.cutoffs,
                            users=evaluation_users(dataset.usernum, settings.eval_users))


def better(result, best, select_metric):
    """Whether the validation evaluation `result` beats `best` (None: nothing yet) on `select_metric`."""
    metric = select_metric.removeprefix("valid_")
    return best is None or beats(result["metrics"][metric], best["metrics"][metric])


def fit(model, dataset, loss, reg, settings, device, desc="fit"):
    """Train with Adam on `loss` through the shared loop (common/training.py), evaluate on validation after every
    epoch, keep the best epoch's weights (by settings.select_metric)."""
    ranks = Ranks(device=torch.device(device))
    model.to(ranks.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    feed = lambda rows: (tuple(part.to(ranks.device) for part in batch) for batch in rows)
    objective = lambda network, batch: loss(network, *batch, reg)

    def evaluate_epoch():
        valid = evaluate(model, dataset, "validation", ranks.device, settings)
        return {**{f"valid_{name}": value for name, value in valid["metrics"].items()}, "valid": valid}, None
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


def unlearned(model, dataset, device, settings=None):
    """A model without training or hyper-parameters (RAND, PopRank, VisRank), evaluated on validation."""
    return Fitted(model, evaluate(model, dataset, "validation", device, settings))


def parameter_grid(factors, regs):
    return [{"factors": k, "reg": reg} for k in factors for reg in regs]


def grid_search(name, dataset, train, grid, device, settings=None):
    """Train one model per setting (train(**setting) -> Fitted), select by settings.select_metric on validation
    only, and evaluate the test split for the selected model alone."""
    settings = settings or FitSettings()
    best, best_params, trials = None, None, []
    for params in tqdm(grid, desc=f"{name} grid", unit="setting", leave=False):
        fitted = train(**params)
        trials.append({**params, "epoch": fitted.epoch, "valid_all": fitted.valid["all"],
                       "valid_cold": fitted.valid["cold"]})
        if better(fitted.valid, best and best.valid, settings.select_metric):
            best, best_params = fitted, params
    test = evaluate(best.model, dataset, "test", device, settings)
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

    def settings(self, negatives=1):
        cfg = self.cfg
        return FitSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, negatives=negatives,
                           protocol=cfg.protocol, seed=cfg.seed, ties=cfg.ties, cutoffs=tuple(cfg.cutoffs),
                           select_metric=cfg.select_metric, eval_users=cfg.eval_users)

    def learned(self, build, loss, negatives=1):
        """Grid search over (factors, regulariser) of a model build(factors) trained with `loss`."""
        cfg, settings = self.cfg, self.settings(negatives)

        def train(factors, reg):
            seed_everything(cfg.seed)
            return fit(build(factors), self.dataset, loss, reg, settings, self.device,
                       desc=f"{self.label} K={factors} reg={reg}")
        return grid_search(self.label, self.dataset, train, parameter_grid(cfg.factors, cfg.regs), self.device,
                           settings)

    def unlearned(self, model):
        """A method with nothing to train or tune, evaluated once."""
        settings = self.settings()
        train = lambda: unlearned(model, self.dataset, self.device, settings)
        return grid_search(self.label, self.dataset, train, [{}], self.device, settings)
