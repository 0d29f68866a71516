"""The original DVBPR datasets: loading them, converting their raw records and validating them.

A dataset file (e.g. AmazonFashion6ImgPartitioned.npy) is a .npy holding a pickled object array
[user_train, user_validation, user_test, Item, usernum, itemnum], written by Python 2:
- user_* are dicts {user id: [{"productid": item id}, ...]};
- Item[i] is a dict {"imgs": encoded image bytes, "c": one-hot category (may be absent)};
- Python-2 str keys arrive as bytes (b"productid"), so both bytes and str keys are accepted.
The pickle is read by the restricted unpickler of common/safe_pickle.py, never by plain pickle, and neither it nor
the conversion lets a small file expand without bound.
"""
import functools
import hashlib
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import ConfigError, DatasetError
from common.safe_pickle import NUMERIC_KINDS, describe_value, read_pickled_array

DATA_SPLITS = ("train", "validation", "test")


@dataclass
class Dataset:
    name: str                        # file stem or folder name, e.g. "AmazonFashion6ImgPartitioned"
    path: Path
    usernum: int
    itemnum: int
    # the large fields stay out of repr(): a real dataset is gigabytes
    user_train: list[np.ndarray] = field(repr=False)   # per user, int64 item ids
    user_validation: np.ndarray = field(repr=False)    # (usernum,) int64: the held-out validation item
    user_test: np.ndarray = field(repr=False)          # (usernum,) int64: the held-out test item
    item_category: np.ndarray = field(repr=False)      # (itemnum,) int64: argmax of the one-hot `c`, -1 where absent
    num_categories: int                                # width of `c` (0 if no item has `c`)
    image_bytes: Sequence[bytes] = field(repr=False)   # encoded image per item (a list, or read on demand)
    cache_dir: Path | None = None                      # decoded images' cache (None: cache/ beside the file)

    @property
    def num_train_interactions(self) -> int:
        return sum(len(items) for items in self.user_train)

    def train_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Training items of all users as CSR: user u's items are indices[indptr[u]:indptr[u+1]]."""
        indptr = np.zeros(self.usernum + 1, dtype=np.int64)
        np.cumsum([len(items) for items in self.user_train], out=indptr[1:])
        return indptr, np.concatenate(self.user_train).astype(np.int64)

    def item_train_counts(self) -> np.ndarray:
        return np.bincount(self.train_csr()[1], minlength=self.itemnum).astype(np.int64)

    # A Dataset is not changed once loaded: its digests are computed once, on first use.
    @functools.cached_property
    def images_digest(self) -> str:
        """sha256 over every item's image bytes, each after its length: what a decoded-image cache is made from,
        so the key that recognises it. Hashing bytes already in memory runs at some 0.7 GB/s on one core (SHA
        extensions), a second or two per GB of images, little beside loading the dataset and far less than
        decoding it."""
        digest = hashlib.sha256()
        for data in self.image_bytes:
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return digest.hexdigest()

    @functools.cached_property
    def digest(self) -> str:
        """sha256 over the whole content, interactions, categories and images: what a run records of its data, so
        that resuming on other data (the file at its path replaced, grown, or copied over with the same size and
        times) is refused."""
        indptr, indices = self.train_csr()
        digest = hashlib.sha256(np.array([self.usernum, self.itemnum, self.num_categories], np.int64).tobytes())
        for array in (indptr, indices, self.user_validation, self.user_test, self.item_category):
            digest.update(np.ascontiguousarray(array, np.int64).tobytes())
        digest.update(self.images_digest.encode())
        return digest.hexdigest()


def name_offenders(offenders, limit: int = 10) -> str:
    """The first `limit` offenders, comma separated, then '...' if there are more."""
    shown = ", ".join(str(offender) for offender in offenders[:limit])
    return shown + (", ..." if len(offenders) > limit else "")


# ----------------------------------------------------------------------------------------------------------
# Converting the raw structure into a Dataset, with validation

MAX_CATEGORIES = 10_000  # width of a one-hot `c`; the original data has 6
_NUMBER_TYPES = (int, float, np.bool_, np.integer, np.floating)


class _EntryBudget:
    """How many more container entries the conversion may visit. Each entry costs the pickle at least a byte unless
    it is a reference to a structure already read, so visiting more entries than the file has bytes means one
    structure shared over and over (a pickle bomb)."""

    def __init__(self, path: Path):
        self.file_bytes = self.left = path.stat().st_size

    def spend(self, entries: int, where: str):
        self.left -= entries
        if self.left < 0:
            raise DatasetError(f"{where} takes the dataset past {self.file_bytes} entries, more than the file has "
                               "bytes: it repeats shared references")


