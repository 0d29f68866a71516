import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torchmetrics.functional.retrieval import (
    retrieval_auroc,
    retrieval_hit_rate,
    retrieval_normalized_dcg,
    retrieval_reciprocal_rank,
)

from baselines.bpr import BPRMF, bpr_loss
from baselines.train import FitSettings, evaluate, fit
from common.distributed import Ranks
from common.errors import ConfigError
from common.metrics import (
    NCF_NEGATIVES,
    TIES,
    check_metric_choice,
    evaluate_auc,
    evaluate_ranking,
    evaluate_splits,
    evaluation_cost,
    evaluation_users,
    exact_counts,
    metric_names,
    observed_csr,
    per_user_auc_exact,
    per_user_auc_sampled,
    sample_negatives,
    selectable_metrics,
    topk_from_counts,
)
from tests.helpers import interactions_only


def to_csr(lists):
    lengths = [len(items) for items in lists]
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), np.concatenate(lists).astype(np.int64)


def random_dataset(usernum, itemnum, seed, max_train=8):
    """Training lists drawn with replacement, so some hold an item twice."""
    rng = np.random.default_rng(seed)
    train = [rng.integers(0, itemnum, rng.integers(1, max_train + 1)).astype(np.int64) for _ in range(usernum)]
    return interactions_only(usernum, itemnum, train, rng.integers(0, itemnum, usernum),
                             rng.integers(0, itemnum, usernum))


