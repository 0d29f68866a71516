"""The hidden truth of a catalogue, saved beside it as <name>.truth.npz: the taste and attributes, each item's
garment mask as the renderer drew it, and each user's top attribute."""
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.catalogue.config import CatalogueConfig, streams, truth_path
from common.catalogue.render import render_images
from common.catalogue.taste import item_attributes, sample_items
from common.errors import DatasetError


@dataclass
class CatalogueTruth:
    """The hidden generative truth: score(u, i) = user_taste[u] . item_attributes[i]."""
    user_taste: np.ndarray          # [usernum, len(ATTRIBUTE_NAMES)] float32
    item_attributes: np.ndarray     # [itemnum, len(ATTRIBUTE_NAMES)] float32: one-hots and the bulk z-score
    item_log_popularity: np.ndarray  # [itemnum] float32
    item_category: np.ndarray       # [itemnum] int64
    item_colour: np.ndarray         # [itemnum] int64, index into COLOUR_FAMILIES
    item_pattern: np.ndarray        # [itemnum] int64, index into PATTERNS
    item_garment_mask: np.ndarray   # [itemnum, image_size, image_size] bool: garment alpha >= 0.5
    user_top_attribute: np.ndarray  # [usernum] int64: the attribute whose presence raises the taste score most
    attribute_names: tuple
    config: dict


def write_truth(path, **fields):
    temp = path.with_name(f".{path.stem}.{os.getpid()}.partial.npz")
    try:
        np.savez_compressed(temp, **fields)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _add_missing_truth(path, fields):
    """The garment masks and top attributes of a truth file written before it kept them: the renderer runs again
    on the saved settings (same seed, same streams, so the same images) and its bulk must match the saved one.
    The completed file replaces the old one where it can be written."""
    cfg = CatalogueConfig(**json.loads(fields["config"].item()))
    item_rng, image_rng, _, _ = streams(cfg.seed)
    items = sample_items(item_rng, cfg.num_items)
    try:
        _, bulk, masks = render_images(image_rng, items, cfg, cfg.image_source)
    except FileNotFoundError as exc:
        raise DatasetError(f"{path} has no garment masks and they cannot be redrawn ({exc}): generate the "
                           "catalogue again") from exc
    if not np.allclose(item_attributes(items, bulk), fields["item_attributes"], atol=1e-4):
        raise DatasetError(f"{path} has no garment masks and redrawing them gave other images: generate the "
                           "catalogue again")
    fields.update(item_garment_mask=masks, user_top_attribute=fields["user_taste"].argmax(axis=1))
    try:
        write_truth(path, **fields)
    except OSError:
        pass  # a read-only copy: the masks are used from memory
    return fields


def load_truth(path) -> CatalogueTruth:
    """The hidden truth of a catalogue, from its .npy path or its .truth.npz path."""
    path = Path(path)
    if not path.name.endswith(".truth.npz"):
        path = truth_path(path)
    with np.load(path) as f:
        fields = {name: f[name] for name in f.files}
    if "item_garment_mask" not in fields:
        fields = _add_missing_truth(path, fields)
    return CatalogueTruth(
        **{name: fields[name] for name in ("user_taste", "item_attributes", "item_log_popularity", "item_category",
                                           "item_colour", "item_pattern", "item_garment_mask", "user_top_attribute")},
        attribute_names=tuple(fields["attribute_names"].tolist()), config=json.loads(fields["config"].item()))


def true_scores(truth: CatalogueTruth) -> np.ndarray:
    """[usernum, itemnum] float32: the hidden taste score of every user for every item."""
    return truth.user_taste @ truth.item_attributes.T
