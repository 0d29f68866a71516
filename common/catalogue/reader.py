"""The attribute reader: a small network trained on a catalogue's real items to read, from an image alone, the
attributes its hidden taste scores (common/catalogue/taste.py): category, colour family, pattern and bulk. It turns
any image, a generated design included, into the attribute vector that taste_u . attributes scores, so the hidden
taste can judge designs that have no truth of their own.

What it reads is an expectation: the softmax of each one-hot group and the regressed bulk z-score, so that
taste_u . read(image) is the user's expected true preference under the reader's belief.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from common.catalogue.taste import COLOUR_FAMILIES, PATTERNS
from common.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from common.classifier import conv_block, split_items
from common.errors import DatasetError
from common.images import cache_folder, known_filter
from common.original_format import CATEGORY_NAMES

GROUPS = {"category": len(CATEGORY_NAMES), "colour": len(COLOUR_FAMILIES), "pattern": len(PATTERNS)}
# where each group lies in a read attribute vector (taste.item_attributes' layout)
SLICES = dict(zip(GROUPS, (slice(start - size, start) for start, size in
                           zip(np.cumsum(list(GROUPS.values())), GROUPS.values()))))


class AttributeReader(nn.Module):
    """CategoryClassifier's three conv blocks, one linear head per one-hot group and one for bulk."""

    def __init__(self, image_size, width=16):
        super().__init__()
        self.image_size = image_size
        self.features = nn.Sequential(conv_block(3, width), conv_block(width, 2 * width),
                                      conv_block(2 * width, 4 * width))
        self.heads = nn.ModuleDict({group: nn.Linear(4 * width, size) for group, size in GROUPS.items()})
        self.bulk = nn.Linear(4 * width, 1)

    def forward(self, images):
        """images [B, 3, S, S] in [-1, 1] -> ({group: logits [B, size]}, bulk z-score [B])."""
        pooled = self.features(images).mean(dim=(2, 3))
        return {group: head(pooled) for group, head in self.heads.items()}, self.bulk(pooled).squeeze(1)

    @torch.no_grad()
    def read(self, images):
        """The attribute vector of taste.item_attributes' layout, [B, 19]: the groups' softmax, then bulk."""
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", antialias=True)
        logits, bulk = self(images.float())
        return torch.cat([F.softmax(logits[group], dim=1) for group in GROUPS] + [bulk[:, None]], dim=1)


def truth_targets(truth):
    """{group: int64 [itemnum]} and the bulk z-scores [itemnum], from a CatalogueTruth."""
    labels = {"category": truth.item_category, "colour": truth.item_colour, "pattern": truth.item_pattern}
    return ({group: torch.as_tensor(values, dtype=torch.long) for group, values in labels.items()},
            torch.as_tensor(truth.item_attributes[:, -1], dtype=torch.float32))


def reader_loss(reader, images, labels, bulk):
    logits, predicted_bulk = reader(images)
    return sum(F.cross_entropy(logits[group], labels[group]) for group in GROUPS) + F.mse_loss(predicted_bulk, bulk)


@torch.no_grad()
def evaluate(reader, store, item_ids, labels, bulk, truth):
    """Held-out accuracy per group, bulk R^2, and the correlation over (user, item) pairs of taste_u . read(i) with
    the true score taste_u . attributes_i."""
    reader.eval()
    read = torch.cat([reader.read(store(ids)).cpu() for ids in item_ids.split(256)])
    metrics = {f"{group}_accuracy": (read[:, SLICES[group]].argmax(1) == labels[group][item_ids]).float().mean().item()
               for group in GROUPS}
    residual = ((read[:, -1] - bulk[item_ids]) ** 2).sum()
    metrics["bulk_r2"] = (1 - residual / ((bulk[item_ids] - bulk[item_ids].mean()) ** 2).sum()).item()
    taste = torch.as_tensor(truth.user_taste)
    exact = taste @ torch.as_tensor(truth.item_attributes[item_ids.numpy()]).T
    metrics["taste_correlation"] = float(np.corrcoef((taste @ read.T).flatten(), exact.flatten())[0, 1])
    return metrics


def train_reader(store, truth, steps=None, epochs=4, min_steps=400, batch_size=64, lr=2e-3, seed=0):
    """An AttributeReader trained on 90% of the items (random horizontal flips, which keep every attribute);
    returns (reader in eval mode, metrics on the other 10%: per-group accuracy, bulk R^2, taste correlation)."""
    labels, bulk = truth_targets(truth)
    train_ids, held_out_ids = split_items(truth.item_category, seed)
    rng = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reader = AttributeReader(store.size).to(store.device)
    optimizer = torch.optim.Adam(reader.parameters(), lr=lr)
    device_labels = {group: values.to(store.device) for group, values in labels.items()}
    device_bulk = bulk.to(store.device)
    for _ in tqdm(range(steps or max(min_steps, epochs * len(train_ids) // batch_size)),
                  desc="training the attribute reader", unit="batch", leave=False):
        reader.train()
        ids = train_ids[torch.randint(len(train_ids), (batch_size,), generator=rng)]
        images = store(ids)
        flip = (torch.rand(len(ids), generator=rng) < 0.5).to(store.device)
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
        device_ids = ids.to(store.device)
        loss = reader_loss(reader, images, {g: v[device_ids] for g, v in device_labels.items()},
                           device_bulk[device_ids])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return reader.eval().requires_grad_(False), evaluate(reader, store, held_out_ids, labels, bulk, truth)


def reader_key(dataset, image_size, resize_filter):
    return fingerprint({"dataset": dataset.name, "itemnum": dataset.itemnum, "images": dataset.images_digest,
                        "image_size": image_size, "resize_filter": resize_filter, "reader": 1})


def reader_path(dataset, image_size, resize_filter):
    """The reader of a catalogue is trained once and kept beside its image caches: it depends on the items and
    their truth alone, not on any run."""
    return cache_folder(dataset) / f"{dataset.name}-reader-{image_size}px-{resize_filter}.pt"


def check_truth(truth, dataset):
    if len(truth.item_category) != dataset.itemnum or len(truth.user_taste) != dataset.usernum:
        raise DatasetError(f"the truth beside {dataset.path} describes {len(truth.user_taste)} users and "
                           f"{len(truth.item_category)} items, the dataset {dataset.usernum} and {dataset.itemnum}")
    if not np.array_equal(truth.item_category, dataset.item_category):
        raise DatasetError(f"the truth beside {dataset.path} gives other categories than the dataset")


def train_or_load_reader(dataset, truth, store):
    """(reader, held-out metrics): loaded from reader_path when it was trained there on the same data at the
    store's size and filter, else trained now and saved there."""
    check_truth(truth, dataset)
    resize_filter = known_filter(store)
    path, key = reader_path(dataset, store.size, resize_filter), reader_key(dataset, store.size, resize_filter)
    if path.is_file():
        checkpoint = load_checkpoint(path, "attribute-reader", map_location=store.device)
        if checkpoint["config"].get("key") == key:
            reader = AttributeReader(checkpoint["config"]["image_size"])
            reader.load_state_dict(checkpoint["model"])
            return reader.to(store.device).eval().requires_grad_(False), checkpoint["metrics"]
    reader, metrics = train_reader(store, truth)
    save_reader(path, reader, key, metrics)
    return reader, metrics


def save_reader(path, reader, key, metrics):
    save_checkpoint(path, {"stage": "attribute-reader", "model": reader.state_dict(),
                           "config": {"image_size": reader.image_size, "key": key}, "metrics": metrics})
