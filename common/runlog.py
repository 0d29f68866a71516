"""Run directories, a JSON-lines metrics file and a human-readable log beside it, and TensorBoard event files
when tensorboard is installed."""
import functools
import json
import os
import time
import weakref
from pathlib import Path

from filelock import FileLock, Timeout
from torchvision.utils import make_grid

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


EVENT_FILES = "events.out.tfevents.*"


def tensorboard_writer(log_dir):
    """torch's TensorBoard writer into `log_dir`, or None when the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


def scalars(fields, prefix=""):
    """{tag: number} of the numeric fields of a record, nested dicts' under "outer/inner" (lists are data, not
    scalars, and are left out)."""
    found = {}
    for name, value in fields.items():
        if isinstance(value, dict):
            found.update(scalars(value, f"{prefix}{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[prefix + name] = value
    return found


class RunLog:
    """Appends one JSON object per line; `resume=False` starts the file afresh.

    When tensorboard is installed, each record also goes to TensorBoard event files in the run directory: every
    numeric field as a scalar at the record's `step`, else its `epoch`, else its place in this log, and with its
    `time` as wall time; a record with a `name` (a baselines method) has its tags under that name. Starting afresh
    removes the event files of the run before, so that they hold what metrics.jsonl holds.
    """

    def __init__(self, out_dir, jsonl_name="metrics.jsonl", resume=False):
        self.path = Path(out_dir) / jsonl_name
        self.count = 0
        if not resume:
            self.path.write_text("")
            for events in self.path.parent.glob(EVENT_FILES):
                events.unlink()

    def record(self, **fields):
        fields.setdefault("time", round(time.time(), 3))
        with self.path.open("a") as f:
            f.write(json.dumps(fields) + "\n")
        self.count += 1
        if self.writer is not None:
            step_field = next((name for name in ("step", "epoch") if isinstance(fields.get(name), int)), None)
            step = fields[step_field] if step_field else self.count
            prefix = f"{fields['name']}/" if isinstance(fields.get("name"), str) else ""
            for tag, value in scalars({k: v for k, v in fields.items() if k not in (step_field, "time")}).items():
                self.writer.add_scalar(prefix + tag, value, step, walltime=fields["time"])
            self.writer.flush()

    def add_image_grid(self, tag, images, step, nrow=4, value_range=None):
        """A batch of images [B, C, H, W] as one grid image in TensorBoard (nothing without tensorboard);
        `value_range` maps that range to black..white, as torchvision's save_image does."""
        if self.writer is not None:
            grid = make_grid(images.detach().float().cpu(), nrow=nrow, normalize=value_range is not None,
                             value_range=value_range)
            self.writer.add_image(tag, grid, step)
            self.writer.flush()

    @functools.cached_property
    def writer(self):
        """The TensorBoard writer, made on first use (closed when this log is collected or Python exits)."""
        writer = tensorboard_writer(self.path.parent)
        if writer is not None:
            weakref.finalize(self, writer.close)
        return writer

    def records(self):
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
