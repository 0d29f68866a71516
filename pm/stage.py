"""One PM command: the trained DVBPR and GAN opened, the settings settled (with --steps-from-tune, a finished tuning's
choice taken), then the figures, Table IV (and the eta sweep) or the tuning written into the output folder."""
from dataclasses import asdict
from pathlib import Path

import torch

from common.catalogue.config import is_embedded
from common.checkpoint import read_json, write_json
from common.cli import settle
from common.device import describe, pick_device
from common.errors import ConfigError, RunError
from common.runlog import run_dir
from common.seeding import seed_everything
from pm.config import DEMO, PMConfig, check_config, check_ids, check_settled
from pm.design import EmbeddingSupport
from pm.figures import figures
from pm.load import Stages
from pm.table import tables
from pm.tune import tuned_setting, tuning

MAX_OUTLINES = 2048   # real items per category that --min-silhouette compares each design with (a fixed draw)


def run_pm(cfg, protected):
    """Run PM as configured; `protected` names the settings the demo settings leave alone (common/cli.py)."""
    check_config(cfg)
    device = pick_device(cfg.device)
    stages = Stages(cfg.dvbpr_run, cfg.gan_run, cfg.dataset, device, cfg.ensemble_runs or ())
    settle(cfg, protected, "pm", DEMO, embedded=is_embedded(stages.dataset.path))
    if cfg.steps_from_tune:
        take_tuned(cfg, protected)
    check_config(cfg)
    check_settled(cfg)
    check_ids(cfg, stages.dataset)
    set_design_terms(stages, cfg)
    stages.designer.check_latent(cfg.latent)
    if cfg.guidance is not None or cfg.tune_guidance:
        stages.designer.check_guidance()
    out = run_dir(cfg.out, "pm")
    mode = "tune" if cfg.tune else "table" if cfg.table or cfg.sweep_eta else "figures"
    write_json(out / f"{mode}_config.json", asdict(cfg))
    seed_everything(cfg.seed)
    print(f"preference maximisation on {describe(device)}: DVBPR {cfg.dvbpr_run}, GAN {cfg.gan_run}, out {out}")
    {"tune": tuning, "table": tables, "figures": figures}[mode](stages, cfg, out)


def set_design_terms(stages, cfg):
    """The Designer's terms from settled settings (the demo's included): the realism term and its floor, the support
    penalty, the shape and structure terms, the jitter, the truncation and the screen."""
    stages.designer.choose_realism(cfg.realism_term)
    stages.designer.realism_floor = cfg.realism_floor
    stages.designer.shape_weight = cfg.shape_weight
    stages.designer.structure_weight = cfg.structure_weight
    if cfg.jitter >= stages.designer.dvbpr.input_size:
        raise ConfigError(f"--jitter {cfg.jitter} must be below the {stages.designer.dvbpr.input_size} pixels of "
                          f"DVBPR's input side")
    stages.designer.jitter = cfg.jitter
    stages.designer.truncation = cfg.truncation
    stages.designer.screen_by_silhouette(cfg.min_silhouette, None if cfg.min_silhouette is None else {
        category: stages.images(outline_items(stages.items_of(category)))
        for category in range(stages.dataset.num_categories)})
    stages.designer.support = None if cfg.support_quantile is None else EmbeddingSupport(
        stages.item_embeddings, stages.item_category, stages.dataset.num_categories, cfg.support_quantile,
        cfg.support_weight)


def outline_items(items):
    """`items`, or a fixed draw of MAX_OUTLINES of them where there are more: the real items whose outlines the
    screen compares designs with, its memory bounded on catalogues of AmazonFashion's size."""
    if len(items) <= MAX_OUTLINES:
        return items
    draw = torch.randperm(len(items), generator=torch.Generator().manual_seed(0))[:MAX_OUTLINES]
    return items[draw.to(items.device)].sort().values


TUNED = ("starts", "steps", "lr")   # what --steps-from-tune takes from a tuning
# the settings a tuning's choice depends on: the runs, and the objective and its starts
TUNED_WITH = ("dvbpr_run", "gan_run", "ensemble_runs", "eta", "realism_term", "realism_floor", "support_quantile",
              "support_weight", "shape_weight", "structure_weight", "jitter", "truncation", "min_silhouette", "latent",
              "init")
MAX_TUNE_BYTES = 16 << 20


def take_tuned(cfg, protected):
    """--steps-from-tune: the starts, steps and lr that a finished --tune run of the same runs and objective chose by
    the objective within the random samples' KID (pm/tune.py on_manifold), or 0 steps where none was; ConfigError
    or RunError in one line otherwise."""
    typed = [name for name in TUNED if name in protected]
    if cfg.tune or typed:
        raise ConfigError("--steps-from-tune takes a tuning's --starts, --steps and --lr into Table IV or the "
                          f"figures: leave out --{'tune' if cfg.tune else typed[0]}")
    run = Path(cfg.steps_from_tune)
    tuned_with = read_json(run / "tune_config.json", MAX_TUNE_BYTES, "settings file of pm/main.py --tune")
    tuned = read_json(run / "tune.json", MAX_TUNE_BYTES, "tuning file of pm/main.py --tune")
    manifold = tuned.get("on_manifold") if isinstance(tuned, dict) else None
    choice = manifold.get("random", False) if isinstance(manifold, dict) else False
    if not isinstance(tuned_with, dict) or not (choice is None or isinstance(choice, dict) and all(
            type(choice.get(name)) in kinds for name, kinds in (("starts", {int}), ("steps", {int}),
                                                                ("lr", {int, float})))):
        raise RunError(f"{run} does not hold a tuning of pm/main.py --tune (its choice within the random samples' "
                       "KID is missing)")
    for name in TUNED_WITH:   # a setting that a tuning's file does not name (it came before it) was at its default
        ours = comparable(name, getattr(cfg, name))
        theirs = comparable(name, tuned_with.get(name, PMConfig.__dataclass_fields__[name].default))
        if ours != theirs:
            raise ConfigError(f"--steps-from-tune {run} was tuned with --{name.replace('_', '-')} {theirs}, this "
                              f"command has {ours}")
    starts, steps, lr = tuned_setting(tuned, cfg.starts, cfg.lr)
    cfg.starts, cfg.steps, cfg.lr = int(starts), int(steps), float(lr)
    print(f"pm: the tuning in {run} chose --starts {cfg.starts} --steps {cfg.steps} --lr {cfg.lr:g}")


def comparable(name, value):
    """A setting as two commands compare it: run directories as resolved paths."""
    if name.endswith("_run"):
        return Path(str(value)).resolve()
    if name == "ensemble_runs":
        return [Path(str(run)).resolve() for run in value or []]
    return value
