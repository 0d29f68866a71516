"""The conditional VAE generator (gan/vae.py): its prior settled by the config, the registry round trip resumed to
identical weights, the ELBO's KL term, training lowering the negative ELBO, the realism term preferring what it
learned, preference maximisation through it, and the ex-post prior's running statistics and samples."""
import dataclasses

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from common.errors import ConfigError
from dvbpr.cnnf import CNNF
from dvbpr.model import DVBPR
from gan.config import GANConfig, check_config, with_generator_latent
from gan.generators import build_generator
from gan.run import open_gan_run
from gan.vae import VAE, AggregatePosterior, MixturePosterior, fit_mixture, negative_elbo
from pm.design import Designer
from tests.helpers import straight_and_resumed_gan


def tiny_config(**overrides):
    settings = dict(generator="vae", image_size=16, z_dim=8, g_width=4, d_width=4, batch_size=16, lr=2e-3,
                    beta1=0.9, beta2=0.999, consistency_samples=4, device="cpu")
    return with_generator_latent(dataclasses.replace(GANConfig(), **{**settings, **overrides}))


def tiny_vae(**overrides):
    torch.manual_seed(0)
    return VAE(tiny_config(**overrides), num_categories=3)


def flat_colours(labels):
    """Each category one flat colour: red, green, blue."""
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    return colours[labels % 3][:, :, None, None].expand(-1, -1, 16, 16)


def test_the_config_settles_the_prior_to_the_normal_whatever_the_flag_says():
    assert tiny_config(z_distribution="uniform").z_distribution == "normal"
    assert with_generator_latent(dataclasses.replace(GANConfig(), generator="sngan")).z_distribution == "uniform"
    with pytest.raises(ConfigError, match=r"^--ema is read by --generator sngan or diffusion; --generator vae has"):
        build_generator(tiny_config(ema=0.9), 3)


@pytest.mark.parametrize("ex_post_prior, components", [(False, 0), (True, 0), (True, 2)])
def test_the_vae_trains_through_the_registry_resumes_to_identical_weights_and_reopens(catalogue, tmp_path,
                                                                                     ex_post_prior, components):
    cfg = tiny_config(dataset=str(catalogue()), epochs=2, ex_post_prior=ex_post_prior, ex_post_components=components)
    straight, resumed = straight_and_resumed_gan(cfg, tmp_path)
    if components:   # the mixture fitted after the last iteration, the same after a resume
        weights = straight["model"]["aggregate"]["weight"]
        assert weights.shape == (6, 2) and not torch.equal(weights, torch.full((6, 2), 0.5))
        for name, buffer in straight["model"]["aggregate"].items():
            torch.testing.assert_close(resumed["model"]["aggregate"][name], buffer, rtol=0, atol=0)
    assert set(straight["optimizer"]) == {"encoder", "decoder"}
    assert set(straight["model"]) == {"encoder", "decoder"} | ({"aggregate"} if ex_post_prior else set())
    assert straight["config"]["z_distribution"] == "normal"

    run = open_gan_run(tmp_path / "straight")
    assert isinstance(run.model, VAE) and not run.model.latent_box
    trained = VAE(cfg, num_categories=6).eval()
    untrained_images = trained(torch.zeros(2, 8), torch.tensor([0, 1]))
    for name in trained.saved_nets:
        getattr(trained, name).load_state_dict(straight["model"][name])
    z, labels = run.model.sample_z(6, rng=torch.Generator().manual_seed(0)), torch.arange(6)
    images = run.model(z, labels)
    assert images.shape == (6, 3, 16, 16) and images.abs().max() <= 1
    assert torch.equal(images, trained(z, labels)) and not torch.equal(images[:2], untrained_images)


def test_the_kl_term_is_that_of_the_posterior_from_the_standard_normal():
    model = tiny_vae().eval()
    images, labels = torch.rand(4, 3, 16, 16) * 2 - 1, torch.arange(4) % 3
    _, kl, _, _ = negative_elbo(model.decoder, model.encoder, images, labels, sample=False)
    mean, log_variance = model.encoder(images, labels)
    expected = kl_divergence(Normal(mean, (0.5 * log_variance).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(kl, expected)


def test_training_lowers_the_negative_elbo_and_the_realism_term_prefers_what_it_learned():
    model = tiny_vae()
    labels = torch.arange(16) % 3
    real = flat_colours(labels)
    optimizers = model.optimizers(tiny_config(), "cpu")
    nets = {name: getattr(model, name).train() for name in model.nets}
    torch.manual_seed(1)
    losses = [model.train_step(nets, optimizers, real, labels, None)["loss"].item() for _ in range(60)]
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10]), losses
    model.eval()
    with torch.no_grad():   # the learned images are more probable under the model than the other categories'
        other = flat_colours(labels + 1)
        assert model.realism_loss(real, labels).mean() < 0.5 * model.realism_loss(other, labels).mean()
        samples = model(model.sample_z(16, rng=torch.Generator().manual_seed(0)), labels)
        assert (samples - real).abs().mean() < (samples - other).abs().mean()   # its samples wear their colour


