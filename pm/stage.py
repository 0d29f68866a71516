"""One PM command: the trained DVBPR and GAN opened, the settings settled, then the figures, Table IV (and the eta
sweep) or the tuning written into the output folder."""
from dataclasses import asdict

from common.catalogue.config import is_embedded
from common.checkpoint import write_json
from common.cli import settle
from common.device import describe, pick_device
from common.runlog import run_dir
from common.seeding import seed_everything
from pm.config import DEMO, check_config, check_ids, check_settled
from pm.design import EmbeddingSupport
from pm.figures import figures
from pm.load import Stages
from pm.table import tables, tuning


def run_pm(cfg, protected):
    """Run PM as configured; `protected` names the settings the demo settings leave alone (common/cli.py)."""
    check_config(cfg)
    device = pick_device(cfg.device)
    stages = Stages(cfg.dvbpr_run, cfg.gan_run, cfg.dataset, device, cfg.ensemble_runs or ())
    settle(cfg, protected, "pm", DEMO, embedded=is_embedded(stages.dataset.path))
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
    """The Designer's terms from settled settings (the demo's included): the realism floor and the support
    penalty."""
    stages.designer.realism_floor = cfg.realism_floor
    stages.designer.support = None if cfg.support_quantile is None else EmbeddingSupport(
        stages.item_embeddings, stages.item_category, stages.dataset.num_categories, cfg.support_quantile,
        cfg.support_weight)