def integer_scores(dataset, seed, levels=4):
    """Few distinct score values, so many ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (dataset.usernum, dataset.itemnum), generator=g).float()


def held_out(dataset, split):
    return dataset.user_validation if split == "validation" else dataset.user_test


def brute_exact(dataset, scores, split, tie_credit=0.0):
    aucs = []
    for u in range(dataset.usernum):
        pos = held_out(dataset, split)[u]
        observed = set(dataset.user_train[u]) | {dataset.user_validation[u], dataset.user_test[u]}
        negatives = [j for j in range(dataset.itemnum) if j not in observed]
        hits = sum(1.0 if scores[u, pos] > scores[u, j] else tie_credit if scores[u, pos] == scores[u, j] else 0.0
                   for j in negatives)
        aucs.append(hits / len(negatives) if negatives else math.nan)
    return torch.tensor(aucs, dtype=torch.float64)


def brute_sampled(dataset, scores, split, negatives):
    aucs = []
    for u in range(dataset.usernum):
        pos = held_out(dataset, split)[u]
        used = [j for j in negatives[u].tolist() if j not in set(dataset.user_train[u]) and j != pos]
        wins = sum(1 for j in used if scores[u, pos] > scores[u, j])
        aucs.append(wins / len(used) if used else math.nan)
    return torch.tensor(aucs, dtype=torch.float64)


def nanmean(values):
    return values[~torch.isnan(values)].mean().item()


@pytest.mark.parametrize("split", ["validation", "test"])
@pytest.mark.parametrize("ties, credit", [("fail", 0.0), ("half", 0.5)])
def test_exact_matches_brute_force_with_ties_and_duplicate_training_items(split, ties, credit):
    dataset = random_dataset(usernum=40, itemnum=30, seed=1)
    assert any(len(set(items)) < len(items) for items in dataset.user_train)
    scores = integer_scores(dataset, seed=2)
    expected = brute_exact(dataset, scores, split, credit)
    got = per_user_auc_exact(lambda u: scores[u], held_out(dataset, split), *observed_csr(dataset), ties=ties)
    torch.testing.assert_close(got, expected)
    result = evaluate_auc(dataset, lambda u: scores[u], split=split, ties=ties)
    assert result["all"] == pytest.approx(expected.mean().item())
    assert result["num_users"] == dataset.usernum and result["num_skipped"] == 0 and result["ties"] == ties


def test_a_tie_fails_by_default_and_counts_half_when_asked():
    # user 0: test item 2 against negatives 3, 4, 5 (one win, two ties); user 1: item 5 against 0, 1, 2 (three ties)
    dataset = interactions_only(2, 6, [[0], [3]], user_validation=[1, 4], user_test=[2, 5])
    scores = torch.tensor([[9.0, 9.0, 1.0, 1.0, 0.0, 1.0],
                           [2.0, 2.0, 2.0, 9.0, 9.0, 2.0]])
    auc = lambda **kwargs: evaluate_auc(dataset, lambda u: scores[u], split="test", **kwargs)["all"]
    assert auc() == auc(ties="fail") == pytest.approx((1 / 3 + 0) / 2)
    assert auc(ties="half") == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_ties_leave_sampled100_alone_and_say_so():
    dataset = random_dataset(usernum=40, itemnum=150, seed=9, max_train=40)
    scores = integer_scores(dataset, seed=10)
    fail, half = (evaluate_auc(dataset, lambda u: scores[u], protocol="sampled100", ties=ties) for ties in TIES)
    assert fail["all"] == half["all"] and fail["ties"] == half["ties"] == "fail"


def test_positive_never_counts_as_negative_even_outside_the_exclusion_sets():
    dataset = random_dataset(usernum=20, itemnum=25, seed=3)
    scores = integer_scores(dataset, seed=4)
    positives = dataset.user_validation
    with_positive = per_user_auc_exact(lambda u: scores[u], positives, *observed_csr(dataset))
    train_and_test = [np.append(items, dataset.user_test[u]) for u, items in enumerate(dataset.user_train)]
    assert not all(positives[u] in items for u, items in enumerate(train_and_test))
    without_positive = per_user_auc_exact(lambda u: scores[u], positives, *to_csr(train_and_test))
    torch.testing.assert_close(without_positive, with_positive)


def test_cold_items_average_over_users_whose_held_out_item_is_rare():
    dataset = random_dataset(usernum=60, itemnum=40, seed=5)
    scores = integer_scores(dataset, seed=6)
    threshold = 3
    counts = dataset.item_train_counts()
    cold = counts[dataset.user_test] < threshold
    assert 0 < cold.sum() < dataset.usernum
    expected = brute_exact(dataset, scores, "test")
    result = evaluate_auc(dataset, lambda u: scores[u], split="test", cold_threshold=threshold)
    assert result["num_cold_users"] == cold.sum()
    assert result["cold"] == pytest.approx(expected[torch.from_numpy(cold)].mean().item())
    assert result["all"] != pytest.approx(result["cold"])
    none_cold = evaluate_auc(dataset, lambda u: scores[u], split="test", cold_threshold=0)
    assert none_cold["cold"] is None and none_cold["num_cold_users"] == 0


def test_sample_negatives_are_distinct_uniform_and_reproducible():
    draws = sample_negatives(num_users=4000, itemnum=10, num_negatives=5, seed=7)
    assert draws.shape == (4000, 5) and draws.min() >= 0 and draws.max() < 10
    assert (draws.sort(1).values.diff(dim=1) > 0).all()
    frequency = torch.bincount(draws.flatten(), minlength=10) / 4000
    torch.testing.assert_close(frequency, torch.full((10,), 0.5), atol=0.04, rtol=0)
    assert torch.equal(draws, sample_negatives(4000, 10, 5, seed=7))
    assert not torch.equal(draws, sample_negatives(4000, 10, 5, seed=8))
    assert sample_negatives(3, 20, 100).shape == (3, 20)


@pytest.mark.parametrize("split", ["validation", "test"])
def test_sampled_matches_brute_force_on_the_same_draw(split):
    dataset = random_dataset(usernum=40, itemnum=150, seed=9, max_train=40)
    scores = integer_scores(dataset, seed=10)
    negatives = sample_negatives(dataset.usernum, dataset.itemnum, 100, seed=11)
    expected = brute_sampled(dataset, scores, split, negatives)
    got = per_user_auc_sampled(lambda u: scores[u], held_out(dataset, split), *dataset.train_csr(), negatives)
    torch.testing.assert_close(got, expected)
    result = evaluate_auc(dataset, lambda u: scores[u], split=split, protocol="sampled100", seed=11)
    assert result["all"] == pytest.approx(expected.mean().item())


@pytest.mark.parametrize("protocol", ["exact", "sampled100"])
def test_perfect_scorer_gives_one_and_reversed_scorer_zero(protocol):
    dataset = random_dataset(usernum=30, itemnum=120, seed=12)
    positives = torch.as_tensor(dataset.user_test)
    perfect = torch.zeros(dataset.usernum, dataset.itemnum)
    perfect[torch.arange(dataset.usernum), positives] = 1.0
    assert evaluate_auc(dataset, lambda u: perfect[u], "test", protocol)["all"] == 1.0
    assert evaluate_auc(dataset, lambda u: -perfect[u], "test", protocol)["all"] == 0.0


def test_random_scores_give_about_one_half():
    dataset = random_dataset(usernum=300, itemnum=400, seed=13)
    g = torch.Generator().manual_seed(14)
    scores = torch.randn(dataset.usernum, dataset.itemnum, generator=g)
    for protocol in ("exact", "sampled100"):
        assert evaluate_auc(dataset, lambda u: scores[u], protocol=protocol)["all"] == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("protocol", ["exact", "sampled100"])
def test_chunking_and_user_subsets_do_not_change_per_user_values(protocol):
    dataset = random_dataset(usernum=50, itemnum=110, seed=15)
    scores = integer_scores(dataset, seed=16)
    positives = dataset.user_validation
    if protocol == "exact":
        def auc(**kwargs):
            return per_user_auc_exact(lambda u: scores[u], positives, *observed_csr(dataset), **kwargs)
    else:
        negatives = sample_negatives(dataset.usernum, dataset.itemnum, seed=17)

        def auc(**kwargs):
            return per_user_auc_sampled(lambda u: scores[u], positives, *dataset.train_csr(), negatives, **kwargs)
    full = auc(chunk_users=1)
    torch.testing.assert_close(auc(chunk_users=7), full)
    torch.testing.assert_close(auc(), full)
    subset = torch.tensor([42, 3, 17, 0])
    torch.testing.assert_close(auc(users=subset, chunk_users=3), full[subset])
    result = evaluate_auc(dataset, lambda u: scores[u], protocol=protocol, seed=17, users=subset)
    assert result["num_users"] == 4 and result["all"] == pytest.approx(full[subset].mean().item())


def test_user_without_negatives_is_skipped():
    dataset = random_dataset(usernum=10, itemnum=12, seed=18)
    everything_else = np.setdiff1d(np.arange(dataset.itemnum), [dataset.user_validation[0]])
    dataset.user_train[0] = np.concatenate([everything_else, everything_else[:2]])
    scores = integer_scores(dataset, seed=19)
    per_user = per_user_auc_exact(lambda u: scores[u], dataset.user_validation, *observed_csr(dataset))
    assert torch.isnan(per_user[0]) and not torch.isnan(per_user[1:]).any()
    for protocol in ("exact", "sampled100"):
        result = evaluate_auc(dataset, lambda u: scores[u], protocol=protocol)
        assert result["num_users"] == 9 and result["num_skipped"] == 1 and math.isfinite(result["all"])
    assert evaluate_auc(dataset, lambda u: scores[u])["all"] == pytest.approx(nanmean(per_user))


def test_unknown_split_or_protocol_raises():
    dataset = random_dataset(usernum=3, itemnum=5, seed=20)
    with pytest.raises(ValueError, match="split"):
        evaluate_auc(dataset, lambda u: torch.zeros(len(u), 5), split="train")
    with pytest.raises(ValueError, match="protocol"):
        evaluate_auc(dataset, lambda u: torch.zeros(len(u), 5), protocol="sampled")
    with pytest.raises(ValueError, match="ties"):
        evaluate_auc(dataset, lambda u: torch.zeros(len(u), 5), ties="third")


# ------------------------------------------------------------------------------------------- top-K metrics

def candidates_of(dataset, u, split):
    """The exact protocol's candidates of user u and the positive, as (items, index of the positive)."""
    pos = held_out(dataset, split)[u]
    observed = set(dataset.user_train[u]) | {dataset.user_validation[u], dataset.user_test[u]}
    items = [j for j in range(dataset.itemnum) if j not in observed or j == pos]
    return torch.tensor(items), items.index(pos)


