"""DVBPR training (paper Sec. III-A/B): BPR on (user, positive, negative) triplets, AUC every epoch.

Epochs: an epoch is as many triplets as training interactions N; epoch e ends at step ceil(e*N/batch), the
boundary the original used (so its pretrained step 39728 is epoch 19 here too). The original's loop bound
(step*128 <= 20*N+1) stops just short of the 20th boundary, so it evaluated and saved 19 times and discarded the
rest of its 20th epoch. --preset original therefore runs 19 epochs, which gives the same 19 evaluations and
checkpoints, and keeps the last of them (--select last), as the authors published their last checkpoint;
--preset paper runs the 20 epochs that the original's settings state and keeps the best validation epoch.

Randomness: the initialisation and the triplets come from cfg.seed alone, so every rank has the same ones;
dropout is reseeded at each epoch from (seed, epoch, rank), so a resumed run, under any number of ranks,
continues as the uninterrupted one would have.
"""
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from common.checkpoint import (
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
    write_json,
)
from common.cli import require_positive
from common.data import open_dataset
from common.device import autocast, fused_adam_kwargs, memory_format, pick_device
from common.distributed import Ranks, unwrap
from common.errors import ConfigError, TrainingDiverged
from common.images import ImageStore, image_cache
from common.metrics import TIES, TIES_HELP, evaluate_auc, tie_rule
from common.runlog import RunLog, run_dir
from common.sampling import TripletSampler
from common.seeding import seed_everything
from dvbpr.backbones import BACKBONES, build_backbone
from dvbpr.model import DVBPR, embed_items

SELECTIONS = ("best-valid", "last")


