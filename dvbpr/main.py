"""Train DVBPR (paper Sec. III-A/B) with BPR on (user, positive, negative) triplets and evaluate it by AUC.

    python dvbpr/main.py                      # --preset paper: K=50, exact All/Cold AUC, best.pt = best validation
    python dvbpr/main.py --preset original    # K=100, the original code's sampled-100 AUC, a checkpoint every epoch
    python dvbpr/main.py --out runs/dvbpr --resume
    torchrun --nproc_per_node=N dvbpr/main.py     # N GPUs; --batch-size stays the global batch (see the README)

Without the AmazonFashion file the run falls back to the embedded catalogue with demo-sized settings (printed
first; explicit flags win). Everything a run writes goes to --out: DVBPR.log (the original's lines), metrics.jsonl,
checkpoint.pt (latest, for --resume), best.pt and embeddings.pt (theta and all item embeddings of the best
validation epoch), results.json; under --preset original also DVBPR_auc_<K>_<step>.pt and UI_<K>_<step>.npy.

Epochs: an epoch is as many triplets as training interactions N; epoch e ends at step ceil(e*N/batch), the
boundary the original used (so its pretrained step 39728 is epoch 19 here too). The original's loop bound
(step*128 <= 20*N+1) stops just short of the 20th boundary, so it evaluated and saved 19 times and discarded the
rest of its 20th epoch. --preset original therefore runs 19 epochs, which gives the same 19 evaluations and
checkpoints; --preset paper runs the 20 epochs that the original's settings state.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataclasses
import json
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from common.catalogue import open_dataset
from common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, seed_everything
from common.config import apply_defaults, parse_config
from common.data import DatasetError
from common.device import autocast, fused_adam_kwargs, memory_format, pick_device
from common.distributed import Ranks, setup, teardown, unwrap
from common.images import ImageStore, image_cache
from common.metrics import evaluate_auc
from common.runlog import RunLog, run_dir
from dvbpr.model import DVBPR
from dvbpr.run import save_embeddings


@dataclass
class DVBPRConfig:
    preset: str = field(default="paper", metadata={"help": "paper: K=50, exact All/Cold AUC, 20 epochs; "
                                                           "original: K=100, sampled-100 AUC, 19 evaluated epochs, "
                                                           "a checkpoint every epoch"})
    dataset: str | None = field(default=None, metadata={"help": "dataset .npy in the original format, or "
                                                                "'embedded'; None: data/AmazonFashion6Img"
                                                                "Partitioned.npy, else the embedded catalogue"})
    out: str | None = field(default=None, metadata={"help": "run directory; None: runs/dvbpr"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out from its checkpoint.pt; "
                                                          "flags given now override the saved settings"})
    k: int = field(default=50, metadata={"help": "latent dimensions K of theta_u and Phi(X_i)"})
    image_size: int = field(default=224, metadata={"help": "side of the CNN input in pixels"})
    resize_filter: str = field(default="nearest", metadata={"help": "PIL filter resizing the images "
                                                                    "(the original's Pillow default was nearest)"})
    fc_width: int = field(default=4096, metadata={"help": "width of fc1 and fc2 (smaller for quick CPU runs)"})
    dropout: float = field(default=0.5, metadata={"help": "dropout probability on fc1 and fc2"})
    lambda_w: float = field(default=0.001, metadata={"help": "weight decay on conv and fc weights "
                                                             "(lambda_w/2 ||W||^2)"})
    lambda_theta: float = field(default=1.0, metadata={"help": "regulariser of the batch's theta_u "
                                                               "(lambda_theta/2 ||theta_u||^2)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate"})
    batch_size: int = field(default=128, metadata={"help": "triplets per step"})
    epochs: int = field(default=20, metadata={"help": "epochs of N triplets, N = number of training interactions"})
    protocol: str = field(default="exact", metadata={"help": "AUC protocol", "choices": ["exact", "sampled100"]})
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


PRESETS = {
    "paper": dict(k=50, protocol="exact", epochs=20, save_every_epoch=False),
    "original": dict(k=100, protocol="sampled100", epochs=19, save_every_epoch=True),
}
# The embedded catalogue on a CPU, in about 3 minutes on 2 cores: 32 px, fc1 and fc2 1024 wide (at 32 px the
# 4096-wide fc2 is most of the work), 30 epochs of ~70 steps; a learning rate above the original's 1e-4 makes up
# for so few steps (one AmazonFashion epoch has ~2,100).
DEMO_SETTINGS = dict(image_size=32, fc_width=1024, epochs=30, lr=1e-3)
KEPT_EPOCH_CHECKPOINTS = 5  # as TF's Saver kept


class TripletSampler:
    """Triplets as the original drew them: u uniform over users, i uniform over u's training items, j uniform over
    all items, redrawn while it is one of u's training items (validation and test items can be negatives).

    Vectorised over a whole epoch. The generator's state goes into the checkpoint, so a resumed run draws the
    triplets the uninterrupted run would have drawn.
    """

    def __init__(self, dataset, seed):
        self.indptr, self.items = dataset.train_csr()
        self.usernum, self.itemnum = dataset.usernum, dataset.itemnum
        users = np.repeat(np.arange(self.usernum), np.diff(self.indptr))
        self.train_keys = np.unique(users * self.itemnum + self.items)
        self._check_samplable()
        self.rng = np.random.default_rng(seed)

    def _check_samplable(self):
        distinct = np.bincount(self.train_keys // self.itemnum, minlength=self.usernum)
        if (distinct == 0).any():
            raise DatasetError(f"{(distinct == 0).sum()} users have no training item (e.g. user "
                               f"{np.flatnonzero(distinct == 0)[0]}); every user needs one to draw a positive")
        if (distinct >= self.itemnum).any():
            raise DatasetError(f"user {np.flatnonzero(distinct >= self.itemnum)[0]} has every item in training, "
                               "so no negative can be drawn")

    def is_training_pair(self, users, items):
        keys = users * self.itemnum + items
        found = np.searchsorted(self.train_keys, keys).clip(max=len(self.train_keys) - 1)
        return self.train_keys[found] == keys

    def sample(self, n):
        users = self.rng.integers(self.usernum, size=n)
        starts = self.indptr[users]
        positives = self.items[starts + self.rng.integers(0, self.indptr[users + 1] - starts)]
        negatives = self.rng.integers(self.itemnum, size=n)
        redraw = self.is_training_pair(users, negatives)
        while redraw.any():
            negatives[redraw] = self.rng.integers(self.itemnum, size=redraw.sum())
            redraw[redraw] = self.is_training_pair(users[redraw], negatives[redraw])
        return users, positives, negatives

    def state_dict(self):
        return self.rng.bit_generator.state

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state


def epoch_end_step(epoch, num_interactions, batch_size):
    """Step at which epoch `epoch` ends: the first with step*batch >= epoch*N (at least one step per epoch)."""
    return max(-(-epoch * num_interactions // batch_size), epoch)


def train_steps(model, optimizer, images, triplets, cfg, ranks, desc="train"):
    """One Adam step per global batch of `triplets` (users, positives, negatives: CPU LongTensors), of which this
    rank takes its share; returns the mean over the steps of the global batch's loss.

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
            with autocast(device, cfg.bf16):
                x_uij = model(batch_users, *pair_images.chunk(2))
            loss = unwrap(model).objective(x_uij, batch_users, cfg.lambda_w, cfg.lambda_theta, ranks.world_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            bar.update(cfg.batch_size)
            if (step + 1) % 10 == 0 or step + 1 == num_steps:
                bar.set_postfix(loss=f"{total.item() / (step + 1):.4g}")
    return ranks.mean(total).item() / max(num_steps, 1)


@torch.no_grad()
def item_embeddings(model, images, batch_size, ranks=None, bf16=True):
    """Phi(X_i) of every item, float32 [itemnum, K] on every rank, in eval mode (no dropout); each rank embeds
    its shard of the items (default: one process, on the model's device)."""
    ranks = ranks or Ranks(device=model.theta.device)
    model.eval()
    mine = ranks.shard(len(images))
    batches = ((torch.arange(start, min(start + batch_size, mine.stop)),)
               for start in range(mine.start, mine.stop, batch_size))
    embeddings = [torch.empty(0, model.cnn.fc3.out_features, device=ranks.device)]
    for _, batch_images in tqdm(images.stream(batches), total=-(-len(mine) // batch_size), desc="item embeddings",
                                unit="batch", leave=False, disable=not ranks.is_main):
        with autocast(ranks.device, bf16):
            embeddings.append(model.cnn(batch_images).float())
    model.train()
    return ranks.gather(torch.cat(embeddings))


def evaluate(model, dataset, images, cfg, ranks):
    """(validation AUC dict, test AUC dict, item embeddings) under cfg.protocol, sharded over the ranks."""
    items = item_embeddings(model, images, cfg.eval_batch_size, ranks, cfg.bf16)
    theta = model.theta.detach()
    score = lambda users: theta[users] @ items.T
    options = dict(protocol=cfg.protocol, device=ranks.device, chunk_users=cfg.eval_chunk,
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


def resolve_config(argv):
    """Config from the command line; with --resume, the saved run's settings overridden by the flags given now."""
    cfg, explicit = parse_config(DVBPRConfig, argv, PRESETS, description=__doc__.split("\n")[0])
    checkpoint = None
    if cfg.resume:
        checkpoint = load_checkpoint(run_dir(cfg.out, "dvbpr") / "checkpoint.pt")
        saved = {name: value for name, value in checkpoint["config"].items() if name not in explicit}
        cfg = dataclasses.replace(cfg, **saved)
    for name in ("k", "image_size", "fc_width", "batch_size", "epochs"):
        if getattr(cfg, name) < 1:
            raise SystemExit(f"dvbpr: --{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    return cfg, explicit, checkpoint


def open_run_dataset(cfg, explicit, resuming, ranks):
    """The dataset of the run; a fresh run on the embedded catalogue takes the demo settings not given explicitly."""
    dataset, embedded = open_dataset(cfg.dataset)
    if embedded and not resuming:
        changed = apply_defaults(cfg, DEMO_SETTINGS, explicit)
        if changed:
            ranks.print("embedded catalogue: demo settings " + ", ".join(f"{k}={v}" for k, v in changed.items()))
    cfg.dataset = str(dataset.path)  # a resumed run reopens this very file
    return dataset, embedded


def save_epoch(out, cfg, model, optimizer, sampler, items, progress):
    """Everything an epoch leaves on disk, the checkpoint last: best.pt and embeddings.pt when validation improved,
    the original's per-epoch files if asked, then checkpoint.pt (so a crash at any point resumes correctly)."""
    record = progress["history"][-1]
    if progress["best"] is record:
        save_checkpoint(out / "best.pt", model_snapshot(model, cfg, record))
        save_embeddings(out / "embeddings.pt", model.theta, items, dataclasses.asdict(cfg), record["epoch"],
                        record["step"])
    if cfg.save_every_epoch:
        save_epoch_files(out, model, items, cfg, record)
    save_checkpoint(out / "checkpoint.pt", {
        "stage": "dvbpr", "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "config": dataclasses.asdict(cfg), "epoch": record["epoch"], "step": record["step"],
        "sampler": sampler.state_dict(), "metrics": {"history": progress["history"], "best": progress["best"]},
        "seconds": progress["seconds"]})


def train(cfg, explicit, checkpoint=None, ranks=None):
    """Train and evaluate as configured (resuming from `checkpoint` if given); returns the results dict that is
    also written to results.json. Under torchrun every rank calls this with its `ranks` (default: one process on
    cfg.device); rank 0 writes the files.

    Randomness: the initialisation and the triplets come from cfg.seed alone, so every rank has the same ones;
    dropout is reseeded at each epoch from (seed, epoch, rank), so a resumed run, under any number of ranks,
    continues as the uninterrupted one would have.
    """
    started = time.time()
    ranks = ranks or Ranks(device=pick_device(cfg.device))
    out = run_dir(cfg.out, "dvbpr")
    device = ranks.device
    with ranks.main_first():  # rank 0 builds the catalogue and the image cache, the others then open them
        dataset, embedded = open_run_dataset(cfg, explicit, checkpoint is not None, ranks)
        cache = image_cache(dataset, cfg.image_size, cfg.resize_filter, strict=cfg.strict_images, device=device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ranks.share(cfg.batch_size)  # fails early if the batch does not split over the ranks
    ranks.print(f"DVBPR on {dataset.name}: {dataset.usernum} users, {dataset.itemnum} items, "
                f"{dataset.num_train_interactions} training interactions; preset {cfg.preset}, K={cfg.k}, "
                f"{cfg.image_size} px, {cfg.epochs} epochs, {cfg.protocol} AUC; device {ranks.describe()}; out {out}")

    images = ImageStore(cache, device)
    seed_everything(cfg.seed)
    model = DVBPR(dataset.usernum, cfg.k, cfg.image_size, cfg.dropout, cfg.fc_width)
    model = model.to(device, memory_format=memory_format(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, **fused_adam_kwargs(device))
    sampler = TripletSampler(dataset, cfg.seed)
    progress = dict(epoch=0, step=0, history=[], best=None, seconds=0.0)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        sampler.load_state_dict(checkpoint["sampler"])
        progress = dict(epoch=checkpoint["epoch"], step=checkpoint["step"], seconds=checkpoint["seconds"],
                        **checkpoint["metrics"])
        ranks.print(f"resuming {out} after epoch {progress['epoch']} (step {progress['step']})")
    elif (out / "checkpoint.pt").exists():
        ranks.print(f"starting afresh in {out} (pass --resume to continue the run there)")
    network = ranks.wrap(model)
    runlog = rewrite_logs(out, progress["history"]) if ranks.is_main else None
    seconds_before = progress["seconds"]

    for epoch in range(progress["epoch"] + 1, cfg.epochs + 1):
        epoch_started = time.time()
        torch.manual_seed(ranks.seed(cfg.seed, epoch))
        last_step = epoch_end_step(epoch, dataset.num_train_interactions, cfg.batch_size)
        triplets = sampler.sample((last_step - progress["step"]) * cfg.batch_size)
        loss = train_steps(network, optimizer, images, [torch.from_numpy(a) for a in triplets], cfg, ranks,
                           desc=f"epoch {epoch}/{cfg.epochs}")
        valid, test, items = evaluate(model, dataset, images, cfg, ranks)
        record = dict(epoch=epoch, step=last_step, loss=loss, valid_auc=valid["all"], valid_auc_cold=valid["cold"],
                      test_auc=test["all"], test_auc_cold=test["cold"], protocol=cfg.protocol,
                      seconds=round(time.time() - epoch_started, 3))
        progress.update(epoch=epoch, step=last_step, seconds=seconds_before + time.time() - started)
        progress["history"].append(record)
        if progress["best"] is None or record["valid_auc"] > progress["best"]["valid_auc"]:
            progress["best"] = record
        if ranks.is_main:
            save_epoch(out, cfg, model, optimizer, sampler, items, progress)
            with open(out / "DVBPR.log", "a") as log:
                log.write(log_line(record) + "\n")
            runlog.record(**record)
            tqdm.write(f"{log_line(record)}  cold items: test {fmt(record['test_auc_cold'])} "
                       f"valid {fmt(record['valid_auc_cold'])}  loss {loss:.4g}")
    results = results_summary(cfg, dataset, embedded, progress["best"], seconds_before + time.time() - started,
                              ranks)
    if ranks.is_main:
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print("results (best validation epoch): " + json.dumps(results))
    ranks.barrier()
    return results


def results_summary(cfg, dataset, embedded, best, seconds, ranks):
    return dict(preset=cfg.preset, protocol=cfg.protocol, dataset=dataset.name, dataset_path=str(dataset.path),
                embedded=embedded, epochs=cfg.epochs, k=cfg.k, image_size=cfg.image_size, batch_size=cfg.batch_size,
                best_epoch=best["epoch"], best_step=best["step"], valid_auc=best["valid_auc"],
                valid_auc_cold=best["valid_auc_cold"], test_auc=best["test_auc"],
                test_auc_cold=best["test_auc_cold"], wall_seconds=round(seconds, 1), device=ranks.describe())


def main(argv=None):
    try:
        cfg, explicit, checkpoint = resolve_config(argv)
        ranks = setup(cfg.device)
        try:
            return train(cfg, explicit, checkpoint, ranks)
        finally:
            teardown()
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"dvbpr: {exc}") from exc


if __name__ == "__main__":
    main()
