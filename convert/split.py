"""From interactions to the held-out split: each user's first interaction with an item, the minimum-interactions
filter, and one validation and one test item per user.

The paper (Sec. IV-A) discards users with fewer than 5 actions, as VBPR did, and withholds one action at random for
validation and one for testing (--holdout random); today's practice, and the default here, withholds by time: the
last interaction is the test item, the one before it the validation item (--holdout last). Interactions at the same
time keep the order of the source file.
"""
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError


def first_interactions(users, items, times) -> np.ndarray:
    """Row indices in (user, time, file order) order, keeping each (user, item) pair's first interaction only."""
    order = np.lexsort((times, users)) if times is not None else np.argsort(users, kind="stable")
    pairs = users[order] * (int(items.max()) + 1) + items[order]
    _, first = np.unique(pairs, return_index=True)
    return order[np.sort(first)]


def k_core(users, items, item_allowed, min_user: int, min_item: int) -> np.ndarray:
    """Mask of the rows that remain once items not allowed are gone and users with fewer than `min_user` rows and
    items with fewer than `min_item` are removed, again and again until none is left to remove."""
    keep = item_allowed[items].copy()
    while True:
        user_count = np.bincount(users[keep], minlength=int(users.max()) + 1)
        item_count = np.bincount(items[keep], minlength=len(item_allowed))
        drop = keep & ((user_count[users] < min_user) | (item_count[items] < min_item))
        if not drop.any():
            return keep
        keep &= ~drop


@dataclass
class Split:
    """The dataset's arrays, users and items renumbered from 0 in order of their codes."""
    train_indptr: np.ndarray
    train_items: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    item_codes: np.ndarray     # the source item code of each new item id
    user_codes: np.ndarray     # the source user code of each new user id
    times: dict                # train_times, validation_times, test_times (empty without times)


def hold_out(users, items, times, holdout: str, seed: int) -> Split:
    """One validation and one test row per user from rows sorted by (user, time); every user needs three."""
    user_codes, starts, counts = np.unique(users, return_index=True, return_counts=True)
    if counts.min() < 3:
        raise ConfigError("every user needs 3 interactions (train, validation, test): --min-interactions >= 3")
    if holdout == "last":
        test, validation = starts + counts - 1, starts + counts - 2
    else:
        rng = np.random.default_rng(seed)
        test_offset = rng.integers(0, counts)
        validation_offset = (test_offset + 1 + rng.integers(0, counts - 1)) % counts
        test, validation = starts + test_offset, starts + validation_offset
    train = np.ones(len(users), dtype=bool)
    train[test] = train[validation] = False
    item_codes, renumbered = np.unique(items, return_inverse=True)
    indptr = np.zeros(len(user_codes) + 1, dtype=np.int64)
    np.cumsum(counts - 2, out=indptr[1:])
    held = {} if times is None else {"train_times": times[train], "validation_times": times[validation],
                                     "test_times": times[test]}
    return Split(indptr, renumbered[train], renumbered[validation], renumbered[test], item_codes, user_codes, held)


def category_ids(names: list[str], limit: int) -> tuple[np.ndarray, list[str]]:
    """Each item's category index (-1 for "") into the sorted distinct names."""
    table = sorted({name for name in names if name})
    if len(table) > limit:
        raise ConfigError(f"the items have {len(table)} categories, more than the {limit} a dataset may have: "
                          "choose coarser ones (--category-depth, --category-columns)")
    index = {name: k for k, name in enumerate(table)}
    return np.array([index.get(name, -1) for name in names], dtype=np.int64), table
