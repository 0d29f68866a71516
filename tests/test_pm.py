import json
import math
import re
import shutil
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision

from common.catalogue.config import CatalogueConfig
from common.catalogue.generate import generate_catalogue
from common.checkpoint import save_checkpoint
from common.cli import parse_config, settle
from common.data import load_dataset
from common.errors import ConfigError
from common.images import translate
from common.original_format import CATEGORY_NAMES
from dvbpr.cnnf import CNNF
from dvbpr.config import DVBPRConfig
from dvbpr.model import DVBPR
from dvbpr.train import train as train_dvbpr
from gan.config import GANConfig
from gan.model import LSGAN
from gan.train import train as train_gan
from pm import design as pm_design
from pm import stage as pm_stage
from pm.config import DEMO, PRESETS, PMConfig
from pm.design import Designer, EmbeddingSupport, choose, resize, retrieve, silhouette, soft_silhouette, to_z
from pm.figures import pick_user
from pm.judges import open_judge
from pm.load import Stages
from pm.main import main
from pm.metrics import CategoryInception, ImageNetInception, inception_score, ssim_diversity
from pm.stage import set_design_terms
from pm.table import Measures, Sources, draw_trials
from pm.tune import on_manifold
from tests.helpers import place_attribute_reader, place_random_classifier

Z_DIM = 8


class TinyBackbone(torch.nn.Module):
    """A small backbone of the DVBPR interface (32 px images in [-1, 1] -> features), to keep the loops fast."""
    input_size, feature_width = 32, 8 * 8 * 8

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)

    def initialise(self):
        pass

    def regularised_weights(self):
        return [self.conv.weight]

    def forward(self, x):
        return torch.relu(self.conv(x)).flatten(1)


def tiny_designer(seed=0, usernum=5, k=8, backbone=TinyBackbone):
    """Random-weight Phi (32 px) and GAN (16 px, so Delta upscales), G's BN statistics from one batch."""
    torch.manual_seed(seed)
    gan = LSGAN(GANConfig(image_size=16, z_dim=Z_DIM, g_width=8, d_width=8), num_categories=3)
    labels = torch.arange(64) % 3
    gan.discriminator(gan(torch.randn(64, Z_DIM), labels), labels)  # train mode: fills the running statistics
    dvbpr = DVBPR(backbone(), usernum, k)
    dvbpr.theta.data = torch.randn(usernum, k)
    return Designer(dvbpr, gan)


def test_resize_is_nearest_up_and_down():
    images = torch.arange(16.0).view(1, 1, 4, 4)
    up = resize(images, 8)
    assert torch.equal(up[0, 0, ::2, ::2], images[0, 0]) and torch.equal(up[0, 0, 1::2, 1::2], images[0, 0])
    assert torch.equal(resize(up, 4), images)


def test_objective_gradient_reaches_only_the_latent():
    designer = tiny_designer(backbone=lambda: CNNF(32, fc_width=64))
    z_prime = torch.randn(4, Z_DIM, requires_grad=True)
    objective, preference, realism, _ = designer.objective(to_z(z_prime, "tanh"), user=1, category=2, eta=1.0)
    objective.sum().backward()
    assert z_prime.grad is not None and z_prime.grad.abs().sum() > 0 and torch.isfinite(z_prime.grad).all()
    assert torch.allclose(objective, preference - realism)
    networks = [designer.dvbpr, designer.model]
    assert all(p.grad is None for net in networks for p in net.parameters())


def test_maximisation_raises_the_objective_and_tanh_keeps_z_in_the_box():
    designer = tiny_designer()
    z_prime = torch.randn(6, Z_DIM)
    start = designer.objective(to_z(z_prime, "tanh"), 0, 1, 1.0)[0]
    design = designer.maximise(z_prime, user=0, category=1, steps=30, lr=0.1)
    assert design.objective.mean() > start.mean()
    wild = designer.maximise(z_prime, user=0, category=1, steps=10, lr=5.0)
    assert wild.z.abs().max() <= 1
    direct = designer.maximise(z_prime, user=0, category=1, steps=10, lr=5.0, latent="direct")
    assert direct.z.abs().max() > 1


def test_truncation_keeps_the_starts_the_ascent_and_the_best_samples_in_the_central_box():
    designer = tiny_designer()
    designer.truncation = 0.5
    z_prime = torch.randn(64, Z_DIM)
    start = designer.maximise(z_prime, user=0, category=1, steps=0, lr=0.1)
    assert start.z.abs().max() <= 0.5 and start.z.abs().max() > 0.4    # U(-1, 1) starts become U(-0.5, 0.5)
    assert torch.allclose(start.z, 0.5 * torch.tanh(z_prime))
    wild = designer.maximise(z_prime[:6], user=0, category=1, steps=10, lr=5.0)
    assert wild.z.abs().max() <= 0.5
    assert designer.best_samples(0, 1, samples=64, k=4).z.abs().max() <= 0.5
    designer.truncation = 1.0
    assert designer.maximise(z_prime[:6], user=0, category=1, steps=10, lr=5.0).z.abs().max() > 0.5


def test_the_sphere_keeps_z_where_the_priors_codes_lie_and_still_raises_the_objective():
    designer = tiny_designer()
    prior_norms = designer.sample_z(2000).norm(dim=1)
    assert abs(designer.radius - (Z_DIM / 3) ** 0.5) < 0.05 * designer.radius     # U(-1, 1): sqrt(z_dim / 3)
    assert (prior_norms - designer.radius).abs().mean() < 0.2 * designer.radius   # most codes lie near it
    z_prime = designer.sample_z(6)
    start = designer.objective(to_z(z_prime, "sphere", designer.radius), 0, 1, 1.0)[0]
    design = designer.maximise(z_prime, user=0, category=1, steps=30, lr=0.1, latent="sphere")
    assert design.objective.mean() > start.mean()
    torch.testing.assert_close(design.z.norm(dim=1), torch.full((6,), designer.radius))
    wild = designer.maximise(z_prime, user=0, category=1, steps=10, lr=5.0, latent="direct")
    assert (wild.z.norm(dim=1) - designer.radius).abs().min() > 0.5 * designer.radius


def test_larger_eta_lowers_the_realism_loss():
    designer = tiny_designer(seed=1)
    z_prime = torch.atanh(torch.rand(16, Z_DIM) * 1.8 - 0.9)
    realism = {eta: designer.maximise(z_prime, user=2, category=0, steps=30, lr=0.1, eta=eta).realism.mean()
               for eta in (0.0, 100.0)}
    assert realism[100.0] < realism[0.0]


def test_the_realism_floor_stops_rewarding_the_critic_past_it():
    designer = tiny_designer(seed=1)
    z_prime = torch.randn(8, Z_DIM, requires_grad=True)
    images = designer.generate(to_z(z_prime, "tanh"), 0)
    unbounded = designer.realism_loss(images, 0)
    designer.realism_floor = unbounded.sort().values[3:5].mean().item()   # between the 4th and 5th of 8
    floored = designer.realism_loss(images, 0)
    below = unbounded < designer.realism_floor
    assert below.any() and (~below).any()
    assert torch.equal(floored[~below], unbounded[~below]) and (floored[below] == designer.realism_floor).all()
    floored.sum().backward()
    gradients = z_prime.grad.abs().sum(dim=1)
    assert (gradients[below] == 0).all() and (gradients[~below] > 0).all()


