"""The spectrally normalised projection GAN (gan/sngan.py): registry round trip, spectral norm, DiffAugment, the hinge
losses, and preference maximisation through it."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from common.checkpoint import load_checkpoint
from common.data import load_dataset
from common.errors import ConfigError
from dvbpr.cnnf import CNNF
from dvbpr.model import DVBPR
from gan.config import GANConfig, check_config
from gan.generators import build_generator
from gan.run import open_gan_run
from gan.sngan import SNGAN, YCBCR_TO_RGB, cutout, diff_augment, mode_seeking_loss, translate
from gan.train import check_architecture
from gan.train import train as train_gan
from pm.design import Designer
from tests.helpers import place_random_classifier


def tiny_config(**overrides):
    settings = dict(generator="sngan", image_size=16, z_dim=8, g_width=4, d_width=4, batch_size=16, lr=2e-4,
                    beta1=0.0, beta2=0.9, consistency_samples=4, device="cpu")
    return dataclasses.replace(GANConfig(), **{**settings, **overrides})


def tiny_sngan(**overrides):
    torch.manual_seed(0)
    return SNGAN(tiny_config(**overrides), num_categories=3)


def tiny_dvbpr(usernum):
    torch.manual_seed(0)
    return DVBPR(CNNF(32, fc_width=64), usernum, k=8)


def spectral_norms(discriminator):
    """Largest singular value of each spectrally normalised weight, as a matrix [out, in * k * k]."""
    return [torch.linalg.matrix_norm(module.weight.flatten(1), ord=2).item()
            for module in discriminator.modules() if hasattr(module, "parametrizations")]


@pytest.mark.parametrize("half_chroma", [False, True])
def test_the_sngan_trains_through_the_registry_and_reopens_with_the_same_outputs(catalogue, tmp_path, half_chroma):
    path = catalogue()
    place_random_classifier(tmp_path, load_dataset(path), 16)
    cfg = tiny_config(dataset=str(path), out=str(tmp_path), epochs=2, half_chroma=half_chroma)
    train_gan(cfg)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt", "gan")
    assert set(checkpoint["model"]) == set(checkpoint["optimizer"]) == {"generator", "discriminator"}
    trained = SNGAN(cfg, num_categories=6)
    untrained_images = trained.eval()(torch.zeros(2, 8), torch.tensor([0, 1]))
    for name in trained.nets:
        getattr(trained, name).load_state_dict(checkpoint["model"][name])

    run = open_gan_run(tmp_path)
    assert isinstance(run.model, SNGAN) and run.config.generator == "sngan" and run.step == checkpoint["step"] > 0
    assert run.config.half_chroma == half_chroma
    z, labels = run.model.sample_z(6, rng=torch.Generator().manual_seed(0)), torch.arange(6)
    images = run.model(z, labels)
    assert torch.equal(images, trained(z, labels)) and not torch.equal(images[:2], untrained_images)
    assert torch.equal(run.model.realism_loss(images, labels), -trained.discriminator(images, labels))


def test_the_averaged_generator_follows_weights_and_batch_norm_statistics_and_sampling_reads_it():
    model = tiny_sngan(ema=0.9)
    real, labels = torch.rand(16, 3, 16, 16) * 2 - 1, torch.arange(16) % 3
    z = model.sample_z(16, rng=torch.Generator().manual_seed(1))
    weights, means = [], []
    for _ in range(3):
        steps(model, real, labels, z, 1, frozen="discriminator")
        weights.append(model.generator.to_rgb.weight.detach().clone())
        means.append(model.generator.bn0.bn.running_mean.clone())
    # the first update copies; the n-th after it keeps min(0.9, (1 + n) / (10 + n)) of the average
    average, mean = weights[0], means[0]
    for updates in (1, 2):
        kept = min(0.9, (1 + updates) / (10 + updates))
        average = kept * average + (1 - kept) * weights[updates]
        mean = kept * mean + (1 - kept) * means[updates]
    averaged = model.ema_generator.module
    torch.testing.assert_close(averaged.to_rgb.weight, average)
    torch.testing.assert_close(averaged.bn0.bn.running_mean, mean)
    assert not torch.equal(average, weights[2])
    assert averaged.bn0.bn.num_batches_tracked == model.generator.bn0.bn.num_batches_tracked == 3
    with torch.no_grad():   # sampling reads the average; D and G's training the last weights
        images = model.eval()(z[:2], labels[:2])
        assert torch.equal(images, averaged.eval()(z[:2], labels[:2]))
        assert not torch.equal(images, model.generator.eval()(z[:2], labels[:2]))


def test_an_averaged_sngan_run_saves_both_generators_and_reopens_sampling_the_average(catalogue, tmp_path):
    path = catalogue()
    place_random_classifier(tmp_path, load_dataset(path), 16)
    cfg = tiny_config(dataset=str(path), out=str(tmp_path), epochs=2, ema=0.99)
    train_gan(cfg)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt", "gan")
    assert set(checkpoint["model"]) == {"generator", "discriminator", "ema_generator"}
    assert set(checkpoint["optimizer"]) == {"generator", "discriminator"}
    averaged = SNGAN(tiny_config(), num_categories=6).eval()
    averaged.generator.load_state_dict({name.removeprefix("module."): weight for name, weight
                                        in checkpoint["model"]["ema_generator"].items() if name != "n_averaged"})
    run = open_gan_run(tmp_path)
    z, labels = run.model.sample_z(2, rng=torch.Generator().manual_seed(0)), torch.tensor([0, 5])
    assert torch.equal(run.model(z, labels), averaged(z, labels))
    last = SNGAN(tiny_config(), num_categories=6).eval()
    last.generator.load_state_dict(checkpoint["model"]["generator"])
    assert not torch.equal(run.model(z, labels), last(z, labels))


def test_spectral_norm_keeps_each_layers_largest_singular_value_near_one():
    discriminator = tiny_sngan().discriminator
    with torch.no_grad():
        for module in discriminator.modules():
            if hasattr(module, "parametrizations"):
                module.parametrizations.weight.original.mul_(10)
        for _ in range(30):   # each forward pass in training mode is one power iteration
            discriminator(torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 0]))
    norms = spectral_norms(discriminator)
    assert len(norms) == 5     # two strided convs, the last conv, the linear layer and the projection's embedding
    assert all(abs(norm - 1) < 0.05 for norm in norms), norms
    originals = [torch.linalg.matrix_norm(module.parametrizations.weight.original.flatten(1), ord=2).item()
                 for module in discriminator.modules() if hasattr(module, "parametrizations")]
    assert min(originals) > 2


def test_diffaugment_keeps_the_shape_changes_the_images_and_passes_gradients():
    torch.manual_seed(0)
    x = (torch.rand(8, 3, 32, 32) * 2 - 1).requires_grad_(True)
    augmented = diff_augment(x)
    assert augmented.shape == x.shape and (augmented - x).abs().mean() > 0.1
    augmented.square().sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).float().mean() > 0.5


def test_translation_shifts_by_at_most_an_eighth_and_cutout_erases_one_square():
    torch.manual_seed(0)
    ones = torch.ones(64, 1, 32, 32)
    shifted = translate(ones)
    assert torch.equal(shifted[:, :, 4:28, 4:28], ones[:, :, 4:28, 4:28])   # shifts of at most 4 pixels
    assert (shifted == 0).any()
    erased = (cutout(ones) == 0).flatten(1).sum(1)
    assert erased.min() >= 8 * 8 and erased.max() <= 16 * 16 and erased.float().mean() > 150


def steps(model, real, labels, z, count, frozen):
    """`count` training steps with the `frozen` net's learning rate at zero; the losses of each step."""
    optimizers = model.optimizers(tiny_config(lr=2e-3), "cpu")
    optimizers[frozen].param_groups[0]["lr"] = 0.0
    nets = {name: getattr(model, name).train() for name in model.nets}
    return [model.train_step(nets, optimizers, real, labels, z) for _ in range(count)]


