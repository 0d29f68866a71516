"""The dataset of a run: the file or folder given with --dataset, read by the first format that recognises it; else
the real AmazonFashion file when it is there, else the embedded demo catalogue.

A format is one module with a `recognises(path)` test and a loader returning a common.data.Dataset; adding one is
that file and one line in FORMATS."""
from pathlib import Path
from typing import Callable, NamedTuple

from common.catalogue.config import is_embedded
from common.catalogue.generate import ensure_embedded_catalogue
from common.data import Dataset, load_dataset
from common.dataset_folder import is_dataset_folder, load_dataset_folder
from common.errors import DatasetError, RunError
from common.images import image_store

DEFAULT_DATASET = Path("data/AmazonFashion6ImgPartitioned.npy")


class DatasetFormat(NamedTuple):
    recognises: Callable[[Path], bool]
    load: Callable[[Path], Dataset]
    what: str


FORMATS = {
    "folder": DatasetFormat(is_dataset_folder, load_dataset_folder, "a dataset folder (manifest.json), as "
                                                                    "convert/main.py writes it"),
    "original": DatasetFormat(Path.is_file, load_dataset, "a .npy in the original pickled layout"),
}


def dataset_format(path) -> DatasetFormat:
    """The format of the dataset at `path`; DatasetError if none recognises it."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset {path} not found (bash download_dataset.sh fetches the originals; "
                           "convert/main.py converts other data)")
    found = next((form for form in FORMATS.values() if form.recognises(path)), None)
    if found is None:
        raise DatasetError(f"{path} is none of the dataset formats: "
                           + "; ".join(form.what for form in FORMATS.values()))
    return found


def resolve_dataset(path=None) -> tuple[Path, bool]:
    """(absolute path, embedded) of a run's dataset: `path` if given ("embedded" forces the demo catalogue), else
    the real AmazonFashion file at its default path, else the embedded catalogue (generated once)."""
    if path and path != "embedded":
        dataset_format(path)
        return Path(path).resolve(), is_embedded(path)
    if path is None and DEFAULT_DATASET.is_file():
        return DEFAULT_DATASET.resolve(), False
    return ensure_embedded_catalogue().resolve(), True


def open_dataset(path=None, cache_dir=None) -> tuple[Dataset, bool]:
    """(Dataset, embedded) for a run, as `resolve_dataset` chooses it, its decoded images cached in `cache_dir`
    (None: a cache/ folder beside the dataset); the fallback to the embedded catalogue is announced in one line."""
    resolved, embedded = resolve_dataset(path)
    dataset = dataset_format(resolved).load(resolved)
    dataset.cache_dir = Path(cache_dir) if cache_dir else None
    if embedded and path is None:
        print(f"{DEFAULT_DATASET} not found: using the embedded demo catalogue {resolved} ({dataset.usernum} "
              f"users, {dataset.itemnum} items, {dataset.num_train_interactions} training actions)")
    return dataset, embedded


def open_run_data(cfg, ranks, check=None):
    """(dataset, embedded, image store) of an image model's run (cfg: dataset, cache_dir, image_size,
    resize_filter, strict_images); rank 0 builds the catalogue and the image cache first.
    `check(dataset)`, if given, runs before the image cache is built."""
    with ranks.main_first():
        dataset, embedded = open_dataset(cfg.dataset, cfg.cache_dir)
        if check:
            check(dataset)
        store = image_store(dataset, cfg.image_size, cfg.resize_filter, ranks.device, strict=cfg.strict_images)
    return dataset, embedded, store


def describe_data(dataset):
    return (f"{dataset.name}: {dataset.usernum} users, {dataset.itemnum} items, {dataset.num_train_interactions} "
            "training interactions")


def open_run_dataset(run, path, cache_dir):
    """The dataset a finished run in `run` was trained on (`path`), refused in one line if it has moved."""
    if path and path != "embedded" and not Path(path).exists():
        raise RunError(f"the dataset the run in {run} was trained on, {path}, is not there any more: "
                       "give its new place with --dataset")
    return open_dataset(path, cache_dir)[0]


def check_size(run, count, what, dataset):
    """RunError unless the run's `count` users or items match the dataset's."""
    actual = dataset.usernum if what == "users" else dataset.itemnum
    if count != actual:
        raise RunError(f"the run in {run} has {count} {what} but {dataset.path} has {actual}: "
                       "give the --dataset it was trained on")
