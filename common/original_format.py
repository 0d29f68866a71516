"""The original layout of a dataset: writing it byte for byte as Python 2 pickled it (the embedded catalogue and
the tests use it), and the names of AmazonFashion6's categories, the one-hot `c` of its items."""
import os
import pickle
import struct
from pathlib import Path

import numpy as np

# AmazonFashion6's categories in the original's order (the index of the one hot in an item's `c`)
CATEGORY_NAMES = ("men's tops", "women's tops", "men's bottoms", "women's bottoms", "men's shoes", "women's shoes")


def category_name(category: int, num_categories: int) -> str:
    """A category's name in a dataset of `num_categories` categories: AmazonFashion6's names for a dataset of six,
    else "category <index>"; "-" for an item without one (category -1, see common/data.py)."""
    if category < 0:
        return "-"
    return CATEGORY_NAMES[category] if num_categories == len(CATEGORY_NAMES) else f"category {category}"


class _Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: str and bytes both as (SHORT_)BINSTRING (Python 2 had one str type),
    numpy callables under numpy.core (numpy 2 moved them to numpy._core)."""
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj.encode() if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]))
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)))
        self.write(data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "") or ""
        if not module.startswith("numpy._core"):
            return super().save_global(obj, name)
        module = "numpy.core" + module[len("numpy._core"):]
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__name__}\n".encode())
        self.memoize(obj)


def save_original_format(path, user_train, user_validation, user_test, items, usernum, itemnum) -> None:
    """Write a dataset exactly as the original files are: a version-1.0 .npy of a 6-entry object array pickled
    by (a faithful imitation of) Python 2.
    Records are dicts {"productid": int}; items are dicts {"imgs": bytes, "c": one-hot list or array}."""
    top = np.empty(6, dtype=object)
    for k, entry in enumerate((user_train, user_validation, user_test, items, usernum, itemnum)):
        top[k] = entry
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(top))
        _Python2Pickler(f, protocol=2).dump(top)
    os.replace(tmp, path)
