"""A column of Table III read from a finished run's results.json (DVBPR's, the attention model's): its kept epoch's
metrics. A run of another dataset, protocol, tie rule or selection metric is refused."""
from baselines.train import Selection
from common.errors import DatasetError
from common.metrics import tie_rule


def finished_run_column(ctx, run_path, results):
    cfg = ctx.cfg
    made = (results["protocol"], results.get("ties", "not recorded"), results["dataset"], results.get("eval_users"))
    wanted = (cfg.protocol, tie_rule(cfg.protocol, cfg.ties), ctx.dataset.name, cfg.eval_users)
    if made != wanted:
        raise DatasetError(f"{run_path}/results.json is from {describe_run(*made)}, not from {describe_run(*wanted)}")
    selected_by = results.get("select_metric", "valid_auc")  # runs from before --select-metric kept the best AUC
    if results.get("selected", "best-valid") == "best-valid" and selected_by != cfg.select_metric:
        raise DatasetError(f"{run_path}/results.json kept the epoch of the best {selected_by}, not of the best "
                           f"{cfg.select_metric}: give --select-metric {selected_by}, or train it again with "
                           f"--select-metric {cfg.select_metric}")
    return Selection(ctx.label, {"k": results["k"], "image_size": results["image_size"]}, results["epoch"],
                     valid=split_results(results, "valid"), test=split_results(results, "test"))


def split_results(results, split):
    """The run's metrics of one split in evaluate_ranking's form."""
    metrics = {name.removeprefix(f"{split}_"): value for name, value in results.items()
               if name.startswith(f"{split}_")}
    return {"all": metrics["auc"], "cold": metrics["auc_cold"], "metrics": metrics}


def describe_run(protocol, ties, dataset, eval_users):
    users = "every user" if eval_users is None else f"{eval_users} users"
    return f"a run of the {protocol} protocol (ties: {ties}) on {dataset}, {users} evaluated"
