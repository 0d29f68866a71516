"""The GAN's settings: the config dataclass (one field per flag), the presets and the demo settings.

    paper     what the paper states (Sec. III-C, IV-D): 128 px, z of 100 ~ U(-1, 1), batch 64, about 25 epochs
    original  what the released code did (GAN/main.py of the original repository): 64 px, z 256 ~ N(0, 1),
              batch 16, 30 epochs
    demo      sized for a 2-core CPU on the embedded catalogues: the sngan without DiffAugment (gan/sngan.py)
    gpu-64    the paper's LSGAN at 64 px for one GPU on the embedded catalogues: 64 wide, batch 64, lr 2e-4, 120 epochs
    gpu-128   the same at 128 px (the catalogues' own size), 80 epochs
The paper and original presets train the paper's LSGAN; so does --generator lsgan with the demo settings.
"""
from dataclasses import dataclass, field, replace

from common.cli import MAX_BATCH, MAX_IMAGE_SIZE, MAX_WIDTH, require_sizes
from common.errors import ConfigError
from gan.diffusion import TRAIN_TIMESTEPS
from gan.generators import GENERATORS
from gan.model import noise_image_dim, num_stages

GRID_SIZE = 16          # 4x4 sample grids
MAX_KL_WEIGHT = 100.0
MAX_EX_POST_COMPONENTS = 32
ARCHITECTURE_FIELDS = ("generator", "image_size", "z_dim", "z_distribution", "g_width", "d_width", "ema",
                       "class_seed", "aux_class_weight", "half_chroma", "ex_post_prior",
                       "ex_post_components", "prior_fakes", "prior_fakes_every")


