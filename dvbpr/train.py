"""DVBPR training (paper Sec. III-A/B): BPR on (user, positive, negative) triplets through the shared loop of
common/training.py, AUC and the top-K metrics every epoch, and the run's files.

The original's loop bound (step*128 <= 20*N+1) stops just short of the 20th epoch boundary, so it evaluated and
saved 19 times and discarded the rest of its 20th epoch. --preset original therefore runs 19 epochs, which gives
the same 19 evaluations and checkpoints, and keeps the last of them (--select last), as the authors published their
last checkpoint; --preset paper runs the 20 epochs that the original's settings state and keeps the best
validation epoch.

Randomness: the initialisation and the triplets come from cfg.seed alone, so every rank has the same ones;
dropout is reseeded at each epoch from (seed, epoch, rank), so a resumed run, under any number of ranks,
continues as the uninterrupted one would have.
"""
import dataclasses
import json
import time

import numpy as np
import torch
from tqdm import tqdm

from common.checkpoint import save_checkpoint, write_json
from common.datasets import describe_data, open_run_data
from common.device import fused_adam_kwargs, memory_format, pick_device
from common.distributed import Ranks, unwrap
from common.errors import ConfigError
from common.metrics import epoch_metrics, evaluate_splits, evaluation_cost, split_metrics, tie_rule
from common.runlog import RunLog, run_dir
from common.sampling import TripletSampler
from common.seeding import seed_everything
from common.training import (
    Trainee,
    image_feed,
    save_training,
    snapshot,
    start_or_resume,
    train_epochs,
)
from dvbpr.config import check_config
from dvbpr.model import build_model, embed_items

KEPT_EPOCH_CHECKPOINTS = 5  # as TF's Saver kept


