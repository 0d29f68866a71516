import dataclasses
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from common.checkpoint import load_checkpoint, save_checkpoint
from common.classifier import load_classifier, split_items, train_or_load_classifier
from common.cli import parse_config, settle
from common.data import load_dataset
from common.errors import CheckpointError, ConfigError, RunError
from common.images import ImageStore, image_cache, image_store
from common.runlog import RunLog
from gan.config import PRESETS, GANConfig, demo_settings, embedded_demo
from gan.config import check_config as check_gan_config
from gan.consistency import condition_consistency
from gan.main import main
from gan.model import Discriminator, Generator, SameConv, SameDeconv, build_gan, build_optimizers, train_step
from gan.run import open_gan_run
from gan.sample import write_beside_real, write_category_grids
from gan.train import GANTraining, labelled_items, training_batch
from gan.train import train as train_gan

CPU = torch.device("cpu")


def count(module):
    return sum(p.numel() for p in module.parameters())


def preset(name, **overrides):
    return dataclasses.replace(GANConfig(), **{**PRESETS[name], **overrides})


def tiny_config(**overrides):
    settings = dict(image_size=32, g_width=4, d_width=4, batch_size=16, epochs=1, sample_every=5,
                    checkpoint_every=5, consistency_samples=4)
    return dataclasses.replace(GANConfig(), **{**settings, **overrides})


@pytest.fixture(scope="module")
def tiny_dataset(catalogue):
    return load_dataset(catalogue())


def train(cfg, dataset, out):
    return train_gan(dataclasses.replace(cfg, dataset=str(dataset.path), out=str(out)))


@pytest.fixture(scope="module")
def classifier_path(tiny_dataset, tmp_path_factory):
    """A category classifier trained once (briefly) and copied into each run directory, so training loads it."""
    path = tmp_path_factory.mktemp("classifier") / "classifier.pt"
    train_or_load_classifier(tiny_dataset, image_store(tiny_dataset, 32), path, epochs=1, min_steps=60)
    return path


def run_dir(tmp_path, classifier_path, name="run"):
    (tmp_path / name).mkdir()
    shutil.copy(classifier_path, tmp_path / name / "classifier.pt")
    return tmp_path / name


# ----------------------------------------------------------------------------- architecture

def test_original_preset_has_the_original_parameter_counts():
    cfg = preset("original")
    generator, discriminator = build_gan(cfg, num_categories=6, device=CPU)
    assert count(generator) == 3_811_075
    assert count(discriminator) == 4_460_545


def test_paper_preset_is_one_stage_deeper_with_the_documented_counts():
    paper, original = preset("paper"), preset("original")
    generator, discriminator = build_gan(paper, num_categories=6, device=CPU)
    assert (paper.image_size, paper.z_dim, paper.z_distribution, paper.batch_size) == (128, 100, "uniform", 64)
    assert count(generator) == 3_189_763 and count(discriminator) == 4_514_305
    shallow_g, shallow_d = build_gan(original, num_categories=6, device=CPU)
    assert len(generator.deconvs) == len(shallow_g.deconvs) + 1
    assert len(discriminator.convs) == len(shallow_d.convs) + 1


@pytest.mark.parametrize("name", ["original", "paper"])
def test_shapes_of_both_presets_at_a_tiny_width(name):
    cfg = preset(name, g_width=2, d_width=2)
    generator, discriminator = build_gan(cfg, num_categories=6, device=CPU)
    z, labels = torch.randn(3, cfg.z_dim), torch.tensor([0, 3, 5])
    images = generator(z, labels)
    assert images.shape == (3, 3, cfg.image_size, cfg.image_size)
    assert images.abs().max() <= 1
    assert discriminator(images, labels).shape == (3,)


def test_image_size_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        Generator(image_size=48, width=2)
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(image_size=8, width=2)


