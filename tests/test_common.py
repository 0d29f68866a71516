"""Configs, checkpoints, run logs and device helpers shared by every stage."""
import dataclasses
import pickle
import re

import pytest
import torch

from common.checkpoint import (
    fingerprint,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
    write_json,
)
from common.cli import apply_settings, parse_config, settle, stage_errors
from common.device import autocast, pick_device
from common.errors import CheckpointError, ConfigError, DatasetError
from common.machine import machine_line, matmul_gflops
from common.runlog import RunLog, run_dir
from common.seeding import derived_seed


@dataclasses.dataclass
class ToyConfig:
    preset: str = "paper"
    factors: int = dataclasses.field(default=50, metadata={"help": "latent factors K"})
    lr: float = 1e-4
    amp: bool = True
    etas: list[float] = dataclasses.field(default_factory=lambda: [1.0])
    out: str | None = None
    resume: bool = False


PRESETS = {"paper": {"lr": 2e-4}, "original": {"factors": 100}}
DEMO = {"factors": 8, "lr": 0.1, "amp": False}


def test_parse_config_defaults_presets_and_explicit_flags():
    cfg, protected = parse_config(ToyConfig, [], PRESETS)
    assert (cfg.factors, cfg.lr, cfg.amp, cfg.out, protected) == (50, 2e-4, True, None, set())
    cfg, protected = parse_config(ToyConfig, ["--preset", "original"], PRESETS)
    assert (cfg.factors, cfg.lr, protected) == (100, 1e-4, {"preset", "factors"})
    cfg, protected = parse_config(ToyConfig, ["--preset", "original", "--factors", "7", "--no-amp",
                                              "--etas", "0.1", "10", "--out", "x"], PRESETS)
    assert (cfg.factors, cfg.amp, cfg.etas, cfg.out) == (7, False, [0.1, 10.0], "x")
    assert protected == {"preset", "factors", "amp", "etas", "out"}


@dataclasses.dataclass
class PositionalConfig:
    runs: list[str] = dataclasses.field(default_factory=list, metadata={"help": "run folders", "positional": True,
                                                                        "metavar": "RUN"})
    label: str = dataclasses.field(default="x", metadata={"positional": True})
    out: str | None = None


def test_a_positional_field_takes_its_values_among_the_flags(capsys):
    cfg, protected = parse_config(PositionalConfig, ["a", "--out", "o", "b", "c", "last"])
    assert (cfg.runs, cfg.label, cfg.out, protected) == (["a", "b", "c"], "last", "o", {"runs", "label", "out"})
    with pytest.raises(SystemExit):
        parse_config(PositionalConfig, ["--out", "o"])
    assert "the following arguments are required: RUN, LABEL" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(PositionalConfig, ["--help"])
    assert "[--out OUT] RUN [RUN ...] LABEL" in " ".join(capsys.readouterr().out.split())


def test_parse_config_rejects_unknown_preset_and_flags(capsys):
    with pytest.raises(SystemExit):
        parse_config(ToyConfig, ["--preset", "nope"], PRESETS)
    with pytest.raises(SystemExit):
        parse_config(ToyConfig, ["--no-such-flag"], PRESETS)
    with pytest.raises(SystemExit) as exit_info:
        parse_config(ToyConfig, ["--help"], PRESETS)
    assert exit_info.value.code == 0
    assert "latent factors K" in capsys.readouterr().out


def settled(argv, embedded=True):
    cfg, protected = parse_config(ToyConfig, argv, PRESETS)
    return settle(cfg, protected, "toy", DEMO, say=lambda line: None, embedded=embedded)


def test_one_rule_flag_then_typed_preset_then_demo_then_default_preset_then_defaults():
    cfg = settled([])                                  # demo beats the default preset and the defaults
    assert (cfg.factors, cfg.lr, cfg.amp, cfg.etas) == (8, 0.1, False, [1.0])
    cfg = settled(["--preset", "original"])            # a typed preset beats the demo for its own fields
    assert (cfg.factors, cfg.lr, cfg.amp) == (100, 0.1, False)
    cfg = settled(["--preset", "original", "--factors", "7", "--amp"])   # flags beat everything
    assert (cfg.factors, cfg.lr, cfg.amp) == (7, 0.1, True)
    cfg = settled([], embedded=False)                  # no demo off the embedded catalogue
    assert (cfg.factors, cfg.lr, cfg.amp) == (50, 2e-4, True)


