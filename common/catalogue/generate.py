"""Generating the catalogue: its .npy in the original layout and its truth file beside it."""
import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from common.catalogue.config import (
    CatalogueConfig,
    check_catalogue,
    embedded_dataset_path,
    resolve_image_source,
    streams,
    truth_path,
)
from common.catalogue.render import render_images
from common.catalogue.taste import (
    ATTRIBUTE_NAMES,
    item_attributes,
    remove_combination,
    sample_interactions,
    sample_items,
    sample_taste,
    split_interactions,
    taste_weights,
)
from common.catalogue.truth import write_truth
from common.original_format import CATEGORY_NAMES, save_original_format


def ensure_embedded_catalogue(data_dir=Path("data/embedded"), cfg: CatalogueConfig | None = None) -> Path:
    """Path of the embedded catalogue, generating it first if it is not there yet."""
    path = embedded_dataset_path(data_dir, cfg)
    if not (path.exists() and truth_path(path).exists()):
        generate_catalogue(path, cfg or CatalogueConfig())
    return path


def generate_catalogue(path, cfg: CatalogueConfig) -> Path:
    """Write the catalogue to `path` (.npy, original layout) and its truth beside it; both appear atomically."""
    check_catalogue(cfg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = resolve_image_source(cfg)
    item_rng, image_rng, user_rng, interaction_rng = streams(cfg.seed)

    items = sample_items(item_rng, cfg.num_items)
    if cfg.missing_pattern is not None:
        remove_combination(items, cfg.missing_pattern, cfg.missing_categories)
    images, bulk, masks = render_images(image_rng, items, cfg, source)
    attributes = item_attributes(items, bulk)
    taste = sample_taste(user_rng, cfg.num_users) * taste_weights(cfg)
    log_popularity = item_rng.normal(0.0, cfg.popularity_sigma, cfg.num_items).astype(np.float32)
    chosen = sample_interactions(interaction_rng, taste @ attributes.T, log_popularity, cfg.mean_extra_interactions)

    user_train, user_validation, user_test = split_interactions(interaction_rng, chosen)
    records = [{"imgs": image, "c": [int(c == k) for k in range(len(CATEGORY_NAMES))]}
               for image, c in zip(images, items["category"])]
    temp_npy = path.with_name(f".{path.stem}.{os.getpid()}.partial.npy")
    try:
        save_original_format(temp_npy, user_train, user_validation, user_test, records, cfg.num_users, cfg.num_items)
        write_truth(truth_path(path), user_taste=taste, item_attributes=attributes,
                    item_log_popularity=log_popularity, item_category=items["category"],
                    item_colour=items["colour"], item_pattern=items["pattern"], item_garment_mask=masks,
                    user_top_attribute=taste.argmax(axis=1), attribute_names=np.array(ATTRIBUTE_NAMES),
                    config=np.array(json.dumps({**dataclasses.asdict(cfg), "image_source": source})))
        os.replace(temp_npy, path)
    finally:
        temp_npy.unlink(missing_ok=True)
    return path
