"""Conditional LSGAN of fashion images per category (paper section III-C).

    python gan/main.py --train     train into --out (default runs/gan): checkpoint.pt, samples/, metrics.jsonl
    python gan/main.py             write samples/test_arange_<c>.png, one grid per category, from the trained model
    torchrun --nproc_per_node=N gan/main.py --train     the same on N GPUs (--batch-size stays the global batch)

Without the real dataset the embedded catalogue is used, with demo-sized settings printed first.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.catalogue import open_dataset
from common.checkpoint import CheckpointError
from common.config import apply_defaults, parse_config
from common.device import pick_device
from common.distributed import setup, teardown
from common.runlog import run_dir
from gan.train import DEMO, PRESETS, GANConfig, sample, train


def main(argv=None):
    cfg, explicit = parse_config(GANConfig, argv, PRESETS, description=__doc__.splitlines()[0])
    if not cfg.train:
        sample(run_dir(cfg.out, "gan"), pick_device(cfg.device), cfg.bf16, cfg.seed)
        return
    ranks = setup(cfg.device)
    try:
        with ranks.main_first():
            out_dir = run_dir(cfg.out, "gan")
            dataset, embedded = open_dataset(cfg.dataset)
        if embedded:
            changed = apply_defaults(cfg, DEMO, explicit)
            if changed:
                ranks.print("embedded catalogue, demo settings: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                                            for k, v in changed.items()))
        train(cfg, dataset, out_dir, ranks)
    finally:
        teardown()


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, CheckpointError) as error:
        sys.exit(f"error: {error}")
