"""The generator registry, the fidelity metrics (torch-fidelity), the attribute reader and the paired test."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_kid import kernel_poly

from common.catalogue.reader import reader_path, train_or_load_reader, train_reader
from common.catalogue.truth import load_truth
from common.checkpoint import load_checkpoint, save_checkpoint
from common.classifier import CategoryClassifier
from common.data import load_dataset
from common.errors import CheckpointError, ConfigError
from common.images import image_store
from dvbpr.cnnf import CNNF
from dvbpr.model import DVBPR
from gan.config import GANConfig
from gan.generators import GENERATORS
from gan.model import LSGAN, ConditionalGenerator
from gan.run import open_gan_run
from gan.train import GANTraining
from gan.train import train as train_gan
from pm.design import Designer
from pm.fidelity import (
    Fidelity,
    classifier_extractor,
    extract,
    fidelity,
    inception_extractor,
    kid_difference_test,
    reference_items,
)
from pm.judges import paired_test, percentile
from tests.helpers import place_random_classifier


class Linear(ConditionalGenerator):
    """A generator of another kind: one linear map of (z, one-hot c), no critic, an unbounded latent."""
    nets = ("generator",)
    latent_box = False

    def __init__(self, cfg, num_categories, device="cpu"):
        super().__init__()
        self.z_dim, self.image_size, self.num_categories = cfg.z_dim, cfg.image_size, num_categories
        self.generator = nn.Linear(cfg.z_dim + num_categories, 3 * cfg.image_size ** 2).to(device)

    def sample_z(self, n, device="cpu", rng=None):
        return torch.randn(n, self.z_dim, device=device, generator=rng)

    def forward(self, z, labels):
        y = F.one_hot(labels, self.num_categories).to(z.dtype)
        return torch.tanh(self.generator(torch.cat([z, y], dim=1))).view(-1, 3, self.image_size, self.image_size)

    def realism_loss(self, images, labels):
        return images.new_zeros(len(images))

    def optimizers(self, cfg, device):
        return {"generator": torch.optim.Adam(self.generator.parameters(), lr=cfg.lr)}

    def train_step(self, nets, optimizers, real, labels, z, bf16=True):
        loss = ((self(z, labels) - real) ** 2).mean()   # the mean image of its category, enough for plumbing
        optimizers["generator"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["generator"].step()
        return {"loss": loss.detach()}


def tiny_dvbpr(usernum):
    torch.manual_seed(0)
    return DVBPR(CNNF(32, fc_width=64), usernum, k=8)


def test_a_registered_generator_trains_is_opened_and_designs_through_the_interface(catalogue, tmp_path, monkeypatch):
    monkeypatch.setitem(GENERATORS, "linear", Linear)
    path = catalogue()
    dataset = load_dataset(path)
    place_random_classifier(tmp_path, dataset, 16)
    train_gan(GANConfig(generator="linear", dataset=str(path), out=str(tmp_path), image_size=16, z_dim=8,
                        batch_size=16, epochs=2, consistency_samples=4, lr=0.01, device="cpu"))
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt", "gan")
    assert set(checkpoint["model"]) == set(checkpoint["optimizer"]) == {"generator"}
    run = open_gan_run(tmp_path)
    assert isinstance(run.model, Linear) and run.config.generator == "linear"
    assert torch.equal(run.model.generator.weight, checkpoint["model"]["generator"]["weight"])

    designer = Designer(tiny_dvbpr(dataset.usernum), run.model)
    with pytest.raises(ConfigError, match="--latent sphere \\(or direct\\)"):
        designer.check_latent("tanh")
    z = designer.sample_z(6, torch.Generator().manual_seed(0))
    design = designer.synthesise(0, 1, starts=6, steps=20, lr=0.1, init="prior", latent="direct",
                                 rng=torch.Generator().manual_seed(0), record=lambda step: step == 0)
    assert torch.equal(design.history[0].objective, designer.objective(z, 0, 1, eta=1.0)[0])  # started from z
    assert design.objective.mean() > design.history[0].objective.mean()
    assert torch.equal(design.realism, torch.zeros(6))


def test_the_lsgan_round_trips_through_a_checkpoint_and_an_old_one_opens_as_lsgan(tmp_path):
    cfg = GANConfig(image_size=16, z_dim=8, g_width=8, d_width=8)
    torch.manual_seed(0)
    training = GANTraining(cfg, num_categories=3, device="cpu", iterations_per_epoch=1)
    training.save(tmp_path / "checkpoint.pt")
    z, labels = training.model.sample_z(4, rng=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0])
    expected = training.model.eval()(z, labels)
    run = open_gan_run(tmp_path)
    assert isinstance(run.model, LSGAN) and torch.equal(run.model(z, labels), expected)
    assert z.abs().max() <= 1 and run.model.latent_box

    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt", "gan")
    del checkpoint["config"]["generator"]                 # written before the registry
    save_checkpoint(tmp_path / "checkpoint.pt", checkpoint)
    assert isinstance(open_gan_run(tmp_path).model, LSGAN)
    checkpoint["config"]["generator"] = "diffusion-from-the-future"
    save_checkpoint(tmp_path / "checkpoint.pt", checkpoint)
    with pytest.raises(CheckpointError, match="setting generator is 'diffusion-from-the-future', not one of lsgan"):
        open_gan_run(tmp_path)


@pytest.fixture(scope="module")
def images_of_a_category(catalogue):
    dataset = load_dataset(catalogue())
    store = image_store(dataset, 16, device="cpu")
    items = torch.as_tensor(np.flatnonzero(dataset.item_category == 2))
    return store(items)


def test_kid_of_a_set_against_itself_is_near_zero_and_against_noise_high(images_of_a_category):
    torch.manual_seed(0)
    extractor = classifier_extractor(CategoryClassifier(16, 6).eval())
    real = extract(extractor, images_of_a_category)
    noise = extract(extractor, torch.rand_like(images_of_a_category) * 2 - 1)
    categories = torch.zeros(len(real), dtype=torch.long)
    itself = fidelity(real, categories, real, categories)
    against_noise = fidelity(noise, categories, real, categories)
    assert against_noise["kid"] > 0 and abs(itself["kid"]) < 0.02 * against_noise["kid"]
    assert abs(itself["fid"]) < 1e-3 * against_noise["fid"]
    assert itself["precision"] == itself["recall"] == 1.0 and against_noise["precision"] < 0.5


def unbiased_mmd2(x, y):
    """The unbiased MMD^2 of two feature sets under torch-fidelity's KID kernel, written out."""
    x, y = x.double().numpy(), y.double().numpy()
    xx, yy, xy = kernel_poly(x, x), kernel_poly(y, y), kernel_poly(x, y)
    within = lambda k: (k.sum() - np.trace(k)) / (len(k) * (len(k) - 1))
    return within(xx) + within(yy) - 2 * xy.mean()


