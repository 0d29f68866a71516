import csv
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from attention.config import AttentionConfig
from attention.model import RegionAttention
from attention.train import train as train_attention
from common.catalogue.truth import load_truth
from common.checkpoint import save_checkpoint
from common.data import load_dataset
from common.errors import ConfigError
from common.images import image_cache, image_store
from common.training import snapshot
from dvbpr.backbones import build_backbone
from dvbpr.config import DVBPRConfig
from dvbpr.model import DVBPR, build_model
from explain.faithfulness import COLUMNS, garment_masks
from explain.main import main
from explain.saliency import (
    HEAT_MAP_METHODS,
    applicable_methods,
    check_method,
    garment_heat_share,
    heat_maps,
)

SIDE, QUADRANT = 16, 8


class TopLeftBackbone(nn.Module):
    """Sees only the top-left quadrant (the rest of the image is zeroed before its one conv): any score built on it
    depends on those pixels alone, by construction."""
    input_size, feature_width = SIDE, 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, self.feature_width, 3, padding=1, bias=False)
        self.last_conv_map = nn.Identity()
        quadrant = torch.zeros(1, 1, SIDE, SIDE)
        quadrant[..., :QUADRANT, :QUADRANT] = 1
        self.register_buffer("quadrant", quadrant)

    def initialise(self):
        self.conv.weight.data = self.conv.weight.data.abs()   # brighter pixels raise every feature

    def regularised_weights(self):
        return [self.conv.weight]

    def conv_map(self, x):
        return self.last_conv_map(F.relu(self.conv(x * self.quadrant)))

    def forward(self, x):
        return self.conv_map(x).mean(dim=(2, 3))


def top_left_dvbpr():
    torch.manual_seed(0)
    model = DVBPR(TopLeftBackbone(), usernum=3, k=4)
    model.head.weight.data = model.head.weight.data.abs()
    model.theta.data = torch.ones_like(model.theta)
    return model.eval()


def top_left_attention():
    """Attention that looks where the features are: logits grow with f_r, theta_u left out. (With the tanh
    saturated, Grad-CAM's mean gradient turns negative and its map empty: a gentler slope keeps it meaningful.)"""
    torch.manual_seed(0)
    model = RegionAttention(TopLeftBackbone(), usernum=3, k=4, hidden=16)
    channels = TopLeftBackbone.feature_width
    model.attend.weight.data = torch.cat([torch.full((16, channels), 0.2), torch.zeros(16, 4)], dim=1)
    model.w.weight.data = torch.ones_like(model.w.weight)
    model.project.weight.data = model.project.weight.data.abs()
    model.theta.data = torch.ones_like(model.theta)
    return model.eval()


@pytest.mark.parametrize("build", [top_left_dvbpr, top_left_attention])
def test_every_method_puts_most_heat_where_the_score_looks(build):
    model = build()
    images, users = torch.rand(4, 3, SIDE, SIDE), torch.tensor([0, 1, 2, 0])
    methods = applicable_methods(model)
    assert methods == (list(HEAT_MAP_METHODS) if build is top_left_attention else ["gradcam", "ig", "occlusion"])
    masks = torch.zeros(4, SIDE, SIDE, dtype=torch.bool)
    masks[:, :QUADRANT, :QUADRANT] = True
    for method in methods:
        heat = heat_maps(model, method, users, images, ig_steps=8)
        assert heat.shape == (4, SIDE, SIDE) and (heat >= 0).all()
        share = garment_heat_share(heat, masks)
        assert (share > 0.75).all(), (method, share)


def test_gradcam_reads_a_resnets_layer4():
    torch.manual_seed(0)
    model = DVBPR(build_backbone("resnet18", 32), usernum=2, k=4).eval()
    assert model.backbone.last_conv_map is model.backbone.network.layer4
    heat = heat_maps(model, "gradcam", torch.tensor([0, 1]), torch.rand(2, 3, 32, 32) * 2 - 1)
    assert heat.shape == (2, 32, 32) and (heat >= 0).all()


def test_attention_maps_sum_to_one_and_follow_the_user():
    torch.manual_seed(0)
    model = RegionAttention(build_backbone("cnn-f", 64, fc_width=1, widths=[4, 8, 8, 8, 8]), usernum=5, k=6)
    model.theta.data = torch.randn_like(model.theta) * 3
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    maps = model.attention_map(torch.tensor([0, 1]), images)
    assert maps.shape == (2, 4, 4)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(2))
    same_image = images[:1].expand(2, -1, -1, -1)
    other_user = model.attention_map(torch.tensor([0, 1]), same_image)
    assert not torch.allclose(other_user[0], other_user[1])


