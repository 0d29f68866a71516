"""A data-efficient class-conditional GAN for small catalogues: spectral normalisation in D (Miyato et al., 2018),
a projection discriminator for the category (Miyato & Koyama, 2018), conditional batch norm in G, the hinge loss,
and differentiable augmentation of every image D sees (DiffAugment, Zhao et al., 2020), which keeps D from
memorising a catalogue of a few thousand items.

At 32x32 with widths G w and D d (stages are added or dropped at the high-resolution end for other sizes, G
halving its channels and D doubling them at each stage):

    G(z, c)                                              D(x, c)
    h0 linear z (+ seed_c) -> 4x4x4w, cbn, relu  4x4x4w  4x4/2 sn-conv, lrelu                          16x16xd
    up 2x, 3x3 conv, cbn, relu              8x8x4w       4x4/2 sn-conv, lrelu                          8x8x2d
    up 2x, 3x3 conv, cbn, relu              16x16x2w     4x4/2 sn-conv, lrelu                          4x4x4d
    up 2x, 3x3 conv, cbn, relu              32x32xw      3x3/1 sn-conv, lrelu; sum over space   phi  4x4 -> 8d
    3x3 conv, tanh                          32x32x3      linear(phi) + <embed(c), phi>  (projection)   score

cbn: batch norm whose scale and shift are looked up per category; sn-conv: a conv under spectral normalisation;
seed_c (with --class-seed): a learned 4x4x4w map per category, so that the category reaches G's layout from its first
layer and not only through the batch norms' scales and shifts.
With --half-chroma G draws colour at half the side, as JPEG's 4:2:0 stores it: the last 3x3 conv gives only the
luma Y (32x32x1), a 3x3 conv of the stage before gives the chroma Cb, Cr (16x16x2), upsampled bilinearly, and the
fixed YCbCr -> RGB matrix mixes them before the tanh, so colour can change only as fast as a map at half the side
lets it. Against the demo's weave of colours from pixel to pixel; measured and left off: blind labellers named fewer
of its designs (docs/design_half.md, "Colour at half the side, measured").
D has one strided conv per stage, as the LSGAN's, rather than the 3x3 + 4x4 pairs of Miyato et al.'s standard CNN:
a third of the flops, so that a CPU gives it more iterations within the few minutes of a demo (its quality per
CPU-minute: bench/gan_quality.py).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from common.device import autocast, fused_adam_kwargs, memory_format
from common.distributed import unwrap
from common.images import translate as shift_images
from gan.model import ConditionalGenerator, batch_norm, descend, moving_average, num_stages, sample_z

LEAK = 0.1                 # D's leaky ReLU slope (Miyato et al.'s standard CNN)
TRANSLATION = 1 / 8        # DiffAugment's shift, a fraction of the side
CUTOUT = 1 / 2             # DiffAugment's erased square, a fraction of the side
YCBCR_TO_RGB = torch.tensor([[1.0, 0.0, 1.402],      # JPEG's (ITU-R BT.601, full range)
                             [1.0, -0.344136, -0.714136],
                             [1.0, 1.772, 0.0]])


def diff_augment(x):
    """DiffAugment's colour, translation and cutout (Zhao et al., 2020): random per image, differentiable in x,
    the same shape out."""
    n, device = len(x), x.device
    x = x + (torch.rand(n, 1, 1, 1, device=device) - 0.5)                                    # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(n, 1, 1, 1, device=device) * 2) + mean                      # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (torch.rand(n, 1, 1, 1, device=device) + 0.5) + mean                    # contrast
    return cutout(translate(x))


def pixel_grid(x):
    """Row and column index planes [1, S, S] of x's pixels."""
    rows = torch.arange(x.shape[2], device=x.device)[None, :, None]
    columns = torch.arange(x.shape[3], device=x.device)[None, None, :]
    return rows, columns


def translate(x):
    """Shift each image by up to TRANSLATION of its side, filling with zeros."""
    return shift_images(x, int(x.shape[2] * TRANSLATION + 0.5))


