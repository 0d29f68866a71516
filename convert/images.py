"""The items' image files: which are usable, and packing them into the dataset folder's images.bin.

An item whose image file is missing, empty, outside the image folder or larger than --max-image-bytes has no image
and is left out with its interactions (DVBPR learns from pixels); a file PIL cannot identify is kept and, as
with the original files, becomes flat grey when the images are decoded, named in one warning (common/images.py).
Packing is resumable: images.bin grows item by item and the sizes written so far are saved every
PROGRESS_EVERY items, so a rerun truncates it to the last saved item and goes on from there.
"""
import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.checkpoint import atomic_write
from common.dataset_folder import IMAGES, save_array
from common.images import UNDECODABLE

PROGRESS_EVERY = 256
JPEG_QUALITY = 90
OK, MISSING, TOO_LARGE, UNREADABLE = "ok", "missing", "too large", "unreadable"


def image_status(path: Path | None, folder: Path, max_bytes: int) -> str:
    """OK, MISSING (no file, empty, or outside `folder`), TOO_LARGE or UNREADABLE (PIL cannot identify it)."""
    if path is None:
        return MISSING
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
        size = path.stat().st_size if inside and path.is_file() else 0
    except OSError:
        return MISSING
    if size == 0:
        return MISSING
    if size > max_bytes:
        return TOO_LARGE
    try:
        with Image.open(path):
            return OK
    except (*UNDECODABLE, Image.DecompressionBombError):
        return UNREADABLE


def shrunk(data: bytes, side: int) -> bytes:
    """The image re-encoded as JPEG with its shorter side `side` (aspect kept), if it is larger; else as it is.
    An image that does not decode stays as it is (to be named when decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if min(image.size) <= side:
                return data
            image.draft("RGB", (side, side))  # JPEG: decode at a reduced scale still at least `side`
            image = image.convert("RGB")
            scale = side / min(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.BICUBIC)
    except (*UNDECODABLE, Image.DecompressionBombError):
        return data
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _read_chunk(paths: list[str], side: int) -> list[bytes]:
    payloads = [Path(path).read_bytes() for path in paths]
    return [shrunk(data, side) for data in payloads] if side else payloads


def pack_images(folder: Path, paths: list[str], side: int, workers: int, progress: Path) -> None:
    """images.bin and image_offsets.npy in `folder` from the files `paths` (in item order), each shrunk to
    `side` if given (by `workers` processes); the sizes written so far are kept in `progress`, from which a rerun
    goes on."""
    blob = folder / IMAGES
    sizes = np.load(progress, allow_pickle=False).tolist() if progress.is_file() and blob.is_file() else []
    with open(blob, "ab" if sizes else "wb") as out:
        out.truncate(sum(sizes))
        out.seek(sum(sizes))
        chunks = [paths[start:start + PROGRESS_EVERY] for start in range(len(sizes), len(paths), PROGRESS_EVERY)]
        with ProcessPoolExecutor(workers) if side and workers > 1 else _Inline() as pool, \
                tqdm(total=len(paths), initial=len(sizes), desc="packing images", unit="img") as bar:
            for payloads in pool.map(_read_chunk, chunks, [side] * len(chunks)):
                for data in payloads:
                    out.write(data)
                    sizes.append(len(data))
                out.flush()
                os.fsync(out.fileno())
                atomic_write(progress, lambda f: np.save(f, np.array(sizes, dtype=np.int64), allow_pickle=False))
                bar.update(len(payloads))
    offsets = np.zeros(len(paths) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    save_array(folder, "image_offsets", offsets)


class _Inline:
    """ProcessPoolExecutor's map in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, function, *iterables):
        return map(function, *iterables)
