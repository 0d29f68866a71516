"""Forged dataset files. Each is refused with a DatasetError naming the file and the cause: the unsafe ones while
unpickling, before numpy builds anything from their bytes; the bombs without expanding what they share."""
import pickle

import numpy as np
import pytest

from common.data import MAX_CATEGORIES, load_dataset
from common.errors import DatasetError, UnsafePickleError
from common.original_format import save_original_format
from tests.test_data import make_catalogue

RECONSTRUCT = np.empty(0).__reduce__()[0]
SCALAR = np.int64(0).__reduce__()[0]
POINTER = (0x4141414141414141).to_bytes(8, "little")  # an object entry built from these bytes would point here


class Forged:
    """Unpickles as function(*args), then, if a state is given, BUILD with it."""

    def __init__(self, function, args, state=None):
        self.function, self.args, self.state = function, args, state

    def __reduce__(self):
        return (self.function, self.args) if self.state is None else (self.function, self.args, self.state)


def forged_dtype(code, flags):
    """The dtype for `code` with its pickled flags replaced."""
    state = np.dtype(code).__reduce__()[2]
    return Forged(np.dtype, (code, False, True), state[:-1] + (flags,))


def forged_array(dtype, shape, data):
    return Forged(RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, shape, dtype, False, data))


def as_user_train(catalogue, value):
    catalogue[0] = value


def as_usernum(catalogue, value):
    catalogue[4] = value


def as_category(catalogue, value):
    catalogue[3][3]["c"] = value


def as_item_list(catalogue, value):
    catalogue[3] = value


def save_with(path, place, value):
    """The tiny catalogue in the original format with `value` placed in it."""
    catalogue = list(make_catalogue())
    place(catalogue, value)
    save_original_format(path, *catalogue)


SLOT = b"hand-written opcodes go here"


def save_with_opcodes(path, place, opcodes):
    """The tiny catalogue with hand-written pickle opcodes, pushing one object, placed in it: the structures that
    no pickler writes."""
    save_with(path, place, SLOT)
    written = pickle.SHORT_BINSTRING + bytes([len(SLOT)]) + SLOT
    data = path.read_bytes()
    assert data.count(written) == 1
    path.write_bytes(data.replace(written, opcodes))


def put(k):
    return pickle.LONG_BINPUT + (2**30 + k).to_bytes(4, "little")  # memo slots far from the pickler's own


def get(k):
    return pickle.LONG_BINGET + (2**30 + k).to_bytes(4, "little")


def laughs(levels, width=10):
    """A list of `width` references to a list of `width` references to ... `levels` deep: width**levels entries
    in a few hundred bytes ("billion laughs")."""
    opcodes = pickle.MARK + (pickle.BININT1 + b"\x00") * width + pickle.LIST + put(0)
    for level in range(1, levels):
        opcodes += pickle.POP + pickle.MARK + get(level - 1) * width + pickle.LIST + put(level)
    return opcodes


def nested_lists(depth):
    return pickle.EMPTY_LIST * depth + pickle.APPEND * (depth - 1)


