import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from common.catalogue.config import CatalogueConfig, embedded_dataset_path, truth_path
from common.catalogue.fashion_mnist import find_fashion_mnist, read_idx
from common.catalogue.generate import ensure_embedded_catalogue, generate_catalogue
from common.catalogue.taste import PATTERNS
from common.catalogue.truth import load_truth, true_scores
from common.data import load_dataset
from common.original_format import CATEGORY_NAMES
from tools.catalogue import main as catalogue_main

TINY = CatalogueConfig(num_users=40, num_items=90, image_size=32, image_source="procedural")


def decode(image_bytes):
    return np.asarray(Image.open(io.BytesIO(image_bytes)).convert("RGB"))


def exact_auc(scores, dataset):
    """Per-user AUC of the test item against every item outside the user's train/validation/test; ties half."""
    excluded = np.zeros(scores.shape, dtype=bool)
    for user, items in enumerate(dataset.user_train):
        excluded[user, items] = True
    users = np.arange(dataset.usernum)
    excluded[users, dataset.user_validation] = True
    excluded[users, dataset.user_test] = True
    positive = scores[users, dataset.user_test][:, None]
    wins = ((scores < positive) & ~excluded).sum(1) + 0.5 * ((scores == positive) & ~excluded).sum(1)
    return wins / (~excluded).sum(1)


def pixel_features(dataset, side=8):
    """Items as centred, unit-length thumbnails: what a model that sees only pixels could start from."""
    thumbs = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((side, side), Image.BOX),
                                  dtype=np.float64).ravel() for b in dataset.image_bytes])
    thumbs -= thumbs.mean(0)
    return thumbs / np.linalg.norm(thumbs, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = generate_catalogue(tmp_path_factory.mktemp("tiny") / "tiny.npy", TINY)
    return load_dataset(path), load_truth(path)


@pytest.fixture(scope="module")
def default_sized(tmp_path_factory):
    """The default users, items and interactions, with small images to keep the test fast."""
    cfg = CatalogueConfig(image_size=32, image_source="procedural")
    path = generate_catalogue(tmp_path_factory.mktemp("default") / "default.npy", cfg)
    return load_dataset(path), load_truth(path)


def test_catalogue_loads_in_original_format(tiny):
    dataset, _ = tiny
    assert (dataset.usernum, dataset.itemnum) == (TINY.num_users, TINY.num_items)
    assert dataset.num_categories == len(CATEGORY_NAMES)
    assert set(dataset.item_category.tolist()) == set(range(len(CATEGORY_NAMES)))
    assert all(decode(b).shape == (32, 32, 3) for b in dataset.image_bytes)
    assert all(b[:3] == b"\xff\xd8\xff" for b in dataset.image_bytes)


def test_users_have_five_distinct_items_and_held_out_items_are_not_trained_on(tiny):
    dataset, _ = tiny
    for user, train in enumerate(dataset.user_train):
        held_out = {int(dataset.user_validation[user]), int(dataset.user_test[user])}
        assert len(train) + 2 >= 5
        assert len(set(train.tolist())) == len(train)
        assert len(held_out) == 2 and not held_out & set(train.tolist())


def test_truth_matches_the_dataset(tiny):
    dataset, truth = tiny
    np.testing.assert_array_equal(truth.item_category, dataset.item_category)
    assert true_scores(truth).shape == (dataset.usernum, dataset.itemnum)
    assert truth.config["image_source"] == "procedural"


def test_truth_keeps_the_garment_masks_and_each_users_top_attribute(tiny):
    dataset, truth = tiny
    masks = truth.item_garment_mask
    assert masks.shape == (dataset.itemnum, 32, 32) and masks.dtype == bool
    pixels = np.stack([decode(b) for b in dataset.image_bytes]).min(axis=3)
    assert np.mean(pixels[~masks] > 200) > 0.9 and np.mean(pixels[masks] < 200) > 0.5  # white around the garment
    np.testing.assert_array_equal(truth.user_top_attribute, truth.user_taste.argmax(axis=1))


def test_a_truth_file_without_masks_gets_them_redrawn(tmp_path, tiny):
    _, truth = tiny
    path = generate_catalogue(tmp_path / "old.npy", TINY)
    with np.load(truth_path(path)) as f:
        old = {name: f[name] for name in f.files if name not in ("item_garment_mask", "user_top_attribute")}
    np.savez(truth_path(path), **old)   # as the generator wrote it before it kept them
    redrawn = load_truth(path)
    np.testing.assert_array_equal(redrawn.item_garment_mask, truth.item_garment_mask)
    np.testing.assert_array_equal(redrawn.user_top_attribute, truth.user_top_attribute)
    assert "item_garment_mask" in np.load(truth_path(path)).files   # saved, not redrawn every time


def test_same_config_gives_identical_bytes(tmp_path):
    first = generate_catalogue(tmp_path / "a.npy", TINY).read_bytes()
    assert generate_catalogue(tmp_path / "b.npy", TINY).read_bytes() == first
    other_seed = dataclasses.replace(TINY, seed=1)
    assert generate_catalogue(tmp_path / "c.npy", other_seed).read_bytes() != first


def test_a_missing_combination_is_absent_and_the_rest_is_as_without_it(tmp_path, tiny):
    holed = dataclasses.replace(TINY, missing_pattern="stripes", missing_categories=[4, 5])
    _, truth = tiny
    holed_truth = load_truth(generate_catalogue(tmp_path / "holed.npy", holed))
    stripes = PATTERNS.index("stripes")
    was_striped_shoe = np.isin(truth.item_category, [4, 5]) & (truth.item_pattern == stripes)
    assert was_striped_shoe.any() and not (np.isin(holed_truth.item_category, [4, 5])
                                           & (holed_truth.item_pattern == stripes)).any()
    assert np.array_equal(truth.item_pattern[~was_striped_shoe], holed_truth.item_pattern[~was_striped_shoe])
    assert np.array_equal(truth.item_category, holed_truth.item_category)
    assert embedded_dataset_path(tmp_path, holed) != embedded_dataset_path(tmp_path, TINY)
    with pytest.raises(ValueError, match="--missing-pattern must be one of plain, stripes"):
        generate_catalogue(tmp_path / "bad.npy", dataclasses.replace(holed, missing_pattern="zigzag"))


def test_ensure_generates_once_then_reuses(tmp_path):
    path = ensure_embedded_catalogue(tmp_path, TINY)
    assert path == embedded_dataset_path(tmp_path, TINY) and "procedural" in path.name
    stamp = path.stat().st_mtime_ns
    assert ensure_embedded_catalogue(tmp_path, TINY) == path
    assert path.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, truth_path(path).name])


