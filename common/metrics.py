"""AUC of a recommender, per user and averaged over users, in the paper's and the original code's protocols.

Both protocols score one held-out item per user (the validation or the test item, the "positive" i) against
negatives j and take the mean of the per-user AUCs, every user weighted equally.

"exact" (paper, Sec. IV-A): the negatives are every item outside the user's train ∪ validation ∪ test sets
(duplicates in a training list count once; the positive is never a negative) and

    AUC_u = (#{j : x_uj < x_ui} + c * #{j : x_uj = x_ui}) / #negatives,

with c = 0 (ties="fail", the default: the paper's delta(x_ui > x_uj) counts a tie as a failure) or c = 0.5
(ties="half", the usual Mann-Whitney convention). The two differ wherever a scorer gives many items one score:
PopRank, whose score is an item's training count and most items have 0-4 of them, has a test AUC of 0.6153 All /
0.3499 Cold on the embedded catalogue with ties failing and 0.6604 / 0.4242 with ties counting half. A scorer
meant to be uninformative must therefore give continuous random scores, not a constant (which scores 0 under
"fail"); RAND (baselines/rand.py) draws them uniformly.
"Cold Items" (Sec. IV-C) is the same per-user AUC averaged over the users whose held-out item has fewer than
`cold_threshold` (5) training interactions.

"sampled100" (the original code): per user, 100 distinct item ids drawn uniformly; those in the user's training
set or equal to the positive are skipped (the other held-out item is kept), and
AUC_u = #{used j : x_ui > x_uj} / #used (ties count as failures, whatever `ties` says). The draw is made for
every user id from `seed`, so the same seed gives the same negatives in every epoch, to both splits, and to any
subset of users.

A user left with no negative has no AUC: its per-user value is NaN and it is left out of the means
(`num_skipped` counts such users).

Scores come from score_fn(user_ids: LongTensor on device) -> Tensor [len(user_ids), itemnum], compared in float32.
Users are processed in chunks so that a chunk's score matrix stays within a fixed number of elements.
"""
import math

import numpy as np
import torch

from common.errors import TrainingDiverged