def placements(preds, positive):
    """Every order of the items tied with the positive, as far as its rank goes: for s = 0 .. #tied, scores (all
    positive, ties apart from the positive's kept) where s of the tied items come first. Integer scores, so the
    0.25 and 0.5 steps pass no other item."""
    tied = ((preds == preds[positive]).nonzero().flatten()).tolist()
    tied.remove(positive)
    for s in range(len(tied) + 1):
        moved = preds.clone() + 10
        moved[positive] += 0.25
        moved[tied[:s]] += 0.5
        yield moved


def reference_metrics(preds, positive, cutoffs, ties):
    """Per-user metrics of torchmetrics on one user's candidate scores: under "fail" with the positive moved below
    its ties; under "half" NDCG tie-averaged as torchmetrics computes it, the others averaged over placements."""
    target = torch.zeros(len(preds), dtype=torch.long)
    target[positive] = 1
    if ties == "fail":
        orders = [preds + 10 - 0.5 * target]
    else:
        orders = list(placements(preds, positive))
    mean = lambda fn: sum(fn(order).item() for order in orders) / len(orders)
    ndcg = {k: (retrieval_normalized_dcg(preds, target, top_k=k).item() if ties == "half" else
                mean(lambda order: retrieval_normalized_dcg(order, target, top_k=k))) for k in cutoffs}
    return {**{f"recall@{k}": mean(lambda order: retrieval_hit_rate(order, target, top_k=k)) for k in cutoffs},
            **{f"ndcg@{k}": ndcg[k] for k in cutoffs},
            "mrr": mean(lambda order: retrieval_reciprocal_rank(order, target))}


