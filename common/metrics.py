"""How well a recommender ranks each user's held-out item: AUC (the paper's measure) and the top-K metrics of
today's papers, per user and averaged over users, in one pass over chunks of the score matrix.

Every protocol scores one held-out item per user (the validation or the test item, the "positive" i) against
candidates j and takes the mean of the per-user values, every user weighted equally.

"exact" (paper, Sec. IV-A): the candidates are every item outside the user's train ∪ validation ∪ test sets
(duplicates in a training list count once; the positive is never a candidate): full ranking. Per user the pass
counts the candidates above the positive (x_uj > x_ui) and tied with it (x_uj = x_ui); every metric follows:

    AUC_u = (#{j : x_uj < x_ui} + c * #{j : x_uj = x_ui}) / #candidates,

with c = 0 (ties="fail", the default: the paper's delta(x_ui > x_uj) counts a tie as a failure) or c = 0.5
(ties="half", the usual Mann-Whitney convention). The two differ wherever a scorer gives many items one score:
PopRank, whose score is an item's training count and most items have 0-4 of them, has a test AUC of 0.6153 All /
0.3499 Cold on the embedded catalogue with ties failing and 0.6604 / 0.4242 with ties counting half. A scorer
meant to be uninformative must therefore give continuous random scores, not a constant (which scores 0 under
"fail"); RAND (baselines/rand.py) draws them uniformly.
The top-K metrics read the positive's rank r (0 for the first place) among the candidates and itself; with one
held-out item, Recall@K = HR@K = [r < K], NDCG@K = [r < K] / log2(r + 2) (the ideal DCG is 1) and MRR = 1 / (r + 1)
(not cut at K). A tie counts the same way as in the AUC: under "fail" the positive is ranked after every candidate
tied with it (r = #above + #tied); under "half" each metric is its expectation over a uniformly random order of the
tied items (r uniform over #above ... #above + #tied), which for the AUC is the half credit and for NDCG the
tie-averaged DCG of McSherry and Najork (ECIR 2008) that scikit-learn and torchmetrics compute.
"Cold Items" (Sec. IV-C) is the same per-user value averaged over the users whose held-out item has fewer than
`cold_threshold` (5) training interactions.

"sampled100" (the original code): per user, 100 distinct item ids drawn uniformly; those in the user's training
set or equal to the positive are skipped (the other held-out item is kept), and
AUC_u = #{used j : x_ui > x_uj} / #used (ties count as failures, whatever `ties` says). The draw is made for
every user id from `seed`, so the same seed gives the same negatives in every epoch, to both splits, and to any
subset of users. The same draw gives the sampled protocol of NCF (He et al., WWW 2017): HR@10 and NDCG@10 of the
positive ranked among the first 99 used negatives, named sampled_hr@10 and sampled_ndcg@10 (ties fail). Sampled
metrics can order models differently from the full ranking (Krichene and Rendle, KDD 2020): they are there to
compare with papers that used them, not to report.

A user left with no candidate has no value: its per-user values are NaN and it is left out of the means
(`num_skipped` counts such users).

Scores come from score_fn(user_ids: LongTensor on device) -> Tensor [len(user_ids), itemnum], compared in float32.
Users are processed in chunks so that a chunk's score matrix stays within a fixed number of elements.
"""
import math
from dataclasses import field

import numpy as np
import torch

from common.errors import ConfigError, TrainingDiverged

# Score-matrix elements per chunk. On CPU a 16 MB chunk stays in cache and compares about 2x faster than 128 MB ones.
SCORE_BUDGET = {"cpu": 2**22, "cuda": 2**28}
SAMPLED_NEGATIVES = 100
NCF_NEGATIVES, NCF_CUTOFF = 99, 10   # the sampled protocol of NCF: HR@10 and NDCG@10 among 1 + 99 items
PROTOCOLS = ("exact", "sampled100")
CUTOFFS = (10, 20, 50)
TIE_CREDIT = {"fail": 0.0, "half": 0.5}
TIES = tuple(TIE_CREDIT)
TIES_HELP = ("exact protocol: a tie x_ui = x_uj counts as a failure (fail: the paper's delta(x_ui > x_uj); the "
             "held-out item ranks after the items tied with it) or as half (half: every metric is its expectation "
             "over a random order of the tied items); sampled100 always counts it as a failure")
