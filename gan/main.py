"""Conditional LSGAN of fashion images per category (paper Sec. III-C).

    python gan/main.py --train     train into --out (default runs/gan): checkpoint.pt, samples/, metrics.jsonl
    python gan/main.py             write samples/test_arange_<c>.png, one grid per category, from the trained model
    torchrun --nproc_per_node=N gan/main.py --train     the same on N GPUs (--batch-size stays the global batch)

Without the real dataset the embedded catalogue is used, with demo-sized settings printed first (the rule for
settings is in common/cli.py).
"""
from pathlib import Path

from common.cli import parse_config, stage_errors, train_stage
from common.device import pick_device
from gan.run import write_category_grids
from gan.train import DEMO, PRESETS, GANConfig, check_config, train


def main(argv=None):
    with stage_errors("gan"):
        cfg, protected = parse_config(GANConfig, argv, PRESETS, description=__doc__.splitlines()[0])
        if not cfg.train:
            return write_category_grids(Path(cfg.out or "runs/gan"), pick_device(cfg.device), cfg.bf16, cfg.seed)
        return train_stage(cfg, protected, "gan", DEMO, check_config, train)


if __name__ == "__main__":
    main()
