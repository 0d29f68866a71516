"""The original DVBPR datasets: loading them safely, validating them, and choosing the dataset of a run.

A dataset file (e.g. AmazonFashion6ImgPartitioned.npy) is a .npy holding a pickled object array
[user_train, user_validation, user_test, Item, usernum, itemnum], written by Python 2:
- user_* are dicts {user id: [{"productid": item id}, ...]};
- Item[i] is a dict {"imgs": encoded image bytes, "c": one-hot category (may be absent)};
- Python-2 str keys arrive as bytes (b"productid"), so both bytes and str keys are accepted.
The pickle is never run with plain pickle: a restricted unpickler admits only what the format holds (numpy
arrays, dtypes and scalars, builtin values), and neither it nor the conversion lets a small file expand without
bound.
"""
import math
import operator
import os
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


def name_offenders(offenders, limit: int = 10) -> str:
    """The first `limit` offenders, comma separated, then '...' if there are more."""
    shown = ", ".join(str(offender) for offender in offenders[:limit])
    return shown + (", ..." if len(offenders) > limit else "")


# ----------------------------------------------------------------------------------------------------------
# Reading: .npy header, then a restricted unpickler streaming from the file

# The callables numpy's own pickles name, wherever this numpy version files them (numpy.core or numpy._core).
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.int64(0).__reduce__()[0]
_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC_KINDS = "biuf"                          # bool, int, uint, float: the only dtypes besides object
_DICT_KEY_TYPES = (int, str, bytes, np.integer)  # ids and field names: each hashes in one pass over its bytes
_MAX_ARRAY_NESTING = 64                          # freeing object arrays nested in object arrays recurses in C


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _describe(value) -> str:
    """What an untrusted value is, in a few words, never its whole repr: a pickle of a few hundred bytes can share
    references into a structure too large to print."""
    kind = type(value).__name__
    if isinstance(value, np.ndarray):
        return f"an ndarray of dtype {value.dtype} and shape {value.shape}"
    if isinstance(value, (list, tuple, dict, str, bytes)):
        return f"{_a(kind)} of length {len(value)}"
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an int of {value.bit_length()} bits"
    if isinstance(value, (int, float, np.number, np.bool_)):
        return f"{_a(kind)} ({value!r})"
    return "None" if value is None else _a(kind)


def _numpy_state(state) -> bool:
    """Whether a pickled dtype state holds only what numpy writes there (None, small ints, short strings), so
    that comparing and printing it costs nothing."""
    return isinstance(state, tuple) and len(state) <= 9 and all(
        s is None or type(s) is int and s.bit_length() < 64 or type(s) is str and len(s) < 8 for s in state)


def _is_shape(value) -> bool:
    return isinstance(value, tuple) and len(value) <= 64 and all(type(n) is int and 0 <= n < 2**63 for n in value)


def _dtype(code, align=False, copy=True) -> np.dtype:
    """numpy.dtype(code, align, copy) as numpy's pickles call it, for a plain numeric or object type code ('i8',
    'O8', ...): always a fresh copy (align and copy are moot), so that BUILD never touches numpy's own dtype."""
    if not isinstance(code, (str, bytes)):
        raise UnsafePickleError(f"a dtype made from {_describe(code)}; a dataset's dtypes are plain type codes")
    dtype = np.dtype(code.decode("latin-1") if isinstance(code, bytes) else code, False, True)
    if dtype.kind not in _NUMERIC_KINDS + "O" or dtype.fields is not None:
        raise UnsafePickleError(f"the dtype {dtype} (made from {code!r}); a dataset's dtypes are numbers or objects")
    return dtype


def _scalar(dtype, data):
    """numpy's scalar(dtype, data) for numeric dtypes only: an object scalar's data would be a pointer."""
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError(f"a scalar of {_describe(dtype)}, not of a dtype")
    if dtype.kind not in _NUMERIC_KINDS:
        raise UnsafePickleError(f"a scalar of dtype {dtype}; a dataset's scalars are numbers "
                                "(an object scalar's data is a pointer read from the file)")
    if type(data) is not bytes or len(data) != dtype.itemsize:
        raise UnsafePickleError(f"a scalar of dtype {dtype} from {_describe(data)}, not its {dtype.itemsize} bytes")
    return _SCALAR(dtype, data)


