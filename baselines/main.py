"""Every baseline of the paper's Table III (Sec. IV-B/C), and GMF and MLP, against DVBPR on the same split.

    python baselines/main.py                                  # embedded catalogue unless --dataset: a demo
    python baselines/main.py --dataset data/AmazonFashion6ImgPartitioned.npy --dvbpr-run runs/dvbpr
    python baselines/main.py --imagenet-weights pretrained/alexnet-owt-7be5be79.pth   # ImageNet features
    python baselines/main.py --preset quick --models bpr-mf vbpr --factors 10 --regs 0.01 0.1
    python baselines/main.py --metric auc ndcg@20 recall@20 --select-metric valid_ndcg@20   # today's metrics

Each learned model (WARP, BPR-MF, GMF, MLP, FM, VBPR) is trained for every (factors, regulariser) pair of the
grid, keeping its best epoch by a validation metric (--select-metric, default All-Items AUC as the paper); the
setting with the best one is selected and only its test metrics are reported (--metric: which ones the table
shows, AUC by default). RAND, PopRank and VisRank have nothing to tune. DVBPR comes from a finished run
(--dvbpr-run DIR, default runs/dvbpr), opened through dvbpr/run.py: train it first with dvbpr/main.py; Attention
likewise (--attention-run DIR, default runs/attention; attention/main.py). The methods and their order come from
baselines/registry.py. Writes Table III as table.md, table.csv and table.json, and metrics.jsonl, into --out.
"""
import dataclasses
import json
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from baselines.features import FeatureSettings, visual_features
from baselines.registry import METHODS
from baselines.table import build_table, render_markdown, write_table
from baselines.train import Context
from baselines.warp import MAX_TRIALS
from common.cli import MAX_BATCH, MAX_IMAGE_SIZE, MAX_WIDTH, parse_config, require_sizes, settle, stage_errors
from common.datasets import open_dataset
from common.device import describe, pick_device
from common.errors import ConfigError
from common.metrics import (
    check_cutoffs,
    check_metric_choice,
    cutoffs_field,
    eval_users_field,
    metric_names,
    protocol_field,
    selectable_metrics,
    tie_rule,
    ties_field,
)
from common.runlog import RunLog, run_dir


@dataclass
class BaselinesConfig:
    preset: str = field(default="paper", metadata={"help": "paper: the paper's grid, 20 epochs per setting; "
                                                           "quick: a narrow grid and fewer epochs; demo: quick with "
                                                           "32 px visual features of 3 epochs"})
    dataset: str | None = field(default=None, metadata={"help": "dataset: a .npy in the original format or a "
                                                                "dataset folder; without it AmazonFashion if "
                                                                "present, else the embedded catalogue"})
    out: str | None = field(default=None, metadata={"help": "output directory; without it runs/baselines"})
    cache_dir: str | None = field(default=None, metadata={"help": "folder of the decoded-image cache (None: a "
                                                                  "cache/ folder beside the dataset)"})
    dvbpr_run: str = field(default="runs/dvbpr", metadata={"help": "finished DVBPR run directory (python "
                                                                   "dvbpr/main.py) whose kept epoch is DVBPR's "
                                                                   "column"})
    attention_run: str = field(default="runs/attention", metadata={"help": "finished region-attention run "
                                                                           "directory (python attention/main.py) "
                                                                           "whose kept epoch is Attention's column"})
    models: list[str] = field(default_factory=lambda: list(METHODS),
                              metadata={"help": "methods to run, of " + " ".join(METHODS)})
    factors: list[int] = field(default_factory=lambda: [10, 30, 50], metadata={"help": "latent factors grid"})
    regs: list[float] = field(default_factory=lambda: [0, 0.001, 0.01, 0.1, 1, 10, 30],
                              metadata={"help": "regulariser grid"})
    epochs: int = field(default=20, metadata={"help": "epochs per setting (of N triplets, N = training "
                                                      "interactions); the best validation epoch is kept"})
    batch_size: int = field(default=256, metadata={"help": "triplets per Adam step"})
    lr: float = field(default=0.005, metadata={"help": "Adam learning rate of the learned baselines"})
    warp_max_trials: int = field(default=MAX_TRIALS, metadata={"help": "WARP's negatives drawn per positive "
                                                                       "before giving up"})
    imagenet_weights: str | None = field(default=None, metadata={"help": "torchvision AlexNet ImageNet weights "
                                                                         "file for the visual features; without it "
                                                                         "CNN-F is pre-trained on the categories"})
    feature_image_size: int = field(default=224, metadata={"help": "CNN-F input side for the pre-trained features"})
    feature_epochs: int = field(default=5, metadata={"help": "epochs of CNN-F category pre-training"})
    feature_lr: float = field(default=1e-4, metadata={"help": "Adam learning rate of CNN-F pre-training"})
    protocol: str = protocol_field()
    ties: str = ties_field()
    cutoffs: list[int] = cutoffs_field()
    eval_users: int | None = eval_users_field()
    metric: list[str] = field(default_factory=lambda: ["auc"], metadata={
        "help": "the test metrics Table III shows, two rows (All and Cold Items) each: auc (the paper's), "
                "ndcg@20, recall@20, mrr, ... (sampled100: auc, sampled_hr@10, sampled_ndcg@10)"})
    select_metric: str = field(default="valid_auc", metadata={
        "help": "the validation metric that picks each model's epoch and setting, e.g. valid_auc (the paper), "
                "valid_ndcg@20"})
    seed: int = field(default=0, metadata={"help": "seed of initialisations and sampling"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})


