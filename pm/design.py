"""Personalised design (paper section III-D): retrieval (eq. 8), preference maximisation (eq. 9-11) and
tailoring of an existing item (eq. 12 then eq. 10).

    retrieval     delta(u, c) = argmax_{e in X_c} theta_u . Phi(e)
    synthesis     max_{z'} theta_u . Phi(Delta G_c(tanh z')) - eta [D_c(G_c(tanh z')) - 1]^2        (eq. 10)
                  from m starts z ~ U(-1, 1), z' = atanh(z); the top-k of the m results are drawn without
                  replacement with p(e_t) = softmax(objective)_t (eq. 11), or taken best first
    support       optionally minus w relu(d_c(Phi(e)) - r_c)^2: d_c the Mahalanobis distance from the real items
                  of c in Phi's space, r_c a quantile of theirs (EmbeddingSupport)
    shape         optionally minus s mean_pixels (m(e) - m(e_0))^2: m a soft foreground (the garment against the
                  catalogue's white ground), e_0 the start's image; colour and pattern stay free (soft_silhouette)
    structure     optionally minus w mean_pixels (1 - s(e, e_0)): s the local correlation of the luminances
                  (SSIM's structure term, Wang et al., 2004); colour and brightness stay free (structure_change)
    truncation    optionally z = psi tanh(z'), psi < 1: starts and ascent in the central box of the prior, where
                  the generator's samples are most typical (the truncation trick, Brock et al., 2019)
    jitter        optionally, at each step, Phi (in the preference and the support term) of Delta e shifted by a
                  random offset of up to J pixels: a one-sample estimate of their mean over shifts
    tailoring     z' = argmin ||G_c(tanh z') - nabla X_query||_1 (eq. 12), then eq. 10 from that z'
    best samples  the control for the ascent: the objective of eq. 10 at n starts, none moved, and the top-k by it
                  (best-of-n; with n = m (steps + 1), as many evaluations as synthesis makes)
    screen        optionally, at eq. 11's choice and the best samples', a design whose silhouette (the best
                  foreground IoU with a real item of c) is below T is taken only when fewer than k reach T

Delta and nabla are nearest-neighbour resizes between the GAN's size and DVBPR's input size. G_c and the realism
term are the trained generator's (gan/model.py's ConditionalGenerator; the LSGAN's D gives [D_c(e) - 1]^2, the
SNGAN's -D_c(e), the diffusion model its own denoising error). Phi runs in eval mode (no dropout), the generator in
inference mode; only z' receives gradients. With latent="direct" z itself is optimised without a bound, as the
original code did (PM/main.py of the original repository). With latent="sphere" z = r z' / ||z'||, r the mean norm
of the prior's codes: in high dimension nearly every code of the prior lies near that sphere (sqrt(z_dim) for
N(0, I), sqrt(z_dim / 3) for U(-1, 1)), so the designs keep to codes like those the generator was trained on (as in
PULSE, Menon et al., 2020).

Why the support term: theta_u . Phi is linear in Phi and was learnt only where items lie, so ascent on it leaves
them. On two of the embedded catalogue's fig. 5 queries the designs that DVBPR scores above every real item of the
user (green squares, without this term) lie at d_c 18.6-27.5 from the real items of their category, 99% of which
lie within 8.9-9.1 (docs/design_half.md, fig. 5); in-distribution penalties are the standard remedy of offline
model-based optimisation (conservative objective models, Trabucco et al., 2021).

Why the shape term: the support term keeps Phi near the items, yet thin garments (sandals) still fall apart into
fragments under the ascent, scored above the user's real favourites (docs/design_half.md); the generator's own
samples keep their shapes far more often than the designs do, so the term holds each design to its start's outline.

Why the structure term: through the mixture VAE the outline survives the ascent (the silhouette does not move) while
the edges inside it, a top's sleeves and neckline, blur away, and those designs are the ones people could not name
(docs/design_half.md, "Holding each design to its start's structure"); the term holds the arrangement of light and
dark inside the garment and leaves its colour free.

Why the jitter: an image that maximises a CNN's output by gradient ascent fills with high-frequency patterns that
the CNN scores at one alignment only; asking the score to hold under small shifts (transformation robustness, Olah et
al., Distill 2017) is the feature-visualisation remedy. The steps follow the shifted score; what is kept, reported
and selected (eq. 11) is the design as it is, unshifted.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from common.errors import ConfigError, TrainingDiverged
from common.images import translate
from gan.model import sample_z

ATANH_LIMIT = 1 - 1e-6  # U(-1, 1) can draw -1 exactly; atanh(+-1) is infinite
RADIUS_SAMPLES = 1024   # prior codes whose mean norm is the sphere's radius
FOREGROUND_BELOW = 0.8  # on [0, 1]: the catalogues draw items on white; a pixel with a channel below is the item's
SILHOUETTE_SOFTNESS = 0.05
SCORED_AT_ONCE = 256    # best_samples' chunk: images through G, Phi and D at once
STRUCTURE_WINDOW = 7    # pixels a side of the windows the structure term correlates over
STRUCTURE_C3 = 0.03 ** 2 / 2   # SSIM's C3 = C2 / 2 for images in [0, 1] (Wang et al., 2004)
STRUCTURE_FLOOR = 1e-8
LUMA = (0.299, 0.587, 0.114)   # ITU-R BT.601, as SSIM is computed on the Y channel


def resize(images, size):
    """Nearest-neighbour resize to size x size (an upscale or a downscale); identity at the same size."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="nearest")


