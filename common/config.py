"""Plain dataclass configs with command-line overrides.

Precedence, lowest first: the dataclass defaults, the chosen preset, settings a caller applies with
`apply_defaults` (e.g. demo sizes for the embedded catalogue), and flags given on the command line.
A field's help text and choices come from its metadata: `field(default=..., metadata={"help": ...})`.
"""
import argparse
import dataclasses
import types
import typing


def _strip_optional(kind):
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind


def _add_argument(parser, name, kind, default, help_text, choices):
    flag = "--" + name.replace("_", "-")
    if "(default" not in help_text:
        help_text = f"{help_text} (default: {default})".strip()
    common = dict(dest=name, default=argparse.SUPPRESS, help=help_text)
    kind = _strip_optional(kind)
    if kind is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
    elif typing.get_origin(kind) in (list, tuple):
        parser.add_argument(flag, type=typing.get_args(kind)[0], nargs="+", **common)
    else:
        parser.add_argument(flag, type=kind, choices=choices, **common)


def parse_config(cfg_cls, argv=None, presets=None, description=""):
    """Parse argv into `cfg_cls`; return (config, names of the fields given explicitly)."""
    presets = presets or {}
    defaults = cfg_cls()
    parser = argparse.ArgumentParser(description=description)
    hints = typing.get_type_hints(cfg_cls)
    for field in dataclasses.fields(cfg_cls):
        choices = sorted(presets) if field.name == "preset" and presets else field.metadata.get("choices")
        _add_argument(parser, field.name, hints[field.name], getattr(defaults, field.name),
                      field.metadata.get("help", ""), choices)
    given = vars(parser.parse_args(argv))
    preset_name = given.get("preset", getattr(defaults, "preset", None))
    cfg = dataclasses.replace(defaults, **presets.get(preset_name, {}))
    cfg = dataclasses.replace(cfg, **given)
    return cfg, set(given)


def apply_defaults(cfg, overrides, explicit):
    """Set each override the user did not give on the command line; return what changed."""
    changed = {name: value for name, value in overrides.items()
               if name not in explicit and getattr(cfg, name) != value}
    for name, value in changed.items():
        setattr(cfg, name, value)
    return changed
