"""DVBPR's settings: the config dataclass (one field per flag), the presets and the demo settings.

    paper     what the paper states (Sec. IV): K=50, exact All/Cold AUC, the best validation epoch kept
    original  what the released code did (DVBPR/main.py of the original repository): K=100, sampled-100 AUC,
              19 evaluated epochs, a checkpoint every epoch, the last epoch kept
    demo      sized for a 2-core CPU on the embedded catalogues (the README's table says where it deviates)
"""
from dataclasses import dataclass, field

from common.bpr import THETA_INITS
from common.cli import MAX_BATCH, MAX_IMAGE_SIZE, MAX_WIDTH, require_sizes
from common.errors import ConfigError
from common.images import RESIZE_FILTERS
from common.metrics import (
    check_cutoffs,
    check_metric_choice,
    cutoffs_field,
    eval_users_field,
    protocol_field,
    selectable_metrics,
    ties_field,
)
from common.training import LR_SCHEDULES, SELECTIONS
from dvbpr.backbones import BACKBONES


@dataclass
class DVBPRConfig:
    preset: str = field(default="paper", metadata={"help": "paper: K=50, exact All/Cold AUC with ties failing, 20 "
                                                           "epochs, the best validation epoch kept; original: K=100, "
                                                           "sampled-100 AUC, 19 evaluated epochs, a checkpoint every "
                                                           "epoch, the last epoch kept"})
    dataset: str | None = field(default=None, metadata={"help": "dataset: a .npy in the original format, a "
                                                                "dataset folder (convert/main.py), or 'embedded'; "
                                                                "None: data/AmazonFashion6ImgPartitioned.npy, "
                                                                "else the embedded catalogue"})
    out: str | None = field(default=None, metadata={"help": "run directory; None: runs/dvbpr"})
    cache_dir: str | None = field(default=None, metadata={"help": "folder of the decoded-image cache (None: a "
                                                                  "cache/ folder beside the dataset)"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out from its checkpoint.pt; "
                                                          "flags given now override the saved settings"})
    k: int = field(default=50, metadata={"help": "latent dimensions K of theta_u and Phi(X_i)"})
    backbone: str = field(default="cnn-f", metadata={"help": "image network before the linear head to K",
                                                     "choices": list(BACKBONES)})
    backbone_weights: str | None = field(default=None, metadata={"help": "ImageNet weights file of a torchvision "
                                                                         "backbone (None: random init)"})
    image_size: int = field(default=224, metadata={"help": "side of the image network's input in pixels"})
    resize_filter: str = field(default="nearest", metadata={"help": "PIL filter resizing the images "
                                                                    "(the original's Pillow default was nearest)",
                                                            "choices": list(RESIZE_FILTERS)})
    conv_widths: list[int] | None = field(default=None, metadata={"help": "cnn-f conv1..conv5 channels (None: the "
                                                                          "original's 64 256 256 256 256)"})
    fc_width: int = field(default=4096, metadata={"help": "cnn-f width of fc1 and fc2 (smaller for quick CPU "
                                                          "runs)"})
    init: str = field(default="xavier", metadata={"help": "cnn-f weight initialisation (xavier: the original's)",
                                                  "choices": ["xavier", "kaiming"]})
    theta_init: str = field(default="uniform", metadata={"help": "theta_u's start: uniform U[0, 0.01) (the "
                                                                 "original's), or centred U[-0.005, 0.005)",
                                                         "choices": list(THETA_INITS)})
    dropout: float = field(default=0.5, metadata={"help": "dropout probability on fc1 and fc2"})
    lambda_w: float = field(default=0.001, metadata={"help": "weight decay on the backbone's "
                                                             "weights and the head's (lambda_w/2 ||W||^2)"})
    lambda_theta: float = field(default=1.0, metadata={"help": "regulariser of the batch's theta_u "
                                                               "(lambda_theta/2 ||theta_u||^2)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate (the peak one under a schedule)"})
    lr_schedule: str = field(default="constant", metadata={"help": "constant: lr throughout (paper, original); "
                                                                   "cosine: linear warm-up then cosine decay to 0",
                                                           "choices": list(LR_SCHEDULES)})
    warmup_epochs: float = field(default=0.0, metadata={"help": "epochs of linear warm-up under --lr-schedule "
                                                                "cosine"})
    batch_size: int = field(default=128, metadata={"help": "triplets per step"})
    epochs: int = field(default=20, metadata={"help": "epochs of N triplets, N = number of training interactions"})
    protocol: str = protocol_field()
    cutoffs: list[int] = cutoffs_field()
    ties: str = ties_field()
    select: str = field(default="best-valid", metadata={
        "help": "the epoch kept in best.pt and embeddings.pt, reported in results.json and used by recommend.py and "
                "pm/: best-valid, the best by --select-metric (the paper: validation AUC); last, the last epoch (the "
                "authors published their last checkpoint)", "choices": list(SELECTIONS)})
    select_metric: str = field(default="valid_auc", metadata={
        "help": "the validation metric best-valid follows, e.g. valid_auc (the paper), valid_ndcg@20, "
                "valid_recall@20_cold"})
    cold_threshold: int = field(default=5, metadata={"help": "an item is cold with fewer training interactions"})
    save_every_epoch: bool = field(default=False, metadata={"help": "also write DVBPR_auc_<K>_<step>.pt (the last 5 "
                                                                    "kept) and UI_<K>_<step>.npy every epoch"})
    eval_batch_size: int = field(default=512, metadata={"help": "images per no-grad batch for the item embeddings"})
    eval_users: int | None = eval_users_field()
    eval_chunk: int | None = field(default=None, metadata={"help": "users per AUC chunk; None: sized to memory"})
    seed: int = field(default=0, metadata={"help": "seed of the initialisation, dropout, triplets and sampled AUC"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA (CPU always runs float32)"})
    strict_images: bool = field(default=False, metadata={"help": "fail on an undecodable image instead of "
                                                                 "using a grey one"})
    from_tf: str | None = field(default=None, metadata={"help": "the original's TensorFlow checkpoint (prefix, e.g. "
                                                                "DVBPR_auc_100_39728.ckpt): evaluate it as a run, "
                                                                "no training; K, fc and conv widths are its own"})


PRESETS = {
    "paper": dict(k=50, protocol="exact", ties="fail", epochs=20, save_every_epoch=False, select="best-valid"),
    "original": dict(k=100, protocol="sampled100", epochs=19, save_every_epoch=True, select="last"),
}
# The embedded catalogues on a CPU: the best recipe by validation AUC over eight catalogues of different hidden tastes
# (experiments/family.py --search, its RECIPES and docs/demo_recipe.md), of the two level best the faster: 66 s for the
# first set-up command on a 2-core machine with 281 GFLOP/s (51 s of training), 3.1-3.4 min by estimate at 100 GFLOP/s,
# where the other, 24-48 wide, would take about 3.5. 64 px, conv widths 16-32, fc 256 wide, 16 epochs, no dropout,
# Kaiming-uniform weights, theta_u centred on 0, Adam at lr 2e-3 with a one-epoch warm-up and cosine decay.
DEMO = dict(image_size=64, conv_widths=[16, 32, 32, 32, 32], fc_width=256, epochs=16, lr=2e-3, lr_schedule="cosine",
            warmup_epochs=1.0, theta_init="centred", init="kaiming", dropout=0.0)
PRESETS["demo"] = {**PRESETS["paper"], **DEMO}
SIZE_BOUNDS = dict(k=MAX_WIDTH, image_size=MAX_IMAGE_SIZE, fc_width=MAX_WIDTH, conv_widths=MAX_WIDTH,
                   batch_size=MAX_BATCH, epochs=None, eval_batch_size=MAX_BATCH,
                   eval_chunk=1 << 20, eval_users=None)


def check_config(cfg):
    check_cutoffs(cfg.cutoffs)
    check_metric_choice(cfg.select_metric, "--select-metric", selectable_metrics(cfg.protocol, cfg.cutoffs))
    if cfg.conv_widths is not None and len(cfg.conv_widths) != 5:
        raise ConfigError(f"--conv-widths takes five positive channel counts, got {cfg.conv_widths}")
    require_sizes(cfg, SIZE_BOUNDS)
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"--dropout is a probability from 0 to below 1, got {cfg.dropout}")
    if cfg.warmup_epochs < 0 or cfg.warmup_epochs > cfg.epochs:
        raise ConfigError(f"--warmup-epochs must be between 0 and --epochs ({cfg.epochs}), got {cfg.warmup_epochs}")
    if cfg.init != "xavier" and cfg.backbone != "cnn-f":
        raise ConfigError(f"--init {cfg.init} is for cnn-f; {cfg.backbone} is initialised by torchvision or its "
                          "--backbone-weights")
    if cfg.from_tf and cfg.resume:
        raise ConfigError("a run made with --from-tf is evaluated, not trained: it cannot be resumed")