def test_the_support_measures_mahalanobis_distance_and_penalises_only_beyond_the_real_items():
    torch.manual_seed(0)
    items = torch.randn(400, 4) * torch.tensor([1.0, 2.0, 0.5, 1.0]) + 3
    categories = torch.arange(400) % 2
    categories[0] = 2   # a category of one item has no support
    support = EmbeddingSupport(items, categories, 3, quantile=0.9, weight=2.0)
    real = items[categories == 0]
    distance, radius = support.distance(real, 0), support.radius(0)
    assert (distance <= radius).double().mean().item() == pytest.approx(0.9, abs=0.01)
    assert torch.equal(support.penalty(real, 0) == 0, distance <= radius)
    centre = real.mean(dim=0)
    narrow, wide = centre + torch.tensor([0.0, 0.0, 4.0, 0.0]), centre + torch.tensor([0.0, 4.0, 0.0, 0.0])
    assert support.distance(narrow[None], 0) / support.distance(wide[None], 0) == pytest.approx(4.0, rel=0.15)
    far = narrow[None].clone().requires_grad_(True)
    penalty = support.penalty(far, 0)
    assert penalty.item() == pytest.approx(2.0 * (support.distance(far, 0).item() - radius) ** 2)
    penalty.sum().backward()
    assert support.distance(far.detach() - 0.01 * far.grad, 0) < support.distance(far.detach(), 0)
    assert support.penalty(far, 2).item() == 0 and support.radius(2) is None


def test_the_support_keeps_designs_nearer_the_items_phi_has_seen():
    designer = tiny_designer(seed=1)
    with torch.no_grad():
        seen = designer.phi(designer.generate(designer.sample_z(64), 0))
    z_prime = torch.atanh(torch.rand(16, Z_DIM) * 1.8 - 0.9)
    support = EmbeddingSupport(seen, torch.zeros(64, dtype=torch.long), 1, quantile=0.5, weight=100.0)
    distances = {}
    for name in ("without", "with"):
        designer.support = support if name == "with" else None
        design = designer.maximise(z_prime, user=2, category=0, steps=30, lr=0.1, eta=0.0)
        with torch.no_grad():
            distances[name] = support.distance(designer.phi(design.images), 0).mean().item()
    assert distances["with"] < 0.8 * distances["without"]


class Disc(torch.nn.Module):
    """A generator stand-in: a disc on white, its radius from z[0], its colour from z[1:4]."""
    z_dim, image_size, latent_box = 4, 16, True

    def sample_z(self, n, device="cpu", rng=None):
        return torch.rand(n, self.z_dim, generator=rng, device=device) * 2 - 1

    def realism_loss(self, images, labels):
        return torch.zeros(len(images), device=images.device)

    def forward(self, z, labels):
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
        inside = torch.sigmoid(20 * (0.5 + 0.3 * z[:, :1, None] - (xs ** 2 + ys ** 2).sqrt()))[:, None]
        colour = (z[:, 1:4] / 2 - 0.5)[:, :, None, None]       # [-1, 0]: darker than the ground
        return 1 - inside * (1 - colour)


def ascent_with_and_without(generator, term, change_of):
    """({weight: change_of(designs, starts)}, {weight: mean preference gain}) of 30 ascent steps through the stand-in
    generator, with the Designer's `term` weight at 0 and at 100, from the same starts."""
    torch.manual_seed(0)
    dvbpr = DVBPR(TinyBackbone(), 5, 8)
    dvbpr.theta.data = torch.randn(5, 8)
    designer = Designer(dvbpr, generator)
    z_prime = torch.atanh(torch.rand(8, 4) * 1.2 - 0.6)
    with torch.no_grad():
        start = designer.generate(to_z(z_prime, "tanh"), 0)
    change, gain = {}, {}
    for weight in (0.0, 100.0):
        setattr(designer, term, weight)
        design = designer.maximise(z_prime, user=2, category=0, steps=30, lr=0.1, eta=0.0)
        change[weight] = change_of(design.images, start).item()
        gain[weight] = (design.preference - designer.preference(2, start)).mean().item()
    return change, gain


def test_the_shape_term_holds_each_design_to_its_starts_outline_and_leaves_its_colour_free():
    white, black = torch.ones(1, 3, 4, 4), -torch.ones(1, 3, 4, 4)
    assert soft_silhouette(white).max() < 0.05 and soft_silhouette(black).min() > 0.95
    change, gain = ascent_with_and_without(Disc(), "shape_weight", lambda designs, starts: (
        soft_silhouette(designs) - soft_silhouette(starts)).pow(2).mean())
    assert change[100.0] < 0.01 * change[0.0]       # the outline stays where the start drew it
    assert gain[100.0] > 0.5 * gain[0.0] > 0        # while the colour still climbs the preference


def test_the_structure_change_sees_light_and_dark_move_and_not_a_change_of_colour():
    torch.manual_seed(0)
    stripes = torch.ones(4, 3, 16, 16)
    stripes[:, :, :, ::4] = -0.6                                      # dark stripes on white
    recoloured = stripes.clone()
    recoloured[:, :2, :, ::4] = -0.2                                  # the stripes' colour changed, their place kept
    moved = torch.roll(stripes, 2, dims=3)                            # the stripes moved by half their period
    inverted = -stripes                                               # light and dark swapped
    assert pm_design.structure_change(stripes, stripes).abs().max() < 1e-4
    assert pm_design.structure_change(recoloured, stripes).max() < 0.05
    assert pm_design.structure_change(moved, stripes).min() > 0.3
    assert pm_design.structure_change(inverted, stripes).min() > 1.5
    flat = torch.ones(2, 3, 16, 16, requires_grad=True)              # the white ground: no spread at all
    pm_design.structure_change(flat, torch.rand(2, 3, 16, 16) * 2 - 1).sum().backward()
    assert torch.isfinite(flat.grad).all()


class Stripes(Disc):
    """A generator stand-in: dark stripes on white, their place from z[0], their colour from z[1:4]."""

    def forward(self, z, labels):
        xs = torch.linspace(0, 4 * math.pi, 16)
        dark = torch.sigmoid(6 * torch.sin(xs[None] + 3 * z[:, :1]))[:, None, None, :].expand(-1, 1, 16, 16)
        colour = (z[:, 1:4] / 2 - 0.5)[:, :, None, None]                # [-1, 0]: darker than the ground
        return 1 - dark * (1 - colour)


def test_the_structure_term_holds_where_light_and_dark_lie_and_leaves_the_colour_free():
    change, gain = ascent_with_and_without(Stripes(), "structure_weight", lambda designs, starts: (
        pm_design.structure_change(designs, starts).mean()))
    assert change[100.0] < 0.1 * change[0.0]         # the stripes stay where the start drew them
    assert gain[100.0] > 0.3 * gain[0.0] > 0         # while their colour still climbs the preference


