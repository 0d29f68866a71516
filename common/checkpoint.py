"""One checkpoint format for every stage, written atomically and read with weights_only=True.

A checkpoint is a dict: {"stage", "model", "optimizer", "config", "epoch", "step", "metrics", ...}; `stage` names
the stage that wrote it ("dvbpr", "gan", "classifier", ...) and every load checks it.

Before torch reads a file, its zip directory is checked: torch.save stores every entry uncompressed, so an entry
stored compressed (which torch would inflate, a few MB into GBs) or entries adding up to more than the file are
refused, and what torch then reads is bounded by the file's size. torch's own errors become one line: a global
its weights-only unpickler refuses is named, without its advice to load with weights_only=False.
"""
import dataclasses
import errno
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import struct
import tempfile
import types
import typing
import zipfile
from pathlib import Path

import torch

from common.errors import CheckpointError, ConfigError, RunError
from common.safe_pickle import describe_value

TEMPORARY = ".tmp"


def atomic_write(path, write):
    """Call write(binary file) on a temporary file beside `path`, then rename it over `path`: a crash at any
    moment leaves either the old file or the new one (and a *.tmp that `remove_stale_temporaries` clears)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=TEMPORARY)
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path}: {write_failure(exc, path.parent)}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_failure(exc, folder):
    full = getattr(exc, "errno", None) == errno.ENOSPC or shutil.disk_usage(folder).free < 1 << 20
    return "no space left on the device" if full else str(exc.strerror if isinstance(exc, OSError) else exc)


def remove_stale_temporaries(folder):
    """Delete the *.tmp files that saves killed mid-write left in `folder`; returns their names."""
    stale = sorted(Path(folder).glob(f"*{TEMPORARY}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return [path.name for path in stale]


def save_checkpoint(path, state):
    atomic_write(path, lambda f: torch.save(state, f))


def write_json(path, content):
    """`content` as indented JSON, written atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(content, indent=2) + "\n").encode()))


def read_json(path, max_bytes, what):
    """The JSON value in file `path` (`what` it should be), refused in one line (RunError) when it is missing, over
    `max_bytes` or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no {path}: expected a {what}")
    if path.stat().st_size > max_bytes:
        raise RunError(f"{path} is larger than {max_bytes} bytes: not a {what}")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{path} is not JSON ({error})") from None


def read_results(run, stage, fields, command, max_bytes=16 << 20):
    """results.json of the finished `stage` run in directory `run`, refused in one line (RunError) when it is missing,
    over `max_bytes`, not a JSON object or lacks one of `fields`; `command` finishes such a run."""
    path = Path(run) / "results.json"
    if not path.is_file():
        raise RunError(f"no results.json in {run}: finish the run with `{command} --out {run}`")
    results = read_json(path, max_bytes, "results file of this project")
    if not isinstance(results, dict):
        raise RunError(f"{path} holds a {type(results).__name__}, not the JSON object a {stage} run writes")
    missing = [name for name in fields if name not in results]
    if missing:
        raise RunError(f"{path} lacks {', '.join(missing)}: not the results of a finished {stage} run")
    return results


def saved_config(cfg_cls, saved, source, check=None):
    """The `cfg_cls` a checkpoint's config dict describes, validated as flags are: each value of its field's type
    (a finite number where a float), among its choices, then `check(cfg)` (the stage's own, for ranges and
    bounds). CheckpointError naming `source` and the setting, for one this version does not know or an edited one."""
    if not isinstance(saved, dict) or not all(isinstance(name, str) for name in saved):
        raise CheckpointError(f"{source}: its settings are {describe_value(saved)}, not a dict of named settings")
    fields = {field.name: field for field in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(saved) - set(fields))
    if unknown:
        raise CheckpointError(f"{source} has settings this version does not know: {', '.join(unknown)}")
    hints = typing.get_type_hints(cfg_cls)
    for name, value in saved.items():
        choices = fields[name].metadata.get("choices")
        if not _of_type(value, hints[name]):
            raise CheckpointError(f"{source}: its setting {name} is {describe_value(value)}, not "
                                  f"{_type_name(hints[name])} (the file was edited or is corrupted)")
        if choices is not None and value not in choices:
            raise CheckpointError(f"{source}: its setting {name} is {value!r}, not one of {', '.join(choices)}")
    cfg = cfg_cls(**saved)
    try:
        if check is not None:
            check(cfg)
    except ConfigError as error:
        raise CheckpointError(f"{source}: its settings are refused: {error}") from None
    return cfg


def _of_type(value, kind) -> bool:
    """Whether a stored value is of a config field's type: int, float (an int too), str, bool, list[...], X | None."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_of_type(value, option) for option in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        return isinstance(value, list) and all(_of_type(entry, typing.get_args(kind)[0]) for entry in value)
    if kind is float:
        return type(value) in (int, float) and math.isfinite(value)
    return type(value) is kind or kind is type(None) and value is None


