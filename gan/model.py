"""The conditional generator and discriminator of the original DCGAN-style LSGAN (paper Sec. III-C; GAN/model.py
and GAN/ops.py of the original repository).

At 64x64 with width 64 the layers are exactly the original's (G 3,811,075 and D 4,460,545 parameters):

    G(z, y)                                          D(x, y)
    concat [z, y]                     z_dim + C      x + y                                3 + C channels
    h0_lin -> 4x4x256, bn0, lrelu     4x4x256        h0 5x5/2 conv, lrelu                 32x32x64   (+ y)
    h1 3x3/2 deconv, bn1, lrelu       8x8x256        h1 5x5/2 conv, bn1, lrelu            16x16x128  (+ y)
    h2 3x3/1 deconv, bn2, lrelu       8x8x256        h2 5x5/2 conv, bn2, lrelu            8x8x256    (+ y)
    h3 3x3/2 deconv, bn3, lrelu       16x16x256      h3 5x5/2 conv, bn3, lrelu            4x4x512
    h4 3x3/1 deconv, bn4, lrelu       16x16x256      h4_lin flatten -> 1, raw score (no sigmoid)
    h5 3x3/2 deconv, bn5, lrelu       32x32x128
    h6 3x3/2 deconv, bn6, lrelu       64x64x64
    h7 3x3/1 deconv, tanh             64x64x3

Other sizes (the paper's 128x128, the 32 px CPU demo) keep the 4x4 seed and the 16x16 body of G and
add or drop stride-2 stages at the high-resolution end of both nets, halving the channels at each stage
added: the paper's 128 px adds a 128x128x32 stage to G and a first 64x64x32 conv to D (G 3,189,763 and
D 4,514,305 parameters with z of 100). The paper shows no layer table, so this is our reading of its "deeper
conditional networks modified from DCGAN and LSGAN". y is tiled as planes at D's input and after every conv
but the last, as the original did after its first three of four. `width` scales every channel count (64 gives
the original's).

TensorFlow's SAME padding is reproduced: D's 5x5/2 convs pad 1 top/left and 2
bottom/right; G's 3x3/2 transposed convs keep the first 2n of the 2n+1 rows and columns.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from common.checkpoint import load_state
from common.device import autocast, fused_adam_kwargs, memory_format
from common.distributed import GlobalBatchNorm2d, unwrap
from common.errors import CheckpointError, ConfigError
from common.safe_pickle import describe_value


def sample_z(n, z_dim, distribution="uniform", device="cpu", rng=None):
    """Latent codes: 'uniform' is U(-1, 1) as in the paper, 'normal' is N(0, 1) as the original trained with."""
    if distribution == "uniform":
        return torch.rand(n, z_dim, device=device, generator=rng) * 2 - 1
    if distribution == "normal":
        return torch.randn(n, z_dim, device=device, generator=rng)
    raise ValueError(f"unknown z distribution {distribution!r} (expected 'uniform' or 'normal')")


class SameDeconv(nn.ConvTranspose2d):
    """3x3 transposed conv with TF's SAME output size: stride 2 doubles the size, stride 1 keeps it."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__(in_channels, out_channels, kernel_size=3, stride=stride, padding=0 if stride == 2 else 1)

    def forward(self, x):
        out = super().forward(x)
        if self.stride[0] == 2:  # PyTorch gives 2n + 1 rows and columns; TF keeps the first 2n
            out = out[:, :, : 2 * x.shape[2], : 2 * x.shape[3]]
        return out


class SameConv(nn.Conv2d):
    """5x5 stride-2 conv with TF's SAME padding on even sizes: 1 before, 2 after (PyTorch's padding=2 shifts it)."""

    def __init__(self, in_channels, out_channels):
        super().__init__(in_channels, out_channels, kernel_size=5, stride=2, padding=0)

    def forward(self, x):
        return super().forward(F.pad(x, (1, 2, 1, 2)))


def batch_norm(channels):
    # TF decay 0.9, eps 1e-5, with scale and centre; statistics of the global batch under torchrun
    return GlobalBatchNorm2d(channels, momentum=0.1, eps=1e-5)