@dataclass
class GANConfig:
    preset: str = field(default="paper", metadata={"help": "paper: the LSGAN at 128 px, z 100 ~ U(-1,1), batch "
                                                           "64, 25 epochs; original: the original code's LSGAN at 64 "
                                                           "px, z 256 ~ N(0,1), batch 16, 30 epochs; demo: the "
                                                           "embedded catalogue's settings; gpu-64, gpu-128: the "
                                                           "LSGAN for one GPU on the embedded catalogues"})
    train: bool = field(default=False, metadata={"help": "train; without it, write per-category grids from the "
                                                         "trained model in --out"})
    resume: bool = field(default=False, metadata={"help": "continue training from --out's checkpoint"})
    dataset: str | None = field(default=None, metadata={"help": "the dataset .npy or folder, or 'embedded' (None: "
                                                                "data/AmazonFashion6ImgPartitioned.npy if present, "
                                                                "else the embedded catalogue)"})
    out: str | None = field(default=None, metadata={"help": "run directory shared by training and sampling "
                                                            "(None: runs/gan)"})
    cache_dir: str | None = field(default=None, metadata={"help": "folder of the decoded-image cache (None: a "
                                                                  "cache/ folder beside the dataset)"})
    generator: str = field(default="lsgan", metadata={"help": "the conditional generator (gan/generators.py): lsgan "
                                                              "is the paper's (the presets'; on the embedded "
                                                              "catalogue the demo trains sngan without "
                                                              "DiffAugment); sngan a spectrally normalised "
                                                              "projection GAN with hinge loss and DiffAugment "
                                                              "(gan/sngan.py); diffusion a class-conditional "
                                                              "DDPM with a DDIM sampler (gan/diffusion.py); vae a "
                                                              "conditional VAE whose decoder is the sngan's G "
                                                              "(gan/vae.py)",
                                                      "choices": GENERATORS})
    image_size: int = field(default=128, metadata={"help": "output side in pixels, a power of two >= 16"})
    z_dim: int = field(default=100, metadata={"help": "latent size"})
    z_distribution: str = field(default="uniform", metadata={"help": "training z: U(-1,1) or N(0,1)",
                                                             "choices": ["uniform", "normal"]})
    g_width: int = field(default=64, metadata={"help": "G width (64 = the original's channels)"})
    d_width: int = field(default=64, metadata={"help": "D width (64 = the original's channels)"})
    sample_steps: int = field(default=10, metadata={"help": "diffusion: DDIM steps from noise to image (each one "
                                                            "a UNet pass)"})
    ema: float = field(default=0.0, metadata={"help": "sngan, diffusion: decay of the moving average of G's (the "
                                                      "UNet's) weights that sampling and PM read, e.g. 0.999 (0: "
                                                      "the last weights)"})
    diffaugment: bool = field(default=True, metadata={"help": "sngan: D sees real and fake images through "
                                                              "DiffAugment (colour, translation, cutout)"})
    class_seed: bool = field(default=False, metadata={"help": "sngan: G also takes the category at its input, a "
                                                              "learned 4x4 seed per category added to its projection "
                                                              "of z (else only its batch norms see the category)"})
    half_chroma: bool = field(default=False, metadata={"help": "sngan: G draws colour (YCbCr's chroma) at half the "
                                                               "side and brightness (luma) at the full side, as JPEG "
                                                               "stores images (4:2:0)"})
    aux_class_weight: float = field(default=0.0, metadata={
        "help": "sngan: D also names the category of the real items it sees, and G is trained to make its samples "
                "named as the category asked, each loss weighted by this (an auxiliary classifier, Odena et al., "
                "2017; 0: off)"})
    match_weight: float = field(default=0.0, metadata={
        "help": "sngan: D also learns that a real item under another category's label is fake, the loss weighted by "
                "this (a matching-aware discriminator, Reed et al., 2016; 0: off)"})
    mode_seeking_weight: float = field(default=0.0, metadata={
        "help": "sngan: G is also trained to spread the codes of one category over images further apart, the term "
                "weighted by this (MSGAN's mode seeking, Mao et al., 2019; 0: off)"})
    ex_post_prior: bool = field(default=False, metadata={
        "help": "vae, vaegan: sample from a Gaussian per category fitted to the encoder's means of the training items "
                "(the aggregate posterior, kept as running statistics) instead of N(0, I); on in the VAE's demo "
                "settings"})
    ex_post_components: int = field(default=0, metadata={
        "help": "vae, vaegan: with --ex-post-prior, a mixture of this many Gaussians per category, fitted by EM to the "
                "encoder's means of every training item after the last iteration (Ghosh et al. fit 10; 10 in the "
                "VAE's demo settings); 0: one Gaussian kept as running statistics"})
    kl_weight: float | None = field(default=None, metadata={
        "help": "vae, vaegan: beta, the weight of the ELBO's KL term (Higgins et al., 2017): below 1 the "
                "reconstructions sharpen and the codes stray from N(0, I), which the ex-post prior follows (Ghosh et "
                "al., 2020); default: 1, the ELBO"})
    prior_fakes: bool = field(default=False, metadata={
        "help": "vaegan: D also judges decoded samples of the prior (the ex-post one with --ex-post-prior) as fakes, "
                "and the decoder is trained to pass them as real, as Larsen et al.'s VAE-GAN (else only "
                "reconstructions)"})
    prior_fakes_every: int = field(default=1, metadata={
        "help": "with --prior-fakes, D sees the decoded codes of every K-th item of the batch: fewer fakes, a cheaper "
                "iteration (default 1: one per item, as Larsen et al.)"})
    batch_size: int = field(default=64, metadata={"help": "images per iteration"})
    epochs: int = field(default=25, metadata={"help": "epochs of floor(items / batch) iterations"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate of G and D"})
    lr_decay_from: int | None = field(default=None, metadata={
        "help": "from the end of this epoch the learning rates fall linearly, to lr / n at the last of the n "
                "iterations left (default: constant)"})
    beta1: float = field(default=0.5, metadata={"help": "Adam beta1"})
    beta2: float = field(default=0.99, metadata={"help": "Adam beta2"})
    sample_every: int = field(default=100, metadata={"help": "iterations between training sample grids"})
    checkpoint_every: int = field(default=500, metadata={"help": "iterations between checkpoints"})
    resize_filter: str = field(default="nearest", metadata={"help": "image resize filter (original: nearest)",
                                                            "choices": ["nearest", "bilinear", "bicubic", "lanczos"]})
    consistency_samples: int = field(default=100, metadata={"help": "generated images per category for the "
                                                                    "condition consistency"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA (no effect on CPU)"})
    channels_last: bool = field(default=False, metadata={
        "help": "the nets in channels_last on the CPU too (always on CUDA): the demo's sngan trains a fifth faster so "
                "(bench/gan_throughput.py), the same computation to float rounding, but not the trajectory of the "
                "documented runs"})
    from_tf: str | None = field(default=None, metadata={"help": "the original's TensorFlow checkpoint (prefix, e.g. "
                                                                "DCGAN.model-311502): write it as a run in --out, "
                                                                "then its grids; z_dim, widths and categories are "
                                                                "its own"})


PRESETS = {
    "paper": dict(generator="lsgan"),
    "original": dict(generator="lsgan", image_size=64, z_dim=256, z_distribution="normal", batch_size=16, epochs=30),
}
# The design half on one GPU: the LSGAN, the generator that kept improving longest on the CPU (docs/design_half.md, "A
# longer CPU recipe"), at the paper's widths and batch with DCGAN's lr, for 4,680 and 3,120 iterations on the embedded
# catalogues: 89 s and 63 s of training on an H200, KID at 32 px 0.110 and 0.162 against the CPU demo's 0.943 in the
# same lens (README, "The design half's GPU presets"). The epochs were set to fit the time, not tuned. Every field the
# demo settings would set is named.
GPU = dict(generator="lsgan", g_width=64, d_width=64, batch_size=64, lr=2e-4, sample_every=500, checkpoint_every=1000)
PRESETS["gpu-64"] = dict(GPU, image_size=64, epochs=120)
PRESETS["gpu-128"] = dict(GPU, image_size=128, epochs=80)

# The embedded catalogues' settings, shared by every generator: recognisable category shapes from the LSGAN in under
# two minutes on two CPU cores with 275 GFLOP/s. Measured there on the embedded catalogue: 10 epochs at lr 2e-4 gave
# condition consistency 0.80 at batch 64 (98 s) and 0.89 at batch 32 (109 s); 9 epochs at batch 32 took 111 s on a
# fresh clone (0.86), so 8 epochs keep the time within 5 minutes on a 100 GFLOP/s machine.
DEMO = dict(image_size=32, g_width=16, d_width=16, batch_size=32, epochs=8, lr=2e-4, sample_every=200,
            checkpoint_every=500)
# A generator's own demo settings over DEMO. The sngan without DiffAugment had a lower KID than the LSGAN at the LSGAN
# demo's time (18 epochs) on three catalogues and six seeds (docs/design_half.md, "A modern generator"), so the demo
# trains it; its KID kept falling with training time (docs/design_half.md, "The demo's minute, against its budget"), so
# it takes 30 epochs: as many as the demo's 5 minutes held at 100 GFLOP/s by the README's scaling on the machines
# measured then, with a margin (machines H and I since, whose matmul outruns their convolutions, scale to 6.8 and 8.4
# minutes). A moving average of G (--ema 0.999) steadied its KID but did not lower its mean over the demo's seeds 0-2,
# by a rule fixed beforehand (docs/design_half.md, "An averaged generator"), so the demo trains without it; nor with a
# learned seed per category at G's input (--class-seed), which failed its rule too ("A category seed at G's input"); nor
# with a learning rate decaying over the last ten epochs (--lr-decay-from 20), which raised the final KID on nine seeds
# of ten ("A decaying learning rate"), nor with twice the rate (--lr 4e-4), which raised it on seven: at its end the
# demo's generator is still improving at the full rate. Nor with 38 epochs in the same time through --channels-last,
# whose KID the spread between trajectories kept from telling apart ("A faster layout"). Nor with colour drawn at half
# the side (--half-chroma), whose designs blind labellers named less often ("Colour at half the side"), nor with MSGAN's
# mode-seeking term (--mode-seeking-weight 1 or 0.25: the recall up on five pairs of five, the KID 2.6 and 0.84 times
# the demo's, the designs named less often at both; "Mode seeking against the dropped garments").
# Nor does training longer buy the designs names: at 60 and 120 epochs (KID level and a quarter of the demo's) blind
# labellers named the designs after the demo's PM as often as the demo's, though the 120 epochs' samples at no step
# as often as the real items ("What more training buys the designs"); 120 epochs would not fit the demo's time.
GENERATOR_DEMOS = {"sngan": dict(diffaugment=False, beta1=0.0, beta2=0.9, epochs=30)}
# The conditional VAE (gan/vae.py) with the PyTorch examples' VAE's Adam (lr 1e-3, betas 0.9 and 0.999), untuned, for
# the sngan demo's time: it trains 1.3 times as many images a second on two cores (bench/gan_throughput.py, machine I),
# so 39 epochs. Its samples from N(0, I) are blurred blends that blind labellers named a garment 16% of the time,
# against 65% for the sngan's on the same rows; the same weights with --ex-post-prior 80% (and a KID lower on all five
# runs of three catalogues), so its demo samples so, and its designs after PM were more nameable than the demo's, but at
# 2.7 times the sngan's KID, so the demo keeps the sngan (docs/design_half.md, "A likelihood-trained generator").
# With --kl-weight 0.1 (chosen from 1, 0.3 and 0.1 on validation seeds) its KID fell to 1.22 times the sngan's and its
# samples stayed as nameable, but PM then cost its designs 13 points of names; that beta stays off. A mixture of ten
# Gaussians per category (--ex-post-components 10, chosen from 1, 3 and 10 by KID on validation runs of two catalogues)
# lowered the test seeds' KID to 0.94 times the one Gaussian's, its samples came 4.9 points short of the real items and
# its designs 17.4, neither detectably apart from the one Gaussian's (docs/design_half.md, "A mixture for the ex-post
# prior"), so its rule gave it to the VAE's demo; --ex-post-components 0 repeats the runs measured before it.
GENERATOR_DEMOS["vae"] = dict(lr=1e-3, beta1=0.9, beta2=0.999, epochs=39, ex_post_prior=True, ex_post_components=10)
# The VAE with the sngan's D on its reconstructions (gan/vaegan.py): 0.775 times the sngan's images a second on machine
# I, so 23 epochs; of two Adams, the sngan demo's had the lower KID on validation seeds 3 and 4 (by 4%). On seeds 0-2
# its KID was 0.92 times the sngan's, but blind labellers named its designs after PM less often than the sngan's
# (docs/design_half.md, "The VAE with a discriminator on its reconstructions"), so the demo keeps the sngan. With
# --prior-fakes --epochs 13 (the same time) its KID was 0.59 times the sngan's and its designs as nameable as the
# sngan's, still not within 10 points of real items; with --prior-fakes-every 4 --epochs 21, KID 0.63 times and its
# designs 31.3 points short. With --ex-post-components 10 (the VAE's mixture) its KID was 1.07 times the sngan's and
# its samples no more nameable (docs/design_half.md, "The VAE-GAN with a mixture prior and the structure term"). These
# settings stay the ones its first rule measured.
GENERATOR_DEMOS["vaegan"] = dict(lr=2e-4, beta1=0.0, beta2=0.9, epochs=23, ex_post_prior=True)
DEMO_GENERATOR = "sngan"


def demo_settings(generator):
    """The demo settings of `generator` on the embedded catalogues."""
    return {**DEMO, "generator": generator, **GENERATOR_DEMOS.get(generator, {})}


def embedded_demo(cfg, protected):
    """The embedded catalogue's demo settings for a run: those of the generator typed (by --generator or the typed
    preset), else DEMO_GENERATOR's. `python gan/main.py --train --generator lsgan` keeps the LSGAN's demo."""
    settings = demo_settings(cfg.generator if "generator" in protected else DEMO_GENERATOR)
    if "ex_post_prior" in protected and not cfg.ex_post_prior:   # the mixture is the ex-post prior's
        settings.pop("ex_post_components", None)
    return settings


PRESETS["demo"] = demo_settings(DEMO_GENERATOR)


SIZE_BOUNDS = dict(image_size=MAX_IMAGE_SIZE, z_dim=MAX_WIDTH, g_width=MAX_WIDTH // 4, d_width=MAX_WIDTH // 8,
                   batch_size=MAX_BATCH, epochs=None, sample_every=None, checkpoint_every=None,
                   consistency_samples=100_000, sample_steps=TRAIN_TIMESTEPS)


def noise_image_codes(cfg):
    """Whether cfg's generator draws its codes as noise images (ConditionalGenerator.noise_image_codes)."""
    return cfg.generator in GENERATORS and GENERATORS[cfg.generator].noise_image_codes


def with_generator_latent(cfg):
    """cfg with the latent the generator dictates: a diffusion model's codes are noise images (z_dim 3 S^2 ~ N(0, I))
    whatever --z-dim and --z-distribution say, a VAE's are drawn from N(0, I) whatever --z-distribution says.
    Training settles it before anything is drawn or saved."""
    if noise_image_codes(cfg):
        cfg = replace(cfg, z_dim=noise_image_dim(cfg.image_size))
    prior = GENERATORS[cfg.generator].z_distribution if cfg.generator in GENERATORS else None
    return replace(cfg, z_distribution=prior) if prior else cfg


def check_config(cfg):
    # the widest layers are 4 x g_width and 8 x d_width channels; a noise image's z_dim follows from image_size
    require_sizes(cfg, {**SIZE_BOUNDS, "z_dim": None} if noise_image_codes(cfg) else SIZE_BOUNDS)
    num_stages(cfg.image_size, 16)   # a power of two of at least 16
    if cfg.lr <= 0:
        raise ConfigError(f"--lr must be positive, got {cfg.lr}")
    if cfg.lr_decay_from is not None and not 0 <= cfg.lr_decay_from < cfg.epochs:
        raise ConfigError(f"--lr-decay-from is an epoch before the last ({cfg.epochs}), got {cfg.lr_decay_from}")
    if not 0 <= cfg.ema < 1:
        raise ConfigError(f"--ema is a decay in [0, 1), got {cfg.ema}")
    for weight in ("aux_class_weight", "match_weight", "mode_seeking_weight"):
        if getattr(cfg, weight) < 0:
            raise ConfigError(f"--{weight.replace('_', '-')} must be at least 0, got {getattr(cfg, weight)}")
    if not 0 <= cfg.ex_post_components <= MAX_EX_POST_COMPONENTS:
        raise ConfigError(f"--ex-post-components is from 0 to {MAX_EX_POST_COMPONENTS}, got {cfg.ex_post_components}")
    if cfg.ex_post_components and not cfg.ex_post_prior:
        raise ConfigError("--ex-post-components sets the ex-post prior's mixture: give --ex-post-prior too")
    if cfg.kl_weight is not None and not 0 < cfg.kl_weight <= MAX_KL_WEIGHT:
        raise ConfigError(f"--kl-weight is in (0, {MAX_KL_WEIGHT:g}], got {cfg.kl_weight}")
    if not 1 <= cfg.prior_fakes_every <= cfg.batch_size:
        raise ConfigError(f"--prior-fakes-every is from 1 to the batch size {cfg.batch_size}, got "
                          f"{cfg.prior_fakes_every}")
    if cfg.prior_fakes and cfg.ex_post_components:
        raise ConfigError("--prior-fakes decodes the ex-post prior's samples while training, and the mixture of "
                          "--ex-post-components is fitted only after it: give one of them")
    if cfg.prior_fakes_every > 1 and not cfg.prior_fakes:
        raise ConfigError("--prior-fakes-every sets how many prior fakes D sees: give --prior-fakes too")
    if cfg.from_tf and cfg.generator != "lsgan":
        raise ConfigError(f"--from-tf reads the original's LSGAN; it cannot be --generator {cfg.generator}")
    if cfg.from_tf and (cfg.train or cfg.resume):
        raise ConfigError("--from-tf writes the original's trained GAN as a run and trains nothing: leave out "
                          "--train and --resume")
