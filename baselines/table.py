"""Table III of the paper: test AUC on All Items and Cold Items, a column per method, and DVBPR's improvement;
the same two rows for each other metric asked for (NDCG@20, Recall@20, ...: common/metrics.py's names).

Improvements are relative, as in the paper: DVBPR / other - 1 (Amazon Fashion, All Items: 0.7964 / 0.6278 - 1 =
26.9% over BPR-MF). "best" is the best method other than DVBPR in the same row.
The paper's numbers are printed beside ours when the dataset is one of the paper's (matched by file stem).
"""
import csv
from pathlib import Path

from common.checkpoint import write_json

PAPER_METHODS = ("RAND", "PopRank", "WARP", "BPR-MF", "VisRank", "FM", "VBPR", "DVBPR")
SETTINGS = ("All Items", "Cold Items")
VS_BPRMF, VS_BEST = "DVBPR vs BPR-MF (%)", "DVBPR vs best (%)"
TIE_WORDS = {"fail": "a tie counts as a failure", "half": "a tie counts half"}
METRIC_WORDS = {"auc": "AUC", "recall": "Recall", "ndcg": "NDCG", "mrr": "MRR", "sampled_hr": "HR",
                "sampled_ndcg": "NDCG"}

# file stem -> (name in the paper, {setting: (AUC per PAPER_METHODS..., improvement over BPR-MF %, over best %)})
PAPER_TABLE = {
    "AmazonFashion6ImgPartitioned": ("Amazon Fashion", {
        "All Items": (0.5, 0.5849, 0.6065, 0.6278, 0.6839, 0.7093, 0.7479, 0.7964, 26.9, 6.5),
        "Cold Items": (0.5, 0.3905, 0.5030, 0.5514, 0.6807, 0.7088, 0.7319, 0.7718, 40.0, 5.5)}),
    "AmazonWomenWithImgPartitioned": ("Amazon Women", {
        "All Items": (0.5, 0.6192, 0.5998, 0.6543, 0.6512, 0.6678, 0.7081, 0.7574, 15.8, 7.0),
        "Cold Items": (0.5, 0.3822, 0.5017, 0.5196, 0.6387, 0.6682, 0.6885, 0.7137, 37.4, 3.7)}),
    "AmazonMenWithImgPartitioned": ("Amazon Men", {
        "All Items": (0.5, 0.6060, 0.6081, 0.6450, 0.6589, 0.6654, 0.7089, 0.7410, 14.9, 4.5),
        "Cold Items": (0.5, 0.3903, 0.5005, 0.5132, 0.6545, 0.6705, 0.6863, 0.6923, 34.9, 0.9)}),
    "TradesyImgPartitioned": ("Tradesy.com", {
        "All Items": (0.5, 0.5268, 0.6176, 0.5860, 0.6457, 0.7662, 0.7500, 0.7857, 34.1, 2.5),
        "Cold Items": (0.5, 0.3946, 0.5333, 0.5418, 0.6084, 0.7730, 0.7525, 0.7793, 43.8, 0.8)}),
}


def improvements(row):
    """(DVBPR over BPR-MF, DVBPR over the best other method) in percent; None where a value is missing or the
    other's is 0 (a top-K metric no held-out item reached)."""
    ours = row.get("DVBPR")
    others = [value for method, value in row.items() if method != "DVBPR" and value is not None]
    relative = lambda other: None if ours is None or not other else round(100 * (ours / other - 1), 1)
    return relative(row.get("BPR-MF")), relative(max(others, default=None))


def paper_rows(dataset_name):
    """{setting: {column: value}} of the paper for this dataset, or None if it is not one of the paper's."""
    if dataset_name not in PAPER_TABLE:
        return None
    _, rows = PAPER_TABLE[dataset_name]
    return {setting: dict(zip((*PAPER_METHODS, VS_BPRMF, VS_BEST), values)) for setting, values in rows.items()}


def metric_label(metric):
    """recall@20 -> Recall@20, sampled_hr@10 -> HR@10 (sampled), mrr -> MRR."""
    name, at, k = metric.partition("@")
    return METRIC_WORDS[name] + at + k + (" (sampled)" if name.startswith("sampled_") else "")


