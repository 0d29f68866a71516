"""The machine's fp32 matmul rate, printed beside every benchmark figure: CPUs of one size differ by 2x and more,
and a loaded machine slows down, so a figure means little without the rate of the machine as it gave it."""
import time

import torch

MATMUL_SIDE = 2048


def matmul_gflops(device="cpu", n=MATMUL_SIDE, warmup=3, repeats=5):
    """fp32 GFLOP/s of an n x n matmul (2 n^3 flops) on `device`: the best of `repeats` timed runs after `warmup`
    untimed ones."""
    device = torch.device(device)
    a, b = (torch.randn(n, n, device=device) for _ in range(2))

    def seconds():
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        seconds()
    return 2 * n**3 / min(seconds() for _ in range(repeats)) / 1e9


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """Seconds fn() takes, with the device's queued work finished before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def machine_line(n=MATMUL_SIDE):
    """'machine: cpu fp32 matmul 2048^2: 275 GFLOP/s (2 threads)', and the GPU's rate where CUDA is available."""
    rates = [f"cpu fp32 matmul {n}^2: {matmul_gflops('cpu', n):,.0f} GFLOP/s ({torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        rates.append(f"{torch.cuda.get_device_name()} fp32 matmul {n}^2: {matmul_gflops('cuda', n):,.0f} GFLOP/s")
    return "machine: " + "; ".join(rates)
