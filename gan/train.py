"""Training of the conditional generator that --generator names (gan/generators.py), by default the paper's
conditional LSGAN (paper Sec. III-C; GAN/main.py and GAN/model.py of the original repository).

Each iteration draws `batch_size` items uniformly with replacement from the items that have a category and a z,
from a generator seeded by (seed, iteration), so that a resumed run, or one under torchrun with any number of
ranks (each keeping its share of the global batch), sees the same batches, and hands them to the generator's
train_step. The LSGAN's: D takes one Adam step on the real batch and the fake batch (two separate calls, so each
gets its own BN statistics), then G takes one Adam step with the same z and the real batch's labels. An epoch is
floor(items / batch_size) iterations, as in the original.

Departures from the original, none of which changes what is optimised:
- The fake batch of the D step is reused for the G step instead of being generated again: G has not changed in
  between and BN uses batch statistics, so the images are identical; G's running statistics are updated once
  per iteration instead of twice.
- The logged losses come from the training forward passes; the original evaluated them again in BN inference mode.
- The training grids use a fixed z and fixed labels (categories in turn) and G in inference mode; the original
  used the labels of its first batch.
- Grids map [-1, 1] to [0, 1] with a fixed range; the original's scipy.misc.imsave min-max rescaled each grid.

On CUDA the forward passes run under bf16 autocast (`--bf16`, on by default there) with channels_last images
and fused Adam. bf16 was chosen for speed and is not yet measured against fp32 for sample quality: compare the
grids and the condition consistency of a `--no-bf16` run before relying on it.
"""
import math
import time
from dataclasses import asdict

import torch
from tqdm import tqdm

from common.checkpoint import check_same_data, load_checkpoint, restore_optimizer, save_checkpoint
from common.classifier import train_or_load_classifier
from common.datasets import open_dataset
from common.device import pick_device
from common.distributed import Ranks
from common.errors import CheckpointError, ConfigError, DatasetError, TrainingDiverged
from common.figures import save_grid
from common.images import image_store
from common.runlog import RunLog, run_dir
from common.safe_pickle import describe_value
from common.seeding import derived_seed, restore_torch_rng_state, seed_everything, torch_rng_state
from gan.config import ARCHITECTURE_FIELDS, GRID_SIZE, GANConfig, check_config, with_generator_latent
from gan.consistency import format_consistency, measure_consistency
from gan.generators import build_generator
from gan.model import generate, sample_z

LOG_EVERY = 10          # iterations between loss read-outs (each one waits for the GPU)


def labelled_items(dataset):
    """Ids of the items that have a category; the conditional GAN trains on these only."""
    items = torch.as_tensor(dataset.item_category).ge(0).nonzero().squeeze(1)
    if len(items) == 0:
        raise DatasetError(f"no item of {dataset.name} has a category (`c`); the conditional GAN needs them")
    return items


def training_batch(cfg, items, step):
    """Item ids and z of iteration `step`, drawn from (seed, step) alone: the same on every rank, and the same
    after a resume."""
    rng = torch.Generator().manual_seed(derived_seed(cfg.seed, step))
    ids = items[torch.randint(len(items), (cfg.batch_size,), generator=rng)]
    return ids, sample_z(cfg.batch_size, cfg.z_dim, cfg.z_distribution, "cpu", rng)


def check_architecture(cfg, saved_config):
    saved = {name: saved_config.get(name, getattr(GANConfig(), name)) for name in ARCHITECTURE_FIELDS}
    different = {name: (saved[name], getattr(cfg, name)) for name in ARCHITECTURE_FIELDS
                 if saved[name] != getattr(cfg, name)}
    if different:
        raise ConfigError("cannot resume: the checkpoint was trained with different settings (saved, now): "
                          + ", ".join(f"{name} {old!r} vs {new!r}" for name, (old, new) in different.items()))