def _check_dict_keys(keys):
    for key in keys:
        if not isinstance(key, _DICT_KEY_TYPES):
            raise UnsafePickleError(f"a dict key that is {_describe(key)}; a dataset's keys are ids and field names "
                                    "(a nested tuple key could take unbounded time to hash)")


def _check_dict_update(target, keys):
    if type(target) is not dict:
        raise UnsafePickleError(f"an item assignment into {_describe(target)}, which is not a dict")
    _check_dict_keys(keys)


class _NdarrayName:
    """What a pickle gets for numpy.ndarray. numpy's pickles only pass it to _reconstruct; the real class, called,
    would allocate whatever shape the file asks for."""

    def __call__(self, *args, **kwargs):
        raise UnsafePickleError("a call of numpy.ndarray (numpy's pickles only pass it to _reconstruct)")


_NDARRAY = _NdarrayName()


class _BoundedFile:
    """The pickle's file as the unpickler reads it: a length prefix asking for more than the rest of the file is
    refused before Python allocates that much (small reads, nearly all of them, skip the check)."""

    def __init__(self, file):
        self.file, self.readline = file, file.readline
        self.size = os.fstat(file.fileno()).st_size

    def read(self, n):
        if n > 2**20 and n > self.size - self.file.tell():
            raise pickle.UnpicklingError(f"pickle data was truncated: {n} bytes asked for, "
                                         f"{self.size - self.file.tell()} left in the file")
        return self.file.read(n)


