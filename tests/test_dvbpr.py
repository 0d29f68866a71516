"""DVBPR: the CNN as the original built it, the backbones, triplet sampling, BPR training, resume and the command
line."""
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from common.checkpoint import load_checkpoint, save_checkpoint
from common.cli import parse_config, settle
from common.data import load_dataset
from common.distributed import Ranks
from common.errors import ConfigError
from common.images import image_store
from common.sampling import TripletSampler
from common.training import epoch_end_step, keep_record
from dvbpr.backbones import BACKBONES, build_backbone
from dvbpr.cnnf import CNNF, same_padding
from dvbpr.config import DEMO, PRESETS, DVBPRConfig, check_config
from dvbpr.main import main
from dvbpr.model import DVBPR, build_model, embed_items
from dvbpr.train import evaluate

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_path(catalogue):
    return catalogue(num_users=6, num_items=20)


@pytest.fixture(scope="module")
def tiny(tiny_path):
    dataset = load_dataset(tiny_path)
    return dataset, image_store(dataset, 32, device=CPU)


def dvbpr_model(usernum, k=8, image_size=32, fc_width=256, dropout=0.5, **settings):
    return build_model(DVBPRConfig(k=k, image_size=image_size, fc_width=fc_width, dropout=dropout, **settings),
                       usernum)


def test_parameter_count_and_shapes_at_224_match_the_original():
    with torch.device("meta"):  # shapes only: nothing is allocated or computed
        model = DVBPR(CNNF(image_size=224), usernum=10, k=100)
        phi = model.phi(torch.empty(2, 3, 224, 224))
    network = [p for name, p in model.named_parameters() if name != "theta"]
    assert sum(p.numel() for p in network) == 70_778_724
    assert same_padding(224, kernel=11, stride=4) == (3, 4)
    assert model.backbone.fc1.in_features == 7 * 7 * 256
    assert phi.shape == (2, 100)
    assert model.theta.shape == (10, 100)
    assert len(model.backbone.regularised_weights()) + 1 == 8     # wc1-wc5, wd1-wd3


@pytest.mark.parametrize("size, side", [(64, 2), (32, 1)])
def test_small_inputs_derive_fc1_width(size, side):
    model = dvbpr_model(3, k=8, image_size=size, conv_widths=[8, 16, 16, 16, 12])
    assert model.backbone.fc1.in_features == 12 * side * side
    assert model.phi(torch.rand(3, 3, size, size) * 2 - 1).shape == (3, 8)


def test_init_as_the_original():
    torch.manual_seed(0)
    model = dvbpr_model(50, k=8, fc_width=512)
    layers = [*model.backbone.layers(), model.head]
    assert all((layer.bias == 0).all() for layer in layers)
    for layer in layers:
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
    n = 267_638  # AmazonFashion's training interactions (about 267,638 by the original's published step 39728)
    assert epoch_end_step(19, n, 128) == 39_728  # the pretrained DVBPR_auc_100_39728 is epoch 19
    assert (20 * n + 1) // 128 < epoch_end_step(20, n, 128)  # the original's loop stops before epoch 20 ends
    assert epoch_end_step(1, 50, 128) == 1 and epoch_end_step(2, 50, 128) == 2  # tiny data: >= 1 step an epoch


def configured(argv):
    return parse_config(DVBPRConfig, argv, PRESETS)[0]


def test_presets_and_explicit_flags():
    paper = configured([])
    assert (paper.preset, paper.k, paper.protocol, paper.epochs) == ("paper", 50, "exact", 20)
    assert (paper.ties, paper.select) == ("fail", "best-valid") and not paper.save_every_epoch
    assert (DVBPRConfig().ties, DVBPRConfig().select) == ("fail", "best-valid")
    original = configured(["--preset", "original"])
    assert (original.k, original.protocol, original.epochs, original.save_every_epoch) == (100, "sampled100", 19, True)
    assert original.select == "last" and configured(["--preset", "original", "--select", "best-valid"]).select == \
        "best-valid"
    assert (original.lambda_w, original.lambda_theta, original.lr, original.batch_size) == (0.001, 1.0, 1e-4, 128)
    assert configured(["--preset", "original", "--k", "7"]).k == 7


def test_the_selection_metric_must_be_one_the_protocol_evaluates():
    check_config(configured(["--select-metric", "valid_ndcg@10_cold", "--cutoffs", "10"]))
    check_config(configured(["--preset", "original", "--select-metric", "valid_sampled_hr@10"]))
    for argv, refused in ((["--select-metric", "valid_ndcg@20", "--cutoffs", "10"], "valid_ndcg@20"),
                          (["--preset", "original", "--select-metric", "valid_recall@20"], "valid_recall@20"),
                          (["--select-metric", "test_auc"], "test_auc"), (["--cutoffs", "0"], "--cutoffs")):
        with pytest.raises(ConfigError, match=refused):
            check_config(configured(argv))


