"""DVBPR as a column of Table III, read from a finished run (--dvbpr-run DIR, default runs/dvbpr) through
dvbpr/run.py; a run of another dataset, protocol or tie rule is refused."""
from baselines.train import Selection
from common.errors import DatasetError
from common.metrics import tie_rule
from dvbpr.run import read_results


def column(ctx):
    cfg = ctx.cfg
    run_path = cfg.dvbpr_run
    results = read_results(run_path)
    made = (results["protocol"], results.get("ties", "not recorded"), results["dataset"])
    wanted = (cfg.protocol, tie_rule(cfg.protocol, cfg.ties), ctx.dataset.name)
    if made != wanted:
        raise DatasetError(f"{run_path}/results.json is a {describe_run(*made)}, not a {describe_run(*wanted)}")
    return Selection(ctx.label, {"k": results["k"], "image_size": results["image_size"]}, results["epoch"],
                     valid={"all": results["valid_auc"], "cold": results["valid_auc_cold"]},
                     test={"all": results["test_auc"], "cold": results["test_auc_cold"]})


def describe_run(protocol, ties, dataset):
    return f"{protocol} run (ties: {ties}) on {dataset}"