def test_training_d_alone_lowers_its_hinge_loss_and_training_g_alone_raises_d_on_the_fakes():
    model = tiny_sngan(diffaugment=False)
    real = torch.rand(16, 3, 16, 16) * 2 - 1
    labels, z = torch.arange(16) % 3, model.sample_z(16, rng=torch.Generator().manual_seed(1))
    d_losses = [losses["d_loss"].item() for losses in steps(model, real, labels, z, 30, frozen="generator")]
    assert d_losses[-1] < 0.5 * d_losses[0]
    with torch.no_grad():
        fake = model.generator(z, labels)
        assert model.realism_loss(real, labels).mean() < model.realism_loss(fake, labels).mean()

    g_losses = [losses["g_loss"].item() for losses in steps(model, real, labels, z, 30, frozen="discriminator")]
    assert g_losses[-1] < g_losses[0] - 0.1     # G moves its fakes towards what D scores as real


@pytest.mark.parametrize("generator", ["lsgan", "sngan", "diffusion"])
def test_channels_last_lays_out_every_generators_nets_so_on_the_cpu_only_when_asked(generator):
    for channels_last in (False, True):
        model = build_generator(tiny_config(generator=generator, channels_last=channels_last), 3)
        kernels = [p for name in model.nets for p in getattr(model, name).parameters()
                   if p.dim() == 4 and p.shape[2] > 1]   # a 1x1 kernel is laid out both ways at once
        assert all(p.is_contiguous(memory_format=torch.channels_last) == channels_last for p in kernels)