@pytest.mark.parametrize("ties", TIES)
def test_topk_metrics_match_torchmetrics_on_scores_with_ties(ties):
    dataset = random_dataset(usernum=25, itemnum=40, seed=21)
    scores = integer_scores(dataset, seed=22, levels=5)
    cutoffs = (1, 3, 10, 50)
    counts = exact_counts(lambda u: scores[u], dataset.user_test, *observed_csr(dataset), chunk_users=6)
    ours = topk_from_counts(counts, cutoffs, ties)
    assert set(ours) == set(metric_names("exact", cutoffs)) - {"auc"}
    for u in range(dataset.usernum):
        items, positive = candidates_of(dataset, u, "test")
        expected = reference_metrics(scores[u, items], positive, cutoffs, ties)
        for name, value in expected.items():
            assert ours[name][u].item() == pytest.approx(value, abs=1e-6), (u, name)


def test_exact_auc_with_ties_counting_half_matches_torchmetrics():
    dataset = random_dataset(usernum=25, itemnum=40, seed=23)
    scores = integer_scores(dataset, seed=24)
    ours = per_user_auc_exact(lambda u: scores[u], dataset.user_test, *observed_csr(dataset), ties="half")
    for u in range(dataset.usernum):
        items, positive = candidates_of(dataset, u, "test")
        target = torch.zeros(len(items), dtype=torch.long)
        target[positive] = 1
        assert ours[u].item() == pytest.approx(retrieval_auroc(scores[u, items], target).item(), abs=1e-6)