def test_the_embedded_catalogue_takes_the_demo_settings_that_no_flag_gives(tiny_path, tmp_path):
    cfg, protected = parse_config(DVBPRConfig, ["--epochs", "3", "--dataset", str(tiny_path)], PRESETS)
    settle(cfg, protected, "dvbpr", DEMO, embedded=True)
    assert (cfg.image_size, cfg.fc_width, cfg.lr, cfg.epochs) == (DEMO["image_size"], DEMO["fc_width"], DEMO["lr"], 3)
    cfg, protected = parse_config(DVBPRConfig, ["--preset", "original"], PRESETS)
    settle(cfg, protected, "dvbpr", DEMO, embedded=True)   # a typed preset keeps its epochs over the demo's
    assert (cfg.epochs, cfg.k, cfg.image_size) == (19, 100, DEMO["image_size"])
    cfg, protected = parse_config(DVBPRConfig, ["--dataset", str(tiny_path)], PRESETS)
    settle(cfg, protected, "dvbpr", DEMO)                  # a file that is not the embedded catalogue: no demo
    assert (cfg.image_size, cfg.dataset) == (224, str(tiny_path.resolve()))
    saved = dataclasses.asdict(DVBPRConfig(out=str(tmp_path), image_size=48, epochs=4))
    save_checkpoint(tmp_path / "checkpoint.pt", {"stage": "dvbpr", "config": saved})
    cfg, protected = parse_config(DVBPRConfig, ["--resume", "--out", str(tmp_path), "--epochs", "6"], PRESETS)
    settle(cfg, protected, "dvbpr", DEMO, embedded=True)   # a resumed run keeps its saved settings
    assert (cfg.image_size, cfg.fc_width, cfg.epochs) == (48, 4096, 6)


def test_ties_half_reaches_the_metric(tiny):
    """With theta = 0 every score ties: the exact AUC is 0 when ties fail (the default) and 0.5 when they count
    half."""
    dataset, images = tiny
    small = ["--k", "8", "--image-size", "32", "--fc-width", "64"]
    for argv, expected in (([], 0.0), (["--ties", "half"], 0.5)):
        cfg = configured(small + argv)
        model = build_model(cfg, dataset.usernum)
        with torch.no_grad():
            model.theta.zero_()
        valid, test, _ = evaluate(model, dataset, images, cfg, Ranks())
        assert valid["all"] == test["all"] == expected and valid["ties"] == cfg.ties


def test_the_kept_record_is_the_best_validation_one_or_the_last():
    history = [dict(epoch=e, valid_auc=auc) for e, auc in enumerate([0.6, 0.8, 0.7], start=1)]
    for select, expected in (("best-valid", 2), ("last", 3)):
        kept = None
        for record in history:
            kept = keep_record(select, kept, record)
        assert kept["epoch"] == expected


def test_the_kept_record_can_follow_any_metric_and_a_missing_value_never_wins():
    ndcg = [None, None, 0.2, 0.1]
    history = [dict(epoch=e, valid_auc=auc, **{"valid_ndcg@20": value})
               for e, (auc, value) in enumerate(zip([0.9, 0.6, 0.7, 0.8], ndcg), start=1)]
    kept = None
    for record in history:
        kept = keep_record("best-valid", kept, record, "valid_ndcg@20")
    assert kept["epoch"] == 3


def bpr_loss(model, users, images_i, images_j):
    return -F.logsigmoid(model(users, images_i, images_j)).sum()


def objective(model, users, images_i, images_j):
    return model.objective(model(users, images_i, images_j), users)


