"""A trained DVBPR run read back from its directory: weights, dataset and item embeddings (for recommending and
for preference maximisation)."""
from dataclasses import dataclass
from pathlib import Path

import torch

from common.catalogue import open_dataset
from common.checkpoint import load_checkpoint, save_checkpoint
from common.data import Dataset
from common.images import ImageStore, image_cache
from dvbpr.model import DVBPR


class RunError(ValueError):
    """A run directory that cannot be used as asked; the message says why and how to make a usable one."""


@dataclass
class TrainedRun:
    """A run's dataset, theta [usernum, K] and Phi(X_i) [itemnum, K] of one epoch, and the model if asked for."""
    path: Path
    config: dict
    dataset: Dataset
    theta: torch.Tensor
    items: torch.Tensor
    epoch: int
    model: DVBPR | None


def save_embeddings(path, theta, items, config, epoch, step):
    """embeddings.pt: theta and every item's Phi(X_i) (the original's UI_*.npy), float32 on CPU."""
    save_checkpoint(path, {"theta": theta.detach().float().cpu(), "items": items.float().cpu(), "config": config,
                           "epoch": epoch, "step": step})


def load_weights(run, device="cpu"):
    """(path, checkpoint) of best.pt (the best validation epoch, as embeddings.pt), else of checkpoint.pt."""
    path = next((p for p in (run / "best.pt", run / "checkpoint.pt") if p.is_file()), None)
    if path is None:
        raise RunError(f"no trained DVBPR in {run} (best.pt or checkpoint.pt): "
                       f"make it with `python dvbpr/main.py --out {run}`")
    return path, load_checkpoint(path, map_location=device)


def build_model(checkpoint, device="cpu"):
    """The checkpoint's DVBPR in eval mode, without gradients."""
    cfg = checkpoint["config"]
    model = DVBPR(checkpoint["model"]["theta"].shape[0], cfg["k"], cfg["image_size"], cfg["dropout"],
                  fc_width=cfg.get("fc_width", 4096))
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval().requires_grad_(False)


def open_run(run, dataset_path=None, device="cpu", with_model=False):
    """The run in directory `run`, with its model when `with_model`. embeddings.pt is computed (and saved) if it
    is missing or was written by another step than the weights."""
    from dvbpr.main import item_embeddings  # dvbpr.main imports this module

    run, device = Path(run), torch.device(device)
    if not run.is_dir():
        raise RunError(f"no run directory {run}: make one with `python dvbpr/main.py --out {run}`")
    exported = load_checkpoint(run / "embeddings.pt") if (run / "embeddings.pt").is_file() else None
    weights, checkpoint = load_weights(run, device) if with_model or exported is None else (None, None)
    config = (checkpoint or exported)["config"]
    dataset, _ = open_dataset(dataset_path or config["dataset"])
    model = build_model(checkpoint, device) if checkpoint else None
    if exported is None or (checkpoint and exported["step"] != checkpoint["step"]):
        reason = "missing" if exported is None else f"from step {exported['step']}, not {checkpoint['step']}"
        print(f"{run / 'embeddings.pt'} {reason}: computing the item embeddings of {weights.name} "
              f"(epoch {checkpoint['epoch']}) once and saving them there")
        check_size(run, len(model.theta), "users", dataset)
        store = ImageStore(image_cache(dataset, config["image_size"], config["resize_filter"]), device)
        items = item_embeddings(model, store, config["eval_batch_size"], bf16=config["bf16"])
        model.eval()  # item_embeddings leaves the model in training mode
        save_embeddings(run / "embeddings.pt", model.theta, items, config, checkpoint["epoch"], checkpoint["step"])
        exported = {"theta": model.theta, "items": items, "epoch": checkpoint["epoch"]}
    theta, items = exported["theta"].float().to(device), exported["items"].float().to(device)
    check_size(run, len(theta), "users", dataset)
    check_size(run, len(items), "items", dataset)
    return TrainedRun(run, config, dataset, theta, items, exported["epoch"], model)


def check_size(run, count, what, dataset):
    actual = dataset.usernum if what == "users" else dataset.itemnum
    if count != actual:
        raise RunError(f"the run in {run} has {count} {what} but {dataset.path} has {actual}: "
                       "give the --dataset it was trained on")
