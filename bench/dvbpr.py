"""DVBPR throughput on a synthetic catalogue: training triplets/s, item embeddings/s and exact-AUC users/s.

    python bench/dvbpr.py                                      # 64 px, small catalogue, CPU and CUDA if present
    python bench/dvbpr.py --devices cuda --image-size 224 --users 64583 --items 234892 --steps 100

Images are random uint8 in memory (item i shows image i mod --images, so a full-size catalogue needs no 35 GB
cache), interactions are random; the work per step is the real one (dvbpr.main's training and evaluation code).
The first --warmup steps are not timed. The exact AUC scores random K-dim embeddings of every item.
"""
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from common.config import parse_config
from common.data import Dataset
from common.device import describe, fused_adam_kwargs, memory_format
from common.images import ImageStore
from common.metrics import evaluate_auc
from dvbpr.main import DVBPRConfig, TripletSampler, item_embeddings, train_steps
from dvbpr.model import DVBPR

AMAZON_FASHION_TRIPLETS = 267_638  # training interactions of AmazonFashion = triplets per epoch


@dataclass
class BenchConfig:
    users: int = field(default=2000, metadata={"help": "users (AmazonFashion: 64583)"})
    items: int = field(default=5000, metadata={"help": "items (AmazonFashion: 234892)"})
    train_per_user: int = field(default=4, metadata={"help": "training interactions per user (AmazonFashion: ~4.1)"})
    images: int = field(default=1024, metadata={"help": "distinct random images in memory"})
    image_size: int = field(default=64, metadata={"help": "CNN input side in pixels"})
    k: int = field(default=50, metadata={"help": "latent dimensions"})
    batch_size: int = field(default=128, metadata={"help": "triplets per step"})
    steps: int = field(default=10, metadata={"help": "timed training steps"})
    warmup: int = field(default=2, metadata={"help": "untimed training steps first"})
    embed_items: int = field(default=2048, metadata={"help": "items whose embeddings are timed"})
    eval_batch_size: int = field(default=512, metadata={"help": "images per no-grad batch"})
    devices: list[str] = field(default_factory=lambda: ["cpu", "cuda"], metadata={"help": "devices to measure"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA"})


def synthetic_dataset(bench, seed=0):
    """Random interactions: per user `train_per_user` training items, one validation and one test item."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(bench.items, size=(bench.users, bench.train_per_user + 2))
    return Dataset(name="synthetic", path=Path("synthetic"), usernum=bench.users, itemnum=bench.items,
                   user_train=list(picks[:, 2:]), user_validation=picks[:, 0], user_test=picks[:, 1],
                   item_category=np.full(bench.items, -1), num_categories=0, image_bytes=[])


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(bench, dataset, device):
    cfg = DVBPRConfig(k=bench.k, image_size=bench.image_size, batch_size=bench.batch_size, bf16=bench.bf16)
    torch.manual_seed(0)
    cache = np.random.default_rng(0).integers(0, 256, (bench.images, 3, bench.image_size, bench.image_size),
                                              dtype=np.uint8)
    store = ImageStore(cache, device)
    images = lambda item_ids: store(item_ids % bench.images)
    model = DVBPR(dataset.usernum, cfg.k, cfg.image_size).to(device, memory_format=memory_format(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, **fused_adam_kwargs(device))
    sampler = TripletSampler(dataset, seed=0)
    triplets = lambda steps: [torch.from_numpy(a).to(device) for a in sampler.sample(steps * cfg.batch_size)]

    train_steps(model, optimizer, images, triplets(bench.warmup), cfg, device, desc="warm-up")
    batch = triplets(bench.steps)
    train_seconds = timed(lambda: train_steps(model, optimizer, images, batch, cfg, device), device)
    embed_seconds = timed(lambda: item_embeddings(model, images, bench.embed_items, bench.eval_batch_size, device,
                                                  bench.bf16), device)

    theta = torch.randn(dataset.usernum, cfg.k, device=device)
    items = torch.randn(dataset.itemnum, cfg.k, device=device)
    auc_seconds = timed(lambda: evaluate_auc(dataset, lambda users: theta[users] @ items.T, split="test",
                                             protocol="exact", device=device), device)
    return bench.steps * cfg.batch_size / train_seconds, bench.embed_items / embed_seconds, auc_seconds


def main(argv=None):
    bench, _ = parse_config(BenchConfig, argv, description=__doc__.splitlines()[0])
    dataset = synthetic_dataset(bench)
    print(f"DVBPR bench: {bench.users} users, {bench.items} items, {dataset.num_train_interactions} training "
          f"interactions, {bench.image_size} px, K {bench.k}, batch {bench.batch_size}, {bench.steps} timed steps")
    for name in bench.devices:
        if name.startswith("cuda") and not torch.cuda.is_available():
            print(f"{name}: not available")
            continue
        device = torch.device(name)
        triplets_per_s, embeddings_per_s, auc_seconds = measure(bench, dataset, device)
        print(f"{describe(device)}: training {triplets_per_s:,.0f} triplets/s "
              f"(an AmazonFashion epoch of {AMAZON_FASHION_TRIPLETS:,} triplets at {bench.image_size} px: "
              f"{AMAZON_FASHION_TRIPLETS / triplets_per_s:,.0f} s); "
              f"item embeddings {embeddings_per_s:,.0f} images/s; "
              f"exact AUC {bench.users / auc_seconds:,.0f} users/s ({bench.users} users x {bench.items} items "
              f"in {auc_seconds:.2f} s)")


if __name__ == "__main__":
    main()
