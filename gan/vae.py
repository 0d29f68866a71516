"""A class-conditional variational autoencoder (Kingma & Welling, 2014; conditional as Sohn et al., 2015) as a
ConditionalGenerator: the likelihood-based alternative to the GANs, whose decoder must reconstruct every training
item and so cannot drop a category's shape the way a GAN's generator may (mode dropping); its price is blur.

The decoder is the sngan's G (gan/sngan.py) at the same widths, so the two differ by how G is trained alone. The
encoder mirrors the sngan's D without spectral normalisation; the category enters it as a learned vector added to
its pooled features:

    q(z | x, c)                                          p(x | z, c)
    4x4/2 conv, lrelu                       16x16xd      G(z, c) of gan/sngan.py (cbn, relu; tanh)   32x32x3
    4x4/2 conv, lrelu                       8x8x2d
    4x4/2 conv, lrelu                       4x4x4d
    flatten + embed(c), linear -> mu, log sigma^2        2 x z_dim

Training maximises the ELBO with p(x | z, c) = N(G(z, c), 1/2 I) on images in [-1, 1] and the prior p(z) = N(0, I):

    L = sum_pixels (G(z, c) - x)^2 + beta KL(N(mu, sigma^2) || N(0, I)),   z = mu + sigma * eps   (reparameterised)

beta is 1 (the ELBO) unless --kl-weight sets it (a beta-VAE, Higgins et al., 2017).

Samples decode z ~ N(0, I) (latent_box is False: PM optimises z directly). The realism term of eq. 10 is the same
loss L of a design e, per pixel, with z at the encoder's mean: smaller where the model finds e more probable
(pm/main.py --realism-term full-elbo: with beta 1, the negative ELBO, whatever --kl-weight).

With --ex-post-prior, samples come instead from a Gaussian per category fitted to the encoder's means of the training
items, the aggregate posterior, which the prior N(0, I) matches only on average (ex-post density estimation, Ghosh et
al., 2020): G_c(z) decodes m_c + L_c z with z ~ N(0, I), m_c and L_c L_c^T the mean and covariance of the means of
category c, kept as running statistics over training as batch norm keeps its own. The code z stays a standard normal,
so PM's sphere and prior apply unchanged.

With --ex-post-components K the ex-post prior is instead a mixture of K Gaussians per category, fitted once after the
last iteration to the encoder's means of every training item, by EM (Dempster et al., 1977) from k-means++ seeds, each
covariance shrunk towards the category's as a conjugate prior does (the MAP estimate of Fraley & Raftery, 2007, with
z_dim + 2 degrees of freedom): about 400 items a category cannot fill K full covariances of 100 dimensions alone. Ghosh
et al. fit ten components. The training grids decode N(0, I) until the fit. One code z ~ N(0, I) still draws a sample
exactly: the quantile of z's first coordinate picks the component by the mixture's weights and, rescaled within that
component's share of the quantiles, is the component's first coordinate again (so PM's ascent moves within a
component and may cross to the next one).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.device import autocast, fused_adam_kwargs, memory_format
from common.distributed import global_randn_like, global_rows
from gan.model import ConditionalGenerator, descend, num_stages
from gan.sngan import LEAK, Generator

MOMENTUM = 0.01              # of the aggregate posterior's running statistics (--ex-post-prior)
COVARIANCE_JITTER = 1e-4     # added to their covariance's diagonal before its Cholesky factor
EM_ITERATIONS = 200          # at most, of the mixture's fit (--ex-post-components)
EM_TOLERANCE = 1e-6          # it stops when the mean log-likelihood per item rises by less
FIT_CHUNK = 256              # items encoded at once for the fit
SEED_FLOOR = 1e-12           # k-means++'s weights where every code is already a seed (fewer codes than K)
QUANTILE_MARGIN = 1e-6       # keeps the first coordinate's rescaled quantile off 0 and 1


class Encoder(nn.Module):

    def __init__(self, image_size=32, z_dim=100, num_categories=6, width=32):
        super().__init__()
        n = num_stages(image_size, 4)
        channels = [3] + [max(4 * width >> (n - 1 - i), 1) for i in range(n)]    # ..., d, 2d, 4d at the 4x4 end
        self.downs = nn.ModuleList(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)
                                   for c_in, c_out in zip(channels, channels[1:]))
        features = channels[-1] * 4 * 4
        self.embed = nn.Embedding(num_categories, features)
        self.to_posterior = nn.Linear(features, 2 * z_dim)

    def forward(self, x, labels):
        """x [B, 3, S, S] in [-1, 1], labels [B] -> the posterior's mean and log variance, each [B, z_dim]."""
        h = x
        for down in self.downs:
            h = F.leaky_relu(down(h), LEAK)
        h = h.flatten(1) + self.embed(labels).to(h.dtype)
        return self.to_posterior(h).float().chunk(2, dim=1)


