"""A finished DVBPR run read back from its directory: settings, dataset, weights and item embeddings. Every later
stage (recommending, preference maximisation, the baselines' table) opens a trained DVBPR through this module,
which reads and never writes, and imports nothing of the training code."""
from dataclasses import dataclass
from pathlib import Path

import torch

from common.checkpoint import load_checkpoint, load_state, recorded_digest, saved_config
from common.checkpoint import read_results as read_stage_results
from common.data import Dataset
from common.datasets import check_size, open_run_dataset
from common.errors import CheckpointError, RunError
from common.images import image_store
from common.safe_pickle import describe_value
from dvbpr.config import DVBPRConfig, check_config
from dvbpr.model import DVBPR, build_model, embed_items


@dataclass
class DVBPRRun:
    """A run's dataset, theta [usernum, K] and Phi(X_i) [itemnum, K] of one epoch, and the model if asked for;
    `trained_on` is the digest of the data it trained on (Dataset.digest), None where its files record none."""
    path: Path
    config: DVBPRConfig
    dataset: Dataset
    theta: torch.Tensor
    items: torch.Tensor
    epoch: int
    model: DVBPR | None
    trained_on: str | None


def load_weights(run, device="cpu"):
    """(path, checkpoint) of best.pt (the kept epoch, as embeddings.pt: the best validation one, or the last with
    --select last), else of checkpoint.pt."""
    path = next((p for p in (run / "best.pt", run / "checkpoint.pt") if p.is_file()), None)
    if path is None:
        raise RunError(f"no trained DVBPR in {run} (best.pt or checkpoint.pt): "
                       f"make it with `python dvbpr/main.py --out {run}`")
    return path, load_checkpoint(path, "dvbpr", device, ("model", "config", "epoch", "step"))


def load_model(checkpoint, path, device="cpu"):
    """The checkpoint's DVBPR in eval mode, without gradients."""
    cfg = saved_config(DVBPRConfig, checkpoint["config"], path, check_config)
    theta = checkpoint["model"].get("theta") if isinstance(checkpoint["model"], dict) else None
    check_matrix(theta, "theta", path, cfg.k)
    model = build_model(cfg, theta.shape[0])
    load_state(model, checkpoint["model"], path)
    return model.to(device).eval().requires_grad_(False)


def check_matrix(tensor, name, path, k):
    """A [count, K] float matrix of the run's K, as training saves theta and the item embeddings."""
    if not (isinstance(tensor, torch.Tensor) and tensor.ndim == 2 and tensor.is_floating_point()):
        shown = f"of shape {list(tensor.shape)} and dtype {tensor.dtype}" if isinstance(tensor, torch.Tensor) \
            else describe_value(tensor)
        raise CheckpointError(f"{path}: its {name} is {shown}, not a [count, K] float matrix")
    if tensor.shape[1] != k:
        raise CheckpointError(f"{path}: its {name} is {list(tensor.shape)}, of K={tensor.shape[1]}, but the run's "
                              f"settings give K={k}: the file was edited or comes from another run")


def open_dvbpr_run(run, dataset_path=None, device="cpu", with_model=False):
    """The run in directory `run`, with its model when `with_model`. When embeddings.pt is missing or was written
    by another step than the weights, the item embeddings are computed from the weights (and not saved)."""
    run, device = Path(run), torch.device(device)
    if not run.is_dir():
        raise RunError(f"no run directory {run}: make one with `python dvbpr/main.py --out {run}`")
    embeddings = run / "embeddings.pt"
    exported = load_checkpoint(embeddings, "dvbpr-embeddings", fields=("theta", "items", "config", "epoch", "step")) \
        if embeddings.is_file() else None
    weights, checkpoint = load_weights(run, device) if with_model or exported is None else (None, None)
    config = saved_config(DVBPRConfig, (checkpoint or exported)["config"], weights or embeddings, check_config)
    if exported is not None:
        check_matrix(exported["theta"], "theta", embeddings, config.k)
        check_matrix(exported["items"], "items", embeddings, config.k)
    dataset = open_run_dataset(run, dataset_path or config.dataset, config.cache_dir)
    model = load_model(checkpoint, weights, device) if checkpoint else None
    trained_on = recorded_digest(checkpoint, weights) if checkpoint else recorded_digest(exported, embeddings)
    if exported is None or (checkpoint and exported["step"] != checkpoint["step"]):
        reason = "missing" if exported is None else f"from step {exported['step']}, not {checkpoint['step']}"
        print(f"{run / 'embeddings.pt'} {reason}: computing the item embeddings of {weights.name} "
              f"(epoch {checkpoint['epoch']})")
        check_size(run, len(model.theta), "users", dataset)
        store = image_store(dataset, config.image_size, config.resize_filter, device=device)
        items = embed_items(model, store, config.eval_batch_size, bf16=config.bf16)
        exported = {"theta": model.theta, "items": items, "epoch": checkpoint["epoch"]}
    theta, items = exported["theta"].float().to(device), exported["items"].float().to(device)
    check_size(run, len(theta), "users", dataset)
    check_size(run, len(items), "items", dataset)
    return DVBPRRun(run, config, dataset, theta, items, exported["epoch"], model, trained_on)


RESULT_FIELDS = ("protocol", "dataset", "k", "image_size", "epoch", "valid_auc", "valid_auc_cold", "test_auc",
                 "test_auc_cold", "wall_seconds")


def read_results(run):
    """results.json of the finished run in directory `run`: the kept epoch's AUCs and the run's main settings."""
    return read_stage_results(run, "DVBPR", RESULT_FIELDS, "python dvbpr/main.py")
