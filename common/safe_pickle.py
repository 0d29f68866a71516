"""Reading the pickled object array inside a .npy file without running the pickle as plain pickle would.

The original DVBPR datasets are .npy files holding a pickled object array, written by Python 2. Here a restricted
unpickler admits only what that format holds (numpy arrays, dtypes and scalars, builtin values), refuses what
would let a small file expand without bound, and reports the cause in one line (UnsafePickleError or
DatasetError, naming the file).
"""
import io
import math
import os
import pickle
import struct
import tokenize
from pathlib import Path

import numpy as np

from common.errors import DatasetError, UnsafePickleError

# The callables numpy's own pickles name, wherever this numpy version files them (numpy.core or numpy._core).
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.int64(0).__reduce__()[0]
_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
NUMERIC_KINDS = "biuf"                           # bool, int, uint, float: the only dtypes besides object
_DICT_KEY_TYPES = (int, str, bytes, np.integer)  # ids and field names: each hashes in one pass over its bytes
_MAX_ARRAY_NESTING = 64                          # freeing object arrays nested in object arrays recurses in C
MAX_HEADER_BYTES = 10_000                        # a .npy header's length at most (numpy's own default bound)
_HEADER_LENGTH_BYTES = {(1, 0): 2, (2, 0): 4}    # the little-endian length before the header, by .npy version


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def describe_value(value) -> str:
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
        raise UnsafePickleError(f"a dtype made from {describe_value(code)}; a dataset's dtypes are plain type codes")
    try:  # numpy parses a subarray's shape in a type code with ast: it raises what ast does
        dtype = np.dtype(code.decode("latin-1") if isinstance(code, bytes) else code, False, True)
    except (TypeError, ValueError, SyntaxError, RecursionError):
        shown = repr(code) if len(code) <= 40 else describe_value(code)
        raise UnsafePickleError(f"the dtype code {shown}, which numpy cannot read") from None
    if dtype.kind not in NUMERIC_KINDS + "O" or dtype.fields is not None:
        raise UnsafePickleError(f"the dtype {dtype} (made from {code!r}); a dataset's dtypes are numbers or objects")
    return dtype


def _scalar(dtype, data):
    """numpy's scalar(dtype, data) for numeric dtypes only: an object scalar's data would be a pointer."""
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError(f"a scalar of {describe_value(dtype)}, not of a dtype")
    if dtype.kind not in NUMERIC_KINDS:
        raise UnsafePickleError(f"a scalar of dtype {dtype}; a dataset's scalars are numbers "
                                "(an object scalar's data is a pointer read from the file)")
    if type(data) is not bytes or len(data) != dtype.itemsize:
        raise UnsafePickleError(f"a scalar of dtype {dtype} from {describe_value(data)}, "
                                f"not its {dtype.itemsize} bytes")
    return _SCALAR(dtype, data)


def _check_dict_keys(keys):
    for key in keys:
        if not isinstance(key, _DICT_KEY_TYPES):
            raise UnsafePickleError(f"a dict key that is {describe_value(key)}; a dataset's keys are ids and field "
                                    "names (a nested tuple key could take unbounded time to hash)")


