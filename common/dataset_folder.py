"""The dataset folder: a dataset on disk without pickle, as convert/main.py writes it and every stage reads it.

    NAME/
      manifest.json       what is below: format and version, counts, category names, source, settings, each
                          file's size, dtype, shape and sha256, and a fingerprint of them all
      train_indptr.npy    int64 [usernum + 1]   user u's training items are train_items[indptr[u]:indptr[u + 1]]
      train_items.npy     int64 [interactions]  in time order within each user
      validation.npy      int64 [usernum]       the held-out validation item of each user
      test.npy            int64 [usernum]       the held-out test item of each user
      item_category.npy   int64 [itemnum]       index into the manifest's "categories", -1 where none
      image_offsets.npy   int64 [itemnum + 1]   item i's encoded image is images.bin[offsets[i]:offsets[i + 1]]
      images.bin          the encoded images (JPEG as the sources give them), one after the other
      train_times.npy, validation_times.npy, test_times.npy   int64, optional: when each interaction happened, in
                          the manifest's "time_unit"
      users.txt, items.txt  the source's user and item ids, one a line in id order (for people; not loaded)

Arrays are plain .npy files read with allow_pickle=False. Loading checks, before it reads an array, that its header
agrees with the manifest (dtype, shape, hence size) and that the file is exactly that long, then that the array's
sha256 is the manifest's; the image bytes are memory-mapped and checked by size and offsets (not hashed: tens of
GB; the image cache keys on their content, common/images.py). Every problem is a one-line DatasetError naming the
file.
"""
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.checkpoint import atomic_write, fingerprint, write_json
from common.data import MAX_CATEGORIES, Dataset, name_offenders
from common.errors import DatasetError

FORMAT = "visually-aware-fashion dataset folder"
VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 4 << 20   # category names and settings; ten thousand long names fit in a fraction of this
IMAGES = "images.bin"
ARRAY_DTYPE = np.dtype("<i8")
REQUIRED_ARRAYS = ("train_indptr", "train_items", "validation", "test", "item_category", "image_offsets")
OPTIONAL_ARRAYS = ("train_times", "validation_times", "test_times")


def is_dataset_folder(path) -> bool:
    return Path(path).is_dir()


# ----------------------------------------------------------------------------------------------------------
# Writing

def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def save_array(folder, name: str, values) -> None:
    """folder/name.npy as int64, written atomically (a killed writer leaves the old file or none)."""
    array = np.ascontiguousarray(values, dtype=ARRAY_DTYPE)
    atomic_write(Path(folder) / f"{name}.npy", lambda f: np.save(f, array, allow_pickle=False))