def negative_elbo(decoder, encoder, images, labels, sample=True):
    """Per image [B]: the squared reconstruction error summed over pixels and the KL of q(z | x, c) from N(0, I),
    z drawn from q (reparameterised) or at its mean; the posterior's means [B, z_dim]; and the decoded images."""
    mean, log_variance = encoder(images, labels)
    z = mean + (0.5 * log_variance).exp() * global_randn_like(mean) if sample else mean
    decoded = decoder(z, labels)
    reconstruction = (decoded.float() - images.float()).pow(2).sum(dim=(1, 2, 3))
    kl = 0.5 * (mean.pow(2) + log_variance.exp() - 1 - log_variance).sum(dim=1)
    return reconstruction, kl, mean, decoded


class AggregatePosterior(nn.Module):
    """Running mean and covariance per category of the encoder's posterior means, each moved by MOMENTUM towards a
    batch's, as batch norm's running statistics are; they start as N(0, I), so that an untrained model samples as
    without them."""

    def __init__(self, num_categories, z_dim):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_categories, z_dim))
        self.register_buffer("second_moment", torch.eye(z_dim).repeat(num_categories, 1, 1))

    @torch.no_grad()
    def update(self, means, labels):
        """Move the statistics towards those of the batch's `means` [B, z_dim] (every rank's share of it under
        torchrun) by category."""
        means, labels = global_rows(means.float()), global_rows(labels)
        for category in labels.unique():
            of_category = means[labels == category]
            self.mean[category].lerp_(of_category.mean(0), MOMENTUM)
            self.second_moment[category].lerp_(of_category.T @ of_category / len(of_category), MOMENTUM)

    def forward(self, z, labels):
        """m_c + L_c z for each row of z [B, z_dim] and its category."""
        covariance = self.second_moment - self.mean[:, :, None] * self.mean[:, None, :]
        jitter = COVARIANCE_JITTER * torch.eye(covariance.shape[-1], device=z.device)
        factor = torch.linalg.cholesky(covariance + jitter)
        return self.mean[labels] + (factor[labels] @ z[:, :, None].to(factor.dtype)).squeeze(2)


class MixturePosterior(nn.Module):
    """A mixture of `components` Gaussians per category over the codes, fitted after training (`fit`; the module's
    docstring). Before its fit every component is N(0, I), so that it samples as N(0, I) does."""

    def __init__(self, num_categories, z_dim, components):
        super().__init__()
        self.register_buffer("weight", torch.full((num_categories, components), 1 / components))
        self.register_buffer("mean", torch.zeros(num_categories, components, z_dim))
        self.register_buffer("factor", torch.eye(z_dim).repeat(num_categories, components, 1, 1))

    @torch.no_grad()
    def fit(self, means, labels, rng):
        """Fit each category's mixture to the encoder's `means` [N, z_dim] of its items (`labels` [N]), seeded by the
        torch.Generator `rng`."""
        for category in labels.unique():
            weight, mean, covariance = fit_mixture(means[labels == category].double(), self.weight.shape[1], rng)
            self.weight[category], self.mean[category] = weight.float(), mean.float()
            self.factor[category] = torch.linalg.cholesky(covariance).float()

    def forward(self, z, labels):
        """The mixture's sample of each row of z [B, z_dim] and its category: component k where the quantile of z's
        first coordinate falls in k's share, then mean_k + factor_k z' with z's first coordinate rescaled within it."""
        quantile = torch.special.ndtr(z[:, 0].float())
        upper = self.weight[labels].cumsum(1)
        component = (quantile[:, None] > upper[:, :-1]).sum(1)
        rows = torch.arange(len(z), device=z.device)
        share = self.weight[labels, component]
        within = ((quantile - (upper[rows, component] - share)) / share).clamp(QUANTILE_MARGIN, 1 - QUANTILE_MARGIN)
        z = torch.cat([torch.special.ndtri(within)[:, None], z[:, 1:].float()], dim=1)
        mean, factor = self.mean[labels, component], self.factor[labels, component]
        return mean + (factor @ z[:, :, None]).squeeze(2)


def fit_mixture(codes, components, rng):
    """(weights [K], means [K, d], covariances [K, d, d]) of a Gaussian mixture fitted to `codes` [n, d] by EM from
    k-means++ seeds, each covariance the MAP estimate under an inverse-Wishart prior centred on the codes' own
    covariance with d + 2 degrees of freedom (Fraley & Raftery, 2007)."""
    n, d = codes.shape
    jitter = COVARIANCE_JITTER * torch.eye(d, dtype=codes.dtype)
    spread = torch.cov(codes.T, correction=int(n > 1)).reshape(d, d) + jitter   # one item: no spread
    seeds = [int(torch.randint(n, (1,), generator=rng))]
    for _ in range(components - 1):
        nearest = torch.cdist(codes, codes[seeds]).pow(2).min(1).values
        seeds.append(int(torch.multinomial(nearest + SEED_FLOOR, 1, generator=rng)))
    weight, mean = torch.full((components,), 1 / components, dtype=codes.dtype), codes[seeds]
    covariance = spread.expand(components, d, d)
    previous = -math.inf
    for _ in range(EM_ITERATIONS):
        log_joint = gaussian_log_density(codes, mean, covariance) + weight.log()[:, None]      # [K, n]
        log_likelihood = log_joint.logsumexp(0)
        responsibility = (log_joint - log_likelihood).exp()                                     # E step
        counts = responsibility.sum(1)                                                          # M step
        weight, mean = counts / n, responsibility @ codes / counts[:, None]
        centred = codes[None] - mean[:, None]
        scatter = torch.einsum("kn,kni,knj->kij", responsibility, centred, centred)
        covariance = (scatter + (d + 2) * spread) / (counts[:, None, None] + d + 2)
        if log_likelihood.mean() - previous < EM_TOLERANCE:
            break
        previous = log_likelihood.mean()
    return weight, mean, covariance


