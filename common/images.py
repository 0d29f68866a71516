"""Decoded images: a uint8 cache built once per (images, size, resize filter), and batches for training.

Preprocessing is the original's: PIL decode -> convert("RGB") -> resize((S, S)) (aspect not kept, no crop),
then (x - 127.5) / 127.5. The original ran on the Pillow of 2017, whose default resize filter was NEAREST.
"""
import io
import json
import os
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from tqdm import tqdm

from common.checkpoint import fingerprint, write_json
from common.data import Dataset, name_offenders
from common.errors import ConfigError, DatasetError

RESIZE_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
GREY = 128                    # stands in for an image that does not decode
_CHUNK = 256                  # images per unit of work while building the cache
_PARALLEL_MIN_ITEMS = 2000    # below this a process pool costs more than it saves
_GPU_HEADROOM = 0.25          # fraction of GPU memory left for the model when deciding to keep images resident
MAX_PIXELS = 40_000_000       # a larger image is treated as undecodable (product photos are far smaller)
MAX_IMAGE_FILE_BYTES = 32 << 20  # an image file named by a flag is read up to this many bytes, no further
UNDECODABLE = (OSError, ValueError, SyntaxError, EOFError)  # what PIL raises on a broken or unknown file


def decode_image(data: bytes, size: int, resize_filter: str = "nearest") -> np.ndarray | None:
    """uint8 [3, size, size] as the original preprocessed it, or None if `data` is not a readable image or has
    more than MAX_PIXELS pixels (checked from the header, before anything is decoded); `decode_failure` says
    which."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                return None
            image = image.convert("RGB").resize((size, size), RESIZE_FILTERS[resize_filter])
    except (*UNDECODABLE, Image.DecompressionBombError):
        return None
    return np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))


def decode_failure(data: bytes) -> str | None:
    """Why decode_image gives None for `data`, to follow the file's name in a message; None if it decodes."""
    over = f"more than the {MAX_PIXELS:,} pixels an image may have here (MAX_PIXELS)"
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                return f"is {image.width}x{image.height} = {image.width * image.height:,} pixels, {over}"
            image.load()
    except Image.DecompressionBombError:  # PIL's own bound, above MAX_PIXELS, refused it as it opened
        return f"has {over}"
    except UNDECODABLE:
        return "is not a readable image (PIL cannot decode it)"
    return None


def read_image_file(path) -> bytes:
    """The bytes of an image file named by a flag, read with a size cap (a device such as /dev/zero or a huge
    file stops at MAX_IMAGE_FILE_BYTES) and checked to decode; ConfigError naming the file and the cause."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_IMAGE_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read image file {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_IMAGE_FILE_BYTES:
        raise ConfigError(f"{path} has more than the {MAX_IMAGE_FILE_BYTES:,} bytes an image file may have here "
                          "(MAX_IMAGE_FILE_BYTES)")
    failure = decode_failure(data)
    if failure is not None:
        raise ConfigError(f"{path} {failure}")
    return data


def pillow_nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output pixel in Pillow's NEAREST resize: floor((k + 0.5) * in/out), summed up step by
    step in float64 as Pillow does. F.interpolate(mode="nearest-exact") evaluates the same formula directly and
    so disagrees with Pillow where (k + 0.5) * in/out is an exact integer (e.g. 64 -> 224, k = 3)."""
    steps = np.full(out_size, in_size / out_size)
    steps[0] *= 0.5
    return np.minimum(np.cumsum(steps).astype(np.int64), in_size - 1)


def _decode_jpegs(payloads: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    if not payloads:
        return []
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in payloads]
    try:
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad file fails the whole batch: retry one by one
        decoded = []
        for data in encoded:
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
        return decoded


def decode_resize_nearest(payloads: list[bytes], size: int, device) -> tuple[torch.Tensor, list[int]]:
    """decode_image(..., "nearest") for a batch, with JPEGs decoded by torchvision on `device` (nvJPEG on CUDA).
    Returns uint8 [n, 3, size, size] on `device` (grey where undecodable) and the offsets that did not decode.
    Others, and JPEGs torchvision rejects, go through PIL."""
    device = torch.device(device)
    out = torch.full((len(payloads), 3, size, size), GREY, dtype=torch.uint8, device=device)
    jpegs = [k for k, data in enumerate(payloads) if data[:3] == b"\xff\xd8\xff"]
    decoded = dict(zip(jpegs, _decode_jpegs([payloads[k] for k in jpegs], device)))
    bad = []
    for k, data in enumerate(payloads):
        image = decoded.get(k)
        if image is not None:
            rows = torch.from_numpy(pillow_nearest_index(image.shape[1], size)).to(device)
            cols = torch.from_numpy(pillow_nearest_index(image.shape[2], size)).to(device)
            out[k] = image[:, rows][:, :, cols]
            continue
        image = decode_image(data, size, "nearest")
        if image is None:
            bad.append(k)
        else:
            out[k] = torch.from_numpy(image)
    return out, bad