def test_attention_scorer_matches_scoring_each_image(catalogue):
    dataset = load_dataset(catalogue(num_users=12, num_items=240, image_size=32))
    torch.manual_seed(0)
    model = RegionAttention(build_backbone("cnn-f", 32, fc_width=1, widths=[4, 8, 8, 8, 8]), dataset.usernum, k=6)
    model.theta.data = torch.randn_like(model.theta)
    store = image_store(dataset, 32, device="cpu")
    items = torch.arange(0, 240, 7)
    with torch.no_grad():
        each = torch.stack([model.score(torch.full_like(items, u), store(items)) for u in (2, 5)])
    torch.testing.assert_close(model.scorer(store)(torch.tensor([2, 5]))[:, items], each, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, catalogue):
    """A random-weight DVBPR run and a briefly trained attention run on the tiny catalogue."""
    root = tmp_path_factory.mktemp("explain")
    dataset = load_dataset(catalogue(num_users=12, num_items=240, image_size=32))
    torch.manual_seed(0)
    cfg = DVBPRConfig(dataset=str(dataset.path), out=str(root / "dvbpr"), k=8, image_size=32, fc_width=32,
                      conv_widths=[8, 8, 8, 8, 8], epochs=1)
    model = build_model(cfg, dataset.usernum)
    model.theta.data = torch.randn_like(model.theta)
    save_checkpoint(root / "dvbpr" / "best.pt", snapshot("dvbpr", model, cfg, {"epoch": 1, "step": 1}, None))
    attention = AttentionConfig(dataset=str(dataset.path), out=str(root / "attention"), k=8, hidden=8,
                                image_size=32, conv_widths=[8, 8, 8, 8, 8], batch_size=16, epochs=6, lr=0.01,
                                device="cpu")
    results = train_attention(attention)
    return root, dataset, results


def test_the_attention_model_trains(runs):
    _, _, results = runs
    losses = [record["loss"] for record in results["history"]]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    assert results["epoch"] == max(results["history"], key=lambda r: r["valid_auc"])["epoch"]
    assert 0 <= results["test_auc"] <= 1


def cli(*argv):
    return main([*map(str, argv), "--device", "cpu", "--ig-steps", "4"])


@pytest.mark.parametrize("run, method", [("dvbpr", "gradcam"), ("dvbpr", "occlusion"), ("attention", "attention")])
def test_a_request_writes_a_strip_and_its_scores(runs, tmp_path, run, method):
    root, _, _ = runs
    png, path = cli("--run", root / run, "--user", 3, "--top-k", 3, "--method", method, "--out", tmp_path)
    written = json.loads(path.read_text())
    assert png.stat().st_size > 0 and [item["rank"] for item in written["items"]] == [1, 2, 3]
    scores = [item["score"] for item in written["items"]]
    assert scores == sorted(scores, reverse=True)
    _, path = cli("--run", root / run, "--user", 3, "--item", 17, "--method", method, "--out", tmp_path)
    assert [item["item"] for item in json.loads(path.read_text())["items"]] == [17]


@pytest.mark.parametrize("argv, message", [
    (["--user", 12], "explain: user 12 is out of range"),
    (["--user", -1], "explain: user -1 is out of range"),
    (["--user", 0, "--item", 240], "explain: item 240 is out of range"),
    ([], "explain: give --user U"),
    (["--user", 0, "--method", "attention"], "explain: --method attention cannot explain this model"),
    (["--user", 0, "--top-k", 0], "explain: --top-k must be from 1"),
])
def test_bad_requests_give_one_line_errors(runs, argv, message):
    root, _, _ = runs
    with pytest.raises(SystemExit) as error:
        cli("--run", root / "dvbpr", *argv)
    assert str(error.value).startswith(message)


def test_a_missing_run_and_a_backbone_without_a_conv_map_are_explained(tmp_path):
    with pytest.raises(SystemExit, match="explain: no trained model in"):
        cli("--run", tmp_path, "--user", 0)
    model = DVBPR(TopLeftBackbone(), usernum=1, k=2)
    model.backbone.last_conv_map = None   # as a ViT backbone declares
    assert applicable_methods(model) == ["ig", "occlusion"]
    with pytest.raises(ConfigError, match="no convolutional map"):
        check_method(model, "gradcam")


def test_evaluate_writes_the_three_files_with_the_documented_keys(runs, tmp_path):
    root, dataset, _ = runs
    for run, methods in (("dvbpr", ["gradcam", "ig", "occlusion"]), ("attention", list(HEAT_MAP_METHODS))):
        result = cli("--run", root / run, "--evaluate", "--users", 4, "--out", tmp_path / run)
        assert list(result["methods"]) == methods and result["pairs"] == 4
        for row in result["methods"].values():
            assert 0 <= row["garment_heat_share"] <= 1 and 0 < row["garment_area_share"] < 1
            assert len(row["deletion_salient"]) == len(row["deletion_random"]) == 9
            assert set(COLUMNS[1:]) | {"by_top_attribute"} <= set(row)
        assert json.loads((tmp_path / run / "explain_eval.json").read_text()) == result
        with open(tmp_path / run / "explain_eval.csv") as f:
            rows = list(csv.DictReader(f))
        assert [row["method"] for row in rows] == methods and set(COLUMNS) <= set(rows[0])
        assert "garment_heat_share" in (tmp_path / run / "explain_eval.md").read_text()


def test_garment_masks_cover_the_drawn_garment(catalogue):
    path = catalogue(num_users=12, num_items=240, image_size=32)
    dataset, truth = load_dataset(path), load_truth(path)
    images = np.asarray(image_cache(dataset, 32))
    masks = garment_masks(truth, np.arange(dataset.itemnum), 32, "nearest").numpy()
    assert masks.shape == (240, 32, 32) and masks.any(axis=(1, 2)).all()
    background = images.min(axis=1)[~masks]
    assert np.mean(background > 200) > 0.9    # off the mask the product shot is white