class _RestrictedUnpickler(pickle._Unpickler):
    """Unpickles the dataset format and nothing else: numpy arrays, dtypes and scalars, and builtin values.

    It is the pure-Python unpickler because the C one cannot be bounded: it hashes dict keys and set entries as
    it reads them, and a deep or memo-shared tuple key crashes it or hashes for ever. Here dict keys must be ids
    or field names, there are no sets, BUILD sets the state of arrays and dtypes only, each checked first, and
    arrays may hold no more than the file has bytes.
    """
    dispatch = pickle._Unpickler.dispatch.copy()

    def __init__(self, file):
        super().__init__(_BoundedFile(file), encoding="bytes")
        self.array_bytes_left = os.fstat(file.fileno()).st_size - file.tell()
        self.unbuilt = {}   # id -> array from _reconstruct whose state is not set yet (kept alive: ids stay theirs)
        self.nesting = {}   # id -> (object array, how many object arrays deep it is)
        self.allowed_globals = {
            **{(module, "_reconstruct"): self.reconstruct for module in _MULTIARRAY},
            **{(module, "scalar"): _scalar for module in _MULTIARRAY},
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): _dtype,
        }

    def find_class(self, module, name):
        if (module, name) not in self.allowed_globals:
            raise UnsafePickleError(f"the global {module}.{name}; a dataset may only name numpy's array, dtype and "
                                    "scalar reconstruction")
        return self.allowed_globals[(module, name)]

    def reconstruct(self, subtype, shape, typecode):
        """numpy's _reconstruct(ndarray, (0,), b'b'): an empty array, whose shape, dtype and data come in its state."""
        if subtype is not _NDARRAY:
            raise UnsafePickleError(f"_reconstruct of {_describe(subtype)}, not of numpy.ndarray")
        if shape != (0,):
            raise UnsafePickleError(f"_reconstruct with the shape {shape if _is_shape(shape) else _describe(shape)}; "
                                    "numpy's pickles give (0,), then the array's shape and data in its state")
        array = _RECONSTRUCT(np.ndarray, (0,), "b")
        self.unbuilt[id(array)] = array
        return array

    def set_dtype_state(self, dtype: np.dtype, state):
        """Admit only a state numpy itself gives this dtype, in either byte order: its flags, fields and sizes
        follow from the type code, never from the file."""
        if isinstance(state, tuple):
            state = tuple(s.decode("latin-1") if isinstance(s, bytes) else s for s in state)
        own = dtype.__reduce__()[2]
        if not _numpy_state(state) or state not in (own, dtype.newbyteorder().__reduce__()[2]):
            shown = state if _numpy_state(state) else _describe(state)
            raise UnsafePickleError(f"{dtype!r} with the forged state {shown}; numpy's own state for it is {own}")
        dtype.__setstate__(state)

    def set_array_state(self, array: np.ndarray, state):
        """numpy's (1, shape, dtype, fortran order, data), checked before numpy applies it: once per array, with
        exactly the array's bytes of numeric data or a list of its object entries."""
        if self.unbuilt.pop(id(array), None) is not array:
            raise UnsafePickleError("a second state for an array")
        if not (isinstance(state, tuple) and len(state) == 5 and type(state[0]) is int and state[0] == 1):
            raise UnsafePickleError(f"an array state that is {_describe(state)}, "
                                    "not numpy's (1, shape, dtype, fortran order, data)")
        _, shape, dtype, _, data = state
        if not _is_shape(shape):
            raise UnsafePickleError(f"an array of shape {_describe(shape)}")
        if not isinstance(dtype, np.dtype):
            raise UnsafePickleError(f"an array of dtype {_describe(dtype)}")
        size = math.prod(shape)
        if dtype.hasobject:
            self.check_object_entries(array, data, size)
        elif type(data) is not bytes or len(data) != size * dtype.itemsize:
            raise UnsafePickleError(f"an array of dtype {dtype} and shape {shape} from {_describe(data)}, "
                                    f"not its {size * dtype.itemsize} bytes")
        # an object entry costs the file at least one byte, a number its bytes: more means data shared over and over
        self.array_bytes_left -= size if dtype.hasobject else len(data)
        if self.array_bytes_left < 0:
            raise UnsafePickleError("arrays holding more than the file has bytes (the same data shared many times)")
        array.__setstate__(state)

    def check_object_entries(self, array: np.ndarray, entries, size: int):
        """An object array's entries must be a list the unpickler built (from bytes, numpy would read pointers out
        of the file), holding arrays that are complete, to a bounded nesting."""
        if type(entries) is not list or len(entries) != size:
            raise UnsafePickleError(f"an object array of {size} entries from {_describe(entries)}, "
                                    "not a list of them (from bytes its entries would be pointers read from the file)")
        depth = 0
        for entry in entries:
            if isinstance(entry, np.ndarray):
                if id(entry) in self.unbuilt:
                    raise UnsafePickleError("an array inside an object array before the inner array's state is set")
                depth = max(depth, self.nesting.get(id(entry), (None, 0))[1])
        if depth >= _MAX_ARRAY_NESTING:
            raise UnsafePickleError(f"object arrays nested more than {_MAX_ARRAY_NESTING} deep")
        self.nesting[id(array)] = (array, depth + 1)

    def load_build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, np.dtype):
            self.set_dtype_state(target, state)
        elif isinstance(target, np.ndarray):
            self.set_array_state(target, state)
        else:
            raise UnsafePickleError(f"a state for {_describe(target)}; only arrays and dtypes have one")
    dispatch[pickle.BUILD[0]] = load_build

    def load_setitem(self):
        _check_dict_update(self.stack[-3], self.stack[-2:-1])
        super().load_setitem()
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        _check_dict_update(self.metastack[-1][-1], self.stack[::2])
        super().load_setitems()
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_dict(self):
        _check_dict_keys(self.stack[::2])
        super().load_dict()
    dispatch[pickle.DICT[0]] = load_dict

    def load_set(self):
        raise UnsafePickleError("a set; a dataset holds none (and hashing its entries could take unbounded time)")
    dispatch[pickle.EMPTY_SET[0]] = load_set
    dispatch[pickle.FROZENSET[0]] = load_set


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
            return _RestrictedUnpickler(f).load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: refusing to unpickle {e}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise DatasetError(f"{path}: corrupt pickle payload ({type(e).__name__}: {e})") from e


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
        raise DatasetError(f"{what} should be an integer, got {_describe(value)}") from None
    if number.bit_length() > 63:
        raise DatasetError(f"{what} should be a 64-bit integer, got {_describe(number)}")
    return number


