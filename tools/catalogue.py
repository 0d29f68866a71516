"""Generate an embedded catalogue with settings of your choosing (seed, image source, taste mix, a missing
combination) and print its path, which every stage's --dataset takes:

    python tools/catalogue.py --seed 4 --image-source procedural --data-dir data/newitems
    python tools/catalogue.py --seed 5 --pattern-weight 2.5 --colour-weight 0.2 --missing-pattern stripes \
        --missing-categories 4 5

A catalogue already generated with the same settings is read back, not made again (its name carries a hash of
them). Sizes are bounded up front: at most MAX_ITEMS items, MAX_IMAGE_SIZE px, and MAX_SCORES user-item scores
(the hidden taste scores every item for every user at once).
"""
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from common.catalogue.config import CatalogueConfig
from common.catalogue.generate import ensure_embedded_catalogue
from common.catalogue.taste import MIN_INTERACTIONS, PATTERNS
from common.cli import MAX_IMAGE_SIZE, parse_config, require_sizes, stage_errors
from common.errors import ConfigError
from common.original_format import CATEGORY_NAMES

MAX_ITEMS = 200_000
MAX_SCORES = 200_000_000   # users x items, 0.8 GB of float32 taste scores


@dataclass
class CatalogueCommand(CatalogueConfig):
    data_dir: str = field(default="data/embedded", metadata={"help": "where the catalogue is generated"})


def check_catalogue(cfg):
    """ConfigError naming the first flag out of its range."""
    require_sizes(cfg, {"num_users": MAX_SCORES, "num_items": MAX_ITEMS, "image_size": MAX_IMAGE_SIZE,
                        "jpeg_quality": 100})
    for flag, value, least in (("--num-items", cfg.num_items, 4 * MIN_INTERACTIONS),
                               ("--image-size", cfg.image_size, 16)):
        if value < least:
            raise ConfigError(f"{flag} must be at least {least}, got {value}")
    if cfg.num_users * cfg.num_items > MAX_SCORES:
        raise ConfigError(f"--num-users x --num-items may be at most {MAX_SCORES:,}, got "
                          f"{cfg.num_users * cfg.num_items:,}")
    for name in ("mean_extra_interactions", "popularity_sigma", "category_weight", "colour_weight",
                 "pattern_weight", "bulk_weight"):
        if not math.isfinite(getattr(cfg, name)) or getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(cfg, name)}")
    if cfg.missing_pattern is not None and cfg.missing_pattern not in PATTERNS:
        raise ConfigError(f"--missing-pattern must be one of {', '.join(PATTERNS)}, got {cfg.missing_pattern!r}")
    if bool(cfg.missing_categories) != (cfg.missing_pattern is not None):
        raise ConfigError("--missing-pattern and --missing-categories come together")
    if not set(cfg.missing_categories) <= set(range(len(CATEGORY_NAMES))):
        raise ConfigError(f"--missing-categories must be among 0-{len(CATEGORY_NAMES) - 1}, got "
                          f"{cfg.missing_categories}")


def make_catalogue(cfg):
    """The catalogue's path, generating it first unless it is there."""
    check_catalogue(cfg)
    settings = CatalogueConfig(**{f.name: getattr(cfg, f.name) for f in fields(CatalogueConfig)})
    try:
        return ensure_embedded_catalogue(Path(cfg.data_dir), settings)
    except FileNotFoundError as error:   # --image-source fashion-mnist where its files are not found
        raise ConfigError(str(error)) from error


def main(argv=None):
    with stage_errors("catalogue"):
        cfg, _ = parse_config(CatalogueCommand, argv, description=__doc__.split("\n")[0])
        path = make_catalogue(cfg)
        print(path)
        return path


if __name__ == "__main__":
    main()