def to_z(z_prime, latent, radius=None, truncation=1.0):
    """The generator's input from the optimised variable: tanh keeps it in [-1, 1] (eq. 10), or in [-truncation,
    truncation]; sphere puts it at `radius` from the origin, where the codes of the generator's prior lie; direct is
    z' itself."""
    if latent == "tanh":
        return truncation * torch.tanh(z_prime)
    if latent == "sphere":
        return radius * F.normalize(z_prime, dim=1)
    return z_prime


def initial_latents(m, z_dim, init, device="cpu", rng=None):
    """m starting points z': 'uniform' is atanh(z), z ~ U(-1, 1) (the paper); 'normal' is N(0, 0.5^2) (the original)."""
    if init == "uniform":
        z = sample_z(m, z_dim, "uniform", device, rng)
        return torch.atanh(z.clamp(-ATANH_LIMIT, ATANH_LIMIT))
    if init == "normal":
        return 0.5 * sample_z(m, z_dim, "normal", device, rng)
    raise ConfigError(f"unknown latent init {init!r} (expected 'uniform' or 'normal')")


def choose(objective, k, select, rng=None, passes=None):
    """Indices of k of the m results: 'softmax' draws without replacement with p = softmax(objective) (eq. 11), in
    the order drawn; 'best' takes the k highest; 'all' returns every result, best first. passes: [m] bool, the
    results a screen lets through (Designer.passes); they are chosen from first, the rest only to make up k, best
    first."""
    if passes is not None and not passes.all():
        through, rest = passes.nonzero().flatten(), (~passes).nonzero().flatten()
        kept = through[choose(objective[through], k, select, rng)] if len(through) else through
        rest = rest[objective[rest].argsort(descending=True)]
        return torch.cat([kept, rest if select == "all" else rest[:max(k - len(kept), 0)]])
    if select == "softmax":
        probabilities = torch.softmax(objective.double(), dim=0)
        return torch.multinomial(probabilities, min(k, len(objective)), replacement=False, generator=rng)
    if select == "best":
        return objective.topk(min(k, len(objective))).indices
    if select == "all":
        return objective.argsort(descending=True)
    raise ConfigError(f"unknown selection {select!r} (expected 'softmax', 'best' or 'all')")


def foreground(images):
    """[B, S, S] bool: the pixels of images [B, 3, S, S] in [-1, 1] that are the item's, not the white ground."""
    return ((images + 1) / 2).amin(dim=1) < FOREGROUND_BELOW


def best_overlap(masks, real_masks):
    """[B] the best IoU of each of masks [B, S, S] with one of real_masks [N, S, S] (or each flattened)."""
    mine, theirs = masks.flatten(1).float(), real_masks.flatten(1).float()
    intersection = mine @ theirs.T
    union = mine.sum(1, keepdim=True) + theirs.sum(1) - intersection
    return (intersection / union.clamp(min=1)).amax(dim=1)


def silhouette(designs, real):
    """Per design of designs [B, 3, S, S], the best IoU of its foreground with a real item's of real [N, 3, S, S]."""
    return best_overlap(foreground(designs), foreground(real))


def soft_silhouette(images):
    """[B, S, S] in (0, 1): how surely each pixel of images [B, 3, S, S] in [-1, 1] is the item's rather than the
    white ground (the darkest channel below FOREGROUND_BELOW), smooth so that its change has a gradient."""
    return torch.sigmoid((FOREGROUND_BELOW - (images.amin(dim=1) + 1) / 2) / SILHOUETTE_SOFTNESS)


