"""The converters (convert/) on tiny files in each source's upstream format, the dataset folder they write
(common/dataset_folder.py) and its loading by every stage, the image fetcher against a server on the loopback
address, and the split's rules."""
import contextlib
import http.server
import io
import json
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.dataset_folder import MANIFEST, file_sha256
from common.datasets import FORMATS, open_dataset, resolve_dataset
from common.errors import ConfigError, DatasetError
from convert import images as image_files
from convert.config import ConvertConfig
from convert.fetch import FetchSettings, fetch_images
from convert.main import main as convert_main
from convert.pipeline import check_memory
from convert.sources import SOURCES
from convert.split import first_interactions, hold_out, k_core
from dvbpr.main import main as dvbpr_main
from tests.upstream import (
    World,
    image_bytes,
    jpeg,
    served_images,
    write_amazon2018,
    write_amazon2023,
    write_generic,
    write_hm,
)

WRITERS = {"generic": write_generic, "hm": write_hm, "amazon2018": write_amazon2018, "amazon2023": write_amazon2023}
TINY_DVBPR = ["--image-size", "32", "--conv-widths", "8", "8", "8", "8", "8", "--fc-width", "32", "--k", "8",
              "--epochs", "1", "--batch-size", "8", "--eval-batch-size", "64", "--device", "cpu"]


@contextlib.contextmanager
def serve(files: dict[str, bytes], flaky: dict[str, int] | None = None):
    """An HTTP server on 127.0.0.1 answering files[path] (404 otherwise); a path in `flaky` answers 503 that many
    times first. `hits` counts the requests per path."""
    hits, flaky = Counter(), dict(flaky or {})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits[self.path] += 1
            if flaky.get(self.path, 0) > 0:
                flaky[self.path] -= 1
                return self.send_error(503)
            if self.path not in files:
                return self.send_error(404)
            self.send_response(200)
            self.send_header("Content-Length", str(len(files[self.path])))
            self.end_headers()
            self.wfile.write(files[self.path])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url, server.hits, server.files = f"http://127.0.0.1:{server.server_address[1]}", hits, files
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server():
    with serve({}) as running:
        yield running


def write_source(name, folder, world, server):
    if name.startswith("amazon"):
        server.files.update(served_images(world))
        return WRITERS[name](folder, world, server.url)
    return WRITERS[name](folder, world)


def convert(spec, out, *extra):
    return convert_main([*spec["args"], "--out", str(out), "--fetch-rate", "200", *extra])


def lines(path):
    return path.read_text().split("\n")[:-1]


@pytest.mark.parametrize("name", list(SOURCES))
def test_each_source_converts_to_the_split_and_trains_dvbpr_one_epoch(name, tmp_path, server, capsys):
    world = World()
    spec = write_source(name, tmp_path / "raw", world, server)
    out = convert(spec, tmp_path / "data")
    dataset, embedded = open_dataset(out)
    users, items = lines(out / "users.txt"), lines(out / "items.txt")
    source_item = {spec["item_id"](item): item for item in range(world.items)}

    fetched = name.startswith("amazon")   # a URL that serves no image is a failed download: the item goes
    expected = world.expected(without_image=[world.unreadable] if fetched else [])
    assert {users[u]: ([items[i] for i in dataset.user_train[u]], items[dataset.user_validation[u]],
                       items[dataset.user_test[u]]) for u in range(dataset.usernum)} == \
        {spec["user_id"](u): ([spec["item_id"](i) for i in train], spec["item_id"](valid), spec["item_id"](test))
         for u, (train, valid, test) in expected.items()}
    categories = json.loads((out / MANIFEST).read_text())["categories"]
    assert [categories[c] for c in dataset.item_category] == [spec["category_of"](source_item[i]) for i in items]
    assert list(dataset.image_bytes) == [image_bytes(world, source_item[i]) for i in items]
    printed = capsys.readouterr().out
    assert f"no usable image (missing, empty or over 10,000,000 bytes): {spec['item_id'](world.no_image)}" in printed
    assert ("downloads failed" if fetched else "PIL cannot identify") in printed
    assert spec["item_id"](world.unreadable) in printed
    assert not (out / "work").exists() and not embedded

    grey = pytest.warns(UserWarning, match="1 of .* images in data do not decode") if not fetched else \
        contextlib.nullcontext()
    with grey:
        results = dvbpr_main(["--dataset", str(out), "--out", str(tmp_path / "run"), *TINY_DVBPR])
    assert results["dataset"] == "data" and 0 <= results["test_auc"] <= 1 and 0 <= results["valid_auc"] <= 1


