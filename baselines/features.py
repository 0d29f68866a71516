"""Pre-trained visual features f_i for VisRank, FM and VBPR: 4096-d CNN features of each item's image, as the
paper used (it took them from an ImageNet CNN). Two sources:

- by default, offline: the CNN-F of dvbpr/model.py trained briefly to classify the catalogue's categories
  with cross-entropy, then read at fc2 (4096-d, after its ReLU, no dropout): a network pre-trained on a task
  other than recommendation, as the paper's was.
- with --imagenet-weights: torchvision's AlexNet with ImageNet weights from a file the user supplies (e.g.
  pretrained/alexnet-owt-7be5be79.pth, fetched by download_pretrained_models.sh), read at fc7 (4096-d, after
  its ReLU), on ImageNet-normalised 224 px images. Nothing is downloaded here.

Both read the image cache of common/images.py with DVBPR's resize (nearest by default), so that a 224 px cache
(35 GB for AmazonFashion) is shared with DVBPR rather than built twice.

Features are computed once and cached (float16) under the cache directory, keyed by dataset and settings.
"""
import dataclasses
import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from tqdm import tqdm

from common.checkpoint import load_checkpoint, save_checkpoint
from common.device import autocast, memory_format
from common.images import ImageStore, image_cache
from dvbpr.model import CNN

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224


class FeatureError(RuntimeError):
    """Visual features cannot be computed as asked (no categories to pre-train on, unusable weights file)."""


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
        key = json.dumps({"dataset": dataset.name, "usernum": dataset.usernum, "itemnum": dataset.itemnum,
                          **settings}, sort_keys=True)
        return hashlib.sha1(key.encode()).hexdigest()[:10]


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
    """CNN-F trained with cross-entropy to predict the item category; returns (network, last epoch's accuracy)."""
    labelled = torch.from_numpy(np.flatnonzero(dataset.item_category >= 0))
    if dataset.num_categories < 2 or len(labelled) == 0:
        raise FeatureError(f"{dataset.name} has no item categories to pre-train CNN-F on; "
                           "pass --imagenet-weights with an AlexNet weights file instead")
    labels = torch.as_tensor(dataset.item_category, device=device)
    torch.manual_seed(settings.seed)
    network = CNN(settings.image_size, k=dataset.num_categories).to(device, memory_format=memory_format(device))
    optimizer = torch.optim.Adam(network.parameters(), lr=settings.lr)
    network.train()
    accuracy = 0.0
    for epoch in tqdm(range(1, settings.epochs + 1), desc="pre-training CNN-F on categories", unit="epoch"):
        correct, total_loss = 0, 0.0
        for batch in labelled[torch.randperm(len(labelled))].split(settings.batch_size):
            with autocast(device):
                logits = network(images(batch)).float()
            targets = labels[batch.to(device)]
            loss = F.cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct += (logits.argmax(1) == targets).sum().item()
            total_loss += loss.item() * len(batch)
        accuracy = correct / len(labelled)
        tqdm.write(f"CNN-F pre-training epoch {epoch}: cross-entropy {total_loss / len(labelled):.4f}, "
                   f"training accuracy {accuracy:.3f}")
    return network, accuracy


def cnnf_features(dataset, settings, device):
    """(features, description) from CNN-F pre-trained on the categories."""
    cache = image_cache(dataset, settings.image_size, settings.resize_filter)
    images = ImageStore(cache, device)
    network, accuracy = pretrain_cnnf(dataset, images, settings, device)
    network.fc3 = nn.Identity()     # the forward pass now ends at fc2's ReLU (and dropout, off in eval mode)
    features = extract(network, images, dataset.itemnum, device, desc="CNN-F features")
    return features, (f"CNN-F fc2 (4096-d), pre-trained {settings.epochs} epochs at {settings.image_size} px to "
                      f"classify the {dataset.num_categories} item categories (training accuracy {accuracy:.2f})")


class ImageNetInput(nn.Module):
    """Images in [-1, 1] -> ImageNet-normalised."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None])
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None])

    def forward(self, x):
        return ((x + 1) / 2 - self.mean) / self.std


def alexnet_fc7(weights_path):
    """AlexNet with the given ImageNet weights, cut after fc7's ReLU."""
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise FeatureError(f"no AlexNet weights at {weights_path} "
                           "(bash download_pretrained_models.sh torchvision fetches them)") from exc
    except (RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise FeatureError(f"cannot read {weights_path} as a PyTorch weights file: {exc}") from exc
    with torch.device("meta"):        # no random initialisation: every tensor comes from the file
        network = torchvision.models.alexnet()
    try:
        network.load_state_dict(state, assign=True)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise FeatureError(f"{weights_path} is not a torchvision AlexNet state dict: {exc}") from exc
    network.classifier = network.classifier[:6]   # drop fc8: dropout, fc6, ReLU, dropout, fc7, ReLU remain
    return nn.Sequential(ImageNetInput(), network)


def imagenet_features(dataset, settings, device):
    """(features, description) from AlexNet with the ImageNet weights of settings.imagenet_weights."""
    network = alexnet_fc7(settings.imagenet_weights).to(device, memory_format=memory_format(device))
    images = ImageStore(image_cache(dataset, IMAGENET_SIZE, settings.resize_filter), device)
    features = extract(network, images, dataset.itemnum, device, desc="AlexNet features")
    return features, f"ImageNet AlexNet fc7 (4096-d), weights {Path(settings.imagenet_weights).name}"


def visual_features(dataset, settings, device, cache_dir):
    """(float32 [itemnum, 4096] features on device, description), computed or read from the cache."""
    path = Path(cache_dir) / f"{dataset.name}-features-{settings.cache_key(dataset)}.pt"
    if path.exists():
        cached = load_checkpoint(path, map_location=device)
        return cached["features"].float(), cached["description"]
    features, description = (imagenet_features if settings.imagenet_weights else cnnf_features)(dataset, settings,
                                                                                                 device)
    save_checkpoint(path, {"features": features.half().cpu(), "description": description,
                           "settings": dataclasses.asdict(settings), "dataset": dataset.name})
    return features, description
