"""A column of Table III read from a finished run's results.json (DVBPR's, the attention model's): its kept epoch's
AUCs. A run of another dataset, protocol or tie rule is refused."""
from baselines.train import Selection
from common.errors import DatasetError
from common.metrics import tie_rule


def finished_run_column(ctx, run_path, results):
    cfg = ctx.cfg
    made = (results["protocol"], results.get("ties", "not recorded"), results["dataset"])
    wanted = (cfg.protocol, tie_rule(cfg.protocol, cfg.ties), ctx.dataset.name)
    if made != wanted:
        raise DatasetError(f"{run_path}/results.json is a {describe_run(*made)}, not a {describe_run(*wanted)}")
    return Selection(ctx.label, {"k": results["k"], "image_size": results["image_size"]}, results["epoch"],
                     valid={"all": results["valid_auc"], "cold": results["valid_auc_cold"]},
                     test={"all": results["test_auc"], "cold": results["test_auc_cold"]})


def describe_run(protocol, ties, dataset):
    return f"{protocol} run (ties: {ties}) on {dataset}"