def structure_change(images, starts):
    """[B] the mean over pixels of 1 - (sigma_xy + C3) / (sigma_x sigma_y + C3) between the luminances of images and
    of starts [B, 3, S, S] in [-1, 1] in STRUCTURE_WINDOW windows (SSIM's structure term): 0 where only colour or
    brightness changed, up to 2 where light and dark swapped."""
    weights = images.new_tensor(LUMA).view(1, 3, 1, 1)
    x, y = (((images + 1) / 2) * weights).sum(1, keepdim=True), (((starts + 1) / 2) * weights).sum(1, keepdim=True)
    mean_x, mean_y = window_mean(x), window_mean(y)
    # a floor under each variance (the white ground's is 0, where the square root's gradient is infinite), and the
    # same under the covariance, so that an image against itself scores 0
    spread_x = (window_mean(x * x) - mean_x ** 2).clamp(min=0).add(STRUCTURE_FLOOR).sqrt()
    spread_y = (window_mean(y * y) - mean_y ** 2).clamp(min=0).add(STRUCTURE_FLOOR).sqrt()
    covariance = window_mean(x * y) - mean_x * mean_y + STRUCTURE_FLOOR
    return (1 - (covariance + STRUCTURE_C3) / (spread_x * spread_y + STRUCTURE_C3)).mean(dim=(1, 2, 3))