def test_translation_moves_each_image_by_its_own_offset_and_fills_what_comes_in():
    images = torch.rand(64, 3, 12, 12, requires_grad=True)
    shifted = translate(images, 2, fill=1.0, generator=torch.Generator().manual_seed(0))
    offsets = set()
    for image, moved in zip(images.detach(), shifted.detach()):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(moved[:, 2:10, 2:10], image[:, 2 + dy:10 + dy, 2 + dx:10 + dx])]
        assert len(found) == 1      # the middle is the image moved by one offset within the bound
        offsets.add(found[0])
        dy, dx = found[0]
        rows = list(range(12 - dy, 12)) if dy > 0 else list(range(-dy))
        assert (moved[:, rows] == 1).all()     # the rows that came in from outside are the fill
    assert len(offsets) > 10
    assert torch.equal(translate(images, 0), images)
    shifted.sum().backward()
    assert images.grad.sum() > 0


class Canvas(Disc):
    """A generator stand-in whose image is its code: every pixel free, as an ascent on pixels would have them."""
    z_dim = 3 * 16 * 16

    def forward(self, z, labels):
        return z.view(-1, 3, 16, 16)


def test_jitter_makes_the_ascent_follow_the_score_of_shifted_designs():
    """The tiny Phi (a 4x4 conv of stride 4) sees a pattern at one alignment only: without the jitter the ascent
    climbs the score of the design as it lies, far above its mean score over shifts; with it, that mean. What is
    kept and reported is the design unshifted."""
    torch.manual_seed(0)
    dvbpr = DVBPR(TinyBackbone(), 5, 8)
    dvbpr.theta.data = torch.randn(5, 8)
    designer = Designer(dvbpr, Canvas())

    def mean_over_shifts(images, draws=64):
        generator, inputs = torch.Generator().manual_seed(1), resize(images, TinyBackbone.input_size)
        return torch.stack([dvbpr.phi(translate(inputs, 3, 1.0, generator)) @ dvbpr.theta[1]
                            for _ in range(draws)]).mean()

    z_prime = torch.atanh(torch.rand(8, Canvas.z_dim) * 1.8 - 0.9)
    designs = {}
    for jitter in (0, 3):
        designer.jitter = jitter
        designs[jitter] = designer.maximise(z_prime, user=1, category=0, steps=40, lr=0.1, eta=0.0,
                                            record=lambda step: step in (0, 40))
    for design in designs.values():
        assert torch.allclose(design.preference, designer.preference(1, design.images), atol=1e-4)
        assert torch.allclose(design.history[-1].preference, design.preference)
    plain, jittered = designs[0], designs[3]
    assert plain.preference.mean() > 2 * jittered.preference.mean()
    assert mean_over_shifts(jittered.images) > 1.2 * mean_over_shifts(plain.images)


def test_category_match_is_the_share_of_images_the_classifier_puts_in_the_query_category():
    class ByRedness(torch.nn.Module):
        """Category 1 where the red channel is brighter than the green, else 0."""

        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def predict_proba(self, images):
            redder = images[:, 0].mean(dim=(1, 2)) > images[:, 1].mean(dim=(1, 2))
            return torch.nn.functional.one_hot(redder.long(), 2).float()

    red, green = torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)
    red[0], green[1] = 1, 1
    images = torch.stack([torch.stack([red, red, green]), torch.stack([green, green, green])])
    result = dict(images=images, scores=torch.zeros(2, 3), items=torch.full((2, 3), -1))
    stages = SimpleNamespace(items_of=lambda category: torch.arange(4), device=torch.device("cpu"))
    optimised = SimpleNamespace(percentile=lambda user, scores, items: 50.0)
    measures = Measures(stages, None, None, optimised, category=CategoryInception(ByRedness()))
    assert measures.per_trial(result, [(0, 1), (1, 0)])["category_match"].tolist() == pytest.approx([2 / 3, 1.0])


def test_the_settled_terms_reach_the_designer():
    designer = tiny_designer()
    stages = SimpleNamespace(designer=designer, item_embeddings=torch.randn(40, 8),
                             item_category=torch.arange(40) % 3, dataset=SimpleNamespace(num_categories=3))
    set_design_terms(stages, PMConfig(realism_floor=-2.0, support_quantile=0.5, support_weight=3.0, shape_weight=5.0,
                                      structure_weight=7.0))
    assert designer.realism_floor == -2.0 and designer.support.weight == 3.0 and designer.shape_weight == 5.0
    assert designer.structure_weight == 7.0
    assert designer.support.radius(0) == pytest.approx(designer.support.distance(
        stages.item_embeddings[stages.item_category == 0], 0).quantile(0.5).item())
    set_design_terms(stages, PMConfig(jitter=4, truncation=0.5))
    assert designer.realism_floor is None and designer.support is None and designer.shape_weight == 0
    assert designer.structure_weight == 0
    assert designer.jitter == 4 and designer.truncation == 0.5
    with pytest.raises(ConfigError, match="--jitter 32 must be below the 32 pixels"):
        set_design_terms(stages, PMConfig(jitter=32))


def test_the_screen_reads_a_bounded_fixed_draw_of_each_categorys_real_items(monkeypatch):
    monkeypatch.setattr(pm_stage, "MAX_OUTLINES", 5)
    designer, read = tiny_designer(), []
    images = torch.ones(40, 3, 16, 16)
    images[:, :, 4:12, 4:12] = -1        # every real item a dark square
    stages = SimpleNamespace(designer=designer, item_embeddings=torch.randn(40, 8), item_category=torch.arange(40) % 3,
                             dataset=SimpleNamespace(num_categories=3),
                             items_of=lambda category: torch.arange(category, 40, 3),
                             images=lambda items: read.append(items) or images[items])
    set_design_terms(stages, PMConfig(min_silhouette=0.9))
    assert [len(items) for items in read] == [5, 5, 5] and all((items % 3 == c).all() for c, items in enumerate(read))
    first = [items.tolist() for items in read]
    set_design_terms(stages, PMConfig(min_silhouette=0.9))
    assert [items.tolist() for items in read[3:]] == first          # the same draw each time
    square, shifted = images[:1], torch.roll(images[:1], 4, dims=3)
    assert designer.passes(square, 1).tolist() == [True] and designer.passes(shifted, 1).tolist() == [False]
    set_design_terms(stages, PMConfig())
    assert designer.passes(square, 1) is None


def test_inversion_reduces_the_l1_error():
    designer = tiny_designer()
    query = torch.rand(3, 32, 32) * 2 - 1  # at DVBPR's size: nabla downscales it
    z_prime, errors = designer.invert(query, category=1, steps=40, lr=0.1, starts=4,
                                      rng=torch.Generator().manual_seed(0))
    assert z_prime.shape == (1, Z_DIM) and len(errors) == 41
    assert errors[-1] < errors[0]
    reached = (designer.generate(torch.tanh(z_prime), 1) - resize(query[None], 16)).abs().mean()
    assert torch.isclose(reached, errors[-1], atol=1e-5)


def test_tailoring_keeps_every_step():
    designer = tiny_designer()
    designs, _ = designer.tailor(torch.zeros(3, 16, 16), 0, users=[0, 3], steps=5, lr=0.1, invert_steps=3)
    assert len(designs) == 2 and all(len(d.history) == 6 for d in designs)
    assert torch.equal(designs[0].history[0].images, designs[1].history[0].images)  # one inversion, shared


def test_retrieval_is_the_top_of_the_category():
    theta_u, embeddings = torch.randn(4), torch.randn(30, 4)
    candidates = torch.arange(0, 30, 3)
    items, scores = retrieve(theta_u, embeddings, candidates, 3)
    all_scores = embeddings @ theta_u
    expected = candidates[all_scores[candidates].argsort(descending=True)[:3]]
    assert torch.equal(items, expected) and torch.allclose(scores, all_scores[expected])