def _is_sequence(value) -> bool:
    return isinstance(value, (list, tuple)) or isinstance(value, np.ndarray) and value.ndim == 1


def _product_id(record, where: str) -> int:
    if not isinstance(record, dict):
        raise DatasetError(f"{where} is {_describe(record)}, not a record dict")
    return _as_int(_field(record, "productid"), f"{where}['productid']")


def _item_ids_by_user(split, name: str, budget: _EntryBudget) -> dict[int, list[int]]:
    if not isinstance(split, dict):
        raise DatasetError(f"user_{name} should be a dict keyed by user id, got {_describe(split)}")
    budget.spend(len(split), f"user_{name}")
    by_user = {}
    for key, records in split.items():
        user = _as_int(key, f"a user_{name} key")
        where = f"user_{name}[{user}]"
        if not _is_sequence(records):
            raise DatasetError(f"{where} should be a list of records, got {_describe(records)}")
        budget.spend(len(records), where)
        by_user[user] = [_product_id(record, f"{where}[{k}]") for k, record in enumerate(records)]
    return by_user


def _item_list(items, budget: _EntryBudget) -> list:
    """Item as a list indexed by item id (the original files hold a list or array; a dict keyed by id also works)."""
    if not (_is_sequence(items) or isinstance(items, dict)):
        raise DatasetError(f"Item should be a list of item dicts, got {_describe(items)}")
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
    if isinstance(value, np.ndarray) and value.dtype.kind in _NUMERIC_KINDS:
        size = value.size
    elif isinstance(value, (list, tuple)):
        size = len(value)
    else:
        raise DatasetError(f"{where} should be a one-hot list of numbers, got {_describe(value)}")
    if size > MAX_CATEGORIES:
        raise DatasetError(f"{where} has {size} entries; a category one-hot has at most {MAX_CATEGORIES}")
    budget.spend(size, where)
    if isinstance(value, (list, tuple)):
        for k, entry in enumerate(value):
            if not isinstance(entry, _NUMBER_TYPES):
                raise DatasetError(f"{where} should be a one-hot list of numbers, but its entry {k} is "
                                   f"{_describe(entry)}")
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
                           f"got {_describe(raw)}")
    user_train, user_validation, user_test, items, usernum, itemnum = raw
    usernum, itemnum = _as_int(usernum, "usernum"), _as_int(itemnum, "itemnum")
    if usernum < 1 or itemnum < 1:
        raise DatasetError(f"usernum ({usernum}) and itemnum ({itemnum}) must be positive")
    budget = _EntryBudget(path)
    if usernum > budget.file_bytes:   # each user has records in the file: this bounds the loops over users
        raise DatasetError(f"usernum ({usernum}) is more than the file's {budget.file_bytes} bytes could hold")
    splits = {name: _item_ids_by_user(split, name, budget)
              for name, split in zip(SPLITS, (user_train, user_validation, user_test))}
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
    raw = _read_pickled_array(path)
    try:
        return _to_dataset(raw, path)
    except DatasetError as e:
        raise DatasetError(f"{path}: {e}") from None


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


def open_dataset(path=None, cache_dir=None) -> tuple[Dataset, bool]:
    """(Dataset, embedded) for a run, as `resolve_dataset` chooses it, its decoded images cached in `cache_dir`
    (None: a cache/ folder beside the file); the fallback to the embedded catalogue is announced in one line."""
    resolved, embedded = resolve_dataset(path)
    dataset = load_dataset(resolved)
    dataset.cache_dir = Path(cache_dir) if cache_dir else None
    if embedded and path is None:
        print(f"{DEFAULT_DATASET} not found: using the embedded demo catalogue {resolved} ({dataset.usernum} "
              f"users, {dataset.itemnum} items, {dataset.num_train_interactions} training actions)")
    return dataset, embedded
