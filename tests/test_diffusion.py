"""The class-conditional diffusion generator (gan/diffusion.py): registry round trip, DDPM's loss falling, the DDIM
map differentiable in its noise code, preference guidance raising the score it follows, and preference
maximisation through it, the moving average of its weights that sampling reads, resumed to identical numbers."""
import dataclasses

import pytest
import torch

from common.checkpoint import load_checkpoint
from common.data import load_dataset
from common.errors import ConfigError
from dvbpr.cnnf import CNNF
from dvbpr.model import DVBPR
from gan.config import GANConfig, check_config, with_generator_latent
from gan.diffusion import Diffusion
from gan.generators import build_generator
from gan.run import open_gan_run
from gan.train import train as train_gan
from pm.design import Designer
from tests.helpers import place_random_classifier, straight_and_resumed_gan


def tiny_config(**overrides):
    settings = dict(generator="diffusion", image_size=16, g_width=8, sample_steps=4, batch_size=16, lr=2e-3,
                    beta1=0.9, beta2=0.999, consistency_samples=4, device="cpu")
    return with_generator_latent(dataclasses.replace(GANConfig(), **{**settings, **overrides}))


def tiny_diffusion(**overrides):
    torch.manual_seed(0)
    return Diffusion(tiny_config(**overrides), num_categories=3).eval()


def test_the_config_settles_the_latent_to_noise_images():
    cfg = tiny_config(z_dim=100, z_distribution="uniform")
    assert (cfg.z_dim, cfg.z_distribution) == (3 * 16 * 16, "normal")
    check_config(dataclasses.replace(cfg, image_size=128, z_dim=3 * 128 ** 2))   # a noise image is not bounded by
    with pytest.raises(ConfigError, match="--sample-steps"):                    # the GANs' largest z
        check_config(dataclasses.replace(cfg, sample_steps=0))


def test_the_diffusion_model_trains_through_the_registry_and_reopens_with_the_same_outputs(catalogue, tmp_path):
    path = catalogue()
    place_random_classifier(tmp_path, load_dataset(path), 16)
    cfg = tiny_config(dataset=str(path), out=str(tmp_path), epochs=2)
    train_gan(cfg)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt", "gan")
    assert set(checkpoint["model"]) == set(checkpoint["optimizer"]) == {"unet"}
    assert checkpoint["config"]["z_dim"] == 768 and checkpoint["sample_z"].shape == (16, 768)

    run = open_gan_run(tmp_path)
    assert isinstance(run.model, Diffusion) and run.step == checkpoint["step"] > 0 and not run.model.latent_box
    trained = Diffusion(cfg, num_categories=6).eval()
    untrained_images = trained(torch.zeros(2, 768), torch.tensor([0, 1]))
    trained.unet.load_state_dict(checkpoint["model"]["unet"])
    z, labels = run.model.sample_z(6, rng=torch.Generator().manual_seed(0)), torch.arange(6)
    images = run.model(z, labels)
    assert images.shape == (6, 3, 16, 16) and images.abs().max() <= 1
    assert torch.equal(images, trained(z, labels)) and not torch.equal(images[:2], untrained_images)


def test_the_moving_average_follows_the_trained_weights_with_its_warm_up():
    model = tiny_diffusion(ema=0.9)
    labels = torch.arange(16) % 3
    real = torch.rand(16, 3, 16, 16) * 2 - 1
    optimizers = model.optimizers(tiny_config(), "cpu")
    weights = []
    for _ in range(3):
        model.train_step({"unet": model.unet.train()}, optimizers, real, labels, None)
        weights.append(model.unet.conv_in.weight.detach().clone())
    # the first update copies the weights; the n-th after it keeps min(0.9, (1 + n) / (10 + n)) of the average
    average = weights[0]
    for updates, current in ((1, weights[1]), (2, weights[2])):
        kept = min(0.9, (1 + updates) / (10 + updates))
        average = kept * average + (1 - kept) * current
    torch.testing.assert_close(model.ema_unet.module.conv_in.weight, average)
    assert not torch.equal(average, weights[2])
    model.eval()
    z = model.sample_z(2, rng=torch.Generator().manual_seed(0))
    last = Diffusion(tiny_config(), num_categories=3).eval()
    last.unet.load_state_dict(model.unet.state_dict())
    averaged = Diffusion(tiny_config(), num_categories=3).eval()
    averaged.unet.load_state_dict(model.ema_unet.module.state_dict())
    with torch.no_grad():   # sampling reads the average, not the last weights
        images = model(z, torch.tensor([0, 1]))
        assert torch.equal(images, averaged(z, torch.tensor([0, 1])))
        assert not torch.equal(images, last(z, torch.tensor([0, 1])))


