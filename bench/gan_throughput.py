"""Training throughput of a conditional generator (--generator, default the preset's): images per second on the CPU
and, where present, CUDA, in each memory format of --memory-formats.

    python bench/gan_throughput.py --preset paper --batch-size 64
    python bench/gan_throughput.py --preset demo --devices cpu           # the demo's sngan, channels_last and not
    python bench/gan_throughput.py --image-size 32 --g-width 16 --d-width 16 --devices cpu

Each iteration is the real one (gather a batch from an ImageStore of random images, the generator's train_step:
for the GANs one D and one G step); the first iterations are a warm-up and not timed. "as built" is the format the
generator gives its nets on that device, the one training uses; the others convert nets and batches to it.
"""
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from common.cli import parse_config
from common.device import describe
from common.images import ImageStore
from common.machine import machine_line
from gan.config import PRESETS, GANConfig, with_generator_latent
from gan.generators import GENERATORS, build_generator
from gan.model import sample_z

MEMORY_FORMATS = {"as-built": None, "channels_last": torch.channels_last, "contiguous": torch.contiguous_format}

AMAZON_FASHION_ITEMS = 234_000  # about the size of the real catalogue, for the seconds-per-epoch estimate


@dataclass
class BenchConfig:
    preset: str = field(default="paper", metadata={"help": "GAN preset whose settings are measured"})
    generator: str | None = field(default=None, metadata={"help": "override the preset's generator",
                                                          "choices": GENERATORS})
    image_size: int | None = field(default=None, metadata={"help": "override the preset's image size"})
    batch_size: int | None = field(default=None, metadata={"help": "override the preset's batch size"})
    g_width: int | None = field(default=None, metadata={"help": "override the preset's G width"})
    d_width: int | None = field(default=None, metadata={"help": "override the preset's D width"})
    num_categories: int = field(default=6, metadata={"help": "categories"})
    iterations: int = field(default=20, metadata={"help": "timed iterations"})
    warmup: int = field(default=3, metadata={"help": "untimed iterations first"})
    devices: list[str] = field(default_factory=lambda: ["cpu", "cuda"], metadata={"help": "devices to measure"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA"})
    memory_formats: list[str] = field(default_factory=lambda: ["as-built", "channels_last", "contiguous"], metadata={
        "help": "memory formats of the nets and batches to measure (as-built: the generator's own on the device)",
        "choices": MEMORY_FORMATS})


def gan_config(bench):
    cfg = replace(GANConfig(), **PRESETS[bench.preset])
    overrides = {name: getattr(bench, name) for name in ("generator", "image_size", "batch_size", "g_width", "d_width")
                 if getattr(bench, name) is not None}
    return with_generator_latent(replace(cfg, **overrides))


def images_per_second(cfg, bench, device, memory_format=None):
    """Training images per second of cfg's generator on `device`, its nets and batches in `memory_format` (None: as
    the generator builds them)."""
    torch.manual_seed(0)
    num_items = max(4 * cfg.batch_size, 512)
    cache = np.random.default_rng(0).integers(0, 256, (num_items, 3, cfg.image_size, cfg.image_size), dtype=np.uint8)
    store = ImageStore(cache, device)
    labels = torch.randint(bench.num_categories, (num_items,), device=device)
    model = build_generator(cfg, bench.num_categories, device)
    if memory_format is not None:
        model.to(memory_format=memory_format)
    optimizers = model.optimizers(cfg, device)
    nets = {name: getattr(model, name).train() for name in model.nets}

    def batch(ids):
        images = store(ids)
        return images if memory_format is None else images.contiguous(memory_format=memory_format)

    def iteration():
        ids = torch.randint(num_items, (cfg.batch_size,))
        z = sample_z(cfg.batch_size, cfg.z_dim, cfg.z_distribution, device)
        model.train_step(nets, optimizers, batch(ids), labels[ids.to(device)], z, bench.bf16)

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
    print(f"GAN preset {bench.preset}, {cfg.generator}: {cfg.image_size} px, batch {cfg.batch_size}, z {cfg.z_dim}, "
          f"widths G {cfg.g_width} D {cfg.d_width}, {bench.iterations} timed iterations")
    for name in bench.devices:
        if name == "cuda" and not torch.cuda.is_available():
            print("cuda: not available")
            continue
        device = torch.device(name)
        precision = "bf16 autocast" if device.type == "cuda" and bench.bf16 else "fp32"
        print(machine_line())
        for format_name in bench.memory_formats:
            rate = images_per_second(cfg, bench, device, MEMORY_FORMATS[format_name])
            print(f"{describe(device)}, {precision}, {format_name}: {rate:,.0f} images/s, "
                  f"{AMAZON_FASHION_ITEMS / rate:,.0f} s per epoch of {AMAZON_FASHION_ITEMS:,} images")


if __name__ == "__main__":
    main()