class GANTraining:
    """The generator (--generator, with its nets), their optimisers and fixed sample codes of a run, and its
    checkpoint (whose epoch is None when `iterations_per_epoch` is: a run converted from a TensorFlow checkpoint)."""

    def __init__(self, cfg, num_categories, device, iterations_per_epoch, dataset_digest=None):
        self.cfg, self.num_categories, self.iterations_per_epoch = cfg, num_categories, iterations_per_epoch
        self.device = device
        self.dataset_digest = dataset_digest   # of the data it trains on (Dataset.digest), checked on resume
        self.model = build_generator(cfg, num_categories, device)
        self.optimizers = self.model.optimizers(cfg, device)
        self.sample_z = sample_z(GRID_SIZE, cfg.z_dim, cfg.z_distribution, device)
        self.sample_labels = torch.arange(GRID_SIZE, device=device) % num_categories
        self.step = 0

    def learning_rate(self, step):
        """The learning rate of iteration `step`: --lr, or with --lr-decay-from falling linearly after that epoch's
        end to lr / n at the last of the n iterations left."""
        if self.cfg.lr_decay_from is None:
            return self.cfg.lr
        start, end = (epochs * self.iterations_per_epoch for epochs in (self.cfg.lr_decay_from, self.cfg.epochs))
        if step > end:
            raise ConfigError(f"--lr-decay-from decays the learning rate over --epochs {self.cfg.epochs}: iteration "
                              f"{step} is past them")
        return self.cfg.lr * min(1.0, (end - step + 1) / (end - start))

    def train_step(self, nets, real, labels, z, step):
        """Iteration `step` of training, at its learning rate; the generator's losses."""
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = self.learning_rate(step)
        return self.model.train_step(nets, self.optimizers, real, labels, z, self.cfg.bf16)

    def resume(self, path, device, dataset):
        checkpoint = load_checkpoint(path, "gan", fields=("model", "optimizer", "config", "step", "sample_z",
                                                          "sample_labels"))
        check_same_data(checkpoint, dataset, path)
        check_architecture(self.cfg, checkpoint["config"])
        self.model.load_saved(checkpoint["model"], path)
        optimizers = checkpoint["optimizer"]
        if not (isinstance(optimizers, dict) and set(optimizers) == set(self.model.nets)):
            raise CheckpointError(f"{path}: its optimiser states are {describe_value(optimizers)}, not those of the "
                                  f"generator's nets {', '.join(self.model.nets)}")
        for name in self.model.nets:
            restore_optimizer(self.optimizers[name], optimizers[name], self.cfg.lr)
        self.sample_z = checkpoint["sample_z"].to(device)
        self.sample_labels = checkpoint["sample_labels"].to(device)
        self.step = checkpoint["step"]
        if "rng_state" in checkpoint:   # absent from checkpoints written before it was kept
            restore_torch_rng_state(checkpoint["rng_state"], device, path)

    def save(self, path, metrics=None, rng_state=None):
        """The checkpoint, with torch's generators as they are now unless `rng_state` says how training left them."""
        save_checkpoint(path, {
            "stage": "gan",
            "model": {name: getattr(self.model, name).state_dict() for name in self.model.saved_nets},
            "optimizer": {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()},
            "config": asdict(self.cfg), "num_categories": self.num_categories, "dataset_digest": self.dataset_digest,
            "epoch": self.step // self.iterations_per_epoch if self.iterations_per_epoch else None,
            "step": self.step, "metrics": metrics or {},
            "sample_z": self.sample_z, "sample_labels": self.sample_labels,
            "rng_state": rng_state or torch_rng_state(self.device)})