PROTOCOL_HELP = ("exact: AUC, Recall@K, NDCG@K and MRR over every item the user has not interacted with (full "
                 "ranking); sampled100: the original code's AUC against 100 drawn items, and NCF's sampled HR@10 and "
                 "NDCG@10")
CUTOFFS_HELP = "the K of Recall@K and NDCG@K under the exact protocol"
EVAL_USERS_HELP = ("evaluate a fixed random subset of this many users (the same in every epoch and every run on the "
                   "dataset, whatever --seed; recorded in results.json), for catalogues whose every user costs too "
                   "much; None: every user")
EVAL_USERS_SEED = 0
LARGE_EVALUATION_FLOP = 1e12   # above this a stage says, before training, what its evaluations cost


# The evaluation's flags, declared once for every stage's config dataclass (common/cli.py reads help and choices).
def protocol_field():
    return field(default="exact", metadata={"help": PROTOCOL_HELP, "choices": list(PROTOCOLS)})


def cutoffs_field():
    return field(default_factory=lambda: list(CUTOFFS), metadata={"help": CUTOFFS_HELP})


def ties_field():
    return field(default="fail", metadata={"help": TIES_HELP, "choices": list(TIES)})


def eval_users_field():
    return field(default=None, metadata={"help": EVAL_USERS_HELP})
HELD_OUT_SPLITS = ("validation", "test")


def csr_from_pairs(rows, items, num_rows):
    """CSR (indptr, indices) of the (row, item) pairs, each row's items sorted and unique."""
    rows = torch.as_tensor(rows, dtype=torch.long)
    items = torch.as_tensor(items, dtype=torch.long)
    width = int(items.max()) + 1 if items.numel() else 1
    keys = torch.unique(rows * width + items)  # sorted, so rows come out in order
    rows, items = keys // width, keys % width
    indptr = torch.zeros(num_rows + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=num_rows), 0)
    return indptr, items


def unique_csr(indptr, indices):
    """The same CSR with duplicates removed and each row sorted."""
    indptr = torch.as_tensor(indptr, dtype=torch.long)
    num_rows = len(indptr) - 1
    rows = torch.repeat_interleave(torch.arange(num_rows), indptr.diff())
    return csr_from_pairs(rows, indices, num_rows)


def observed_csr(dataset):
    """Per user, the unique items of train ∪ validation ∪ test: the exclusion set of the exact protocol."""
    indptr, indices = (torch.as_tensor(a, dtype=torch.long) for a in dataset.train_csr())
    users = torch.arange(dataset.usernum)
    rows = torch.cat([torch.repeat_interleave(users, indptr.diff()), users, users])
    validation, test = (torch.as_tensor(a, dtype=torch.long) for a in (dataset.user_validation, dataset.user_test))
    items = torch.cat([indices, validation, test])
    return csr_from_pairs(rows, items, dataset.usernum)


def gather_rows(indptr, indices, rows):
    """Flattened entries of the given CSR rows: (position of the row in `rows`, item) per entry."""
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    local = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), lengths)
    first = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths)
    return local, indices[first + torch.arange(len(local), device=rows.device)]


def sample_negatives(num_users, itemnum, num_negatives=SAMPLED_NEGATIVES, seed=0):
    """[num_users, min(num_negatives, itemnum)] distinct uniform item ids per row (CPU, reproducible from seed).

    Floyd's algorithm, vectorised over users: each of the num_negatives steps draws one id per user, so the cost
    does not depend on itemnum. Row u holds user u's draw, whatever subset of users is later evaluated.
    """
    rng = torch.Generator().manual_seed(seed)
    k = min(num_negatives, itemnum)
    chosen = torch.empty(num_users, k, dtype=torch.long)
    for step, top in enumerate(range(itemnum - k, itemnum)):
        draw = torch.randint(0, top + 1, (num_users,), generator=rng)
        taken = (chosen[:, :step] == draw[:, None]).any(1)
        chosen[:, step] = torch.where(taken, top, draw)
    return chosen