def test_the_kid_test_finds_a_source_further_from_the_real_items_and_not_a_redraw():
    rng = torch.Generator().manual_seed(0)
    trials, per_trial = 30, 3
    trial_of = np.repeat(np.arange(trials), per_trial)
    trial_categories = np.arange(trials) % 3                          # each trial asks for one category
    categories = trial_categories[trial_of]
    reference, reference_categories = torch.randn(300, 16, generator=rng), torch.arange(300) % 3
    near, redraw = (torch.randn(trials * per_trial, 16, generator=rng) for _ in range(2))
    far = torch.randn(trials * per_trial, 16, generator=rng) + 0.5
    test = lambda a, b, trial_of_b=trial_of: kid_difference_test(a, trial_of, b, trial_of_b, trial_categories,
                                                                 reference, reference_categories)
    worse = test(far, near)
    by_hand = np.average([unbiased_mmd2(far[categories == c], reference[reference_categories == c])
                          - unbiased_mmd2(near[categories == c], reference[reference_categories == c])
                          for c in range(3)], weights=[(categories == c).sum() for c in range(3)])
    assert worse["kid_difference"] == pytest.approx(by_hand) and worse["kid_difference"] > 0
    assert worse["p_value"] < 0.001 and worse["trials"] == trials
    assert test(redraw, near)["p_value"] > 0.05
    itself = test(near, near.clone())
    assert abs(itself["kid_difference"]) < 1e-9 and itself["p_value"] == 1.0
    two_per_trial = np.flatnonzero(np.arange(len(near)) % per_trial < 2)   # a source returning fewer per trial
    assert test(far, near[two_per_trial], trial_of[two_per_trial])["p_value"] < 0.001
    one_trial = trial_of == 0                                           # one image of a side: nothing to estimate
    untested = kid_difference_test(far[one_trial][:1], [0], near[one_trial], trial_of[one_trial], [0], reference,
                                   reference_categories)
    assert untested["kid_difference"] is None and untested["p_value"] is None