# ----------------------------------------------------------------------------------------------------------
# The cache

def _decode_into(out: np.ndarray, start: int, payloads: list[bytes], size: int, resize_filter: str):
    """Decode payloads into out[start:...]; returns (how many, item ids that did not decode)."""
    bad = []
    for k, data in enumerate(payloads):
        image = decode_image(data, size, resize_filter)
        if image is None:
            bad.append(start + k)
        out[start + k] = GREY if image is None else image
    return len(payloads), bad


def _decode_into_file(path: Path, start: int, payloads: list[bytes], size: int, resize_filter: str):
    """_decode_into for a worker process, writing into the cache file opened r+."""
    out = np.load(path, mmap_mode="r+")
    result = _decode_into(out, start, payloads, size, resize_filter)
    out.flush()
    return result


def _fill(out, path: Path, dataset: Dataset, size: int, resize_filter: str, device: torch.device, workers: int):
    """Decode every image into `out` (the memmap at `path`); yields (how many, bad item ids) per chunk."""
    chunks = [(start, dataset.image_bytes[start:start + _CHUNK]) for start in range(0, dataset.itemnum, _CHUNK)]
    if device.type == "cuda" and resize_filter == "nearest":
        for start, payloads in chunks:
            images, bad = decode_resize_nearest(payloads, size, device)
            out[start:start + len(payloads)] = images.cpu().numpy()
            yield len(payloads), [start + k for k in bad]
    elif workers > 1 and dataset.itemnum >= _PARALLEL_MIN_ITEMS:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_decode_into_file, path, start, payloads, size, resize_filter)
                       for start, payloads in chunks]
            for future in as_completed(futures):
                yield future.result()
    else:
        for start, payloads in chunks:
            yield _decode_into(out, start, payloads, size, resize_filter)