def num_stages(image_size, smallest):
    stages = math.log2(image_size / smallest)
    if image_size < 16 or stages != int(stages):
        raise ConfigError(f"image size must be a power of two of at least 16, got {image_size}")
    return int(stages)


def concat_planes(x, y_onehot):
    """Tile the one-hot condition as constant feature planes after x's channels."""
    planes = y_onehot[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3]).to(x.dtype)
    return torch.cat([x, planes], dim=1)


class Generator(nn.Module):

    def __init__(self, image_size=64, z_dim=256, num_categories=6, width=64):
        super().__init__()
        self.image_size, self.z_dim, self.num_categories = image_size, z_dim, num_categories
        seed_channels = 4 * width
        # (out channels, stride) of each hidden transposed conv: the 16x16 body, then one stage per doubling
        stages = [(seed_channels, 2), (seed_channels, 1), (seed_channels, 2), (seed_channels, 1)]
        stages += [(seed_channels // 2 ** (i + 1), 2) for i in range(num_stages(image_size, 16))]
        self.seed_channels = seed_channels
        self.h0_lin = nn.Linear(z_dim + num_categories, seed_channels * 4 * 4)
        self.bn0 = batch_norm(seed_channels)
        channels = [seed_channels] + [out for out, _ in stages]
        self.deconvs = nn.ModuleList(SameDeconv(channels[i], out, stride) for i, (out, stride) in enumerate(stages))
        self.bns = nn.ModuleList(batch_norm(out) for out, _ in stages)
        self.to_rgb = SameDeconv(channels[-1], 3, stride=1)
        self.reset_parameters()

    def reset_parameters(self):
        for module in [self.h0_lin, *self.deconvs, self.to_rgb]:
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(self, z, labels):
        """z [B, z_dim], labels [B] category ids -> images [B, 3, S, S] in [-1, 1]."""
        y = F.one_hot(labels, self.num_categories).to(z.dtype)
        h = self.h0_lin(torch.cat([z, y], dim=1)).view(-1, self.seed_channels, 4, 4)
        h = F.leaky_relu(self.bn0(h), 0.2)
        for deconv, bn in zip(self.deconvs, self.bns):
            h = F.leaky_relu(bn(deconv(h)), 0.2)
        return torch.tanh(self.to_rgb(h))


class Discriminator(nn.Module):

    def __init__(self, image_size=64, num_categories=6, width=64):
        super().__init__()
        self.image_size, self.num_categories = image_size, num_categories
        n = num_stages(image_size, 4)
        channels = [8 * width // 2 ** (n - 1 - i) for i in range(n)]  # the last conv always has 8 * width
        in_channels = [3] + channels[:-1]
        # y joins the input of every conv, i.e. it is concatenated after all but the last
        self.convs = nn.ModuleList(SameConv(c_in + num_categories, c_out) for c_in, c_out in zip(in_channels, channels))
        self.bns = nn.ModuleList([nn.Identity()] + [batch_norm(c) for c in channels[1:]])  # no BN after the first
        self.h_lin = nn.Linear(channels[-1] * 4 * 4, 1)
        self.reset_parameters()

    def reset_parameters(self):
        for conv in self.convs:
            nn.init.trunc_normal_(conv.weight, std=0.02, a=-0.04, b=0.04)  # TF truncates at two std
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.h_lin.weight, std=0.02)
        nn.init.zeros_(self.h_lin.bias)

    def forward(self, x, labels):
        """x [B, 3, S, S] in [-1, 1], labels [B] category ids -> raw scores [B]."""
        y = F.one_hot(labels, self.num_categories)
        h = x
        for conv, bn in zip(self.convs, self.bns):
            h = F.leaky_relu(bn(conv(concat_planes(h, y))), 0.2)
        return self.h_lin(h.flatten(1)).squeeze(1)


def build_gan(cfg, num_categories, device):
    generator = Generator(cfg.image_size, cfg.z_dim, num_categories, cfg.g_width)
    discriminator = Discriminator(cfg.image_size, num_categories, cfg.d_width)
    fmt = memory_format(device, cfg.channels_last)
    return generator.to(device, memory_format=fmt), discriminator.to(device, memory_format=fmt)


def build_optimizers(cfg, generator, discriminator, device):
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **fused_adam_kwargs(device))
    return torch.optim.Adam(generator.parameters(), **kwargs), torch.optim.Adam(discriminator.parameters(), **kwargs)


def descend(optimizers, loss):
    """One step of each optimiser (one, or several over parts of a model) down `loss`."""
    optimizers = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()


def train_step(generator, discriminator, opt_g, opt_d, real, labels, z, bf16=True):
    """One D step then one G step (LSGAN, a=0, b=c=1); returns the losses as tensors.

    Under DistributedDataParallel the G step goes through D's own module: D's weights are frozen there, and
    DDP must not wait for gradients of them."""
    device = real.device
    with autocast(device, bf16):
        fake = generator(z, labels)
        d_real = discriminator(real, labels).float()
        d_fake = discriminator(fake.detach(), labels).float()
    d_loss_real = ((d_real - 1) ** 2).mean()
    d_loss_fake = (d_fake ** 2).mean()
    d_loss = 0.5 * (d_loss_real + d_loss_fake)
    descend(opt_d, d_loss)

    discriminator.requires_grad_(False)  # the G step needs gradients through D, not for D's weights
    with autocast(device, bf16):
        g_loss = ((unwrap(discriminator)(fake, labels).float() - 1) ** 2).mean()
    descend(opt_g, g_loss)
    discriminator.requires_grad_(True)
    return {"d_loss": d_loss.detach(), "d_loss_real": d_loss_real.detach(), "d_loss_fake": d_loss_fake.detach(),
            "g_loss": g_loss.detach()}


class ConditionalGenerator(nn.Module):
    """What training (gan/train.py), sampling and preference maximisation (pm/) need from a conditional generator;
    each kind is a subclass registered by name in gan/generators.py (`--generator`).

    A subclass holds its networks as submodules named in `nets`: each gets its own optimiser and its own entry in
    the checkpoint's "model" and "optimizer" dicts. Networks named in `averages` follow trained ones as moving
    averages, updated by train_step: no optimiser, an entry in "model". It has `z_dim`, `image_size` and
    `num_categories`, and:

        sample_z(n, device, rng)      latent codes from the prior of random samples (grids, Table IV's "generated")
        forward(z, labels)            images [B, 3, S, S] in [-1, 1], differentiable in z: the map that eq. 9-12
                                      optimise through
        realism_loss(images, labels)  [B] the realism term of eq. 10, to be kept small: its own, named own_realism
        realism_terms()               {name: function(images, labels) -> [B]}: the realism terms it offers, its own
                                      first (pm/main.py --realism-term picks one)
        latent_box                    True when the codes live in [-1, 1]^z_dim, where the paper's z = tanh(z')
                                      (eq. 10) spans exactly the generator's domain; False: PM optimises z directly
        reads                         the generator-specific settings it reads (of gan/generators.py's
                                      OPTIONAL); the registry refuses the others when they are set
        noise_image_codes             True when the codes are noise images ~ N(0, I) of noise_image_dim(S)
                                      entries, whatever --z-dim says (gan/config.py's with_generator_latent)
        z_distribution                the prior its codes are drawn from in training and grids whatever
                                      --z-distribution says ("normal"), or None where the flag decides
        guided_sample(z, labels, score, scale)   optional: samples steered up score(image) while they are drawn
                                      (the diffusion model's; pm/main.py --guidance needs it)
        optimizers(cfg, device)       {net name: optimiser}
        finish_training(store, items, labels)   what is fitted once after the last iteration, from the training
                                      items' images (store(items)) and labels (the VAE's ex-post mixture); else
                                      nothing
        train_step(nets, optimizers, real, labels, z, bf16)   one training iteration on a batch of real images, their
                                      labels and codes z drawn from --z-distribution; `nets` are the networks by name,
                                      wrapped for DistributedDataParallel under torchrun; returns the losses (tensors)
    """
    nets = ()
    averages = ()
    reads = ()
    latent_box = True
    noise_image_codes = False
    z_distribution = None
    own_realism = "discriminator"

    @property
    def saved_nets(self):
        """The names of the networks a checkpoint holds: the trained ones and their averages."""
        return (*self.nets, *self.averages)

    def load_saved(self, weights, source):
        """Load a checkpoint's "model" dict into the saved_nets; one that does not hold exactly them is refused in
        one line naming `source`."""
        if not (isinstance(weights, dict) and set(weights) == set(self.saved_nets)):
            raise CheckpointError(f"{source}: its model is {describe_value(weights)}, not the weights of the "
                                  f"{type(self).__name__} generator's nets {', '.join(self.saved_nets)}")
        for name in self.saved_nets:
            load_state(getattr(self, name), weights[name], source)

    def sample_z(self, n, device="cpu", rng=None):
        raise NotImplementedError

    def realism_loss(self, images, labels):
        raise NotImplementedError

    def realism_terms(self):
        return {self.own_realism: self.realism_loss}

    def optimizers(self, cfg, device):
        raise NotImplementedError

    def train_step(self, nets, optimizers, real, labels, z, bf16=True):
        raise NotImplementedError

    def finish_training(self, store, items, labels):
        pass


class LSGAN(ConditionalGenerator):
    """The paper's conditional LSGAN (Sec. III-C): G maps (z, c) to an image, D scores (image, c), and the realism
    term of eq. 10 is [D_c(e) - 1]^2, the least-squares target G trains towards."""
    nets = ("generator", "discriminator")

    def __init__(self, cfg, num_categories, device="cpu"):
        super().__init__()
        self.generator, self.discriminator = build_gan(cfg, num_categories, device)
        self.z_dim, self.image_size, self.num_categories = cfg.z_dim, cfg.image_size, num_categories

    def sample_z(self, n, device="cpu", rng=None):
        """z ~ U(-1, 1), the paper's prior, also when training drew from N(0, 1) as the original did."""
        return sample_z(n, self.z_dim, "uniform", device, rng)

    def forward(self, z, labels):
        return self.generator(z, labels)

    def realism_loss(self, images, labels):
        return (self.discriminator(images, labels) - 1) ** 2

    def optimizers(self, cfg, device):
        return dict(zip(self.nets, build_optimizers(cfg, self.generator, self.discriminator, device)))

    def train_step(self, nets, optimizers, real, labels, z, bf16=True):
        return train_step(nets["generator"], nets["discriminator"], optimizers["generator"],
                          optimizers["discriminator"], real, labels, z, bf16)


def moving_average(net, decay):
    """An exponential moving average of `net`'s weights and buffers (batch norm's running statistics, so that an
    averaged generator normalises by statistics of the same trajectory), decay min(decay, (1 + n) / (10 + n)) at its
    n-th update: a plain decay of 0.999 would still hold a third of the random initialisation after 1,000 steps."""
    @torch.no_grad()
    def update(averaged, current, updates):   # called per device and dtype
        if not averaged[0].is_floating_point():   # batch norm's counts of batches
            torch._foreach_copy_(averaged, current)
            return
        updates = int(updates)
        torch._foreach_lerp_(averaged, current, 1 - min(decay, (1 + updates) / (10 + updates)))
    return AveragedModel(net, multi_avg_fn=update, use_buffers=True)


def noise_image_dim(image_size):
    """z_dim of a generator whose codes are noise images: 3 S^2."""
    return 3 * image_size * image_size


@torch.no_grad()
def generate(generator, z, labels, bf16=True):
    """G (or a ConditionalGenerator) in BN inference mode; float32 images in [-1, 1]."""
    was_training = generator.training
    generator.eval()
    with autocast(z.device, bf16):
        images = generator(z, labels).float()
    generator.train(was_training)
    return images
