"""Time and peak memory of load_dataset on a generated file in the original layout.

The file is shaped like AmazonFashion (3.3 GB: 234K items, 64K users, 0.5M interactions) scaled to --size-gb,
with random bytes standing in for the JPEGs. Loading runs in a fresh interpreter so that its peak RSS is its own.

    python bench/load.py --size-gb 1
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.data import load_dataset
from common.machine import machine_line
from common.original_format import save_original_format

IMAGE_BYTES = 14_000                       # 3.3 GB / 234K items
USERS_PER_ITEM = 64 / 234
INTERACTIONS_PER_ITEM = 0.5e6 / 234e3


def generate(path: Path, size_gb: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    itemnum = max(1, int(size_gb * 2**30 / IMAGE_BYTES))
    usernum = max(1, int(itemnum * USERS_PER_ITEM))
    train_lengths = 1 + rng.poisson(max(0.0, itemnum * INTERACTIONS_PER_ITEM / usernum - 3), size=usernum)

    def records(item_ids):
        return [{"productid": int(i)} for i in item_ids]

    user_train = {u: records(rng.integers(0, itemnum, n)) for u, n in enumerate(train_lengths)}
    user_validation = {u: records(rng.integers(0, itemnum, 1)) for u in range(usernum)}
    user_test = {u: records(rng.integers(0, itemnum, 1)) for u in range(usernum)}
    items = [{"imgs": rng.bytes(IMAGE_BYTES), "c": np.eye(6, dtype=np.int64)[i % 6].tolist()}
             for i in tqdm(range(itemnum), desc="generating items", unit="item")]
    save_original_format(path, user_train, user_validation, user_test, items, usernum, itemnum)


def measure(path: Path) -> dict:
    """Run in a fresh interpreter: load the file and report time and peak RSS."""
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    dataset = load_dataset(path)
    seconds = time.perf_counter() - start
    return {"load_s": seconds, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_before_load_bytes": before_kib * 1024, "usernum": dataset.usernum, "itemnum": dataset.itemnum,
            "interactions": dataset.num_train_interactions}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of the generated file in GiB")
    parser.add_argument("--path", type=Path, default=None,
                        help="where to write the file (default: the system temp folder); reused if it exists")
    parser.add_argument("--keep", action="store_true", help="keep the generated file afterwards")
    parser.add_argument("--role", choices=["generate", "measure"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = args.path or Path(tempfile.gettempdir()) / f"dvbpr-load-bench-{args.size_gb:g}GiB.npy"
    if args.role == "generate":
        return generate(path, args.size_gb)
    if args.role == "measure":
        return print(json.dumps(measure(path)))

    # Each role in its own small child: a process's peak RSS survives fork and exec, so this one stays small.
    def run(role: str) -> str:
        command = [sys.executable, __file__, "--role", role, "--path", str(path), "--size-gb", str(args.size_gb)]
        return subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout

    generated = not path.exists()
    if generated:
        run("generate")
    result = json.loads(run("measure"))
    file_bytes = path.stat().st_size
    print(machine_line())
    print(f"file      {path} ({file_bytes / 2**30:.2f} GiB, {result['itemnum']} items, {result['usernum']} users, "
          f"{result['interactions']} training interactions)")
    print(f"load      {result['load_s']:.1f} s ({file_bytes / 2**20 / result['load_s']:.0f} MiB/s)")
    growth = result["peak_rss_bytes"] - result["rss_before_load_bytes"]
    print(f"peak RSS  {result['peak_rss_bytes'] / 2**30:.2f} GiB = {result['peak_rss_bytes'] / file_bytes:.2f} x file; "
          f"growth while loading {growth / 2**30:.2f} GiB = {growth / file_bytes:.2f} x file "
          f"(interpreter before: {result['rss_before_load_bytes'] / 2**20:.0f} MiB)")
    if generated and not args.keep:
        path.unlink()


if __name__ == "__main__":
    main()
