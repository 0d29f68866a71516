"""Compare finished runs: one picture of their validation and test curves and a Markdown table of their final
metrics, the settings they differ in and their wall times.

    python tools/compare.py runs/dvbpr runs/dvbpr_bf16                 # runs/compare/compare.png and compare.md
    python tools/compare.py runs/dvbpr runs/dvbpr_fp32 --out docs --name bf16_vs_fp32

It reads what every DVBPR run writes (dvbpr/main.py): metrics.jsonl (one record per epoch), results.json (the kept
epoch and the main settings) and the full config saved in checkpoint.pt (or best.pt). The picture has one panel
per metric of --metrics (the numeric valid_* and test_* fields of the epoch records, validation on the left, test
on the right), one line per run, a star on the kept epoch, and a legend naming each run by its directory and the
settings in which it differs from the others.

    python tools/compare.py runs/a runs/b --metrics auc ndcg@20 recall@20     # or --metrics all
"""
import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from common.checkpoint import load_checkpoint
from common.cli import parse_config, stage_errors
from common.errors import RunError
from common.runlog import run_dir

METRICS_BUDGET = 16 << 20  # bytes of metrics.jsonl read (a 20-epoch DVBPR run writes about 6 KB)
RESULTS_BUDGET = 1 << 20   # bytes of results.json read
SPLIT_PREFIXES = ("valid", "test")
# Settings that say where a run lives, not how it was made (results.json's "dataset" names the data).
NOT_SETTINGS = {"out", "resume", "cache_dir", "dataset_path"}
FINAL_FIELDS = {"epoch", "step", "wall_seconds"}
CONFIG_NAMES = {"selected": "select"}  # results.json's names of config fields


@dataclass
class CompareConfig:
    runs: list[str] = field(default_factory=list, metadata={
        "help": "finished run directories (metrics.jsonl, results.json and checkpoint.pt, as dvbpr/main.py "
                "writes them)", "positional": True, "metavar": "RUN"})
    out: str | None = field(default=None, metadata={"help": "folder of the picture and the table; None: "
                                                            "runs/compare"})
    name: str = field(default="compare", metadata={"help": "file name of the picture (.png) and the table (.md)"})
    metrics: list[str] = field(default_factory=lambda: ["auc", "auc_cold"], metadata={
        "help": "the metrics shown, without their valid_/test_ prefix (auc, auc_cold, ndcg@20, recall@20_cold, "
                "mrr, ...), or all"})


@dataclass
class Run:
    name: str         # the directory as given
    records: list     # metrics.jsonl's epoch records, in order
    results: dict     # results.json
    settings: dict    # the saved config under results.json's settings


def read_text(path, budget):
    """The text of `path`, refused in one line when it is missing or larger than `budget` bytes."""
    if not path.is_file():
        raise RunError(f"{path} is missing: give a finished run (dvbpr/main.py writes it)")
    size = path.stat().st_size
    if size > budget:
        raise RunError(f"{path} is {size} bytes, more than the {budget} read of it: not a run's file")
    return path.read_text(errors="replace")


