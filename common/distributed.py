"""One process, or one per GPU under torchrun, with the same training code.

    torchrun --nproc_per_node=N dvbpr/main.py ...      # NCCL on CUDA, gloo on CPU

Every rank draws the whole global batch from the same seeded stream and keeps its contiguous share of it, so a
run sees the batches a single process would see whatever the number of ranks: --batch-size is the global batch,
the learning rate means what it means in one process, and a checkpoint resumes under any number of ranks.
Gradients are all-reduced by DistributedDataParallel; batch norm takes its statistics over the global batch.
Evaluation is sharded over ranks and gathered; rank 0 alone writes files.
"""
import contextlib
import inspect
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce
from torch.nn.parallel import DistributedDataParallel

from common.device import describe, pick_device
from common.seeding import derived_seed

# DDP's switch for the buffer broadcast before each forward: `forward_sync_buffers` in recent torch,
# `broadcast_buffers` in older ones that GPU machines often still have (2.11, say)
NO_FORWARD_BUFFER_SYNC = ("forward_sync_buffers" if "forward_sync_buffers" in
                          inspect.signature(DistributedDataParallel.__init__).parameters else "broadcast_buffers")


def _initialised():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a run (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self):
        return self.rank == 0

    def share(self, global_batch):
        """This rank's slice of a global batch of `global_batch` rows."""
        if global_batch % self.world_size:
            raise ValueError(f"the global batch {global_batch} does not split evenly over {self.world_size} ranks")
        per_rank = global_batch // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def shard(self, n):
        """This rank's contiguous part of range(n), the parts as even as can be (for evaluation)."""
        return range(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)

    def gather(self, tensor):
        """The ranks' tensors concatenated along dim 0 in rank order (sizes may differ), on every rank, on the
        device `tensor` is on (the collective itself runs on this rank's device, as NCCL needs)."""
        if self.world_size == 1:
            return tensor
        home, tensor = tensor.device, tensor.to(self.device)
        size = torch.tensor([len(tensor)], device=self.device)
        sizes = [torch.empty_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        longest = int(max(sizes))
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[:len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:int(n)] for part, n in zip(parts, sizes)]).to(home)

    def mean(self, values):
        """The mean over ranks of a tensor (every rank gets it)."""
        if self.world_size == 1:
            return values
        total = values.to(self.device, torch.float64, copy=True)
        dist.all_reduce(total)
        return (total / self.world_size).to(values.device, values.dtype)

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block (e.g. building a cache) before the others do."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def print(self, *args, **kwargs):
        if self.is_main:
            print(*args, **kwargs)

    def describe(self):
        return describe(self.device) + (f" x {self.world_size} ranks" if self.world_size > 1 else "")

    def wrap(self, module):
        """`module` under DistributedDataParallel when there are several ranks. Buffers are synchronised once,
        not before every forward: the only ones are batch norm's running statistics, which GlobalBatchNorm2d keeps
        equal on all ranks."""
        if self.world_size == 1:
            return module
        device_ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, **{NO_FORWARD_BUFFER_SYNC: False})

    def seed(self, *keys):
        """A seed for this rank's own randomness (e.g. dropout), from `keys` and the rank."""
        return derived_seed(*keys, self.rank)


def unwrap(module):
    return module.module if isinstance(module, DistributedDataParallel) else module


def cuda_placement(local_rank, local_world_size, device_count):
    """(GPU index, backend) of a local rank: one GPU each over NCCL while there are enough GPUs. With more local
    ranks than GPUs, the ranks share them in turn over gloo, because NCCL refuses two ranks on one GPU: a
    functional check of the distributed code on a single GPU, not a way to go faster."""
    if device_count < 1:
        raise RuntimeError("CUDA ranks were asked for but no GPU is visible")
    backend = "nccl" if local_world_size <= device_count else "gloo"
    return local_rank % device_count, backend


def setup(device="auto"):
    """Ranks of this process: under torchrun joins the process group (one GPU per local rank on CUDA, see
    cuda_placement when there are fewer GPUs than local ranks)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device)
    if world_size == 1:
        return Ranks(0, 1, device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    backend = "gloo"
    if device.type == "cuda":
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        index, backend = cuda_placement(local_rank, local_world_size, torch.cuda.device_count())
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
        if backend == "gloo" and rank == 0:
            print(f"{local_world_size} ranks share {torch.cuda.device_count()} GPU(s) over gloo: a functional "
                  "check, not a speed-up")
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Ranks(rank, world_size, device)


def teardown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def global_rows(tensor):
    """The rows of every rank's `tensor` (of equal shapes: each rank's share of a global batch) concatenated in rank
    order, as one process holding the whole batch has them; `tensor` itself without torchrun."""
    if not _initialised():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def global_randn_like(tensor):
    """Standard normal noise shaped as `tensor` (a rank's share of a global batch): under torchrun, this rank's share
    of the draw one process makes for the whole batch, as every rank's generator is seeded alike; so the noise, as
    the batches, does not depend on the number of ranks. torch.randn_like(tensor) without torchrun."""
    if not _initialised():
        return torch.randn_like(tensor)
    rank, share = dist.get_rank(), len(tensor)
    whole = torch.randn((dist.get_world_size() * share, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    return whole[rank * share:(rank + 1) * share]


def global_mean(tensor):
    """The mean over ranks of `tensor` (a mean over each rank's share of a global batch: the whole batch's mean);
    `tensor` itself without torchrun."""
    if not _initialised():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch when several ranks train, and plain
    BatchNorm2d otherwise. PyTorch's SyncBatchNorm does this on GPUs only; this one runs on gloo (CPU) too, so
    that the distributed step is tested on CPU. Statistics in float32, two passes (mean, then centred squares);
    the gradient flows through the all-reduces."""

    def forward(self, x):
        if not (self.training and _initialised()):
            return super().forward(x)
        values = x.float()
        dims = (0, 2, 3)
        count = torch.tensor(float(values.numel() // values.shape[1]), device=x.device)
        dist.all_reduce(count)
        mean = differentiable_all_reduce(values.sum(dims)) / count
        centred = values - mean[None, :, None, None]
        variance = differentiable_all_reduce(centred.pow(2).sum(dims)) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.item()
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(variance * count / (count - 1).clamp(min=1), momentum)
        scale = torch.rsqrt(variance + self.eps) * self.weight
        return (centred * scale[None, :, None, None] + self.bias[None, :, None, None]).to(x.dtype)