def test_a_tie_counts_against_the_positive_or_as_its_expected_rank():
    # user 0: test item 2 (score 5) against 3 (above), 4 (tied), 5 (below): rank 1 or 2 ("half": each with 1/2)
    dataset = interactions_only(1, 6, [[0]], user_validation=[1], user_test=[2])
    scores = torch.tensor([[9.0, 9.0, 5.0, 7.0, 5.0, 1.0]])
    metric = lambda ties, name: evaluate_ranking(dataset, lambda u: scores[u], "test", ties=ties,
                                                 cutoffs=(2,))["metrics"][name]
    assert metric("fail", "recall@2") == 0 and metric("half", "recall@2") == 0.5
    assert metric("fail", "mrr") == pytest.approx(1 / 3) and metric("half", "mrr") == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert metric("fail", "ndcg@2") == 0 and metric("half", "ndcg@2") == pytest.approx(0.5 / math.log2(3))
    assert metric("half", "auc") == pytest.approx(1.5 / 3)


def brute_ncf(dataset, scores, split, negatives):
    """HR@10 and NDCG@10 of the positive among the first 99 used negatives of the draw, ties failing."""
    hits, gains = [], []
    for u in range(dataset.usernum):
        pos = held_out(dataset, split)[u]
        used = [j for j in negatives[u].tolist() if j not in set(dataset.user_train[u]) and j != pos][:NCF_NEGATIVES]
        rank = sum(1 for j in used if scores[u, j] >= scores[u, pos])
        hits.append(float(rank < 10))
        gains.append(1 / math.log2(rank + 2) if rank < 10 else 0.0)
    return np.mean(hits), np.mean(gains)


def test_sampled_protocol_gives_ncf_hit_rate_and_ndcg_on_the_sampled100_draw():
    dataset = random_dataset(usernum=40, itemnum=300, seed=25, max_train=60)
    scores = integer_scores(dataset, seed=26, levels=40)
    result = evaluate_ranking(dataset, lambda u: scores[u], "test", protocol="sampled100", seed=27, chunk_users=9)
    negatives = sample_negatives(dataset.usernum, dataset.itemnum, seed=27)
    hr, ndcg = brute_ncf(dataset, scores, "test", negatives)
    assert list(result["metrics"]) == [f"{name}{cold}" for name in metric_names("sampled100") for cold in ("", "_cold")]
    assert result["metrics"]["sampled_hr@10"] == pytest.approx(hr) and 0 < hr < 1
    assert result["metrics"]["sampled_ndcg@10"] == pytest.approx(ndcg)
    assert result["all"] == evaluate_auc(dataset, lambda u: scores[u], "test", protocol="sampled100", seed=27)["all"]


def test_every_metric_is_the_same_whatever_the_chunks_the_users_and_the_shards():
    dataset = random_dataset(usernum=50, itemnum=110, seed=28)
    scores = integer_scores(dataset, seed=29)
    evaluate = lambda **kwargs: evaluate_ranking(dataset, lambda u: scores[u], "test", ties="half", **kwargs)
    whole = evaluate(chunk_users=1)
    assert evaluate()["metrics"] == pytest.approx(whole["metrics"])
    shards, kept = (torch.arange(0, 50, 2), torch.arange(1, 50, 2)), []
    keep = lambda table: kept.append(table) or table
    evaluate(users=shards[0], combine=keep, chunk_users=4)
    joined = evaluate(users=shards[1], combine=lambda table: torch.cat([kept[0], table]), chunk_users=3)
    assert joined["metrics"] == pytest.approx(whole["metrics"]) and joined["num_users"] == 50


def test_a_subset_of_users_is_fixed_and_evaluated_as_those_users_alone():
    dataset = random_dataset(usernum=50, itemnum=110, seed=30)
    scores = integer_scores(dataset, seed=31)
    subset = evaluation_users(50, 12)
    assert torch.equal(subset, evaluation_users(50, 12)) and len(set(subset.tolist())) == 12
    assert torch.equal(subset, subset.sort().values) and torch.equal(evaluation_users(50, 80), torch.arange(50))
    cfg = SimpleNamespace(eval_users=12, seed=5, protocol="exact", ties="fail", eval_chunk=None, cold_threshold=5,
                          cutoffs=(10,))
    valid, test = evaluate_splits(dataset, lambda u: scores[u], cfg, Ranks())
    alone = evaluate_ranking(dataset, lambda u: scores[u], "test", users=subset, cutoffs=(10,))
    assert test["metrics"] == alone["metrics"] and test["num_users"] == 12 and valid["split"] == "validation"


