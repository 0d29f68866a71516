"""Generate an embedded catalogue with settings of your choosing (seed, image source, taste mix, a missing
combination) and print its path, which every stage's --dataset takes:

    python tools/catalogue.py --seed 4 --image-source procedural --data-dir data/newitems
    python tools/catalogue.py --seed 5 --pattern-weight 2.5 --colour-weight 0.2 --missing-pattern stripes \
        --missing-categories 4 5

A catalogue already generated with the same settings is read back, not made again (its name carries a hash of
them). Sizes are bounded up front: at most MAX_ITEMS items, MAX_IMAGE_SIZE px, and MAX_SCORES user-item scores
(the hidden taste scores every item for every user at once).
"""
from dataclasses import dataclass, field, fields
from pathlib import Path

from common.catalogue.config import CatalogueConfig, check_catalogue
from common.catalogue.generate import ensure_embedded_catalogue
from common.cli import MAX_IMAGE_SIZE, parse_config, require_sizes, stage_errors
from common.errors import ConfigError

MAX_ITEMS = 200_000
MAX_SCORES = 200_000_000   # users x items, 0.8 GB of float32 taste scores


@dataclass
class CatalogueCommand(CatalogueConfig):
    data_dir: str = field(default="data/embedded", metadata={"help": "where the catalogue is generated"})


def check_budget(cfg):
    """ConfigError naming the first flag above this command's budget (the generator's own rules are
    common/catalogue/config.py check_catalogue's)."""
    require_sizes(cfg, {"num_users": MAX_SCORES, "num_items": MAX_ITEMS, "image_size": MAX_IMAGE_SIZE})
    if cfg.num_users * cfg.num_items > MAX_SCORES:
        raise ConfigError(f"--num-users x --num-items may be at most {MAX_SCORES:,}, got "
                          f"{cfg.num_users * cfg.num_items:,}")


def make_catalogue(cfg):
    """The catalogue's path, generating it first unless it is there."""
    check_budget(cfg)
    settings = CatalogueConfig(**{f.name: getattr(cfg, f.name) for f in fields(CatalogueConfig)})
    check_catalogue(settings)
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
