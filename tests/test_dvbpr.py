"""DVBPR: the CNN as the original built it, triplet sampling, BPR training, resume and the command line."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.catalogue import CatalogueConfig, generate_catalogue
from common.checkpoint import load_checkpoint, save_checkpoint
from common.data import load_dataset
from common.distributed import Ranks
from common.images import ImageStore, image_cache
import dvbpr.main
from dvbpr.main import (DEMO_SETTINGS, TripletSampler, epoch_end_step, item_embeddings, main, open_run_dataset,
                        resolve_config)
from dvbpr.model import CNN, DVBPR, same_padding

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "Tiny.npy"
    generate_catalogue(path, CatalogueConfig(num_users=6, num_items=20, image_size=32, image_source="procedural"))
    return path


@pytest.fixture(scope="module")
def tiny(tiny_path):
    dataset = load_dataset(tiny_path)
    return dataset, ImageStore(image_cache(dataset, 32), CPU)


def test_parameter_count_and_shapes_at_224_match_the_original():
    with torch.device("meta"):  # shapes only: nothing is allocated or computed
        cnn = CNN(image_size=224, k=100)
        model = DVBPR(usernum=10, k=100, image_size=224)
        phi = cnn(torch.empty(2, 3, 224, 224))
    assert sum(p.numel() for p in cnn.parameters()) == 70_778_724
    assert same_padding(224, kernel=11, stride=4) == (3, 4)
    assert cnn.fc1.in_features == 7 * 7 * 256
    assert phi.shape == (2, 100)
    assert model.theta.shape == (10, 100)


@pytest.mark.parametrize("size, side", [(64, 2), (32, 1)])
def test_small_inputs_derive_fc1_width(size, side):
    cnn = CNN(image_size=size, k=8)
    assert cnn.fc1.in_features == 256 * side * side
    assert cnn(torch.rand(3, 3, size, size) * 2 - 1).shape == (3, 8)


def test_init_as_the_original():
    torch.manual_seed(0)
    model = DVBPR(usernum=50, k=8, image_size=32, fc_width=512)
    assert all((layer.bias == 0).all() for layer in model.cnn.layers())
    for layer in model.cnn.layers():
        fan_in, fan_out = layer.weight[0].numel(), layer.weight.shape[0] * layer.weight[0, 0].numel()
        bound = (6 / (fan_in + fan_out)) ** 0.5  # Xavier uniform
        assert 0.99 * bound < layer.weight.abs().max() <= bound
    assert 0 <= model.theta.min() and model.theta.max() < 0.01


def test_sampler_draws_triplets_as_the_original(tiny, tmp_path):
    dataset, _ = tiny
    sampler = TripletSampler(dataset, seed=0)
    users, positives, negatives = sampler.sample(3000)
    train = [set(items.tolist()) for items in dataset.user_train]
    assert all(i in train[u] for u, i in zip(users, positives))
    assert all(j not in train[u] for u, j in zip(users, negatives))
    assert (negatives == dataset.user_validation[users]).any()  # held-out items are not excluded
    per_user = np.bincount(users, minlength=dataset.usernum)
    assert per_user.min() > 0.7 * 3000 / dataset.usernum  # uniform over users, not over interactions

    save_checkpoint(tmp_path / "sampler.pt", {"sampler": sampler.state_dict()})
    expected = sampler.sample(100)
    sampler.load_state_dict(load_checkpoint(tmp_path / "sampler.pt")["sampler"])
    for drawn, again in zip(expected, sampler.sample(100)):
        np.testing.assert_array_equal(drawn, again)


def test_epoch_accounting_matches_the_original():
    n = 267_638  # AmazonFashion's training interactions (reference: between 267,635 and 267,641)
    assert epoch_end_step(19, n, 128) == 39_728  # the pretrained DVBPR_auc_100_39728 is epoch 19
    assert (20 * n + 1) // 128 < epoch_end_step(20, n, 128)  # the original's loop stops before epoch 20 ends
    assert epoch_end_step(1, 50, 128) == 1 and epoch_end_step(2, 50, 128) == 2  # tiny data: >= 1 step an epoch


def test_presets_and_explicit_flags():
    paper, _, _ = resolve_config([])
    assert (paper.preset, paper.k, paper.protocol, paper.epochs) == ("paper", 50, "exact", 20)
    assert not paper.save_every_epoch
    original, _, _ = resolve_config(["--preset", "original"])
    assert (original.k, original.protocol, original.epochs, original.save_every_epoch) == (100, "sampled100", 19, True)
    assert (original.lambda_w, original.lambda_theta, original.lr, original.batch_size) == (0.001, 1.0, 1e-4, 128)
    assert resolve_config(["--preset", "original", "--k", "7"])[0].k == 7


def test_the_embedded_catalogue_takes_the_demo_settings_that_no_flag_gives(tiny_path, monkeypatch):
    monkeypatch.setattr(dvbpr.main, "open_dataset", lambda path: (load_dataset(tiny_path), True))
    cfg, explicit, _ = resolve_config(["--epochs", "3"])
    open_run_dataset(cfg, explicit, resuming=False, ranks=Ranks())
    assert (cfg.image_size, cfg.fc_width, cfg.lr, cfg.epochs) == (DEMO_SETTINGS["image_size"],
                                                                 DEMO_SETTINGS["fc_width"], DEMO_SETTINGS["lr"], 3)
    assert cfg.dataset == str(tiny_path)
    resumed, explicit, _ = resolve_config([])
    open_run_dataset(resumed, explicit, resuming=True, ranks=Ranks())  # a resumed run keeps its saved settings
    assert (resumed.image_size, resumed.fc_width, resumed.epochs) == (224, 4096, 20)


def bpr_loss(model, users, images_i, images_j):
    return -F.logsigmoid(model(users, images_i, images_j)).sum()


def objective(model, users, images_i, images_j):
    return model.objective(model(users, images_i, images_j), users)


def test_gradients_reach_conv1_and_the_loss_falls(tiny):
    dataset, images = tiny
    torch.manual_seed(0)
    model = DVBPR(dataset.usernum, k=8, image_size=32, fc_width=256)
    users, positives, negatives = (torch.from_numpy(a) for a in TripletSampler(dataset, seed=0).sample(16))
    batch = users, images(positives), images(negatives)

    bpr_loss(model, *batch).backward()
    assert model.cnn.conv1.weight.grad.abs().sum() > 0
    theta_grad_rows = model.theta.grad.abs().sum(1) > 0
    assert theta_grad_rows.tolist() == [u in users.tolist() for u in range(dataset.usernum)]

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.eval()  # dropout off, so that the before/after losses compare the weights only
    with torch.no_grad():
        before = objective(model, *batch).item(), bpr_loss(model, *batch).item()
    model.train()
    for _ in range(10):
        optimizer.zero_grad()
        objective(model, *batch).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = objective(model, *batch).item(), bpr_loss(model, *batch).item()
    assert after[0] < before[0] and after[1] < before[1]


def training_pair_auc(model, dataset, images):
    """Mean over users of P(x_ui > x_uj) for i in the user's training items and j outside them."""
    scores = model.theta.detach() @ item_embeddings(model, images, 64).T
    aucs = []
    for u, train in enumerate(dataset.user_train):
        positive = np.zeros(dataset.itemnum, dtype=bool)
        positive[train] = True
        aucs.append((scores[u, positive][:, None] > scores[u, ~positive][None, :]).float().mean().item())
    return float(np.mean(aucs))