def train(cfg, ranks=None):
    """Train the GAN on cfg.dataset, writing checkpoint.pt, samples/, metrics.jsonl and classifier.pt into cfg.out
    (rank 0; default runs/gan). `ranks`: this process's place under torchrun (default: one process on
    cfg.device). Returns the condition consistency on rank 0, None on the others."""
    check_config(cfg)
    cfg = with_generator_latent(cfg)
    ranks = ranks or Ranks(device=pick_device(cfg.device))
    device = ranks.device
    with ranks.main_first():
        out_dir = run_dir(cfg.out, "gan")
        dataset, _ = open_dataset(cfg.dataset, cfg.cache_dir)
        store = image_store(dataset, cfg.image_size, cfg.resize_filter, device=device)
    seed_everything(cfg.seed)
    items = labelled_items(dataset)
    iterations_per_epoch = len(items) // cfg.batch_size
    if iterations_per_epoch == 0:
        raise ConfigError(f"batch size {cfg.batch_size} is larger than the {len(items)} items with a category")
    total_iterations = cfg.epochs * iterations_per_epoch
    share = ranks.share(cfg.batch_size)
    run = GANTraining(cfg, dataset.num_categories, device, iterations_per_epoch, dataset.digest)
    if cfg.resume:
        run.resume(out_dir / "checkpoint.pt", device, dataset)

    def batches(first):
        for iteration in range(first, total_iterations + 1):
            ids, z = training_batch(cfg, items, iteration)
            yield ids[share], z[share], iteration

    ranks.print(f"training the GAN on {ranks.describe()}: {len(items)} items, {dataset.num_categories} categories, "
                f"{cfg.image_size} px, {iterations_per_epoch} iterations per epoch, "
                f"iterations {run.step} -> {total_iterations}")
    train_iterations(run, store, batches(run.step + 1), torch.as_tensor(dataset.item_category, device=device),
                     total_iterations, out_dir, ranks)
    if not ranks.is_main:
        return None
    run.model.finish_training(store, items, torch.as_tensor(dataset.item_category)[items])
    trained_rng_state = torch_rng_state(device)   # what a resume continues from, before the measurements draw
    classifier = train_or_load_classifier(dataset, store, out_dir / "classifier.pt")
    consistency = measure_consistency(run.model, classifier, dataset.num_categories, cfg.consistency_samples,
                                      device, cfg.bf16, cfg.seed)
    print(format_consistency(consistency))
    RunLog(out_dir, resume=True).record(step=run.step, condition_consistency=consistency)
    run.save(out_dir / "checkpoint.pt", {"condition_consistency": consistency}, trained_rng_state)
    return consistency


def train_iterations(run, store, batches, item_labels, total_iterations, out_dir, ranks):
    """The training loop: losses logged every LOG_EVERY iterations, sample grids and checkpoints as configured."""
    cfg, device = run.cfg, ranks.device
    log = RunLog(out_dir, resume=cfg.resume) if ranks.is_main else None
    nets = {name: ranks.wrap(getattr(run.model, name).train()) for name in run.model.nets}
    progress = tqdm(initial=run.step, total=total_iterations, desc="GAN", unit="it", disable=not ranks.is_main)
    tick, tick_step = time.perf_counter(), run.step
    for (ids, z, step), real in store.stream(batches):
        losses = run.train_step(nets, real, item_labels[ids.to(device)], z.to(device), step)
        progress.update()
        epoch, index = divmod(step - 1, run.iterations_per_epoch)  # of the iteration just done, as the original
        if step % LOG_EVERY == 0 or step == total_iterations:
            losses = dict(zip(losses, ranks.mean(torch.stack(list(losses.values()))).tolist()))
            if not all(map(math.isfinite, losses.values())):
                raise TrainingDiverged(f"the GAN's losses became {losses} by iteration {step}; lower --lr (the "
                                       "last checkpoint before it is kept, and --resume continues from there)")
            now = time.perf_counter()
            images_per_second = (step - tick_step) * cfg.batch_size / (now - tick)
            tick, tick_step = now, step
            progress.set_postfix({name: f"{value:.3f}" for name, value in losses.items()},
                                 img_s=f"{images_per_second:.0f}")
            if ranks.is_main:
                log.record(step=step, epoch=epoch, **losses, images_per_second=images_per_second)
        run.step = step
        if ranks.is_main and (step % cfg.sample_every == 0 or step == total_iterations):
            samples = generate(run.model, run.sample_z, run.sample_labels, cfg.bf16)
            save_grid(out_dir / "samples" / f"train_{epoch:02d}_{index:04d}.png", samples, 4)
            log.add_image_grid("samples", samples, step, value_range=(-1, 1))
        if ranks.is_main and step % cfg.checkpoint_every == 0:
            run.save(out_dir / "checkpoint.pt")
    progress.close()
