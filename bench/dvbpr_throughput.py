"""DVBPR throughput on a synthetic catalogue: training triplets/s, item embeddings/s and exact-AUC users/s.

    python bench/dvbpr_throughput.py                               # 64 px, small catalogue, CPU and CUDA if present
    python bench/dvbpr_throughput.py --devices cuda --image-size 224 --users 64583 --items 234892 --steps 100
    python bench/dvbpr_throughput.py --stream                      # images streamed from a memory-mapped file
    torchrun --nproc_per_node=2 bench/dvbpr_throughput.py --devices cuda  # the same under DistributedDataParallel

Images are random uint8 (item i shows image i mod --images, so a full-size catalogue needs no 35 GB cache), kept
on the device when they fit, or with --stream read from a memory-mapped .npy file through ImageStore.stream, the
path of a catalogue too large for GPU memory. Interactions are random; the work per step is the real one
(dvbpr.train's training and evaluation code). The first --warmup steps are not timed. Item embeddings are timed
over the --images images; the exact AUC scores random K-dim embeddings of every item.
"""
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.cli import parse_config
from common.data import random_dataset
from common.device import memory_format
from common.distributed import setup, teardown
from common.images import ImageStore
from common.machine import machine_line, timed
from common.metrics import evaluate_auc
from common.sampling import TripletSampler
from common.training import train_steps
from dvbpr.config import DVBPRConfig
from dvbpr.model import build_model, embed_items
from dvbpr.train import dvbpr_trainee

AMAZON_FASHION_TRIPLETS = 267_638  # training interactions of AmazonFashion = triplets per epoch


@dataclass
class BenchConfig:
    users: int = field(default=2000, metadata={"help": "users (AmazonFashion: 64583)"})
    items: int = field(default=5000, metadata={"help": "items (AmazonFashion: 234892)"})
    train_per_user: int = field(default=4, metadata={"help": "training interactions per user (AmazonFashion: ~4.1)"})
    images: int = field(default=2048, metadata={"help": "distinct random images"})
    stream: bool = field(default=False, metadata={"help": "stream the images from a memory-mapped file instead of "
                                                          "keeping them on the device"})
    image_size: int = field(default=64, metadata={"help": "CNN input side in pixels"})
    k: int = field(default=50, metadata={"help": "latent dimensions"})
    batch_size: int = field(default=128, metadata={"help": "triplets per step"})
    steps: int = field(default=10, metadata={"help": "timed training steps"})
    warmup: int = field(default=2, metadata={"help": "untimed training steps first"})
    eval_batch_size: int = field(default=512, metadata={"help": "images per no-grad batch"})
    devices: list[str] = field(default_factory=lambda: ["cpu", "cuda"], metadata={"help": "devices to measure"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA"})


def random_image_store(bench, device, folder):
    images = np.random.default_rng(0).integers(0, 256, (bench.images, 3, bench.image_size, bench.image_size),
                                               dtype=np.uint8)
    if not bench.stream:
        return ImageStore(images, device, resident=True)
    np.save(folder / "images.npy", images)
    return ImageStore(np.load(folder / "images.npy", mmap_mode="r"), device, resident=False)


def measure(bench, dataset, ranks):
    device = ranks.device
    cfg = DVBPRConfig(k=bench.k, image_size=bench.image_size, batch_size=bench.batch_size, bf16=bench.bf16)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        store = random_image_store(bench, device, Path(folder))
        model = build_model(cfg, dataset.usernum).to(device, memory_format=memory_format(device))
        network = ranks.wrap(model)
        trainee = dvbpr_trainee(model, dataset, store, cfg, ranks)
        sampler = TripletSampler(dataset, seed=0)

        def triplets(steps):
            users, positives, negatives = sampler.sample(steps * cfg.batch_size)
            return [torch.from_numpy(a) for a in (users, positives % bench.images, negatives % bench.images)]

        train_steps(network, trainee, triplets(bench.warmup), cfg, ranks, desc="warm-up")
        batch = triplets(bench.steps)
        train_seconds = timed(lambda: train_steps(network, trainee, batch, cfg, ranks), device)
        embed_seconds = timed(lambda: embed_items(model, store, bench.eval_batch_size, ranks, bench.bf16),
                              device)

    theta = torch.randn(dataset.usernum, cfg.k, device=device)
    items = torch.randn(dataset.itemnum, cfg.k, device=device)
    auc_seconds = timed(lambda: evaluate_auc(dataset, lambda users: theta[users] @ items.T, split="test",
                                             protocol="exact", device=device,
                                             users=torch.tensor(ranks.shard(dataset.usernum)),
                                             combine=ranks.gather), device)
    return bench.steps * cfg.batch_size / train_seconds, bench.images / embed_seconds, auc_seconds


def main(argv=None):
    bench, _ = parse_config(BenchConfig, argv, description=__doc__.splitlines()[0])
    dataset = random_dataset(bench.users, bench.items, bench.train_per_user)
    print(f"DVBPR bench: {bench.users} users, {bench.items} items, {dataset.num_train_interactions} training "
          f"interactions, {bench.image_size} px, K {bench.k}, batch {bench.batch_size}, {bench.steps} timed steps")
    images = "streamed from a memory-mapped file" if bench.stream else "resident"
    for name in bench.devices:
        if name.startswith("cuda") and not torch.cuda.is_available():
            print(f"{name}: not available")
            continue
        ranks = setup(name)
        triplets_per_s, embeddings_per_s, auc_seconds = measure(bench, dataset, ranks)
        if ranks.is_main:  # one rank measures it: ranks measuring at once would share the cores
            print(machine_line())
        ranks.print(f"{ranks.describe()}, images {images}: training {triplets_per_s:,.0f} triplets/s "
              f"(an AmazonFashion epoch of {AMAZON_FASHION_TRIPLETS:,} triplets at {bench.image_size} px: "
              f"{AMAZON_FASHION_TRIPLETS / triplets_per_s:,.0f} s); "
              f"item embeddings {embeddings_per_s:,.0f} images/s; "
              f"exact AUC {bench.users / auc_seconds:,.0f} users/s ({bench.users} users x {bench.items} items "
              f"in {auc_seconds:.2f} s)")
        teardown()


if __name__ == "__main__":
    main()