def dvbpr_trainee(model, dataset, images, cfg, ranks):
    """DVBPR for the shared loop: Adam, DVBPR's sampler, its objective, and its evaluation (whose artefact is the
    item embeddings)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, **fused_adam_kwargs(ranks.device))

    def loss(network, batch):
        users = batch[0]
        return unwrap(network).objective(network(*batch), users, cfg.lambda_w, cfg.lambda_theta, ranks.world_size)

    def evaluate_epoch():
        valid, test, items = evaluate(model, dataset, images, cfg, ranks)
        return epoch_metrics(valid, test, cfg.protocol), items
    return Trainee(model, optimizer, TripletSampler(dataset, cfg.seed), image_feed(images), loss, evaluate_epoch)


def evaluate(model, dataset, images, cfg, ranks):
    """(validation metrics dict, test metrics dict (evaluate_ranking's), item embeddings) under cfg.protocol,
    sharded over the ranks."""
    items = embed_items(model, images, cfg.eval_batch_size, ranks, cfg.bf16)
    theta = model.theta.detach()
    valid, test = evaluate_splits(dataset, lambda users: theta[users] @ items.T, cfg, ranks)
    return valid, test, items


def log_line(record):
    """The original's DVBPR.log line: test AUC first, then validation, as Python 2's str(float) printed them."""
    return f"Epoch #{record['epoch']}:{record['test_auc']:.12g} {record['valid_auc']:.12g}"


def fmt(auc):
    return "n/a" if auc is None else f"{auc:.4f}"


def rewrite_logs(out, history):
    """DVBPR.log and metrics.jsonl as of the checkpoint, dropping lines a killed run wrote after it."""
    (out / "DVBPR.log").write_text("".join(log_line(record) + "\n" for record in history))
    runlog = RunLog(out, resume=False)
    for record in history:
        runlog.record(**record)
    return runlog


def save_embeddings(path, theta, items, config, epoch, step, dataset_digest):
    """embeddings.pt: theta and every item's Phi(X_i) (the original's UI_*.npy), float32 on CPU, and the digest
    of the data trained on."""
    save_checkpoint(path, {"stage": "dvbpr-embeddings", "theta": theta.detach().float().cpu(),
                           "items": items.float().cpu(), "config": config, "epoch": epoch, "step": step,
                           "dataset_digest": dataset_digest})


def save_epoch_files(out, model, items, cfg, record, dataset_digest):
    """The original's per-epoch outputs: a model checkpoint (the last few kept) and UI_<K>_<step>.npy, an object
    array [theta, item embeddings] as the original's np.save([U, I]) wrote it."""
    save_checkpoint(out / f"DVBPR_auc_{cfg.k}_{record['step']}.pt",
                    snapshot("dvbpr", model, cfg, record, dataset_digest))
    kept = sorted(out.glob(f"DVBPR_auc_{cfg.k}_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    for old in kept[:-KEPT_EPOCH_CHECKPOINTS]:
        old.unlink()
    ui = np.empty(2, dtype=object)
    ui[0], ui[1] = model.theta.detach().cpu().numpy(), items.cpu().numpy()
    np.save(out / f"UI_{cfg.k}_{record['step']}.npy", ui, allow_pickle=True)


def save_epoch(out, cfg, trainee, items, progress):
    """Everything an epoch leaves on disk, the checkpoint last: best.pt and embeddings.pt when this epoch is the
    kept one, the original's per-epoch files if asked, then checkpoint.pt (so a crash at any point resumes
    correctly)."""
    model, record = trainee.model, progress["history"][-1]
    if progress["kept"] is record:
        save_checkpoint(out / "best.pt", snapshot("dvbpr", model, cfg, record, progress["dataset_digest"]))
        save_embeddings(out / "embeddings.pt", model.theta, items, dataclasses.asdict(cfg), record["epoch"],
                        record["step"], progress["dataset_digest"])
    if cfg.save_every_epoch:
        save_epoch_files(out, model, items, cfg, record, progress["dataset_digest"])
    save_training(out / "checkpoint.pt", "dvbpr", trainee, cfg, progress)


def train(cfg, ranks=None):
    """Train and evaluate as configured (resuming from --out's checkpoint.pt with cfg.resume); returns the
    results dict that is also written to results.json. Under torchrun every rank calls this with its `ranks`
    (default: one process on cfg.device); rank 0 writes the files. (A config with from_tf is evaluated by
    dvbpr.tf_run.evaluate_tf_checkpoint instead.)"""
    started = time.time()
    check_config(cfg)
    if cfg.from_tf:
        raise ConfigError("from_tf is evaluated, not trained: call dvbpr.tf_run.evaluate_tf_checkpoint")
    ranks = ranks or Ranks(device=pick_device(cfg.device))
    out, device = run_dir(cfg.out, "dvbpr"), ranks.device
    dataset, embedded, images = open_run_data(cfg, ranks)
    ranks.print(f"DVBPR on {describe_data(dataset)}; preset {cfg.preset}, K={cfg.k}, {cfg.backbone} at "
                f"{cfg.image_size} px, {cfg.epochs} epochs, {cfg.protocol} AUC; device {ranks.describe()}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if cost := evaluation_cost(dataset, cfg.k, cfg.eval_users):
        ranks.print(cost)
    ranks.share(cfg.batch_size)  # fails early if the batch does not split over the ranks
    seed_everything(cfg.seed)
    model = build_model(cfg, dataset.usernum).to(device, memory_format=memory_format(device))
    trainee = dvbpr_trainee(model, dataset, images, cfg, ranks)
    progress = start_or_resume(out / "checkpoint.pt", "dvbpr", trainee, cfg, ranks, dataset)
    runlog = rewrite_logs(out, progress["history"]) if ranks.is_main else None

    def on_epoch(record, items):
        if not ranks.is_main:
            return
        save_epoch(out, cfg, trainee, items, progress)
        with open(out / "DVBPR.log", "a") as log:
            log.write(log_line(record) + "\n")
        runlog.record(**record)
        chosen = "" if cfg.select_metric == "valid_auc" else f"  {cfg.select_metric} {fmt(record[cfg.select_metric])}"
        tqdm.write(f"{log_line(record)}  cold items: test {fmt(record['test_auc_cold'])} "
                   f"valid {fmt(record['valid_auc_cold'])}  loss {record['loss']:.4g}{chosen}")
    seconds_before = progress["seconds"]
    train_epochs(trainee, cfg, ranks, progress, dataset.num_train_interactions, on_epoch)
    results = results_summary(cfg, dataset, embedded, progress["kept"], seconds_before + time.time() - started,
                              ranks)
    if ranks.is_main:
        write_json(out / "results.json", results)
        print(f"results ({cfg.select} epoch): " + json.dumps(results))
    ranks.barrier()
    return results


def results_summary(cfg, dataset, embedded, kept, seconds, ranks):
    """results.json: the settings and the metrics of the kept epoch (`selected` and `select_metric` say how it was
    chosen)."""
    return dict(preset=cfg.preset, protocol=cfg.protocol, ties=tie_rule(cfg.protocol, cfg.ties),
                dataset=dataset.name, dataset_path=str(dataset.path), embedded=embedded, epochs=cfg.epochs, k=cfg.k,
                backbone=cfg.backbone, image_size=cfg.image_size, batch_size=cfg.batch_size, selected=cfg.select,
                select_metric=cfg.select_metric, eval_users=cfg.eval_users, epoch=kept["epoch"], step=kept["step"],
                **split_metrics(kept), wall_seconds=round(seconds, 1), device=ranks.describe())
