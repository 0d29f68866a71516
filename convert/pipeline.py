"""A source into a dataset folder (common/dataset_folder.py), in steps a rerun skips once they are done.

    interactions  read the source's interactions, keep each user's first interaction with an item, in time order
    items         the categories and images of the items that pass the minimum-interactions filter
    images        which image files are usable (fetching them first, for a source of URLs)
    split         the filter again without the items that have no image, then the held-out items
                  (convert/split.py); writes the arrays, users.txt and items.txt
    pack          images.bin and image_offsets.npy (resumable within the step)
    manifest      written last: a folder with a manifest is a finished dataset

Each step's results lie in OUT/work/ with a key: the step's settings, the source files' names, sizes and times,
and the previous step's key. A rerun does again the first step whose key changed and every step after it; once
the manifest is written the work folder goes, and a rerun with the same key says the dataset is there.
"""
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from common.checkpoint import fingerprint, remove_stale_temporaries, write_json
from common.data import MAX_CATEGORIES, name_offenders
from common.dataset_folder import MANIFEST, OPTIONAL_ARRAYS, save_array, write_manifest
from common.errors import ConfigError, DatasetError
from convert import images as image_files
from convert.fetch import FetchSettings, fetch_images
from convert.readers import Interactions, Items
from convert.sources import SOURCES
from convert.split import category_ids, first_interactions, hold_out, k_core

STEP_SETTINGS = {
    "interactions": ("source", "user_fraction"),
    "items": ("min_interactions", "min_item_interactions", "category_columns", "category_depth", "image_field"),
    "images": ("images", "fetch", "max_image_bytes"),
    "split": ("holdout", "seed"),
    "pack": ("image_side",),
}
SHOWN = 5   # offenders named in a line
BYTES_PER_ROW = 250   # peak memory per interaction read: bench/convert_hm.py measured 197-228 (23 per user, as H&M)
SAMPLE_BYTES = 4 << 20


class Steps:
    """Runs a step unless OUT/work/steps.json has it done with the same key."""

    def __init__(self, work: Path):
        self.work, self.index = work, work / "steps.json"
        work.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(work)
        self.done = json.loads(self.index.read_text()) if self.index.is_file() else {}

    def run(self, name: str, key: str, compute, load):
        if self.done.get(name) == key:
            print(f"{name}: done before, kept")
            return load()
        started = time.perf_counter()
        result = compute()
        print(f"{name}: done in {time.perf_counter() - started:.1f} s")
        self.done[name] = key
        write_json(self.index, self.done)
        return result


def input_stats(paths: dict[str, Path]) -> dict:
    for role, path in paths.items():
        if not path.is_file():
            raise DatasetError(f"the {role} file {path} is not there")
    return {role: [path.name, path.stat().st_size, path.stat().st_mtime_ns] for role, path in paths.items()}


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def estimated_rows(path: Path) -> int | None:
    """Lines in an uncompressed file, from those in its first SAMPLE_BYTES; None for a compressed one."""
    if path.suffix in (".gz", ".bz2", ".zst", ".lz4"):
        return None
    with open(path, "rb") as f:
        sample = f.read(SAMPLE_BYTES)
    return round(path.stat().st_size * sample.count(b"\n") / max(1, len(sample)))


def memory_verdict(rows: int, user_fraction: float, available: int, what: str) -> str | None:
    """Why converting `rows` interactions would not fit in `available` bytes, naming the share of users that
    would; None if it fits."""
    needed = rows * user_fraction * BYTES_PER_ROW
    if needed <= available:
        return None
    fits = 0.9 * available / (rows * BYTES_PER_ROW)
    return (f"{what} holds about {rows:,} interactions; converting {user_fraction:g} of them needs about "
            f"{needed / 2**30:.1f} GiB and {available / 2**30:.1f} GiB is available: --user-fraction {fits:.2f} keeps "
            "that share of users (by a hash of their id) and fits")


def check_memory(cfg, path: Path, available: int | None = None):
    """ConfigError, before anything is read, if the interactions in `path` would not fit in memory."""
    rows = estimated_rows(path)
    if rows is None:
        return print(f"{path.name} is compressed: its memory need is not estimated ({BYTES_PER_ROW} bytes per "
                     "interaction; --user-fraction reduces it)")
    verdict = memory_verdict(rows, cfg.user_fraction, available_memory() if available is None else available,
                             path.name)
    if verdict:
        raise ConfigError(verdict)


def step_keys(cfg, stats: dict) -> dict[str, str]:
    keys, previous = {}, fingerprint(stats)
    for step, names in STEP_SETTINGS.items():
        previous = keys[step] = fingerprint({"step": step, "after": previous,
                                             **{name: getattr(cfg, name) for name in names}})
    return keys


# ----------------------------------------------------------------------------------------------------------
# The steps' results in the work folder

