"""The command line of every stage: a config dataclass parsed from flags, presets, demo settings, resumed runs,
and one line per error.

Where a setting comes from, highest first (the one rule of every stage):
    1. a flag given on the command line;
    2. the preset typed on the command line (--preset NAME);
    3. on the embedded demo catalogue, the stage's demo settings (printed first);
    4. the default preset;
    5. the dataclass's field defaults.
A resumed run (--resume) takes its saved settings instead of 3-5, so it goes on as it began. A run made from a
TensorFlow checkpoint (--from-tf) takes the model's sizes from the checkpoint instead of 2-5; a flag typed for one
of them must agree with it.
A field's help text and choices come from its metadata: `field(default=..., metadata={"help": ...})`; a field
with metadata {"positional": True} is a positional argument (a list field takes one or more), shown as its
"metavar" (default: the name in capitals).
"""
import argparse
import contextlib
import dataclasses
import math
import types
import typing
from pathlib import Path

from common.checkpoint import load_checkpoint, saved_config
from common.datasets import resolve_dataset
from common.distributed import setup, teardown
from common.errors import ConfigError, ProjectError


def _strip_optional(kind):
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind


def _add_argument(parser, name, kind, default, metadata, choices):
    help_text = metadata.get("help", "")
    if "(default" not in help_text:
        help_text = f"{help_text} (default: {default})".strip()
    kind = _strip_optional(kind)
    if metadata.get("positional"):
        names, common = [name], dict(default=argparse.SUPPRESS, help=metadata.get("help"),
                                     metavar=metadata.get("metavar", name.upper()))
    else:
        names, common = ["--" + name.replace("_", "-")], dict(dest=name, default=argparse.SUPPRESS, help=help_text)
    if kind is bool:
        parser.add_argument(*names, action=argparse.BooleanOptionalAction, **common)
    elif typing.get_origin(kind) in (list, tuple):
        parser.add_argument(*names, type=typing.get_args(kind)[0], nargs="+", choices=choices, **common)
    else:
        parser.add_argument(*names, type=kind, choices=choices, **common)


def parse_config(cfg_cls, argv=None, presets=None, description=""):
    """Parse argv into `cfg_cls` with its preset applied; return (config, protected): the names of the fields
    that rules 1 and 2 set, which demo settings and saved settings leave alone."""
    presets = presets or {}
    defaults = cfg_cls()
    parser = argparse.ArgumentParser(description=description)
    hints = typing.get_type_hints(cfg_cls)
    for field in dataclasses.fields(cfg_cls):
        choices = sorted(presets) if field.name == "preset" and presets else field.metadata.get("choices")
        _add_argument(parser, field.name, hints[field.name], getattr(defaults, field.name), field.metadata, choices)
    given = vars(parser.parse_intermixed_args(argv))
    refuse_non_finite(given)
    refuse_empty(given)
    refuse_bad_seeds(given)
    preset = presets.get(given.get("preset", getattr(defaults, "preset", None)), {})
    cfg = dataclasses.replace(dataclasses.replace(defaults, **preset), **given)
    return cfg, set(given) | (set(preset) if "preset" in given else set())


def refuse_non_finite(given):
    """ConfigError naming the first float flag given as nan or inf, which argparse's float() accepts."""
    for name, value in given.items():
        if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {value}")


def refuse_empty(given):
    """ConfigError naming the first text flag given as "" (a path or a name left empty, as by an unset shell
    variable), which would otherwise read as not given: `--from-tf ""` would train from scratch."""
    for name, value in given.items():
        if any(isinstance(v, str) and not v.strip() for v in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"--{name.replace('_', '-')} is empty: give a value, or leave the flag out")


MAX_SEED = 2**32 - 1   # numpy's legacy seeding, which every stage's seed_everything calls, takes no more


def refuse_bad_seeds(given):
    """ConfigError naming the first seed flag (--seed, --<what>-seed, --<what>-seeds) with a value outside what the
    random generators take."""
    for name, value in given.items():
        is_seed = name == "seed" or name.endswith(("_seed", "_seeds"))
        for seed in value if isinstance(value, list) else [value]:
            if is_seed and type(seed) is int and not 0 <= seed <= MAX_SEED:   # not --class-seed, a switch
                raise ConfigError(f"--{name.replace('_', '-')} must be from 0 to {MAX_SEED}, got {seed}")