def cutout(x):
    """Zero a square of CUTOUT of the side, centred at a random pixel of each image (clipped at the borders)."""
    side = int(x.shape[2] * CUTOUT + 0.5)
    top, left = (torch.randint(0, x.shape[2] + (1 - side % 2), (len(x), 1, 1), device=x.device) - side // 2
                 for _ in range(2))
    rows, columns = pixel_grid(x)
    inside = (rows >= top) & (rows < top + side) & (columns >= left) & (columns < left + side)
    return x * (~inside)[:, None].to(x.dtype)


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose scale and shift are looked up per category (Miyato & Koyama's conditional BN in G)."""

    def __init__(self, channels, num_categories):
        super().__init__()
        self.bn = batch_norm(channels)
        self.scale = nn.Embedding(num_categories, channels)
        self.shift = nn.Embedding(num_categories, channels)
        nn.init.zeros_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x, labels):
        scale, shift = 1 + self.scale(labels)[:, :, None, None], self.shift(labels)[:, :, None, None]
        return self.bn(x) * scale.to(x.dtype) + shift.to(x.dtype)


class Generator(nn.Module):

    def __init__(self, image_size=32, z_dim=100, num_categories=6, width=32, class_seed=False, half_chroma=False):
        super().__init__()
        self.image_size, self.z_dim, self.num_categories = image_size, z_dim, num_categories
        self.seed_channels = 4 * width
        # one upsampling stage per doubling from 4x4: 4w out of the first, then half as many out of each next
        channels = [self.seed_channels] + [max(self.seed_channels >> i, 1) for i in range(num_stages(image_size, 4))]
        self.h0_lin = nn.Linear(z_dim, self.seed_channels * 4 * 4)
        self.class_seed = nn.Embedding(num_categories, self.seed_channels * 4 * 4) if class_seed else None
        if class_seed:  # zero, as the batch norms' embeddings: at N(0, 1) it outweighed z and each category collapsed
            nn.init.zeros_(self.class_seed.weight)
        self.bn0 = ConditionalBatchNorm(self.seed_channels, num_categories)
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in zip(channels, channels[1:]))
        self.bns = nn.ModuleList(ConditionalBatchNorm(c, num_categories) for c in channels[1:])
        if half_chroma:
            self.to_luma = nn.Conv2d(channels[-1], 1, 3, padding=1)
            self.to_chroma = nn.Conv2d(channels[-2], 2, 3, padding=1)
            self.register_buffer("ycbcr_to_rgb", YCBCR_TO_RGB.clone(), persistent=False)
        else:
            self.to_rgb = nn.Conv2d(channels[-1], 3, 3, padding=1)
        self.half_chroma = half_chroma

    def forward(self, z, labels):
        """z [B, z_dim], labels [B] category ids -> images [B, 3, S, S] in [-1, 1]."""
        h = self.h0_lin(z)
        if self.class_seed is not None:
            h = h + self.class_seed(labels).to(h.dtype)
        h = h.view(-1, self.seed_channels, 4, 4)
        h = F.relu(self.bn0(h, labels))
        for conv, bn in zip(self.convs, self.bns):
            h_half, h = h, F.relu(bn(conv(F.interpolate(h, scale_factor=2, mode="nearest")), labels))
        if not self.half_chroma:
            return torch.tanh(self.to_rgb(h))
        chroma = F.interpolate(self.to_chroma(h_half), scale_factor=2, mode="bilinear", align_corners=False)
        ycbcr = torch.cat([self.to_luma(h), chroma], dim=1)
        return torch.tanh(torch.einsum("rc,bchw->brhw", self.ycbcr_to_rgb.to(ycbcr.dtype), ycbcr))


