import dataclasses
import io
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from common import images
from common.data import load_dataset
from common.errors import DatasetError
from common.images import (
    GREY,
    ImageStore,
    decode_image,
    decode_resize_nearest,
    image_cache,
    image_store,
    pillow_nearest_index,
    scale_to_model,
)
from common.original_format import save_original_format

# torchvision 0.29 deprecates its decoders in favour of TorchCodec, which the project does not depend on
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

# (width, height) of the JPEGs in the catalogue; 64 and 320 hit ties of the NEAREST mapping at 224 px
JPEG_SIZES = [(300, 200), (64, 64), (97, 131), (320, 500), (40, 40), (17, 90)]
BROKEN = {6: b"definitely not an image", 7: None}  # 7: a JPEG cut in half


def encode(array: np.ndarray, format="JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format)
    return buffer.getvalue()


def photo(rng, width, height) -> np.ndarray:
    """Noise over a gradient, so that resizing with different filters gives different pixels."""
    gradient = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    return (0.6 * gradient + 0.4 * rng.integers(0, 256, (height, width, 3))).astype(np.uint8)


def make_payloads(seed=0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    payloads = [encode(photo(rng, w, h)) for w, h in JPEG_SIZES]
    payloads.append(BROKEN[6])
    payloads.append(encode(photo(rng, 50, 60))[:300])
    payloads.append(encode(photo(rng, 70, 30), "PNG"))
    payloads.append(encode(photo(rng, 45, 45)[:, :, 0]))  # greyscale JPEG
    return payloads


@pytest.fixture
def dataset(tmp_path):
    payloads = make_payloads()
    items = [{"imgs": data, "c": [1, 0]} for data in payloads]
    records = {u: [{"productid": u}] for u in range(3)}
    save_original_format(tmp_path / "Tiny.npy", records, records, records, items, 3, len(items))
    return load_dataset(tmp_path / "Tiny.npy")


def pil_reference(data: bytes, size: int, resample) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), resample)).transpose(2, 0, 1)


def test_cache_holds_pil_preprocessed_images(dataset):
    with pytest.warns(UserWarning):
        cache = image_cache(dataset, 32)
    assert isinstance(cache, np.memmap) and cache.dtype == np.uint8 and cache.shape == (dataset.itemnum, 3, 32, 32)
    assert (dataset.path.parent / "cache" / "Tiny-32px-nearest.npy").exists()
    for i, data in enumerate(dataset.image_bytes):
        if i not in BROKEN:
            np.testing.assert_array_equal(cache[i], pil_reference(data, 32, Image.Resampling.NEAREST))