def test_the_sngan_in_channels_last_on_the_cpu_computes_what_it_computes_as_built():
    """--channels-last is a speed choice alone (bench/gan_throughput.py): the same steps' losses and weights, to float
    rounding (docs/design_half.md, "A faster layout, measured")."""
    fast, plain = tiny_sngan(diffaugment=False, channels_last=True), tiny_sngan(diffaugment=False)
    real = torch.rand(16, 3, 16, 16) * 2 - 1
    labels, z = torch.arange(16) % 3, fast.sample_z(16, rng=torch.Generator().manual_seed(1))
    fast_losses, plain_losses = (steps(model, real, labels, z, 3, frozen="generator")[-1] for model in (fast, plain))
    for name in fast_losses:
        assert torch.allclose(fast_losses[name], plain_losses[name], rtol=1e-4, atol=1e-5), name
    for (name, fast_weight), plain_weight in zip(fast.state_dict().items(), plain.state_dict().values()):
        assert torch.allclose(fast_weight, plain_weight, rtol=1e-4, atol=1e-5), name


def test_preference_maximisation_designs_through_the_sngan_in_the_tanh_box():
    model = tiny_sngan()
    designer = Designer(tiny_dvbpr(usernum=4), model)
    designer.check_latent("tanh")
    design = designer.synthesise(1, 2, starts=4, steps=20, lr=0.1, eta=0.1, init="prior", latent="tanh",
                                 rng=torch.Generator().manual_seed(0), record=lambda step: step == 0)
    assert design.objective.mean() > design.history[0].objective.mean()
    assert design.z.abs().max() <= 1
    labels = torch.full((4,), 2)
    torch.testing.assert_close(design.realism, -model.discriminator(design.images, labels))
    assert design.images.shape == (4, 3, 16, 16)


@pytest.mark.parametrize("size", [16, 64])
def test_other_sizes_add_or_drop_stages(size):
    model = SNGAN(tiny_config(image_size=size), num_categories=3).eval()
    images = model(torch.zeros(2, 8), torch.tensor([0, 2]))
    assert images.shape == (2, 3, size, size) and model.realism_loss(images, torch.tensor([0, 2])).shape == (2,)



