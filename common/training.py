"""The one training loop of the models trained on (user, positive, negative) triplets: DVBPR (paper Sec. III-A/B),
the region-attention recommender and the BPR-family baselines of Table III.

Epochs: an epoch is as many triplets as training interactions N; epoch e ends at global step ceil(e*N/batch), the
boundary the original DVBPR used (so its pretrained step 39728 is epoch 19 here too). Each epoch draws its triplets
in one call to the sampler, reseeds torch (dropout) from (seed, epoch, rank), takes one Adam step per global batch
(each rank its share, the forward pass under bf16 autocast on CUDA) with the learning rate of its step, evaluates,
and keeps the epoch's record when `select` says so: the best validation epoch (by `select_metric`), or the last.
`progress` holds the epochs done, their records, the kept one and the digest of the data trained on; a checkpoint
stores it with the model, optimiser and sampler, so that a resumed run, under any number of ranks, goes on as the
uninterrupted one would have, and on the same data only.

The settings the loop reads (`cfg`): epochs, batch_size, lr, lr_schedule, warmup_epochs, select, select_metric,
seed, bf16.
"""
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from common.checkpoint import check_same_data, load_checkpoint, load_state, restore_optimizer, save_checkpoint
from common.device import autocast
from common.errors import TrainingDiverged

SELECTIONS = ("best-valid", "last")
LR_SCHEDULES = ("constant", "cosine")
LOSS_READ_EVERY = 10   # steps between loss read-outs (each one waits for the GPU)


@dataclass
class Trainee:
    """What the loop trains and how.

    feed(batches) turns an iterator of this rank's triplet rows (users, positives, negatives: CPU LongTensors) into
    an iterator of batches on the device; loss(network, batch) is the objective of one batch, to minimise;
    evaluate() -> (metrics, artefacts) scores the model after an epoch: the metrics (with the one best-valid
    selection compares, cfg.select_metric, say valid_auc) go into the epoch's record, the artefacts (say, item
    embeddings) to whoever saves the epoch. `negatives`: per positive, when the loss takes several (WARP's trials,
    NCF's negatives).
    """
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    sampler: object
    feed: Callable
    loss: Callable
    evaluate: Callable
    negatives: int | None = None


def image_feed(images):
    """Triplet rows -> (users, images of the positives, images of the negatives) on the device; the images of a
    batch are gathered while the previous one trains (ImageStore.stream)."""
    def feed(rows):
        pairs = ((torch.cat([positives, negatives]), users) for users, positives, negatives in rows)
        for (_, users), pair_images in images.stream(pairs):
            yield (users.to(images.device), *pair_images.chunk(2))
    return feed


def new_progress(dataset_digest=None):
    """Nothing done yet; `dataset_digest` is recorded in the checkpoints of a run that can be resumed."""
    return dict(epoch=0, step=0, history=[], kept=None, seconds=0.0, dataset_digest=dataset_digest)