def scored_chunks(score_fn, users, chunk_users, device):
    """Yields (position in users, user ids, float32 scores [B, itemnum]) over chunks of users.

    Without chunk_users, the first chunk is a single user, whose score row tells the number of items and so the
    chunk size that fits SCORE_BUDGET.
    """
    start = 0
    while start < len(users):
        size = chunk_users or 1
        batch = users[start:start + size]
        scores = score_fn(batch).float()
        # a NaN or an infinity anywhere makes the sum non-finite: the (slower) element-wise check runs only then,
        # and clears scores whose sum merely overflowed
        if not torch.isfinite(scores.sum()) and not torch.isfinite(scores).all():
            user = int(batch[~torch.isfinite(scores).all(dim=1)][0])
            raise TrainingDiverged(f"the model's scores are NaN or infinite (e.g. for user {user}): the AUC is "
                                   "undefined; the model diverged")
        yield start, batch, scores
        if chunk_users is None:
            chunk_users = max(1, SCORE_BUDGET[device.type] // scores.shape[1])
        start += size


def exact_counts(score_fn, positives, exclude_indptr, exclude_indices, users=None, device="cpu", chunk_users=None):
    """Per user of `users` (default: all), the int64 rows [3, len(users)] on CPU of (above, tied, candidates): how
    many candidates score above the positive, how many the same, and how many candidates there are.

    positives: held-out item per user id [usernum]. The exclusion CSR (rows = user ids) may hold duplicates and
    need not hold the positive. Rather than masking whole score rows, the comparisons are counted over all items
    and those of the (few) excluded items are subtracted; two comparisons per score are all the pass does.
    """
    device = torch.device(device)
    positives = torch.as_tensor(positives, dtype=torch.long).to(device)
    indptr, indices = (a.to(device) for a in unique_csr(exclude_indptr, exclude_indices))
    users = torch.arange(len(positives)) if users is None else torch.as_tensor(users, dtype=torch.long)
    users = users.to(device)
    counts = torch.empty(3, len(users), dtype=torch.long, device=device)
    buffer = torch.empty(0, device=device)
    for start, batch, scores in scored_chunks(score_fn, users, chunk_users, device):
        pos = positives[batch]
        pos_scores = scores.gather(1, pos[:, None])
        # Comparing into floats and summing them counts about 3x faster on the CPU than summing bools, which are
        # cast first; a sum of 0s and 1s is exact while below 2**24 in float32 (2**53 in float64). One buffer for
        # every chunk spares the page faults of a fresh one.
        if buffer.numel() < scores.numel():
            buffer = torch.empty(scores.numel(), device=device,
                                 dtype=torch.float32 if scores.shape[1] < 2**24 else torch.float64)
        flags = buffer[:scores.numel()].view(scores.shape)
        above = torch.gt(scores, pos_scores, out=flags).sum(1).long()
        tied = torch.ge(scores, pos_scores, out=flags).sum(1).long() - above - 1  # the positive ties with itself
        local, items = gather_rows(indptr, indices, batch)
        keep = items != pos[local]
        local, items = local[keep], items[keep]
        excluded_scores, reference = scores[local, items], pos_scores[local, 0]
        above.index_add_(0, local, -(excluded_scores > reference).long())
        tied.index_add_(0, local, -(excluded_scores == reference).long())
        candidates = scores.shape[1] - 1 - torch.bincount(local, minlength=len(batch))
        counts[:, start:start + len(batch)] = torch.stack([above, tied, candidates])
    return counts.cpu()


def sampled_counts(score_fn, positives, train_indptr, train_indices, negatives, users=None, device="cpu",
                   chunk_users=None, ranked=NCF_NEGATIVES):
    """Counts as exact_counts' against the drawn negatives ([usernum, k], e.g. from sample_negatives), those in the
    user's training set or equal to the positive skipped: ([3, len(users)] over every negative used,
    [3, len(users)] over the first `ranked` of them), int64 on CPU."""
    device = torch.device(device)
    positives = torch.as_tensor(positives, dtype=torch.long).to(device)
    negatives = torch.as_tensor(negatives, dtype=torch.long).to(device)
    indptr = torch.as_tensor(train_indptr, dtype=torch.long).to(device)
    indices = torch.as_tensor(train_indices, dtype=torch.long).to(device)
    users = torch.arange(len(positives)) if users is None else torch.as_tensor(users, dtype=torch.long)
    users = users.to(device)
    counts = torch.empty(2, 3, len(users), dtype=torch.long, device=device)
    for start, batch, scores in scored_chunks(score_fn, users, chunk_users, device):
        pos, neg = positives[batch], negatives[batch]
        excluded = torch.zeros_like(scores, dtype=torch.bool)
        excluded[gather_rows(indptr, indices, batch)] = True
        excluded.scatter_(1, pos[:, None], True)
        used = ~excluded.gather(1, neg)
        pos_scores, neg_scores = scores.gather(1, pos[:, None]), scores.gather(1, neg)
        for row, kept in enumerate((used, used & (used.cumsum(1) <= ranked))):
            above = ((neg_scores > pos_scores) & kept).sum(1)
            tied = ((neg_scores == pos_scores) & kept).sum(1)
            counts[row, :, start:start + len(batch)] = torch.stack([above, tied, kept.sum(1)])
    return tuple(counts.cpu())


def auc_from_counts(counts, ties="fail"):
    """Per-user AUC (float64, NaN without candidates) from exact_counts' rows."""
    above, tied, candidates = counts
    below = candidates - above - tied
    auc = (below.double() + TIE_CREDIT[ties] * tied.double()) / candidates
    return torch.where(candidates > 0, auc, math.nan)


def discounts(cutoff):
    """[cutoff + 1]: entry n is the DCG of ranks 0 .. n-1, sum 1 / log2(r + 2)."""
    gains = 1 / torch.log2(torch.arange(cutoff, dtype=torch.float64) + 2)
    return torch.cat([torch.zeros(1, dtype=torch.float64), gains.cumsum(0)])


def topk_from_counts(counts, cutoffs=CUTOFFS, ties="fail"):
    """{"recall@K", "ndcg@K" for each K in cutoffs, "mrr": per-user float64, NaN without candidates} from
    exact_counts' rows: the positive's rank r is uniform over first .. first + spread - 1 (see the module's
    docstring) and each metric is its mean over those ranks."""
    above, tied, candidates = (c.double() for c in counts)
    first, spread = (above, tied + 1) if ties == "half" else (above + tied, torch.ones_like(tied))
    end = first + spread  # one past the last rank
    metrics = {}
    for k in cutoffs:
        metrics[f"recall@{k}"] = (k - first).clamp(min=0).minimum(spread) / spread
    for k in cutoffs:
        dcg = discounts(k)
        metrics[f"ndcg@{k}"] = (dcg[end.clamp(max=k).long()] - dcg[first.clamp(max=k).long()]) / spread
    # the mean of 1 / (r + 1) over the ranks is a difference of harmonic numbers, H(n) = digamma(n + 1) + gamma
    harmonic = (torch.digamma(end + 1) - torch.digamma(first + 1)) / spread
    metrics["mrr"] = torch.where(spread == 1, 1 / (first + 1), harmonic)
    return {name: torch.where(candidates > 0, value, math.nan) for name, value in metrics.items()}


def metric_names(protocol="exact", cutoffs=CUTOFFS):
    """The names of the metrics evaluate_ranking gives under `protocol` (each also with a _cold variant)."""
    if protocol == "exact":
        return ["auc", *(f"recall@{k}" for k in cutoffs), *(f"ndcg@{k}" for k in cutoffs), "mrr"]
    return ["auc", f"sampled_hr@{NCF_CUTOFF}", f"sampled_ndcg@{NCF_CUTOFF}"]


def selectable_metrics(protocol="exact", cutoffs=CUTOFFS):
    """The epoch records' validation metrics a run can be selected by: valid_auc, valid_ndcg@20_cold, ..."""
    return [f"valid_{name}{cold}" for name in metric_names(protocol, cutoffs) for cold in ("", "_cold")]


def check_metric_choice(name, flag, choices):
    if name not in choices:
        raise ConfigError(f"{flag} {name} is not one of the metrics evaluated: {' '.join(choices)}")


def check_cutoffs(cutoffs):
    if any(k < 1 for k in cutoffs):
        raise ConfigError(f"--cutoffs must be at least 1, got {' '.join(map(str, cutoffs))}")


def per_user_auc_exact(score_fn, positives, exclude_indptr, exclude_indices, users=None, device="cpu",
                       chunk_users=None, ties="fail"):
    """Exact per-user AUC (a tie counts as a failure, or half with ties="half"), float64 [len(users)] on CPU, NaN
    for a user with no negative (arguments as exact_counts')."""
    counts = exact_counts(score_fn, positives, exclude_indptr, exclude_indices, users, device, chunk_users)
    return auc_from_counts(counts, ties)


def per_user_auc_sampled(score_fn, positives, train_indptr, train_indices, negatives, users=None, device="cpu",
                         chunk_users=None):
    """Original-code per-user AUC against the drawn negatives ([usernum, k], e.g. from sample_negatives):
    those in the user's training set or equal to the positive are skipped; strict wins / negatives used.
    float64 [len(users)] on CPU, NaN for a user with no negative used."""
    counts, _ = sampled_counts(score_fn, positives, train_indptr, train_indices, negatives, users, device,
                               chunk_users)
    return auc_from_counts(counts)


def per_user_metrics(dataset, score_fn, positives, users, protocol, device, chunk_users, seed, ties, cutoffs):
    """{metric name: per-user float64 [len(users)]} from one pass over the users' chunked scores."""
    if protocol == "exact":
        counts = exact_counts(score_fn, positives, *observed_csr(dataset), users, device, chunk_users)
        return {"auc": auc_from_counts(counts, ties), **topk_from_counts(counts, cutoffs, ties)}
    negatives = sample_negatives(dataset.usernum, dataset.itemnum, SAMPLED_NEGATIVES, seed)
    counts, ranked = sampled_counts(score_fn, positives, *dataset.train_csr(), negatives, users, device, chunk_users)
    topk = topk_from_counts(ranked, (NCF_CUTOFF,))
    return {"auc": auc_from_counts(counts), f"sampled_hr@{NCF_CUTOFF}": topk[f"recall@{NCF_CUTOFF}"],
            f"sampled_ndcg@{NCF_CUTOFF}": topk[f"ndcg@{NCF_CUTOFF}"]}


def tie_rule(protocol, ties):
    """How a tie counts under `protocol` with the setting `ties`: sampled100 always counts it as a failure."""
    return ties if protocol == "exact" else "fail"


def evaluate_ranking(dataset, score_fn, split="validation", protocol="exact", device="cpu", chunk_users=None,
                     cold_threshold=5, seed=0, users=None, combine=None, ties="fail", cutoffs=CUTOFFS):
    """Every metric of score_fn on the validation or test items of `users` (default: all), All and Cold Items,
    from one pass over the scores.

    Sharded evaluation: each rank passes its share of the users and `combine` (e.g. Ranks.gather), which
    concatenates the ranks' per-user results before the means are taken.
    Returns dict(metrics ({name: mean over the users, name + "_cold": over the cold ones, None without any} for
    the names of metric_names(protocol, cutoffs)), all and cold (the AUCs, as metrics' auc and auc_cold),
    num_users (users averaged), num_cold_users, num_skipped, protocol, ties (the rule applied, see tie_rule),
    split). `seed` only matters for "sampled100", `ties` and `cutoffs` only for "exact".
    """
    if split not in HELD_OUT_SPLITS:
        raise ValueError(f"split must be one of {HELD_OUT_SPLITS}, got {split!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    positives = torch.as_tensor(dataset.user_validation if split == "validation" else dataset.user_test)
    users = torch.arange(dataset.usernum) if users is None else torch.as_tensor(users, dtype=torch.long)
    per_user = per_user_metrics(dataset, score_fn, positives, users, protocol, device, chunk_users, seed, ties,
                                cutoffs)
    counts = torch.as_tensor(np.asarray(dataset.item_train_counts()))
    table = torch.stack([*per_user.values(), (counts[positives[users]] < cold_threshold).double()], 1)
    if combine is not None:
        table = combine(table)
    values, cold = table[:, :-1], table[:, -1].bool()
    defined = ~torch.isnan(values[:, 0])
    metrics = {}
    for name, column in zip(per_user, values.unbind(1)):
        metrics[name] = column[defined].mean().item() if defined.any() else math.nan
        metrics[f"{name}_cold"] = column[defined & cold].mean().item() if (defined & cold).any() else None
    return dict(
        metrics=metrics,
        all=metrics["auc"],
        cold=metrics["auc_cold"],
        num_users=int(defined.sum()),
        num_cold_users=int((defined & cold).sum()),
        num_skipped=int((~defined).sum()),
        protocol=protocol,
        ties=tie_rule(protocol, ties),
        split=split,
    )


def evaluate_auc(dataset, score_fn, split="validation", protocol="exact", device="cpu", chunk_users=None,
                 cold_threshold=5, seed=0, users=None, combine=None, ties="fail"):
    """evaluate_ranking without the top-K cutoffs: the AUCs (all, cold) and the sampled metrics of sampled100."""
    return evaluate_ranking(dataset, score_fn, split, protocol, device, chunk_users, cold_threshold, seed, users,
                            combine, ties, cutoffs=())


def epoch_metrics(valid, test, protocol):
    """An epoch record's metrics from evaluate_ranking's validation and test dicts: valid_auc, valid_auc_cold,
    test_auc, test_auc_cold, then the others in the same scheme (valid_recall@20, test_ndcg@20_cold, ...)."""
    splits = (("valid", valid["metrics"]), ("test", test["metrics"]))
    auc = {f"{split}_{name}": metrics[name] for split, metrics in splits for name in ("auc", "auc_cold")}
    others = {f"{split}_{name}": value for split, metrics in splits for name, value in metrics.items()}
    return dict(auc, **others, protocol=protocol)


def split_metrics(record):
    """The validation and test metrics of an epoch record (or of a results.json), by their record names."""
    return {name: value for name, value in record.items() if name.startswith(("valid_", "test_"))}


def evaluation_users(usernum, eval_users=None):
    """The users an evaluation averages over, sorted: every user, or a random subset of `eval_users` of them that
    depends on nothing else, so that runs of different seeds and methods evaluate the same users."""
    if eval_users is None or eval_users >= usernum:
        return torch.arange(usernum)
    generator = torch.Generator().manual_seed(EVAL_USERS_SEED)
    return torch.randperm(usernum, generator=generator)[:eval_users].sort().values


def evaluation_cost(dataset, k, eval_users=None):
    """A line on what one epoch's evaluation (validation and test) costs at least, when that is large; else None."""
    num_users = dataset.usernum if eval_users is None else min(eval_users, dataset.usernum)
    flop = 2 * 2 * num_users * dataset.itemnum * k
    if flop < LARGE_EVALUATION_FLOP:
        return None
    return (f"each epoch's evaluation scores {num_users:,} users x {dataset.itemnum:,} items twice, at least "
            f"{flop / 1e12:.1f} TFLOP: some {flop / 100e9 / 60 * 2:.0f} min at 100 GFLOP/s with the counting; "
            "--eval-users N evaluates a fixed random subset of N users instead")


def evaluate_splits(dataset, score_fn, cfg, ranks):
    """evaluate_ranking's (validation, test) dicts of score_fn under a stage's settings (cfg: protocol, ties,
    cutoffs, cold_threshold, eval_chunk, eval_users, seed), the users sharded over `ranks`; sampled100 draws the
    validation negatives from seed and the test ones from seed + 1, as the original did."""
    users = evaluation_users(dataset.usernum, cfg.eval_users)
    options = dict(protocol=cfg.protocol, ties=cfg.ties, device=ranks.device, chunk_users=cfg.eval_chunk,
                   cold_threshold=cfg.cold_threshold, users=users[list(ranks.shard(len(users)))],
                   combine=ranks.gather, cutoffs=cfg.cutoffs)
    return (evaluate_ranking(dataset, score_fn, split="validation", seed=cfg.seed, **options),
            evaluate_ranking(dataset, score_fn, split="test", seed=cfg.seed + 1, **options))