def window_mean(images):
    """The mean of images [B, 1, S, S] over the STRUCTURE_WINDOW window around each pixel (within the image)."""
    return F.avg_pool2d(images, STRUCTURE_WINDOW, 1, STRUCTURE_WINDOW // 2, count_include_pad=False)


class EmbeddingSupport:
    """Where the real items of each category lie in Phi's space: their mean mu_c and shrunk covariance S_c; a design
    further from them (d_c(f) = sqrt((f - mu_c)^T S_c^-1 (f - mu_c))) than the `quantile` of their own distances r_c
    pays weight * (d_c - r_c)^2. Categories with fewer than two items have no support (no penalty)."""

    SHRINKAGE = 1e-3   # of the mean variance, added to S_c's diagonal so that it inverts with fewer items than K

    def __init__(self, item_embeddings, item_category, num_categories, quantile, weight):
        self.weight = weight
        self.support = {}
        for category in range(num_categories):
            embeddings = item_embeddings[item_category == category].double()
            if len(embeddings) < 2:
                continue
            mean = embeddings.mean(dim=0)
            covariance = torch.cov(embeddings.T, correction=0).reshape(len(mean), len(mean))
            covariance += self.SHRINKAGE * covariance.trace() / len(mean) * torch.eye(len(mean), dtype=mean.dtype,
                                                                                       device=mean.device)
            precision = torch.linalg.inv(covariance)
            radius = torch.quantile(self._distance(embeddings, mean, precision), quantile)
            self.support[category] = (mean.float(), precision.float(), radius.item())

    @staticmethod
    def _distance(features, mean, precision):
        centred = features - mean
        return ((centred @ precision) * centred).sum(dim=1).clamp(min=1e-12).sqrt()

    def distance(self, features, category):
        """[B] d_c of Phi's features [B, K]; zeros where c has no support."""
        if category not in self.support:
            return features.new_zeros(len(features))
        mean, precision, _ = self.support[category]
        return self._distance(features, mean, precision)

    def radius(self, category):
        """r_c, past which the penalty starts; None where c has no support."""
        return self.support[category][2] if category in self.support else None

    def penalty(self, features, category):
        """[B] weight * relu(d_c - r_c)^2: nothing inside the real items' radius."""
        if category not in self.support:
            return features.new_zeros(len(features))
        return self.weight * F.relu(self.distance(features, category) - self.radius(category)) ** 2


@dataclass
class Snapshot:
    """The m images and scores after `step` optimisation steps."""
    step: int
    images: torch.Tensor       # [m, 3, S, S] in [-1, 1], on the CPU
    preference: torch.Tensor   # [m] theta_u . Phi(Delta image)
    objective: torch.Tensor    # [m] preference - eta * realism loss


@dataclass
class Design:
    """The result of preference maximisation from m starts (all tensors detached)."""
    z: torch.Tensor            # [m, z_dim] the generator's input
    images: torch.Tensor       # [m, 3, S, S]
    preference: torch.Tensor   # [m]
    realism: torch.Tensor      # [m] the generator's realism loss of G_c(z), e.g. the LSGAN's [D_c(G_c(z)) - 1]^2
    objective: torch.Tensor    # [m]
    history: list[Snapshot] = field(default_factory=list)

    def pick(self, index):
        return Design(self.z[index], self.images[index], self.preference[index], self.realism[index],
                      self.objective[index])


class Designer:
    """The trained pieces of personalised design: theta and Phi from DVBPR, the conditional generator (with its
    realism term) from the GAN stage.

    Both are put in eval mode and frozen, so gradients reach only the latent codes. The realism term is the
    generator's own unless choose_realism (from --realism-term) picks another it offers. Where `realism_floor` is set
    (pm/stage.py, from --realism-floor) the realism loss is clamped from below there: past it, D_c(e) earns the
    design nothing more. Where `support` is set (an EmbeddingSupport, from --support-quantile) the objective pays
    its penalty; where `shape_weight` is above 0 (--shape-weight) the ascent pays for changing a design's outline,
    where `structure_weight` is (--structure-weight) for changing the light and dark inside it;
    where `jitter` is above 0 (--jitter) each ascent step scores the designs shifted by up to that many pixels;
    where `truncation` psi is below 1 (--truncation) the codes z = psi tanh(z') stay in the prior's central box;
    where `outlines` are set (screen_by_silhouette, from --min-silhouette) the choices pass designs through a screen.
    """

    def __init__(self, dvbpr, model):
        self.dvbpr = dvbpr.eval().requires_grad_(False)
        self.theta = dvbpr.theta.detach()
        self.model = model.eval().requires_grad_(False)
        self.z_dim = model.z_dim
        self.image_size = model.image_size
        self.realism_term = model.realism_loss
        self.realism_floor = None
        self.support = None
        self.shape_weight = 0.0
        self.structure_weight = 0.0
        self.jitter = 0
        self.truncation = 1.0
        self.min_silhouette, self.outlines = None, None
        self.jitter_rng = torch.Generator(self.theta.device).manual_seed(0)
        codes = model.sample_z(RADIUS_SAMPLES, self.theta.device, torch.Generator(self.theta.device).manual_seed(0))
        self.radius = codes.norm(dim=1).mean().item()

    def screen_by_silhouette(self, threshold, real_images):
        """Screen the choices (passes) at `threshold`, against real_images: {category: its real items' images};
        no screen where `threshold` is None."""
        self.min_silhouette = threshold
        self.outlines = None if threshold is None else {
            category: foreground(images).flatten(1).float() for category, images in real_images.items()}

    def passes(self, images, category):
        """[B] bool: the designs whose silhouette against the real items of `category` reaches min_silhouette;
        None where there is no screen (every design passes)."""
        if self.outlines is None:
            return None
        return best_overlap(foreground(images), self.outlines[category].to(images.device)) >= self.min_silhouette

    def choose_realism(self, term):
        """Keep the generator's realism term named `term` small (None: its own); ConfigError where it has none of
        that name."""
        terms = self.model.realism_terms()
        if term is not None and term not in terms:
            raise ConfigError(f"--realism-term {term}: this {type(self.model).__name__} generator offers "
                              f"{', '.join(terms)}")
        self.realism_term = terms[term or self.model.own_realism]

    def check_latent(self, latent):
        """ConfigError when z = tanh(z') would not span the generator's latent domain."""
        if latent == "tanh" and not self.model.latent_box:
            raise ConfigError(f"--latent tanh keeps z in [-1, 1], but this {type(self.model).__name__} generator's "
                              "latent is unbounded: give --latent sphere (or direct) and --init prior")

    def check_guidance(self):
        """ConfigError when the generator has no preference guidance (a sampler to steer)."""
        if not hasattr(self.model, "guided_sample"):
            raise ConfigError(f"--guidance steers a diffusion sampler, and this {type(self.model).__name__} "
                              "generator has none: leave --guidance and --tune-guidance out")

    def guided(self, user, category, n, scale, rng=None):
        """n samples of G(., c) from prior codes, each denoising step steered up theta_u . Phi of its x_0 estimate
        by `scale` (the generator's guided_sample): the diffusion analogue of preference maximisation."""
        z = self.sample_z(n, rng)
        labels = torch.full((n,), category, dtype=torch.long, device=z.device)
        return self.model.guided_sample(z, labels, lambda images: self.preference(user, images), scale)

    def sample_z(self, n, rng=None):
        """n codes from the generator's prior (Table IV's random G(., c), the figures' samples)."""
        return self.model.sample_z(n, self.theta.device, rng)

    def phi(self, images, shifted=False):
        """Phi(Delta e) of images at the GAN's size; [B, K]. shifted: each first moved by a random offset of up to
        `jitter` pixels at DVBPR's input size, the ground filled white."""
        inputs = resize(images, self.dvbpr.input_size)
        if shifted:
            inputs = translate(inputs, self.jitter, fill=1.0, generator=self.jitter_rng)
        return self.dvbpr.phi(inputs)

    def preference(self, user, images):
        """x_{u,e} = theta_u . Phi(Delta e) (eq. 6) of images at the GAN's size; [B]."""
        return self.phi(images) @ self.theta[user]

    def realism_loss(self, images, category):
        """L_real(e, c), the generator's realism term (its own by default: the LSGAN's [D_c(e) - 1]^2, the SNGAN's
        -D_c(e), the diffusion model's denoising error), no lower than the realism floor; [B]."""
        labels = torch.full((len(images),), category, dtype=torch.long, device=images.device)
        realism = self.realism_term(images, labels)
        return realism if self.realism_floor is None else realism.clamp(min=self.realism_floor)

    def generate(self, z, category):
        labels = torch.full((len(z),), category, dtype=torch.long, device=z.device)
        return self.model(z, labels)

    def objective(self, z, user, category, eta, shifted=False):
        """(objective, preference, realism loss, images) of G_c(z), each per row of z (eq. 9, less the support
        penalty where there is one); shifted: Phi of the images shifted (phi)."""
        images = self.generate(z, category)
        features = self.phi(images, shifted)
        preference = features @ self.theta[user]
        realism = self.realism_loss(images, category)
        objective = preference - eta * realism
        if self.support is not None:
            objective = objective - self.support.penalty(features, category)
        return objective, preference, realism, images

    def maximise(self, z_prime, user, category, steps, lr, eta=1.0, latent="tanh", record=None):
        """Adam ascent on eq. 10 (or eq. 9 with latent 'direct' or 'sphere') from the rows of z_prime, all at once.

        `record(step) -> bool` says after which steps (0 = the start) to keep a Snapshot of images and scores.
        """
        z_prime = z_prime.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z_prime], lr=lr)
        history, start_shape, start_images = [], None, None

        def scored(z, shifted):
            nonlocal start_shape, start_images
            objective, preference, realism, images = self.objective(z, user, category, eta, shifted)
            if self.shape_weight:
                shape = soft_silhouette(images)
                start_shape = shape.detach() if start_shape is None else start_shape
                objective = objective - self.shape_weight * (shape - start_shape).pow(2).mean(dim=(1, 2))
            if self.structure_weight:
                start_images = images.detach() if start_images is None else start_images
                objective = objective - self.structure_weight * structure_change(images, start_images)
            return objective, preference, realism, images

        for step in range(steps + 1):
            z = to_z(z_prime, latent, self.radius, self.truncation)
            shifted = self.jitter > 0 and step < steps     # the last scores are the designs' own
            objective, preference, realism, images = scored(z, shifted)
            if record is not None and record(step):
                with torch.no_grad():
                    kept_objective, kept_preference, _, kept_images = scored(z, False) if shifted else (
                        objective, preference, realism, images)
                history.append(Snapshot(step, kept_images.detach().cpu(), kept_preference.detach().cpu(),
                                        kept_objective.detach().cpu()))
            if step == steps:
                break
            optimizer.zero_grad(set_to_none=True)
            (-objective.sum()).backward()  # a sum: every start follows its own gradient
            optimizer.step()
        if not torch.isfinite(objective).all():
            raise TrainingDiverged(f"preference maximisation diverged (the objective became "
                                   f"{objective[~torch.isfinite(objective)][0].item()}); lower --lr")
        return Design(z.detach(), images.detach(), preference.detach(), realism.detach(), objective.detach(), history)

    def start_latents(self, starts, init="uniform", latent="tanh", rng=None):
        """`starts` initial points z': 'uniform' or 'normal' (initial_latents), or 'prior': codes of the generator's
        own prior."""
        if init == "prior":  # the generator's own codes, z' = atanh(z) where z = tanh(z') is optimised
            z = self.sample_z(starts, rng)
            return torch.atanh(z.clamp(-ATANH_LIMIT, ATANH_LIMIT)) if latent == "tanh" else z
        return initial_latents(starts, self.z_dim, init, self.theta.device, rng)

    def synthesise(self, user, category, starts, steps, lr, eta=1.0, init="uniform", latent="tanh",
                   rng=None, record=None):
        """Preference maximisation from `starts` random initial points (eq. 10); every result is kept."""
        return self.maximise(self.start_latents(starts, init, latent, rng), user, category, steps, lr, eta, latent,
                             record)

    @torch.no_grad()
    def best_samples(self, user, category, samples, k, eta=1.0, init="uniform", latent="tanh", rng=None):
        """Best-of-n, the control for the ascent: `samples` starts drawn as synthesis draws them, scored by its
        objective at its step 0 (the shape and structure terms are then 0) and never moved; the k highest (through
        the screen where there is one), best first (eq. 11's softmax over thousands would draw among the many
        middling ones). A Design of the k, scored in chunks so that n can be large."""
        z = to_z(self.start_latents(samples, init, latent, rng), latent, self.radius, self.truncation)
        objective, passes = [], []
        for part in z.split(SCORED_AT_ONCE):
            part_objective, _, _, images = self.objective(part, user, category, eta)
            objective.append(part_objective)
            passes.append(self.passes(images, category))
        kept = choose(torch.cat(objective), k, "best", passes=None if self.outlines is None else torch.cat(passes))
        objective, preference, realism, images = self.objective(z[kept], user, category, eta)
        return Design(z[kept], images, preference, realism, objective)

    def invert(self, query, category, steps, lr, starts=8, latent="tanh", rng=None):
        """z' whose G_c(tanh z') is nearest in mean L1 to the query resized to the GAN's size (eq. 12).

        Optimises `starts` random initial points and keeps the best; returns (z' [1, z_dim], L1 error per step of
        the kept start [steps + 1]).
        """
        target = resize(query[None] if query.dim() == 3 else query, self.image_size)
        init = "uniform" if latent == "tanh" else "normal"
        z_prime = initial_latents(starts, self.z_dim, init, self.theta.device, rng).requires_grad_(True)
        optimizer = torch.optim.Adam([z_prime], lr=lr)
        errors = []
        for step in range(steps + 1):
            images = self.generate(to_z(z_prime, latent, self.radius, self.truncation), category)
            error = (images - target).abs().mean(dim=(1, 2, 3))
            errors.append(error.detach())
            if step == steps:
                break
            optimizer.zero_grad(set_to_none=True)
            error.sum().backward()
            optimizer.step()
        best = errors[-1].argmin()
        return z_prime.detach()[best:best + 1], torch.stack(errors)[:, best].cpu()

    def tailor(self, query, category, users, steps, lr, eta=1.0, invert_steps=300, invert_lr=0.05, latent="tanh",
               rng=None, record=lambda step: True):
        """Tailoring an existing item to users: invert it into z' once (eq. 12), then maximise each user's preference
        from there (eq. 10), keeping the steps `record` says (every one by default). Returns ([Design per user], L1
        errors)."""
        z_prime, errors = self.invert(query, category, invert_steps, invert_lr, latent=latent, rng=rng)
        designs = [self.maximise(z_prime, user, category, steps, lr, eta, latent, record=record) for user in users]
        return designs, errors


class ScoreEnsemble(torch.nn.Module):
    """Several DVBPRs of one dataset scored as one, by the mean of their theta_u . Phi: Phi is the members'
    embeddings side by side, each divided by the number of members, and theta their user vectors side by side, so
    that retrieval, synthesis, tailoring and the support penalty run on it unchanged. A design then has to please
    every member, not the quirks of one network (as adversarial examples transfer less to a model outside an
    ensemble they were made against)."""

    def __init__(self, members):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.input_size = members[0].input_size
        self.register_buffer("theta", torch.cat([member.theta.detach() for member in members], dim=1))

    def phi(self, images):
        """The members' Phi(X) side by side, over their number: [B, sum of their K]."""
        return torch.cat([member.phi(images) for member in self.members], dim=1) / len(self.members)


def retrieve(theta_u, item_embeddings, candidates, k):
    """The k items of `candidates` with the highest theta_u . Phi(X_i) (eq. 8); (item ids, scores), best first."""
    scores = item_embeddings[candidates] @ theta_u
    top = scores.topk(min(k, len(candidates))).indices
    return candidates[top], scores[top]
