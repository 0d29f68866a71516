"""A finished DVBPR run read back from its directory: settings, dataset, weights and item embeddings. Every later
stage (recommending, preference maximisation, the baselines' table) opens a trained DVBPR through this module,
which reads and never writes, and imports nothing of the training code."""
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from common.checkpoint import load_checkpoint, saved_config
from common.data import Dataset
from common.datasets import open_dataset
from common.errors import RunError
from common.images import ImageStore, image_cache
from dvbpr.config import DVBPRConfig
from dvbpr.model import DVBPR, build_model, embed_items


@dataclass
class DVBPRRun:
    """A run's dataset, theta [usernum, K] and Phi(X_i) [itemnum, K] of one epoch, and the model if asked for."""
    path: Path
    config: DVBPRConfig
    dataset: Dataset
    theta: torch.Tensor
    items: torch.Tensor
    epoch: int
    model: DVBPR | None


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
    cfg = saved_config(DVBPRConfig, checkpoint["config"], path)
    model = build_model(cfg, checkpoint["model"]["theta"].shape[0])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval().requires_grad_(False)


def open_dvbpr_run(run, dataset_path=None, device="cpu", with_model=False):
    """The run in directory `run`, with its model when `with_model`. When embeddings.pt is missing or was written
    by another step than the weights, the item embeddings are computed from the weights (and not saved)."""
    run, device = Path(run), torch.device(device)
    if not run.is_dir():
        raise RunError(f"no run directory {run}: make one with `python dvbpr/main.py --out {run}`")
    exported = load_checkpoint(run / "embeddings.pt", "dvbpr-embeddings") if (run / "embeddings.pt").is_file() \
        else None
    weights, checkpoint = load_weights(run, device) if with_model or exported is None else (None, None)
    config = saved_config(DVBPRConfig, (checkpoint or exported)["config"], run)
    dataset = open_run_dataset(run, dataset_path or config.dataset, config.cache_dir)
    model = load_model(checkpoint, weights, device) if checkpoint else None
    if exported is None or (checkpoint and exported["step"] != checkpoint["step"]):
        reason = "missing" if exported is None else f"from step {exported['step']}, not {checkpoint['step']}"
        print(f"{run / 'embeddings.pt'} {reason}: computing the item embeddings of {weights.name} "
              f"(epoch {checkpoint['epoch']})")
        check_size(run, len(model.theta), "users", dataset)
        store = ImageStore(image_cache(dataset, config.image_size, config.resize_filter), device)
        items = embed_items(model, store, config.eval_batch_size, bf16=config.bf16)
        exported = {"theta": model.theta, "items": items, "epoch": checkpoint["epoch"]}
    theta, items = exported["theta"].float().to(device), exported["items"].float().to(device)
    check_size(run, len(theta), "users", dataset)
    check_size(run, len(items), "items", dataset)
    return DVBPRRun(run, config, dataset, theta, items, exported["epoch"], model)


RESULT_FIELDS = ("protocol", "dataset", "k", "image_size", "epoch", "valid_auc", "valid_auc_cold", "test_auc",
                 "test_auc_cold", "wall_seconds")
MAX_RESULTS_BYTES = 1 << 20


def read_results(run):
    """results.json of the finished run in directory `run`: the kept epoch's AUCs and the run's main settings."""
    path = Path(run) / "results.json"
    if not path.is_file():
        raise RunError(f"no results.json in {run}: finish the run with `python dvbpr/main.py --out {run}`")
    if path.stat().st_size > MAX_RESULTS_BYTES:
        raise RunError(f"{path} is larger than {MAX_RESULTS_BYTES} bytes: not a results file of this project")
    try:
        results = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{path} is not JSON ({error})") from None
    if not isinstance(results, dict):
        raise RunError(f"{path} holds a {type(results).__name__}, not the JSON object a DVBPR run writes")
    missing = [name for name in RESULT_FIELDS if name not in results]
    if missing:
        raise RunError(f"{path} lacks {', '.join(missing)}: not the results of a finished DVBPR run")
    return results


def open_run_dataset(run, path, cache_dir):
    if path and path != "embedded" and not Path(path).exists():
        raise RunError(f"the dataset the run in {run} was trained on, {path}, is not there any more: "
                       "give its new place with --dataset")
    return open_dataset(path, cache_dir)[0]


def check_size(run, count, what, dataset):
    actual = dataset.usernum if what == "users" else dataset.itemnum
    if count != actual:
        raise RunError(f"the run in {run} has {count} {what} but {dataset.path} has {actual}: "
                       "give the --dataset it was trained on")
