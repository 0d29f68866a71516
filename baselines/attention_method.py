"""Region attention (dvbpr/attention.py: the visual attention of Chen et al., SIGIR'19, without reviews) as a column
of Table III: trained into OUT/attention with its own demo-sized settings (CNN-F 16-32 channels wide at 64 px, 4 x 4
regions, at most 4 epochs), its best validation epoch kept, and that epoch's test AUC reported."""
from pathlib import Path

from baselines.train import Selection
from dvbpr.attention import AttentionConfig, train_attention


def column(ctx):
    cfg = ctx.cfg
    settings = AttentionConfig(dataset=str(ctx.dataset.path), out=str(Path(ctx.out) / "attention"),
                               protocol=cfg.protocol, ties=cfg.ties, seed=cfg.seed, device=cfg.device)
    settings.epochs = min(settings.epochs, cfg.epochs)
    results = train_attention(settings, ctx.dataset)
    return Selection(ctx.label, {"k": settings.k, "image_size": settings.image_size, "hidden": settings.hidden},
                     results["best_epoch"], valid=results["valid"], test=results["test"],
                     trials=[{"epoch": r["epoch"], "valid_all": r["valid"]["all"], "valid_cold": r["valid"]["cold"]}
                             for r in results["history"]])