def test_a_large_evaluation_is_announced_naming_the_flag_that_shrinks_it():
    small, large = SimpleNamespace(usernum=1500, itemnum=2500), SimpleNamespace(usernum=1_371_980, itemnum=105_542)
    assert evaluation_cost(small, 50) is None
    assert "--eval-users N" in evaluation_cost(large, 50) and evaluation_cost(large, 50, eval_users=1000) is None


def test_perfect_and_reversed_scorers_give_the_extreme_top_k_metrics():
    dataset = random_dataset(usernum=30, itemnum=120, seed=12)
    perfect = torch.zeros(dataset.usernum, dataset.itemnum)
    perfect[torch.arange(dataset.usernum), torch.as_tensor(dataset.user_test)] = 1.0
    best = evaluate_ranking(dataset, lambda u: perfect[u], "test")["metrics"]
    worst = evaluate_ranking(dataset, lambda u: -perfect[u], "test")["metrics"]
    assert all(best[name] == 1.0 for name in metric_names())
    assert all(worst[name] == 0.0 for name in metric_names() if name.startswith(("recall", "ndcg")))
    assert 0 < worst["mrr"] < 1 / 50


def clustered_dataset(usernum=120, itemnum=80, groups=4, liked=10, seed=30):
    """Each user likes one group of items: training, validation and test items all come from it."""
    rng = np.random.default_rng(seed)
    size = itemnum // groups
    liked = [group * size + rng.choice(size, liked, replace=False) for group in rng.integers(0, groups, usernum)]
    return interactions_only(usernum, itemnum, [items[2:] for items in liked], [items[0] for items in liked],
                             [items[1] for items in liked])


def test_a_learned_model_beats_chance_on_ndcg_and_is_kept_by_it():
    dataset = clustered_dataset()
    torch.manual_seed(0)
    settings = FitSettings(epochs=6, batch_size=32, lr=0.05, select_metric="valid_ndcg@10")
    fitted = fit(BPRMF(dataset.usernum, dataset.itemnum, 4), dataset, bpr_loss, 0.001, settings, "cpu")
    test = evaluate(fitted.model, dataset, "test", "cpu", settings)["metrics"]
    candidates = dataset.itemnum - 10
    chance = sum(1 / math.log2(r + 2) for r in range(10)) / candidates   # a uniformly random rank
    assert test["ndcg@10"] > 2.5 * chance and test["recall@10"] > 2.5 * 10 / candidates
    valid = evaluate(fitted.model, dataset, "validation", "cpu", settings)["metrics"]
    assert fitted.valid["metrics"]["ndcg@10"] == pytest.approx(valid["ndcg@10"])


def test_selection_metrics_are_the_validation_ones_evaluated():
    assert selectable_metrics("exact", (20,))[:4] == ["valid_auc", "valid_auc_cold", "valid_recall@20",
                                                      "valid_recall@20_cold"]
    assert "valid_sampled_ndcg@10" in selectable_metrics("sampled100")
    with pytest.raises(ConfigError, match="--select-metric valid_ndcg@5 is not one of"):
        check_metric_choice("valid_ndcg@5", "--select-metric", selectable_metrics("exact", (10, 20)))


def test_huge_finite_scores_whose_sum_overflows_are_still_evaluated():
    dataset = random_dataset(usernum=6, itemnum=20, seed=31)
    scores = torch.full((dataset.usernum, dataset.itemnum), 3e38)
    scores[torch.arange(dataset.usernum), torch.as_tensor(dataset.user_test)] = 3.4e38
    assert not torch.isfinite(scores.sum())
    metrics = evaluate_ranking(dataset, lambda u: scores[u], "test")["metrics"]
    assert metrics["auc"] == metrics["ndcg@10"] == 1.0
