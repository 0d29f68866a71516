"""Preference maximisation's settings: the config dataclass (one field per flag), the presets and the demo settings.

    paper     z = tanh(z') from 64 starts z ~ U(-1, 1), eta 1, the top 3 drawn by eq. 11, 200 Adam steps at lr 0.1
              (the paper gives neither steps nor lr; chosen with --tune, see DEMO below)
    original  what the released code did (PM/main.py of the original repository): z optimised directly from
              N(0, 0.5^2), 16 starts, 10 Adam steps at lr 0.05, all 16 kept
    demo      sized for a 2-core CPU on the embedded catalogues: fewer queries and starts, 100 steps, the sngan's
              realism term floored at -1, the support penalty past the real items' 0.9 quantile, the shape term
              at 10 and the structure term at 5
"""
import math
from dataclasses import dataclass, field

from common.cli import require_id, require_sizes
from common.errors import ConfigError
from pm.fidelity import DEFAULT_FID_INCEPTION_WEIGHTS
from pm.metrics import DEFAULT_INCEPTION_WEIGHTS

SUPPORT_WEIGHT = 1.0
REALISM_TERMS = ("discriminator", "denoising", "elbo", "full-elbo")   # the generators' realism_terms (gan/)


@dataclass
class PMConfig:
    preset: str = field(default="paper", metadata={"help": "paper: tanh(z') from U(-1,1) starts, softmax top-k; "
                                                           "original: z from N(0, 0.5^2), 16 starts, 10 steps, "
                                                           "lr 0.05, all kept; demo: paper with 16 starts, 100 "
                                                           "steps, 20 trials, realism floor -1, support quantile "
                                                           "0.9, shape weight 10, structure weight 5"})
    dvbpr_run: str = field(default="runs/dvbpr", metadata={"help": "run directory of the trained DVBPR"})
    ensemble_runs: list[str] | None = field(default=None, metadata={
        "help": "more DVBPR runs of the same data (other seeds): the score that retrieval ranks and synthesis "
                "maximises becomes the mean of theirs and --dvbpr-run's (default: --dvbpr-run's alone)"})
    gan_run: str = field(default="runs/gan", metadata={"help": "run directory of the trained GAN"})
    out: str | None = field(default=None, metadata={"help": "output directory (default: runs/pm)"})
    dataset: str | None = field(default=None, metadata={"help": "dataset .npy or folder (default: the one DVBPR "
                                                                "was trained on)"})
    user: int | None = field(default=None, metadata={"help": "design for this user (default: one per category, "
                                                             "drawn as the original did)"})
    category: int | None = field(default=None, metadata={"help": "only this category (default: all)"})
    starts: int = field(default=64, metadata={"help": "random initial points m"})
    steps: int = field(default=200, metadata={"help": "Adam steps of preference maximisation"})
    steps_from_tune: str | None = field(default=None, metadata={
        "help": "a finished --tune run of the same DVBPR and GAN: take the starts, steps and lr it chose with the "
                "highest objective within the random samples' KID (its starts alone, 0 steps, where none was)"})
    lr: float = field(default=0.1, metadata={"help": "Adam learning rate on z'"})
    eta: float = field(default=1.0, metadata={"help": "weight of the realism loss (lsgan: [D_c(G_c(z)) - 1]^2, "
                                                            "sngan: -D_c(G_c(z)), diffusion: its denoising error)"})
    realism_term: str | None = field(default=None, metadata={
        "help": "the realism term of eq. 10 (default: the generator's own; lsgan, sngan: discriminator, diffusion: "
                "denoising, vae: elbo, its training loss; vae and vaegan also full-elbo, the KL term at weight 1 "
                "whatever --kl-weight; vaegan also discriminator, its D's -D_c(e) as the sngan's)",
        "choices": REALISM_TERMS})
    realism_floor: float | None = field(default=None, metadata={
        "help": "the realism loss counts down to this value and no further (the demo: -1, where the hinge loss "
                "stops rewarding the sngan's D_c on real items, bounds -D_c(e) as the LSGAN's target bounds its "
                "term; the LSGAN's and diffusion model's terms never go below 0); default: none (-1e9 gives none "
                "on the embedded catalogues)"})
    support_quantile: float | None = field(default=None, metadata={
        "help": "penalise designs whose Phi lies further from the real items of their category (Mahalanobis "
                "distance) than this quantile of the real items' own distances: theta_u . Phi is linear in Phi and "
                "learnt only where items lie (the demo: 0.9); default: no penalty"})
    support_weight: float = field(default=SUPPORT_WEIGHT, metadata={"help": "w of that penalty, w (distance - "
                                                                            "radius)^2"})
    shape_weight: float = field(default=0.0, metadata={
        "help": "keep each design's outline: minus this weight times the mean squared change of its soft foreground "
                "(the item against the white ground) from its start's, in synthesis and tailoring; colour and pattern "
                "stay free (the demo: 10); default 0: off"})
    structure_weight: float = field(default=0.0, metadata={
        "help": "keep the light and dark inside each design: minus this weight times the mean over pixels of 1 - "
                "the local correlation of its luminance with its start's (SSIM's structure term), in synthesis and "
                "tailoring; colour and brightness stay free (the demo: 5); default 0: off"})
    truncation: float = field(default=1.0, metadata={
        "help": "keep PM's codes in the central box [-psi, psi] of the generator's U(-1, 1) prior, z = psi tanh(z'): "
                "starts and ascent where its samples are most typical (the truncation trick, Brock et al., 2019); "
                "--latent tanh only; measured at 0.5 and left off: fewer designs named blind (docs/design_half.md); "
                "default 1: the whole prior"})
    jitter: int = field(default=0, metadata={
        "help": "at each step of synthesis and tailoring, score every design shifted by a random offset of up to "
                "this many pixels at DVBPR's input (the ground filled white): an ascent that follows a pattern only "
                "one alignment scores is not rewarded (transformation robustness, Olah et al., 2017); measured at 4 "
                "and left off: no more designs named blind, at a lower score (docs/design_half.md); default 0: off"})
    min_silhouette: float | None = field(default=None, metadata={
        "help": "a screen at eq. 11's choice (and the best samples'): a design whose silhouette, the best IoU of its "
                "foreground with a real item's of its category, is below this is chosen only when fewer than the k "
                "asked for reach it (the threshold that fits blind labels: 0.642, docs/eye_check_sets.md); measured "
                "at 0.642 and left off: one more design named blind of 54 (docs/design_half.md); default: no screen"})
    init: str = field(default="uniform", metadata={"help": "starts: atanh of U(-1,1), N(0, 0.5^2), or codes of the "
                                                           "generator's prior (the LSGAN's: U(-1,1))",
                                                   "choices": ["uniform", "normal", "prior"]})
    latent: str = field(default="tanh", metadata={"help": "z = tanh(z') (paper), z optimised directly (original), "
                                                          "or z on the sphere where the prior's codes lie",
                                                  "choices": ["tanh", "direct", "sphere"]})
    select: str = field(default="softmax", metadata={"help": "which results to return: drawn by softmax of the "
                                                             "objective (eq. 11), the best, or all",
                                                     "choices": ["softmax", "best", "all"]})
    guidance: float | None = field(default=None, metadata={
        "help": "with a diffusion generator, Table IV also has preference-guided samples at this scale (the "
                "gradient of theta_u . Phi of each step's x_0 estimate); default: no guided source"})
    tailored: bool = field(default=False, metadata={
        "help": "Table IV also tailors each of retrieval's items to the user: inverted into the generator (eq. 12, "
                "--invert-steps), then --steps of eq. 10 from there (Sec. IV-E); default: no tailored source"})
    sampled: bool = field(default=False, metadata={
        "help": "Table IV also has the generator's best samples, the control for synthesis's ascent: 3 of starts x "
                "(steps + 1) starts drawn as synthesis's, as many as it evaluates, the best by its objective with no "
                "gradient step, and synthesis tested against them; default: no such source"})
    top_k: int = field(default=3, metadata={"help": "images per user and source in the figures"})
    min_train_items: int = field(default=10, metadata={"help": "the drawn users have more training items than this"})
    prototype: int | None = field(default=None, metadata={"help": "item to tailor (default: a random item of "
                                                                  "--prototype-category)"})
    prototype_category: int = field(default=0, metadata={"help": "category of the default prototype"})
    tailor_users: int = field(default=6, metadata={"help": "users to tailor the prototype for"})
    invert_steps: int = field(default=300, metadata={"help": "Adam steps of the L1 inversion (eq. 12)"})
    invert_lr: float = field(default=0.05, metadata={"help": "Adam learning rate of the inversion"})
    neighbour_samples: int = field(default=4, metadata={"help": "samples per category beside their L1 nearest "
                                                                "neighbours"})
    table: bool = field(default=False, metadata={"help": "write Table IV instead of the figures"})
    trials: int = field(default=1000, metadata={"help": "random (user, category) queries of Table IV and the sweep"})
    tune: bool = field(default=False, metadata={"help": "instead of the table: the mean best objective of each "
                                                        "(starts, steps, lr) of the grids below on --trials "
                                                        "queries of validation users"})
    tune_starts: list[int] = field(default_factory=lambda: [8, 16, 32], metadata={"help": "starts grid of --tune"})
    tune_steps: list[int] = field(default_factory=lambda: [25, 50, 100, 200], metadata={"help": "steps grid"})
    tune_lrs: list[float] = field(default_factory=lambda: [0.03, 0.1, 0.3], metadata={"help": "lr grid"})
    tune_guidance: list[float] | None = field(default=None, metadata={
        "help": "with --tune and a diffusion generator, also these guidance scales (default: none)"})
    sweep_eta: list[float] | None = field(default=None, metadata={"help": "eta values of the Figure 3 sweep"})
    inception_weights: str | None = field(default=None, metadata={
        "help": f"ImageNet Inception v3 weights for the Inception Score (default: {DEFAULT_INCEPTION_WEIGHTS} if "
                "present, else the in-domain score of the GAN run's category classifier)"})
    fid_inception_weights: str | None = field(default=None, metadata={
        "help": f"torch-fidelity's Inception v3 (the FID network) for KID and FID over Inception features (default: "
                f"{DEFAULT_FID_INCEPTION_WEIGHTS} if present, else skipped; those over the category classifier are "
                "always measured)"})
    judge_run: str | None = field(default=None, metadata={
        "help": "run directory of a judge DVBPR, trained on the same data with another seed, that scores the "
                "designs beside the optimised DVBPR (default: no judge)"})
    splits: int = field(default=10, metadata={"help": "parts of the Inception Score's mean and std"})
    seed: int = field(default=0, metadata={"help": "seed of the users, latent codes and samples"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})