def selection_label(select_metric):
    """valid_ndcg@20_cold -> validation NDCG@20 on Cold Items."""
    name = select_metric.removeprefix("valid_")
    cold = name.endswith("_cold")
    return f"validation {metric_label(name.removesuffix('_cold'))}" + (" on Cold Items" if cold else "")


def row_label(metric, setting):
    """The AUC rows keep the paper's labels (All Items, Cold Items); the others say their metric."""
    return setting if metric == "auc" else f"{metric_label(metric)}, {setting}"


def build_table(dataset_name, selections, features, protocol, ties="fail", metrics=("auc",),
                select_metric="valid_auc"):
    """The table as a dict (what table.json holds); `selections` maps method label -> train.Selection-like object
    (whose test dict holds evaluate_ranking's "metrics"), in the order of the columns; two rows per metric."""
    methods = list(selections)
    rows = {}
    for metric in metrics:
        for setting in SETTINGS:
            name = metric if setting == "All Items" else f"{metric}_cold"
            row = {method: selections[method].test["metrics"].get(name) for method in methods}
            rows[row_label(metric, setting)] = {**row, **dict(zip((VS_BPRMF, VS_BEST), improvements(row)))}
    return {
        "dataset": dataset_name,
        "paper_dataset": PAPER_TABLE[dataset_name][0] if dataset_name in PAPER_TABLE else None,
        "protocol": protocol,
        "ties": ties,
        "metrics": list(metrics),
        "select_metric": select_metric,
        "features": features,
        "columns": [*methods, VS_BPRMF, VS_BEST],
        "rows": rows,
        "paper": paper_rows(dataset_name),
        "selected": {method: {"params": s.params, "epoch": s.epoch, "valid": s.valid, "test": s.test,
                              "trials": s.trials} for method, s in selections.items()},
    }


def _cell(column, value, best=False):
    if value is None:
        return "–"
    text = f"{value:.1f}%" if column in (VS_BPRMF, VS_BEST) else f"{value:.4f}"
    return f"**{text}**" if best else text


def table_lines(table):
    """(label, source, {column: value}) per printed row: ours, then the paper's AUC beside it."""
    for label, row in table["rows"].items():
        yield label, "ours", row
        if table["paper"] and label in table["paper"]:
            yield f"{label} (paper)", "paper", table["paper"][label]


def render_markdown(table):
    columns = table["columns"]
    title = table["paper_dataset"] or table["dataset"]
    lines = [f"## Table III: {title}", "",
             f"Test {', '.join(map(metric_label, table['metrics']))} ({table['protocol']} protocol, "
             f"{TIE_WORDS[table['ties']]}) of the setting each method selected by "
             f"{selection_label(table['select_metric'])}. "
             f"Visual features: {table['features']}. Best method of each row in bold.", "",
             "| Setting | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, _, row in table_lines(table):
        aucs = [row.get(method) for method in columns if method not in (VS_BPRMF, VS_BEST)]
        top = max((v for v in aucs if v is not None), default=None)
        cells = [_cell(c, row.get(c), best=c not in (VS_BPRMF, VS_BEST) and row.get(c) == top) for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Selected settings (validation AUC all / cold):"]
    for method, chosen in table["selected"].items():
        params = ", ".join(f"{k}={v}" for k, v in chosen["params"].items()) or "none"
        epoch = f", epoch {chosen['epoch']}" if chosen["epoch"] is not None else ""
        cold = chosen["valid"]["cold"]
        lines.append(f"- {method}: {params}{epoch} ({chosen['valid']['all']:.4f} / "
                     f"{'–' if cold is None else f'{cold:.4f}'})")
    return "\n".join(lines) + "\n"


def write_table(out_dir, table):
    """table.md, table.csv and table.json in out_dir; returns their paths."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"table.{suffix}" for suffix in ("md", "csv", "json")]
    paths[0].write_text(render_markdown(table))
    with open(paths[1], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["setting", "source", *table["columns"]])
        for label, source, row in table_lines(table):
            setting = label.removesuffix(" (paper)")
            writer.writerow([setting, source, *("" if row.get(c) is None else row[c] for c in table["columns"])])
    write_json(paths[2], table)
    return paths
