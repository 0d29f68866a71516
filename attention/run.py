"""A finished region-attention run read back from its directory: settings, dataset, the kept epoch's model and its
results. Later rooms (the heat maps, Table III) open the attention model through this module, which reads and never
writes, and imports nothing of the training code."""
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from attention.config import AttentionConfig, check_config
from attention.model import RegionAttention, build_attention
from common.checkpoint import load_checkpoint, load_state, saved_config
from common.checkpoint import read_results as read_stage_results
from common.data import Dataset
from common.datasets import check_size, open_run_dataset
from common.errors import RunError
from common.images import ImageStore, image_store

RESULT_FIELDS = ("protocol", "dataset", "k", "image_size", "epoch", "valid_auc", "valid_auc_cold", "test_auc",
                 "test_auc_cold", "wall_seconds")


@dataclass
class AttentionRun:
    """A run's settings, dataset, images at the model's input size and the kept epoch's model (eval mode)."""
    path: Path
    config: AttentionConfig
    dataset: Dataset
    images: ImageStore
    model: RegionAttention
    epoch: int

    @functools.cached_property
    def scorer(self):
        """score(users) -> x_ui [B, itemnum]; every item through the CNN once, when first asked."""
        return self.model.scorer(self.images, self.config.eval_batch_size, self.config.bf16)


def open_attention_run(run, dataset_path=None, device="cpu"):
    """The run in directory `run`: best.pt (the kept epoch), else checkpoint.pt (the latest)."""
    run, device = Path(run), torch.device(device)
    path = next((p for p in (run / "best.pt", run / "checkpoint.pt") if p.is_file()), None)
    if path is None:
        raise RunError(f"no trained attention model in {run} (best.pt or checkpoint.pt): make it with "
                       f"`python attention/main.py --out {run}`")
    checkpoint = load_checkpoint(path, "attention", device, ("model", "config", "epoch"))
    cfg = saved_config(AttentionConfig, checkpoint["config"], path, check_config)
    dataset = open_run_dataset(run, dataset_path or cfg.dataset, cfg.cache_dir)
    theta = checkpoint["model"].get("theta") if isinstance(checkpoint["model"], dict) else None
    if isinstance(theta, torch.Tensor) and theta.ndim == 2:
        check_size(run, len(theta), "users", dataset)
    model = build_attention(cfg, dataset.usernum)
    load_state(model, checkpoint["model"], path)
    images = image_store(dataset, cfg.image_size, cfg.resize_filter, device=device)
    return AttentionRun(run, cfg, dataset, images, model.to(device).eval().requires_grad_(False),
                        checkpoint["epoch"])


def read_results(run):
    """results.json of the finished run in directory `run`: the kept epoch's AUCs, its settings and every epoch."""
    return read_stage_results(run, "attention", RESULT_FIELDS, "python attention/main.py")