# Score-matrix elements per chunk. On CPU a 16 MB chunk stays in cache and compares about 2x faster than 128 MB ones.
SCORE_BUDGET = {"cpu": 2**22, "cuda": 2**28}
SAMPLED_NEGATIVES = 100
PROTOCOLS = ("exact", "sampled100")
TIE_CREDIT = {"fail": 0.0, "half": 0.5}
TIES = tuple(TIE_CREDIT)
TIES_HELP = ("exact AUC: a tie x_ui = x_uj counts as a failure (fail: the paper's delta(x_ui > x_uj)) or as half "
             "(half); sampled100 always counts it as a failure, so there this has no effect")
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
        if not torch.isfinite(scores).all():
            user = int(batch[~torch.isfinite(scores).all(dim=1)][0])
            raise TrainingDiverged(f"the model's scores are NaN or infinite (e.g. for user {user}): the AUC is "
                                   "undefined; the model diverged")
        yield start, batch, scores
        if chunk_users is None:
            chunk_users = max(1, SCORE_BUDGET[device.type] // scores.shape[1])
        start += size


def per_user_auc_exact(score_fn, positives, exclude_indptr, exclude_indices, users=None, device="cpu",
                       chunk_users=None, ties="fail"):
    """Exact per-user AUC (a tie counts as a failure, or half with ties="half"), float64 [len(users)] on CPU, NaN
    for a user with no negative.

    positives: held-out item per user id [usernum]. The exclusion CSR (rows = user ids) may hold duplicates and
    need not hold the positive. Rather than masking whole score rows, the comparisons are counted over all items
    and those of the (few) excluded items are subtracted.
    """
    credit = TIE_CREDIT[ties]
    device = torch.device(device)
    positives = torch.as_tensor(positives, dtype=torch.long).to(device)
    indptr, indices = (a.to(device) for a in unique_csr(exclude_indptr, exclude_indices))
    users = torch.arange(len(positives)) if users is None else torch.as_tensor(users, dtype=torch.long)
    users = users.to(device)
    auc = torch.empty(len(users), dtype=torch.float64, device=device)
    for start, batch, scores in scored_chunks(score_fn, users, chunk_users, device):
        pos = positives[batch]
        pos_scores = scores.gather(1, pos[:, None])
        below = torch.count_nonzero(scores < pos_scores, dim=1)
        tied = torch.count_nonzero(scores == pos_scores, dim=1) - 1  # the positive ties with itself
        local, items = gather_rows(indptr, indices, batch)
        keep = items != pos[local]
        local, items = local[keep], items[keep]
        excluded_scores, reference = scores[local, items], pos_scores[local, 0]
        below.index_add_(0, local, -(excluded_scores < reference).long())
        tied.index_add_(0, local, -(excluded_scores == reference).long())
        num_negatives = scores.shape[1] - 1 - torch.bincount(local, minlength=len(batch))
        per_user = (below + credit * tied).double() / num_negatives
        auc[start:start + len(batch)] = torch.where(num_negatives > 0, per_user, math.nan)
    return auc.cpu()


def per_user_auc_sampled(score_fn, positives, train_indptr, train_indices, negatives, users=None, device="cpu",
                         chunk_users=None):
    """Original-code per-user AUC against the drawn negatives ([usernum, k], e.g. from sample_negatives):
    those in the user's training set or equal to the positive are skipped; strict wins / negatives used.
    float64 [len(users)] on CPU, NaN for a user with no negative used."""
    device = torch.device(device)
    positives = torch.as_tensor(positives, dtype=torch.long).to(device)
    negatives = torch.as_tensor(negatives, dtype=torch.long).to(device)
    indptr = torch.as_tensor(train_indptr, dtype=torch.long).to(device)
    indices = torch.as_tensor(train_indices, dtype=torch.long).to(device)
    users = torch.arange(len(positives)) if users is None else torch.as_tensor(users, dtype=torch.long)
    users = users.to(device)
    auc = torch.empty(len(users), dtype=torch.float64, device=device)
    for start, batch, scores in scored_chunks(score_fn, users, chunk_users, device):
        pos, neg = positives[batch], negatives[batch]
        excluded = torch.zeros_like(scores, dtype=torch.bool)
        excluded[gather_rows(indptr, indices, batch)] = True
        excluded.scatter_(1, pos[:, None], True)
        used = ~excluded.gather(1, neg)
        wins = (scores.gather(1, pos[:, None]) > scores.gather(1, neg)) & used
        num_used = used.sum(1)
        per_user = wins.sum(1).double() / num_used
        auc[start:start + len(batch)] = torch.where(num_used > 0, per_user, math.nan)
    return auc.cpu()


def tie_rule(protocol, ties):
    """How a tie counts under `protocol` with the setting `ties`: sampled100 always counts it as a failure."""
    return ties if protocol == "exact" else "fail"


def evaluate_auc(dataset, score_fn, split="validation", protocol="exact", device="cpu", chunk_users=None,
                 cold_threshold=5, seed=0, users=None, combine=None, ties="fail"):
    """All-Items and Cold-Items AUC of score_fn on the validation or test items of `users` (default: all).

    Sharded evaluation: each rank passes its share of the users and `combine` (e.g. Ranks.gather), which
    concatenates the ranks' per-user results before the means are taken.
    Returns dict(all, cold (None without cold users), num_users (users averaged), num_cold_users, num_skipped,
    protocol, ties (the rule applied, see tie_rule), split). `seed` only matters for "sampled100", `ties` only for
    "exact".
    """
    if split not in HELD_OUT_SPLITS:
        raise ValueError(f"split must be one of {HELD_OUT_SPLITS}, got {split!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    positives = torch.as_tensor(dataset.user_validation if split == "validation" else dataset.user_test)
    users = torch.arange(dataset.usernum) if users is None else torch.as_tensor(users, dtype=torch.long)
    if protocol == "exact":
        auc = per_user_auc_exact(score_fn, positives, *observed_csr(dataset), users=users, device=device,
                                 chunk_users=chunk_users, ties=ties)
    else:
        negatives = sample_negatives(dataset.usernum, dataset.itemnum, SAMPLED_NEGATIVES, seed)
        auc = per_user_auc_sampled(score_fn, positives, *dataset.train_csr(), negatives, users=users,
                                   device=device, chunk_users=chunk_users)
    counts = torch.as_tensor(np.asarray(dataset.item_train_counts()))
    cold = counts[positives[users]] < cold_threshold
    if combine is not None:
        auc, cold = combine(torch.stack([auc, cold.double()], 1)).unbind(1)
        cold = cold.bool()
    defined = ~torch.isnan(auc)
    cold_auc = auc[defined & cold]
    return dict(
        all=auc[defined].mean().item() if defined.any() else math.nan,
        cold=cold_auc.mean().item() if len(cold_auc) else None,
        num_users=int(defined.sum()),
        num_cold_users=len(cold_auc),
        num_skipped=int((~defined).sum()),
        protocol=protocol,
        ties=tie_rule(protocol, ties),
        split=split,
    )
