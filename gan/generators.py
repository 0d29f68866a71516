"""Conditional generators by name (`--generator`), each a ConditionalGenerator (gan/model.py) built from the GAN
settings and the number of categories. Adding one is a file with its subclass and one line in GENERATORS;
training, sampling, preference maximisation (eq. 9-12), Table IV and the eta sweep then take it unchanged."""
from common.errors import ConfigError
from gan.diffusion import Diffusion
from gan.model import LSGAN
from gan.sngan import SNGAN

GENERATORS = {
    "lsgan": LSGAN,
    "sngan": SNGAN,
    "diffusion": Diffusion,
}


def build_generator(cfg, num_categories, device="cpu"):
    """The generator cfg.generator names, its networks on `device`."""
    if cfg.generator not in GENERATORS:
        raise ConfigError(f"unknown generator {cfg.generator!r}; choose from {', '.join(GENERATORS)}")
    if cfg.ema and not GENERATORS[cfg.generator].takes_ema:   # not with the flags: the embedded demo picks the sngan
        averaged = " or ".join(name for name, kind in GENERATORS.items() if kind.takes_ema)
        raise ConfigError(f"--ema averages the generator of {averaged}; --generator {cfg.generator} keeps none")
    return GENERATORS[cfg.generator](cfg, num_categories, device)