@pytest.mark.parametrize("prior", [{}, dict(ex_post_prior=True, ex_post_components=3)])
def test_preference_maximisation_designs_through_the_vae_from_its_prior(prior):
    model = tiny_vae(**prior).eval()
    torch.manual_seed(0)
    designer = Designer(DVBPR(CNNF(32, fc_width=64), 4, k=8), model)
    with pytest.raises(ConfigError):
        designer.check_latent("tanh")
    design = designer.synthesise(1, 2, starts=4, steps=20, lr=0.1, eta=0.1, init="prior", latent="direct",
                                 rng=torch.Generator().manual_seed(0), record=lambda step: step == 0)
    assert design.objective.mean() > design.history[0].objective.mean()
    torch.testing.assert_close(design.realism, model.realism_loss(design.images, torch.full((4,), 2)))


def test_the_aggregate_posterior_tracks_each_categorys_mean_and_covariance_and_samples_from_them():
    torch.manual_seed(0)
    aggregate = AggregatePosterior(num_categories=2, z_dim=3)
    z, labels = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    torch.testing.assert_close(aggregate(z, labels), z, rtol=1e-4, atol=1e-6)   # untrained: N(0, I) itself
    centres, scales = torch.tensor([[3.0, 0, 0], [0, -2, 0]]), torch.tensor([[0.5, 1, 2], [1, 0.2, 1]])
    for _ in range(2000):
        labels = torch.arange(64) % 2
        aggregate.update(centres[labels] + scales[labels] * torch.randn(64, 3), labels)
    samples = aggregate(torch.randn(4000, 3), torch.arange(4000) % 2)
    for category in (0, 1):
        of_category = samples[category::2]
        torch.testing.assert_close(of_category.mean(0), centres[category], atol=0.15, rtol=0)
        torch.testing.assert_close(of_category.std(0), scales[category], atol=0.15, rtol=0)


def test_the_ex_post_prior_decodes_codes_where_the_encoder_put_the_categorys_items():
    model = tiny_vae(ex_post_prior=True)
    labels = torch.arange(48) % 3
    real = flat_colours(labels)
    optimizers = model.optimizers(tiny_config(), "cpu")
    nets = {name: getattr(model, name).train() for name in model.nets}
    torch.manual_seed(1)
    for step in range(700):
        if step == 100:   # the weights stop; the running statistics, lagging as a running mean does, catch up
            for optimizer in optimizers.values():
                optimizer.param_groups[0]["lr"] = 0.0
        model.train_step(nets, optimizers, real, labels, None)
    model.eval()
    with torch.no_grad():
        means, _ = model.encoder(real, labels)
        for category in range(3):
            torch.testing.assert_close(model.aggregate.mean[category], means[labels == category].mean(0),
                                       atol=0.02, rtol=0)
        z = torch.zeros(3, 8)   # the centre of the code's prior decodes the category's mean code
        torch.testing.assert_close(model(z, torch.arange(3)), model.decoder(model.aggregate.mean, torch.arange(3)))
    with pytest.raises(ConfigError, match=r"^--ex-post-prior is read by --generator vae or vaegan; --generator sngan"):
        build_generator(dataclasses.replace(tiny_config(ex_post_prior=True), generator="sngan"), 3)


