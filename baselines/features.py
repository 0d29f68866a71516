"""Pre-trained visual features f_i for VisRank, FM and VBPR: 4096-d CNN features of each item's image, as the
paper used (it took them from an ImageNet CNN). Two sources:

- by default, offline: DVBPR's CNN-F backbone trained briefly to classify the catalogue's categories (the
  category-classifier loop of common/classifier.py, with a linear head), then read at fc2 (4096-d, after its
  ReLU, no dropout): a network pre-trained on a task other than recommendation, as the paper's was.
- with --imagenet-weights: torchvision's AlexNet with ImageNet weights from a file the user supplies (e.g.
  pretrained/alexnet-owt-7be5be79.pth, fetched by download_pretrained_models.sh), read at fc7 (4096-d, after
  its ReLU), on ImageNet-normalised 224 px images. Nothing is downloaded here.

Both read the image cache of common/images.py with DVBPR's resize (nearest by default), so that a 224 px cache
(35 GB for AmazonFashion) is shared with DVBPR rather than built twice.

Features are computed once and cached (float16) under the run's features/ folder, keyed by dataset and settings.
"""
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
from tqdm import tqdm

from common.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from common.classifier import train_classifier
from common.device import autocast, memory_format
from common.errors import DatasetError
from common.images import image_store
from dvbpr.backbones import ImageNetInput, build_backbone, load_torchvision_weights

IMAGENET_SIZE = 224


@dataclass
class FeatureSettings:
    imagenet_weights: str | None = None   # AlexNet weights file; None: pre-train CNN-F on the categories
    image_size: int = 224                 # CNN-F input side
    resize_filter: str = "nearest"        # as DVBPR's images
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-4
    seed: int = 0

    def cache_key(self, dataset):
        settings = dataclasses.asdict(self)
        if self.imagenet_weights:
            weights = Path(self.imagenet_weights)
            settings = {"imagenet_weights": weights.name, "resize_filter": self.resize_filter,
                        "weights_bytes": weights.stat().st_size if weights.is_file() else None}
        return fingerprint({"dataset": dataset.name, "usernum": dataset.usernum, "itemnum": dataset.itemnum,
                            **settings})


@torch.no_grad()
def extract(network, images, itemnum, device, batch_size=256, desc="features"):
    """network(images(item_ids)) for every item, float32 [itemnum, D] on device, in eval mode."""
    network.eval()
    outputs = []
    for start in tqdm(range(0, itemnum, batch_size), desc=desc, unit="batch", leave=False):
        with autocast(device):
            outputs.append(network(images(torch.arange(start, min(start + batch_size, itemnum)))).float())
    return torch.cat(outputs)


def pretrain_cnnf(dataset, images, settings, device):
    """(CNN-F backbone, its linear category head, accuracies) after training both to predict the category."""
    if dataset.num_categories < 2 or (dataset.item_category < 0).all():
        raise DatasetError(f"{dataset.name} has no item categories to pre-train CNN-F on; "
                           "pass --imagenet-weights with an AlexNet weights file instead")
    torch.manual_seed(settings.seed)
    backbone = build_backbone("cnn-f", settings.image_size)
    head = nn.Linear(backbone.feature_width, dataset.num_categories)
    backbone.initialise()
    network = nn.Sequential(backbone, head).to(device, memory_format=memory_format(device))
    _, metrics = train_classifier(network, images, dataset.item_category, epochs=settings.epochs, min_steps=0,
                                  batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed,
                                  desc="pre-training CNN-F on categories")
    return backbone, head, metrics


def cnnf_features(dataset, settings, device):
    """(features, description) from CNN-F pre-trained on the categories."""
    images = image_store(dataset, settings.image_size, settings.resize_filter, device=device)
    backbone, _, metrics = pretrain_cnnf(dataset, images, settings, device)
    features = extract(backbone, images, dataset.itemnum, device, desc="CNN-F features")
    return features, (f"CNN-F fc2 ({backbone.feature_width}-d), pre-trained {settings.epochs} epochs at "
                      f"{settings.image_size} px to classify the {dataset.num_categories} item categories "
                      f"(held-out accuracy {metrics['held_out_accuracy']:.2f})")


def alexnet_fc7(weights_path):
    """AlexNet with the given ImageNet weights, cut after fc7's ReLU."""
    network = torchvision.models.alexnet()
    load_torchvision_weights(network, weights_path, "AlexNet")
    network.classifier = network.classifier[:6]   # drop fc8: dropout, fc6, ReLU, dropout, fc7, ReLU remain
    return nn.Sequential(ImageNetInput(), network)


def imagenet_features(dataset, settings, device):
    """(features, description) from AlexNet with the ImageNet weights of settings.imagenet_weights."""
    network = alexnet_fc7(settings.imagenet_weights).to(device, memory_format=memory_format(device))
    images = image_store(dataset, IMAGENET_SIZE, settings.resize_filter, device=device)
    features = extract(network, images, dataset.itemnum, device, desc="AlexNet features")
    return features, f"ImageNet AlexNet fc7 (4096-d), weights {Path(settings.imagenet_weights).name}"


def visual_features(dataset, settings, device, cache_dir):
    """(float32 [itemnum, 4096] features on device, description), computed or read from the cache."""
    path = Path(cache_dir) / f"{dataset.name}-features-{settings.cache_key(dataset)}.pt"
    if path.exists():
        cached = load_checkpoint(path, "features", map_location=device)
        return cached["features"].float(), cached["description"]
    features, description = (imagenet_features if settings.imagenet_weights else cnnf_features)(dataset, settings,
                                                                                                 device)
    save_checkpoint(path, {"stage": "features", "features": features.half().cpu(), "description": description,
                           "settings": dataclasses.asdict(settings), "dataset": dataset.name})
    return features, description
