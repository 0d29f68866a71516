"""A trained GAN read back from its run directory: its generator (the one its settings name, gan/generators.py)
in inference mode, its settings and its category classifier. Preference maximisation opens the GAN through this
module alone."""
from dataclasses import dataclass
from pathlib import Path

from common.checkpoint import load_checkpoint, saved_config
from common.classifier import load_classifier, train_or_load_classifier
from common.data import MAX_CATEGORIES
from common.datasets import open_dataset
from common.errors import CheckpointError, RunError
from common.images import image_store
from common.safe_pickle import describe_value
from gan.config import GANConfig, check_config
from gan.generators import build_generator
from gan.model import ConditionalGenerator


@dataclass
class GANRun:
    path: Path
    config: GANConfig
    model: ConditionalGenerator
    num_categories: int
    step: int
    metrics: dict

    def saved_classifier(self, device):
        """The category classifier trained with the run (classifier.pt), or None."""
        path = self.path / "classifier.pt"
        return load_classifier(load_checkpoint(path, "classifier", map_location=device), device) \
            if path.is_file() else None

    def real_items(self, device):
        """(dataset, its images at the run's size and filter) of the dataset the run was trained on."""
        dataset, _ = open_dataset(self.config.dataset, self.config.cache_dir)
        return dataset, image_store(dataset, self.config.image_size, self.config.resize_filter, device=device)

    def category_classifier(self, dataset, store, fallback_dir):
        """The run's category classifier, else one trained now on `store` (the run's images, as `real_items`
        gives them) and saved in `fallback_dir`."""
        return self.saved_classifier(store.device) or train_or_load_classifier(
            dataset, store, Path(fallback_dir) / "classifier.pt")


def open_gan_run(run, device="cpu"):
    """The GAN trained in directory `run`: its generator in eval mode without gradients."""
    run = Path(run)
    path = run / "checkpoint.pt"
    if not path.is_file():
        raise RunError(f"no trained GAN in {run} (checkpoint.pt): make it with "
                       f"`python gan/main.py --train --out {run}`")
    checkpoint = load_checkpoint(path, "gan", device, ("model", "config", "num_categories", "step", "metrics"))
    cfg = saved_config(GANConfig, checkpoint["config"], path, check_config)
    categories, nets = checkpoint["num_categories"], checkpoint["model"]
    if type(categories) is not int or not 1 <= categories <= MAX_CATEGORIES:
        raise CheckpointError(f"{path}: its category count is {describe_value(categories)}, not from 1 to "
                              f"{MAX_CATEGORIES} (the file was edited or is corrupted)")
    model = build_generator(cfg, categories, device)
    model.load_saved(nets, path)
    return GANRun(run, cfg, model.eval().requires_grad_(False), categories, checkpoint["step"],
                  checkpoint["metrics"])