@dataclass
class DVBPRConfig:
    preset: str = field(default="paper", metadata={"help": "paper: K=50, exact All/Cold AUC with ties failing, 20 "
                                                           "epochs, the best validation epoch kept; original: K=100, "
                                                           "sampled-100 AUC, 19 evaluated epochs, a checkpoint every "
                                                           "epoch, the last epoch kept"})
    dataset: str | None = field(default=None, metadata={"help": "dataset .npy in the original format, or "
                                                                "'embedded'; None: data/AmazonFashion6Img"
                                                                "Partitioned.npy, else the embedded catalogue"})
    out: str | None = field(default=None, metadata={"help": "run directory; None: runs/dvbpr"})
    cache_dir: str | None = field(default=None, metadata={"help": "folder of the decoded-image cache (None: a "
                                                                  "cache/ folder beside the dataset)"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out from its checkpoint.pt; "
                                                          "flags given now override the saved settings"})
    k: int = field(default=50, metadata={"help": "latent dimensions K of theta_u and Phi(X_i)"})
    backbone: str = field(default="cnn-f", metadata={"help": "image network before the linear head to K",
                                                     "choices": list(BACKBONES)})
    backbone_weights: str | None = field(default=None, metadata={"help": "ImageNet weights file of a torchvision "
                                                                         "backbone (None: random init)"})
    image_size: int = field(default=224, metadata={"help": "side of the image network's input in pixels"})
    resize_filter: str = field(default="nearest", metadata={"help": "PIL filter resizing the images "
                                                                    "(the original's Pillow default was nearest)"})
    conv_widths: list[int] | None = field(default=None, metadata={"help": "cnn-f conv1..conv5 channels (None: the "
                                                                          "original's 64 256 256 256 256)"})
    fc_width: int = field(default=4096, metadata={"help": "cnn-f width of fc1 and fc2 (smaller for quick CPU "
                                                          "runs)"})
    init: str = field(default="xavier", metadata={"help": "cnn-f weight initialisation (xavier: the original's)",
                                                  "choices": ["xavier", "kaiming"]})
    theta_init: str = field(default="uniform", metadata={"help": "theta_u's start: uniform U[0, 0.01) (the "
                                                                 "original's), or centred U[-0.005, 0.005)",
                                                         "choices": ["uniform", "centred"]})
    dropout: float = field(default=0.5, metadata={"help": "dropout probability on fc1 and fc2"})
    lambda_w: float = field(default=0.001, metadata={"help": "weight decay on the backbone's "
                                                             "weights and the head's (lambda_w/2 ||W||^2)"})
    lambda_theta: float = field(default=1.0, metadata={"help": "regulariser of the batch's theta_u "
                                                               "(lambda_theta/2 ||theta_u||^2)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate (the peak one under a schedule)"})
    lr_schedule: str = field(default="constant", metadata={"help": "constant: lr throughout (paper, original); "
                                                                   "cosine: linear warm-up then cosine decay to 0",
                                                           "choices": ["constant", "cosine"]})
    warmup_epochs: float = field(default=0.0, metadata={"help": "epochs of linear warm-up under --lr-schedule "
                                                                "cosine"})
    batch_size: int = field(default=128, metadata={"help": "triplets per step"})
    epochs: int = field(default=20, metadata={"help": "epochs of N triplets, N = number of training interactions"})
    protocol: str = field(default="exact", metadata={"help": "AUC protocol", "choices": ["exact", "sampled100"]})
    ties: str = field(default="fail", metadata={"help": TIES_HELP, "choices": list(TIES)})
    select: str = field(default="best-valid", metadata={
        "help": "the epoch kept in best.pt and embeddings.pt, reported in results.json and used by recommend.py and "
                "pm/: best-valid, the best validation AUC (the paper); last, the last epoch (the authors published "
                "their last checkpoint)", "choices": list(SELECTIONS)})
    cold_threshold: int = field(default=5, metadata={"help": "an item is cold with fewer training interactions"})
    save_every_epoch: bool = field(default=False, metadata={"help": "also write DVBPR_auc_<K>_<step>.pt (the last 5 "
                                                                    "kept) and UI_<K>_<step>.npy every epoch"})
    eval_batch_size: int = field(default=512, metadata={"help": "images per no-grad batch for the item embeddings"})
    eval_chunk: int | None = field(default=None, metadata={"help": "users per AUC chunk; None: sized to memory"})
    seed: int = field(default=0, metadata={"help": "seed of the initialisation, dropout, triplets and sampled AUC"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA (CPU always runs float32)"})
    strict_images: bool = field(default=False, metadata={"help": "fail on an undecodable image instead of "
                                                                 "using a grey one"})
    from_tf: str | None = field(default=None, metadata={"help": "the original's TensorFlow checkpoint (prefix, e.g. "
                                                                "DVBPR_auc_100_39728.ckpt): evaluate it as a run, "
                                                                "no training; K, fc and conv widths are its own"})


PRESETS = {
    "paper": dict(k=50, protocol="exact", ties="fail", epochs=20, save_every_epoch=False, select="best-valid"),
    "original": dict(k=100, protocol="sampled100", epochs=19, save_every_epoch=True, select="last"),
}
# The embedded catalogues on a CPU: the best recipe by validation AUC over eight catalogues of different hidden
# tastes (baselines/family.py --search, its RECIPES and the README), of the two level best the faster: 66 s for the
# first set-up command on a 2-core machine with 281 GFLOP/s (51 s of training), 3.1-3.4 min by estimate at 100
# GFLOP/s, where the other, 24-48 wide, would take about 3.5. 64 px, conv widths 16-32,
# fc 256 wide, 16 epochs, no dropout, Kaiming-uniform weights, theta_u centred on 0, Adam at lr 2e-3 with a
# one-epoch warm-up and cosine decay.
DEMO = dict(image_size=64, conv_widths=[16, 32, 32, 32, 32], fc_width=256, epochs=16, lr=2e-3, lr_schedule="cosine",
            warmup_epochs=1.0, theta_init="centred", init="kaiming", dropout=0.0)
PRESETS["demo"] = {**PRESETS["paper"], **DEMO}
KEPT_EPOCH_CHECKPOINTS = 5  # as TF's Saver kept
POSITIVE_FIELDS = ("k", "image_size", "fc_width", "batch_size", "epochs", "eval_batch_size", "eval_chunk")


def check_config(cfg):
    require_positive(cfg, *POSITIVE_FIELDS)
    if cfg.conv_widths is not None and (len(cfg.conv_widths) != 5 or min(cfg.conv_widths) < 1):
        raise ConfigError(f"--conv-widths takes five positive channel counts, got {cfg.conv_widths}")
    if cfg.warmup_epochs < 0 or cfg.warmup_epochs > cfg.epochs:
        raise ConfigError(f"--warmup-epochs must be between 0 and --epochs ({cfg.epochs}), got {cfg.warmup_epochs}")
    if cfg.init != "xavier" and cfg.backbone != "cnn-f":
        raise ConfigError(f"--init {cfg.init} is for cnn-f; {cfg.backbone} is initialised by torchvision or its "
                          "--backbone-weights")
    if cfg.from_tf and cfg.resume:
        raise ConfigError("a run made with --from-tf is evaluated, not trained: it cannot be resumed")


def build_model(cfg, usernum):
    """The DVBPR network of a config: its backbone, a head to K and theta for `usernum` users."""
    backbone = build_backbone(cfg.backbone, cfg.image_size, cfg.backbone_weights, fc_width=cfg.fc_width,
                              dropout=cfg.dropout, widths=cfg.conv_widths, init=cfg.init)
    return DVBPR(backbone, usernum, cfg.k, cfg.theta_init)


def epoch_end_step(epoch, num_interactions, batch_size):
    """Step at which epoch `epoch` ends: the first with step*batch >= epoch*N (at least one step per epoch)."""
    return max(-(-epoch * num_interactions // batch_size), epoch)


def check_finite(loss, where):
    if not math.isfinite(loss):
        raise TrainingDiverged(f"the loss became {loss} {where}; lower --lr (the last checkpoint before it is "
                               "kept, and --resume continues from there)")


def learning_rate(cfg, step, num_interactions):
    """The learning rate of global step `step` (counted from 0) under cfg.lr_schedule."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    total = epoch_end_step(cfg.epochs, num_interactions, cfg.batch_size)
    warmup = cfg.warmup_epochs * num_interactions / cfg.batch_size
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))


def train_steps(model, optimizer, images, triplets, cfg, ranks, desc="train", lr_at=None):
    """One Adam step per global batch of `triplets` (users, positives, negatives: CPU LongTensors), of which this
    rank takes its share; returns the mean over the steps of the global batch's loss. `lr_at(i)`, if given, sets
    the learning rate of the i-th step of this call.

    The loss is read back only every few steps, so that CUDA runs ahead of the progress bar.
    """
    model.train()
    device, share = ranks.device, ranks.share(cfg.batch_size)
    users, positives, negatives = triplets
    num_steps = len(users) // cfg.batch_size

    def batches():
        for step in range(num_steps):
            rows = slice(step * cfg.batch_size + share.start, step * cfg.batch_size + share.stop)
            yield torch.cat([positives[rows], negatives[rows]]), users[rows]

    total = torch.zeros((), device=device)
    with tqdm(total=num_steps * cfg.batch_size, unit="triplet", unit_scale=True, desc=desc, leave=False,
              disable=not ranks.is_main) as bar:
        for step, ((_, batch_users), pair_images) in enumerate(images.stream(batches())):
            batch_users = batch_users.to(device)
            if lr_at is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step)
            with autocast(device, cfg.bf16):
                x_uij = model(batch_users, *pair_images.chunk(2))
            loss = unwrap(model).objective(x_uij, batch_users, cfg.lambda_w, cfg.lambda_theta, ranks.world_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            bar.update(cfg.batch_size)
            if (step + 1) % 10 == 0 or step + 1 == num_steps:
                mean = total.item() / (step + 1)
                check_finite(mean, f"in {desc}, step {step + 1}")
                bar.set_postfix(loss=f"{mean:.4g}")
    return ranks.mean(total).item() / max(num_steps, 1)


def evaluate(model, dataset, images, cfg, ranks):
    """(validation AUC dict, test AUC dict, item embeddings) under cfg.protocol, sharded over the ranks."""
    items = embed_items(model, images, cfg.eval_batch_size, ranks, cfg.bf16)
    theta = model.theta.detach()
    score = lambda users: theta[users] @ items.T
    options = dict(protocol=cfg.protocol, ties=cfg.ties, device=ranks.device, chunk_users=cfg.eval_chunk,
                   cold_threshold=cfg.cold_threshold, users=torch.tensor(ranks.shard(dataset.usernum)),
                   combine=ranks.gather)
    valid = evaluate_auc(dataset, score, split="validation", seed=cfg.seed, **options)
    test = evaluate_auc(dataset, score, split="test", seed=cfg.seed + 1, **options)
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


def model_snapshot(model, cfg, record):
    return {"stage": "dvbpr", "model": model.state_dict(), "config": dataclasses.asdict(cfg),
            "epoch": record["epoch"], "step": record["step"], "metrics": record}


def save_embeddings(path, theta, items, config, epoch, step):
    """embeddings.pt: theta and every item's Phi(X_i) (the original's UI_*.npy), float32 on CPU."""
    save_checkpoint(path, {"stage": "dvbpr-embeddings", "theta": theta.detach().float().cpu(),
                           "items": items.float().cpu(), "config": config, "epoch": epoch, "step": step})


def save_epoch_files(out, model, items, cfg, record):
    """The original's per-epoch outputs: a model checkpoint (the last few kept) and UI_<K>_<step>.npy, an object
    array [theta, item embeddings] as the original's np.save([U, I]) wrote it."""
    save_checkpoint(out / f"DVBPR_auc_{cfg.k}_{record['step']}.pt", model_snapshot(model, cfg, record))
    kept = sorted(out.glob(f"DVBPR_auc_{cfg.k}_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    for old in kept[:-KEPT_EPOCH_CHECKPOINTS]:
        old.unlink()
    ui = np.empty(2, dtype=object)
    ui[0], ui[1] = model.theta.detach().cpu().numpy(), items.cpu().numpy()
    np.save(out / f"UI_{cfg.k}_{record['step']}.npy", ui, allow_pickle=True)


def save_epoch(out, cfg, model, optimizer, sampler, items, progress):
    """Everything an epoch leaves on disk, the checkpoint last: best.pt and embeddings.pt when this epoch is the
    kept one (see keep_record), the original's per-epoch files if asked, then checkpoint.pt (so a crash at any point
    resumes correctly)."""
    record = progress["history"][-1]
    if progress["kept"] is record:
        save_checkpoint(out / "best.pt", model_snapshot(model, cfg, record))
        save_embeddings(out / "embeddings.pt", model.theta, items, dataclasses.asdict(cfg), record["epoch"],
                        record["step"])
    if cfg.save_every_epoch:
        save_epoch_files(out, model, items, cfg, record)
    save_checkpoint(out / "checkpoint.pt", {
        "stage": "dvbpr", "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "config": dataclasses.asdict(cfg), "epoch": record["epoch"], "step": record["step"],
        "sampler": sampler.state_dict(), "metrics": {"history": progress["history"], "kept": progress["kept"]},
        "seconds": progress["seconds"]})


def start_or_resume(cfg, out, model, optimizer, sampler, ranks):
    """The run's progress so far: that of --out's checkpoint.pt when resuming (loaded into the model, optimizer
    and sampler), else nothing done."""
    if not cfg.resume:
        if (out / "checkpoint.pt").exists():
            ranks.print(f"starting afresh in {out} (pass --resume to continue the run there)")
        return dict(epoch=0, step=0, history=[], kept=None, seconds=0.0)
    checkpoint = load_checkpoint(out / "checkpoint.pt", "dvbpr", fields=("model", "optimizer", "sampler", "epoch",
                                                                          "step", "seconds", "metrics"))
    model.load_state_dict(checkpoint["model"])
    restore_optimizer(optimizer, checkpoint["optimizer"], cfg.lr)
    sampler.load_state_dict(checkpoint["sampler"])
    ranks.print(f"resuming {out} after epoch {checkpoint['epoch']} (step {checkpoint['step']})")
    metrics = checkpoint["metrics"]
    kept = metrics["kept"] if "kept" in metrics else metrics["best"]  # "best" before --select existed
    return dict(epoch=checkpoint["epoch"], step=checkpoint["step"], seconds=checkpoint["seconds"],
                history=metrics["history"], kept=kept)


def open_data(cfg, ranks, check=None):
    """(dataset, embedded, image store) of the run; rank 0 builds the catalogue and the image cache first.
    `check(dataset)`, if given, runs before the image cache is built."""
    with ranks.main_first():
        dataset, embedded = open_dataset(cfg.dataset, cfg.cache_dir)
        if check:
            check(dataset)
        cache = image_cache(dataset, cfg.image_size, cfg.resize_filter, strict=cfg.strict_images,
                            device=ranks.device)
    return dataset, embedded, ImageStore(cache, ranks.device)


def describe_data(dataset):
    return (f"{dataset.name}: {dataset.usernum} users, {dataset.itemnum} items, {dataset.num_train_interactions} "
            "training interactions")


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
    dataset, embedded, images = open_data(cfg, ranks)
    ranks.print(f"DVBPR on {describe_data(dataset)}; preset {cfg.preset}, K={cfg.k}, {cfg.backbone} at "
                f"{cfg.image_size} px, {cfg.epochs} epochs, {cfg.protocol} AUC; device {ranks.describe()}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ranks.share(cfg.batch_size)  # fails early if the batch does not split over the ranks
    seed_everything(cfg.seed)
    model = build_model(cfg, dataset.usernum).to(device, memory_format=memory_format(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, **fused_adam_kwargs(device))
    sampler = TripletSampler(dataset, cfg.seed)
    progress = start_or_resume(cfg, out, model, optimizer, sampler, ranks)
    network = ranks.wrap(model)
    runlog = rewrite_logs(out, progress["history"]) if ranks.is_main else None
    seconds_before = progress["seconds"]
    for epoch in range(progress["epoch"] + 1, cfg.epochs + 1):
        record = train_epoch(epoch, network, optimizer, sampler, dataset, images, cfg, ranks, progress)
        progress["seconds"] = seconds_before + time.time() - started
        if ranks.is_main:
            save_epoch(out, cfg, model, optimizer, sampler, record.pop("items"), progress)
            with open(out / "DVBPR.log", "a") as log:
                log.write(log_line(record) + "\n")
            runlog.record(**record)
            tqdm.write(f"{log_line(record)}  cold items: test {fmt(record['test_auc_cold'])} "
                       f"valid {fmt(record['valid_auc_cold'])}  loss {record['loss']:.4g}")
    results = results_summary(cfg, dataset, embedded, progress["kept"], seconds_before + time.time() - started,
                              ranks)
    if ranks.is_main:
        write_json(out / "results.json", results)
        print(f"results ({cfg.select} epoch): " + json.dumps(results))
    ranks.barrier()
    return results


def train_epoch(epoch, network, optimizer, sampler, dataset, images, cfg, ranks, progress):
    """Train one epoch, evaluate, and add its record to `progress` (the record carries the item embeddings
    under "items" until they are saved)."""
    epoch_started = time.time()
    torch.manual_seed(ranks.seed(cfg.seed, epoch))
    last_step = epoch_end_step(epoch, dataset.num_train_interactions, cfg.batch_size)
    first_step = progress["step"]
    triplets = sampler.sample((last_step - first_step) * cfg.batch_size)
    lr_at = lambda step: learning_rate(cfg, first_step + step, dataset.num_train_interactions)
    loss = train_steps(network, optimizer, images, [torch.from_numpy(a) for a in triplets], cfg, ranks,
                       desc=f"epoch {epoch}/{cfg.epochs}", lr_at=lr_at)
    triplets_per_s = len(triplets[0]) / (time.time() - epoch_started)
    check_finite(loss, f"in epoch {epoch}")
    valid, test, items = evaluate(unwrap(network), dataset, images, cfg, ranks)
    record = dict(epoch=epoch, step=last_step, loss=loss, valid_auc=valid["all"], valid_auc_cold=valid["cold"],
                  test_auc=test["all"], test_auc_cold=test["cold"], protocol=cfg.protocol,
                  lr=optimizer.param_groups[0]["lr"], triplets_per_s=round(triplets_per_s, 1),
                  seconds=round(time.time() - epoch_started, 3))
    progress.update(epoch=epoch, step=last_step)
    progress["history"].append(record)
    progress["kept"] = keep_record(cfg.select, progress["kept"], record)
    return {**record, "items": items}


def keep_record(select, kept, record):
    """The epoch record to keep after `record`: it, with select "last" or when its validation AUC beats the kept
    one's; else the kept one."""
    if select == "last" or kept is None or record["valid_auc"] > kept["valid_auc"]:
        return record
    return kept


def results_summary(cfg, dataset, embedded, kept, seconds, ranks):
    """results.json: the settings and the AUCs of the kept epoch (`selected` says how it was chosen)."""
    return dict(preset=cfg.preset, protocol=cfg.protocol, ties=tie_rule(cfg.protocol, cfg.ties),
                dataset=dataset.name, dataset_path=str(dataset.path), embedded=embedded, epochs=cfg.epochs, k=cfg.k,
                backbone=cfg.backbone, image_size=cfg.image_size, batch_size=cfg.batch_size, selected=cfg.select,
                epoch=kept["epoch"], step=kept["step"], valid_auc=kept["valid_auc"],
                valid_auc_cold=kept["valid_auc_cold"], test_auc=kept["test_auc"], test_auc_cold=kept["test_auc_cold"],
                wall_seconds=round(seconds, 1), device=ranks.describe())