def test_the_catalogue_tool_makes_the_catalogue_its_flags_describe_and_prints_its_path(tmp_path, capsys):
    argv = ["--seed", "4", "--num-users", "40", "--num-items", "90", "--image-size", "32", "--image-source",
            "procedural", "--pattern-weight", "2.5", "--missing-pattern", "stripes", "--missing-categories", "4", "5",
            "--data-dir", str(tmp_path)]
    path = catalogue_main(argv)
    settings = dataclasses.replace(TINY, seed=4, pattern_weight=2.5, missing_pattern="stripes",
                                   missing_categories=[4, 5])
    assert path == embedded_dataset_path(tmp_path, settings) and capsys.readouterr().out == f"{path}\n"
    assert path.read_bytes() == generate_catalogue(tmp_path / "direct.npy", settings).read_bytes()
    truth = load_truth(path)
    assert not (np.isin(truth.item_category, [4, 5]) & (truth.item_pattern == PATTERNS.index("stripes"))).any()


@pytest.mark.parametrize("argv, flag", [(["--num-items", "3"], "--num-items"),
                                        (["--missing-pattern", "stripes"], "--missing-categories"),
                                        (["--missing-pattern", "stripes", "--missing-categories", "9"],
                                         "--missing-categories"),
                                        (["--bulk-weight", "-1"], "--bulk-weight"),
                                        (["--num-users", "100000", "--num-items", "100000"], "--num-users"),
                                        (["--image-source", "fashion-mnist", "--fashion-mnist-dir", "nowhere"],
                                         "nowhere")])