def _check_dict_update(target, keys):
    if type(target) is not dict:
        raise UnsafePickleError(f"an item assignment into {describe_value(target)}, which is not a dict")
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
        self.file_size = os.fstat(file.fileno()).st_size
        self.array_bytes_left = self.file_size - file.tell()
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
            raise UnsafePickleError(f"_reconstruct of {describe_value(subtype)}, not of numpy.ndarray")
        if shape != (0,):
            shown = shape if _is_shape(shape) else describe_value(shape)
            raise UnsafePickleError(f"_reconstruct with the shape {shown}; numpy's pickles give (0,), then the "
                                    "array's shape and data in its state")
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
            shown = state if _numpy_state(state) else describe_value(state)
            raise UnsafePickleError(f"{dtype!r} with the forged state {shown}; numpy's own state for it is {own}")
        dtype.__setstate__(state)

    def set_array_state(self, array: np.ndarray, state):
        """numpy's (1, shape, dtype, fortran order, data), checked before numpy applies it: once per array, with
        exactly the array's bytes of numeric data or a list of its object entries."""
        if self.unbuilt.pop(id(array), None) is not array:
            raise UnsafePickleError("a second state for an array")
        if not (isinstance(state, tuple) and len(state) == 5 and type(state[0]) is int and state[0] == 1):
            raise UnsafePickleError(f"an array state that is {describe_value(state)}, "
                                    "not numpy's (1, shape, dtype, fortran order, data)")
        _, shape, dtype, _, data = state
        if not _is_shape(shape):
            raise UnsafePickleError(f"an array of shape {describe_value(shape)}")
        if not isinstance(dtype, np.dtype):
            raise UnsafePickleError(f"an array of dtype {describe_value(dtype)}")
        size = math.prod(shape)
        if dtype.hasobject:
            self.check_object_entries(array, data, size)
        elif type(data) is not bytes or len(data) != size * dtype.itemsize:
            raise UnsafePickleError(f"an array of dtype {dtype} and shape {shape} from {describe_value(data)}, "
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
            raise UnsafePickleError(f"an object array of {size} entries from {describe_value(entries)}, "
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
            raise UnsafePickleError(f"a state for {describe_value(target)}; only arrays and dtypes have one")
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

    def load_bytearray8(self):
        """BYTEARRAY8 allocates its length before reading: a length past the file's size is refused first."""
        size, = struct.unpack("<Q", self.read(8))
        if size > self.file_size:
            raise pickle.UnpicklingError(f"a BYTEARRAY8 of {size} bytes, more than the file's {self.file_size}")
        data = bytearray(size)
        self.readinto(data)
        self.append(data)
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def load_set(self):
        raise UnsafePickleError("a set; a dataset holds none (and hashing its entries could take unbounded time)")
    dispatch[pickle.EMPTY_SET[0]] = load_set
    dispatch[pickle.FROZENSET[0]] = load_set


def read_header(f, path: Path):
    """(version, shape, fortran order, dtype) of the .npy header at the start of `f`, its length checked against
    MAX_HEADER_BYTES before it is read, and numpy's parser (ast, and tokenize for Python 2's headers) run on those
    bytes alone, whatever it raises on them made one line."""
    try:
        version = np.lib.format.read_magic(f)
    except ValueError as e:
        raise DatasetError(f"{path}: not a .npy file ({e})") from None
    if version not in _HEADER_LENGTH_BYTES:
        raise DatasetError(f"{path}: unsupported .npy format version {version[0]}.{version[1]}")
    length_bytes = f.read(_HEADER_LENGTH_BYTES[version])
    length = int.from_bytes(length_bytes, "little")
    if len(length_bytes) < _HEADER_LENGTH_BYTES[version]:
        raise DatasetError(f"{path}: the file ends inside its .npy header (truncated)")
    if length > MAX_HEADER_BYTES:
        raise DatasetError(f"{path}: a .npy header of {length} bytes, more than the {MAX_HEADER_BYTES} numpy "
                           "writes at most (the file is corrupted)")
    header = io.BytesIO(length_bytes + f.read(length))
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        return version, *readers[version](header, max_header_size=MAX_HEADER_BYTES)
    except (ValueError, SyntaxError, tokenize.TokenError, TypeError, RecursionError) as e:
        raise DatasetError(f"{path}: its .npy header is not the dict numpy writes ({type(e).__name__}: "
                           f"{first_line(e)})") from None


def first_line(error, limit=120):
    """The start of an error's message, on one line (numpy quotes a whole header, over several)."""
    text = str(error).split("\n", 1)[0]
    return text if len(text) <= limit else text[:limit] + "..."


def read_pickled_array(path: Path):
    """The object array inside a .npy file, unpickled straight from the file (never read whole into memory)."""
    with open(path, "rb") as f:
        dtype = read_header(f, path)[3]
        if dtype != object:
            raise DatasetError(f"{path}: holds a {dtype} array, not the pickled object array of the original layout")
        try:
            return _RestrictedUnpickler(f).load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: refusing to unpickle {e}") from None
        except struct.error as e:  # what the unpickler's struct.unpack raises on an operand the file's end cut short
            raise DatasetError(f"{path}: corrupt pickle payload (an operand cut short: {e})") from e
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise DatasetError(f"{path}: corrupt pickle payload ({type(e).__name__}: {first_line(e)})") from e
