"""A small CNN that tells the catalogue's categories apart, trained once on real images and cached.

The GAN uses it to measure condition consistency (does G(z, c) look like category c?); the preference
maximisation stage reuses `predict_proba` as an in-domain stand-in for the Inception network.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from common.checkpoint import load_checkpoint, save_checkpoint
from common.device import fused_adam_kwargs
from common.images import ImageStore, image_cache

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


def condition_consistency(probs, conditioned_on, num_categories):
    """The fraction of images whose most likely category is the one they were generated for.

    Returns {"per_category": [fraction for c in 0..C-1] (None where no image was conditioned on c), "overall": float}.
    """
    hits = (probs.argmax(dim=1) == conditioned_on).float()
    per_category = [hits[conditioned_on == c].mean().item() if (conditioned_on == c).any() else None
                    for c in range(num_categories)]
    return {"per_category": per_category, "overall": hits.mean().item()}


def split_items(item_category, seed=0):
    """(train ids, held-out ids) among the items that have a category, by a fixed random permutation."""
    labelled = np.flatnonzero(item_category >= 0)
    if len(labelled) == 0:
        raise ValueError("no item has a category; the category classifier needs labelled items")
    labelled = np.random.default_rng(seed).permutation(labelled)
    num_held_out = max(1, int(len(labelled) * HELD_OUT_FRACTION))
    return torch.as_tensor(labelled[num_held_out:]), torch.as_tensor(labelled[:num_held_out])


@torch.no_grad()
def accuracy(classifier, store, item_ids, labels, batch_size=256):
    classifier.eval()
    correct = 0
    for start in range(0, len(item_ids), batch_size):
        ids = item_ids[start:start + batch_size]
        correct += (classifier(store(ids)).argmax(1) == labels[ids]).sum().item()
    return correct / len(item_ids)


def train_classifier(store, item_category, num_categories, epochs=3, min_steps=300, batch_size=64, lr=2e-3, seed=0):
    """Train on 90% of the labelled items (random horizontal flips) for `epochs` of them but at least `min_steps`
    batches; report the accuracy on the other 10%."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded, and leaves the caller's random stream alone
        torch.manual_seed(seed)
        classifier = CategoryClassifier(store.size, num_categories)
    device = store.device
    classifier = classifier.to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr, **fused_adam_kwargs(device))
    labels = torch.as_tensor(item_category, device=device)
    train_ids, held_out_ids = split_items(item_category, seed)
    steps = max(min_steps, epochs * len(train_ids) // batch_size)
    for _ in tqdm(range(steps), desc="training the category classifier", unit="batch", leave=False):
        classifier.train()
        ids = train_ids[torch.randint(len(train_ids), (batch_size,), generator=generator)]
        images = store(ids)
        flip = torch.rand(len(ids), generator=generator).to(device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
        loss = F.cross_entropy(classifier(images), labels[ids])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    metrics = {"train_accuracy": accuracy(classifier, store, train_ids, labels),
               "held_out_accuracy": accuracy(classifier, store, held_out_ids, labels)}
    return classifier.eval(), metrics


def classifier_identity(dataset, image_size, resize_filter):
    """What a cached classifier must match to be reused."""
    return {"dataset": dataset.name, "itemnum": dataset.itemnum, "num_categories": dataset.num_categories,
            "image_size": image_size, "resize_filter": resize_filter}


def train_or_load_classifier(dataset, image_size, path, device="cpu", resize_filter="nearest", store=None,
                             **training):
    """The category classifier for `dataset` at `image_size`: loaded from `path` if it was trained there for the
    same data, else trained (printing its held-out accuracy; `training`: arguments of `train_classifier`) and saved
    there. `store`: an ImageStore over the same images to reuse. Returned in eval mode without gradients."""
    device, path = torch.device(device), Path(path)
    identity = classifier_identity(dataset, image_size, resize_filter)
    if path.exists():
        checkpoint = load_checkpoint(path, map_location=device)
        if checkpoint.get("config") == identity:
            return load_classifier(checkpoint, device)
    store = store or ImageStore(image_cache(dataset, image_size, resize_filter), device)
    classifier, metrics = train_classifier(store, dataset.item_category, dataset.num_categories, **training)
    print(f"category classifier: held-out accuracy {metrics['held_out_accuracy']:.3f} "
          f"(chance {1 / dataset.num_categories:.3f}), saved to {path}")
    save_checkpoint(path, {"stage": "classifier", "model": classifier.state_dict(), "config": identity,
                           "metrics": metrics})
    return classifier.requires_grad_(False)


def load_classifier(checkpoint, device="cpu"):
    """A classifier from a checkpoint dict written by `train_or_load_classifier`, in eval mode."""
    config = checkpoint["config"]
    classifier = CategoryClassifier(config["image_size"], config["num_categories"])
    classifier.load_state_dict(checkpoint["model"])
    return classifier.to(device).eval().requires_grad_(False)
