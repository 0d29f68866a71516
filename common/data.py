"""The original DVBPR datasets: loading them safely, validating them, and writing them in their original layout.

A dataset file (e.g. AmazonFashion6ImgPartitioned.npy) is a .npy holding a pickled object array
[user_train, user_validation, user_test, Item, usernum, itemnum], written by Python 2:
- user_* are dicts {user id: [{"productid": item id}, ...]};
- Item[i] is a dict {"imgs": encoded image bytes, "c": one-hot category (may be absent)};
- Python-2 str keys arrive as bytes (b"productid"), so both bytes and str keys are accepted.
The pickle is never run with plain pickle: only numpy's array/scalar reconstruction and builtin containers
may be named in it.
"""
import operator
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.catalogue import ensure_embedded_catalogue, is_embedded
from common.errors import DatasetError, UnsafePickleError

DEFAULT_DATASET = Path("data/AmazonFashion6ImgPartitioned.npy")
SPLITS = ("train", "validation", "test")


@dataclass
class Dataset:
    name: str                        # file stem, e.g. "AmazonFashion6ImgPartitioned"
    path: Path
    usernum: int
    itemnum: int
    # the large fields stay out of repr(): a real dataset is gigabytes
    user_train: list[np.ndarray] = field(repr=False)   # per user, int64 item ids
    user_validation: np.ndarray = field(repr=False)    # (usernum,) int64: the held-out validation item
    user_test: np.ndarray = field(repr=False)          # (usernum,) int64: the held-out test item
    item_category: np.ndarray = field(repr=False)      # (itemnum,) int64: argmax of the one-hot `c`, -1 where absent
    num_categories: int                                # width of `c` (0 if no item has `c`)
    image_bytes: list[bytes] = field(repr=False)       # encoded image per item

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


def name_offenders(offenders, limit: int = 10) -> str:
    """The first `limit` offenders, comma separated, then '...' if there are more."""
    shown = ", ".join(str(offender) for offender in offenders[:limit])
    return shown + (", ..." if len(offenders) > limit else "")


# ----------------------------------------------------------------------------------------------------------
# Reading: .npy header, then a restricted unpickler streaming from the file

# The callables numpy's own pickles name, wherever this numpy version files them (numpy.core or numpy._core).
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.int64(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    **{(module, "_reconstruct"): _RECONSTRUCT for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _SCALAR for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(module, container.__name__): container
       for module in ("builtins", "__builtin__")
       for container in (list, dict, tuple, set, frozenset, bytearray)},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source}: refusing to unpickle the global {module}.{name}; "
                "a dataset may only contain numpy arrays, numpy scalars and builtin containers")
        return _ALLOWED_GLOBALS[(module, name)]


def _read_pickled_array(path: Path):
    """The object array inside a .npy file, unpickled straight from the file (never read whole into memory)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            header = readers[version](f) if version in readers else None
        except ValueError as e:
            raise DatasetError(f"{path}: not a .npy file ({e})") from e
        if header is None:
            raise DatasetError(f"{path}: unsupported .npy format version {version[0]}.{version[1]}")
        dtype = header[2]
        if dtype != object:
            raise DatasetError(f"{path}: holds a {dtype} array, not the pickled object array of the original layout")
        try:
            return _RestrictedUnpickler(f, source=str(path)).load()
        except DatasetError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise DatasetError(f"{path}: corrupt pickle payload ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------------------------------------
# Converting the raw structure into a Dataset, with validation

def _field(record, name: str):
    """record[name] for a dict whose keys are str or (from Python-2 pickles) bytes; None if absent."""
    if not isinstance(record, dict):
        return None
    value = record.get(name)
    return record.get(name.encode()) if value is None else value


def _as_int(value, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise DatasetError(f"{what} should be an integer, got {value!r}") from None


def _item_ids_by_user(split, name: str) -> dict[int, list[int]]:
    if not isinstance(split, dict):
        raise DatasetError(f"user_{name} should be a dict keyed by user id, got {type(split).__name__}")
    by_user = {}
    for key, records in split.items():
        user = _as_int(key, f"a user_{name} key")
        if not isinstance(records, (list, tuple, np.ndarray)):
            raise DatasetError(f"user_{name}[{user}] should be a list of records, got {type(records).__name__}")
        by_user[user] = [_as_int(_field(record, "productid"), f"productid of a user_{name}[{user}] record")
                         for record in records]
    return by_user


def _item_list(items) -> list:
    """Item as a list indexed by item id (the original files hold a list or array; a dict keyed by id also works)."""
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


def _categories(items: list) -> tuple[np.ndarray, int]:
    """argmax of each item's one-hot `c` (-1 where absent or all zero) and the width of `c`."""
    category = np.full(len(items), -1, dtype=np.int64)
    width = 0
    for i, item in enumerate(items):
        onehot = _field(item, "c")
        if onehot is None:
            continue
        onehot = np.asarray(onehot).ravel()
        width = max(width, onehot.size)
        if onehot.any():
            category[i] = onehot.argmax()
    return category, width


def _to_dataset(raw, path: Path) -> Dataset:
    if not isinstance(raw, (np.ndarray, list, tuple)) or len(raw) != 6:
        raise DatasetError(f"{path}: expected [user_train, user_validation, user_test, Item, usernum, itemnum], "
                           f"got {type(raw).__name__} of length {len(raw) if hasattr(raw, '__len__') else '?'}")
    user_train, user_validation, user_test, items, usernum, itemnum = raw
    usernum, itemnum = _as_int(usernum, "usernum"), _as_int(itemnum, "itemnum")
    if usernum < 1 or itemnum < 1:
        raise DatasetError(f"{path}: usernum ({usernum}) and itemnum ({itemnum}) must be positive")
    splits = {name: _item_ids_by_user(split, name)
              for name, split in zip(SPLITS, (user_train, user_validation, user_test))}
    items = _item_list(items)
    problems = _problems(splits, items, usernum, itemnum)
    if problems:
        raise DatasetError(f"{path}: invalid dataset:\n  " + "\n  ".join(problems))
    item_category, num_categories = _categories(items)
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
    return _to_dataset(_read_pickled_array(path), path)


# ----------------------------------------------------------------------------------------------------------
# Choosing the dataset of a run

def resolve_dataset(path=None) -> tuple[Path, bool]:
    """(absolute path, embedded) of a run's dataset: `path` if given ("embedded" forces the demo catalogue), else
    the real AmazonFashion file at its default path, else the embedded catalogue (generated once)."""
    if path and path != "embedded":
        if not Path(path).is_file():
            raise DatasetError(f"dataset {path} not found (bash download_dataset.sh fetches the originals)")
        return Path(path).resolve(), is_embedded(path)
    if path is None and DEFAULT_DATASET.is_file():
        return DEFAULT_DATASET.resolve(), False
    return ensure_embedded_catalogue().resolve(), True


def open_dataset(path=None) -> tuple[Dataset, bool]:
    """(Dataset, embedded) for a run, as `resolve_dataset` chooses it; the fallback to the embedded catalogue is
    announced in one line."""
    resolved, embedded = resolve_dataset(path)
    dataset = load_dataset(resolved)
    if embedded and path is None:
        print(f"{DEFAULT_DATASET} not found: using the embedded demo catalogue {resolved} ({dataset.usernum} "
              f"users, {dataset.itemnum} items, {dataset.num_train_interactions} training actions)")
    return dataset, embedded