def test_softmax_sampling_follows_eq_11():
    objective = torch.tensor([0.0, 1.0, 2.0, 0.5])
    p = torch.softmax(objective.double(), 0)
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([choose(objective, 2, "softmax", generator) for _ in range(8000)])
    assert (draws[:, 0] != draws[:, 1]).all()
    first = torch.bincount(draws[:, 0], minlength=4).double() / len(draws)
    assert torch.allclose(first, p, atol=0.02)
    # without replacement: P(second = j) = sum_i p_i p_j / (1 - p_i)
    second_expected = torch.stack([sum(p[i] * p[j] / (1 - p[i]) for i in range(4) if i != j) for j in range(4)])
    second = torch.bincount(draws[:, 1], minlength=4).double() / len(draws)
    assert torch.allclose(second, second_expected, atol=0.02)
    assert torch.equal(choose(objective, 2, "best"), torch.tensor([2, 1]))


def test_the_screen_chooses_from_what_passes_and_makes_up_the_number_with_the_best_of_the_rest():
    objective, passes = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]), torch.tensor([False, True, False, True, True])
    assert choose(objective, 2, "best", passes=passes).tolist() == [1, 3]
    assert choose(objective, 4, "best", passes=passes).tolist() == [1, 3, 4, 0]
    assert choose(objective, 5, "all", passes=passes).tolist() == [1, 3, 4, 0, 2]
    assert choose(objective, 2, "best", passes=torch.zeros(5, dtype=torch.bool)).tolist() == [0, 1]
    draws = torch.stack([choose(objective, 2, "softmax", torch.Generator().manual_seed(seed), passes)
                         for seed in range(300)])
    assert set(draws.flatten().tolist()) == {1, 3, 4}      # what fails is never drawn while enough pass
    everything = torch.ones(5, dtype=torch.bool)           # a screen that passes all draws as no screen does
    assert torch.equal(choose(objective, 3, "softmax", torch.Generator().manual_seed(1), everything),
                       choose(objective, 3, "softmax", torch.Generator().manual_seed(1)))


def test_the_screen_keeps_the_best_samples_whose_outline_a_real_item_has():
    """Discs whose radius code z[0] is near 1 share the real items' outline (discs drawn at z[0] = 1); the screen's
    best samples are the best by the objective among those, where unscreened the best are of every radius."""
    torch.manual_seed(0)
    dvbpr = DVBPR(TinyBackbone(), 5, 8)
    dvbpr.theta.data = torch.randn(5, 8)
    designer = Designer(dvbpr, Disc())
    real = designer.generate(torch.tensor([[1.0, -1.0, 0.0, 1.0], [1.0, 0.5, 0.5, 0.5]]), 0)
    assert silhouette(real[:1], real).item() == 1.0
    plain = designer.best_samples(1, 0, 64, 3, rng=torch.Generator().manual_seed(3))
    designer.screen_by_silhouette(0.9, {0: real})
    screened = designer.best_samples(1, 0, 64, 3, rng=torch.Generator().manual_seed(3))
    assert (silhouette(screened.images, real) >= 0.9).all() and not (silhouette(plain.images, real) >= 0.9).all()
    every = designer.best_samples(1, 0, 64, 64, rng=torch.Generator().manual_seed(3))
    passing = every.objective[silhouette(every.images, real) >= 0.9]
    torch.testing.assert_close(screened.objective, passing.topk(3).values)
    assert designer.passes(real, 0).all() and designer.passes(torch.ones(1, 3, 16, 16), 0).tolist() == [False]


def test_inception_score_on_known_tables():
    assert inception_score(torch.full((10, 7), 1 / 7))[0] == pytest.approx(1.0)
    assert inception_score(torch.eye(5))[0] == pytest.approx(5.0)
    assert inception_score(torch.eye(4)[[0, 0, 1, 1]])[0] == pytest.approx(2.0)
    mean, std = inception_score(torch.eye(3).repeat(4, 1), splits=4)  # every part holds each class once
    assert mean == pytest.approx(3.0) and std == pytest.approx(0.0, abs=1e-9)
    assert 1.0 < inception_score(torch.softmax(torch.randn(50, 10), 1))[0] < 10.0


def test_inception_score_through_a_random_inception_v3():
    torch.manual_seed(0)
    network = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    scorer = ImageNetInception(network)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1
    probs = scorer.predict_proba(torch.stack([a, a, b]))
    assert probs.shape == (3, 1000) and torch.allclose(probs.sum(1), torch.ones(3))
    assert inception_score(probs[:2])[0] == pytest.approx(1.0, abs=1e-6)
    assert 1.0 <= inception_score(probs[[0, 2]])[0] <= 2.0


def test_ssim_diversity():
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    assert ssim_diversity(images.repeat(3, 1, 1, 1)) == pytest.approx(0.0, abs=1e-6)
    assert ssim_diversity(torch.rand(3, 3, 32, 32) * 2 - 1) > 0.5


def test_pick_user_follows_the_original_and_relaxes_the_threshold(capsys):
    dataset = SimpleNamespace(user_train=[np.arange(n) for n in (12, 3, 15, 4)],
                              user_test=np.array([0, 1, 2, 3]), item_category=np.array([0, 1, 1, 2]))
    rng = np.random.default_rng(0)
    assert {pick_user(dataset, 0, rng, 10) for _ in range(20)} == {0}
    assert {pick_user(dataset, 1, rng, 10) for _ in range(20)} == {2}   # user 1 has too few training items
    assert {pick_user(dataset, 2, rng, 10) for _ in range(5)} == {3}    # nobody has > 10: relaxed
    assert "more than 3" in capsys.readouterr().out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, catalogue):
    """A tiny catalogue, and DVBPR (with a judge and an ensemble member: other seeds) and GAN run directories
    written by those stages' own training code (the GAN's category classifier is a random-weight one put in place
    first, which its training then reuses; the catalogue's attribute reader, a briefly trained one, is put in place
    for every test of the module, whatever their order)."""
    root = tmp_path_factory.mktemp("runs")
    path = catalogue(num_users=40, num_items=90)
    dataset = load_dataset(path)
    place_attribute_reader(path, 16)
    for name, seed in (("dvbpr", 0), ("judge", 1), ("member", 2)):
        train_dvbpr(DVBPRConfig(dataset=str(path), out=str(root / name), k=8, image_size=32, fc_width=256, epochs=1,
                                batch_size=32, seed=seed, device="cpu"))
    place_random_classifier(root / "gan", dataset, 16)
    train_gan(GANConfig(dataset=str(path), out=str(root / "gan"), image_size=16, z_dim=Z_DIM, g_width=8, d_width=8,
                        batch_size=16, epochs=1, consistency_samples=4, device="cpu"))
    return root