def test_the_diffaugment_flag_decides_whether_d_sees_augmented_images():
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    augmented = tiny_sngan(diffaugment=True).augment
    assert not torch.equal(augmented(images), augmented(images))
    assert torch.equal(tiny_sngan(diffaugment=False).augment(images), images)


def test_the_class_seed_starts_at_zero_and_g_learns_a_first_layer_map_per_category():
    """At initialisation the batch norms' per-category scales and shifts are the identity and the class seed is zero,
    so one code draws the same image in every category; G's training moves the seeds of the categories it saw (and
    those alone), and then one code draws each category differently."""
    model = tiny_sngan(class_seed=True)
    z, labels = torch.rand(4, 8) * 2 - 1, torch.tensor([0, 1, 0, 1])
    first_layer_only = lambda: model.generator.eval()(z[:1].expand(3, -1), torch.arange(3))
    with torch.no_grad():
        images = first_layer_only()
    assert torch.equal(images[0], images[1]) and not model.generator.class_seed.weight.any()
    for bn in (model.generator.bn0, *model.generator.bns):   # the batch norms' path held shut
        for embedding in (bn.scale, bn.shift):
            embedding.requires_grad_(False)
    steps(model, torch.rand(4, 3, 16, 16) * 2 - 1, labels, z, 3, frozen="discriminator")
    moved = model.generator.class_seed.weight.abs().sum(dim=1)
    assert moved[0] > 0 and moved[1] > 0 and moved[2] == 0
    with torch.no_grad():
        images = first_layer_only()
    assert (images[0] - images[1]).abs().mean() > 1e-4 and tiny_sngan().generator.class_seed is None


@pytest.mark.parametrize("option", ["class_seed", "half_chroma"])
@pytest.mark.parametrize("generator", ["lsgan", "diffusion"])
def test_the_sngans_switches_are_refused_for_a_generator_that_has_none(generator, option):
    flag = "--" + option.replace("_", "-")
    with pytest.raises(ConfigError, match=f"^{flag} is read by --generator sngan; --generator {generator} has "
                                          "no use for it$"):
        build_generator(tiny_config(generator=generator, **{option: True}), 3)


def test_a_run_is_resumed_only_with_the_generators_architecture_it_was_trained_with():
    """A checkpoint saved before --half-chroma existed (no such key) reads as without it."""
    saved = {name: value for name, value in dataclasses.asdict(tiny_config()).items() if name != "half_chroma"}
    check_architecture(tiny_config(), saved)
    with pytest.raises(ConfigError, match=r"^cannot resume: the checkpoint was trained with different settings "
                                          r"\(saved, now\): half_chroma False vs True$"):
        check_architecture(tiny_config(half_chroma=True), saved)