def epoch_end_step(epoch, num_interactions, batch_size):
    """Step at which epoch `epoch` ends: the first with step*batch >= epoch*N (at least one step per epoch)."""
    return max(-(-epoch * num_interactions // batch_size), epoch)


def learning_rate(cfg, step, num_interactions):
    """The learning rate of global step `step` (counted from 0): cfg.lr throughout ("constant"), or a linear
    warm-up over cfg.warmup_epochs then a cosine decay to 0 at the last step ("cosine")."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    total = epoch_end_step(cfg.epochs, num_interactions, cfg.batch_size)
    warmup = cfg.warmup_epochs * num_interactions / cfg.batch_size
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))


def check_finite(loss, where):
    if not math.isfinite(loss):
        raise TrainingDiverged(f"the loss became {loss} {where}; lower --lr (the last checkpoint before it is "
                               "kept, and --resume continues from there)")


def beats(value, best):
    """Whether a metric's value (higher is better) beats the best so far; None (no cold user, or a record from
    before the metric existed) beats nothing and is beaten by any value."""
    return value is not None and (best is None or value > best)


def keep_record(select, kept, record, metric="valid_auc"):
    """The epoch record to keep after `record`: it, with select "last" or when its `metric` beats the kept one's;
    else the kept one."""
    if select == "last" or kept is None or beats(record[metric], kept[metric]):
        return record
    return kept


def train_steps(network, trainee, triplets, cfg, ranks, lr_at=None, desc="train"):
    """One optimiser step per global batch of `triplets`, of which this rank takes its share; `lr_at(i)`, if
    given, is the learning rate of the i-th step. Returns the mean over the steps of the global batch's loss,
    read back only every few steps so that CUDA runs ahead of the progress bar."""
    network.train()
    share = ranks.share(cfg.batch_size)
    num_steps = len(triplets[0]) // cfg.batch_size

    def rows():
        for step in range(num_steps):
            rows = slice(step * cfg.batch_size + share.start, step * cfg.batch_size + share.stop)
            yield tuple(part[rows] for part in triplets)

    total = torch.zeros((), device=ranks.device)
    with tqdm(total=num_steps * cfg.batch_size, unit="triplet", unit_scale=True, desc=desc, leave=False,
              disable=not ranks.is_main) as bar:
        for step, batch in enumerate(trainee.feed(rows())):
            for group in trainee.optimizer.param_groups if lr_at else ():
                group["lr"] = lr_at(step)
            with autocast(ranks.device, cfg.bf16):
                loss = trainee.loss(network, batch)
            trainee.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainee.optimizer.step()
            total += loss.detach()
            bar.update(cfg.batch_size)
            if (step + 1) % LOSS_READ_EVERY == 0 or step + 1 == num_steps:
                mean = total.item() / (step + 1)
                check_finite(mean, f"in {desc}, step {step + 1}")
                bar.set_postfix(loss=f"{mean:.4g}")
    return ranks.mean(total).item() / max(num_steps, 1)


def train_epoch(epoch, network, trainee, cfg, ranks, progress, num_interactions, desc):
    """Train epoch `epoch` and evaluate it; its record goes into `progress`. Returns (record, artefacts)."""
    started = time.time()
    torch.manual_seed(ranks.seed(cfg.seed, epoch))
    first_step, last_step = progress["step"], epoch_end_step(epoch, num_interactions, cfg.batch_size)
    triplets = trainee.sampler.sample((last_step - first_step) * cfg.batch_size, trainee.negatives)
    lr_at = lambda step: learning_rate(cfg, first_step + step, num_interactions)
    loss = train_steps(network, trainee, [torch.from_numpy(part) for part in triplets], cfg, ranks, lr_at,
                       desc=f"{desc}epoch {epoch}/{cfg.epochs}")
    check_finite(loss, f"in epoch {epoch}")
    triplets_per_s = len(triplets[0]) / max(time.time() - started, 1e-9)
    metrics, artefacts = trainee.evaluate()
    record = dict(epoch=epoch, step=last_step, loss=loss, **metrics, lr=lr_at(last_step - first_step - 1),
                  triplets_per_s=round(triplets_per_s, 1), seconds=round(time.time() - started, 3))
    progress.update(epoch=epoch, step=last_step)
    progress["history"].append(record)
    progress["kept"] = keep_record(cfg.select, progress["kept"], record, cfg.select_metric)
    return record, artefacts


def train_epochs(trainee, cfg, ranks, progress, num_interactions, on_epoch=None, desc=""):
    """Train from the epoch after progress["epoch"] to cfg.epochs; on_epoch(record, artefacts) after each, on
    every rank (it saves what the stage keeps). Returns `progress`."""
    network = ranks.wrap(trainee.model)
    started, seconds_before = time.time(), progress["seconds"]
    for epoch in range(progress["epoch"] + 1, cfg.epochs + 1):
        record, artefacts = train_epoch(epoch, network, trainee, cfg, ranks, progress, num_interactions, desc)
        progress["seconds"] = seconds_before + time.time() - started
        if on_epoch is not None:
            on_epoch(record, artefacts)
    return progress


# ----------------------------------------------------------------------------------------------------------------
# A run directory's training files: best.pt (the kept epoch) and checkpoint.pt (the latest, for --resume)

def snapshot(stage, model, cfg, record, dataset_digest):
    """best.pt's content: the kept epoch's weights and settings, and the digest of the data they were trained on
    (checked by the stages that open the run with another's)."""
    return {"stage": stage, "model": model.state_dict(), "config": dataclasses.asdict(cfg),
            "epoch": record["epoch"], "step": record["step"], "metrics": record, "dataset_digest": dataset_digest}


def save_training(path, stage, trainee, cfg, progress):
    """checkpoint.pt: everything a resumed run needs."""
    save_checkpoint(path, {
        "stage": stage, "model": trainee.model.state_dict(), "optimizer": trainee.optimizer.state_dict(),
        "config": dataclasses.asdict(cfg), "epoch": progress["epoch"], "step": progress["step"],
        "sampler": trainee.sampler.state_dict(), "metrics": {"history": progress["history"], "kept": progress["kept"]},
        "seconds": progress["seconds"], "dataset_digest": progress["dataset_digest"]})


def start_or_resume(path, stage, trainee, cfg, ranks, dataset):
    """The run's progress: that of the checkpoint at `path` when cfg.resume (loaded into the model, optimiser and
    sampler), else nothing done. A run records its dataset's digest and resumes on that data only."""
    if not cfg.resume:
        if path.exists():
            ranks.print(f"starting afresh in {path.parent} (pass --resume to continue the run there)")
        return new_progress(dataset.digest)
    checkpoint = load_checkpoint(path, stage, fields=("model", "optimizer", "sampler", "epoch", "step", "seconds",
                                                      "metrics"))
    check_same_data(checkpoint, dataset, path)
    load_state(trainee.model, checkpoint["model"], path)
    restore_optimizer(trainee.optimizer, checkpoint["optimizer"], cfg.lr)
    trainee.sampler.load_state_dict(checkpoint["sampler"])
    ranks.print(f"resuming {path.parent} after epoch {checkpoint['epoch']} (step {checkpoint['step']})")
    metrics = checkpoint["metrics"]
    kept = metrics["kept"] if "kept" in metrics else metrics["best"]  # "best" before --select existed
    return dict(epoch=checkpoint["epoch"], step=checkpoint["step"], seconds=checkpoint["seconds"],
                history=metrics["history"], kept=kept, dataset_digest=dataset.digest)
