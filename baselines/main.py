"""Every baseline of the paper's Table III (Sec. IV-B/C), and GMF and MLP, against DVBPR on the same split.

    python baselines/main.py                                  # embedded catalogue unless --dataset: a demo
    python baselines/main.py --dataset data/AmazonFashion6ImgPartitioned.npy --dvbpr-run runs/dvbpr
    python baselines/main.py --imagenet-weights pretrained/alexnet-owt-7be5be79.pth   # ImageNet features
    python baselines/main.py --preset quick --models bpr-mf vbpr --factors 10 --regs 0.01 0.1

Each learned model (WARP, BPR-MF, GMF, MLP, FM, VBPR) is trained for every (factors, regulariser) pair of the
grid, keeping its best epoch by validation AUC; the setting with the best validation All-Items AUC is selected
and only its test AUC is reported. RAND, PopRank and VisRank have nothing to tune. DVBPR comes from a finished
run (--dvbpr-run DIR, its results.json) or is trained here with dvbpr/main.py (demo settings on the embedded
catalogue). Writes Table III as table.md, table.csv and table.json, and metrics.jsonl, into --out.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataclasses
import json
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from baselines.bpr import BPRMF, bpr_loss
from baselines.features import FeatureError, FeatureSettings, visual_features
from baselines.fm import FactorizationMachine
from baselines.ncf import GMF, MLP, NEGATIVES_PER_POSITIVE, log_loss
from baselines.poprank import PopRank
from baselines.rand import Random
from baselines.table import build_table, render_markdown, write_table
from baselines.train import FitSettings, Selection, fit, grid_search, parameter_grid, unlearned
from baselines.visrank import VisRank
from baselines.vbpr import VBPR
from baselines.warp import MAX_TRIALS, warp_loss
from common.catalogue import open_dataset
from common.checkpoint import seed_everything
from common.config import apply_defaults, parse_config
from common.data import DatasetError
from common.device import describe, pick_device
from common.runlog import RunLog, run_dir
from dvbpr.main import main as dvbpr_main

MODELS = ("rand", "poprank", "warp", "bpr-mf", "gmf", "mlp", "visrank", "fm", "vbpr", "dvbpr")
LEARNED = ("warp", "bpr-mf", "gmf", "mlp", "fm", "vbpr")
VISUAL = ("visrank", "fm", "vbpr")
TABLE_NAMES = {"rand": "RAND", "poprank": "PopRank", "warp": "WARP", "bpr-mf": "BPR-MF", "gmf": "GMF", "mlp": "MLP",
               "visrank": "VisRank", "fm": "FM", "vbpr": "VBPR", "dvbpr": "DVBPR"}


@dataclass
class BaselinesConfig:
    preset: str = field(default="paper", metadata={"help": "paper: the paper's grid, 20 epochs per setting; "
                                                           "quick: a narrow grid and fewer epochs"})
    dataset: str | None = field(default=None, metadata={"help": "dataset .npy in the original format; without it "
                                                                "AmazonFashion if present, else the embedded "
                                                                "catalogue"})
    out: str | None = field(default=None, metadata={"help": "output directory; without it runs/baselines"})
    dvbpr_run: str | None = field(default=None, metadata={"help": "finished DVBPR run directory whose "
                                                                  "results.json to use; without it DVBPR is "
                                                                  "trained into OUT/dvbpr"})
    models: list[str] = field(default_factory=lambda: list(MODELS),
                              metadata={"help": "methods to run, of " + " ".join(MODELS)})
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
    protocol: str = field(default="exact", metadata={"help": "AUC protocol", "choices": ["exact", "sampled100"]})
    seed: int = field(default=0, metadata={"help": "seed of initialisations and sampling"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})


PRESETS = {
    "paper": dict(factors=[10, 30, 50], regs=[0, 0.001, 0.01, 0.1, 1, 10, 30], epochs=20),
    "quick": dict(factors=[10], regs=[0.01, 0.1, 1], epochs=10),
}
# The embedded catalogue on a CPU: the baselines in a few minutes on 2 cores (DVBPR brings its own demo settings).
# A preset given explicitly keeps its grid.
DEMO_SETTINGS = dict(PRESETS["quick"], feature_image_size=32, feature_epochs=3, feature_lr=3e-4)


def learned_models(dataset, features, cfg):
    """name -> (model constructor of factors, loss, negatives per positive)."""
    u, i = dataset.usernum, dataset.itemnum
    return {
        "warp": (lambda k: BPRMF(u, i, k), warp_loss, cfg.warp_max_trials),
        "bpr-mf": (lambda k: BPRMF(u, i, k), bpr_loss, 1),
        "gmf": (lambda k: GMF(u, i, k), log_loss, NEGATIVES_PER_POSITIVE),
        "mlp": (lambda k: MLP(u, i, k), log_loss, NEGATIVES_PER_POSITIVE),
        "fm": (lambda k: FactorizationMachine(u, features, k), bpr_loss, 1),
        "vbpr": (lambda k: VBPR(u, features, k), bpr_loss, 1),
    }


def run_learned(name, dataset, features, cfg, device):
    build, loss, negatives = learned_models(dataset, features, cfg)[name]
    settings = FitSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, negatives=negatives,
                           protocol=cfg.protocol, seed=cfg.seed)

    def train(factors, reg):
        seed_everything(cfg.seed)
        return fit(build(factors), dataset, loss, reg, settings, device, desc=f"{TABLE_NAMES[name]} K={factors} "
                                                                              f"reg={reg}")
    return grid_search(TABLE_NAMES[name], dataset, train, parameter_grid(cfg.factors, cfg.regs), device,
                       cfg.protocol, cfg.seed)


def run_unlearned(name, dataset, features, cfg, device):
    model = {"rand": lambda: Random(dataset.itemnum, device, cfg.seed),
             "poprank": lambda: PopRank(dataset, device),
             "visrank": lambda: VisRank(dataset, features)}[name]()
    train = lambda: unlearned(model, dataset, device, cfg.protocol, cfg.seed)
    return grid_search(TABLE_NAMES[name], dataset, train, [{}], device, cfg.protocol, cfg.seed)


def run_dvbpr(cfg, dataset, embedded, out):
    """DVBPR's Selection from a finished run's results.json, training it first without --dvbpr-run."""
    run = Path(cfg.dvbpr_run) if cfg.dvbpr_run else out / "dvbpr"
    if not cfg.dvbpr_run:
        dvbpr_main(["--out", str(run), "--dataset", "embedded" if embedded else str(dataset.path),
                    "--protocol", cfg.protocol, "--seed", str(cfg.seed), "--device", cfg.device])
    path = run / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results.json in {run}: is it a finished dvbpr/main.py run?")
    results = json.loads(path.read_text())
    if results["dataset"] != dataset.name or results["protocol"] != cfg.protocol:
        raise DatasetError(f"{path} is a {results['protocol']} run on {results['dataset']}, not a {cfg.protocol} "
                           f"run on {dataset.name}")
    return Selection("DVBPR", {"k": results["k"], "image_size": results["image_size"]}, results["best_epoch"],
                     valid={"all": results["valid_auc"], "cold": results["valid_auc_cold"]},
                     test={"all": results["test_auc"], "cold": results["test_auc_cold"]})


def report(selection):
    cold = lambda auc: "n/a" if auc is None else f"{auc:.4f}"
    params = ", ".join(f"{k}={v}" for k, v in selection.params.items()) or "nothing to tune"
    tqdm.write(f"{selection.name:8s} test AUC {selection.test['all']:.4f} (cold {cold(selection.test['cold'])})  "
               f"valid {selection.valid['all']:.4f} (cold {cold(selection.valid['cold'])})  [{params}]")


def resolve_config(argv):
    cfg, explicit = parse_config(BaselinesConfig, argv, PRESETS, description=__doc__.split("\n")[0])
    unknown = sorted(set(cfg.models) - set(MODELS))
    if unknown:
        raise SystemExit(f"baselines: unknown model(s) {', '.join(unknown)}; choose from {' '.join(MODELS)}")
    return cfg, explicit


def main(argv=None):
    started = time.time()
    cfg, explicit = resolve_config(argv)
    try:
        dataset, embedded = open_dataset(cfg.dataset)
        if embedded:
            kept = explicit | (set(PRESETS[cfg.preset]) if "preset" in explicit else set())
            changed = apply_defaults(cfg, DEMO_SETTINGS, kept)
            if changed:
                print("embedded catalogue: demo settings " + ", ".join(f"{k}={v}" for k, v in changed.items()))
        device = pick_device(cfg.device)
        out = run_dir(cfg.out, "baselines")
        features_settings = FeatureSettings(cfg.imagenet_weights, cfg.feature_image_size, epochs=cfg.feature_epochs,
                                            lr=cfg.feature_lr, seed=cfg.seed)
        print("settings: " + json.dumps(dataclasses.asdict(cfg)))
        print(f"baselines on {dataset.name}: {dataset.usernum} users, {dataset.itemnum} items, "
              f"{dataset.num_train_interactions} training interactions; {cfg.protocol} AUC; "
              f"device {describe(device)}; out {out}")
        models = [name for name in MODELS if name in cfg.models]
        features, features_description = None, "none"
        if any(name in VISUAL for name in models):
            features, features_description = visual_features(dataset, features_settings, device, out / "features")
            print(f"visual features: {features_description}")

        runlog = RunLog(out)
        selections = {}
        for name in tqdm(models, desc="methods", unit="method"):
            if name == "dvbpr":
                selection = run_dvbpr(cfg, dataset, embedded, out)
            elif name in LEARNED:
                selection = run_learned(name, dataset, features, cfg, device)
            else:
                selection = run_unlearned(name, dataset, features, cfg, device)
            selections[selection.name] = selection
            runlog.record(**dataclasses.asdict(selection))
            report(selection)
    except (DatasetError, FeatureError, FileNotFoundError) as exc:
        raise SystemExit(f"baselines: {exc}") from exc

    table = build_table(dataset.name, selections, features_description, cfg.protocol)
    table["wall_seconds"] = round(time.time() - started, 1)
    paths = write_table(out, table)
    print(render_markdown(table))
    print(f"wrote {', '.join(map(str, paths))} in {table['wall_seconds']} s")
    return table


if __name__ == "__main__":
    main()