class Discriminator(nn.Module):

    def __init__(self, image_size=32, num_categories=6, width=32, classifies=False):
        super().__init__()
        self.image_size, self.num_categories = image_size, num_categories
        n = num_stages(image_size, 4)
        channels = [3] + [max(4 * width >> (n - 1 - i), 1) for i in range(n)]    # ..., d, 2d, 4d at the 4x4 end
        self.downs = nn.ModuleList(spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
                                   for c_in, c_out in zip(channels, channels[1:]))
        self.last = spectral_norm(nn.Conv2d(channels[-1], 2 * channels[-1], 3, padding=1))
        self.h_lin = spectral_norm(nn.Linear(2 * channels[-1], 1))
        self.embed = spectral_norm(nn.Embedding(num_categories, 2 * channels[-1]))
        # the auxiliary classifier's head: not spectrally normalised, as it is no part of the score G climbs
        self.classifier = nn.Linear(2 * channels[-1], num_categories) if classifies else None

    def forward(self, x, labels, with_logits=False):
        """x [B, 3, S, S] in [-1, 1], labels [B] category ids -> raw scores [B] (labels [B, L]: each image scored
        under each of its L labels, [B, L]); with_logits: (scores, the auxiliary classifier's category logits [B,
        categories])."""
        h = x
        for down in self.downs:
            h = F.leaky_relu(down(h), LEAK)
        phi = F.leaky_relu(self.last(h), LEAK).sum(dim=(2, 3))
        if labels.dim() == 1:
            scores = self.h_lin(phi).squeeze(1) + (self.embed(labels) * phi).sum(1)   # the projection of c
        else:   # each image under each of its labels
            scores = self.h_lin(phi) + (self.embed(labels) * phi[:, None]).sum(2)
        return (scores, self.classifier(phi)) if with_logits else scores


def mode_seeking_loss(fake, z, labels):
    """The mode-seeking term of MSGAN (Mao et al., 2019, eq. 3, as their code computes it) over the pairs (i, j) of
    the batch that share a category: 1 / (mean d(G(z_i, c), G(z_j, c)) / mean d(z_i, z_j) + eps), d the mean
    absolute difference. Smaller where codes of one category give images further apart; 0 when no two samples
    share one. Under torchrun each rank pairs its own share of the batch."""
    first, second = torch.triu_indices(len(labels), len(labels), offset=1, device=labels.device)
    same = labels[first] == labels[second]
    first, second = first[same], second[same]
    if len(first) == 0:
        return fake.new_zeros((), dtype=torch.float32)
    image_distance = (fake[first] - fake[second]).float().abs().flatten(1).mean(1)
    code_distance = (z[first] - z[second]).float().abs().mean(1)
    return 1 / (image_distance.mean() / code_distance.mean() + 1e-5)


def hinge_train_step(generator, discriminator, opt_g, opt_d, real, labels, z, augment, bf16=True, aux_weight=0.0,
                     match_weight=0.0, mode_seeking_weight=0.0):
    """One D step then one G step on the hinge loss, D seeing real and fake through `augment`; returns the losses.

        L_D = E[relu(1 - D(aug(x), c))] + E[relu(1 + D(aug(G(z, c)), c))]        L_G = -E[D(aug(G(z, c)), c)]

    With aux_weight a > 0 (an auxiliary classifier, Odena et al., 2017): L_D + a CE(C(aug(x)), c), C trained on the
    real items alone, and L_G + a CE(C(aug(G(z, c))), c), so that G is pushed to samples D names as c.
    With match_weight m > 0 (a matching-aware discriminator, Reed et al., 2016): L_D + m E[relu(1 + D(aug(x), c'))],
    c' another category drawn uniformly, so that D's projection of the category must tell a real item of one
    category from the same item under another's label, and G's samples must look like their own category.
    With mode_seeking_weight s > 0 (MSGAN's): L_G + s mode_seeking_loss, so that the codes of one category
    spread over more of its items rather than collapsing onto a few.
    """
    device, aux, match = real.device, aux_weight > 0, match_weight > 0
    d_labels = torch.cat([labels, labels])
    if match:
        categories = unwrap(discriminator).num_categories
        other = (labels + torch.randint(1, categories, labels.shape, device=device)) % categories
        d_labels = torch.stack([d_labels, torch.cat([other, other])], dim=1)
    with autocast(device, bf16):
        fake = generator(z, labels)
        judged = discriminator(augment(torch.cat([real, fake.detach()])), d_labels, aux)
    scores, logits = judged if aux else (judged, None)
    scores = scores.float()
    if match:
        scores, mismatched = scores[:, 0], scores[:len(real), 1]
    d_real, d_fake = scores.chunk(2)
    d_loss_real, d_loss_fake = F.relu(1 - d_real).mean(), F.relu(1 + d_fake).mean()
    d_loss = d_loss_real + d_loss_fake
    losses = {}
    if aux:
        losses["d_loss_class"] = F.cross_entropy(logits[:len(real)].float(), labels)
        d_loss = d_loss + aux_weight * losses["d_loss_class"]
    if match:
        losses["d_loss_mismatch"] = F.relu(1 + mismatched).mean()
        d_loss = d_loss + match_weight * losses["d_loss_mismatch"]
    descend(opt_d, d_loss)

    discriminator.requires_grad_(False)  # the G step needs gradients through D, not for D's weights
    with autocast(device, bf16):
        judged = unwrap(discriminator)(augment(fake), labels, aux)
    scores, logits = judged if aux else (judged, None)
    g_loss = -scores.float().mean()
    if aux:
        losses["g_loss_class"] = F.cross_entropy(logits.float(), labels)
        g_loss = g_loss + aux_weight * losses["g_loss_class"]
    if mode_seeking_weight > 0:
        losses["g_loss_mode_seeking"] = mode_seeking_loss(fake, z, labels)
        g_loss = g_loss + mode_seeking_weight * losses["g_loss_mode_seeking"]
    descend(opt_g, g_loss)
    discriminator.requires_grad_(True)
    return {"d_loss": d_loss.detach(), "d_loss_real": d_loss_real.detach(), "d_loss_fake": d_loss_fake.detach(),
            "g_loss": g_loss.detach(), **{name: loss.detach() for name, loss in losses.items()}}


