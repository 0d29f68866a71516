"""Time of a full evaluation (exact AUC All and Cold, Recall@K, NDCG@K and MRR) against the score matmul alone.

    python bench/eval_metrics.py                                   # 20,000 users x 50,000 items x K=50
    python bench/eval_metrics.py --users 2000 --items 10000 --devices cpu
    python bench/eval_metrics.py --devices cuda --users 100000 --items 105000   # H&M's item count

The embeddings and interactions are random (K-dim theta_u and item vectors, `train_per_user` training items, one
validation and one test item per user); the evaluation is common/metrics.py's evaluate_ranking on the test split,
every user, the exact protocol. "matmul" is the same chunks of theta_u . Phi(X_i) computed and thrown away, so the
ratio evaluation / matmul is what the counting costs on top of the scores (the target: at most about 2). Each time
is the best of --repeats runs, the two measured in turn so that a busy machine slows both alike; the load average
printed says how busy it was (on a shared machine, --threads 1 gives the steadier ratio).
"""
import os
from dataclasses import dataclass, field

import torch

from common.cli import parse_config
from common.data import random_dataset
from common.machine import machine_line, timed
from common.metrics import CUTOFFS, SCORE_BUDGET, evaluate_ranking


@dataclass
class BenchConfig:
    users: int = field(default=20_000, metadata={"help": "users evaluated"})
    items: int = field(default=50_000, metadata={"help": "items in the catalogue"})
    k: int = field(default=50, metadata={"help": "latent dimensions of the embeddings"})
    train_per_user: int = field(default=4, metadata={"help": "training interactions per user"})
    cutoffs: list[int] = field(default_factory=lambda: list(CUTOFFS), metadata={"help": "K of Recall@K, NDCG@K"})
    ties: str = field(default="fail", metadata={"help": "tie rule", "choices": ["fail", "half"]})
    repeats: int = field(default=3, metadata={"help": "timed runs of each; the best counts"})
    devices: list[str] = field(default_factory=lambda: ["cpu", "cuda"], metadata={"help": "devices to measure"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads (None: torch's default)"})


def measure(bench, dataset, device):
    """(best matmul seconds, best evaluation seconds, the evaluation's metrics)."""
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(bench.users, bench.k, generator=generator).to(device)
    items = torch.randn(bench.items, bench.k, generator=generator).to(device)
    score = lambda users: theta[users] @ items.T
    chunk = max(1, SCORE_BUDGET[device.type] // bench.items)
    users = torch.arange(bench.users, device=device)

    def matmul():
        for start in range(0, bench.users, chunk):
            score(users[start:start + chunk])

    def evaluate():
        return evaluate_ranking(dataset, score, split="test", device=device, ties=bench.ties,
                                cutoffs=bench.cutoffs, chunk_users=chunk)

    matmul_seconds, eval_seconds = [], []
    for _ in range(bench.repeats):
        matmul_seconds.append(timed(matmul, device))
        eval_seconds.append(timed(evaluate, device))
    return min(matmul_seconds), min(eval_seconds), evaluate()["metrics"]


def main(argv=None):
    bench, _ = parse_config(BenchConfig, argv, description=__doc__.splitlines()[0])
    if bench.threads:
        torch.set_num_threads(bench.threads)
    dataset = random_dataset(bench.users, bench.items, bench.train_per_user)
    print(f"{machine_line()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| device | users x items x K | matmul | GFLOP/s in the matmul | evaluation | evaluation / matmul |")
    print("|---|---|---|---|---|---|")
    for name in bench.devices:
        if name.startswith("cuda") and not torch.cuda.is_available():
            continue
        device = torch.device(name)
        matmul, evaluation, metrics = measure(bench, dataset, device)
        flops = 2 * bench.users * bench.items * bench.k
        print(f"| {name} ({torch.get_num_threads()} threads) | {bench.users:,} x {bench.items:,} x {bench.k} | "
              f"{matmul:.2f} s | {flops / matmul / 1e9:,.0f} | {evaluation:.2f} s | {evaluation / matmul:.2f} |"
              if device.type == "cpu" else
              f"| {name} | {bench.users:,} x {bench.items:,} x {bench.k} | {matmul:.3f} s | "
              f"{flops / matmul / 1e9:,.0f} | {evaluation:.3f} s | {evaluation / matmul:.2f} |")
        print("  random embeddings: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if v is not None))


if __name__ == "__main__":
    main()
