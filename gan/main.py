"""Conditional LSGAN of fashion images per category (paper Sec. III-C).

    python gan/main.py --train     train into --out (default runs/gan): checkpoint.pt, samples/, metrics.jsonl
    python gan/main.py             write samples/test_arange_<c>.png, one grid per category, from the trained model
    torchrun --nproc_per_node=N gan/main.py --train     the same on N GPUs (--batch-size stays the global batch)

Without the real dataset the embedded catalogue is used, with demo-sized settings printed first (the rule for
settings is in common/cli.py).
"""
from pathlib import Path

from common.cli import parse_config, settle, stage_errors
from common.device import pick_device
from common.distributed import setup, teardown
from gan.run import write_category_grids
from gan.train import DEMO, PRESETS, GANConfig, check_config, train


def main(argv=None):
    with stage_errors("gan"):
        cfg, protected = parse_config(GANConfig, argv, PRESETS, description=__doc__.splitlines()[0])
        if not cfg.train:
            return write_category_grids(Path(cfg.out or "runs/gan"), pick_device(cfg.device), cfg.bf16, cfg.seed)
        check_config(cfg)  # the flags as given, before any data is read
        ranks = setup(cfg.device)
        try:
            with ranks.main_first():
                settle(cfg, protected, "gan", DEMO, say=ranks.print)
            check_config(cfg)
            return train(cfg, ranks)
        finally:
            teardown()


if __name__ == "__main__":
    main()