def _build(dataset: Dataset, size: int, resize_filter: str, path: Path, device: torch.device, workers: int):
    """Write the cache to a temp file next to `path`, then rename it into place; returns the bad item ids."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(dataset.itemnum, 3, size, size))
        bad = []
        with tqdm(total=dataset.itemnum, desc=f"decoding images ({size}px, {resize_filter})", unit="img") as bar:
            for done, bad_ids in _fill(out, tmp, dataset, size, resize_filter, device, workers):
                bad += bad_ids
                bar.update(done)
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return sorted(bad)


def _cached_bad_items(path: Path, sidecar: Path, key: dict) -> list[int] | None:
    """The bad item ids recorded for a cache built with `key`, or None if there is no such cache."""
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    return meta["bad_items"] if meta.get("key") == fingerprint(key) and path.exists() else None


def cache_folder(dataset: Dataset) -> Path:
    """Where what is derived from a dataset's items alone is kept: the dataset's own cache folder, else cache/
    beside the dataset file."""
    return Path(dataset.cache_dir or dataset.path.parent / "cache")


def image_cache(dataset: Dataset, size: int, resize_filter: str = "nearest", cache_dir=None, strict: bool = False,
                device="cpu", workers: int | None = None) -> np.ndarray:
    """All images of `dataset` decoded and resized: uint8 [itemnum, 3, size, size], memory-mapped read-only.

    Built once (into `cache_dir`, default the dataset's own, else a cache/ folder next to the dataset file) and
    reused while the dataset's images are the same bytes (Dataset.images_digest): not its file's name, size or mtime,
    which a copy with preserved times (cp -p, rsync -a, tar) of another dataset can share. Images that do not
    decode become flat grey and are named in one warning;
    with `strict` they raise DatasetError instead. On CUDA with the nearest filter JPEGs are decoded on the GPU;
    otherwise `workers` processes (default: all cores) decode with PIL.
    """
    if resize_filter not in RESIZE_FILTERS:
        raise ConfigError(f"resize_filter must be one of {', '.join(RESIZE_FILTERS)}, got {resize_filter!r}")
    cache_dir = Path(cache_dir or cache_folder(dataset))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot make the image cache folder {cache_dir}: {exc.strerror or exc}; "
                           "give --cache-dir DIR to put it elsewhere") from exc
    path = cache_dir / f"{dataset.name}-{size}px-{resize_filter}.npy"
    sidecar = path.with_suffix(".json")
    key = {"images": dataset.images_digest, "size": size, "filter": resize_filter}
    bad = _cached_bad_items(path, sidecar, key)
    if bad is None:
        bad = _build(dataset, size, resize_filter, path, torch.device(device), workers or os.cpu_count() or 1)
        write_json(sidecar, {"key": fingerprint(key), "bad_items": bad})
    if bad:
        message = (f"{len(bad)} of {dataset.itemnum} images in {dataset.path.name} do not decode (or have more "
                   f"than {MAX_PIXELS:,} pixels): "
                   f"items {name_offenders(bad, limit=20)} (all listed in {sidecar})")
        if strict:
            raise DatasetError(message)
        warnings.warn(message + f"; they are replaced by flat grey ({GREY})", stacklevel=2)
    return np.load(path, mmap_mode="r")


def image_store(dataset: Dataset, size: int, resize_filter: str = "nearest", device="cpu", resident=None,
                **cache_options) -> "ImageStore":
    """An ImageStore over `image_cache(dataset, size, resize_filter, **cache_options)` on `device`, knowing its
    filter."""
    device = torch.device(device)
    cache = image_cache(dataset, size, resize_filter, device=device, **cache_options)
    return ImageStore(cache, device, resident, resize_filter)


def known_filter(store: "ImageStore") -> str:
    """The filter that made `store`'s images, for what is trained on them and cached under it."""
    if store.resize_filter is None:
        raise ValueError("this ImageStore does not know its resize filter: make it with image_store()")
    return store.resize_filter


# ----------------------------------------------------------------------------------------------------------
# Batches for training

def scale_to_model(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1], as the original: (x - 127.5) / 127.5."""
    return (images.float() - 127.5) / 127.5


def translate(images: torch.Tensor, max_shift: int, fill: float = 0.0, generator=None) -> torch.Tensor:
    """Each image of [B, C, H, W] shifted by its own whole-pixel offset, drawn uniformly from [-max_shift,
    max_shift]^2; what comes in from outside is `fill`. Differentiable in the images."""
    n, height, width, device = len(images), images.shape[2], images.shape[3], images.device
    dy, dx = (torch.randint(-max_shift, max_shift + 1, (n, 1, 1), device=device, generator=generator)
              for _ in range(2))
    rows = (torch.arange(height, device=device)[None, :, None] + dy + 1).clamp(0, height + 1)
    columns = (torch.arange(width, device=device)[None, None, :] + dx + 1).clamp(0, width + 1)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1), value=fill).permute(0, 2, 3, 1)
    return padded[torch.arange(n, device=device)[:, None, None], rows, columns].permute(0, 3, 1, 2)


def _fits_on_gpu(nbytes: int, device: torch.device) -> bool:
    free, total = torch.cuda.mem_get_info(device)
    return nbytes < free - _GPU_HEADROOM * total


def _copy_to(cache: np.ndarray, device: torch.device) -> torch.Tensor:
    images = torch.empty(cache.shape, dtype=torch.uint8, device=device)
    step = max(1, (1 << 30) // max(1, cache[0].nbytes))  # about 1 GiB at a time
    for start in tqdm(range(0, len(cache), step), desc=f"images to {device}", unit="GiB"):
        images[start:start + step].copy_(torch.from_numpy(np.array(cache[start:start + step])))
    return images


class ImageStore:
    """store(item_ids) -> float32 [B, 3, S, S] in [-1, 1] on `device` (channels_last on CUDA).

    Keeps the whole uint8 cache on the device when it fits (`resident`; by default only on CUDA, with headroom
    left for training), else gathers the rows from the memory-mapped cache, through pinned memory on CUDA.
    `stream` overlaps that gathering with the work on the previous batch. `resize_filter`: the filter that made
    the cache, where known (`image_store` records it; a classifier trained on the store is keyed by it).
    """

    def __init__(self, cache: np.ndarray, device, resident: bool | None = None, resize_filter: str | None = None):
        self.cache = cache
        self.device = torch.device(device)
        self.size = cache.shape[-1]
        self.resize_filter = resize_filter
        if resident is None:
            resident = self.device.type == "cuda" and _fits_on_gpu(cache.nbytes, self.device)
        self.resident = resident
        self.images = _copy_to(cache, self.device) if resident else None

    def __len__(self) -> int:
        return len(self.cache)

    def _gather(self, item_ids: torch.Tensor) -> torch.Tensor:
        """The uint8 rows of `item_ids` from the memory-mapped cache, in pinned memory on CUDA."""
        ids = item_ids.cpu().numpy()
        if self.device.type != "cuda":
            return torch.from_numpy(self.cache[ids])
        pinned = torch.empty((len(ids), *self.cache.shape[1:]), dtype=torch.uint8, pin_memory=True)
        np.take(self.cache, ids, axis=0, out=pinned.numpy())
        return pinned

    def _finish(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        return scale_to_model(batch)

    def __call__(self, item_ids: torch.Tensor) -> torch.Tensor:
        if self.resident:
            return self._finish(self.images[item_ids.to(self.device)])
        return self._finish(self._gather(item_ids))

    def stream(self, batches):
        """Yields (batch, images of batch[0]) for each tuple `batch` whose first element holds item ids.

        When the images are not resident, a background thread gathers the next batch from the memory-mapped
        cache (numpy copies release the GIL) while the caller works on the current one, so the device does not
        wait on the page cache or the disk.
        """
        if self.resident:
            for batch in batches:
                yield batch, self(batch[0])
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            for batch in batches:
                gathered = batch, pool.submit(self._gather, batch[0])
                if pending is not None:
                    yield pending[0], self._finish(pending[1].result())
                pending = gathered
            if pending is not None:
                yield pending[0], self._finish(pending[1].result())
