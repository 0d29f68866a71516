"""Sampling mode of the GAN stage (`python gan/main.py` without --train): one grid per category from a trained
run, its samples beside real items of each category, and its condition consistency."""
from pathlib import Path

import numpy as np
import torch

from common.figures import save_grid
from common.original_format import CATEGORY_NAMES
from gan.config import GRID_SIZE
from gan.consistency import format_consistency, measure_consistency
from gan.model import generate
from gan.run import open_gan_run

BESIDE_REAL = 6   # samples, then real items, per category row of samples/beside_real.png


def write_category_grids(run_path, device, bf16=True, seed=0):
    """samples/test_arange_<c>.png, one 4x4 grid per category from one shared z of the prior (GAN/main.py's
    visualize option 1 in the original repository), samples/beside_real.png where the run's dataset is at hand, and
    the condition consistency when the run's classifier is there."""
    run = open_gan_run(run_path, device)
    rng = torch.Generator(device=device).manual_seed(seed)
    z = run.model.sample_z(GRID_SIZE, device, rng)
    paths = []
    for category in range(run.num_categories):
        labels = torch.full((GRID_SIZE,), category, device=device)
        paths.append(run.path / "samples" / f"test_arange_{category}.png")
        save_grid(paths[-1], generate(run.model, z, labels, bf16), 4)
    print(f"wrote {len(paths)} grids to {run.path / 'samples'} (step {run.step})")
    beside_real = write_beside_real(run, device, bf16, seed)
    classifier = run.saved_classifier(device)
    if classifier is not None:
        print(format_consistency(measure_consistency(run.model, classifier, run.num_categories,
                                                     run.config.consistency_samples, device, bf16, seed)))
    return paths + ([beside_real] if beside_real else [])


def write_beside_real(run, device, bf16, seed):
    """samples/beside_real.png from the run's dataset, or None, said in one line, where that file is not here (a run
    made from a TensorFlow checkpoint has none; a run copied from another machine may not find it)."""
    if not run.config.dataset or not Path(run.config.dataset).exists():
        print(f"no samples/beside_real.png: the run's dataset {run.config.dataset} is not here")
        return None
    dataset, store = run.real_items(device)
    return samples_beside_real(run.model, dataset, store, seed, run.path / "samples" / "beside_real.png", bf16)


def samples_beside_real(model, dataset, store, seed, path, bf16=False, per_row=BESIDE_REAL):
    """One row per category: `per_row` samples of the generator from fixed codes, then `per_row` random real items of
    the category; returns the path written."""
    z = model.sample_z(per_row, store.device, torch.Generator(device=store.device).manual_seed(seed))
    rng = np.random.default_rng(seed)
    rows = []
    for category in range(dataset.num_categories):
        real = rng.choice(np.flatnonzero(dataset.item_category == category), per_row, replace=False)
        labels = torch.full((per_row,), category, device=store.device)
        rows += [generate(model, z, labels, bf16), store(torch.as_tensor(real))]
    captions = (["generated"] * per_row + ["real"] * per_row) * dataset.num_categories
    save_grid(path, torch.cat(rows), 2 * per_row, captions)
    print(f"wrote {path}: rows {', '.join(CATEGORY_NAMES[:dataset.num_categories])}")
    return path
