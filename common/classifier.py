"""Category classifiers trained on the catalogue's real images, and the one loop that trains them.

Three stages use it: the GAN measures condition consistency with the small CategoryClassifier (does G(z, c) look
like category c?), preference maximisation reuses its `predict_proba` as an in-domain stand-in for the Inception
network, and the baselines pre-train CNN-F on the categories for their visual features.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from common.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from common.device import fused_adam_kwargs
from common.errors import DatasetError
from common.images import known_filter

HELD_OUT_FRACTION = 0.1


def conv_block(in_channels, out_channels):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class CategoryClassifier(nn.Module):
    """Three conv-BN-ReLU-pool blocks, global average pooling and a linear layer over the categories."""

    def __init__(self, image_size, num_categories, width=16):
        super().__init__()
        self.image_size, self.num_categories = image_size, num_categories
        self.features = nn.Sequential(conv_block(3, width), conv_block(width, 2 * width),
                                      conv_block(2 * width, 4 * width))
        self.head = nn.Linear(4 * width, num_categories)

    def forward(self, images):
        """images [B, 3, S, S] in [-1, 1] -> logits [B, num_categories]."""
        return self.head(self.features(images).mean(dim=(2, 3)))

    @torch.no_grad()
    def predict_proba(self, images):
        """images [B, 3, H, W] in [-1, 1], resized to the classifier's size if needed -> softmax [B, C]."""
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", antialias=True)
        return F.softmax(self(images.float()).float(), dim=1)


def split_items(item_category, seed=0):
    """(train ids, held-out ids) among the items that have a category, by a fixed random permutation."""
    labelled = np.flatnonzero(item_category >= 0)
    if len(labelled) == 0:
        raise DatasetError("no item has a category; a category classifier needs labelled items")
    labelled = np.random.default_rng(seed).permutation(labelled)
    num_held_out = max(1, int(len(labelled) * HELD_OUT_FRACTION))
    return torch.as_tensor(labelled[num_held_out:]), torch.as_tensor(labelled[:num_held_out])


@torch.no_grad()
def accuracy(network, store, item_ids, labels, batch_size=256):
    network.eval()
    correct = 0
    for start in range(0, len(item_ids), batch_size):
        ids = item_ids[start:start + batch_size]
        correct += (network(store(ids)).argmax(1) == labels[ids]).sum().item()
    return correct / len(item_ids)


def train_classifier(network, store, item_category, epochs=3, min_steps=300, batch_size=64, lr=2e-3, seed=0,
                     desc="training the category classifier"):
    """Train `network` (images -> category logits) with cross-entropy on 90% of the labelled items, random
    horizontal flips, for `epochs` of them but at least `min_steps` batches; returns (network in eval mode,
    {"train_accuracy", "held_out_accuracy"}), the latter on the other 10%."""
    rng = torch.Generator().manual_seed(seed)
    device = store.device
    network = network.to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr, **fused_adam_kwargs(device))
    labels = torch.as_tensor(item_category, device=device)
    train_ids, held_out_ids = split_items(item_category, seed)
    steps = max(min_steps, epochs * len(train_ids) // batch_size)
    for _ in tqdm(range(steps), desc=desc, unit="batch", leave=False):
        network.train()
        ids = train_ids[torch.randint(len(train_ids), (batch_size,), generator=rng)]
        images = store(ids)
        flip = torch.rand(len(ids), generator=rng).to(device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
        loss = F.cross_entropy(network(images), labels[ids])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    metrics = {"train_accuracy": accuracy(network, store, train_ids, labels),
               "held_out_accuracy": accuracy(network, store, held_out_ids, labels)}
    return network.eval(), metrics


def classifier_key(dataset, image_size, resize_filter, seed=0):
    """What a cached classifier must match to be reused (seed 0's key names no seed, as before seeds were given)."""
    return fingerprint({"dataset": dataset.name, "itemnum": dataset.itemnum, "num_categories": dataset.num_categories,
                        "image_size": image_size, "resize_filter": resize_filter, **({"seed": seed} if seed else {})})


def classifier_checkpoint(classifier, dataset, resize_filter, metrics, seed=0):
    return {"stage": "classifier", "model": classifier.state_dict(),
            "config": {"image_size": classifier.image_size, "num_categories": classifier.num_categories,
                       "key": classifier_key(dataset, classifier.image_size, resize_filter, seed)},
            "metrics": metrics}


def train_or_load_classifier(dataset, store, path, seed=0, **training):
    """The CategoryClassifier of `dataset`'s images as `store` holds them (an `image_store`: its size and filter),
    on the store's device: loaded from `path` if it was trained there for the same data, images and seed, else
    trained (printing its held-out accuracy; `seed`: its initial weights, held-out split and batch order;
    `training`: other arguments of `train_classifier`) and saved there. Returned in eval mode without gradients."""
    path, resize_filter = Path(path), known_filter(store)
    if path.exists():
        checkpoint = load_checkpoint(path, "classifier", map_location=store.device)
        if checkpoint["config"].get("key") == classifier_key(dataset, store.size, resize_filter, seed):
            return load_classifier(checkpoint, store.device)
    with torch.random.fork_rng(devices=[]):  # seeded, and leaves the caller's random stream alone
        torch.manual_seed(seed)
        classifier = CategoryClassifier(store.size, dataset.num_categories)
    classifier, metrics = train_classifier(classifier, store, dataset.item_category, seed=seed, **training)
    print(f"category classifier: held-out accuracy {metrics['held_out_accuracy']:.3f} "
          f"(chance {1 / dataset.num_categories:.3f}), saved to {path}")
    save_checkpoint(path, classifier_checkpoint(classifier, dataset, resize_filter, metrics, seed))
    return classifier.requires_grad_(False)


def load_classifier(checkpoint, device="cpu"):
    """A CategoryClassifier from a checkpoint dict written by `train_or_load_classifier`, in eval mode."""
    config = checkpoint["config"]
    classifier = CategoryClassifier(config["image_size"], config["num_categories"])
    classifier.load_state_dict(checkpoint["model"])
    return classifier.to(device).eval().requires_grad_(False)
