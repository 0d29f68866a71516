"""One checkpoint format for every stage, written atomically and read with weights_only=True.

A checkpoint is a dict: {"stage", "model", "optimizer", "config", "epoch", "step", "metrics", ...}. It holds no
global random state: each stage draws its batches from seeds derived from (seed, epoch or step), or keeps its
sampler's state, so that a run resumes exactly, under any number of ranks.
"""
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or not one of ours."""


def save_checkpoint(path, state):
    """Write `state` to `path` so that a crash at any moment leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path, map_location="cpu"):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def derived_seed(*keys):
    """A seed made from several integers (e.g. seed, step, rank), distinct for distinct keys."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])