def _type_name(kind) -> str:
    return "a finite number" if kind is float else f"of type {kind.__name__ if isinstance(kind, type) else kind}"


def load_state(module, state, source):
    """module.load_state_dict(state), weights that do not fit the module (missing, unexpected, of another shape,
    not tensors) refused in one line naming `source`, instead of torch's list of every mismatch."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: its weights are {describe_value(state)}, not a state dict")
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise CheckpointError(f"{source}: its weights do not fit the {type(module).__name__} its settings describe: "
                              f"{first[:300]}{more}") from None


def recorded_digest(checkpoint, source):
    """The digest of the dataset the checkpoint `source` trained on (Dataset.digest, a hex string), or None where
    it records none (older runs, imported ones)."""
    saved = checkpoint.get("dataset_digest")
    if saved is not None and not (isinstance(saved, str) and re.fullmatch(r"[0-9a-f]{64}", saved)):
        raise CheckpointError(f"{source}: its dataset_digest is {describe_value(saved)}, not a SHA-256 hex digest")
    return saved


def check_same_data(checkpoint, dataset, source):
    """Refuse to resume the run whose checkpoint is `source` on another dataset than it trained on: one with other
    content under the same path (replaced, grown, or copied over with the same size and times) included. A
    checkpoint written before runs recorded their data's digest passes, with a note."""
    saved = recorded_digest(checkpoint, source)
    if saved is None:
        print(f"{source} does not record its dataset's digest (an older run): resuming on {dataset.path} unchecked")
    elif saved != dataset.digest:
        raise CheckpointError(f"cannot resume {source}: it trained on a dataset of digest {saved[:12]}, but "
                              f"{dataset.path} now holds other data (digest {dataset.digest[:12]}): give the "
                              "dataset it trained on, or start afresh without --resume")


def fingerprint(content, length=10):
    """A short hex digest of a JSON-able dict: the key of every cache (images, features, classifiers, catalogues)."""
    return hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:length]


def restore_optimizer(optimizer, state, lr):
    """An optimizer's saved state, at the learning rate of the settings now (a --lr given with --resume applies;
    the saved param groups would otherwise bring back the old one)."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["lr"] = lr


def check_archive(path):
    """Refuse what torch.save never writes, before torch reads it: an empty file, one that is not a zip archive
    (or is truncated, losing the directory at its end), an entry stored compressed, entries larger than the file."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (a save or a copy that did not "
                              "finish?)")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, ValueError, EOFError, OverflowError,
            struct.error) as exc:  # what zipfile raises on a directory it cannot parse
        raise CheckpointError(f"cannot read checkpoint {path}: truncated, or not a file torch.save wrote ({exc})") \
            from None
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"cannot read checkpoint {path}: its entry {entry.filename} is stored compressed, "
                                  "which torch.save never does (refused before it is inflated)")
    stored = sum(entry.file_size for entry in entries)
    if stored > size:
        raise CheckpointError(f"cannot read checkpoint {path}: its entries claim {stored} bytes, more than the "
                              f"file's {size}: corrupted")


def torch_refusal(path, exc):
    """One line for what torch.load raised: the global the weights-only unpickler refused, if that is what it
    was, else the first sentence of torch's message (torch wraps the unpickler's reason, kept as the context,
    in advice to load with weights_only=False, which is no advice for a file that may run code)."""
    reason = str(exc.__context__ or exc) if isinstance(exc, pickle.UnpicklingError) else str(exc)
    refused = re.search(r"GLOBAL (\S+)", reason)
    if refused:
        return (f"cannot read checkpoint {path}: its pickle asks for {refused.group(1)}, which the project's "
                "checkpoints never hold (refused: it could run code)")
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    first = lines[0].split(". ")[0] if lines else type(exc).__name__
    return f"cannot read checkpoint {path}: {first}"


def load_checkpoint(path, stage=None, map_location="cpu", fields=(), mmap=False):
    """The checkpoint dict at `path`; with `stage`, refused unless that stage wrote it, and unless it has every
    one of `fields`. `mmap` maps the tensors instead of reading them (for a look at the config alone)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    check_archive(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises what its parsers meet, of many types
        raise CheckpointError(torch_refusal(path, exc)) from exc
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint's dict")
    found = checkpoint.get("stage")
    if stage is not None and found != stage:
        raise CheckpointError(f"{path} was written by the {found!r} stage, not by {stage!r}: give a {stage} run")
    missing = [name for name in fields if name not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: not a complete {stage} checkpoint")
    return checkpoint
