"""Sampling mode of the GAN stage (`python gan/main.py` without --train): one grid per category from a trained
run, and its condition consistency."""
import torch

from common.figures import save_grid
from gan.config import GRID_SIZE
from gan.consistency import format_consistency, measure_consistency
from gan.model import generate
from gan.run import open_gan_run


def write_category_grids(run_path, device, bf16=True, seed=0):
    """samples/test_arange_<c>.png, one 4x4 grid per category from one shared z of the prior (GAN/main.py's
    visualize option 1 in the original repository), and the condition consistency when the run's classifier is
    there."""
    run = open_gan_run(run_path, device)
    rng = torch.Generator(device=device).manual_seed(seed)
    z = run.model.sample_z(GRID_SIZE, device, rng)
    paths = []
    for category in range(run.num_categories):
        labels = torch.full((GRID_SIZE,), category, device=device)
        paths.append(run.path / "samples" / f"test_arange_{category}.png")
        save_grid(paths[-1], generate(run.model, z, labels, bf16), 4)
    print(f"wrote {len(paths)} grids to {run.path / 'samples'} (step {run.step})")
    classifier = run.saved_classifier(device)
    if classifier is not None:
        print(format_consistency(measure_consistency(run.model, classifier, run.num_categories,
                                                     run.config.consistency_samples, device, bf16, seed)))
    return paths