def test_half_chroma_draws_colour_at_half_the_side_brightness_at_the_full_and_learns_both():
    """The output's chroma, read back through tanh and the YCbCr matrix, is the bilinear upsampling of a map at half
    the side; its luma has detail that no such map gives; a step of G moves both heads."""
    model = tiny_sngan(half_chroma=True, diffaugment=False)
    generator = model.generator.eval()
    captured = []
    generator.to_chroma.register_forward_hook(lambda module, inputs, output: captured.append(output))
    z, labels = torch.rand(4, 8) * 2 - 1, torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        images = generator(z, labels)
    assert images.shape == (4, 3, 16, 16) and captured[0].shape == (4, 2, 8, 8)
    ycbcr = torch.einsum("cr,brhw->bchw", torch.linalg.inv(YCBCR_TO_RGB), torch.atanh(images.double()).float())
    upsampled = lambda maps: F.interpolate(maps, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(ycbcr[:, 1:], upsampled(captured[0]), rtol=1e-3, atol=1e-4)
    # every image that is such an upsampling lies in the span of the upsampled one-hot maps: the luma does not
    basis = upsampled(torch.eye(64).view(64, 1, 8, 8)).flatten(1).T.double()
    def off_span(maps):
        pixels = maps.reshape(-1, 256).T.double()
        return (basis @ torch.linalg.lstsq(basis, pixels).solution - pixels).norm()
    assert off_span(ycbcr[:, :1]) > 1000 * off_span(ycbcr[:, 1:]) and off_span(ycbcr[:, :1]) > 1e-3
    heads = {name: getattr(model.generator, name).weight.detach().clone() for name in ("to_luma", "to_chroma")}
    steps(model, torch.rand(8, 3, 16, 16) * 2 - 1, torch.arange(8) % 3, z.repeat(2, 1), 1, frozen="discriminator")
    assert all(not torch.equal(getattr(model.generator, name).weight, before) for name, before in heads.items())


def coloured_by_category(labels, size=16):
    """Images whose category shows: channel c bright for category c, the rest dark, with noise."""
    images = torch.full((len(labels), 3, size, size), -0.8) + 0.1 * torch.randn(len(labels), 3, size, size)
    images[torch.arange(len(labels)), labels] = 0.8
    return images


def test_the_auxiliary_classifier_learns_the_real_categories_and_pushes_g_to_samples_named_as_asked():
    model = tiny_sngan(diffaugment=False, aux_class_weight=1.0)
    labels = torch.arange(24) % 3
    real, z = coloured_by_category(labels), model.sample_z(24, rng=torch.Generator().manual_seed(1))
    d_class = [losses["d_loss_class"].item() for losses in steps(model, real, labels, z, 40, frozen="generator")]
    assert d_class[-1] < 0.3 * d_class[0]
    with torch.no_grad():
        _, logits = model.discriminator(coloured_by_category(labels), labels, with_logits=True)
    assert (logits.argmax(dim=1) == labels).float().mean() > 0.9     # held-out draws, chance 1/3
    g_class = [losses["g_loss_class"].item() for losses in steps(model, real, labels, z, 40, frozen="discriminator")]
    assert g_class[-1] < 0.5 * g_class[0]     # G's samples move to where D names them as the category asked


def own_label_ahead(match_weight):
    """After 40 D steps on a toy catalogue, the share of held-out (item, other label) pairs whose item D scores
    higher under its own label; and the mismatch losses of the steps (none without the weight)."""
    model = tiny_sngan(diffaugment=False, match_weight=match_weight)
    torch.manual_seed(1)
    labels = torch.arange(24) % 3
    real, z = coloured_by_category(labels), model.sample_z(24, rng=torch.Generator().manual_seed(1))
    losses = steps(model, real, labels, z, 40, frozen="generator")
    with torch.no_grad():   # held-out draws, each scored under its own label and either other one
        scores = model.discriminator(coloured_by_category(labels), torch.stack([labels, (labels + 1) % 3,
                                                                                (labels + 2) % 3], dim=1))
    return (scores[:, :1] > scores[:, 1:]).float().mean(), [step.get("d_loss_mismatch") for step in losses]


def test_the_matching_aware_d_scores_a_real_item_higher_under_its_own_label_than_under_another():
    ahead, mismatch = own_label_ahead(1.0)
    assert ahead > 0.95 and mismatch[-1] < 0.3 * mismatch[0]
    plain, none = own_label_ahead(0.0)     # the plain hinge loss leaves the projection's labels less apart
    assert plain < 0.9 and none == [None] * 40


def same_category_spread(model, labels, z):
    """Mean absolute difference between G's samples of the pairs of codes that share a category."""
    with torch.no_grad():
        fake = model.generator.eval()(z, labels)
    pairs = [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels)) if labels[i] == labels[j]]
    return torch.stack([(fake[i] - fake[j]).abs().mean() for i, j in pairs]).mean().item()