def typed_flags(cfg_cls, argv=None):
    """The names of the fields that flags typed on the command line set (rule 1 alone, without the preset's)."""
    return parse_config(cfg_cls, argv)[1]


# Upper bounds of the size flags, stated up front and checked before anything is allocated: far above what a run
# of the paper's models needs (224 px, batches of 128, fc 4096 wide), far below what would exhaust a machine.
MAX_IMAGE_SIZE = 1024     # an image side in pixels: a model's input, the decoded-image cache
MAX_TILE_SIZE = 512       # a tile of a picture written for people (strips, heat maps)
MAX_BATCH = 8192          # images or triplets in one step or one no-grad batch (the global batch under torchrun)
MAX_WIDTH = 8192          # channels, latent dimensions, fc widths


def require_sizes(cfg, bounds):
    """ConfigError naming the first field of `bounds` (name -> the largest value it may take, None for no bound)
    that is below 1 or above its bound; a list field's entries are checked each, a field left None passes."""
    for name, most in bounds.items():
        value = getattr(cfg, name)
        flag = "--" + name.replace("_", "-")
        for entry in value if isinstance(value, list) else [value]:
            if entry is None:
                continue
            if entry < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}")
            if most is not None and entry > most:
                raise ConfigError(f"{flag} must be at most {most:,}, got {value}")


def require_id(cfg, name, count, what):
    """ConfigError unless the field `name`, if set, is an id from 0 to count - 1 of `what` (users, items, ...): a
    negative id would otherwise index from the end, silently."""
    value = getattr(cfg, name)
    if value is not None and not 0 <= value < count:
        raise ConfigError(f"--{name.replace('_', '-')} {value} is out of range: the {what} are numbered 0 to "
                          f"{count - 1}")


def require_positive(cfg, *names):
    """ConfigError naming the first of the fields `names` below 1 (sizes, counts and epochs)."""
    require_sizes(cfg, dict.fromkeys(names))


def describe_settings(settings):
    return ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in settings.items())


def apply_settings(cfg, settings, protected):
    """Set each of `settings` that is not protected; return those that changed."""
    changed = {name: value for name, value in settings.items()
               if name not in protected and getattr(cfg, name) != value}
    for name, value in changed.items():
        setattr(cfg, name, value)
    return changed


def settle(cfg, protected, stage, demo=None, say=print, embedded=None, check=None):
    """The run's final settings: a resumed run's saved ones under the protected flags, or, on the embedded
    catalogue, the demo settings under the protected flags and the typed preset. Unless `embedded` is given (a
    stage that reads its data from an earlier run), `cfg.dataset` is resolved to the absolute path of the dataset
    file, so that the run reopens the very file from any working directory. The saved settings are validated as
    flags are, and by `check(cfg)` if given. `demo` is the settings, or a function of (cfg, protected) that returns
    them (a stage whose demo depends on a flag typed)."""
    if getattr(cfg, "resume", False):
        path = Path(cfg.out or Path("runs") / stage) / "checkpoint.pt"
        saved = saved_config(type(cfg), load_checkpoint(path, stage, mmap=True, fields=("config",))["config"], path,
                             check)
        apply_settings(cfg, dataclasses.asdict(saved), protected | {"resume"})
    if embedded is None:
        path, embedded = resolve_dataset(cfg.dataset)
        cfg.dataset = str(path)
    if embedded and demo and not getattr(cfg, "resume", False):
        changed = apply_settings(cfg, demo(cfg, protected) if callable(demo) else demo, protected)
        if changed:
            say(f"{stage}: embedded catalogue, demo settings {describe_settings(changed)}")
    return cfg


def train_stage(cfg, protected, stage, demo, check, train):
    """A training stage's run: the flags checked as given (before any data is read), the ranks joined (under
    torchrun) or one process, the settings settled (rank 0 first, as it may generate the embedded catalogue) and
    checked again, then train(cfg, ranks)."""
    check(cfg)
    ranks = setup(cfg.device)
    try:
        with ranks.main_first():
            settle(cfg, protected, stage, demo, say=ranks.print, check=check)
        check(cfg)
        return train(cfg, ranks)
    finally:
        teardown()


@contextlib.contextmanager
def stage_errors(stage):
    """Turn a ProjectError into SystemExit("<stage>: <message>"): one line, no traceback."""
    try:
        yield
    except ProjectError as error:
        raise SystemExit(f"{stage}: {error}") from error