def test_a_rerun_keeps_the_finished_steps_and_resumes_packing(tmp_path, monkeypatch, capsys):
    spec = write_hm(tmp_path / "raw", World())
    clean = convert(spec, tmp_path / "clean")
    monkeypatch.setattr(image_files, "PROGRESS_EVERY", 2)
    real_read, chunks = image_files._read_chunk, []

    def read(paths, side, killed_at=None):
        chunks.append(paths)
        if len(chunks) == killed_at:
            raise KeyboardInterrupt
        return real_read(paths, side)
    monkeypatch.setattr(image_files, "_read_chunk", lambda paths, side: read(paths, side, killed_at=4))
    with pytest.raises(KeyboardInterrupt):
        convert(spec, tmp_path / "data")
    capsys.readouterr()
    monkeypatch.setattr(image_files, "_read_chunk", read)
    out = convert(spec, tmp_path / "data")
    printed = capsys.readouterr().out
    assert all(f"{step}: done before, kept" in printed for step in ("interactions", "items", "images", "split"))
    itemnum = len(lines(clean / "items.txt"))
    assert [len(chunk) for chunk in chunks[4:]] == [2] * ((itemnum - 6) // 2) + [1] * (itemnum % 2)
    for name in ("images.bin", "image_offsets.npy", "train_items.npy", "users.txt", "items.txt"):
        assert (out / name).read_bytes() == (clean / name).read_bytes()
    fingerprint = [json.loads((folder / MANIFEST).read_text())["fingerprint"] for folder in (out, clean)]
    assert fingerprint[0] == fingerprint[1]

    convert(spec, tmp_path / "data")
    assert "nothing to do" in capsys.readouterr().out
    last = open_dataset(out)[0]
    drawn = open_dataset(convert(spec, tmp_path / "data", "--holdout", "random"))[0]
    assert "nothing to do" not in capsys.readouterr().out
    assert (drawn.user_test != last.user_test).any()
    for user in range(last.usernum):
        assert sorted([*drawn.user_train[user], drawn.user_validation[user], drawn.user_test[user]]) == \
            sorted([*last.user_train[user], last.user_validation[user], last.user_test[user]])


def test_user_fraction_keeps_a_share_of_users_and_the_memory_check_names_it(tmp_path):
    spec = write_hm(tmp_path / "raw", World(users=60))
    everyone = set(lines(convert(spec, tmp_path / "all") / "users.txt"))
    half = set(lines(convert(spec, tmp_path / "half", "--user-fraction", "0.5") / "users.txt"))
    assert half < everyone and 0.2 < len(half) / len(everyone) < 0.8
    cfg = ConvertConfig(source="hm", input=str(tmp_path / "raw"), out=str(tmp_path / "x"))
    transactions = tmp_path / "raw" / "transactions_train.csv"
    check_memory(cfg, transactions, available=1 << 30)
    with pytest.raises(ConfigError, match=r"holds about \d+ interactions; .* --user-fraction 0\.\d\d keeps"):
        check_memory(cfg, transactions, available=1000)


# ----------------------------------------------------------------------------------------------------------
# The dataset folder: refused in one line naming the file

@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("converted")
    return convert(write_hm(folder / "raw", World()), folder / "hm")


def _edit_manifest(folder, **changes):
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest.update(changes)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _rewrite_array(folder, name, change):
    """A changed array with its digest updated in the manifest, as a careless tool might leave it."""
    array = np.load(folder / f"{name}.npy")
    change(array)
    np.save(folder / f"{name}.npy", array)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["arrays"][name]["sha256"] = file_sha256(folder / f"{name}.npy")
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _truncate(path, size_change):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) + size_change])


