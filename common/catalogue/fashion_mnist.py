"""The Fashion-MNIST product photos, the source of the "fashion-mnist" catalogue images.

Its classes map onto the catalogue's categories as
    men's tops      <- Pullover (2), Coat (4), Shirt (6)      (long-sleeved tops)
    women's tops    <- T-shirt/top (0)                         (tees and tank tops)
    men's bottoms   <- Trouser (1)
    women's bottoms <- Dress (3)                               (the skirt-like silhouette)
    men's shoes     <- Sneaker (7), Ankle boot (9)
    women's shoes   <- Sandal (5)                              (many of them heeled)
Bag (8) is dropped. The IDX files (train-/t10k-images-idx3-ubyte[.gz], ...-labels-idx1-ubyte[.gz]) are read from
the catalogue's `fashion_mnist_dir`, else from data/fashion-mnist/, else from where Debian's dataset-fashion-mnist
package installs them.
"""
import gzip
from pathlib import Path

import numpy as np

FASHION_MNIST_CLASSES = {0: (2, 4, 6), 1: (0,), 2: (1,), 3: (3,), 4: (7, 9), 5: (5,)}
FASHION_MNIST_DIRS = (Path("data/fashion-mnist"), Path("/usr/share/datasets/fashion-mnist"))


def find_fashion_mnist(directory=None) -> Path | None:
    """The directory holding the Fashion-MNIST IDX files, or None."""
    candidates = [Path(directory)] if directory else FASHION_MNIST_DIRS
    for candidate in candidates:
        if all(_idx_file(candidate, name) for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
            return candidate
    return None


def _idx_file(directory, name):
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array: [n] labels or [n, rows, cols] images."""
    path = Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    not_idx = ValueError(f"{path} is not a uint8 IDX file")
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or len(raw) < 4 + 4 * raw[3]:
        raise not_idx
    header = 4 + 4 * raw[3]
    shape = np.frombuffer(raw[4:header], dtype=">i4")
    if len(raw) != header + int(np.prod(shape)):
        raise not_idx
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def fashion_mnist_photos(rng, categories, directory=None):
    """One grey 28x28 photo per item, drawn from the Fashion-MNIST classes of its category (distinct if possible)."""
    directory = find_fashion_mnist(directory)
    images = np.concatenate([read_idx(_idx_file(directory, f"{part}-images-idx3-ubyte")) for part in ("train", "t10k")])
    labels = np.concatenate([read_idx(_idx_file(directory, f"{part}-labels-idx1-ubyte")) for part in ("train", "t10k")])
    photos = np.zeros((len(categories), 28, 28), dtype=np.uint8)
    for category, classes in FASHION_MNIST_CLASSES.items():
        members = np.flatnonzero(categories == category)
        pool = np.flatnonzero(np.isin(labels, classes))
        photos[members] = images[rng.choice(pool, len(members), replace=len(members) > len(pool))]
    return photos
