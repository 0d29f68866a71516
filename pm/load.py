"""The trained stages preference maximisation reads, from their run directories: DVBPR and the GAN."""
from pathlib import Path

import torch

from common.checkpoint import load_checkpoint
from common.data import DatasetError
from common.images import ImageStore, image_cache
from dvbpr.run import open_run
from gan.classifier import load_classifier, train_or_load_classifier
from gan.train import load_gan
from pm.design import Designer


class MissingRunError(FileNotFoundError):
    """A run directory this stage needs has no trained model; the message says how to make it."""


def check_gan_run(run):
    if not (Path(run) / "checkpoint.pt").is_file():
        raise MissingRunError(f"no trained GAN in {run} (checkpoint.pt): "
                              f"make it with `python gan/main.py --train --out {run}`")


class Stages:
    """What preference maximisation works with: the dataset, the Designer, the item embeddings Phi(X_i) (eq. 8)
    and the catalogue's images at the GAN's size (for display, nearest neighbours and the image metrics)."""

    def __init__(self, dvbpr_run, gan_run, dataset=None, device="cpu"):
        self.device = torch.device(device)
        self.gan_run = Path(gan_run)
        check_gan_run(gan_run)
        trained = open_run(dvbpr_run, dataset, self.device, with_model=True)
        dvbpr, self.dataset, self.item_embeddings = trained.model, trained.dataset, trained.items
        self.dvbpr_config = trained.config
        generator, discriminator, self.gan_checkpoint = load_gan(gan_run, self.device)
        if generator.num_categories != self.dataset.num_categories:
            raise DatasetError(f"the GAN has {generator.num_categories} categories but {self.dataset.name} has "
                               f"{self.dataset.num_categories}")
        self.designer = Designer(dvbpr.cnn, dvbpr.theta, generator, discriminator)
        gan_filter = self.gan_checkpoint["config"]["resize_filter"]
        self.images = ImageStore(image_cache(self.dataset, generator.image_size, gan_filter), self.device)
        self.item_category = torch.as_tensor(self.dataset.item_category, device=self.device)

    def items_of(self, category):
        return (self.item_category == category).nonzero().squeeze(1)

    def category_classifier(self, fallback_dir):
        """The GAN run's category classifier (classifier.pt), else one trained now and saved in `fallback_dir`."""
        path = self.gan_run / "classifier.pt"
        if path.is_file():
            return load_classifier(load_checkpoint(path, map_location=self.device), self.device)
        return train_or_load_classifier(self.dataset, self.designer.image_size, Path(fallback_dir) / "classifier.pt",
                                        self.device, self.gan_checkpoint["config"]["resize_filter"], self.images)
