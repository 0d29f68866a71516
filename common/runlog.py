"""Run directories, a JSON-lines metrics file and a human-readable log beside it."""
import json
import os
import time
from pathlib import Path

from filelock import FileLock, Timeout

from common.checkpoint import remove_stale_temporaries
from common.errors import RunError

LOCK = ".lock"              # the file a run directory's writer holds locked (flock, through filelock)
LOCK_OWNER = ".lock.pid"    # the writer's pid, for the message that refuses a second one
_held = {}                  # run directories this process writes -> their locks, held until it exits


def run_dir(out, stage):
    """The run directory: `out` if given, else runs/<stage>; created if needed, checked to be writable, locked
    for this process (lock_run_dir), and cleared of the temporary files of saves that a kill interrupted."""
    path = Path(out) if out else Path("runs") / stage
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot make the run directory {path}: {exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK):
        raise RunError(f"cannot write into the run directory {path}: permission denied (give another --out)")
    lock_run_dir(path)
    stale = remove_stale_temporaries(path)
    if stale:
        print(f"{path}: removed {len(stale)} temporary files of interrupted saves ({', '.join(stale[:3])}"
              f"{', ...' if len(stale) > 3 else ''})")
    return path


def lock_run_dir(path):
    """Take the run directory for this process until it exits, refusing it if another process has it: two runs
    writing into one directory would leave one's checkpoint beside the other's results and a mixed log. The lock
    is an flock, which the system lets go of when its process ends, even by a kill, so none is ever left stale.
    Under torchrun only rank 0, the rank that writes, takes it; calls for a directory this process holds pass."""
    key = path.resolve()
    if key in _held or int(os.environ.get("RANK", "0")) != 0:
        return
    lock = FileLock(key / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            owner = f" (process {int((key / LOCK_OWNER).read_text())})"
        except (OSError, ValueError):
            owner = ""
        raise RunError(f"the run directory {path} is in use by another run{owner}: wait for it to end, or give "
                       "another --out") from None
    (key / LOCK_OWNER).write_text(f"{os.getpid()}\n")
    _held[key] = lock


class RunLog:
    """Appends one JSON object per line; `resume=False` starts the file afresh."""

    def __init__(self, out_dir, jsonl_name="metrics.jsonl", resume=False):
        self.path = Path(out_dir) / jsonl_name
        if not resume:
            self.path.write_text("")

    def record(self, **fields):
        fields.setdefault("time", round(time.time(), 3))
        with self.path.open("a") as f:
            f.write(json.dumps(fields) + "\n")

    def records(self):
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
