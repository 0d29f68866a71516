import math

import numpy as np
import pytest
import torch

from common.metrics import (
    TIES,
    evaluate_auc,
    observed_csr,
    per_user_auc_exact,
    per_user_auc_sampled,
    sample_negatives,
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