class SNGAN(ConditionalGenerator):
    """The spectrally normalised projection GAN with hinge loss and DiffAugment (this module's docstring).

    Its realism term of eq. 10 is -D_c(e), the hinge loss's target for G: smaller where D finds e more real. Unlike
    the LSGAN's [D_c(e) - 1]^2 it has no minimum at a finite score, so a large eta pushes the designs on towards
    what D finds most real rather than to D's decision boundary. z ~ U(-1, 1) is its prior (latent_box), so the
    paper's z = tanh(z') spans its domain.

    With --ema D, sampling and preference maximisation read an exponential moving average of G's weights and batch
    norm statistics (gan/model.py moving_average; Yazici et al., 2019, averaged a GAN's generator so), while D and
    G's training read the last weights."""
    nets = ("generator", "discriminator")
    reads = ("ema", "class_seed", "aux_class_weight", "match_weight", "mode_seeking_weight", "half_chroma")

    def __init__(self, cfg, num_categories, device="cpu"):
        super().__init__()
        fmt = memory_format(device, cfg.channels_last)
        self.generator = Generator(cfg.image_size, cfg.z_dim, num_categories, cfg.g_width, cfg.class_seed,
                                   cfg.half_chroma).to(device, memory_format=fmt)
        self.discriminator = Discriminator(cfg.image_size, num_categories, cfg.d_width, bool(cfg.aux_class_weight)).to(
            device, memory_format=fmt)
        self.z_dim, self.image_size, self.num_categories = cfg.z_dim, cfg.image_size, num_categories
        self.aux_class_weight, self.match_weight = cfg.aux_class_weight, cfg.match_weight
        self.mode_seeking_weight = cfg.mode_seeking_weight
        self.augment = diff_augment if cfg.diffaugment else nn.Identity()
        self.averages = ("ema_generator",) if cfg.ema else ()
        if cfg.ema:
            self.ema_generator = moving_average(self.generator, cfg.ema)

    def sample_z(self, n, device="cpu", rng=None):
        return sample_z(n, self.z_dim, "uniform", device, rng)

    def forward(self, z, labels):
        return (self.ema_generator.module if self.averages else self.generator)(z, labels)

    def realism_loss(self, images, labels):
        return -self.discriminator(images, labels)

    def optimizers(self, cfg, device):
        kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **fused_adam_kwargs(device))
        return {name: torch.optim.Adam(getattr(self, name).parameters(), **kwargs) for name in self.nets}

    def train_step(self, nets, optimizers, real, labels, z, bf16=True):
        losses = hinge_train_step(nets["generator"], nets["discriminator"], optimizers["generator"],
                                  optimizers["discriminator"], real, labels, z, self.augment, bf16,
                                  self.aux_class_weight, self.match_weight, self.mode_seeking_weight)
        if self.averages:
            self.ema_generator.update_parameters(self.generator)
        return losses
