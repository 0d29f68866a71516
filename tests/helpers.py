"""Stand-ins shared by several test files."""
import contextlib
import dataclasses
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from common.catalogue.reader import reader_key, reader_path, save_reader, train_reader
from common.catalogue.truth import load_truth
from common.checkpoint import load_checkpoint, save_checkpoint
from common.classifier import CategoryClassifier, classifier_checkpoint
from common.data import Dataset, load_dataset
from common.images import image_store
from gan.train import train as train_gan

ROOT = Path(__file__).resolve().parents[1]


def place_random_classifier(run_dir, dataset, image_size, resize_filter="nearest", seed=0):
    """A random-weight category classifier (keyed as one of `seed`) in a GAN run directory, which GAN training then
    reuses instead of training one (the tests that use it check plumbing, not the classifier)."""
    classifier = CategoryClassifier(image_size, dataset.num_categories)
    save_checkpoint(run_dir / "classifier.pt", classifier_checkpoint(classifier, dataset, resize_filter, {}, seed))


def straight_and_resumed_gan(cfg, tmp_path):
    """(straight, resumed): the checkpoints of cfg's GAN trained for cfg.epochs in one go and in two parts (one epoch,
    then --resume), each in a folder of tmp_path with a random classifier; asserts they hold identical weights."""
    for name in ("straight", "resumed"):
        place_random_classifier(tmp_path / name, load_dataset(cfg.dataset), cfg.image_size)
    train_gan(dataclasses.replace(cfg, out=str(tmp_path / "straight")))
    train_gan(dataclasses.replace(cfg, out=str(tmp_path / "resumed"), epochs=1))
    train_gan(dataclasses.replace(cfg, out=str(tmp_path / "resumed"), resume=True))
    straight, resumed = (load_checkpoint(tmp_path / name / "checkpoint.pt", "gan") for name in ("straight", "resumed"))
    assert resumed["step"] == straight["step"] > 0
    for net, weights in straight["model"].items():   # noise drawn in training continues after the resume
        for name, weight in weights.items():
            torch.testing.assert_close(resumed["model"][net][name], weight, rtol=0, atol=0, msg=f"{net} {name}")
    return straight, resumed


def place_attribute_reader(dataset_path, image_size, steps=10, resize_filter="nearest"):
    """An attribute reader trained for a few steps where Table IV looks for the catalogue's reader, which it then
    reuses instead of training one."""
    dataset = load_dataset(dataset_path)
    reader, metrics = train_reader(image_store(dataset, image_size, resize_filter, device="cpu"),
                                   load_truth(dataset_path), steps=steps)
    save_reader(reader_path(dataset, image_size, resize_filter), reader, reader_key(dataset, image_size,
                                                                                   resize_filter), metrics)


def interactions_only(usernum, itemnum, user_train, user_validation, user_test, name="tiny"):
    """A real Dataset with interactions and no images or categories, for the code that reads only those."""
    return Dataset(name=name, path=Path(f"{name}.npy"), usernum=usernum, itemnum=itemnum,
                   user_train=[np.asarray(items, dtype=np.int64) for items in user_train],
                   user_validation=np.asarray(user_validation, dtype=np.int64),
                   user_test=np.asarray(user_test, dtype=np.int64), item_category=np.full(itemnum, -1),
                   num_categories=0, image_bytes=[])


def run_stage(script, args, nproc=1):
    """Run an entry point in a fresh process, or under torchrun with `nproc` ranks; asserts that it succeeds."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    result = subprocess.run(launcher + [str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@contextlib.contextmanager
def within(seconds, peak_bytes):
    """Asserts that the block ends within `seconds` and allocates at most `peak_bytes` (tracemalloc: Python
    objects and numpy arrays)."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    assert peak < peak_bytes, f"allocated {peak:,} bytes at the peak"


def refused(error, call):
    """The one-line message of the `error` that call() raises."""
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and not message.rstrip().endswith(":")
    return message