def tf_same_conv(x, weight, bias, stride=2):
    """TensorFlow's SAME conv written out: pad_total = (ceil(H/s) - 1) * s + k - H, the smaller half before."""
    _, _, height, _ = x.shape
    k = weight.shape[-1]
    out_size = -(-height // stride)
    pad_before = ((out_size - 1) * stride + k - height) // 2
    out = np.zeros((x.shape[0], weight.shape[0], out_size, out_size))
    for i in range(out_size):
        for j in range(out_size):
            for kh in range(k):
                for kw in range(k):
                    row, col = i * stride + kh - pad_before, j * stride + kw - pad_before
                    if 0 <= row < height and 0 <= col < height:
                        out[:, :, i, j] += x[:, :, row, col] @ weight[:, :, kh, kw].T
    return out + bias[None, :, None, None]


def test_same_conv_matches_tensorflow_same_padding():
    torch.manual_seed(0)
    conv = SameConv(2, 3)
    x = torch.randn(2, 2, 8, 8)
    expected = tf_same_conv(x.numpy(), conv.weight.detach().numpy(), conv.bias.detach().numpy())
    got = conv(x).detach().numpy()
    assert got.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    symmetric = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=2).detach().numpy()
    assert not np.allclose(symmetric, expected, atol=1e-3)  # PyTorch's padding=2 is shifted by one pixel


