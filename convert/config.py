"""The converters' settings: one field per flag, shared by every source (each reads the ones it needs)."""
import os
from dataclasses import dataclass, field

from common.cli import require_positive
from common.errors import ConfigError
from convert.amazon2023 import IMAGE_FIELDS
from convert.sources import SOURCES


@dataclass
class ConvertConfig:
    source: str = field(default="", metadata={"positional": True, "choices": list(SOURCES),
                                              "help": "what to convert: " + ", ".join(SOURCES)})
    out: str | None = field(default=None, metadata={"help": "the dataset folder to write (required)"})
    input: str | None = field(default=None, metadata={"help": "hm: the competition's folder (transactions_train.csv, "
                                                              "articles.csv, images/)"})
    interactions: str | None = field(default=None, metadata={"help": "generic: CSV with header user,item[,timestamp]"})
    items: str | None = field(default=None, metadata={"help": "generic: CSV with header item,category,image"})
    reviews: str | None = field(default=None, metadata={"help": "amazon2018/amazon2023: the reviews, JSON lines "
                                                                "(.gz too)"})
    meta: str | None = field(default=None, metadata={"help": "amazon2018/amazon2023: the item metadata, JSON lines "
                                                             "(.gz too)"})
    images: str | None = field(default=None, metadata={"help": "generic: the folder the items CSV's image paths are "
                                                               "relative to; amazon: the folder images are fetched "
                                                               "into"})
    min_interactions: int = field(default=5, metadata={"help": "users with fewer distinct items are left out (the "
                                                               "paper: 5); at least 3"})
    min_item_interactions: int = field(default=1, metadata={"help": "items with fewer users are left out, users and "
                                                                    "items alternately until both hold (k-core)"})
    holdout: str = field(default="last", metadata={"help": "last: the last interaction is the test item, the one "
                                                           "before it the validation item; random: two at random "
                                                           "(the paper, Sec. IV-A)", "choices": ["last", "random"]})
    seed: int = field(default=0, metadata={"help": "seed of --holdout random"})
    user_fraction: float = field(default=1.0, metadata={"help": "keep this fraction of users (chosen by a hash of "
                                                                "their id), to fit memory or try things quickly"})
    category_columns: list[str] = field(default_factory=lambda: ["index_group_name", "product_group_name"],
                                        metadata={"help": "hm: the articles.csv columns whose values, joined, make "
                                                          "an item's category"})
    category_depth: int = field(default=3, metadata={"help": "amazon: the first N levels of an item's category path "
                                                             "make its category"})
    image_field: str = field(default="large", metadata={"help": "amazon2023: which URL of the MAIN image to fetch "
                                                                "(the others if it is absent)",
                                                        "choices": list(IMAGE_FIELDS)})
    fetch: bool = field(default=True, metadata={"help": "amazon: download the images not yet in --images"})
    fetch_rate: float = field(default=5.0, metadata={"help": "amazon: at most this many requests a second"})
    fetch_workers: int = field(default=4, metadata={"help": "amazon: downloads at once"})
    fetch_retries: int = field(default=3, metadata={"help": "amazon: retries of a timeout, 429 or 5xx, with "
                                                            "exponential back-off"})
    max_image_bytes: int = field(default=10_000_000, metadata={"help": "an image file or download larger than this "
                                                                       "counts as missing"})
    image_side: int = field(default=0, metadata={"help": "re-encode images whose shorter side is longer than this "
                                                         "as JPEG with that side (0: keep the bytes as they are)"})
    workers: int = field(default_factory=lambda: os.cpu_count() or 1,
                         metadata={"help": "processes re-encoding images (--image-side)"})


def check_config(cfg):
    if not cfg.out:
        raise ConfigError("--out FOLDER is required: the dataset folder to write")
    require_positive(cfg, "min_item_interactions", "category_depth", "fetch_workers", "max_image_bytes", "workers")
    if cfg.min_interactions < 3:
        raise ConfigError(f"--min-interactions must be at least 3 (a train, a validation and a test item), got "
                          f"{cfg.min_interactions}")
    if not 0 < cfg.user_fraction <= 1:
        raise ConfigError(f"--user-fraction must be in (0, 1], got {cfg.user_fraction}")
    if cfg.fetch_rate <= 0 or cfg.fetch_retries < 0 or cfg.image_side < 0:
        raise ConfigError("--fetch-rate must be positive, --fetch-retries and --image-side not negative")