def refusal(path, error=DatasetError) -> str:
    with pytest.raises(error) as caught:
        load_dataset(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    return message


# ----------------------------------------------------------------------------------------------------------
# Memory-unsafe: an object array or scalar whose entries are pointers the file chose

@pytest.mark.parametrize("code, flags", [("O8", 0), ("i8", 63)], ids=["object dtype without its flags",
                                                                      "int dtype with object flags"])
def test_forged_dtype_flags_are_refused(tmp_path, code, flags):
    save_with(tmp_path / "Forged.npy", as_item_list, forged_array(forged_dtype(code, flags), (1,), POINTER))
    message = refusal(tmp_path / "Forged.npy", UnsafePickleError)
    assert f"refusing to unpickle {np.dtype(code)!r} with the forged state" in message
    assert f"-1, {flags})" in message


def test_object_array_from_bytes_is_refused(tmp_path):
    save_with(tmp_path / "Forged.npy", as_item_list, forged_array(np.dtype(object), (1,), POINTER))
    message = refusal(tmp_path / "Forged.npy", UnsafePickleError)
    assert "refusing to unpickle an object array of 1 entries from a bytes of length 8, not a list" in message


def test_structured_dtype_with_objects_is_refused(tmp_path):
    array = forged_array(np.dtype("i8,O"), (1,), bytes(8) + POINTER)
    save_with(tmp_path / "Forged.npy", as_item_list, array)
    assert "refusing to unpickle the dtype |V16" in refusal(tmp_path / "Forged.npy", UnsafePickleError)


def test_object_scalar_is_refused(tmp_path):
    save_with(tmp_path / "Forged.npy", as_usernum, Forged(SCALAR, (np.dtype(object), POINTER)))
    assert "refusing to unpickle a scalar of dtype object" in refusal(tmp_path / "Forged.npy", UnsafePickleError)


def test_ndarray_called_directly_is_refused(tmp_path):
    save_with(tmp_path / "Forged.npy", as_usernum, Forged(np.ndarray, ((2**44,), "i1")))
    assert "refusing to unpickle a call of numpy.ndarray" in refusal(tmp_path / "Forged.npy", UnsafePickleError)


# ----------------------------------------------------------------------------------------------------------
# Bombs: small files that would expand without bound

def test_billion_laughs_as_usernum_is_refused_at_once(tmp_path):
    save_with_opcodes(tmp_path / "Bomb.npy", as_usernum, laughs(30))
    assert "usernum should be an integer, got a list of length 10" in refusal(tmp_path / "Bomb.npy")


def test_billion_laughs_as_category_is_refused_at_once(tmp_path):
    save_with_opcodes(tmp_path / "Bomb.npy", as_category, laughs(30))
    assert ("Item[3]['c'] should be a one-hot list of numbers, but its entry 0 is a list of length 10"
            in refusal(tmp_path / "Bomb.npy"))


@pytest.mark.parametrize("place, message", [
    (as_usernum, "usernum should be an integer, got a list of length 1"),
    (as_category, "Item[3]['c'] should be a one-hot list of numbers, but its entry 0 is a list of length 1"),
])
def test_deep_nesting_is_refused_without_recursing(tmp_path, place, message):
    save_with_opcodes(tmp_path / "Deep.npy", place, nested_lists(200_000))
    assert message in refusal(tmp_path / "Deep.npy")


def test_wide_category_is_refused(tmp_path):
    save_with(tmp_path / "Wide.npy", as_category, [0] * (MAX_CATEGORIES + 1))
    assert (f"Item[3]['c'] has {MAX_CATEGORIES + 1} entries; a category one-hot has at most {MAX_CATEGORIES}"
            in refusal(tmp_path / "Wide.npy"))


@pytest.mark.parametrize("key", [
    # ((((None,),),),): the C unpickler hashes it as it reads it, recursing until it crashes
    pickle.NONE + pickle.TUPLE1 * 200_000,
    # t = (t', t'), 60 levels of memo references: hashing it takes 2**60 steps
    pickle.EMPTY_TUPLE + put(0) + pickle.POP
    + b"".join(get(k) * 2 + pickle.TUPLE2 + put(k + 1) + pickle.POP for k in range(60)) + get(60),
], ids=["deep tuple", "memo-shared tuple"])
def test_tuple_dict_key_is_refused_before_hashing(tmp_path, key):
    save_with_opcodes(tmp_path / "Key.npy", as_usernum, pickle.EMPTY_DICT + key + pickle.NONE + pickle.SETITEM)
    assert "refusing to unpickle a dict key that is a tuple" in refusal(tmp_path / "Key.npy", UnsafePickleError)


def test_huge_reconstruct_is_refused_before_allocating(tmp_path):
    save_with(tmp_path / "Huge.npy", as_usernum, Forged(RECONSTRUCT, (np.ndarray, (2**44,), b"b")))
    assert (f"refusing to unpickle _reconstruct with the shape ({2**44},)"
            in refusal(tmp_path / "Huge.npy", UnsafePickleError))


def test_array_larger_than_its_data_is_refused(tmp_path):
    save_with(tmp_path / "Huge.npy", as_category, forged_array(np.dtype("u1"), (2**44,), bytes(8)))
    assert (f"refusing to unpickle an array of dtype uint8 and shape ({2**44},) from a bytes of length 8, "
            f"not its {2**44} bytes" in refusal(tmp_path / "Huge.npy", UnsafePickleError))


def test_arrays_sharing_their_data_are_refused(tmp_path):
    shared = bytes(2**20)
    arrays = [forged_array(np.dtype("u1"), (2**20,), shared) for _ in range(100)]
    save_with(tmp_path / "Shared.npy", as_usernum, arrays)
    assert "more than the file has bytes" in refusal(tmp_path / "Shared.npy", UnsafePickleError)


def test_users_sharing_one_record_list_are_refused(tmp_path):
    records = [{"productid": 0}] * 2000
    save_with(tmp_path / "Shared.npy", as_user_train, dict.fromkeys(range(2000), records))  # one list, 2000 times
    message = refusal(tmp_path / "Shared.npy")
    assert "user_train[" in message and "more than the file has bytes" in message


def test_object_arrays_nested_too_deep_are_refused(tmp_path):
    array = None
    for _ in range(100):
        array = forged_array(np.dtype(object), (1,), [array])
    save_with(tmp_path / "Nested.npy", as_usernum, array)
    assert "object arrays nested more than 64 deep" in refusal(tmp_path / "Nested.npy", UnsafePickleError)


@pytest.mark.parametrize("usernum, message", [
    (10**12, "usernum (1000000000000) is more than the file's"),
    (2**70, "usernum should be a 64-bit integer, got an int of 71 bits"),
])
def test_usernum_beyond_the_file_is_refused(tmp_path, usernum, message):
    save_with(tmp_path / "Count.npy", as_usernum, usernum)
    assert message in refusal(tmp_path / "Count.npy")


def test_forged_length_prefix_is_refused_before_allocating(tmp_path):
    save_with_opcodes(tmp_path / "Length.npy", as_usernum, pickle.BINBYTES8 + (2**50).to_bytes(8, "little"))
    assert f"pickle data was truncated: {2**50} bytes asked for" in refusal(tmp_path / "Length.npy")


# ----------------------------------------------------------------------------------------------------------
# Opcodes the format never needs, each a way around the checks above

RECONSTRUCTED = b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\nK\x00\x85U\x01btR"  # (ndarray, (0,), b"b")


def array_state(code, data):
    """BUILD's state for a one-entry array: (1, (1,), dtype(code, False, True), False, data)."""
    return b"(K\x01K\x01\x85cnumpy\ndtype\n(U\x02" + code + b"\x89\x88tR\x89" + data + b"t"


ONE_BYTE_ARRAY = RECONSTRUCTED + array_state(b"u1", b"U\x01\x00") + pickle.BUILD


@pytest.mark.parametrize("opcodes, cause", [
    (pickle.EMPTY_SET, "a set"),
    (pickle.MARK + pickle.FROZENSET, "a set"),
    (pickle.EMPTY_LIST + b"K\x00K\x01" + pickle.SETITEM, "an item assignment into a list"),
    (ONE_BYTE_ARRAY + b"K\x00K\x05" + pickle.SETITEM, "an item assignment into an ndarray"),
    (pickle.EMPTY_DICT * 2 + pickle.BUILD, "a state for a dict"),
    (ONE_BYTE_ARRAY + array_state(b"u1", b"U\x01\x00") + pickle.BUILD, "a second state for an array"),
    (RECONSTRUCTED + array_state(b"O8", pickle.EMPTY_LIST + RECONSTRUCTED + pickle.APPEND) + pickle.BUILD,
     "an array inside an object array before the inner array's state is set"),
], ids=["set", "frozenset", "setitem into a list", "setitem into an array", "state of a dict", "array state twice",
        "unfinished array in an object array"])
def test_opcodes_outside_the_format_are_refused(tmp_path, opcodes, cause):
    save_with_opcodes(tmp_path / "Odd.npy", as_usernum, opcodes)
    assert f"refusing to unpickle {cause}" in refusal(tmp_path / "Odd.npy", UnsafePickleError)