def test_the_catalogue_tool_refuses_settings_out_of_range_in_one_line_before_writing(tmp_path, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        catalogue_main(argv + ["--data-dir", str(tmp_path / "data")])
    message = str(exit_info.value.code)
    assert message.startswith("catalogue: ") and flag in message and "\n" not in message
    assert not (tmp_path / "data").exists()


def test_fashion_mnist_source(tmp_path):
    if find_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST IDX files not found (Debian package dataset-fashion-mnist or data/fashion-mnist/)")
    cfg = CatalogueConfig(num_users=30, num_items=60, image_size=48, image_source="fashion-mnist")
    path = ensure_embedded_catalogue(tmp_path, cfg)
    assert "fashionmnist" in path.name
    dataset = load_dataset(path)
    images = np.stack([decode(b) for b in dataset.image_bytes])
    assert images.shape == (60, 48, 48, 3)
    assert images[:, 0, 0].min() > 200, "background stays white"
    assert images.reshape(60, -1).std(1).min() > 10, "every item shows a garment"


def test_bad_settings_missing_fashion_mnist_and_corrupt_idx_raise(tmp_path):
    with pytest.raises(ValueError, match="^--num-items must be at least 20, got 10$"):
        generate_catalogue(tmp_path / "x.npy", dataclasses.replace(TINY, num_items=10))
    cfg = CatalogueConfig(image_source="fashion-mnist", fashion_mnist_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST"):
        generate_catalogue(tmp_path / "x.npy", cfg)
    (tmp_path / "junk-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not a uint8 IDX file"):
        read_idx(tmp_path / "junk-idx1-ubyte")


def nearest_centroid_accuracy(features, labels):
    """Fit class centroids on the even items, classify the odd ones."""
    fit, held = np.arange(0, len(labels), 2), np.arange(1, len(labels), 2)
    centroids = np.stack([features[fit][labels[fit] == k].mean(0) for k in np.unique(labels)])
    distances = ((features[held, None] - centroids[None]) ** 2).sum(-1)
    return np.mean(np.unique(labels)[distances.argmin(1)] == labels[held])


def test_category_and_colour_are_visible_in_the_pixels(tmp_path):
    cfg = CatalogueConfig(num_users=20, num_items=480, image_size=32, image_source="procedural", seed=3)
    path = generate_catalogue(tmp_path / "c.npy", cfg)
    dataset, truth = load_dataset(path), load_truth(path)
    pixels = np.stack([decode(b) for b in dataset.image_bytes]).astype(np.float64) / 255
    garment = pixels.min(-1) < 0.9
    silhouettes = garment.reshape(len(garment), 8, 4, 8, 4).mean((2, 4)).reshape(len(garment), -1)
    garment_colours = np.stack([np.median(image[mask], 0) for image, mask in zip(pixels, garment)])
    assert nearest_centroid_accuracy(silhouettes, truth.item_category) > 0.9
    assert nearest_centroid_accuracy(garment_colours, truth.item_colour) > 0.85


def test_default_size_has_many_cold_items(default_sized):
    dataset, _ = default_sized
    counts = dataset.item_train_counts()
    assert 6_000 <= dataset.num_train_interactions <= 10_000
    assert np.mean(counts < 5) > 0.5
    assert np.mean(counts[dataset.user_test] < 5) > 0.3


def test_true_taste_ranks_well_and_popularity_fails_on_cold_items(default_sized):
    dataset, truth = default_sized
    cold = dataset.item_train_counts()[dataset.user_test] < 5
    truth_auc = exact_auc(true_scores(truth), dataset)
    popularity = np.broadcast_to(dataset.item_train_counts().astype(np.float64), (dataset.usernum, dataset.itemnum))
    popularity_auc = exact_auc(popularity, dataset)
    assert truth_auc.mean() > 0.85 and truth_auc[cold].mean() > 0.85
    assert popularity_auc.mean() > 0.55
    assert popularity_auc[cold].mean() < 0.5


def test_pixels_alone_beat_popularity_most_on_cold_items(default_sized):
    dataset, _ = default_sized
    features = pixel_features(dataset)
    profiles = np.stack([features[items].mean(0) for items in dataset.user_train])
    visual_auc = exact_auc(profiles @ features.T, dataset)
    popularity = np.broadcast_to(dataset.item_train_counts().astype(np.float64), (dataset.usernum, dataset.itemnum))
    popularity_auc = exact_auc(popularity, dataset)
    cold = dataset.item_train_counts()[dataset.user_test] < 5
    assert visual_auc[cold].mean() > 0.6
    assert visual_auc[cold].mean() - popularity_auc[cold].mean() > visual_auc.mean() - popularity_auc.mean() + 0.1