def _field(record, name: str):
    """record[name] for a dict whose keys are str or (from Python-2 pickles) bytes; None if absent."""
    if not isinstance(record, dict):
        return None
    value = record.get(name)
    return record.get(name.encode()) if value is None else value


def _as_int(value, what: str) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise DatasetError(f"{what} should be an integer, got {describe_value(value)}") from None
    if number.bit_length() > 63:
        raise DatasetError(f"{what} should be a 64-bit integer, got {describe_value(number)}")
    return number


def _is_sequence(value) -> bool:
    return isinstance(value, (list, tuple)) or isinstance(value, np.ndarray) and value.ndim == 1


def _product_id(record, where: str) -> int:
    if not isinstance(record, dict):
        raise DatasetError(f"{where} is {describe_value(record)}, not a record dict")
    return _as_int(_field(record, "productid"), f"{where}['productid']")


def _item_ids_by_user(split, name: str, budget: _EntryBudget) -> dict[int, list[int]]:
    if not isinstance(split, dict):
        raise DatasetError(f"user_{name} should be a dict keyed by user id, got {describe_value(split)}")
    budget.spend(len(split), f"user_{name}")
    by_user = {}
    for key, records in split.items():
        user = _as_int(key, f"a user_{name} key")
        where = f"user_{name}[{user}]"
        if not _is_sequence(records):
            raise DatasetError(f"{where} should be a list of records, got {describe_value(records)}")
        budget.spend(len(records), where)
        by_user[user] = [_product_id(record, f"{where}[{k}]") for k, record in enumerate(records)]
    return by_user


def _item_list(items, budget: _EntryBudget) -> list:
    """Item as a list indexed by item id (the original files hold a list or array; a dict keyed by id also works)."""
    if not (_is_sequence(items) or isinstance(items, dict)):
        raise DatasetError(f"Item should be a list of item dicts, got {describe_value(items)}")
    budget.spend(len(items), "Item")
    if not isinstance(items, dict):
        return list(items)
    ids = sorted(_as_int(key, "an Item key") for key in items)
    missing = sorted(set(range(len(ids))) - set(ids))
    if missing:
        raise DatasetError(f"Item keys should be 0..{len(ids) - 1}; {len(missing)} missing: {name_offenders(missing)}")
    return [items[i] for i in ids]


def _problems(splits: dict, items: list, usernum: int, itemnum: int) -> list[str]:
    problems = []

    def report(what: str, offenders: list):
        if offenders:
            problems.append(f"{len(offenders)} {what}: {name_offenders(offenders)}")

    report(f"user ids outside 0..{usernum - 1}",
           [f"{user} ({name})" for name, by_user in splits.items() for user in by_user if not 0 <= user < usernum])
    report(f"item ids outside 0..{itemnum - 1}",
           [f"{item} (user {user}, {name})" for name, by_user in splits.items()
            for user, item_ids in by_user.items() for item in item_ids if not 0 <= item < itemnum])
    for name, by_user in splits.items():
        report(f"users without a {name} record", [user for user in range(usernum) if not by_user.get(user)])
    if len(items) != itemnum:
        problems.append(f"Item has {len(items)} entries but itemnum is {itemnum}")
    report("items without image bytes ('imgs')",
           [i for i, item in enumerate(items) if not isinstance(_field(item, "imgs"), (bytes, bytearray))])
    return problems


def _onehot(value, where: str, budget: _EntryBudget) -> np.ndarray:
    """An item's one-hot `c` as a flat array; it must be a numeric array or a flat list of numbers."""
    if isinstance(value, np.ndarray) and value.dtype.kind in NUMERIC_KINDS:
        size = value.size
    elif isinstance(value, (list, tuple)):
        size = len(value)
    else:
        raise DatasetError(f"{where} should be a one-hot list of numbers, got {describe_value(value)}")
    if size > MAX_CATEGORIES:
        raise DatasetError(f"{where} has {size} entries; a category one-hot has at most {MAX_CATEGORIES}")
    budget.spend(size, where)
    if isinstance(value, (list, tuple)):
        for k, entry in enumerate(value):
            if not isinstance(entry, _NUMBER_TYPES):
                raise DatasetError(f"{where} should be a one-hot list of numbers, but its entry {k} is "
                                   f"{describe_value(entry)}")
    return np.asarray(value).ravel()