def test_missing_run_directories_say_how_to_make_them(runs, tmp_path):
    with pytest.raises(SystemExit, match=f"python gan/main.py --train --out {tmp_path / 'nogan'}"):
        main(["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(tmp_path / "nogan")])
    with pytest.raises(SystemExit, match=f"python dvbpr/main.py --out {tmp_path / 'nodvbpr'}"):
        main(["--dvbpr-run", str(tmp_path / "nodvbpr"), "--gan-run", str(runs / "gan")])


def test_a_support_weight_without_the_penalty_and_a_realism_term_the_generator_lacks_are_refused(runs, tmp_path):
    for flags, message in ((["--support-weight", "3"], "pm: --support-weight weighs the support penalty, which is off: "
                                                       "give --support-quantile too"),
                           (["--realism-term", "elbo"], "pm: --realism-term elbo: this LSGAN generator offers "
                                                        "discriminator")):
        with pytest.raises(SystemExit, match=f"^{re.escape(message)}$"):
            main(["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(runs / "gan"), "--out", str(tmp_path),
                  "--device", "cpu", *flags])


def test_figures_table_and_sweep_are_written(runs, tmp_path):
    common = ["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(runs / "gan"), "--out", str(tmp_path),
              "--starts", "4", "--steps", "3", "--device", "cpu"]
    main(common + ["--category", "1", "--tailor-users", "2", "--invert-steps", "3", "--neighbour-samples", "2",
                   "--realism-floor", "5", "--support-quantile", "0.01", "--support-weight", "100"])
    for name in ("personal_design", "tailoring", "neighbours"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    design = json.loads((tmp_path / "personal_design.json").read_text())["queries"][0]
    assert design["category"] == 1 and len(design["real"]) == 3 and len(design["generated"]) == 3
    assert {generated["realism_loss"] for generated in design["generated"]} == {5.0}   # the LSGAN's ~1, floored
    assert all(generated["objective"] < generated["preference"] - 5.0 for generated in design["generated"])
    assert all(distance > design["support"]["radius"] for distance in design["support"]["generated"])
    assert len(design["support"]["real"]) == 3
    tailored = json.loads((tmp_path / "tailoring.json").read_text())["users"]
    assert len(tailored) == 2 and all(len(user["preference"]) == 4 for user in tailored)

    main(common + ["--table", "--trials", "3", "--splits", "2", "--sweep-eta", "0", "10",
                   "--judge-run", str(runs / "judge"), "--structure-weight", "2"])
    written = json.loads((tmp_path / "table_iv.json").read_text())
    table = written["ours"]
    assert set(table) == {"real", "generated", "retrieval", "synthesis"}
    assert table["retrieval"]["preference"][0] >= table["real"]["preference"][0]  # the top 3 of the same category
    assert table["retrieval"]["preference_percentile"][0] >= table["real"]["preference_percentile"][0]
    assert all(np.isfinite(v).all() for row in table.values() for v in row.values())
    assert {"judge", "judge_percentile", "true_preference"} <= set(table["synthesis"])
    assert table["synthesis"]["judge"] != table["synthesis"]["preference"]
    assert all(0 <= row["judge_percentile"][0] <= 100 for row in table.values())
    assert set(written["synthesis_vs_retrieval"]) == {"preference", "preference_percentile", "judge",
                                                      "judge_percentile", "true_preference", "category_match",
                                                      "realistic"}
    assert all(0 <= row["category_match"][0] <= 1 for row in table.values())
    assert table["real"]["realistic"][0] == table["retrieval"]["realistic"][0] == 1.0   # real items: in the reference
    against_samples = written["synthesis_vs_generated"]["realistic"]
    assert against_samples["trials"] == 3 and against_samples["mean_difference"] == pytest.approx(
        table["synthesis"]["realistic"][0] - table["generated"]["realistic"][0])
    kid = {source: row["category-classifier"]["kid"] for source, row in written["fidelity"].items()}
    assert all(np.isfinite(list(kid.values())))
    kid_test = written["synthesis_vs_generated"]["kid"]
    assert kid_test["trials"] == 3 and 0 < kid_test["p_value"] <= 1 and np.isfinite(kid_test["kid_difference"])
    # all images against all real items, no subsets: the same side of zero as the tables' subsets' estimates, unless
    # both are zero to float rounding (the designs barely moved), where a CPU's rounding picks the side
    subsets_difference = kid["synthesis"] - kid["generated"]
    assert np.sign(kid_test["kid_difference"]) == np.sign(subsets_difference) or max(
        abs(kid_test["kid_difference"]), abs(subsets_difference)) < 1e-5
    assert "Judge percentile" in (tmp_path / "table_iv.md").read_text()
    kid_cells = re.findall(r"\| (-?\d+\.\d{3}) ± (\d+\.\d{3}) \|", (tmp_path / "table_iv.md").read_text())
    assert [float(kid) for kid, _ in kid_cells] == pytest.approx([kid[source] for source in table], abs=1e-3)
    assert "Paper: preference" in (tmp_path / "table_iv.md").read_text()
    assert "structure weight 2.0" in (tmp_path / "table_iv.md").read_text()
    categories = written["by_category"]   # each category's trials: their means weighted by count are the table's
    assert set(categories) <= set(CATEGORY_NAMES) and sum(row["trials"] for row in categories.values()) == 3
    for source in table:
        for metric in ("category_match", "realistic"):
            assert sum(row["trials"] * row[source][metric] for row in categories.values()) / 3 == pytest.approx(
                table[source][metric][0])
    assert "| Category | Trials | real: Category match | real: Realistic (k-NN) |" in (
        tmp_path / "table_iv.md").read_text()
    assert len((tmp_path / "table_iv.csv").read_text().splitlines()) == 5
    assert (tmp_path / "eta_sweep.png").stat().st_size > 0
    sweep = json.loads((tmp_path / "eta_sweep.json").read_text())
    assert set(sweep["synthesis"]) == set(sweep["synthesis_vs_retrieval"]) == {"0", "10"}
    assert "judge" in sweep["synthesis"]["10"] and "kid" in sweep["synthesis_fidelity"]["10"]["category-classifier"]


def test_fig_5_chooses_through_the_screen(runs, tmp_path, monkeypatch):
    """With --min-silhouette the real items' outlines are read and every choice of fig. 5 goes through the screen
    (here one that passes the even starts alone)."""
    screened = []
    monkeypatch.setattr(Designer, "passes", lambda self, images, category: (
        screened.append(self.min_silhouette) or torch.arange(len(images)) % 2 == 0))
    main(["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(runs / "gan"), "--out", str(tmp_path), "--starts",
          "8", "--steps", "2", "--tailor-users", "1", "--invert-steps", "2", "--neighbour-samples", "1",
          "--min-silhouette", "0.5", "--device", "cpu"])
    queries = json.loads((tmp_path / "personal_design.json").read_text())["queries"]
    assert screened and set(screened) == {0.5}
    assert all(generated["start"] % 2 == 0 for query in queries for generated in query["generated"])
    assert all(query["passed_screen"] == [True] * 3 for query in queries)


def test_table_iv_and_the_tuning_choose_synthesis_through_the_screen(runs, tmp_path, monkeypatch):
    """Table IV's synthesis (8 starts) and each step the tuning reads (6 starts) go through the screen, and Table IV's
    notes say it was on."""
    screened = []
    monkeypatch.setattr(Designer, "passes", lambda self, images, category: (
        screened.append(len(images)) or torch.arange(len(images)) % 2 == 0))
    common = ["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(runs / "gan"), "--trials", "2",
              "--min-silhouette", "0.5", "--device", "cpu"]
    main(common + ["--table", "--starts", "8", "--steps", "1", "--splits", "1", "--out", str(tmp_path / "table")])
    assert screened == [8, 8]
    assert "screen at silhouette 0.5" in (tmp_path / "table" / "table_iv.md").read_text()
    main(common + ["--tune", "--tune-starts", "6", "--tune-steps", "0", "2", "--tune-lrs", "0.05", "--out",
                   str(tmp_path / "tune")])
    assert screened[2:] == [6] * 4          # two validation queries, each at 0 and 2 steps


def test_tailored_designs_start_from_retrievals_items(runs):
    """At 0 steps of eq. 10 a tailored design is retrieval's item inverted into the generator: nearer it in L1 than
    the generator's random samples are."""
    stages = Stages(runs / "dvbpr", runs / "gan")
    cfg = replace(PMConfig(), steps=0, invert_steps=200, invert_lr=0.05)
    pick = Sources(stages, cfg, torch.Generator().manual_seed(0))
    user, category = 0, 1
    real, _, _ = pick.retrieval(user, category)
    tailored, scores, items = pick.tailored(user, category)
    generated, _, _ = pick.generated(user, category)
    assert tailored.shape == real.shape and (items == -1).all()
    torch.testing.assert_close(scores, stages.designer.preference(user, tailored).detach())
    distance = lambda images: (images - real).abs().mean(dim=(1, 2, 3))
    assert (distance(tailored) < distance(generated)).all()


def test_the_tailored_source_joins_table_iv_on_its_own_random_stream(runs, tmp_path):
    common = ["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(runs / "gan"), "--table", "--trials", "3",
              "--splits", "2", "--starts", "2", "--steps", "2", "--device", "cpu"]
    main(common + ["--out", str(tmp_path / "plain")])
    main(common + ["--out", str(tmp_path / "tailored"), "--tailored", "--invert-steps", "5"])
    plain, tailored = (json.loads((tmp_path / name / "table_iv.json").read_text()) for name in ("plain", "tailored"))
    assert set(tailored["ours"]) == set(plain["ours"]) | {"tailored"}
    assert all(tailored["ours"][source] == row for source, row in plain["ours"].items())   # their draws unchanged
    assert tailored["tailored_vs_retrieval"]["preference"]["trials"] == 3
    with pytest.raises(SystemExit, match="^pm: --tailored adds a source to Table IV: give --table$"):
        main(["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(runs / "gan"), "--tailored"])


def test_best_samples_are_the_top_of_the_starts_synthesis_draws(runs, monkeypatch):
    """Best-of-n, scored in chunks, is the top k by objective of the very starts synthesis would draw, at its step 0."""
    monkeypatch.setattr(pm_design, "SCORED_AT_ONCE", 7)   # 40 samples in six chunks
    designer = Stages(runs / "dvbpr", runs / "gan").designer
    best = designer.best_samples(0, 1, 40, 3, rng=torch.Generator().manual_seed(5))
    every = designer.synthesise(0, 1, 40, 0, 0.1, rng=torch.Generator().manual_seed(5))
    top = every.objective.topk(3)
    torch.testing.assert_close(best.objective, top.values)
    torch.testing.assert_close(best.images, every.images[top.indices])
    assert best.objective[0] > every.objective.median()


def test_the_sampled_source_joins_table_iv_and_synthesis_is_tested_against_it(runs, tmp_path):
    common = ["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(runs / "gan"), "--table", "--trials", "3",
              "--splits", "2", "--starts", "2", "--steps", "2", "--device", "cpu"]
    main(common + ["--out", str(tmp_path / "plain")])
    main(common + ["--out", str(tmp_path / "sampled"), "--sampled"])
    plain, sampled = (json.loads((tmp_path / name / "table_iv.json").read_text()) for name in ("plain", "sampled"))
    assert set(sampled["ours"]) == set(plain["ours"]) | {"sampled"}
    assert all(sampled["ours"][source] == row for source, row in plain["ours"].items())   # their draws unchanged
    difference = sampled["synthesis_vs_sampled"]["preference"]["mean_difference"]
    assert difference == pytest.approx(sampled["ours"]["synthesis"]["preference"][0]
                                       - sampled["ours"]["sampled"]["preference"][0])
    assert sampled["sampled_vs_retrieval"]["preference"]["trials"] == 3 and "sampled_vs_generated" in sampled
    assert "Best samples: 3 of 6 starts" in (tmp_path / "sampled" / "table_iv.md").read_text()
    with pytest.raises(SystemExit, match="^pm: --sampled adds a source to Table IV: give --table$"):
        main(["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(runs / "gan"), "--sampled"])


def test_the_judge_must_be_another_run(runs, tmp_path):
    common = ["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(runs / "gan"), "--out", str(tmp_path), "--table",
              "--trials", "1", "--starts", "2", "--steps", "1", "--device", "cpu"]
    with pytest.raises(SystemExit, match="--judge-run is --dvbpr-run itself"):
        main(common + ["--judge-run", str(runs / "dvbpr")])
    shutil.copytree(runs / "dvbpr", tmp_path / "twin")
    with pytest.raises(SystemExit, match="is the same model as --dvbpr-run: train the judge with another --seed"):
        main(common + ["--judge-run", str(tmp_path / "twin")])


def test_tuning_reads_validation_queries_and_more_steps_reach_a_higher_objective(runs, tmp_path):
    common = ["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(runs / "gan"), "--tune", "--trials", "3",
              "--tune-starts", "2", "--tune-lrs", "0.1", "--device", "cpu"]
    main(common + ["--out", str(tmp_path), "--tune-steps", "0", "5", "20", "--judge-run", str(runs / "judge")])
    tuned = json.loads((tmp_path / "tune.json").read_text())
    assert tuned["split"] == "validation" and tuned["queries"] == 3
    by_steps = {row["steps"]: row["objective"] for row in tuned["rows"]}
    assert set(by_steps) == {0, 5, 20}
    assert by_steps[20] > by_steps[5] > by_steps[0]
    assert all(row["kid"] is not None for row in tuned["rows"]) and set(tuned["kid"]) == {"real", "generated",
                                                                                          "retrieval"}
    kid = tuned["kid"]
    assert tuned["kid_limits"] == {"random": kid["generated"],
                                   "shifted": kid["generated"] + kid["retrieval"] - kid["real"]}
    assert tuned["on_manifold"]["random"] == on_manifold(tuned["rows"], tuned["kid"]["generated"])
    assert "Highest objective with KID at most the random samples'" in (tmp_path / "tune.md").read_text()
    assert "| realistic |" in (tmp_path / "tune.md").read_text() and all(0 <= row["realistic"] <= 1
                                                                         for row in tuned["rows"])
    # The judges score the designs of every setting, and choose a setting each, beside the objective.
    assert all(0 <= row["judge_percentile"] <= 100 and np.isfinite(row["true_preference"]) for row in tuned["rows"])
    assert tuned["judged_on_manifold"] == {score: {limit: on_manifold(tuned["rows"], kid_limit, score)
                                                   for limit, kid_limit in tuned["kid_limits"].items()}
                                           for score in ("judge_percentile", "true_preference")}
    references = tuned["references"]
    assert references["retrieval"]["preference_percentile"] > references["real"]["preference_percentile"] + 20
    assert "| delta(u, c), retrieval (eq. 8) |" in (tmp_path / "tune.md").read_text()
    # How the returned designs are chosen (eq. 11 draws, 'best' does not) leaves the starts and objectives alone.
    main(common + ["--out", str(tmp_path / "best"), "--tune-steps", "0", "5", "--select", "best"])
    best_rows = json.loads((tmp_path / "best" / "tune.json").read_text())["rows"]
    assert {row["steps"]: row["objective"] for row in best_rows} == {0: by_steps[0], 5: by_steps[5]}


def test_an_ensemble_scores_the_mean_of_its_members_and_synthesis_climbs_it(runs):
    single, member = (Stages(runs / name, runs / "gan") for name in ("dvbpr", "member"))
    ensemble = Stages(runs / "dvbpr", runs / "gan", ensemble_runs=[runs / "member"])
    user, category = 3, 1
    images = single.images(single.items_of(category))
    mean = (single.designer.preference(user, images) + member.designer.preference(user, images)) / 2
    torch.testing.assert_close(ensemble.designer.preference(user, images), mean)
    items = ensemble.items_of(category)
    mean_of_items = (single.item_embeddings[items] @ single.designer.theta[user]
                     + member.item_embeddings[items] @ member.designer.theta[user]) / 2
    retrieved, scores = retrieve(ensemble.designer.theta[user], ensemble.item_embeddings, items, 3)
    torch.testing.assert_close(scores, mean_of_items.topk(3).values)
    design = ensemble.designer.synthesise(user, category, 4, 10, 0.1, eta=0.0, rng=torch.Generator().manual_seed(0),
                                          record=lambda step: step == 0)
    assert design.preference.mean() > design.history[0].preference.mean()


def test_ensemble_runs_and_the_judge_are_refused_where_they_repeat_a_model(runs, catalogue, tmp_path):
    common = ["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(runs / "gan"), "--out", str(tmp_path / "pm"),
              "--table", "--trials", "2", "--device", "cpu"]
    with pytest.raises(SystemExit, match="--ensemble-runs .* is the same model as --dvbpr-run"):
        main(common + ["--ensemble-runs", str(runs / "dvbpr")])
    with pytest.raises(SystemExit, match="--judge-run is --ensemble-runs .* itself"):
        main(common + ["--ensemble-runs", str(runs / "member"), "--judge-run", str(runs / "member")])
    with pytest.raises(SystemExit, match="--ensemble-runs takes up to 8 different run directories, got 2 "
                                         r"\(1 different\)"):
        main(common + ["--ensemble-runs", str(runs / "member"), str(runs / "member")])
    train_dvbpr(DVBPRConfig(dataset=str(catalogue(num_users=40, num_items=90)), out=str(tmp_path / "wide"), k=8,
                            image_size=64, fc_width=256, epochs=1, batch_size=32, seed=3, device="cpu"))
    with pytest.raises(SystemExit, match="takes 64 px images, --dvbpr-run 32 px"):
        main(common + ["--ensemble-runs", str(tmp_path / "wide")])
    # a catalogue of the same size and name is not the same data; a renamed copy is
    elsewhere = generate_catalogue(tmp_path / "elsewhere" / "Tiny.npy", CatalogueConfig(
        num_users=40, num_items=90, image_size=32, image_source="procedural", seed=1))
    renamed = catalogue(num_users=40, num_items=90, name="Other")
    for name, path, seed in (("elsewhere", elsewhere, 4), ("renamed", renamed, 5)):
        train_dvbpr(DVBPRConfig(dataset=str(path), out=str(tmp_path / name), k=8, image_size=32, fc_width=256,
                                epochs=1, batch_size=32, seed=seed, device="cpu"))
    for flag in ("--ensemble-runs", "--judge-run"):
        with pytest.raises(SystemExit, match=f"{flag} {tmp_path / 'elsewhere'} was trained on other data than "
                                             f"{re.escape(str(catalogue(num_users=40, num_items=90)))} holds"):
            main(common + [flag, str(tmp_path / "elsewhere")])
    with pytest.raises(SystemExit, match=f"--dvbpr-run {runs / 'dvbpr'} was trained on other data than "
                                         f"{re.escape(str(elsewhere))} holds"):
        main(common + ["--dataset", str(elsewhere)])
    member = Stages(runs / "dvbpr", runs / "gan", ensemble_runs=[tmp_path / "renamed"]).dvbpr_runs[1]
    judge = open_judge(tmp_path / "renamed", Stages(runs / "dvbpr", runs / "gan"))
    assert torch.equal(judge.theta, member.theta) and member.path == tmp_path / "renamed"
    # a malformed digest is refused; a run from before runs recorded one is compared by its dataset's name
    for digest in ("020b2a98", None):
        for file in ("best.pt", "embeddings.pt"):
            checkpoint = torch.load(tmp_path / "renamed" / file, weights_only=True)
            save_checkpoint(tmp_path / "renamed" / file, {**checkpoint, "dataset_digest": digest})
        if digest:
            with pytest.raises(SystemExit, match="best.pt: its dataset_digest is .*, not a SHA-256 hex digest"):
                main(common + ["--judge-run", str(tmp_path / "renamed")])
    for flag in ("--ensemble-runs", "--judge-run"):
        with pytest.raises(SystemExit, match=f"{flag} {tmp_path / 'renamed'} was trained on Other.npy, "
                                             "--dvbpr-run on Tiny.npy"):
            main(common + [flag, str(tmp_path / "renamed")])


def test_table_iv_takes_the_setting_a_tuning_chose_and_refuses_another_runs_tuning(runs, tmp_path):
    common = ["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(runs / "gan"), "--device", "cpu"]
    tune = tmp_path / "tune"
    main(common + ["--tune", "--trials", "3", "--tune-starts", "2", "--tune-steps", "0", "3", "--tune-lrs", "0.05",
                   "--out", str(tune)])
    tuned = json.loads((tune / "tune.json").read_text())
    table = common + ["--table", "--trials", "2", "--splits", "2", "--steps-from-tune", str(tune)]

    def used(choice, name):
        manifold = {**tuned["on_manifold"], "random": choice}
        (tune / "tune.json").write_text(json.dumps({**tuned, "on_manifold": manifold}))
        main(table + ["--out", str(tmp_path / name)])
        settings = json.loads((tmp_path / name / "table_config.json").read_text())
        return settings["starts"], settings["steps"], settings["lr"]

    assert used({"starts": 2, "steps": 3, "lr": 0.05}, "chosen") == (2, 3, 0.05)
    assert used(None, "none") == (PMConfig().starts, 0, PMConfig().lr)   # none within: the starts alone
    with pytest.raises(SystemExit, match="--steps-from-tune takes .* leave out --steps"):
        main(table + ["--steps", "5"])
    shutil.copytree(runs / "gan", tmp_path / "other-gan")
    with pytest.raises(SystemExit, match=f"was tuned with --gan-run {runs / 'gan'}"):
        main(table + ["--gan-run", str(tmp_path / "other-gan")])
    tuned_with = json.loads((tune / "tune_config.json").read_text())
    tuned_with.pop("shape_weight")     # a tuning from before the shape term: it ran without one
    (tune / "tune_config.json").write_text(json.dumps(tuned_with))
    main(table + ["--shape-weight", "0", "--out", str(tmp_path / "older")])
    with pytest.raises(SystemExit, match="was tuned with --shape-weight 0.0, this command has 2.0"):
        main(table + ["--shape-weight", "2"])
    (tune / "tune.json").write_text(json.dumps({"on_manifold": {"random": {"starts": "2"}}}))
    with pytest.raises(SystemExit, match="does not hold a tuning of pm/main.py --tune"):
        main(table)


def test_tuning_the_starts_alone_picks_the_best_of_more_prior_samples(runs, tmp_path):
    main(["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(runs / "gan"), "--tune", "--trials", "3",
          "--tune-starts", "2", "16", "--tune-steps", "0", "--out", str(tmp_path), "--device", "cpu"])
    rows = {row["starts"]: row for row in json.loads((tmp_path / "tune.json").read_text())["rows"]}
    assert rows[16]["objective"] > rows[2]["objective"] and rows[16]["seconds_per_query"] > 0


def test_guided_samples_are_a_table_iv_source_and_their_scale_is_tuned_on_validation(runs, catalogue, tmp_path):
    dataset = load_dataset(catalogue(num_users=40, num_items=90))
    place_random_classifier(tmp_path / "diffusion", dataset, 16)
    train_gan(GANConfig(generator="diffusion", dataset=str(dataset.path), out=str(tmp_path / "diffusion"),
                        image_size=16, z_dim=3 * 16 * 16, z_distribution="normal", g_width=8, sample_steps=3,
                        batch_size=16, epochs=1, consistency_samples=4, device="cpu"))
    common = ["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(tmp_path / "diffusion"), "--trials", "3",
              "--latent", "sphere", "--init", "prior", "--device", "cpu"]
    main(common + ["--out", str(tmp_path / "table"), "--table", "--starts", "2", "--steps", "1", "--guidance", "5"])
    table = json.loads((tmp_path / "table" / "table_iv.json").read_text())
    assert set(table["ours"]) == {"real", "generated", "retrieval", "synthesis", "guided"}
    assert table["guided_vs_retrieval"]["preference"]["trials"] == 3 and "synthesis_vs_retrieval" in table
    assert table["fidelity"]["guided"]["category-classifier"]["kid"] is not None

    main(common + ["--out", str(tmp_path / "tune"), "--tune", "--tune-starts", "2", "--tune-steps", "0", "1",
                   "--tune-lrs", "0.1", "--tune-guidance", "0", "100"])
    tuned = json.loads((tmp_path / "tune" / "tune.json").read_text())
    by_scale = {row["guidance"]: row["preference"] for row in tuned["guided_rows"]}
    assert by_scale[100] > by_scale[0]
    assert tuned["guided_on_manifold"]["shifted"] == on_manifold(tuned["guided_rows"], tuned["kid_limits"]["shifted"],
                                                                 "preference")


def test_guidance_needs_a_generator_that_has_it(runs, tmp_path):
    with pytest.raises(SystemExit, match="^pm: --guidance steers a diffusion sampler, and this LSGAN generator"):
        main(["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(runs / "gan"), "--out", str(tmp_path), "--table",
              "--guidance", "1", "--device", "cpu"])
    with pytest.raises(SystemExit, match=r"^pm: --guidance and --tune-guidance are scales in \[0, 1e\+06\], got -1$"):
        main(["--dvbpr-run", str(runs / "dvbpr"), "--gan-run", str(runs / "gan"), "--tune-guidance", "-1"])


def test_the_manifold_choice_is_the_best_objective_within_the_random_samples_kid():
    rows = [dict(steps=0, objective=1.0, kid=0.5), dict(steps=10, objective=2.0, kid=0.9),
            dict(steps=50, objective=3.0, kid=2.0)]
    assert on_manifold(rows, kid_limit=1.0)["steps"] == 10
    assert on_manifold(rows, kid_limit=0.5)["steps"] == 0
    assert on_manifold(rows, kid_limit=0.1) is None


def test_trials_follow_the_split_they_are_drawn_from():
    dataset = SimpleNamespace(user_test=np.array([0, 1]), user_validation=np.array([2, 3]),
                              item_category=np.array([0, 0, 1, -1]), name="t")
    assert set(draw_trials(dataset, 20, np.random.default_rng(0), split="validation")) == {(0, 1)}
    assert set(draw_trials(dataset, 20, np.random.default_rng(0))) == {(0, 0), (1, 0)}


def test_preset_demo_gives_the_demo_settings_on_any_dataset():
    cfg, protected = parse_config(PMConfig, ["--preset", "demo", "--steps", "7"], PRESETS)
    assert (cfg.trials, cfg.starts, cfg.steps) == (DEMO["trials"], DEMO["starts"], 7)
    assert (cfg.latent, cfg.init, cfg.select, cfg.lr) == ("tanh", "uniform", "softmax", 0.1)   # the paper's
    assert set(DEMO) <= protected
    assert (cfg.shape_weight, cfg.structure_weight) == (10.0, 5.0)   # the weights their rules chose


def test_the_embedded_catalogues_pm_takes_the_demo_terms_unless_typed():
    for flags, structure_weight in (([], 5.0), (["--structure-weight", "0"], 0.0)):
        cfg, protected = parse_config(PMConfig, flags, PRESETS)
        settle(cfg, protected, "pm", DEMO, say=lambda line: None, embedded=True)
        assert (cfg.realism_floor, cfg.support_quantile, cfg.shape_weight) == (-1.0, 0.9, 10.0)
        assert cfg.structure_weight == structure_weight and cfg.steps == 100
    cfg, protected = parse_config(PMConfig, [], PRESETS)
    settle(cfg, protected, "pm", DEMO, say=lambda line: None, embedded=False)   # another dataset: the paper's PM
    assert (cfg.structure_weight, cfg.shape_weight, cfg.steps) == (0.0, 0.0, 200)


def test_preset_demo_refuses_bad_settings(tmp_path):
    nowhere = ["--dvbpr-run", str(tmp_path / "none"), "--gan-run", str(tmp_path / "none")]
    for flags, message in ((["--starts", "0"], "pm: --starts must be at least 1, got 0"),
                           (["--lr", "-0.1"], "pm: --lr must be positive, got -0.1"),
                           (["--steps", "-1"], "pm: --steps must be at least 0, got -1"),
                           (["--realism-floor", "nan"], "pm: --realism-floor must be a finite number, got nan"),
                           (["--support-quantile", "0"], "pm: --support-quantile is a quantile in (0, 1], got 0.0"),
                           (["--support-weight", "-1"], "pm: --support-weight must be at least 0, got -1.0"),
                           (["--shape-weight", "-1"], "pm: --shape-weight must be at least 0, got -1.0"),
                           (["--structure-weight", "-1"], "pm: --structure-weight must be at least 0, got -1.0"),
                           (["--jitter", "-1"], "pm: --jitter must be at least 0, got -1"),
                           (["--truncation", "0"], "pm: --truncation is a share of the prior's box in (0, 1], got 0.0"),
                           (["--min-silhouette", "0"], "pm: --min-silhouette is an IoU in (0, 1], got 0.0"),
                           (["--truncation", "0.5", "--latent", "sphere"],
                            "pm: --truncation keeps z = psi tanh(z') in a box of the prior: give --latent tanh, not "
                            "sphere")):
        with pytest.raises(SystemExit, match=f"^{re.escape(message)}$"):
            main([*nowhere, *flags])