def write_manifest(folder, *, usernum: int, itemnum: int, categories: list[str], description: dict) -> dict:
    """manifest.json for the arrays and images.bin already in `folder`: their sizes and digests, the counts, the
    category names and `description` (source, settings, time_unit, what was dropped). Written last: a folder with a
    manifest is a finished dataset."""
    folder = Path(folder)
    arrays = {}
    for name in REQUIRED_ARRAYS + OPTIONAL_ARRAYS:
        path = folder / f"{name}.npy"
        if path.is_file():
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            arrays[name] = {"file": path.name, "dtype": array.dtype.str, "shape": list(array.shape),
                            "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    images = {"file": IMAGES, "bytes": (folder / IMAGES).stat().st_size, "sha256": file_sha256(folder / IMAGES)}
    manifest = {"format": FORMAT, "version": VERSION, "usernum": usernum, "itemnum": itemnum,
                "interactions": arrays["train_items"]["shape"][0], "num_categories": len(categories),
                "categories": categories, **description, "arrays": arrays, "images": images}
    manifest["fingerprint"] = fingerprint({"arrays": arrays, "images": images, "categories": categories}, 16)
    write_json(folder / MANIFEST, manifest)
    return manifest


# ----------------------------------------------------------------------------------------------------------
# Reading

class ImageBytes(Sequence):
    """The items' encoded images as a sequence of bytes, read on demand from the memory-mapped images.bin:
    image_bytes[i] is item i's, a slice is a list."""

    def __init__(self, path: Path, offsets: np.ndarray):
        self.path, self.offsets = path, offsets
        self.blob = np.memmap(path, dtype=np.uint8, mode="r")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        i = range(len(self))[index]
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes()

    def __reduce__(self):  # a worker process maps the file itself
        return ImageBytes, (self.path, self.offsets)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{folder} is a folder without {MANIFEST}: not a dataset folder, or its conversion has not "
                           "finished (rerun the convert command that writes it)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise DatasetError(f"{path} is {path.stat().st_size:,} bytes, more than the {MAX_MANIFEST_BYTES:,} a manifest "
                           "may have")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{path} is not the manifest of a dataset folder (its 'format' is not {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise DatasetError(f"{path} has version {manifest.get('version')!r}; this code reads version {VERSION}")
    return manifest


def _count(manifest: dict, name: str, path: Path, least: int = 0) -> int:
    value = manifest.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not least <= value < 2**62:
        raise DatasetError(f"{path}: '{name}' should be an integer of at least {least}, got {str(value)[:40]}")
    return value


def _categories(manifest: dict, path: Path) -> list[str]:
    names = manifest.get("categories")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise DatasetError(f"{path}: 'categories' should be a list of category names")
    if len(names) > MAX_CATEGORIES or len(names) != manifest.get("num_categories"):
        raise DatasetError(f"{path}: {len(names)} category names for num_categories "
                           f"{manifest.get('num_categories')!r} (at most {MAX_CATEGORIES})")
    return names


def _read_array(folder: Path, manifest: dict, name: str, shape: tuple) -> np.ndarray:
    """folder/<name>.npy after its header, size and digest agree with the manifest and `shape`."""
    entry = manifest["arrays"].get(name) if isinstance(manifest.get("arrays"), dict) else None
    if not isinstance(entry, dict) or entry.get("file") != f"{name}.npy":
        raise DatasetError(f"{folder / MANIFEST} does not describe {name}.npy")
    path = folder / entry["file"]
    if not path.is_file():
        raise DatasetError(f"{path} is missing")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"format version {version}")
            header = read_header(f, max_header_size=1024)
        except (ValueError, SyntaxError, EOFError) as e:
            raise DatasetError(f"{path} is not a .npy array ({e})") from None
        data_start = f.tell()
    found_shape, fortran, dtype = header
    if dtype != ARRAY_DTYPE or fortran or found_shape != shape:
        raise DatasetError(f"{path} holds {dtype} {list(found_shape)}{' (Fortran order)' if fortran else ''}; "
                           f"the manifest's counts make it int64 {list(shape)}")
    expected = data_start + int(np.prod(shape)) * ARRAY_DTYPE.itemsize
    if path.stat().st_size != expected:
        raise DatasetError(f"{path} is {path.stat().st_size:,} bytes; its header says {expected:,}")
    if file_sha256(path) != entry.get("sha256"):
        raise DatasetError(f"{path} does not match the sha256 in {MANIFEST}: it changed after conversion")
    return np.load(path, allow_pickle=False)


def _check_values(arrays: dict, usernum: int, itemnum: int, num_categories: int, images_bytes: int):
    """One line naming the first array whose values break the layout."""
    indptr, offsets = arrays["train_indptr"], arrays["image_offsets"]
    checks = [
        ("train_indptr", indptr[0] == 0 and indptr[-1] == len(arrays["train_items"]),
         f"should start at 0 and end at the {len(arrays['train_items'])} training interactions"),
        ("train_indptr", (np.diff(indptr) >= 1).all(),
         f"gives {(np.diff(indptr) < 1).sum()} users no training item: users "
         f"{name_offenders(np.flatnonzero(np.diff(indptr) < 1).tolist())}"),
        ("image_offsets", offsets[0] == 0 and offsets[-1] == images_bytes,
         f"should start at 0 and end at the {images_bytes:,} bytes of {IMAGES}"),
        ("image_offsets", (np.diff(offsets) >= 1).all(),
         f"gives {(np.diff(offsets) < 1).sum()} items no image bytes: items "
         f"{name_offenders(np.flatnonzero(np.diff(offsets) < 1).tolist())}"),
        ("item_category", ((arrays["item_category"] >= -1) & (arrays["item_category"] < num_categories)).all(),
         f"should hold categories -1..{num_categories - 1}"),
    ]
    for name in ("train_items", "validation", "test"):
        values = arrays[name]
        checks.append((name, ((values >= 0) & (values < itemnum)).all(),
                       f"holds {((values < 0) | (values >= itemnum)).sum()} item ids outside 0..{itemnum - 1}"))
    for name, fine, problem in checks:
        if not fine:
            raise DatasetError(f"{name}.npy {problem}")


def load_dataset_folder(path) -> Dataset:
    """The Dataset of a dataset folder, checked as the module's docstring says."""
    folder = Path(path)
    manifest = _read_manifest(folder)
    where = folder / MANIFEST
    usernum, itemnum = _count(manifest, "usernum", where, 1), _count(manifest, "itemnum", where, 1)
    interactions = _count(manifest, "interactions", where, usernum)
    categories = _categories(manifest, where)
    shapes = {"train_indptr": (usernum + 1,), "train_items": (interactions,), "validation": (usernum,),
              "test": (usernum,), "item_category": (itemnum,), "image_offsets": (itemnum + 1,)}
    arrays = {name: _read_array(folder, manifest, name, shape) for name, shape in shapes.items()}
    images = folder / IMAGES
    if not images.is_file() or images.stat().st_size != (manifest.get("images") or {}).get("bytes"):
        raise DatasetError(f"{images} is missing or not the {(manifest.get('images') or {}).get('bytes')} bytes "
                           f"that {MANIFEST} gives it")
    try:
        _check_values(arrays, usernum, itemnum, len(categories), images.stat().st_size)
    except DatasetError as e:
        raise DatasetError(f"{folder}: {e}") from None
    indptr = arrays["train_indptr"]
    return Dataset(name=folder.name, path=folder.resolve(), usernum=usernum, itemnum=itemnum,
                   user_train=np.split(arrays["train_items"], indptr[1:-1]), user_validation=arrays["validation"],
                   user_test=arrays["test"], item_category=arrays["item_category"], num_categories=len(categories),
                   image_bytes=ImageBytes(images, arrays["image_offsets"]))