def test_the_mode_seeking_term_pairs_only_samples_of_one_category_and_falls_as_they_spread():
    torch.manual_seed(0)
    labels, z = torch.tensor([0, 0, 1, 2, 2]), torch.rand(5, 8) * 2 - 1
    fake = (0.1 * torch.randn(5, 3, 4, 4)).requires_grad_()
    loss = mode_seeking_loss(fake, z, labels)
    loss.backward()
    assert fake.grad[2].abs().max() == 0 and fake.grad[[0, 1, 3, 4]].abs().min() > 0   # 2 has no partner
    images, apart = fake.detach(), fake.detach().clone()
    for i, j in ((0, 1), (3, 4)):   # each pair twice as far apart about its middle
        middle = (images[i] + images[j]) / 2
        apart[i], apart[j] = 2 * images[i] - middle, 2 * images[j] - middle
    assert mode_seeking_loss(apart, z, labels) < 0.6 * loss
    assert mode_seeking_loss(fake, z, torch.arange(5)).item() == 0    # no two of a category


def test_g_trained_with_the_mode_seeking_term_spreads_the_codes_of_a_category_wider():
    labels = torch.arange(24) % 3
    real, z = coloured_by_category(labels), tiny_sngan().sample_z(24, rng=torch.Generator().manual_seed(1))
    spreads = {}
    for weight in (0.0, 1.0):
        model = tiny_sngan(diffaugment=False, mode_seeking_weight=weight)
        losses = steps(model, real, labels, z, 30, frozen="discriminator")
        assert ("g_loss_mode_seeking" in losses[0]) == (weight > 0)
        spreads[weight] = same_category_spread(model, labels, z)
    assert spreads[1.0] > 1.5 * spreads[0.0]


def test_without_the_weight_d_has_no_classifier_and_the_losses_are_the_hinge_alone(catalogue, tmp_path):
    model = tiny_sngan()
    labels = torch.arange(4) % 3
    losses = steps(model, torch.rand(4, 3, 16, 16) * 2 - 1, labels, model.sample_z(4), 1, frozen="generator")[0]
    assert model.discriminator.classifier is None and not {"d_loss_class", "g_loss_class", "d_loss_mismatch"} & set(
        losses)
    with pytest.raises(ConfigError, match="^--aux-class-weight is read by --generator sngan; --generator lsgan has no "
                                          "use for it$"):
        build_generator(tiny_config(generator="lsgan", aux_class_weight=1.0), 3)
    with pytest.raises(ConfigError, match=r"^--aux-class-weight must be at least 0, got -1.0$"):
        check_config(tiny_config(aux_class_weight=-1.0))
    with pytest.raises(ConfigError, match=r"^--match-weight must be at least 0, got -0.5$"):
        check_config(tiny_config(match_weight=-0.5))
    with pytest.raises(ConfigError, match=r"^--mode-seeking-weight must be at least 0, got -1.0$"):
        check_config(tiny_config(mode_seeking_weight=-1.0))
    with pytest.raises(ConfigError, match="^--mode-seeking-weight is read by --generator sngan; --generator vae has "
                                          "no use for it$"):
        build_generator(tiny_config(generator="vae", mode_seeking_weight=1.0), 3)
    with pytest.raises(ConfigError, match="^--match-weight is read by --generator sngan; --generator diffusion has "
                                          "no use for it$"):
        build_generator(tiny_config(generator="diffusion", match_weight=1.0), 3)
    path = catalogue()
    place_random_classifier(tmp_path, load_dataset(path), 16)
    train_gan(tiny_config(dataset=str(path), out=str(tmp_path), epochs=1, aux_class_weight=0.5))
    run = open_gan_run(tmp_path)   # reopened with the classifier's head, which its checkpoint holds
    assert run.model.discriminator.classifier is not None and run.config.aux_class_weight == 0.5
