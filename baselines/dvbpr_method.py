"""DVBPR as a column of Table III: read from a finished run (--dvbpr-run DIR, its results.json), or trained here
into OUT/dvbpr with DVBPR's own settings rule (its demo settings on the embedded catalogue)."""
import json
from pathlib import Path

from baselines.train import Selection
from common.cli import settle
from common.errors import DatasetError, RunError
from common.metrics import tie_rule
from dvbpr.config import DEMO, DVBPRConfig, check_config
from dvbpr.train import train


def run(ctx):
    cfg = ctx.cfg
    run_path = Path(cfg.dvbpr_run) if cfg.dvbpr_run else Path(ctx.out) / "dvbpr"
    if not cfg.dvbpr_run:
        dvbpr_cfg = DVBPRConfig(out=str(run_path), dataset=str(ctx.dataset.path), cache_dir=cfg.cache_dir,
                                protocol=cfg.protocol, ties=cfg.ties, seed=cfg.seed, device=cfg.device)
        settle(dvbpr_cfg, {"out", "dataset", "cache_dir", "protocol", "ties", "seed", "device"}, "dvbpr", DEMO)
        check_config(dvbpr_cfg)
        train(dvbpr_cfg)
    path = run_path / "results.json"
    if not path.is_file():
        raise RunError(f"no results.json in {run_path}: is it a finished dvbpr/main.py run?")
    results = json.loads(path.read_text())
    made = (results["protocol"], results.get("ties", "not recorded"), results["dataset"])
    wanted = (cfg.protocol, tie_rule(cfg.protocol, cfg.ties), ctx.dataset.name)
    if made != wanted:
        raise DatasetError(f"{path} is a {describe_run(*made)}, not a {describe_run(*wanted)}")
    return Selection(ctx.label, {"k": results["k"], "image_size": results["image_size"]}, results["epoch"],
                     valid={"all": results["valid_auc"], "cold": results["valid_auc_cold"]},
                     test={"all": results["test_auc"], "cold": results["test_auc_cold"]})


def describe_run(protocol, ties, dataset):
    return f"{protocol} run (ties: {ties}) on {dataset}"
