"""The trained stages preference maximisation reads, from their run directories: DVBPR and the GAN."""
from pathlib import Path

import torch

from common.catalogue import open_dataset
from common.checkpoint import load_checkpoint
from common.data import DatasetError
from common.images import ImageStore, image_cache
from dvbpr.model import DVBPR
from gan.classifier import load_classifier, train_or_load_classifier
from gan.train import load_gan
from pm.design import Designer


class MissingRunError(FileNotFoundError):
    """A run directory this stage needs has no trained model; the message says how to make it."""


def load_dvbpr(run, device="cpu"):
    """(DVBPR in eval mode, item embeddings [itemnum, K] or None, checkpoint) from a DVBPR run directory.

    Prefers best.pt (the best validation epoch) and its embeddings.pt; else the latest checkpoint.pt.
    """
    run = Path(run)
    path = next((p for p in (run / "best.pt", run / "checkpoint.pt") if p.is_file()), None)
    if path is None:
        raise MissingRunError(f"no trained DVBPR in {run} (best.pt or checkpoint.pt): "
                              f"make it with `python dvbpr/main.py --out {run}`")
    checkpoint = load_checkpoint(path, map_location=device)
    cfg = checkpoint["config"]
    usernum = checkpoint["model"]["theta"].shape[0]
    model = DVBPR(usernum, cfg["k"], cfg["image_size"], cfg["dropout"], fc_width=cfg.get("fc_width", 4096))
    model.load_state_dict(checkpoint["model"])
    model = model.to(device).eval().requires_grad_(False)
    items = None
    if (run / "embeddings.pt").is_file():
        exported = load_checkpoint(run / "embeddings.pt", map_location=device)
        if exported.get("step") == checkpoint["step"]:  # exported by the same epoch as these weights
            items = exported["items"].float()
    return model, items, checkpoint


def check_gan_run(run):
    if not (Path(run) / "checkpoint.pt").is_file():
        raise MissingRunError(f"no trained GAN in {run} (checkpoint.pt): "
                              f"make it with `python gan/main.py --train --out {run}`")


@torch.no_grad()
def embed_items(cnn, store, batch_size=256):
    """Phi(X_i) of every item of `store`, in eval mode; [itemnum, K]."""
    return torch.cat([cnn(store(torch.arange(start, min(start + batch_size, len(store)))))
                      for start in range(0, len(store), batch_size)])


class Stages:
    """What preference maximisation works with: the dataset, the Designer, the item embeddings Phi(X_i) (eq. 8)
    and the catalogue's images at the GAN's size (for display, nearest neighbours and the image metrics)."""

    def __init__(self, dvbpr_run, gan_run, dataset=None, device="cpu"):
        self.device = torch.device(device)
        self.gan_run = Path(gan_run)
        check_gan_run(gan_run)
        dvbpr, items, checkpoint = load_dvbpr(dvbpr_run, self.device)
        self.dvbpr_config = checkpoint["config"]
        generator, discriminator, self.gan_checkpoint = load_gan(gan_run, self.device)
        self.dataset, _ = open_dataset(dataset or self.dvbpr_config["dataset"])
        self._check_matches(dvbpr, generator)
        resize_filter = self.dvbpr_config["resize_filter"]
        if items is None:
            dvbpr_store = ImageStore(image_cache(self.dataset, dvbpr.cnn.image_size, resize_filter), self.device)
            items = embed_items(dvbpr.cnn, dvbpr_store)
        self.item_embeddings = items.to(self.device)
        self.designer = Designer(dvbpr.cnn, dvbpr.theta, generator, discriminator)
        gan_filter = self.gan_checkpoint["config"]["resize_filter"]
        self.images = ImageStore(image_cache(self.dataset, generator.image_size, gan_filter), self.device)
        self.item_category = torch.as_tensor(self.dataset.item_category, device=self.device)

    def _check_matches(self, dvbpr, generator):
        if dvbpr.theta.shape[0] != self.dataset.usernum:
            raise DatasetError(f"the DVBPR run has {dvbpr.theta.shape[0]} users but {self.dataset.name} has "
                               f"{self.dataset.usernum}: give the --dataset it was trained on")
        if generator.num_categories != self.dataset.num_categories:
            raise DatasetError(f"the GAN has {generator.num_categories} categories but {self.dataset.name} has "
                               f"{self.dataset.num_categories}")

    def items_of(self, category):
        return (self.item_category == category).nonzero().squeeze(1)

    def category_classifier(self, fallback_dir):
        """The GAN run's category classifier (classifier.pt), else one trained now and saved in `fallback_dir`."""
        path = self.gan_run / "classifier.pt"
        if path.is_file():
            return load_classifier(load_checkpoint(path, map_location=self.device), self.device)
        return train_or_load_classifier(self.dataset, self.designer.image_size, Path(fallback_dir) / "classifier.pt",
                                        self.device, self.gan_checkpoint["config"]["resize_filter"], self.images)