def test_an_averaged_run_resumes_to_identical_weights_and_its_run_samples_from_the_average(catalogue, tmp_path):
    cfg = tiny_config(dataset=str(catalogue()), epochs=2, ema=0.99)
    straight, _ = straight_and_resumed_gan(cfg, tmp_path)   # timesteps and noise continue after the resume
    assert set(straight["model"]) == {"unet", "ema_unet"} and set(straight["optimizer"]) == {"unet"}
    run = open_gan_run(tmp_path / "straight")
    averaged = Diffusion(tiny_config(), num_categories=6).eval()
    averaged.unet.load_state_dict({name.removeprefix("module."): weight
                                   for name, weight in straight["model"]["ema_unet"].items() if name != "n_averaged"})
    z, labels = run.model.sample_z(2, rng=torch.Generator().manual_seed(0)), torch.tensor([0, 5])
    assert torch.equal(run.model(z, labels), averaged(z, labels))
    with pytest.raises(ConfigError, match=r"^--ema is read by --generator sngan or diffusion; --generator lsgan "
                                          r"has no use for it$"):
        build_generator(dataclasses.replace(cfg, generator="lsgan"), 6)
    with pytest.raises(ConfigError, match=r"^--ema is a decay in \[0, 1\), got 1.0$"):
        check_config(dataclasses.replace(cfg, ema=1.0))


def test_training_lowers_the_denoising_loss_and_the_realism_term_prefers_what_it_learned():
    model = tiny_diffusion()
    labels = torch.arange(16) % 3
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    real = colours[labels][:, :, None, None].expand(-1, -1, 16, 16)   # each category one flat colour
    optimizers = model.optimizers(tiny_config(), "cpu")
    torch.manual_seed(1)
    losses = [model.train_step({"unet": model.unet.train()}, optimizers, real, labels, None)["loss"].item()
              for _ in range(60)]
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10]), losses
    model.eval()
    with torch.no_grad():   # the learned images are more probable under the model than the other categories'
        other = colours[(labels + 1) % 3][:, :, None, None].expand(-1, -1, 16, 16)
        assert model.realism_loss(real, labels).mean() < 0.7 * model.realism_loss(other, labels).mean()


def test_the_ddim_map_is_deterministic_and_differentiable_in_its_noise_code():
    model = tiny_diffusion()
    z = model.sample_z(2, rng=torch.Generator().manual_seed(0)).requires_grad_(True)
    images = model(z, torch.tensor([0, 2]))
    assert torch.equal(images, model(z, torch.tensor([0, 2])))
    images.square().sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_preference_guidance_raises_the_score_it_follows():
    model = tiny_diffusion()
    red_minus_blue = lambda images: (images[:, 0] - images[:, 2]).mean((1, 2))  # noqa: E731
    z, labels = model.sample_z(8, rng=torch.Generator().manual_seed(0)), torch.arange(8) % 3
    plain = red_minus_blue(model.guided_sample(z, labels, red_minus_blue, scale=0.0))
    with torch.no_grad():
        torch.testing.assert_close(plain, red_minus_blue(model(z, labels)))   # scale 0 is the DDIM sampler
    guided = red_minus_blue(model.guided_sample(z, labels, red_minus_blue, scale=50.0))
    assert (guided > plain + 0.1).all(), (plain, guided)


def test_preference_maximisation_optimises_the_noise_code_on_the_priors_sphere():
    model = tiny_diffusion()
    torch.manual_seed(0)
    designer = Designer(DVBPR(CNNF(32, fc_width=64), 4, k=8), model)
    with pytest.raises(ConfigError, match="--latent sphere"):
        designer.check_latent("tanh")
    assert abs(designer.radius - 768 ** 0.5) < 0.02 * designer.radius    # N(0, I): sqrt(z_dim)
    design = designer.synthesise(1, 2, starts=3, steps=10, lr=0.1, eta=0.1, init="prior", latent="sphere",
                                 rng=torch.Generator().manual_seed(0), record=lambda step: step == 0)
    assert design.objective.mean() > design.history[0].objective.mean()
    assert design.images.shape == (3, 3, 16, 16) and design.z.shape == (3, 768)
    torch.testing.assert_close(design.z.norm(dim=1), torch.full((3,), designer.radius))


def test_guided_designs_at_scale_zero_are_the_priors_samples_and_guidance_raises_the_users_score():
    model = tiny_diffusion()
    torch.manual_seed(0)
    designer = Designer(DVBPR(CNNF(32, fc_width=64), 4, k=8), model)
    z = designer.sample_z(3, torch.Generator().manual_seed(5))
    plain = designer.guided(1, 2, 3, scale=0.0, rng=torch.Generator().manual_seed(5))
    torch.testing.assert_close(plain, designer.generate(z, 2))
    guided = designer.guided(1, 2, 3, scale=30.0, rng=torch.Generator().manual_seed(5))
    assert (designer.preference(1, guided) > designer.preference(1, plain)).all()