def test_undecodable_images_become_grey_with_one_warning(dataset, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = image_cache(dataset, 32, cache_dir=tmp_path / "c")
    assert len(caught) == 1
    assert "2 of 10 images in Tiny.npy do not decode (or have more than 40,000,000 pixels): items 6, 7" in str(
        caught[0].message)
    assert (cache[list(BROKEN)] == GREY).all()
    assert not (cache[[0, 1, 8, 9]] == GREY).all(axis=(1, 2, 3)).any()


def test_strict_raises_naming_undecodable_images(dataset, tmp_path):
    with pytest.raises(DatasetError, match="items 6, 7"):
        image_cache(dataset, 32, cache_dir=tmp_path / "c", strict=True)
    with pytest.raises(DatasetError, match="items 6, 7"):  # also when the cache already exists
        image_cache(dataset, 32, cache_dir=tmp_path / "c", strict=True)


def refuse_to_decode(*args):
    raise AssertionError("the cache should have been reused")


@pytest.mark.filterwarnings("ignore:2 of 10 images")
def test_cache_is_built_once_and_reused(dataset, tmp_path, monkeypatch):
    first = np.array(image_cache(dataset, 32, cache_dir=tmp_path / "c"))
    path = tmp_path / "c" / "Tiny-32px-nearest.npy"
    built = path.stat().st_mtime_ns
    monkeypatch.setattr(images, "decode_image", refuse_to_decode)
    np.testing.assert_array_equal(image_cache(dataset, 32, cache_dir=tmp_path / "c"), first)
    assert path.stat().st_mtime_ns == built
    assert sorted(p.name for p in path.parent.iterdir()) == ["Tiny-32px-nearest.json", "Tiny-32px-nearest.npy"]


@pytest.mark.filterwarnings("ignore:2 of 10 images")
def test_the_cache_follows_the_images_not_the_file_times(dataset, tmp_path, monkeypatch):
    first = np.array(image_cache(dataset, 32, cache_dir=tmp_path / "c"))
    stat = dataset.path.stat()
    os.utime(dataset.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    monkeypatch.setattr(images, "decode_image", refuse_to_decode)
    np.testing.assert_array_equal(image_cache(dataset, 32, cache_dir=tmp_path / "c"), first)  # same images
    other = dataclasses.replace(dataset, image_bytes=[dataset.image_bytes[1], *dataset.image_bytes[1:]])
    with pytest.raises(AssertionError, match="should have been reused"):
        image_cache(other, 32, cache_dir=tmp_path / "c")


@pytest.mark.filterwarnings("ignore:2 of 10 images")
def test_size_and_filter_get_their_own_caches(dataset, tmp_path):
    nearest = image_cache(dataset, 32, "nearest", cache_dir=tmp_path / "c")
    bicubic = image_cache(dataset, 32, "bicubic", cache_dir=tmp_path / "c")
    larger = image_cache(dataset, 48, "nearest", cache_dir=tmp_path / "c")
    assert larger.shape[-1] == 48 and nearest.shape[-1] == 32
    assert not np.array_equal(nearest[0], bicubic[0])
    np.testing.assert_array_equal(bicubic[0], pil_reference(dataset.image_bytes[0], 32, Image.Resampling.BICUBIC))
    assert len(list((tmp_path / "c").glob("*.npy"))) == 3
    with pytest.raises(ValueError, match="resize_filter must be one of"):
        image_cache(dataset, 32, "area", cache_dir=tmp_path / "c")


@pytest.mark.filterwarnings("ignore:2 of 10 images")
def test_process_pool_builds_the_same_cache(dataset, tmp_path, monkeypatch):
    serial = image_cache(dataset, 32, cache_dir=tmp_path / "serial", workers=1)
    monkeypatch.setattr(images, "_PARALLEL_MIN_ITEMS", 1)
    monkeypatch.setattr(images, "_CHUNK", 3)
    parallel = image_cache(dataset, 32, cache_dir=tmp_path / "parallel", workers=2)
    np.testing.assert_array_equal(parallel, serial)
    assert (tmp_path / "parallel" / "Tiny-32px-nearest.json").read_text() == \
        (tmp_path / "serial" / "Tiny-32px-nearest.json").read_text()


@pytest.mark.parametrize("size", [32, 64, 224])
def test_torch_nearest_path_gives_the_pil_pixels(size):
    payloads = make_payloads()
    decoded, bad = decode_resize_nearest(payloads, size, "cpu")
    assert decoded.dtype == torch.uint8 and decoded.shape == (len(payloads), 3, size, size)
    assert bad == list(BROKEN)
    assert (decoded[bad] == GREY).all()
    for k, data in enumerate(payloads):
        if k not in BROKEN:
            np.testing.assert_array_equal(decoded[k].numpy(), decode_image(data, size, "nearest"), err_msg=f"{k}")


@pytest.mark.parametrize("in_size", [1, 17, 64, 97, 320, 500, 1001])
@pytest.mark.parametrize("out_size", [32, 64, 224])
def test_nearest_index_is_pillows(in_size, out_size):
    ramp = np.arange(in_size, dtype=np.int32)[None, :]
    resized = Image.fromarray(ramp, mode="I").resize((out_size, 1), Image.Resampling.NEAREST)
    assert pillow_nearest_index(in_size, out_size).tolist() == np.asarray(resized)[0].tolist()


def test_scale_to_model():
    unit = scale_to_model(torch.tensor([0, 255, 128], dtype=torch.uint8))
    assert unit.dtype == torch.float32
    torch.testing.assert_close(unit, torch.tensor([-1.0, 1.0, 0.5 / 127.5]))


@pytest.mark.filterwarnings("ignore:2 of 10 images")
@pytest.mark.parametrize("resident", [False, True])
def test_image_store_batches(dataset, tmp_path, resident):
    cache = image_cache(dataset, 32, cache_dir=tmp_path / "c")
    store = ImageStore(cache, "cpu", resident=resident)
    assert len(store) == dataset.itemnum and store.size == 32
    item_ids = torch.tensor([3, 0, 9, 3])
    batch = store(item_ids)
    assert batch.dtype == torch.float32 and batch.shape == (4, 3, 32, 32)
    assert batch.min() >= -1 and batch.max() <= 1 and batch.min() < -0.5 and batch.max() > 0.5
    expected = (torch.from_numpy(np.array(cache[[3, 0, 9, 3]])).float() - 127.5) / 127.5
    torch.testing.assert_close(batch, expected, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:2 of 10 images")
@pytest.mark.parametrize("resident", [False, True])
def test_image_store_stream_keeps_order_and_payload(dataset, tmp_path, resident):
    store = image_store(dataset, 32, cache_dir=tmp_path / "c", device="cpu", resident=resident)
    id_batches = [torch.tensor([3, 0]), torch.tensor([9]), torch.tensor([1, 2, 3])]
    streamed = list(store.stream((ids, f"payload {n}") for n, ids in enumerate(id_batches)))
    assert [batch[1] for batch, _ in streamed] == ["payload 0", "payload 1", "payload 2"]
    for ids, (batch, batch_images) in zip(id_batches, streamed):
        assert batch[0] is ids
        torch.testing.assert_close(batch_images, store(ids), rtol=0, atol=0)
    assert list(store.stream(iter([]))) == []