CORRUPTIONS = {
    "no manifest": (lambda f: (f / MANIFEST).unlink(), "a folder without manifest.json"),
    "manifest not JSON": (lambda f: (f / MANIFEST).write_text('{"format": '), "manifest.json is not JSON"),
    "another format": (lambda f: _edit_manifest(f, format="something else"), "manifest.json is not the manifest"),
    "a later version": (lambda f: _edit_manifest(f, version=2), "manifest.json has version 2"),
    "a count off by one": (lambda f: _edit_manifest(f, usernum=json.loads((f / MANIFEST).read_text())["usernum"] + 1),
                           "train_indptr.npy holds int64"),
    "a negative count": (lambda f: _edit_manifest(f, itemnum=-3), "'itemnum' should be an integer of at least 1"),
    "an array missing": (lambda f: (f / "item_category.npy").unlink(), "item_category.npy is missing"),
    "a truncated array": (lambda f: _truncate(f / "test.npy", -8), "test.npy is"),
    "an int32 array": (lambda f: np.save(f / "validation.npy", np.load(f / "validation.npy").astype(np.int32)),
                       "validation.npy holds int32"),
    "a pickled array": (lambda f: np.save(f / "test.npy", np.load(f / "test.npy").astype(object), allow_pickle=True),
                        "test.npy holds object"),
    "not an array": (lambda f: (f / "train_items.npy").write_bytes(b"\x93NUMPY garbage"), "train_items.npy is not"),
    "a changed value": (lambda f: _rewrite_bytes_keep_size(f / "train_items.npy"), "train_items.npy does not match"),
    "an item id out of range": (lambda f: _rewrite_array(f, "validation", lambda a: a.__setitem__(0, 10**6)),
                                "validation.npy holds 1 item ids outside"),
    "a user without training items": (lambda f: _rewrite_array(f, "train_indptr", lambda a: a.__setitem__(1, 0)),
                                      "train_indptr.npy gives 1 users no training item"),
    "offsets past the images": (lambda f: _rewrite_array(f, "image_offsets",
                                                         lambda a: a.__setitem__(-1, a[-1] + 1)),
                                "image_offsets.npy should start at 0 and end"),
    "truncated images": (lambda f: _truncate(f / "images.bin", -1), "images.bin is missing or not the"),
    "a huge manifest": (lambda f: (f / MANIFEST).write_bytes(b" " * (5 << 20)),
                        "more than the 4,194,304 a manifest may have"),
}


