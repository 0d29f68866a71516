"""The VAE with a discriminator on its reconstructions (gan/vaegan.py): VQGAN's adaptive weight, the registry round
trip resumed to identical weights, training lowering the negative ELBO while D learns to tell the reconstructions
from the real items, and the two realism terms PM may keep small."""
import dataclasses
import re

import pytest
import torch

from common.errors import ConfigError
from dvbpr.cnnf import CNNF
from dvbpr.model import DVBPR
from gan.config import GANConfig, check_config, with_generator_latent
from gan.run import open_gan_run
from gan.vae import VAE
from gan.vaegan import VAEGAN, adaptive_weight
from pm.design import Designer
from tests.helpers import straight_and_resumed_gan
from tests.test_vae import flat_colours


def tiny_config(**overrides):
    settings = dict(generator="vaegan", image_size=16, z_dim=8, g_width=4, d_width=4, batch_size=16, lr=2e-3,
                    beta1=0.5, beta2=0.9, consistency_samples=4, device="cpu")
    return with_generator_latent(dataclasses.replace(GANConfig(), **{**settings, **overrides}))


def test_the_adaptive_weight_gives_the_adversarial_gradient_the_elbos_norm_at_the_last_layer():
    weight = torch.randn(3, 4, requires_grad=True)
    elbo_direction, adversarial_direction = torch.randn(3, 4), torch.randn(3, 4)
    elbo, adversarial = (elbo_direction * weight).sum(), (adversarial_direction * weight ** 2).sum()
    lam = adaptive_weight(elbo, adversarial, weight)
    adversarial_gradient = 2 * adversarial_direction * weight.detach()
    torch.testing.assert_close(lam * adversarial_gradient.norm(), elbo_direction.norm(), rtol=1e-3, atol=0)
    assert not lam.requires_grad
    (elbo + lam * adversarial).backward()   # the graphs were kept for the step that follows
    torch.testing.assert_close(weight.grad, elbo_direction + lam * adversarial_gradient)


def test_the_vaegan_trains_through_the_registry_resumes_to_identical_weights_and_reopens(catalogue, tmp_path):
    cfg = tiny_config(dataset=str(catalogue()), epochs=2, ex_post_prior=True)
    straight, _ = straight_and_resumed_gan(cfg, tmp_path)
    assert set(straight["optimizer"]) == {"encoder", "decoder", "discriminator"}
    assert set(straight["model"]) == {"encoder", "decoder", "discriminator", "aggregate"}
    run = open_gan_run(tmp_path / "straight")
    assert isinstance(run.model, VAEGAN) and not run.model.latent_box
    images = run.model(run.model.sample_z(6, rng=torch.Generator().manual_seed(0)), torch.arange(6))
    assert images.shape == (6, 3, 16, 16) and images.abs().max() <= 1

    # a mixture for the ex-post prior is fitted after the last iteration: the nets train as with one Gaussian
    mixture, _ = straight_and_resumed_gan(dataclasses.replace(cfg, ex_post_components=2), tmp_path / "mixture")
    for net in ("encoder", "decoder", "discriminator"):
        for name, weight in straight["model"][net].items():
            torch.testing.assert_close(mixture["model"][net][name], weight, rtol=0, atol=0, msg=f"{net} {name}")
    weights = mixture["model"]["aggregate"]["weight"]
    assert weights.shape == (6, 2) and not torch.equal(weights, torch.full((6, 2), 0.5))
    mixed = open_gan_run(tmp_path / "mixture" / "straight").model
    z, labels = mixed.sample_z(6, rng=torch.Generator().manual_seed(0)), torch.arange(6)
    assert not torch.equal(mixed(z, labels), images)   # the same decoder, other codes
    with pytest.raises(ConfigError, match=r"^--prior-fakes decodes the ex-post prior's samples while training, and "):
        check_config(dataclasses.replace(cfg, ex_post_components=2, prior_fakes=True))


def test_training_lowers_the_negative_elbo_while_d_tells_reconstructions_from_real_items():
    torch.manual_seed(0)
    model = VAEGAN(tiny_config(), num_categories=3)
    labels = torch.arange(16) % 3
    real = flat_colours(labels) * 0.8 + 0.1 * torch.randn(16, 3, 16, 16)   # a texture a blurred decoder misses
    optimizers = model.optimizers(tiny_config(), "cpu")
    nets = {name: getattr(model, name).train() for name in model.nets}
    torch.manual_seed(1)
    steps = [model.train_step(nets, optimizers, real, labels, None) for _ in range(80)]
    elbo, d_loss = ([step[name].item() for step in steps] for name in ("loss", "d_loss"))
    assert sum(elbo[-10:]) < 0.5 * sum(elbo[:10]), elbo
    assert min(d_loss) < 1.5 < d_loss[0], d_loss   # 2 where D cannot tell them apart, until G catches up
    assert all(step["adversarial_weight"] > 0 for step in steps)


def test_pm_keeps_the_negative_elbo_small_or_on_request_its_discriminators_score():
    images, labels = torch.rand(4, 3, 16, 16) * 2 - 1, torch.full((4,), 2)
    torch.manual_seed(0)
    model = VAEGAN(tiny_config(), num_categories=3)
    designer = Designer(DVBPR(CNNF(32, fc_width=64), 4, k=8), model)
    torch.testing.assert_close(designer.realism_loss(images, 2), VAE.realism_loss(model, images, labels))
    designer.choose_realism("discriminator")
    torch.testing.assert_close(designer.realism_loss(images, 2), -model.discriminator(images, labels))
    designer.choose_realism(None)
    torch.testing.assert_close(designer.realism_loss(images, 2), VAE.realism_loss(model, images, labels))
    vae_designer = Designer(DVBPR(CNNF(32, fc_width=64), 4, k=8), VAE(tiny_config(generator="vae"), 3))
    with pytest.raises(ConfigError, match=r"^--realism-term discriminator: this VAE generator offers elbo, full-elbo$"):
        vae_designer.choose_realism("discriminator")


def test_prior_fakes_put_decoded_samples_of_the_prior_before_d_and_train_the_decoder_on_them():
    labels = torch.arange(16) % 3
    real = flat_colours(labels)
    z = torch.randn(16, 8)
    decoders, seen = {}, {}
    for every in (None, 1, 4):   # no prior fakes, one per item, one per four items
        torch.manual_seed(0)
        model = VAEGAN(tiny_config(ex_post_prior=True) if every is None else
                       tiny_config(prior_fakes=True, prior_fakes_every=every, ex_post_prior=True), num_categories=3)
        sizes = seen.setdefault(every, [])
        model.discriminator.register_forward_hook(lambda net, inputs, output, sizes=sizes: sizes.append(len(inputs[0])))
        nets = {name: getattr(model, name).train() for name in model.nets}
        torch.manual_seed(1)
        model.train_step(nets, model.optimizers(tiny_config(), "cpu"), real, labels, z)
        decoders[every] = torch.cat([p.detach().flatten() for p in model.decoder.parameters()])
    # D's step on real items and fakes, then G's on the fakes
    assert seen == {None: [32, 16], 1: [48, 32], 4: [36, 20]}
    assert not torch.equal(decoders[None], decoders[1]) and not torch.equal(decoders[1], decoders[4])
    for flags, message in ((dict(prior_fakes_every=2), "--prior-fakes-every sets how many prior fakes D sees: give "
                                                       "--prior-fakes too"),
                           (dict(prior_fakes=True, prior_fakes_every=17), "--prior-fakes-every is from 1 to the batch "
                                                                         "size 16, got 17")):
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            check_config(tiny_config(**flags))