def test_apply_settings_never_overrides_protected_fields():
    cfg, protected = parse_config(ToyConfig, ["--lr", "0.5"], PRESETS)
    assert apply_settings(cfg, {"lr": 0.1, "factors": 8}, protected) == {"factors": 8}
    assert (cfg.lr, cfg.factors) == (0.5, 8)


def test_a_resumed_run_takes_its_saved_settings_under_the_flags(tmp_path):
    save_checkpoint(tmp_path / "checkpoint.pt", {"stage": "toy", "config": {
        **dataclasses.asdict(ToyConfig()), "factors": 3, "lr": 0.25, "out": str(tmp_path)}})
    cfg = settled(["--resume", "--out", str(tmp_path), "--lr", "0.5"])
    assert (cfg.factors, cfg.lr, cfg.amp, cfg.resume) == (3, 0.5, True, True)   # no demo on a resumed run
    save_checkpoint(tmp_path / "checkpoint.pt", {"stage": "toy", "config": {"factors": 3, "stranger": 1}})
    with pytest.raises(CheckpointError, match="stranger"):
        settled(["--resume", "--out", str(tmp_path)])
    save_checkpoint(tmp_path / "checkpoint.pt", {"stage": "gan", "config": {}})
    with pytest.raises(CheckpointError, match="written by the 'gan' stage, not by 'toy'"):
        settled(["--resume", "--out", str(tmp_path)])


def test_stage_errors_are_one_line_naming_the_stage():
    with pytest.raises(SystemExit, match="^toy: no such thing$"):
        with stage_errors("toy"):
            raise DatasetError("no such thing")
    with pytest.raises(KeyError):           # not a project error: a bug keeps its traceback
        with stage_errors("toy"):
            raise KeyError("bug")


def test_json_is_written_atomically_and_fingerprints_are_stable(tmp_path):
    write_json(tmp_path / "a.json", {"b": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "b": [\n    1,\n    2\n  ]\n}\n'
    assert list(tmp_path.iterdir()) == [tmp_path / "a.json"]
    assert fingerprint({"x": 1, "y": 2}) == fingerprint({"y": 2, "x": 1}) != fingerprint({"x": 1, "y": 3})


def test_checkpoint_round_trip_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "step": 5})
    state = load_checkpoint(path)
    assert state["step"] == 5 and torch.equal(state["model"]["w"], torch.arange(3.0))
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]


def test_derived_seeds_differ_per_key_and_repeat():
    seeds = {derived_seed(0, step, rank) for step in range(50) for rank in range(4)}
    assert len(seeds) == 200 and derived_seed(0, 3, 1) == derived_seed(0, 3, 1)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    def crash_midway(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


class Payload:
    def __reduce__(self):
        return (print, ("executed",))


def test_load_refuses_truncated_missing_and_unsafe_files(tmp_path, capsys):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.ones(1000)}})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    unsafe = tmp_path / "unsafe.pt"
    unsafe.write_bytes(pickle.dumps({"model": Payload()}))
    for bad in (truncated, unsafe, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError):
            load_checkpoint(bad)
    assert "executed" not in capsys.readouterr().out


def test_runlog_appends_json_lines_and_resumes(tmp_path):
    out = run_dir(tmp_path / "r", "dvbpr")
    log = RunLog(out)
    log.record(epoch=1, auc=0.6)
    RunLog(out, resume=True).record(epoch=2, auc=0.7)
    assert [r["epoch"] for r in RunLog(out, resume=True).records()] == [1, 2]
    assert RunLog(out).records() == []


def test_cpu_device_helpers():
    device = pick_device("cpu")
    with autocast(device):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            pick_device("cuda")
    with pytest.raises(ConfigError, match="'tpu' is not a device|runs on cpu or cuda"):
        pick_device("tpu")


def test_a_restored_optimizer_takes_the_learning_rate_given_now():
    weight = torch.nn.Parameter(torch.ones(2))
    saved = torch.optim.Adam([weight], lr=0.1)
    weight.sum().backward()
    saved.step()
    resumed = torch.optim.Adam([weight], lr=0.1)
    restore_optimizer(resumed, saved.state_dict(), lr=0.5)
    assert resumed.param_groups[0]["lr"] == 0.5 and resumed.state[weight]["step"] == 1


def test_matmul_rate_is_a_positive_figure_and_the_machine_line_names_it():
    assert matmul_gflops(n=32, warmup=1, repeats=2) > 0
    line = machine_line(n=32)
    assert re.fullmatch(r"machine: cpu fp32 matmul 32\^2: [\d,]+ GFLOP/s \(\d+ threads\)(; .+ GFLOP/s)?", line)