def _rewrite_bytes_keep_size(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupted_folder_is_refused_in_one_line_naming_the_file(converted, tmp_path, corruption):
    corrupt, message = CORRUPTIONS[corruption]
    folder = tmp_path / "hm"
    shutil.copytree(converted, folder)
    corrupt(folder)
    with pytest.raises(DatasetError) as refused:
        open_dataset(folder)
    assert message in str(refused.value) and "\n" not in str(refused.value) and str(folder) in str(refused.value)


def test_every_stage_reads_a_folder_and_refuses_others_in_one_line(converted, tmp_path):
    assert list(FORMATS) == ["folder", "original"]
    assert resolve_dataset(str(converted)) == (converted.resolve(), False)
    broken = tmp_path / "broken"
    shutil.copytree(converted, broken)
    (broken / "test.npy").unlink()
    with pytest.raises(SystemExit, match=r"^dvbpr: .*test.npy is missing$"):
        dvbpr_main(["--dataset", str(broken), "--out", str(tmp_path / "run"), *TINY_DVBPR])
    with pytest.raises(DatasetError, match="not found"):
        resolve_dataset(str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------------------------------------
# The image fetcher, against a server on the loopback address

def test_the_fetcher_is_rate_limited_retries_bounds_sizes_and_resumes(tmp_path):
    big = jpeg(3, 300, 300)
    files = {"/a.jpg": jpeg(1), "/b.png": jpeg(2), "/big.jpg": big, "/page.jpg": b"<html>not found</html>",
             "/flaky.jpg": jpeg(4)}
    with serve(files, flaky={"/flaky.jpg": 2}) as server:
        names = ["/a.jpg", "/b.png", "/big.jpg", "/page.jpg", "/flaky.jpg", "/missing.jpg"]
        jobs = [(server.url + name, tmp_path / "images" / name[1:]) for name in names]
        jobs.append(("file:///etc/hostname", tmp_path / "images" / "local.jpg"))
        settings = FetchSettings(rate=25, workers=3, retries=2, timeout=5, max_bytes=len(big) - 1, backoff=0.01)
        started = time.monotonic()
        failures = fetch_images(jobs, settings)
        elapsed = time.monotonic() - started
        assert failures == [None, None, f"{len(big):,} bytes, over --max-image-bytes {len(big) - 1:,}",
                            "not an image", None, "HTTP 404", "not an http(s) URL: file:///etc/hostname"]
        requests = sum(server.hits.values())
        assert requests == 8 and server.hits["/flaky.jpg"] == 3
        assert elapsed >= (requests - 1) / settings.rate
        for name in ("/a.jpg", "/b.png", "/flaky.jpg"):
            assert (tmp_path / "images" / name[1:]).read_bytes() == files[name]
        assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["a.jpg", "b.png", "flaky.jpg"]

        assert fetch_images(jobs, settings) == failures
        assert sum(server.hits.values()) == requests + 3    # only the failures are asked for again


# ----------------------------------------------------------------------------------------------------------
# The split's rules against plain loops

def test_k_core_matches_removing_one_at_a_time():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 40, 400), rng.integers(0, 30, 400)
    pairs = sorted(set(zip(users.tolist(), items.tolist())))
    users, items = np.array([u for u, _ in pairs]), np.array([i for _, i in pairs])
    allowed = np.arange(30) % 7 != 0
    kept = k_core(users, items, allowed, 6, 4)
    left = {(u, i) for u, i in pairs if allowed[i]}
    while True:
        user_count, item_count = Counter(u for u, _ in left), Counter(i for _, i in left)
        smaller = {(u, i) for u, i in left if user_count[u] < 6 or item_count[i] < 4}
        if not smaller:
            break
        left -= smaller
    assert left and {pair for pair, keep in zip(pairs, kept) if keep} == left


def test_first_interactions_and_both_holdouts():
    users = np.array([1, 0, 1, 0, 1, 0, 0, 1])
    items = np.array([5, 3, 5, 4, 6, 3, 2, 7])
    times = np.array([9, 2, 1, 2, 4, 1, 8, 4])
    keep = first_interactions(users, items, times)
    assert list(zip(users[keep], items[keep], times[keep])) == [(0, 3, 1), (0, 4, 2), (0, 2, 8), (1, 5, 1),
                                                                 (1, 6, 4), (1, 7, 4)]
    last = hold_out(users[keep], items[keep], times[keep], "last", 0)
    codes = last.item_codes
    assert codes[last.test].tolist() == [2, 7] and codes[last.validation].tolist() == [4, 6]
    assert codes[last.train_items].tolist() == [3, 5] and last.train_indptr.tolist() == [0, 1, 2]
    for seed in range(5):
        drawn = hold_out(users[keep], items[keep], times[keep], "random", seed)
        for user, owned in enumerate([{3, 4, 2}, {5, 6, 7}]):
            held = {drawn.item_codes[drawn.validation[user]], drawn.item_codes[drawn.test[user]]}
            train = set(drawn.item_codes[drawn.train_items[drawn.train_indptr[user]:drawn.train_indptr[user + 1]]])
            assert len(held) == 2 and held | train == owned and not held & train


def test_malformed_sources_and_unsafe_image_paths_are_named(tmp_path, server):
    spec = write_source("amazon2023", tmp_path / "raw", World(), server)
    reviews = Path(spec["args"][2])
    reviews.write_text(reviews.read_text() + '{"user_id": "A1", "parent_asin": \n')
    with pytest.raises(SystemExit, match=rf"^convert: {reviews}: JSON parse error"):
        convert(spec, tmp_path / "out")
    spec = write_generic(tmp_path / "lab", World())
    (tmp_path / "lab" / "interactions.csv").write_text("user,product\nu1,it3\n")
    with pytest.raises(SystemExit, match=r"interactions.csv has no column item \(its header: user, product\)$"):
        convert(spec, tmp_path / "out")
    (tmp_path / "secret.jpg").write_bytes(jpeg(5))
    folder = tmp_path / "lab" / "photos"
    assert image_files.image_status(folder / ".." / ".." / "secret.jpg", folder, 10**6) == image_files.MISSING
    assert image_files.image_status(folder / "img" / "3.jpg", folder, 10**6) == image_files.OK
    assert image_files.image_status(folder / "img" / "3.jpg", folder, 100) == image_files.TOO_LARGE


def test_image_side_shrinks_only_larger_images():
    large, small = jpeg(1, 300, 200), jpeg(2, 40, 60)

    assert Image.open(io.BytesIO(image_files.shrunk(large, 64))).size == (96, 64)
    assert image_files.shrunk(small, 64) == small
    assert image_files.shrunk(b"not an image", 64) == b"not an image"
