import io
import os
import pickletools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data import load_dataset
from common.errors import DatasetError, UnsafePickleError
from common.original_format import CATEGORY_NAMES, category_name, save_original_format

NUM_USERS, NUM_ITEMS, NUM_CATEGORIES = 5, 8, 6


def jpeg_bytes(rng, width=24, height=16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def make_catalogue(seed=0):
    """A tiny catalogue in the original structure: (user_train, user_validation, user_test, items, usernum, itemnum)."""
    rng = np.random.default_rng(seed)
    items = [{"imgs": jpeg_bytes(rng), "c": np.eye(NUM_CATEGORIES, dtype=np.int64)[i % NUM_CATEGORIES].tolist()}
             for i in range(NUM_ITEMS)]
    user_train = {u: [{"productid": int(i)} for i in rng.choice(NUM_ITEMS, size=1 + u % 3, replace=False)]
                  for u in range(NUM_USERS)}
    user_validation = {u: [{"productid": (u + 1) % NUM_ITEMS}] for u in range(NUM_USERS)}
    user_test = {u: [{"productid": (u + 2) % NUM_ITEMS}] for u in range(NUM_USERS)}
    return user_train, user_validation, user_test, items, NUM_USERS, NUM_ITEMS


def with_bytes_keys(value):
    """The same structure with every str key as bytes, as Python 2 str keys arrive."""
    if isinstance(value, dict):
        return {(k.encode() if isinstance(k, str) else k): with_bytes_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [with_bytes_keys(v) for v in value]
    return value


def save_with_numpy(path, *catalogue):
    """The layout written by modern numpy (Python 3 pickle, numpy._core names)."""
    top = np.empty(6, dtype=object)
    for k, entry in enumerate(catalogue):
        top[k] = entry
    np.save(path, top, allow_pickle=True)


def pickle_opcodes(path):
    with open(path, "rb") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        np.lib.format.read_array_header_1_0(f)
        return list(pickletools.genops(f.read()))


def assert_matches_catalogue(dataset, catalogue):
    user_train, user_validation, user_test, items, usernum, itemnum = catalogue
    assert (dataset.usernum, dataset.itemnum) == (usernum, itemnum)
    for u in range(usernum):
        assert dataset.user_train[u].tolist() == [r["productid"] for r in user_train[u]]
    assert dataset.user_validation.tolist() == [user_validation[u][0]["productid"] for u in range(usernum)]
    assert dataset.user_test.tolist() == [user_test[u][0]["productid"] for u in range(usernum)]
    assert dataset.image_bytes == [item["imgs"] for item in items]
    assert dataset.item_category.tolist() == [i % NUM_CATEGORIES for i in range(itemnum)]
    assert dataset.num_categories == NUM_CATEGORIES


@pytest.mark.parametrize("writer", ["python2", "numpy str keys", "numpy bytes keys"])
def test_round_trip(tmp_path, writer):
    catalogue = make_catalogue()
    path = tmp_path / "Tiny.npy"
    if writer == "python2":
        save_original_format(path, *catalogue)
    elif writer == "numpy str keys":
        save_with_numpy(path, *catalogue)
    else:
        save_with_numpy(path, *with_bytes_keys(list(catalogue)))
    dataset = load_dataset(path)
    assert dataset.name == "Tiny" and dataset.path == path
    assert_matches_catalogue(dataset, catalogue)


def test_written_as_python2_pickle(tmp_path):
    catalogue = make_catalogue()
    path = tmp_path / "Tiny.npy"
    save_original_format(path, *catalogue)
    ops = pickle_opcodes(path)
    names = {op.name for op, _, _ in ops}
    assert not names & {"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
    assert {arg for op, arg, _ in ops if op.name == "GLOBAL"} == {
        "numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    short = {arg for op, arg, _ in ops if op.name == "SHORT_BINSTRING"}
    assert {"productid", "imgs", "c"} <= short
    long_strings = [arg for op, arg, _ in ops if op.name == "BINSTRING"]  # pickletools shows them as latin-1 text
    assert [text.encode("latin-1") for text in long_strings] == [item["imgs"] for item in catalogue[3]]


def test_numpy_reads_it_as_it_read_the_original(tmp_path):
    catalogue = make_catalogue()
    path = tmp_path / "Tiny.npy"
    save_original_format(path, *catalogue)
    user_train, _, user_test, items, usernum, itemnum = np.load(path, allow_pickle=True, encoding="bytes")
    assert (usernum, itemnum) == (NUM_USERS, NUM_ITEMS)
    assert user_train[3] == with_bytes_keys(catalogue[0][3])
    assert user_test[1][0][b"productid"] == catalogue[2][1][0]["productid"]
    assert [item[b"imgs"] for item in items] == [item["imgs"] for item in catalogue[3]]
    assert items[2][b"c"] == catalogue[3][2]["c"]


def test_numpy_scalar_counts_ndarray_categories_and_item_dict(tmp_path):
    user_train, user_validation, user_test, items, usernum, itemnum = make_catalogue()
    for item in items:
        item["c"] = np.asarray(item["c"], dtype=np.float32)
    path = tmp_path / "Tiny.npy"
    save_original_format(path, user_train, user_validation, user_test, dict(enumerate(items)),
                         np.int64(usernum), np.int32(itemnum))
    dataset = load_dataset(path)
    assert_matches_catalogue(dataset, (user_train, user_validation, user_test, items, usernum, itemnum))
    assert type(dataset.usernum) is int and type(dataset.itemnum) is int


def test_category_absent(tmp_path):
    user_train, user_validation, user_test, items, usernum, itemnum = make_catalogue()
    for item in items:
        del item["c"]
    save_original_format(tmp_path / "Tiny.npy", user_train, user_validation, user_test, items, usernum, itemnum)
    dataset = load_dataset(tmp_path / "Tiny.npy")
    assert dataset.num_categories == 0
    assert dataset.item_category.tolist() == [-1] * itemnum



def test_a_category_is_named_by_one_rule():
    assert [category_name(c, len(CATEGORY_NAMES)) for c in range(6)] == list(CATEGORY_NAMES)
    assert [category_name(c, 4) for c in (0, 3)] == ["category 0", "category 3"]  # not AmazonFashion6's six
    assert category_name(-1, len(CATEGORY_NAMES)) == "-"                         # an item without `c`


def test_loading_a_dataset_does_not_import_the_generator():
    loaded = subprocess.run([sys.executable, "-c", "import sys, common.data; print(sorted(sys.modules))"],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True).stdout
    assert "'common.data'" in loaded and "common.catalogue" not in loaded


def test_train_helpers(tmp_path):
    catalogue = make_catalogue()
    save_original_format(tmp_path / "Tiny.npy", *catalogue)
    dataset = load_dataset(tmp_path / "Tiny.npy")
    train_items = [[r["productid"] for r in catalogue[0][u]] for u in range(NUM_USERS)]
    indptr, indices = dataset.train_csr()
    assert [indices[indptr[u]:indptr[u + 1]].tolist() for u in range(NUM_USERS)] == train_items
    assert dataset.num_train_interactions == sum(map(len, train_items)) == len(indices)
    expected_counts = np.bincount(sum(train_items, []), minlength=NUM_ITEMS)
    assert dataset.item_train_counts().tolist() == expected_counts.tolist()


class Hostile:
    """Unpickling this calls `function(*args)`."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def hostile_payloads(marker):
    return {
        "posix.system": Hostile(os.system, f"touch {marker}"),
        "builtins.eval": Hostile(eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.run": Hostile(subprocess.run, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("global_name", ["posix.system", "builtins.eval", "subprocess.run"])
def test_hostile_pickle_is_refused_without_running(tmp_path, global_name):
    marker = tmp_path / "pwned"
    user_train, user_validation, user_test, items, usernum, itemnum = make_catalogue()
    items[3]["imgs"] = hostile_payloads(marker)[global_name]
    path = tmp_path / "Hostile.npy"
    save_with_numpy(path, user_train, user_validation, user_test, items, usernum, itemnum)
    with pytest.raises(UnsafePickleError, match=global_name.replace(".", r"\.")):
        load_dataset(path)
    assert not marker.exists()


def test_hostile_pickle_is_live(tmp_path):
    """Control for the test above: the same file loaded with plain pickle does run its payload."""
    marker = tmp_path / "pwned"
    top = list(make_catalogue())
    top[3][0]["imgs"] = hostile_payloads(marker)["builtins.eval"]
    save_with_numpy(tmp_path / "Hostile.npy", *top)
    np.load(tmp_path / "Hostile.npy", allow_pickle=True)
    assert marker.exists()


def test_hostile_python2_pickle_names_its_builtin(tmp_path):
    marker = tmp_path / "pwned"
    user_train, user_validation, user_test, items, usernum, itemnum = make_catalogue()
    items[0]["c"] = hostile_payloads(marker)["builtins.eval"]
    path = tmp_path / "Hostile.npy"
    save_original_format(path, user_train, user_validation, user_test, items, usernum, itemnum)
    with pytest.raises(UnsafePickleError, match=r"__builtin__\.eval"):
        load_dataset(path)
    assert not marker.exists()


def break_user_id(c):
    c[0][7] = [{"productid": 1}]


def break_item_id(c):
    c[2][2] = [{"productid": 99}]


def drop_validation(c):
    del c[1][1]
    del c[1][3]


def drop_item(c):
    c[3].pop()


def drop_image(c):
    del c[3][4]["imgs"]


def record_not_a_dict(c):
    c[0][3][0] = 5


def widen_category(c):
    c[3][4]["c"] = c[3][4]["c"] + [0]


@pytest.mark.parametrize("corrupt, message", [
    (break_user_id, "1 user ids outside 0..4: 7 (train)"),
    (break_item_id, "1 item ids outside 0..7: 99 (user 2, test)"),
    (drop_validation, "2 users without a validation record: 1, 3"),
    (drop_item, "Item has 7 entries but itemnum is 8"),
    (drop_image, "1 items without image bytes ('imgs'): 4"),
    (record_not_a_dict, "user_train[3][0] is an int (5), not a record dict"),
    (widen_category, "1 items have a one-hot category ('c') of another width than the 6 of the others: 4 (width 7)"),
])
def test_validation_names_offenders(tmp_path, corrupt, message):
    catalogue = list(make_catalogue())
    corrupt(catalogue)
    save_original_format(tmp_path / "Bad.npy", *catalogue)
    with pytest.raises(DatasetError) as error:
        load_dataset(tmp_path / "Bad.npy")
    assert message in str(error.value)


def test_validation_caps_the_offender_list(tmp_path):
    catalogue = list(make_catalogue())
    for u in range(100, 115):
        catalogue[0][u] = [{"productid": 0}]
    save_original_format(tmp_path / "Bad.npy", *catalogue)
    with pytest.raises(DatasetError, match=r"15 user ids outside 0\.\.4: " + ", ".join(
            f"{u} \\(train\\)" for u in range(100, 110)) + r", \.\.\.$"):
        load_dataset(tmp_path / "Bad.npy")


def test_truncated_and_foreign_files(tmp_path):
    save_original_format(tmp_path / "Tiny.npy", *make_catalogue())
    whole = (tmp_path / "Tiny.npy").read_bytes()
    (tmp_path / "Truncated.npy").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DatasetError, match="corrupt pickle payload"):
        load_dataset(tmp_path / "Truncated.npy")
    np.save(tmp_path / "Floats.npy", np.zeros(3))
    with pytest.raises(DatasetError, match="float64 array"):
        load_dataset(tmp_path / "Floats.npy")
    (tmp_path / "Text.npy").write_text("user,item\n")
    with pytest.raises(DatasetError, match="not a .npy file"):
        load_dataset(tmp_path / "Text.npy")