def _write_lines(path: Path, lines: list[str]):
    bad = next((line for line in lines if "\n" in line or "\r" in line), None)
    if bad is not None:
        raise DatasetError(f"an id holds a line break: {bad[:40]!r}")
    path.write_text("".join(line + "\n" for line in lines))


def _read_lines(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1]


def save_interactions(work: Path, data: Interactions, report: dict):
    arrays = {"users": data.users, "items": data.items, **({"times": data.times} if data.times is not None else {})}
    np.savez(work / "interactions.npz", **arrays)
    _write_lines(work / "user_ids.txt", data.user_ids)
    _write_lines(work / "item_ids.txt", data.item_ids)
    write_json(work / "interactions.json", {"time_unit": data.time_unit, "report": report})


def load_interactions(work: Path) -> tuple[Interactions, dict]:
    with np.load(work / "interactions.npz", allow_pickle=False) as arrays:
        times = arrays["times"] if "times" in arrays else None
        users, items = arrays["users"], arrays["items"]
    meta = json.loads((work / "interactions.json").read_text())
    data = Interactions(users, items, times, _read_lines(work / "user_ids.txt"), _read_lines(work / "item_ids.txt"),
                        meta["time_unit"])
    return data, meta["report"]


def _json_step(path: Path, compute):
    def run():
        result = compute()
        write_json(path, result)
        return result
    return run, lambda: json.loads(path.read_text())


# ----------------------------------------------------------------------------------------------------------
# What each step computes

def read_step(cfg, source) -> tuple[Interactions, dict]:
    data = source.read(cfg)
    rows = len(data.users)
    keep = first_interactions(data.users, data.items, data.times)
    data.users, data.items = data.users[keep], data.items[keep]
    data.times = None if data.times is None else data.times[keep]
    report = {"rows read": rows + sum(data.skipped.values()), **{f"rows left out: {k}": n for k, n in
                                                                 data.skipped.items()},
              "repeated (user, item) rows merged into the first": rows - len(keep)}
    print(f"interactions: {rows:,} rows, {len(keep):,} distinct (user, item), {len(data.user_ids):,} users, "
          f"{len(data.item_ids):,} items")
    return data, report


def candidate_items(cfg, data: Interactions) -> np.ndarray:
    """Codes of the items that pass the minimum-interactions filter before images are looked at."""
    everything = np.ones(len(data.item_ids), dtype=bool)
    kept = k_core(data.users, data.items, everything, cfg.min_interactions, cfg.min_item_interactions)
    return np.unique(data.items[kept])


def items_step(cfg, source, data: Interactions) -> dict:
    codes = candidate_items(cfg, data)
    if len(codes) == 0:
        raise DatasetError(f"no user has --min-interactions {cfg.min_interactions} distinct items")
    described: Items = source.describe_items(cfg, [data.item_ids[c] for c in codes])
    return {"codes": codes.tolist(), "known": described.known, "categories": described.categories,
            "images": described.images}


def _file_name(item_id: str, url: str) -> str:
    """The file an item's fetched image is saved as: its id (or a digest of an id unsafe in a file name) and
    the URL's image extension."""
    stem = item_id if re.fullmatch(r"[A-Za-z0-9_-]{1,100}", item_id) else fingerprint({"id": item_id}, 20)
    suffix = Path(url.split("?")[0]).suffix.lower()
    return stem + (suffix if suffix in (".jpg", ".jpeg", ".png", ".gif", ".webp") else ".jpg")


def images_step(cfg, source, data: Interactions, items: dict) -> dict:
    """Each candidate's image path and status (convert/images.py), fetching URLs first for a source of URLs."""
    folder = source.image_folder(cfg)
    paths, failures = list(items["images"]), {}
    if source.FETCHES:
        wanted = [k for k, url in enumerate(paths) if url]
        paths = [str(folder / _file_name(data.item_ids[items["codes"][k]], url)) if url else "" for k, url in
                 enumerate(paths)]
        if cfg.fetch:
            settings = FetchSettings(cfg.fetch_rate, cfg.fetch_workers, cfg.fetch_retries,
                                     max_bytes=cfg.max_image_bytes)
            found = fetch_images([(items["images"][k], Path(paths[k])) for k in wanted], settings)
            failures = {data.item_ids[items["codes"][k]]: why for k, why in zip(wanted, found) if why}
            if failures:
                print(f"{len(failures):,} downloads failed: "
                      f"{name_offenders([f'{item} ({why})' for item, why in failures.items()], SHOWN)}")
    elif not folder.is_dir():
        raise DatasetError(f"the image folder {folder} is not there")
    status = [image_files.image_status(Path(path) if path else None, folder, cfg.max_image_bytes) for path in paths]
    return {"paths": paths, "status": status, "fetch_failures": failures}


def _named(report: dict, what: str, ids: list[str]):
    """Count and name (the first SHOWN) the ids in one printed line and in `report`."""
    if ids:
        print(f"{len(ids):,} {what}: {name_offenders(ids, SHOWN)}")
        report[what] = {"count": len(ids), "first": ids[:100]}