@pytest.mark.parametrize("stride", [1, 2])
def test_same_deconv_is_the_transpose_of_tensorflow_same_conv(stride):
    """TF defines conv2d_transpose(SAME) as the gradient of conv2d(SAME): <conv(u), v> == <u, deconv(v)>."""
    torch.manual_seed(0)
    deconv = SameDeconv(3, 2, stride)
    nn_weight = deconv.weight.detach()               # [in, out, 3, 3] = the conv's [out, in, 3, 3]
    v = torch.randn(2, 3, 5, 5)
    u = torch.randn(2, 2, 5 * stride, 5 * stride)
    conv_u = torch.from_numpy(tf_same_conv(u.double().numpy(), nn_weight.double().numpy(), np.zeros(3), stride))
    deconv_v = deconv(v) - deconv.bias.detach()[None, :, None, None]
    assert deconv_v.shape == u.shape
    torch.testing.assert_close((conv_u * v.double()).sum(), (u.double() * deconv_v.double()).sum(),
                               rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- training

def tiny_nets(num_categories=6):
    torch.manual_seed(0)
    cfg = tiny_config()
    generator, discriminator = build_gan(cfg, num_categories, CPU)
    return cfg, generator, discriminator


def test_one_training_step_gives_finite_losses_and_moves_both_nets():
    cfg, generator, discriminator = tiny_nets()
    opt_g, opt_d = build_optimizers(cfg, generator, discriminator, CPU)
    before = [p.detach().clone() for p in [*generator.parameters(), *discriminator.parameters()]]
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    losses = train_step(generator, discriminator, opt_g, opt_d, real, torch.arange(8) % 6, torch.randn(8, cfg.z_dim))
    assert all(torch.isfinite(value) for value in losses.values())
    moved_g = [not torch.equal(a, b) for a, b in zip(before, generator.parameters())]
    moved_d = [not torch.equal(a, b) for a, b in zip(before[len(moved_g):], discriminator.parameters())]
    assert all(moved_g) and all(moved_d)
    assert all(p.requires_grad for p in discriminator.parameters())


def test_conditioning_changes_both_nets_outputs():
    """Permuted labels (same batch statistics, since BN would cancel a label shared by the whole batch)."""
    cfg, generator, discriminator = tiny_nets()
    z = torch.randn(6, cfg.z_dim)
    labels, permuted = torch.arange(6), (torch.arange(6) + 1) % 6
    with torch.no_grad():
        images, other_images = generator(z, labels), generator(z, permuted)
        assert ((images - other_images).abs().flatten(1).mean(1) > 1e-3).all()
        scores, other_scores = discriminator(images, labels), discriminator(images, permuted)
        assert ((scores - other_scores).abs() > 1e-6).all()


def test_training_writes_grids_log_and_a_checkpoint_and_sampling_writes_one_grid_per_category(
        tiny_dataset, classifier_path, tmp_path, capsys):
    tmp_path = run_dir(tmp_path, classifier_path)
    cfg = tiny_config(epochs=4, sample_every=25)  # enough steps for BN's running statistics to settle
    consistency = train(cfg, tiny_dataset, tmp_path)
    iterations = cfg.epochs * (len(labelled_items(tiny_dataset)) // cfg.batch_size)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["step"] == iterations and checkpoint["stage"] == "gan"
    assert set(checkpoint["model"]) == set(checkpoint["optimizer"]) == {"generator", "discriminator"}
    assert checkpoint["metrics"]["condition_consistency"] == consistency
    assert len(consistency["per_category"]) == 6
    train_grids = sorted((tmp_path / "samples").glob("train_*.png"))
    assert len(train_grids) == len(range(cfg.sample_every, iterations + 1, cfg.sample_every)) + (
        iterations % cfg.sample_every != 0)
    losses = [r for r in RunLog(tmp_path, resume=True).records() if "g_loss" in r]
    assert losses and all(np.isfinite(r["d_loss"]) and np.isfinite(r["g_loss"]) for r in losses)

    paths = write_category_grids(tmp_path, CPU)
    assert [p.name for p in paths] == [f"test_arange_{c}.png" for c in range(6)] + ["beside_real.png"]
    grids = [np.asarray(Image.open(p)) for p in paths]
    assert grids[0].shape == (4 * 32 + 5 * 2, 4 * 32 + 5 * 2, 3)
    assert not np.array_equal(grids[0], grids[5])
    tile = 96 + 14 + 4   # captioned tiles: upscaled to 96 px, a caption line, padding
    assert grids[6].shape == (6 * tile + 4, 12 * (96 + 4) + 4, 3)   # a row per category: 6 samples, then 6 real

    moved = open_gan_run(tmp_path)
    moved.config = dataclasses.replace(moved.config, dataset=str(tmp_path / "elsewhere.npy"))
    assert write_beside_real(moved, CPU, False, 0) is None   # a run whose dataset is not here: the grids alone
    assert "no samples/beside_real.png: the run's dataset" in capsys.readouterr().out


def test_resume_continues_the_iteration_count_and_the_same_run(tiny_dataset, classifier_path, tmp_path):
    iterations = len(labelled_items(tiny_dataset)) // 16
    straight_dir, resumed_dir = run_dir(tmp_path, classifier_path, "straight"), run_dir(tmp_path, classifier_path)
    train(tiny_config(epochs=2), tiny_dataset, straight_dir)
    train(tiny_config(epochs=1), tiny_dataset, resumed_dir)
    train(tiny_config(epochs=2, resume=True), tiny_dataset, resumed_dir)
    straight = load_checkpoint(straight_dir / "checkpoint.pt")
    resumed = load_checkpoint(resumed_dir / "checkpoint.pt")
    assert resumed["step"] == straight["step"] == 2 * iterations
    steps = [r["step"] for r in RunLog(resumed_dir, resume=True).records() if "g_loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 2 * iterations and max(steps) > iterations
    for net in ("generator", "discriminator"):
        for name, weight in straight["model"][net].items():
            torch.testing.assert_close(resumed["model"][net][name], weight, msg=f"{net} {name}")


def test_resume_refuses_a_different_architecture(tiny_dataset, classifier_path, tmp_path):
    tmp_path = run_dir(tmp_path, classifier_path)
    train(tiny_config(epochs=1, batch_size=64), tiny_dataset, tmp_path)
    with pytest.raises(ConfigError, match="image_size"):
        train(tiny_config(image_size=16, resume=True), tiny_dataset, tmp_path)


def test_sampling_without_a_trained_model_says_how_to_train(tmp_path):
    with pytest.raises(RunError, match="gan/main.py --train"):
        write_category_grids(tmp_path, CPU)


def test_a_checkpoint_of_another_stage_is_refused_naming_both(tmp_path):
    save_checkpoint(tmp_path / "checkpoint.pt", {"stage": "dvbpr", "config": {}})
    with pytest.raises(SystemExit, match="gan: .*written by the 'dvbpr' stage, not by 'gan'"):
        main(["--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="gan: .*written by the 'dvbpr' stage, not by 'gan'"):
        main(["--train", "--resume", "--out", str(tmp_path)])
    save_checkpoint(tmp_path / "checkpoint.pt", {"stage": "gan", "config": {}})
    incomplete = "lacks model, num_categories, step, metrics: not a complete gan checkpoint"
    with pytest.raises(CheckpointError, match=incomplete):
        open_gan_run(tmp_path)
    save_checkpoint(tmp_path / "checkpoint.pt", {"stage": "gan", "config": {"image_size": 32, "extra": 1},
                                                 "model": {}, "num_categories": 6, "step": 1, "metrics": {}})
    with pytest.raises(CheckpointError, match="does not know: extra"):
        open_gan_run(tmp_path)


@pytest.mark.parametrize("flag", ["--batch-size", "--g-width", "--image-size", "--epochs"])
def test_bad_sizes_are_refused_before_any_data_is_read(flag, tmp_path):
    value = "-1" if flag == "--epochs" else "0"
    with pytest.raises(SystemExit, match=f"gan: {flag} must be at least 1, got {value}"):
        main(["--train", "--dataset", str(tmp_path / "absent.npy"), "--out", str(tmp_path), flag, value])


def test_items_without_a_category_are_left_out_and_none_at_all_is_an_error(tiny_dataset):
    category = tiny_dataset.item_category.copy()
    category[:10] = -1
    partly = dataclasses.replace(tiny_dataset, item_category=category)
    assert labelled_items(partly).tolist() == list(range(10, tiny_dataset.itemnum))
    unlabelled = dataclasses.replace(tiny_dataset, item_category=np.full_like(category, -1), num_categories=0)
    with pytest.raises(ValueError, match="category"):
        labelled_items(unlabelled)


# ----------------------------------------------------------------------------- the category classifier

def test_the_classifier_learns_the_categories(tiny_dataset, classifier_path):
    classifier = load_classifier(load_checkpoint(classifier_path))
    store = image_store(tiny_dataset, 32, device=CPU)
    _, held_out = split_items(tiny_dataset.item_category)
    probs = classifier.predict_proba(store(held_out))
    torch.testing.assert_close(probs.sum(1), torch.ones(len(held_out)))
    accuracy = (probs.argmax(1) == torch.as_tensor(tiny_dataset.item_category[held_out])).float().mean()
    assert accuracy > 0.6  # chance is 1/6
    assert classifier.predict_proba(F.interpolate(store(held_out), size=64)).shape == (len(held_out), 6)


def test_a_trained_classifier_is_loaded_not_trained_again(tiny_dataset, classifier_path):
    stamp = classifier_path.stat().st_mtime_ns
    loaded = train_or_load_classifier(tiny_dataset, image_store(tiny_dataset, 32), classifier_path)
    assert classifier_path.stat().st_mtime_ns == stamp
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    expected = load_classifier(load_checkpoint(classifier_path)).predict_proba(images)
    torch.testing.assert_close(loaded.predict_proba(images), expected)


def test_a_classifier_of_another_seed_is_trained_not_loaded_from_a_file_of_seed_0(tiny_dataset, classifier_path,
                                                                                 tmp_path):
    path = tmp_path / "classifier.pt"
    shutil.copy(classifier_path, path)
    other = train_or_load_classifier(tiny_dataset, image_store(tiny_dataset, 32), path, seed=1, epochs=1, min_steps=5)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    first = load_classifier(load_checkpoint(classifier_path)).predict_proba(images)
    assert not torch.allclose(other.predict_proba(images), first)
    again = train_or_load_classifier(tiny_dataset, image_store(tiny_dataset, 32), path, seed=1)
    assert again.state_dict().keys() == other.state_dict().keys()
    torch.testing.assert_close(again.predict_proba(images), other.predict_proba(images))   # loaded, as seed 1's


def test_a_classifier_learns_the_images_as_its_store_resized_them(tiny_dataset, classifier_path, tmp_path):
    path = tmp_path / "classifier.pt"
    shutil.copy(classifier_path, path)   # trained on the nearest filter's images
    bilinear = train_or_load_classifier(tiny_dataset, image_store(tiny_dataset, 32, "bilinear"), path, epochs=1,
                                        min_steps=5)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    nearest = load_classifier(load_checkpoint(classifier_path)).predict_proba(images)
    assert not torch.allclose(bilinear.predict_proba(images), nearest)   # trained anew, not lent the nearest one's
    with pytest.raises(ValueError, match="resize filter"):
        train_or_load_classifier(tiny_dataset, ImageStore(image_cache(tiny_dataset, 32), CPU), path)


def test_condition_consistency_on_a_hand_made_case():
    probs = torch.tensor([[0.9, 0.1, 0.0],   # conditioned on 0, looks like 0
                          [0.2, 0.7, 0.1],   # conditioned on 0, looks like 1
                          [0.1, 0.8, 0.1],   # conditioned on 1, looks like 1
                          [0.3, 0.3, 0.4],   # conditioned on 1, looks like 2
                          [0.0, 0.4, 0.6],   # conditioned on 1, looks like 2
                          [0.1, 0.1, 0.8]])  # conditioned on 2, looks like 2
    result = condition_consistency(probs, torch.tensor([0, 0, 1, 1, 1, 2]), num_categories=4)
    assert result["per_category"][:3] == pytest.approx([1 / 2, 1 / 3, 1])
    assert result["per_category"][3] is None
    assert result["overall"] == pytest.approx(3 / 6)


def test_the_embedded_demo_trains_the_sngan_unless_the_lsgan_is_typed(tmp_path):
    def settled(argv):
        cfg, protected = parse_config(GANConfig, argv, PRESETS)
        return settle(cfg, protected, "gan", embedded_demo, say=lambda line: None, embedded=True)

    demo = settled([])
    assert (demo.generator, demo.diffaugment, demo.beta1, demo.epochs, demo.image_size) == ("sngan", False, 0.0, 30, 32)
    for argv in (["--generator", "lsgan"], ["--preset", "paper"]):   # the LSGAN's demo, as before the sngan's
        lsgan = settled(argv)
        assert (lsgan.generator, lsgan.beta1, lsgan.beta2, lsgan.epochs, lsgan.image_size) == \
            ("lsgan", 0.5, 0.99, 8, 32)
    vae = settled(["--generator", "vae"])   # its mixture of the ex-post prior, gone with the prior itself
    assert (vae.ex_post_prior, vae.ex_post_components, vae.epochs) == (True, 10, 39)
    plain = settled(["--generator", "vae", "--no-ex-post-prior"])
    assert (plain.ex_post_prior, plain.ex_post_components) == (False, 0)
    assert settled(["--generator", "vae", "--ex-post-components", "0"]).ex_post_components == 0
    kept = settled(["--generator", "sngan", "--diffaugment", "--epochs", "3"])   # typed flags win over the demo's
    assert (kept.diffaugment, kept.beta1, kept.epochs) == (True, 0.0, 3)
    for size, epochs in ((64, 120), (128, 80)):   # the GPU presets: none of their settings yields to the demo's
        gpu = settled(["--preset", f"gpu-{size}"])
        assert (gpu.generator, gpu.image_size, gpu.g_width, gpu.d_width, gpu.batch_size, gpu.epochs) == \
            ("lsgan", size, 64, 64, 64, epochs)
    assert (preset("paper").generator, preset("original").generator) == ("lsgan", "lsgan")
    assert preset("demo") == dataclasses.replace(GANConfig(), **demo_settings("sngan"))


def test_the_learning_rate_is_constant_unless_it_decays_after_its_epoch_to_lr_over_the_iterations_left():
    constant = GANTraining(tiny_config(epochs=3, lr=2e-4), 6, CPU, 10)
    assert {constant.learning_rate(step) for step in range(1, 31)} == {2e-4}
    decaying = GANTraining(tiny_config(epochs=3, lr=2e-4, lr_decay_from=1), 6, CPU, 10)
    rates = np.array([decaying.learning_rate(step) for step in range(1, 31)])
    assert (rates[:11] == 2e-4).all()                       # through the first step after epoch 1's end
    np.testing.assert_allclose(rates[10:], 2e-4 * np.arange(20, 0, -1) / 20)   # then linearly to lr / 20
    with pytest.raises(ConfigError, match=r"^--lr-decay-from is an epoch before the last \(3\), got 3$"):
        check_gan_config(tiny_config(epochs=3, lr_decay_from=3))


def test_a_decaying_run_trains_as_a_constant_one_until_its_epoch_and_differently_after(tiny_dataset):
    store = image_store(tiny_dataset, 32, "nearest", device=CPU)
    items, labels = labelled_items(tiny_dataset), torch.as_tensor(tiny_dataset.item_category)
    per_epoch = len(items) // 16
    runs = []
    for decay in (None, 1):
        cfg = tiny_config(generator="sngan", epochs=2, lr=2e-4, lr_decay_from=decay)
        torch.manual_seed(0)
        run = GANTraining(cfg, tiny_dataset.num_categories, CPU, per_epoch)
        nets = {name: getattr(run.model, name).train() for name in run.model.nets}
        weights = []
        for step in range(1, 2 * per_epoch + 1):
            ids, z = training_batch(cfg, items, step)
            run.train_step(nets, store(ids), labels[ids], z, step)
            if step in (per_epoch + 1, 2 * per_epoch):
                weights.append(torch.cat([p.detach().flatten().clone() for p in run.model.generator.parameters()]))
        runs.append(weights)
    assert torch.equal(runs[0][0], runs[1][0])        # the same nets at the first step of the decay (its rate is lr)
    assert not torch.allclose(runs[0][1], runs[1][1])  # and others at the end
    assert run.optimizers["generator"].param_groups[0]["lr"] == pytest.approx(2e-4 / per_epoch)


def test_a_run_whose_rate_decays_resumes_from_a_crash_to_the_same_weights(tiny_dataset, classifier_path, tmp_path,
                                                                          monkeypatch):
    cfg = tiny_config(epochs=2, lr_decay_from=1)   # 15 iterations an epoch; checkpoints every 5
    straight_dir, resumed_dir = run_dir(tmp_path, classifier_path, "straight"), run_dir(tmp_path, classifier_path)
    train(cfg, tiny_dataset, straight_dir)
    save = GANTraining.save

    def save_then_crash(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.step == 20:   # within the decay
            raise KeyboardInterrupt
    monkeypatch.setattr(GANTraining, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_dataset, resumed_dir)
    monkeypatch.setattr(GANTraining, "save", save)
    train(dataclasses.replace(cfg, resume=True), tiny_dataset, resumed_dir)
    straight = load_checkpoint(straight_dir / "checkpoint.pt")
    resumed = load_checkpoint(resumed_dir / "checkpoint.pt")
    for net in ("generator", "discriminator"):
        for name, weight in straight["model"][net].items():
            torch.testing.assert_close(resumed["model"][net][name], weight, msg=f"{net} {name}")
