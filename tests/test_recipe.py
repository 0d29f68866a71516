"""The demo recipe's pieces: the learning-rate schedule (and its resume), the initialisations, the health figures
of a trained network, and the generator's taste mixes."""
import json
import math

import numpy as np
import pytest
import torch

from common.catalogue.config import CatalogueConfig
from common.catalogue.generate import generate_catalogue
from common.catalogue.taste import ATTRIBUTE_GROUPS
from common.catalogue.truth import load_truth
from common.checkpoint import load_checkpoint
from common.cli import parse_config
from common.data import load_dataset
from common.errors import ConfigError
from common.images import image_store
from common.training import learning_rate
from dvbpr.cnnf import CNNF
from dvbpr.config import DEMO, PRESETS, DVBPRConfig, check_config
from dvbpr.main import main
from dvbpr.model import build_model
from tools.health import directions_holding, ever_active_units
from tools.health import main as health_main


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    cfg = DVBPRConfig(lr=1e-3, lr_schedule="cosine", warmup_epochs=1, epochs=4, batch_size=10)
    rates = [learning_rate(cfg, step, num_interactions=100) for step in range(40)]   # 10 steps an epoch
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(rates[:10], rates[1:10]))
    assert all(a > b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] < 2e-5
    assert learning_rate(DVBPRConfig(lr=3e-4), 17, 100) == 3e-4


def test_warmup_longer_than_the_run_and_kaiming_on_a_torchvision_backbone_are_refused():
    with pytest.raises(ConfigError, match="warmup"):
        check_config(DVBPRConfig(epochs=2, warmup_epochs=3))
    with pytest.raises(ConfigError, match="--init kaiming is for cnn-f"):
        check_config(DVBPRConfig(backbone="resnet18", init="kaiming"))
    check_config(DVBPRConfig(backbone="resnet18"))


def test_centred_theta_and_kaiming_init():
    torch.manual_seed(0)
    original = build_model(DVBPRConfig(image_size=32, fc_width=64, k=8), 2000)
    torch.manual_seed(0)
    changed = build_model(DVBPRConfig(image_size=32, fc_width=64, k=8, theta_init="centred", init="kaiming"), 2000)
    assert original.theta.min() >= 0 and original.theta.max() < 0.01
    assert abs(changed.theta.mean().item()) < 2e-4 and changed.theta.abs().max() <= 0.005
    xavier = original.backbone.conv3.weight.std().item()
    kaiming = changed.backbone.conv3.weight.std().item()
    assert kaiming == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.05)
    assert xavier == pytest.approx(math.sqrt(2 / (2 * 256 * 9)), rel=0.05)


def test_a_cosine_run_resumes_to_identical_weights(catalogue, tmp_path):
    path = catalogue(num_users=6, num_items=20)
    args = ["--dataset", str(path), "--image-size", "32", "--k", "8", "--fc-width", "64", "--batch-size", "16",
            "--lr-schedule", "cosine", "--warmup-epochs", "1", "--lr", "3e-3"]
    main([*args, "--out", str(tmp_path / "whole"), "--epochs", "3"])
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    main([*args, "--out", str(tmp_path / "part"), "--epochs", "1"])
    main(["--out", str(tmp_path / "part"), "--resume", "--epochs", "3"])
    resumed = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert resumed["step"] == whole["step"]
    for name, tensor in whole["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=1e-5, atol=1e-7)


def test_directions_holding_the_variance():
    rng = np.random.default_rng(0)
    rank_two = torch.tensor(rng.normal(size=(500, 2)) @ rng.normal(size=(2, 16)), dtype=torch.float32)
    assert directions_holding(rank_two) == 2
    assert directions_holding(torch.tensor(rng.normal(size=(2000, 16)))) >= 15


def test_ever_active_units_finds_dead_ones(catalogue):
    dataset = load_dataset(catalogue(num_users=6, num_items=20))
    store = image_store(dataset, 32, device="cpu")
    torch.manual_seed(0)
    network = CNNF(32, fc_width=64, widths=(8, 16, 16, 16, 16))
    network.initialise()
    with torch.no_grad():
        network.fc1.bias[:48] = -1e3      # 48 of fc1's 64 units can never be positive, the rest always are
        network.fc1.bias[48:] = 1e3
    active = ever_active_units(network.eval(), store, batch_size=7)
    assert active["fc1"] == 16 / 64
    assert active["conv1"] > 0.5


def test_health_reports_a_finished_run_and_a_bad_run_in_one_line(catalogue, tmp_path, capsys):
    main(["--dataset", str(catalogue(num_users=6, num_items=20)), "--out", str(tmp_path / "run"), "--image-size",
          "32", "--k", "6", "--fc-width", "64", "--batch-size", "16", "--epochs", "2", "--device", "cpu"])
    capsys.readouterr()
    health_main(["--run", str(tmp_path / "run")])
    figures = json.loads(capsys.readouterr().out)
    assert figures["epoch"] == json.loads((tmp_path / "run" / "results.json").read_text())["epoch"]
    assert figures["k"] == 6
    assert set(figures["ever_active"]) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2"}
    assert all(0 < share <= 1 for share in figures["ever_active"].values())
    items = torch.load(tmp_path / "run" / "embeddings.pt", weights_only=True)["items"].double().numpy()
    variance = np.sort(np.linalg.eigvalsh(np.cov(items, rowvar=False)))[::-1]
    assert figures["directions_99"] == np.argmax(np.cumsum(variance) / variance.sum() >= 0.99) + 1
    with pytest.raises(SystemExit) as refused:
        health_main(["--run", str(tmp_path / "nowhere")])
    assert str(refused.value).startswith("health: ") and "\n" not in str(refused.value)


def test_taste_weights_scale_each_group_and_default_to_the_old_catalogue(tmp_path):
    tiny = dict(num_users=30, num_items=120, image_size=32, image_source="procedural")
    plain = load_truth(generate_catalogue(tmp_path / "a.npy", CatalogueConfig(**tiny)))
    mixed = load_truth(generate_catalogue(tmp_path / "b.npy", CatalogueConfig(**tiny, colour_weight=0.0,
                                                                             pattern_weight=2.0)))
    groups = np.array(ATTRIBUTE_GROUPS)
    assert not mixed.user_taste[:, groups == "colour"].any()
    np.testing.assert_array_equal(mixed.user_taste[:, groups == "pattern"],
                                  2 * plain.user_taste[:, groups == "pattern"])
    np.testing.assert_array_equal(mixed.user_taste[:, groups == "category"],
                                  plain.user_taste[:, groups == "category"])
    explicit = generate_catalogue(tmp_path / "c.npy", CatalogueConfig(**tiny, category_weight=1.0))
    assert (tmp_path / "a.npy").read_bytes() == explicit.read_bytes()


def test_preset_demo_gives_the_demo_recipe_on_any_dataset():
    cfg, _ = parse_config(DVBPRConfig, ["--preset", "demo", "--dataset", "elsewhere.npy"], PRESETS)
    assert all(getattr(cfg, name) == value for name, value in DEMO.items())
    assert (cfg.k, cfg.protocol, cfg.ties, cfg.select) == (50, "exact", "fail", "best-valid")
