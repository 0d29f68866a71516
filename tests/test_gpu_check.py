"""bench/gpu_check.sh without a GPU: every stage command of its groups parses and passes its stage's checks.

The script runs on a GPU machine lent for minutes; a flag misspelt there costs the whole run. Here `python3` is a
stand-in that records its arguments, so the groups' control flow runs as written and each recorded stage command
goes through the parser and config check the real command would meet first.
"""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import dvbpr.config
import gan.config
import pm.config
from common.cli import parse_config

ROOT = Path(__file__).resolve().parent.parent
STAGES = {"dvbpr/main.py": (dvbpr.config.DVBPRConfig, dvbpr.config.PRESETS, dvbpr.config.check_config),
          "gan/main.py": (gan.config.GANConfig, gan.config.PRESETS, gan.config.check_config),
          "pm/main.py": (pm.config.PMConfig, pm.config.PRESETS, pm.config.check_config)}


def recorded_commands(tmp_path, group, sizes="64 128"):
    """[argv] of every `python3` call that `bash bench/gpu_check.sh GROUP` makes, run from a copy of the script in
    an empty tree (no runs/ there, so the groups train their own DVBPRs)."""
    (tmp_path / "bench").mkdir(parents=True)
    shutil.copy(ROOT / "bench" / "gpu_check.sh", tmp_path / "bench")
    shim, calls = tmp_path / "bin" / "python3", tmp_path / "calls.jsonl"
    shim.parent.mkdir()
    shim.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}", "OUT": str(tmp_path / "out"),
           "SIZES": sizes}
    subprocess.run(["bash", "bench/gpu_check.sh", group], cwd=tmp_path, env=env, check=True, capture_output=True,
                   timeout=60)
    return [json.loads(line) for line in calls.read_text().splitlines()]


def stage_configs(commands):
    """[(script, config)] of the stage commands, each parsed and checked as its main.py would first."""
    configs = []
    for argv in commands:
        if argv and argv[0] in STAGES:
            config_class, presets, check = STAGES[argv[0]]
            cfg, _ = parse_config(config_class, argv[1:], presets)
            check(cfg)
            configs.append((argv[0], cfg))
    return configs


@pytest.mark.parametrize("group", ["demos", "design", "presets"])   # presets-tuned: the next test
def test_every_stage_command_of_a_gpu_group_parses_and_passes_its_checks(tmp_path, group):
    configs = stage_configs(recorded_commands(tmp_path, group))
    assert configs and all(cfg.device == "cuda" for _, cfg in configs)


def test_presets_tuned_tables_and_figures_take_the_steps_of_their_own_tuning(tmp_path):
    configs = [cfg for script, cfg in stage_configs(recorded_commands(tmp_path, "presets-tuned"))
               if script == "pm/main.py"]
    tunings = {cfg.gan_run: cfg.out for cfg in configs if cfg.tune}
    users = [cfg for cfg in configs if not cfg.tune]
    assert len(tunings) == 2 and len(users) == 4     # per preset: a tuning, then Table IV and fig. 5
    assert all(cfg.steps_from_tune == tunings[cfg.gan_run] for cfg in users)
    assert sum(cfg.table for cfg in users) == 2 and all(cfg.judge_run for cfg in configs if cfg.table or cfg.tune)
    trained = {cfg.out for script, cfg in stage_configs(recorded_commands(tmp_path / "again", "presets-tuned", "128"))
               if script == "gan/main.py"}
    assert [Path(run).name for run in trained] == ["gan-128"]      # SIZES picks the presets