def test_realistic_per_image_averages_to_torch_fidelitys_precision(images_of_a_category):
    torch.manual_seed(0)
    real = images_of_a_category
    store = lambda ids: real[ids]
    checker = Fidelity({"category-classifier": classifier_extractor(CategoryClassifier(16, 6).eval())}, store,
                       np.full(len(real), 3))
    blurred = F.avg_pool2d(real[:12], 3, stride=1, padding=1)   # near the real items, some inside their balls
    noisy = (real[:12] + 0.8 * torch.randn_like(real[:12])).clamp(-1, 1)
    mixed = torch.cat([blurred, noisy])
    per_image = checker.realistic(mixed, 3)
    assert set(per_image.tolist()) <= {0.0, 1.0}
    precision = checker(mixed, torch.full((len(mixed),), 3))["category-classifier"]["precision"]
    assert per_image.mean().item() == pytest.approx(precision)
    assert per_image[:12].mean() > per_image[12:].mean()
    assert checker.realistic(real[:5], 3).tolist() == [1.0] * 5            # a real item lies in its own ball
    assert torch.isnan(checker.realistic(real[:2], 0)).all()                # no real items of category 0


def test_the_fid_inception_is_read_weights_only_from_its_file(tmp_path, monkeypatch, images_of_a_category):
    with monkeypatch.context() as patched:   # a random-weight network, to have a weights file of the right layout
        patched.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.save({}, tmp_path / "empty.pth")
        network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                              feature_extractor_weights_path=str(tmp_path / "empty.pth"))
    torch.save(network.state_dict(), tmp_path / "inception.pth")
    features = extract(inception_extractor(tmp_path / "inception.pth"), images_of_a_category[:4])
    assert features.shape == (4, 2048) and torch.isfinite(features).all()

    torch.save({"not weights": Linear}, tmp_path / "pickled.pth")   # a class: only a full unpickler makes it
    with pytest.raises(ConfigError, match="is not torch-fidelity's Inception v3 weights file"):
        inception_extractor(tmp_path / "pickled.pth")
    with pytest.raises(ConfigError, match="no FID Inception weights at"):
        inception_extractor(tmp_path / "absent.pth")


def test_the_attribute_reader_beats_chance_by_a_margin_on_held_out_items(catalogue):
    path = catalogue(num_users=12, num_items=480)
    store = image_store(load_dataset(path), 16, device="cpu")
    reader, metrics = train_reader(store, load_truth(path), steps=80)
    assert metrics["category_accuracy"] > 1 / 6 + 0.4
    assert metrics["colour_accuracy"] > 1 / 8 + 0.4
    assert metrics["taste_correlation"] > 0.5
    read = reader.read(store(torch.arange(5)))
    assert read.shape == (5, 19) and torch.allclose(read[:, :6].sum(1), torch.ones(5))


def test_a_catalogues_reader_is_trained_once_beside_its_images_and_reused(catalogue, monkeypatch):
    import common.catalogue.reader as reader_module
    path = catalogue(num_users=12, num_items=300)
    dataset, truth = load_dataset(path), load_truth(path)
    store = image_store(dataset, 16, device="cpu")
    trained = []
    monkeypatch.setattr(reader_module, "train_reader", lambda store, truth: trained.append(store.size) or
                        train_reader(store, truth, steps=5))
    first, metrics = train_or_load_reader(dataset, truth, store)
    assert reader_path(dataset, 16, "nearest").is_file() and trained == [16]
    again, metrics_again = train_or_load_reader(dataset, truth, store)
    assert trained == [16] and metrics_again == metrics
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    train_or_load_reader(dataset, truth, image_store(dataset, 8, device="cpu"))   # another size: its own
    assert trained == [16, 8]


def test_the_paired_test_finds_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 30)
    shifted = paired_test(base + 1 + rng.normal(0, 0.3, 30), base)
    assert shifted["p_value"] < 0.001 and shifted["above"] > 25 and shifted["mean_difference"] > 0.8
    same = paired_test(base + rng.normal(0, 0.3, 30), base)
    assert same["p_value"] > 0.05
    assert paired_test([1.0, 2.0], [1.0, 2.0])["p_value"] == 1.0


def test_percentile_is_the_share_of_the_reference_below():
    reference = torch.arange(10.0)
    assert percentile(torch.tensor([4.5]), reference) == 50.0
    assert percentile(torch.tensor([-1.0, 100.0]), reference) == 50.0


def test_the_fidelity_reference_keeps_up_to_its_share_of_each_category():
    item_category = np.array([0] * 50 + [1] * 3 + [-1] * 4 + [2] * 20)
    ids, categories = reference_items(item_category, per_category=10, seed=0)
    assert torch.bincount(categories).tolist() == [10, 3, 10]
    assert torch.equal(torch.as_tensor(item_category)[ids], categories) and len(set(ids.tolist())) == len(ids)
