"""A category-conditional generator of fashion images: the paper's LSGAN (Sec. III-C) or another registered one.

    python gan/main.py --train     train into --out (default runs/gan): checkpoint.pt, samples/, metrics.jsonl
    python gan/main.py             write samples/test_arange_<c>.png, one grid per category, from the trained model
    python gan/main.py --preset original --from-tf DCGAN.model-311502     the original's TensorFlow checkpoint
                                   written as a run in --out (gan/tf_run.py), then its grids
    torchrun --nproc_per_node=N gan/main.py --train     the same on N GPUs (--batch-size stays the global batch)

Without the real dataset the embedded catalogue is used, with demo-sized settings printed first (the rule for
settings is in common/cli.py): the sngan without DiffAugment, or the LSGAN with --generator lsgan (gan/config.py).
"""
from pathlib import Path

from common.cli import parse_config, stage_errors, train_stage, typed_flags
from common.device import pick_device
from gan.config import PRESETS, GANConfig, check_config, embedded_demo
from gan.sample import write_category_grids
from gan.tf_run import convert_tf_checkpoint
from gan.train import train


def main(argv=None):
    with stage_errors("gan"):
        cfg, protected = parse_config(GANConfig, argv, PRESETS, description=__doc__.splitlines()[0])
        if cfg.from_tf:
            return convert_tf_checkpoint(cfg, pick_device(cfg.device), typed_flags(GANConfig, argv))
        if not cfg.train:
            return write_category_grids(Path(cfg.out or "runs/gan"), pick_device(cfg.device), cfg.bf16, cfg.seed)
        return train_stage(cfg, protected, "gan", embedded_demo, check_config, train)


if __name__ == "__main__":
    main()