def _categories(items: list, budget: _EntryBudget) -> tuple[np.ndarray, int]:
    """argmax of each item's one-hot `c` (-1 where absent or all zero) and the width of `c`, which all items share."""
    category = np.full(len(items), -1, dtype=np.int64)
    width = np.full(len(items), -1, dtype=np.int64)
    for i, item in enumerate(items):
        value = _field(item, "c")
        if value is None:
            continue
        onehot = _onehot(value, f"Item[{i}]['c']", budget)
        width[i] = onehot.size
        if onehot.any():
            category[i] = onehot.argmax()
    if (width < 0).all():
        return category, 0
    usual = int(np.bincount(width[width >= 0]).argmax())
    odd = [f"{i} (width {width[i]})" for i in np.flatnonzero((width >= 0) & (width != usual))]
    if odd:
        raise DatasetError(f"{len(odd)} items have a one-hot category ('c') of another width than the {usual} "
                           f"of the others: {name_offenders(odd)}")
    return category, usual


def _to_dataset(raw, path: Path) -> Dataset:
    if not (_is_sequence(raw) and len(raw) == 6):
        raise DatasetError(f"expected [user_train, user_validation, user_test, Item, usernum, itemnum], "
                           f"got {describe_value(raw)}")
    user_train, user_validation, user_test, items, usernum, itemnum = raw
    usernum, itemnum = _as_int(usernum, "usernum"), _as_int(itemnum, "itemnum")
    if usernum < 1 or itemnum < 1:
        raise DatasetError(f"usernum ({usernum}) and itemnum ({itemnum}) must be positive")
    budget = _EntryBudget(path)
    if usernum > budget.file_bytes:   # each user has records in the file: this bounds the loops over users
        raise DatasetError(f"usernum ({usernum}) is more than the file's {budget.file_bytes} bytes could hold")
    splits = {name: _item_ids_by_user(split, name, budget)
              for name, split in zip(DATA_SPLITS, (user_train, user_validation, user_test))}
    items = _item_list(items, budget)
    problems = _problems(splits, items, usernum, itemnum)
    if problems:
        raise DatasetError("invalid dataset:\n  " + "\n  ".join(problems))
    item_category, num_categories = _categories(items, budget)
    train, validation, test = splits.values()
    return Dataset(
        name=path.stem, path=path, usernum=usernum, itemnum=itemnum,
        user_train=[np.asarray(train[u], dtype=np.int64) for u in range(usernum)],
        user_validation=np.array([validation[u][0] for u in range(usernum)], dtype=np.int64),
        user_test=np.array([test[u][0] for u in range(usernum)], dtype=np.int64),
        item_category=item_category, num_categories=num_categories,
        image_bytes=[bytes(_field(item, "imgs")) for item in items],  # bytes(b) is b: payloads are not copied
    )


def load_dataset(path) -> Dataset:
    """Load and validate a dataset file in the original layout; DatasetError says what is wrong with it."""
    path = Path(path)
    raw = read_pickled_array(path)
    try:
        return _to_dataset(raw, path)
    except DatasetError as e:
        raise DatasetError(f"{path}: {e}") from None


def history(dataset, user, include_heldout=False):
    """Item ids a user's lists leave out: train, validation and test items; train only with `include_heldout`."""
    held_out = [] if include_heldout else [dataset.user_validation[user], dataset.user_test[user]]
    return np.unique(np.concatenate([dataset.user_train[user], held_out]).astype(np.int64))


def check_id(value, count, what):
    """ConfigError unless `value` is a valid id of `count` users or items (`what`)."""
    if not 0 <= value < count:
        raise ConfigError(f"{what} {value} is out of range: the dataset has {count} {what}s (0 to {count - 1})")


def random_dataset(usernum, itemnum, train_per_user, seed=0):
    """Random interactions without images, for benchmarks: per user `train_per_user` training items, one
    validation and one test item, drawn uniformly."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(itemnum, size=(usernum, train_per_user + 2))
    return Dataset(name="synthetic", path=Path("synthetic"), usernum=usernum, itemnum=itemnum,
                   user_train=list(picks[:, 2:]), user_validation=picks[:, 0], user_test=picks[:, 1],
                   item_category=np.full(itemnum, -1), num_categories=0, image_bytes=[])
