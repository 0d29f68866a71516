"""The region-attention recommender's settings: the config dataclass (one field per flag), presets and demo settings.

    paper   DVBPR's protocol of the paper (Sec. IV) on the attention model: CNN-F at 224 px (13 x 13 regions),
            K=50, Adam at lr 1e-4 for 20 epochs, exact All/Cold AUC, the best validation epoch kept
    demo    sized for a 2-core CPU on the embedded catalogues: CNN-F 16-32 channels wide at 64 px (4 x 4 regions),
            4 epochs at lr 1e-3
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


@dataclass
class AttentionConfig:
    preset: str = field(default="paper", metadata={"help": "paper: DVBPR's protocol (CNN-F at 224 px, K=50, 20 "
                                                           "epochs, exact AUC); demo: narrow CNN-F at 64 px, 4 "
                                                           "epochs"})
    dataset: str | None = field(default=None, metadata={"help": "dataset: a .npy in the original format, a "
                                                                "dataset folder, or 'embedded'; None: data/Amazon"
                                                                "Fashion6ImgPartitioned.npy, else the embedded "
                                                                "catalogue"})
    out: str | None = field(default=None, metadata={"help": "run directory; None: runs/attention"})
    cache_dir: str | None = field(default=None, metadata={"help": "folder of the decoded-image cache (None: a "
                                                                  "cache/ folder beside the dataset)"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out from its checkpoint.pt; "
                                                          "flags given now override the saved settings"})
    k: int = field(default=50, metadata={"help": "latent dimensions K of theta_u and the item feature"})
    hidden: int = field(default=16, metadata={"help": "width of the attention layer W"})
    image_size: int = field(default=224, metadata={"help": "side of the input in pixels (224: 13 x 13 regions, "
                                                           "64: 4 x 4)"})
    resize_filter: str = field(default="nearest", metadata={"help": "PIL filter resizing the images",
                                                            "choices": list(RESIZE_FILTERS)})
    conv_widths: list[int] | None = field(default=None, metadata={"help": "cnn-f conv1..conv5 channels (None: the "
                                                                          "original's 64 256 256 256 256)"})
    init: str = field(default="xavier", metadata={"help": "cnn-f weight initialisation",
                                                  "choices": ["xavier", "kaiming"]})
    theta_init: str = field(default="uniform", metadata={"help": "theta_u's start: uniform U[0, 0.01) (DVBPR's "
                                                                 "original), or centred U[-0.005, 0.005)",
                                                         "choices": list(THETA_INITS)})
    lambda_w: float = field(default=0.001, metadata={"help": "weight decay (lambda_w/2 ||W||^2)"})
    lambda_theta: float = field(default=1.0, metadata={"help": "regulariser of theta_u"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate (the peak one under a schedule)"})
    lr_schedule: str = field(default="constant", metadata={"help": "constant, or cosine: linear warm-up then "
                                                                   "cosine decay to 0",
                                                           "choices": list(LR_SCHEDULES)})
    warmup_epochs: float = field(default=0.0, metadata={"help": "epochs of linear warm-up under --lr-schedule "
                                                                "cosine"})
    batch_size: int = field(default=128, metadata={"help": "triplets per step"})
    epochs: int = field(default=20, metadata={"help": "epochs of N triplets, N = number of training interactions"})
    protocol: str = protocol_field()
    cutoffs: list[int] = cutoffs_field()
    ties: str = ties_field()
    select: str = field(default="best-valid", metadata={"help": "the epoch kept in best.pt: best-valid, the best "
                                                                "by --select-metric, or last",
                                                        "choices": list(SELECTIONS)})
    select_metric: str = field(default="valid_auc", metadata={
        "help": "the validation metric best-valid follows, e.g. valid_auc (the paper), valid_ndcg@20"})
    cold_threshold: int = field(default=5, metadata={"help": "an item is cold with fewer training interactions"})
    eval_batch_size: int = field(default=256, metadata={"help": "images per no-grad batch in evaluation"})
    eval_users: int | None = eval_users_field()
    eval_chunk: int | None = field(default=None, metadata={"help": "users per evaluation chunk; None: sized to "
                                                                   "memory"})
    seed: int = field(default=0, metadata={"help": "seed of the initialisation, the triplets and sampled AUC"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA (CPU always runs float32)"})
    strict_images: bool = field(default=False, metadata={"help": "fail on an undecodable image instead of "
                                                                 "using a grey one"})


PRESETS = {"paper": dict(k=50, protocol="exact", ties="fail", epochs=20, lr=1e-4, select="best-valid")}
# The settings the model had before it moved onto the shared loop, kept so that its AUC can be compared (README).
DEMO = dict(image_size=64, conv_widths=[16, 32, 32, 32, 32], epochs=4, lr=1e-3)
PRESETS["demo"] = {**PRESETS["paper"], **DEMO}
SIZE_BOUNDS = dict(k=MAX_WIDTH, hidden=MAX_WIDTH, image_size=MAX_IMAGE_SIZE, conv_widths=MAX_WIDTH,
                   batch_size=MAX_BATCH, epochs=None, eval_batch_size=MAX_BATCH,
                   eval_chunk=1 << 20, eval_users=None)


def check_config(cfg):
    if cfg.conv_widths is not None and len(cfg.conv_widths) != 5:
        raise ConfigError(f"--conv-widths takes five positive channel counts, got {cfg.conv_widths}")
    require_sizes(cfg, SIZE_BOUNDS)
    check_cutoffs(cfg.cutoffs)
    check_metric_choice(cfg.select_metric, "--select-metric", selectable_metrics(cfg.protocol, cfg.cutoffs))
    if not 0 <= cfg.warmup_epochs <= cfg.epochs:
        raise ConfigError(f"--warmup-epochs must be between 0 and --epochs ({cfg.epochs}), got {cfg.warmup_epochs}")