PRESETS = {
    "paper": dict(factors=[10, 30, 50], regs=[0, 0.001, 0.01, 0.1, 1, 10, 30], epochs=20, ties="fail"),
    "quick": dict(factors=[10], regs=[0.01, 0.1, 1], epochs=10),
}
# The embedded catalogue on a CPU: the baselines in a few minutes on 2 cores (DVBPR brings its own demo settings).
DEMO = dict(PRESETS["quick"], feature_image_size=32, feature_epochs=3, feature_lr=3e-4)
PRESETS["demo"] = {**PRESETS["paper"], **DEMO}


def report(selection):
    cold = lambda auc: "n/a" if auc is None else f"{auc:.4f}"
    params = ", ".join(f"{k}={v}" for k, v in selection.params.items()) or "nothing to tune"
    tqdm.write(f"{selection.name:8s} test AUC {selection.test['all']:.4f} (cold {cold(selection.test['cold'])})  "
               f"valid {selection.valid['all']:.4f} (cold {cold(selection.valid['cold'])})  [{params}]")


def check_config(cfg):
    unknown = sorted(set(cfg.models) - set(METHODS))
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(unknown)}; choose from {' '.join(METHODS)}")
    require_sizes(cfg, dict(epochs=None, batch_size=MAX_BATCH, feature_image_size=MAX_IMAGE_SIZE, feature_epochs=None,
                            factors=MAX_WIDTH, warp_max_trials=100_000, eval_users=None))
    check_cutoffs(cfg.cutoffs)
    for metric in cfg.metric:
        check_metric_choice(metric, "--metric", metric_names(cfg.protocol, cfg.cutoffs))
    check_metric_choice(cfg.select_metric, "--select-metric", selectable_metrics(cfg.protocol, cfg.cutoffs))


def table_iii(cfg):
    """Run the chosen methods in the registry's order and write Table III; returns the table dict."""
    started = time.time()
    dataset, embedded = open_dataset(cfg.dataset, cfg.cache_dir)
    device = pick_device(cfg.device)
    out = run_dir(cfg.out, "baselines")
    print("settings: " + json.dumps(dataclasses.asdict(cfg)))
    print(f"baselines on {dataset.name}: {dataset.usernum} users, {dataset.itemnum} items, "
          f"{dataset.num_train_interactions} training interactions; {cfg.protocol} AUC, ties "
          f"{tie_rule(cfg.protocol, cfg.ties)}; "
          f"device {describe(device)}; out {out}")
    methods = {name: method for name, method in METHODS.items() if name in cfg.models}
    features, features_description = None, "none"
    if any(method.visual for method in methods.values()):
        settings = FeatureSettings(cfg.imagenet_weights, cfg.feature_image_size, epochs=cfg.feature_epochs,
                                   lr=cfg.feature_lr, seed=cfg.seed)
        features, features_description = visual_features(dataset, settings, device, out / "features")
        print(f"visual features: {features_description}")
    runlog, selections = RunLog(out), {}
    for method in tqdm(methods.values(), desc="methods", unit="method"):
        selection = method.column(Context(method.label, dataset, features, cfg, device, out, embedded))
        selections[selection.name] = selection
        runlog.record(**dataclasses.asdict(selection))
        report(selection)
    table = build_table(dataset.name, selections, features_description, cfg.protocol,
                        tie_rule(cfg.protocol, cfg.ties), cfg.metric, cfg.select_metric)
    table["wall_seconds"] = round(time.time() - started, 1)
    paths = write_table(out, table)
    print(render_markdown(table))
    print(f"wrote {', '.join(map(str, paths))} in {table['wall_seconds']} s")
    return table


def main(argv=None):
    with stage_errors("baselines"):
        cfg, protected = parse_config(BaselinesConfig, argv, PRESETS, description=__doc__.split("\n")[0])
        check_config(cfg)
        settle(cfg, protected, "baselines", DEMO)
        return table_iii(cfg)


if __name__ == "__main__":
    main()
