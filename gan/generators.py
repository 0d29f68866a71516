"""Conditional generators by name (`--generator`), each a ConditionalGenerator (gan/model.py) built from the GAN
settings and the number of categories. Adding one is a file with its subclass and one line in GENERATORS;
training, sampling, preference maximisation (eq. 9-12), Table IV and the eta sweep then take it unchanged."""
from common.errors import ConfigError
from gan.diffusion import Diffusion
from gan.model import LSGAN
from gan.sngan import SNGAN
from gan.vae import VAE
from gan.vaegan import VAEGAN

# settings off by default (false, 0 or None) that only some generators read, each listing them in its `reads`
OPTIONAL = ("ema", "class_seed", "aux_class_weight", "match_weight", "mode_seeking_weight", "half_chroma",
            "ex_post_prior", "ex_post_components", "kl_weight", "prior_fakes")

GENERATORS = {
    "lsgan": LSGAN,
    "sngan": SNGAN,
    "diffusion": Diffusion,
    "vae": VAE,
    "vaegan": VAEGAN,
}


def build_generator(cfg, num_categories, device="cpu"):
    """The generator cfg.generator names, its networks on `device`."""
    if cfg.generator not in GENERATORS:
        raise ConfigError(f"unknown generator {cfg.generator!r}; choose from {', '.join(GENERATORS)}")
    for option in OPTIONAL:   # checked here, not with the flags: the embedded demo picks the sngan after them
        if getattr(cfg, option) and option not in GENERATORS[cfg.generator].reads:
            readers = " or ".join(name for name, kind in GENERATORS.items() if option in kind.reads)
            raise ConfigError(f"--{option.replace('_', '-')} is read by --generator {readers}; --generator "
                              f"{cfg.generator} has no use for it")
    return GENERATORS[cfg.generator](cfg, num_categories, device)