def split_step(cfg, out: Path, data: Interactions, items: dict, images: dict) -> dict:
    codes, status = np.array(items["codes"], dtype=np.int64), np.array(images["status"])
    known = np.array(items["known"], dtype=bool)
    usable = known & np.isin(status, [image_files.OK, image_files.UNREADABLE])
    unknown, no_image = codes[~known], codes[known & ~usable]
    allowed = np.zeros(len(data.item_ids), dtype=bool)
    allowed[codes[usable]] = True
    kept = k_core(data.users, data.items, allowed, cfg.min_interactions, cfg.min_item_interactions)
    if not kept.any():
        raise DatasetError("no user keeps --min-interactions items with an image; see the items named above")
    times = None if data.times is None else data.times[kept]
    split = hold_out(data.users[kept], data.items[kept], times, cfg.holdout, cfg.seed)
    position = {code: k for k, code in enumerate(codes.tolist())}
    rows = [position[code] for code in split.item_codes.tolist()]
    category, names = category_ids([items["categories"][k] for k in rows], MAX_CATEGORIES)
    for name, values in {"train_indptr": split.train_indptr, "train_items": split.train_items,
                         "validation": split.validation, "test": split.test, "item_category": category,
                         **split.times}.items():
        save_array(out, name, values)
    for name in set(OPTIONAL_ARRAYS) - set(split.times):   # left by an earlier conversion into this folder
        (out / f"{name}.npy").unlink(missing_ok=True)
    _write_lines(out / "users.txt", [data.user_ids[c] for c in split.user_codes.tolist()])
    _write_lines(out / "items.txt", [data.item_ids[c] for c in split.item_codes.tolist()])
    report = {}
    _named(report, "items left out, not in the metadata", [data.item_ids[c] for c in unknown.tolist()])
    _named(report, f"items left out, no usable image (missing, empty or over {cfg.max_image_bytes:,} bytes)",
           [data.item_ids[c] for c in no_image.tolist()])
    _named(report, "items kept whose image PIL cannot identify (grey when decoded)",
           [data.item_ids[c] for c in split.item_codes[status[rows] == image_files.UNREADABLE].tolist()])
    return {"usernum": len(split.user_codes), "itemnum": len(split.item_codes), "categories": names,
            "image_paths": [images["paths"][k] for k in rows], "report": report,
            "fetch_failures": dict(list(images["fetch_failures"].items())[:100])}


# ----------------------------------------------------------------------------------------------------------

def convert(cfg) -> Path:
    """Convert cfg.source into the dataset folder cfg.out; returns its path."""
    source, out = SOURCES[cfg.source], Path(cfg.out)
    stats = input_stats(source.inputs(cfg))
    keys = step_keys(cfg, stats)
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("conversion_key") == keys["pack"]:
        print(f"{out} is already this conversion (its manifest.json has the same key): nothing to do")
        return out
    manifest.unlink(missing_ok=True)
    if out.is_dir():
        remove_stale_temporaries(out)
    work = out / "work"
    steps = Steps(work)
    if steps.done.get("interactions") != keys["interactions"]:
        check_memory(cfg, next(iter(source.inputs(cfg).values())))
    data, report = steps.run("interactions", keys["interactions"],
                             lambda: _saved(work, *read_step(cfg, source)), lambda: load_interactions(work))
    items = steps.run("items", keys["items"], *_json_step(work / "items.json", lambda: items_step(cfg, source, data)))
    images = steps.run("images", keys["images"],
                       *_json_step(work / "images.json", lambda: images_step(cfg, source, data, items)))
    split = steps.run("split", keys["split"],
                      *_json_step(work / "split.json", lambda: split_step(cfg, out, data, items, images)))
    progress = work / f"packed-{keys['pack']}.npy"   # the sizes packed so far, for this item order only
    steps.run("pack", keys["pack"], lambda: image_files.pack_images(out, split["image_paths"], cfg.image_side,
                                                                    cfg.workers, progress), lambda: None)
    description = {"name": out.name, "source": {"converter": cfg.source, "files": stats},
                   "settings": {name: getattr(cfg, name) for names in STEP_SETTINGS.values() for name in names},
                   "time_unit": data.time_unit, "report": {**report, **split["report"]},
                   "fetch_failures": split["fetch_failures"], "conversion_key": keys["pack"]}
    written = write_manifest(out, usernum=split["usernum"], itemnum=split["itemnum"], categories=split["categories"],
                             description=description)
    shutil.rmtree(work)
    print(f"{out}: {written['usernum']:,} users, {written['itemnum']:,} items, {written['interactions']:,} training "
          f"interactions, {written['num_categories']} categories, {written['images']['bytes'] / 2**20:,.1f} MiB of "
          f"images; fingerprint {written['fingerprint']}")
    return out


def _saved(work: Path, data: Interactions, report: dict):
    save_interactions(work, data, report)
    return data, report
