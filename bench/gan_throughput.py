"""Training throughput of the conditional LSGAN: images per second on the CPU and, where present, CUDA.

    python bench/gan_throughput.py --preset paper --batch-size 64
    python bench/gan_throughput.py --image-size 32 --g-width 16 --d-width 16 --devices cpu

Each iteration is the real one (gather a batch from an ImageStore of random images, one D and one G step); the
first iterations are a warm-up and not timed.
"""
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from common.cli import parse_config
from common.device import describe
from common.images import ImageStore
from common.machine import machine_line
from gan.config import PRESETS, GANConfig
from gan.model import build_gan, build_optimizers, sample_z, train_step

AMAZON_FASHION_ITEMS = 234_000  # about the size of the real catalogue, for the seconds-per-epoch estimate


@dataclass
class BenchConfig:
    preset: str = field(default="paper", metadata={"help": "GAN preset whose settings are measured"})
    image_size: int | None = field(default=None, metadata={"help": "override the preset's image size"})
    batch_size: int | None = field(default=None, metadata={"help": "override the preset's batch size"})
    g_width: int | None = field(default=None, metadata={"help": "override the preset's G width"})
    d_width: int | None = field(default=None, metadata={"help": "override the preset's D width"})
    num_categories: int = field(default=6, metadata={"help": "categories"})
    iterations: int = field(default=20, metadata={"help": "timed iterations"})
    warmup: int = field(default=3, metadata={"help": "untimed iterations first"})
    devices: list[str] = field(default_factory=lambda: ["cpu", "cuda"], metadata={"help": "devices to measure"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA"})


def gan_config(bench):
    cfg = replace(GANConfig(), **PRESETS[bench.preset])
    overrides = {name: getattr(bench, name) for name in ("image_size", "batch_size", "g_width", "d_width")
                 if getattr(bench, name) is not None}
    return replace(cfg, **overrides)


def images_per_second(cfg, bench, device):
    torch.manual_seed(0)
    num_items = max(4 * cfg.batch_size, 512)
    cache = np.random.default_rng(0).integers(0, 256, (num_items, 3, cfg.image_size, cfg.image_size), dtype=np.uint8)
    store = ImageStore(cache, device)
    labels = torch.randint(bench.num_categories, (num_items,), device=device)
    generator, discriminator = build_gan(cfg, bench.num_categories, device)
    opt_g, opt_d = build_optimizers(cfg, generator, discriminator, device)

    def iteration():
        ids = torch.randint(num_items, (cfg.batch_size,))
        z = sample_z(cfg.batch_size, cfg.z_dim, cfg.z_distribution, device)
        train_step(generator, discriminator, opt_g, opt_d, store(ids), labels[ids.to(device)], z, bench.bf16)

    for _ in range(bench.warmup):
        iteration()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(bench.iterations):
        iteration()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return bench.iterations * cfg.batch_size / (time.perf_counter() - start)


def main(argv=None):
    bench, _ = parse_config(BenchConfig, argv, {name: {} for name in PRESETS}, description=__doc__.splitlines()[0])
    cfg = gan_config(bench)
    print(f"GAN preset {bench.preset}: {cfg.image_size} px, batch {cfg.batch_size}, z {cfg.z_dim}, "
          f"widths G {cfg.g_width} D {cfg.d_width}, {bench.iterations} timed iterations")
    for name in bench.devices:
        if name == "cuda" and not torch.cuda.is_available():
            print("cuda: not available")
            continue
        device = torch.device(name)
        rate = images_per_second(cfg, bench, device)
        precision = "bf16 autocast" if device.type == "cuda" and bench.bf16 else "fp32"
        print(machine_line())
        print(f"{describe(device)}, {precision}: {rate:,.0f} images/s, "
              f"{AMAZON_FASHION_ITEMS / rate:,.0f} s per epoch of {AMAZON_FASHION_ITEMS:,} images")


if __name__ == "__main__":
    main()
