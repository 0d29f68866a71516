"""Run directories, a JSON-lines metrics file and a human-readable log beside it."""
import json
import os
import time
from pathlib import Path

from common.checkpoint import remove_stale_temporaries
from common.errors import RunError


def run_dir(out, stage):
    """The run directory: `out` if given, else runs/<stage>; created if needed, checked to be writable, and
    cleared of the temporary files of saves that a kill interrupted."""
    path = Path(out) if out else Path("runs") / stage
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot make the run directory {path}: {exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK):
        raise RunError(f"cannot write into the run directory {path}: permission denied (give another --out)")
    stale = remove_stale_temporaries(path)
    if stale:
        print(f"{path}: removed {len(stale)} temporary files of interrupted saves ({', '.join(stale[:3])}"
              f"{', ...' if len(stale) > 3 else ''})")
    return path


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
