"""Backbones of DVBPR's image network Phi, by name (`--backbone`): each maps images [B, 3, S, S] in [-1, 1] to
features [B, feature_width] and declares `input_size`, `feature_width`, `regularised_weights()` (what the
lambda_w decay covers), `initialise()` (called by DVBPR once its head exists) and `last_conv_map`: the module whose
output is its last convolutional map [B, C, h, w] (Grad-CAM's layer), or None where it has none (ViT's tokens).

Adding one is a builder function here and one line in BACKBONES. torchvision's networks are built from
torchvision's own constructors, with ImageNet weights read from a file (`--backbone-weights`, e.g. one fetched by
`bash download_pretrained_models.sh torchvision`; nothing is downloaded) or randomly initialised.
"""
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from common.errors import ConfigError
from dvbpr.cnnf import CNNF, CNNF_WIDTHS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetInput(nn.Module):
    """Images in [-1, 1] -> ImageNet-normalised, as torchvision's pretrained networks expect."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False)

    def forward(self, x):
        return ((x + 1) / 2 - self.mean) / self.std


def load_torchvision_weights(network, path, name):
    """A torchvision state dict from `path` into `network`, every tensor checked; ConfigError if it does not fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ConfigError(f"no {name} weights at {path} "
                          "(bash download_pretrained_models.sh torchvision fetches them)") from exc
    except Exception as exc:
        raise ConfigError(f"cannot read {path} as a PyTorch weights file: {exc}") from exc
    try:
        network.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path} is not a torchvision {name} state dict: {str(exc)[:500]}") from exc


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier with its classification layer replaced by the identity."""

    def __init__(self, network, feature_width, input_size):
        super().__init__()
        self.input_size, self.feature_width = input_size, feature_width
        self.normalise = ImageNetInput()
        self.network = network

    def initialise(self):
        """Nothing: torchvision's constructor initialised the weights, or they came from a file."""

    def regularised_weights(self):
        return [p for p in self.network.parameters() if p.ndim > 1]

    @property
    def last_conv_map(self):
        """A ResNet's layer4; None for ViT."""
        return getattr(self.network, "layer4", None)

    def forward(self, x):
        return self.network(self.normalise(x))


def torchvision_backbone(network, classifier_attribute, name, image_size, weights=None):
    if weights:
        load_torchvision_weights(network, weights, name)
    classifier = getattr(network, classifier_attribute)
    feature_width = next(m for m in classifier.modules() if isinstance(m, nn.Linear)).in_features
    setattr(network, classifier_attribute, nn.Identity())
    return TorchvisionBackbone(network, feature_width, image_size)


def cnn_f(image_size=224, weights=None, fc_width=4096, dropout=0.5, widths=None, init="xavier", **_):
    if weights:
        raise ConfigError("cnn-f is trained from scratch, as in the paper; --backbone-weights is for torchvision "
                          "backbones")
    return CNNF(image_size, fc_width, dropout, tuple(widths or CNNF_WIDTHS), init)


def resnet(depth):
    constructor = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth]
    return lambda image_size=224, weights=None, **_: torchvision_backbone(constructor(), "fc", f"ResNet-{depth}",
                                                                          image_size, weights)


def vit_b16(image_size=224, weights=None, **_):
    if image_size % 16:
        raise ConfigError(f"vit-b16 needs an image size divisible by 16, got {image_size}")
    return torchvision_backbone(torchvision.models.vit_b_16(image_size=image_size), "heads", "ViT-B/16", image_size,
                                weights)


BACKBONES = {
    "cnn-f": cnn_f,
    "resnet18": resnet(18),
    "resnet50": resnet(50),
    "vit-b16": vit_b16,
}


def build_backbone(name, image_size, weights=None, **settings):
    """The backbone `name` for `image_size` px inputs; `settings` are the CNN-F widths, fc width and dropout."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    if weights and not Path(weights).is_file():
        raise ConfigError(f"no backbone weights file at {weights}")
    return BACKBONES[name](image_size=image_size, weights=weights, **settings)
