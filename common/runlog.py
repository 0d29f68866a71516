"""Run directories, a JSON-lines metrics file and a human-readable log beside it."""
import json
import time
from pathlib import Path


def run_dir(out, stage):
    """The run directory: `out` if given, else runs/<stage>; created if needed."""
    path = Path(out) if out else Path("runs") / stage
    path.mkdir(parents=True, exist_ok=True)
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
