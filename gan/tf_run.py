"""The original's pretrained GAN (a TensorFlow checkpoint, read without TensorFlow) written as a run that
gan.run.open_gan_run opens, so that sampling and preference maximisation take it unchanged:

    python gan/main.py --preset original --from-tf DCGAN.model-311502 --out runs/gan_original

z_dim, the widths and the number of categories are the checkpoint's; its layers are those of a 64x64 GAN, so the
image size (the original preset's 64) must be that. The optimizers start afresh (the original saved no Adam
state), the step is the number that ends the prefix (else None) and the epoch is None: an epoch's length depends
on a dataset that the conversion does not read.
"""
import re
from pathlib import Path

from common.cli import apply_settings
from common.errors import ConfigError
from common.runlog import run_dir
from common.seeding import seed_everything
from common.tf_checkpoint import (
    TFCheckpoint,
    TFCheckpointError,
    check_shapes,
    checkpoint_prefix,
    prefix_step,
    shapes_of,
)
from gan.config import check_config
from gan.model import num_stages
from gan.sample import write_category_grids
from gan.tf_import import (
    D_SCOPE,
    G_SCOPE,
    describe_tf_model,
    expected_shapes,
    gan_config_from_tf,
    gan_state_from_tf,
    tf_names,
)
from gan.train import GANTraining


def take_tf_settings(cfg, typed):
    """The checkpoint's own settings in `cfg`: its absolute prefix, z_dim and widths, except those set by the
    `typed` flags (check_fits refuses one that differs)."""
    cfg.from_tf = str(checkpoint_prefix(cfg.from_tf).resolve())
    found = gan_config_from_tf(TFCheckpoint(cfg.from_tf))
    apply_settings(cfg, {"z_dim": found["z_dim"], "g_width": found["g_width"], "d_width": found["d_width"]}, typed)


def layer_counts(image_size):
    """(G's transposed convs, D's convs) at `image_size`: G's 4x4 seed and 16x16 body, then a stage per doubling."""
    return 5 + num_stages(image_size, 16), num_stages(image_size, 4)


def check_fits(tensors, cfg):
    """Refuse, naming what differs, a checkpoint whose layers or shapes do not fit the settings."""
    found = gan_config_from_tf(tensors)
    shapes = shapes_of(tensors, tf_names())
    check_shapes(shapes, expected_shapes(found), describe_tf_model(found))  # one consistent GAN at all
    held = (sum(bool(re.fullmatch(rf"{G_SCOPE}g_h\d+/w", name)) for name in shapes),
            sum(bool(re.fullmatch(rf"{D_SCOPE}d_h\d+_conv/w", name)) for name in shapes))
    if layer_counts(cfg.image_size) != held:
        fits = next((2 ** n for n in range(4, 13) if layer_counts(2 ** n) == held), None)
        raise ConfigError(f"the checkpoint's G has {held[0]} transposed convs and its D {held[1]} convs, the layers "
                          f"of a {fits} px GAN, not of a {cfg.image_size} px one: give --image-size {fits}")
    wanted = dict(found, z_dim=cfg.z_dim, g_width=cfg.g_width, d_width=cfg.d_width)
    try:
        check_shapes(shapes, expected_shapes(wanted), describe_tf_model(wanted))
    except TFCheckpointError as error:
        raise ConfigError(f"{error}: leave out --z-dim, --g-width and --d-width to take the checkpoint's") from None
    return found


def convert_tf_checkpoint(cfg, device, typed=frozenset()):
    """Write cfg.from_tf as a GAN run in cfg.out (checkpoint.pt), then its per-category grids; returns their
    paths. `typed`: the settings given as flags, which must agree with the checkpoint (the rest are taken from it)."""
    check_config(cfg)
    take_tf_settings(cfg, typed)
    tensors = TFCheckpoint(cfg.from_tf)
    found = check_fits(tensors, cfg)
    g_state, d_state = gan_state_from_tf(tensors)
    seed_everything(cfg.seed)  # the run's fixed sample codes, as training makes them
    run = GANTraining(cfg, found["num_categories"], device, iterations_per_epoch=None)
    run.model.generator.load_state_dict(g_state)
    run.model.discriminator.load_state_dict(d_state)
    run.step = prefix_step(cfg.from_tf)
    out = run_dir(cfg.out, "gan")
    run.save(out / "checkpoint.pt", {"from_tf": cfg.from_tf})
    print(f"wrote {Path(cfg.from_tf).name} as a GAN run in {out}: {found['num_categories']} categories, "
          f"z_dim {cfg.z_dim}, widths {cfg.g_width}/{cfg.d_width}, {cfg.image_size} px")
    return write_category_grids(out, device, cfg.bf16, cfg.seed)