def gaussian_log_density(codes, mean, covariance):
    """log N(code | mean_k, covariance_k) [K, n] of `codes` [n, d] under each of K Gaussians."""
    factor = torch.linalg.cholesky(covariance)
    solved = torch.linalg.solve_triangular(factor, (codes[None] - mean[:, None]).transpose(1, 2), upper=False)
    log_determinant = 2 * factor.diagonal(dim1=1, dim2=2).log().sum(1)
    return -0.5 * (solved.pow(2).sum(1) + log_determinant[:, None] + codes.shape[1] * math.log(2 * math.pi))


class VAE(ConditionalGenerator):
    """The conditional VAE (this module's docstring); `nets` is the encoder and the decoder, each with its Adam (one
    Adam over both, as Adam is per parameter), stepped together down one loss."""
    nets = ("encoder", "decoder")
    reads = ("ex_post_prior", "ex_post_components", "kl_weight")
    latent_box = False
    z_distribution = "normal"
    own_realism = "elbo"

    def __init__(self, cfg, num_categories, device="cpu"):
        super().__init__()
        fmt = memory_format(device, cfg.channels_last)
        self.encoder = Encoder(cfg.image_size, cfg.z_dim, num_categories, cfg.d_width).to(device, memory_format=fmt)
        self.decoder = Generator(cfg.image_size, cfg.z_dim, num_categories, cfg.g_width).to(device, memory_format=fmt)
        self.z_dim, self.image_size, self.num_categories = cfg.z_dim, cfg.image_size, num_categories
        self.kl_weight = 1.0 if cfg.kl_weight is None else cfg.kl_weight
        self.averages = ("aggregate",) if cfg.ex_post_prior else ()
        if cfg.ex_post_prior:
            self.aggregate = (MixturePosterior(num_categories, cfg.z_dim, cfg.ex_post_components)
                              if cfg.ex_post_components else AggregatePosterior(num_categories, cfg.z_dim)).to(device)
        self.seed = cfg.seed

    def sample_z(self, n, device="cpu", rng=None):
        return torch.randn(n, self.z_dim, device=device, generator=rng)

    def forward(self, z, labels):
        return self.decoder(self.aggregate(z, labels) if self.averages else z, labels)

    def realism_loss(self, images, labels, kl_weight=None):
        """The loss L per pixel at the encoder's mean, its KL term weighed by `kl_weight` (None: the trained beta)."""
        reconstruction, kl, _, _ = negative_elbo(self.decoder, self.encoder, images, labels, sample=False)
        return (reconstruction + (self.kl_weight if kl_weight is None else kl_weight) * kl) / images[0].numel()

    def realism_terms(self):
        """Its own (the loss it was trained on) and "full-elbo", the negative ELBO whatever --kl-weight."""
        return {**super().realism_terms(), "full-elbo": lambda images, labels: self.realism_loss(images, labels, 1.0)}

    def optimizers(self, cfg, device):
        kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **fused_adam_kwargs(device))
        return {name: torch.optim.Adam(getattr(self, name).parameters(), **kwargs) for name in self.nets}

    def train_step(self, nets, optimizers, real, labels, z, bf16=True):
        """One Adam step down the negative ELBO of the batch (z, drawn for the GANs, is not used: q gives it)."""
        with autocast(real.device, bf16):
            reconstruction, kl, means, _ = negative_elbo(nets["decoder"], nets["encoder"], real, labels)
        loss = (reconstruction + self.kl_weight * kl).mean()
        descend(optimizers.values(), loss)
        self.track_codes(means, labels)
        return {"loss": loss.detach(), "reconstruction": reconstruction.mean().detach(), "kl": kl.mean().detach()}

    def track_codes(self, means, labels):
        """Move the one Gaussian's running statistics towards the batch's encoder `means` (a mixture is fitted after
        training instead, by finish_training)."""
        if self.averages and isinstance(self.aggregate, AggregatePosterior):
            self.aggregate.update(means, labels)

    @torch.no_grad()
    def finish_training(self, store, items, labels):
        """With --ex-post-components, fit the mixture to the encoder's means of the training `items` (their images
        store(ids), their `labels`), in float32 whatever the training's precision."""
        if not (self.averages and isinstance(self.aggregate, MixturePosterior)):
            return
        means = []
        for chunk, chunk_labels in zip(items.split(FIT_CHUNK), labels.split(FIT_CHUNK)):
            images = store(chunk)
            means.append(self.encoder(images, chunk_labels.to(images.device))[0].cpu())
        self.aggregate.fit(torch.cat(means), labels.cpu(), torch.Generator().manual_seed(self.seed))