def test_the_mixture_fit_finds_each_cluster_of_codes_and_samples_them_in_their_shares_from_one_normal_code():
    rng = torch.Generator().manual_seed(0)
    centres, scales, shares = torch.tensor([[4.0, 0, 0], [-4, 0, 0], [0, 5, 0]]), torch.tensor([0.5, 1, 0.3]), (
        torch.tensor([0.5, 0.3, 0.2]))
    cluster = torch.multinomial(shares, 12000, replacement=True, generator=rng)
    codes = centres[cluster] + scales[cluster, None] * torch.randn(12000, 3, generator=rng)
    prior = MixturePosterior(num_categories=2, z_dim=3, components=3)
    z, labels = torch.randn(6000, 3, generator=rng), torch.arange(6000) % 2
    unfitted = prior(z, labels)   # N(0, I) in distribution: the first coordinate redrawn within its third
    torch.testing.assert_close(unfitted[:, 1:], z[:, 1:])
    torch.testing.assert_close(unfitted[:, 0].std(), torch.tensor(1.0), atol=0.03, rtol=0)
    prior.fit(codes, torch.ones(12000, dtype=torch.long), rng)   # category 1 only; shrunk little by 12,000 codes
    order = prior.mean[1, :, 0].argsort(descending=True)                 # x = 4, then 0 (y = 5), then -4
    torch.testing.assert_close(prior.weight[1, order], shares[[0, 2, 1]], atol=0.03, rtol=0)
    torch.testing.assert_close(prior.mean[1, order], centres[[0, 2, 1]], atol=0.1, rtol=0)
    samples = prior(z, labels)
    torch.testing.assert_close(samples[labels == 0], unfitted[labels == 0])
    drawn = samples[labels == 1]
    nearest = torch.cdist(drawn, centres).argmin(1)
    torch.testing.assert_close(torch.bincount(nearest, minlength=3) / len(drawn), shares, atol=0.03, rtol=0)
    for k in range(3):
        torch.testing.assert_close(drawn[nearest == k].std(0), scales[k].expand(3), atol=0.12, rtol=0)
    z.requires_grad_(True)   # PM's gradient reaches the code through the rescaled quantile
    prior(z[:8], torch.ones(8, dtype=torch.long)).sum().backward()
    assert z.grad[:8, 0].abs().min() > 0


def test_the_mixture_fit_stays_finite_with_fewer_codes_than_dimensions_even_one():
    rng = torch.Generator().manual_seed(0)
    codes = torch.randn(20, 30, generator=rng, dtype=torch.float64) * torch.linspace(0.01, 2, 30, dtype=torch.float64)
    weight, mean, covariance = fit_mixture(codes, 4, rng)
    assert torch.isfinite(covariance).all() and torch.linalg.eigvalsh(covariance).min() > 0
    torch.testing.assert_close(weight.sum(), torch.tensor(1.0, dtype=torch.float64))
    for lone in fit_mixture(codes[:1], 4, rng):   # a category of one item
        assert torch.isfinite(lone).all()


def test_the_ex_post_components_are_refused_without_the_ex_post_prior_or_out_of_range():
    with pytest.raises(ConfigError, match=r"^--ex-post-components sets the ex-post prior's mixture: give "):
        check_config(tiny_config(ex_post_components=4))
    with pytest.raises(ConfigError, match=r"^--ex-post-components is from 0 to 32, got 33"):
        check_config(tiny_config(ex_post_prior=True, ex_post_components=33))
    with pytest.raises(ConfigError, match=r"^--ex-post-components is read by --generator vae or vaegan; --generator "
                                          r"lsgan has no use for it$"):
        build_generator(tiny_config(generator="lsgan", ex_post_components=4), 3)


def test_the_kl_weight_scales_the_kl_term_in_training_and_in_the_realism_term_but_not_in_the_full_elbo():
    labels = torch.arange(16) % 3
    real = flat_colours(labels)
    model = tiny_vae(kl_weight=0.1)
    nets = {name: getattr(model, name).train() for name in model.nets}
    step = model.train_step(nets, model.optimizers(tiny_config(), "cpu"), real, labels, None)
    torch.testing.assert_close(step["loss"], step["reconstruction"] + 0.1 * step["kl"])
    model.eval()
    reconstruction, kl, _, _ = negative_elbo(model.decoder, model.encoder, real, labels, sample=False)
    torch.testing.assert_close(model.realism_loss(real, labels), (reconstruction + 0.1 * kl) / real[0].numel())
    assert not torch.allclose(model.realism_loss(real, labels), (reconstruction + kl) / real[0].numel())
    torch.testing.assert_close(model.realism_terms()["full-elbo"](real, labels),
                               (reconstruction + kl) / real[0].numel())
    with pytest.raises(ConfigError, match=r"^--kl-weight is read by --generator vae or vaegan; --generator sngan "):
        build_generator(tiny_config(generator="sngan", kl_weight=0.5), 3)
    with pytest.raises(ConfigError, match=r"^--kl-weight is in \(0, 100\], got 0.0$"):
        check_config(tiny_config(kl_weight=0.0))
