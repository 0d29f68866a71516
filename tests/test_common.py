"""Configs, checkpoints, run logs and device helpers shared by every stage."""
import dataclasses
import pickle

import pytest
import torch

from common.checkpoint import CheckpointError, derived_seed, load_checkpoint, save_checkpoint
from common.config import apply_defaults, parse_config
from common.device import autocast, pick_device
from common.runlog import RunLog, run_dir


@dataclasses.dataclass
class ToyConfig:
    preset: str = "paper"
    factors: int = dataclasses.field(default=50, metadata={"help": "latent factors K"})
    lr: float = 1e-4
    amp: bool = True
    etas: list[float] = dataclasses.field(default_factory=lambda: [1.0])
    out: str | None = None


PRESETS = {"paper": {}, "original": {"factors": 100}}


def test_parse_config_defaults_presets_and_explicit_flags():
    cfg, explicit = parse_config(ToyConfig, [], PRESETS)
    assert (cfg.factors, cfg.lr, cfg.amp, cfg.out, explicit) == (50, 1e-4, True, None, set())
    cfg, _ = parse_config(ToyConfig, ["--preset", "original"], PRESETS)
    assert cfg.factors == 100
    cfg, explicit = parse_config(ToyConfig, ["--preset", "original", "--factors", "7", "--no-amp",
                                             "--etas", "0.1", "10", "--out", "x"], PRESETS)
    assert (cfg.factors, cfg.amp, cfg.etas, cfg.out) == (7, False, [0.1, 10.0], "x")
    assert explicit == {"preset", "factors", "amp", "etas", "out"}


def test_parse_config_rejects_unknown_preset_and_flags(capsys):
    with pytest.raises(SystemExit):
        parse_config(ToyConfig, ["--preset", "nope"], PRESETS)
    with pytest.raises(SystemExit):
        parse_config(ToyConfig, ["--no-such-flag"], PRESETS)
    with pytest.raises(SystemExit) as exit_info:
        parse_config(ToyConfig, ["--help"], PRESETS)
    assert exit_info.value.code == 0
    assert "latent factors K" in capsys.readouterr().out


def test_apply_defaults_never_overrides_explicit_flags():
    cfg, explicit = parse_config(ToyConfig, ["--lr", "0.5"], PRESETS)
    changed = apply_defaults(cfg, {"lr": 0.1, "factors": 8}, explicit)
    assert changed == {"factors": 8}
    assert (cfg.lr, cfg.factors) == (0.5, 8)


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
        with pytest.raises(RuntimeError):
            pick_device("cuda")