def read_json_object(text, where):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunError(f"{where} is not valid JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(value, dict):
        raise RunError(f"{where} holds a JSON {type(value).__name__}, not an object")
    return value


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def curve_metrics(record):
    """The record's numeric valid_* and test_* fields (None, a metric with no users, counts as a number)."""
    return [name for name, value in record.items()
            if name.partition("_")[0] in SPLIT_PREFIXES and name.partition("_")[2]
            and (value is None or is_number(value))]


def read_records(path):
    """metrics.jsonl's epoch records (those with an epoch and a validation or test metric)."""
    records = [read_json_object(line, f"{path}, line {number}")
               for number, line in enumerate(read_text(path, METRICS_BUDGET).splitlines(), 1) if line.strip()]
    epochs = [record for record in records if isinstance(record.get("epoch"), int) and curve_metrics(record)]
    if not epochs:
        raise RunError(f"{path} holds no epoch record with a validation or test metric: not a DVBPR run")
    return epochs


def saved_settings(folder):
    """The config dict saved in the run's checkpoint.pt (or best.pt), read memory-mapped; {} without either."""
    for name in ("checkpoint.pt", "best.pt"):
        if (folder / name).is_file():
            config = load_checkpoint(folder / name, mmap=True).get("config")
            if not isinstance(config, dict):
                raise RunError(f"{folder / name} holds no config dict: not a run's checkpoint")
            return config
    return {}


def read_run(name):
    folder = Path(name)
    records = read_records(folder / "metrics.jsonl")
    path = folder / "results.json"
    results = read_json_object(read_text(path, RESULTS_BUDGET), path)
    if not isinstance(results.get("epoch"), int):
        raise RunError(f"{path} names no kept epoch: not a finished DVBPR run")
    final = FINAL_FIELDS | set(curve_metrics(results))
    settings = {**saved_settings(folder), **{CONFIG_NAMES.get(k, k): v for k, v in results.items() if k not in final}}
    return Run(name, records, results, {k: v for k, v in settings.items() if k not in NOT_SETTINGS})


def differing_settings(runs):
    """{setting: [value in each run]} of the settings that are not the same in every run."""
    names = dict.fromkeys(name for run in runs for name in run.settings)
    values = {name: [run.settings.get(name) for run in runs] for name in names}
    return {name: column for name, column in values.items() if any(v != column[0] for v in column)}


def show(value):
    if isinstance(value, list):
        return ",".join(map(show, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def shown(names, wanted):
    """The metric names whose measure (the name without valid_/test_) is wanted ("all": every one)."""
    return [name for name in names if "all" in wanted or name.split("_", 1)[1] in wanted]


def metric_grid(runs, wanted):
    """Rows of (valid metric, test metric) by measure, e.g. [("valid_auc", "test_auc"), ...]; None where a
    split lacks the measure."""
    names = dict.fromkeys(name for run in runs for record in run.records for name in curve_metrics(record))
    measures = dict.fromkeys(name.split("_", 1)[1] for name in shown(names, wanted))
    return [tuple(f"{split}_{measure}" if f"{split}_{measure}" in names else None for split in SPLIT_PREFIXES)
            for measure in measures]


def legend_label(run, index, differing):
    settings = ", ".join(f"{name}={show(column[index])}" for name, column in differing.items())
    return textwrap.fill(f"{run.name}: {settings}" if settings else run.name, width=110, subsequent_indent="    ",
                         break_on_hyphens=False)


def plot_curves(runs, differing, wanted):
    """The figure: one panel per metric, one line per run, a star on each run's kept epoch."""
    grid, labels = metric_grid(runs, wanted), [legend_label(run, index, differing) for index, run in enumerate(runs)]
    legend_lines = sum(label.count("\n") + 1 for label in labels)
    figure = Figure(figsize=(11, 3 * len(grid) + 0.2 * legend_lines + 0.6), layout="constrained")
    axes = figure.subplots(len(grid), len(SPLIT_PREFIXES), squeeze=False, sharex=True, sharey="row")
    for row, names in zip(axes, grid):
        for ax, name in zip(row, names):
            if name is None:
                ax.set_visible(False)
                continue
            for run, label in zip(runs, labels):
                epochs = [record["epoch"] for record in run.records]
                values = [record[name] if is_number(record.get(name)) else math.nan for record in run.records]
                line, = ax.plot(epochs, values, label=label)
                kept = run.results["epoch"]
                if kept in epochs:
                    ax.scatter([kept], [values[epochs.index(kept)]], marker="*", s=160, color=line.get_color(),
                               edgecolors="black", linewidths=0.5, zorder=3)
            ax.set_title(name)
            ax.grid(alpha=0.3)
            ax.tick_params(labelleft=True)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    shown = next(ax for ax in axes.flat if ax.get_visible())
    figure.legend(*shown.get_legend_handles_labels(), loc="outside lower center", fontsize="small",
                  title="runs (settings that differ); a star marks the kept epoch", title_fontsize="small")
    return figure


def markdown_table(runs, differing, wanted):
    """Each run's final metrics (results.json: the kept epoch's), wall time, and the settings that differ."""
    metrics = shown(dict.fromkeys(name for run in runs for name in curve_metrics(run.results)), wanted)
    header = ["run", "kept epoch", *metrics, "wall time"]
    rows = [[run.name, str(run.results["epoch"]), *(show_metric(run.results.get(name)) for name in metrics),
             f"{run.results['wall_seconds']} s" if "wall_seconds" in run.results else "n/a"] for run in runs]
    lines = [table_lines(header, rows)]
    if differing:
        lines += ["", "Settings that differ:", "",
                  table_lines(["setting", *(run.name for run in runs)],
                              [[name, *map(show, column)] for name, column in differing.items()])]
    return "\n".join(lines) + "\n"


def show_metric(value):
    return "n/a" if value is None else f"{value:.4f}"


def table_lines(header, rows):
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows])


def compare(cfg):
    """Write <out>/<name>.png and <name>.md for cfg.runs; returns (the figure, the table's Markdown)."""
    if not cfg.runs:
        raise RunError("give at least one run directory")
    runs = [read_run(name) for name in cfg.runs]
    differing = differing_settings(runs)
    if not metric_grid(runs, cfg.metrics):
        measures = dict.fromkeys(name.split("_", 1)[1] for run in runs for name in curve_metrics(run.records[0]))
        raise RunError(f"the runs hold none of --metrics {' '.join(cfg.metrics)}; they hold {' '.join(measures)}")
    figure, table = plot_curves(runs, differing, cfg.metrics), markdown_table(runs, differing, cfg.metrics)
    out = run_dir(cfg.out, "compare")
    figure.savefig(out / f"{cfg.name}.png", dpi=110)
    (out / f"{cfg.name}.md").write_text(table)
    print(table, end="")
    print(f"wrote {out / cfg.name}.png and {cfg.name}.md")
    return figure, table


def main(argv=None):
    with stage_errors("compare"):
        cfg, _ = parse_config(CompareConfig, argv, description=__doc__.split("\n")[0])
        return compare(cfg)


if __name__ == "__main__":
    main()