def test_gradients_reach_conv1_and_the_loss_falls(tiny):
    dataset, images = tiny
    torch.manual_seed(0)
    model = dvbpr_model(dataset.usernum)
    users, positives, negatives = (torch.from_numpy(a) for a in TripletSampler(dataset, seed=0).sample(16))
    batch = users, images(positives), images(negatives)

    bpr_loss(model, *batch).backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
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
    scores = model.theta.detach() @ embed_items(model, images, 64).T
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
    model = dvbpr_model(dataset.usernum, k=16, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    liked = torch.zeros(dataset.usernum, dataset.itemnum, dtype=torch.bool)
    for u, items in enumerate(dataset.user_train):
        liked[u, items] = True
    pairs = liked[:, :, None] & ~liked[:, None, :]  # (u, i, j): i in u's training items, j not
    every_image = images(torch.arange(dataset.itemnum))
    before = training_pair_auc(model, dataset, images)
    for _ in range(80):
        scores = model.theta @ model.phi(every_image).T
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
    last = records[-1]
    assert (results["selected"], results["epoch"], results["test_auc"], results["test_auc_cold"]) == \
           ("last", 2, last["test_auc"], last["test_auc_cold"])
    assert results["preset"] == "original" and results["dataset"] == "Tiny" and results["wall_seconds"] > 0
    assert (results["protocol"], results["ties"]) == ("sampled100", "fail")

    embeddings = load_checkpoint(whole / "embeddings.pt")
    assert embeddings["theta"].shape == (6, 8) and embeddings["items"].shape == (20, 8)
    assert load_checkpoint(whole / "best.pt")["epoch"] == embeddings["epoch"] == 2
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


def test_best_valid_keeps_the_best_validation_epoch_by_the_chosen_metric_through_a_resume(tiny_path, tmp_path):
    args = ("--select", "best-valid", "--protocol", "exact", "--ties", "half", "--select-metric", "valid_mrr",
            "--cutoffs", "5", "10")
    whole = main(cli_args(tiny_path, tmp_path / "whole", *args, "--epochs", "3"))
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    best = max(records, key=lambda r: r["valid_mrr"])
    assert (whole["selected"], whole["epoch"], whole["valid_mrr"]) == ("best-valid", best["epoch"], best["valid_mrr"])
    assert whole["ties"] == "half" and whole["select_metric"] == "valid_mrr"
    assert {"valid_ndcg@5", "test_recall@10_cold", "test_mrr"} <= set(whole) and "test_ndcg@20" not in whole
    assert load_checkpoint(tmp_path / "whole" / "best.pt")["epoch"] == best["epoch"]
    assert load_checkpoint(tmp_path / "whole" / "embeddings.pt")["epoch"] == best["epoch"]

    main(cli_args(tiny_path, tmp_path / "resumed", *args, "--epochs", "1"))
    resumed = main(["--out", str(tmp_path / "resumed"), "--resume", "--epochs", "3"])
    same = lambda results: {key: value for key, value in results.items() if key != "wall_seconds"}
    assert same(resumed) == same(whole)


def test_resize_filter_picks_its_own_cache_and_eval_chunk_leaves_the_auc_alone(tiny_path, tmp_path):
    bilinear = ("--epochs", "1", "--resize-filter", "bilinear")
    chunked = main(cli_args(tiny_path, tmp_path / "chunked", *bilinear, "--eval-chunk", "2"))
    whole = main(cli_args(tiny_path, tmp_path / "whole", *bilinear))
    assert (chunked["valid_auc"], chunked["test_auc"]) == (whole["valid_auc"], whole["test_auc"])
    assert (tiny_path.parent / "cache" / "Tiny-32px-bilinear.npy").is_file()


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tiny_path, tmp_path):
    main(cli_args(tiny_path, tmp_path, "--epochs", "1"))
    good = load_checkpoint(tmp_path / "checkpoint.pt")
    (tmp_path / "results.json").unlink()
    with pytest.raises(SystemExit, match="dvbpr: the loss became (nan|inf).*lower --lr"):
        main(["--out", str(tmp_path), "--resume", "--epochs", "2", "--lr", "1e9"])
    kept = load_checkpoint(tmp_path / "checkpoint.pt")
    assert kept["epoch"] == good["epoch"] == 1 and not (tmp_path / "results.json").exists()
    assert all(torch.equal(kept["model"][name], tensor) for name, tensor in good["model"].items())


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_trains_a_step_and_loads_back(name, tiny):
    dataset, images = tiny
    torch.manual_seed(0)
    model = dvbpr_model(dataset.usernum, backbone=name, fc_width=64, conv_widths=[8, 8, 8, 8, 8])
    users, positives, negatives = (torch.from_numpy(a) for a in TripletSampler(dataset, seed=0).sample(4))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    loss = model.objective(model(users, images(positives), images(negatives)), users)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=1e-3).step()
    moved = [key for key, value in model.state_dict().items() if not torch.equal(value, before[key])]
    assert "head.weight" in moved and any(key.startswith("backbone.") for key in moved)
    again = dvbpr_model(dataset.usernum, backbone=name, fc_width=64, conv_widths=[8, 8, 8, 8, 8])
    again.load_state_dict(model.state_dict())
    model.eval(), again.eval()
    torch.testing.assert_close(again.phi(images(positives)), model.phi(images(positives)))


def test_a_backbone_weights_file_is_applied_and_a_foreign_one_refused(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    backbone = build_backbone("resnet18", 32, weights=tmp_path / "resnet18.pth")
    assert torch.equal(backbone.network.conv1.weight, reference.conv1.weight)
    assert backbone.feature_width == 512
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "foreign.pth")
    with pytest.raises(ConfigError, match="not a torchvision ResNet-18 state dict"):
        build_backbone("resnet18", 32, weights=tmp_path / "foreign.pth")
    with pytest.raises(ConfigError, match="trained from scratch"):
        build_backbone("cnn-f", 32, weights=tmp_path / "resnet18.pth")


@pytest.mark.parametrize("argv, message", [
    (["--resume"], "no checkpoint"),
    (["--dataset", "missing.npy"], "not found"),
    (["--eval-batch-size", "0"], "--eval-batch-size must be at least 1"),
    (["--conv-widths", "8", "8"], "five positive channel counts"),
    (["--device", "tpu"], "--device .tpu. is not a device"),
])
def test_clear_errors(tmp_path, tiny_path, argv, message):
    dataset = [] if "--dataset" in argv else ["--dataset", str(tiny_path)]
    with pytest.raises(SystemExit, match=message):
        main(["--out", str(tmp_path / "run"), *dataset,
              *[str(tmp_path / a) if a.endswith(".npy") else a for a in argv]])