def test_model_overfits_a_tiny_catalogue(tiny):
    """Phi and theta can fit every training pair: full-batch BPR over all (u, i, j) of the tiny catalogue."""
    dataset, images = tiny
    torch.manual_seed(0)
    model = DVBPR(dataset.usernum, k=16, image_size=32, dropout=0.0, fc_width=256)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    liked = torch.zeros(dataset.usernum, dataset.itemnum, dtype=torch.bool)
    for u, items in enumerate(dataset.user_train):
        liked[u, items] = True
    pairs = liked[:, :, None] & ~liked[:, None, :]  # (u, i, j): i in u's training items, j not
    every_image = images(torch.arange(dataset.itemnum))
    before = training_pair_auc(model, dataset, images)
    for _ in range(80):
        scores = model.theta @ model.cnn(every_image).T
        loss = -F.logsigmoid(scores[:, :, None] - scores[:, None, :])[pairs].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = training_pair_auc(model, dataset, images)
    assert after > 0.93 and after > before + 0.1


def cli_args(dataset_path, out, *extra):
    return ["--preset", "original", "--dataset", str(dataset_path), "--out", str(out), "--image-size", "32", "--k", "8",
            "--fc-width", "256", "--batch-size", "16", "--eval-batch-size", "64", *extra]


def test_cli_writes_the_run_and_resume_reproduces_it(tiny_path, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    subprocess.run([sys.executable, "dvbpr/main.py", *cli_args(tiny_path, whole, "--epochs", "2")], cwd=ROOT,
                   check=True, capture_output=True, text=True)

    log = (whole / "DVBPR.log").read_text().splitlines()
    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for line, record in zip(log, records):
        epoch, test_auc, valid_auc = re.fullmatch(r"Epoch #(\d+):(\S+) (\S+)", line).groups()
        assert int(epoch) == record["epoch"]
        assert float(test_auc) == pytest.approx(record["test_auc"], rel=1e-11)
        assert float(valid_auc) == pytest.approx(record["valid_auc"], rel=1e-11)
        assert 0 <= record["valid_auc_cold"] <= 1 and record["protocol"] == "sampled100" and record["loss"] > 0
    results = json.loads((whole / "results.json").read_text())
    best = max(records, key=lambda r: r["valid_auc"])
    assert (results["best_epoch"], results["test_auc"], results["test_auc_cold"]) == \
           (best["epoch"], best["test_auc"], best["test_auc_cold"])
    assert results["preset"] == "original" and results["dataset"] == "Tiny" and results["wall_seconds"] > 0

    embeddings = load_checkpoint(whole / "embeddings.pt")
    assert embeddings["theta"].shape == (6, 8) and embeddings["items"].shape == (20, 8)
    assert load_checkpoint(whole / "best.pt")["epoch"] == best["epoch"]
    last_step = records[-1]["step"]
    theta, items = np.load(whole / f"UI_8_{last_step}.npy", allow_pickle=True)
    assert theta.shape == (6, 8) and items.shape == (20, 8)
    assert load_checkpoint(whole / f"DVBPR_auc_8_{last_step}.pt")["step"] == last_step

    main(cli_args(tiny_path, resumed, "--epochs", "1"))
    main(["--out", str(resumed), "--resume", "--epochs", "2"])
    expected, got = load_checkpoint(whole / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    assert got["step"] == expected["step"]
    for name, tensor in expected["model"].items():
        torch.testing.assert_close(got["model"][name], tensor, rtol=1e-5, atol=1e-7)
    assert (resumed / "DVBPR.log").read_text() == (whole / "DVBPR.log").read_text()


def test_resize_filter_picks_its_own_cache_and_eval_chunk_leaves_the_auc_alone(tiny_path, tmp_path):
    bilinear = ("--epochs", "1", "--resize-filter", "bilinear")
    chunked = main(cli_args(tiny_path, tmp_path / "chunked", *bilinear, "--eval-chunk", "2"))
    whole = main(cli_args(tiny_path, tmp_path / "whole", *bilinear))
    assert (chunked["valid_auc"], chunked["test_auc"]) == (whole["valid_auc"], whole["test_auc"])
    assert (tiny_path.parent / "cache" / "Tiny-32px-bilinear.npy").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--resume"], "no checkpoint"),
    (["--dataset", "missing.npy"], "not found"),
])
def test_clear_errors(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        main(["--out", str(tmp_path / "run"), *[str(tmp_path / a) if a.endswith(".npy") else a for a in argv]])