PRESETS = {
    "paper": {},
    "original": dict(starts=16, steps=10, lr=0.05, init="normal", latent="direct", select="all"),
}
# Steps and lr, chosen on validation queries (`--tune`), never on Table IV. The lr: on the DVBPR and LSGAN demos (10
# queries, 16 starts) after 25 / 50 / 100 / 200 steps, lr 0.03 reaches an objective of 5.67 / 6.32 / 6.97 / 7.35,
# lr 0.1 6.31 / 6.86 / 7.26 / 7.54, lr 0.3 6.40 / 6.85 / 7.18 / 7.44: lr 0.1 is best from 100 steps on, lr 0.3 by
# 0.09 at 25 (the lr was not chosen again with the steps). The steps:
# over the eight catalogues of experiments/family.py with the demo models and terms (`--design --tune`, 60 queries
# each, the judges' scores and KID averaged over the catalogues), the setting with the highest objective, judge
# percentile and true preference whose KID stays within the random samples' plus retrieval's shift is 100 (50 within
# the random samples' alone). The realism floor: with the sngan's -D_c(e) floored at -1, the same tuning gave at
# every step count a judge percentile as high or higher (+0.0 to +1.3), the same true preference (within 0.01) and
# a KID as low or lower (by 0.01 to 0.89) than unbounded. The support penalty (w 1, q of 0.99, 0.9 and 0.5, nothing
# else tried), each tested by a rule fixed before its tuning ran; at the rule's picks, true preference 2.51 / 2.56 /
# 2.59 / 2.54 and KID 1.10 / 1.09 / 0.94 / 0.72 for no penalty (10 steps) / q 0.99 (50) / q 0.9 (100) / q 0.5 (100):
# 0.99 then 0.9 adopted, 0.5 not (docs/demo_recipe.md, "PM's demo settings come from this table"). The shape term,
# by a rule fixed beforehand over a grid of two weights (more designs named by a blind labeller on three seeds, and
# on the same tuning at 100 steps at most 0.05 less true preference and 2 judge percentile points): s = 30 named 49
# of 54 against 44 but lost 2.93 points; s = 10 named 50 against 47 and lost 1.07 points and 0.01 of true
# preference, KID 0.67 against 0.94: adopted (docs/design_half.md, "Holding each design to its start's outline").
# Shifting each step's designs by up to 4 px (--jitter 4), by the shape term's rule (a): 45 named of 54 against the
# demo's 46, at a lower score: not adopted ("Scoring shifted designs"); nor the codes in the prior's central half
# (--truncation 0.5): 36 against 46 ("The prior's core"); nor a screen by outline at eq. 11's choice
# (--min-silhouette 0.642): 51 against 50 ("Choosing by outline"). The structure term, by a rule fixed beforehand
# (the larger of 10 and 5 within 2 judge percentile points and 0.05 of true preference of the demo's on the same
# tuning at 100 steps): w = 10 cost 2.31 and 0.084, w = 5 1.12 and 0.049: adopted; blind labellers named its
# designs 11.7 points more often per row than the demo's before it ("Holding each design to its start's structure").
DEMO = dict(trials=20, starts=16, steps=100, realism_floor=-1.0, support_quantile=0.9, shape_weight=10.0,
            structure_weight=5.0)
PRESETS["demo"] = {**PRESETS["paper"], **DEMO}
MAX_GUIDANCE = 1e6
MAX_ENSEMBLE_RUNS = 8   # each one's model is held and run at every step
SIZE_BOUNDS = dict(starts=1024, top_k=64, tailor_users=64, neighbour_samples=64, trials=100_000, tune_starts=1024,
                   splits=100)


def check_config(cfg):
    require_sizes(cfg, SIZE_BOUNDS)
    for name in ("steps", "invert_steps"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(cfg, name)}")
    for name in ("lr", "invert_lr"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.eta < 0:
        raise ConfigError(f"--eta must be at least 0, got {cfg.eta}")
    if cfg.support_quantile is not None and not 0 < cfg.support_quantile <= 1:
        raise ConfigError(f"--support-quantile is a quantile in (0, 1], got {cfg.support_quantile}")
    # nan and inf are refused as flags are parsed
    for name in ("support_weight", "shape_weight", "structure_weight", "jitter"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(cfg, name)}")
    if not 0 < cfg.truncation <= 1:
        raise ConfigError(f"--truncation is a share of the prior's box in (0, 1], got {cfg.truncation}")
    if cfg.min_silhouette is not None and not 0 < cfg.min_silhouette <= 1:
        raise ConfigError(f"--min-silhouette is an IoU in (0, 1], got {cfg.min_silhouette}")
    if cfg.truncation < 1 and cfg.latent != "tanh":
        raise ConfigError(f"--truncation keeps z = psi tanh(z') in a box of the prior: give --latent tanh, not "
                          f"{cfg.latent}")
    if cfg.realism_floor is not None and not math.isfinite(cfg.realism_floor):
        raise ConfigError(f"--realism-floor must be a finite number, got {cfg.realism_floor}")
    runs = cfg.ensemble_runs or []
    if len(runs) > MAX_ENSEMBLE_RUNS or len(set(runs)) < len(runs):
        raise ConfigError(f"--ensemble-runs takes up to {MAX_ENSEMBLE_RUNS} different run directories, got "
                          f"{len(runs)} ({len(set(runs))} different)")
    for name in ("tailored", "sampled"):
        if getattr(cfg, name) and not cfg.table:
            raise ConfigError(f"--{name} adds a source to Table IV: give --table")
    for scale in ([cfg.guidance] if cfg.guidance is not None else []) + (cfg.tune_guidance or []):
        if not 0 <= scale <= MAX_GUIDANCE:
            raise ConfigError(f"--guidance and --tune-guidance are scales in [0, {MAX_GUIDANCE:g}], got {scale:g}")


def check_settled(cfg):
    """ConfigError for a setting that the demo's settings, settled, leave without effect."""
    if cfg.support_quantile is None and cfg.support_weight != SUPPORT_WEIGHT:
        raise ConfigError("--support-weight weighs the support penalty, which is off: give --support-quantile too")


def check_ids(cfg, dataset):
    """The id flags checked against the dataset: a negative --user would index from the end (the last user)."""
    require_id(cfg, "user", dataset.usernum, f"{dataset.usernum} users")
    require_id(cfg, "prototype", dataset.itemnum, f"{dataset.itemnum} items")
    for name in ("category", "prototype_category"):
        require_id(cfg, name, dataset.num_categories, f"{dataset.num_categories} categories of {dataset.name}")
    if cfg.tailor_users > dataset.usernum:
        raise ConfigError(f"--tailor-users {cfg.tailor_users} is more than the {dataset.usernum} users")
