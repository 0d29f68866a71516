"""Baselines of Table III: score functions on hand-made cases, each model beating RAND where it must, the grid
search selecting by validation only, the visual features, and the table files."""
import csv
import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from baselines.bpr import BPRMF, bpr_loss
from baselines.features import (
    FeatureSettings,
    alexnet_fc7,
    imagenet_features,
    pretrain_cnnf,
    visual_features,
)
from baselines.fm import FactorizationMachine
from baselines.main import DEMO, PRESETS, BaselinesConfig
from baselines.main import main as baselines_main
from baselines.ncf import GMF, MLP, NEGATIVES_PER_POSITIVE, log_loss
from baselines.poprank import PopRank
from baselines.rand import Random
from baselines.registry import METHODS as REGISTRY
from baselines.table import (
    PAPER_METHODS,
    PAPER_TABLE,
    VS_BEST,
    VS_BPRMF,
    build_table,
    improvements,
    write_table,
)
from baselines.train import FitSettings, evaluate, fit, grid_search, unlearned
from baselines.vbpr import VBPR
from baselines.visrank import VisRank
from baselines.warp import harmonic, warp_loss
from common.cli import parse_config
from common.data import load_dataset
from common.errors import ConfigError, DatasetError
from common.images import image_store
from common.original_format import save_original_format
from common.sampling import TripletSampler
from tests.helpers import interactions_only

LABELS = [method.label for method in REGISTRY.values()]

CPU = torch.device("cpu")


def split_choices(choices, itemnum):
    """Per user, distinct items in the order chosen: the first is validation, the second test, the rest training."""
    return interactions_only(len(choices), itemnum, [np.array(c[2:], dtype=np.int64) for c in choices],
                       np.array([c[0] for c in choices]), np.array([c[1] for c in choices]))


def popularity_dataset(usernum=200, itemnum=120, per_user=8, seed=0):
    """Every user draws items with probability proportional to a steep (Zipf) item popularity."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, itemnum + 1) ** 1.2
    popularity = popularity[rng.permutation(itemnum)]
    return split_choices([rng.choice(itemnum, per_user, replace=False, p=popularity / popularity.sum())
                          for _ in range(usernum)], itemnum)


def feature_dataset(usernum=200, itemnum=120, clusters=4, per_user=8, seed=0):
    """Items belong to visual clusters seen in their features; each user draws uniformly from one cluster.
    Returns (dataset, features [itemnum, 16])."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(itemnum) % clusters
    features = np.concatenate([np.eye(clusters)[cluster], rng.normal(0, 0.1, (itemnum, 16 - clusters))], 1)
    choices = [rng.choice(np.flatnonzero(cluster == rng.integers(clusters)), per_user, replace=False)
               for _ in range(usernum)]
    return split_choices(choices, itemnum), torch.tensor(features, dtype=torch.float32)


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: one thread spares the per-op synchronisation of a thread team, which dominates
    (and varies wildly) when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def popular():
    return popularity_dataset()


@pytest.fixture(scope="module")
def visual():
    return feature_dataset()


# ---------------------------------------------------------------------------------------------- score functions

def set_parameters(model, **values):
    with torch.no_grad():
        for name, value in values.items():
            getattr(model, name).copy_(torch.tensor(value, dtype=torch.float32))
    return model


def all_scores(model, usernum):
    with torch.no_grad():
        return model.scorer()(torch.arange(usernum))


def test_bprmf_scores_are_item_bias_plus_factor_product():
    model = set_parameters(BPRMF(2, 3, 2), gamma_user=[[1, 0], [0, 2]], gamma_item=[[1, 2], [3, 4], [5, 6]],
                           beta_item=[0.1, 0.2, 0.3])
    expected = torch.tensor([[1.1, 3.2, 5.3], [4.1, 8.2, 12.3]])
    torch.testing.assert_close(all_scores(model, 2), expected)
    torch.testing.assert_close(model(torch.tensor([1]), torch.tensor([[2, 0]])), torch.tensor([[12.3, 4.1]]))


def test_vbpr_scores_follow_equation_2():
    features = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    model = set_parameters(VBPR(1, features, 2), beta_item=[0.5, -0.5], gamma_user=[[1, 1]],
                           gamma_item=[[1, 0], [0, 3]], theta_user=[[2, -1]],
                           embedding=[[1, 0], [0, 1], [1, 1]], beta_visual=[0.1, 0.2, 0.3])
    # item 0: 0.5 + 1 + theta.(E f = [3, 2]) = 4 + beta'.f = 0.7  -> 6.2 ; item 1: -0.5 + 3 + theta.[0, 1] = -1 + 0.2
    torch.testing.assert_close(all_scores(model, 1), torch.tensor([[6.2, 1.7]]))


def test_fm_item_is_its_embedding_plus_its_projected_features():
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    model = set_parameters(FactorizationMachine(1, features, 2), v_user=[[1, 2]], v_item=[[1, 0], [0, 1]],
                           feature_embedding=[[1, 1], [0, 1]], b_item=[0.5, 0.0], w_feature=[1.0, -1.0])
    # item 0: <[1,2], [1,0]+[1,1]> + 0.5 + 1 = 4 + 1.5 ; item 1: <[1,2], [0,1]+[0,2]> + 0 - 2 = 6 - 2
    torch.testing.assert_close(all_scores(model, 1), torch.tensor([[5.5, 4.0]]))


def test_gmf_and_mlp_scores_match_their_definitions():
    gmf = set_parameters(GMF(1, 2, 2), p_user=[[1, 2]], q_item=[[3, 4], [5, 6]], h=[1, -1])
    torch.testing.assert_close(all_scores(gmf, 1), torch.tensor([[3.0 - 8.0, 5.0 - 12.0]]))

    torch.manual_seed(0)
    mlp = MLP(3, 5, 4)
    users, items = torch.tensor([0, 2]), torch.tensor([[1, 4], [0, 3]])
    concatenated = torch.cat([mlp.p_user[users][:, None].expand(-1, 2, -1), mlp.q_item[items]], -1)
    expected = mlp.h(F.relu(mlp.layer2(F.relu(mlp.layer1(concatenated)))))[..., 0]
    torch.testing.assert_close(mlp(users, items), expected)


@pytest.mark.parametrize("build", [
    lambda: BPRMF(4, 6, 3), lambda: GMF(4, 6, 3), lambda: MLP(4, 6, 3),
    lambda: FactorizationMachine(4, torch.rand(6, 5), 3), lambda: VBPR(4, torch.rand(6, 5), 3)])
def test_training_scores_agree_with_evaluation_scores(build):
    torch.manual_seed(0)
    model = build()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        users = torch.tensor([0, 3, 1])
        items = torch.tensor([[5, 0, 2], [1, 1, 4], [3, 2, 0]])
        torch.testing.assert_close(model(users, items), model.scorer()(users).gather(1, items))


def test_poprank_visrank_and_rand_scores():
    dataset = split_choices([[0, 1, 2, 2, 3], [2, 3, 0, 1]], 4)    # training: user 0 {2, 2, 3}, user 1 {0, 1}
    torch.testing.assert_close(all_scores(PopRank(dataset), 2), torch.tensor([[1.0, 1.0, 2.0, 1.0]] * 2))

    features = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0], [0.0, -1.0]])
    # user 1 bought items 0 and 1: cosines to item 2 are both 1/sqrt(2), to item 3 are 0 and -1
    scores = all_scores(VisRank(dataset, features), 2)
    torch.testing.assert_close(scores[1], torch.tensor([0.5, 0.5, 1 / math.sqrt(2), -0.5]))

    rand = Random(4, seed=3)
    first, again = all_scores(rand, 2), all_scores(rand, 2)
    assert torch.equal(first, again) and ((first >= 0) & (first < 1)).all() and first.unique().numel() == 8


# ---------------------------------------------------------------------------------------------------- losses

def test_bpr_loss_is_log2_at_equal_scores_plus_the_penalty():
    model = set_parameters(BPRMF(1, 3, 2), gamma_user=[[1, 1]], gamma_item=[[0, 0]] * 3, beta_item=[0, 0, 0])
    users, positives, negatives = torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([[1], [2]])
    torch.testing.assert_close(bpr_loss(model, users, positives, negatives, reg=0.0), torch.tensor(math.log(2)))
    # penalty per triplet: ||gamma_u||^2 = 2; loss adds reg/2 * 2
    torch.testing.assert_close(bpr_loss(model, users, positives, negatives, reg=0.5),
                               torch.tensor(math.log(2) + 0.5))


def test_warp_weights_the_first_violator_by_its_approximate_rank():
    itemnum = 31
    model = set_parameters(BPRMF(1, itemnum, 1), gamma_user=[[0.0]], gamma_item=[[0.0]] * itemnum,
                           beta_item=[0.0] + [-5.0] * 10 + [0.5] * 20)
    users, positives = torch.tensor([0, 0]), torch.tensor([0, 0])
    negatives = torch.tensor([[1, 2, 11, 12],      # first violator (score 0.5 > 0 - 1) at draw 3
                              [1, 2, 3, 4]])       # no violator: no update
    trials = 3
    expected = harmonic(torch.tensor(float((itemnum - 1) // trials))) * (1 - 0 + 0.5) / 2
    torch.testing.assert_close(warp_loss(model, users, positives, negatives, reg=0.0), expected)
    torch.testing.assert_close(harmonic(torch.tensor(4.0)), torch.tensor(1 + 1 / 2 + 1 / 3 + 1 / 4))


def test_ncf_log_loss_labels_the_positive_one_and_negatives_zero():
    model = set_parameters(GMF(1, 3, 1), p_user=[[1.0]], q_item=[[2.0], [0.0], [-2.0]], h=[1.0])
    loss = log_loss(model, torch.tensor([0]), torch.tensor([0]), torch.tensor([[1, 2]]), reg=0.0)
    expected = -(F.logsigmoid(torch.tensor(2.0)) + F.logsigmoid(torch.tensor(0.0)) + F.logsigmoid(torch.tensor(2.0)))
    torch.testing.assert_close(loss, expected / 3)


def test_sampler_draws_positives_from_training_and_negatives_outside_it(popular):
    users, positives, negatives = TripletSampler(popular, seed=0).sample(4000, NEGATIVES_PER_POSITIVE)
    assert negatives.shape == (4000, NEGATIVES_PER_POSITIVE)
    train = [set(items.tolist()) for items in popular.user_train]
    assert all(i in train[u] for u, i in zip(users.tolist(), positives.tolist()))
    assert not any(j in train[u] for u, row in zip(users.tolist(), negatives.tolist()) for j in row)
    assert len(set(users.tolist())) > 0.9 * popular.usernum


def test_sampler_refuses_a_user_without_a_possible_positive_or_negative():
    with pytest.raises(DatasetError, match=r"1 users have no training item \(e.g. user 1\)"):
        TripletSampler(split_choices([[0, 1, 2], [0, 1]], 3), seed=0)
    with pytest.raises(DatasetError, match="user 0 has every item in training"):
        TripletSampler(split_choices([[0, 1, 0, 1, 2], [0, 1, 2]], 3), seed=0)


# ----------------------------------------------------------------------------------- each model beats RAND

SETTINGS = FitSettings(epochs=6, batch_size=64, lr=0.02)


def rand_auc(dataset):
    return evaluate(Random(dataset.itemnum), dataset, "test", CPU)["all"]


def fitted_test_auc(model, dataset, loss, negatives=1, reg=0.001):
    settings = FitSettings(**{**SETTINGS.__dict__, "negatives": negatives})
    fitted = fit(model, dataset, loss, reg, settings, CPU)
    return evaluate(fitted.model, dataset, "test", CPU)["all"]


@pytest.mark.parametrize("name", ["PopRank", "BPR-MF", "WARP", "GMF", "MLP"])
def test_popularity_driven_data_is_learned(popular, name):
    torch.manual_seed(0)
    u, i = popular.usernum, popular.itemnum
    if name == "PopRank":
        auc = evaluate(PopRank(popular), popular, "test", CPU)["all"]
    else:
        model, loss, negatives = {"BPR-MF": (BPRMF(u, i, 8), bpr_loss, 1), "WARP": (BPRMF(u, i, 8), warp_loss, 10),
                                  "GMF": (GMF(u, i, 8), log_loss, 4), "MLP": (MLP(u, i, 8), log_loss, 4)}[name]
        auc = fitted_test_auc(model, popular, loss, negatives)
    assert auc > rand_auc(popular) + 0.15


@pytest.mark.parametrize("name", ["VisRank", "FM", "VBPR"])
def test_feature_driven_data_is_learned_by_the_visual_models(visual, name):
    dataset, features = visual
    torch.manual_seed(0)
    if name == "VisRank":
        result = evaluate(VisRank(dataset, features), dataset, "test", CPU)
    else:
        build = FactorizationMachine if name == "FM" else VBPR
        fitted = fit(build(dataset.usernum, features, 8), dataset, bpr_loss, 0.001, SETTINGS, CPU)
        result = evaluate(fitted.model, dataset, "test", CPU)
    assert result["all"] > rand_auc(dataset) + 0.2
    assert result["cold"] > 0.7     # items barely seen in training are still placed by their looks


def test_fit_restores_the_best_validation_epoch(popular):
    torch.manual_seed(0)
    fitted = fit(BPRMF(popular.usernum, popular.itemnum, 4), popular, bpr_loss, 0.0, SETTINGS, CPU)
    assert 1 <= fitted.epoch <= SETTINGS.epochs
    assert evaluate(fitted.model, popular, "validation", CPU)["all"] == pytest.approx(fitted.valid["all"])


# -------------------------------------------------------------------------------------------- grid search

class Oracle:
    """Scores one split's held-out items 1 and every other item 0."""

    def __init__(self, dataset, split):
        self.held_out = torch.as_tensor(dataset.user_validation if split == "validation" else dataset.user_test)
        self.itemnum = dataset.itemnum

    def scorer(self):
        return lambda users: F.one_hot(self.held_out[users], self.itemnum).float()


@pytest.mark.parametrize("order", [("test", "validation"), ("validation", "test")])
def test_grid_search_selects_by_validation_and_reports_test_of_that_choice(popular, order):
    train = lambda split: unlearned(Oracle(popular, split), popular, CPU)
    selection = grid_search("oracle", popular, train, [{"split": split} for split in order], CPU)
    assert selection.params == {"split": "validation"}
    assert selection.valid["all"] == 1.0
    assert selection.test["all"] < 0.6      # the test oracle would have scored 1.0 on test
    assert [trial["split"] for trial in selection.trials] == list(order)


# ------------------------------------------------------------------------------------------ visual features

def write_image_dataset(path, colours, categories=None):
    """A dataset in the original format whose item i is a flat image of colours[i]; 2 users."""
    def png(colour):
        buffer = io.BytesIO()
        Image.new("RGB", (40, 40), colour).save(buffer, format="PNG")
        return buffer.getvalue()
    items = [{"imgs": png(colour)} for colour in colours]
    if categories is not None:
        for item, category in zip(items, categories):
            item["c"] = [int(category == k) for k in range(max(categories) + 1)]
    n = len(colours)
    records = lambda ids: [{"productid": int(i)} for i in ids]
    save_original_format(path, {0: records(range(2, n)), 1: records(range(2, n))}, {0: records([0]), 1: records([1])},
                         {0: records([1]), 1: records([0])}, items, 2, n)
    return load_dataset(path)


def test_cnnf_features_are_the_last_hidden_layer_of_a_category_classifier(tmp_path):
    rng = np.random.default_rng(0)
    categories = [0, 1] * 12
    colours = [tuple(int(v) for v in rng.integers(0, 90, 3) + (150 if c == 0 else 0, 0, 150 if c == 1 else 0))
               for c in categories]                                  # reddish or bluish, every one different
    dataset = write_image_dataset(tmp_path / "Colours.npy", colours, categories)
    settings = FeatureSettings(image_size=32, epochs=4, batch_size=8, lr=3e-4)
    features, description = visual_features(dataset, settings, CPU, tmp_path / "features")
    assert features.shape == (24, 4096) and (features >= 0).all()
    assert "CNN-F" in description and "2 item categories" in description

    # the same seed trains the same network: its output layer reads the categories off the features
    _, head, metrics = pretrain_cnnf(dataset, image_store(dataset, 32, device=CPU), settings, CPU)
    assert metrics["train_accuracy"] == 1.0
    with torch.no_grad():
        assert head(features).argmax(1).tolist() == categories

    assert len(list((tmp_path / "features").glob("Colours-features-*.pt"))) == 1
    again, again_description = visual_features(dataset, settings, CPU, tmp_path / "features")
    torch.testing.assert_close(again, features, atol=1e-2, rtol=1e-3)   # read back from the float16 cache
    assert again_description == description


def test_cnnf_features_need_categories(tmp_path):
    dataset = write_image_dataset(tmp_path / "Plain.npy", [(200, 200, 200)] * 4)
    with pytest.raises(DatasetError, match="imagenet-weights"):
        visual_features(dataset, FeatureSettings(image_size=32, epochs=1), CPU, tmp_path / "features")


def test_imagenet_features_are_alexnet_fc7_of_the_given_weights(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.alexnet().eval()       # random weights stand in for ImageNet's
    weights = tmp_path / "alexnet-random.pth"
    torch.save(reference.state_dict(), weights)
    dataset = write_image_dataset(tmp_path / "Four.npy", [(250, 0, 0), (0, 250, 0), (0, 0, 250), (90, 90, 90)])
    features, description = imagenet_features(dataset, FeatureSettings(imagenet_weights=str(weights)), CPU)
    assert "alexnet-random.pth" in description and features.shape == (4, 4096) and (features >= 0).all()

    image = torch.tensor([0.0, 0.0, 250 / 255])[:, None, None].expand(3, 224, 224)
    normalised = (image - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
        [0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        hidden = torch.flatten(reference.avgpool(reference.features(normalised[None])), 1)
        fc7 = reference.classifier[:6](hidden)
    torch.testing.assert_close(features[2:3], fc7, atol=1e-4, rtol=1e-3)


def test_a_weights_file_that_is_not_alexnet_is_refused(tmp_path):
    weights = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, weights)
    with pytest.raises(ConfigError, match="not a torchvision AlexNet"):
        alexnet_fc7(weights)
    with pytest.raises(ConfigError, match="download_pretrained_models.sh"):
        alexnet_fc7(tmp_path / "missing.pth")
    (tmp_path / "truncated.pth").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ConfigError, match="cannot read"):
        alexnet_fc7(tmp_path / "truncated.pth")


# --------------------------------------------------------------------------------------------------- table

def fake_selection(all_auc, cold_auc, **metrics):
    result = {"all": all_auc, "cold": cold_auc, "metrics": {"auc": all_auc, "auc_cold": cold_auc, **metrics}}
    return SimpleNamespace(test=result, valid=result, params={"factors": 10}, epoch=3, trials=[])


def test_improvements_reproduce_the_papers_percentages():
    for name, (_, rows) in PAPER_TABLE.items():
        for setting, values in rows.items():
            row = dict(zip(PAPER_METHODS, values))
            for ours, printed in zip(improvements(row), values[-2:]):
                assert ours == pytest.approx(printed, abs=0.051), (name, setting)


def test_no_improvement_over_a_method_that_scored_zero():
    assert improvements({"RAND": 0.0, "BPR-MF": 0.0, "DVBPR": 0.02}) == (None, None)
    assert improvements({"RAND": 0.0, "BPR-MF": 0.01, "DVBPR": 0.02}) == (100.0, 100.0)


def test_table_files_have_every_method_and_the_papers_numbers(tmp_path):
    selections = {method: fake_selection(0.5 + 0.03 * k, 0.45 + 0.03 * k) for k, method in enumerate(LABELS)}
    table = build_table("AmazonFashion6ImgPartitioned", selections, "test features", "exact")
    paths = write_table(tmp_path, table)
    assert [p.name for p in paths] == ["table.md", "table.csv", "table.json"]

    rows = list(csv.reader(open(tmp_path / "table.csv")))
    assert rows[0] == ["setting", "source", *LABELS, VS_BPRMF, VS_BEST]
    assert [row[:2] for row in rows[1:]] == [["All Items", "ours"], ["All Items", "paper"],
                                             ["Cold Items", "ours"], ["Cold Items", "paper"]]
    paper_all = dict(zip(rows[0], rows[2]))
    assert float(paper_all["DVBPR"]) == 0.7964 and float(paper_all["FM"]) == 0.7093 and paper_all["GMF"] == ""
    ours_all = dict(zip(rows[0], rows[1]))
    dvbpr, bprmf = (0.5 + 0.03 * LABELS.index(method) for method in ("DVBPR", "BPR-MF"))
    best_other = 0.5 + 0.03 * max(k for k, method in enumerate(LABELS) if method != "DVBPR")
    assert float(ours_all[VS_BPRMF]) == round(100 * (dvbpr / bprmf - 1), 1)
    assert float(ours_all[VS_BEST]) == round(100 * (dvbpr / best_other - 1), 1)

    saved = json.loads((tmp_path / "table.json").read_text())
    assert saved["paper_dataset"] == "Amazon Fashion" and saved["rows"]["Cold Items"]["DVBPR"] == pytest.approx(
        0.45 + 0.03 * LABELS.index("DVBPR"))
    markdown = (tmp_path / "table.md").read_text()
    assert "| Cold Items (paper) |" in markdown and "Amazon Fashion" in markdown


def test_a_dataset_not_in_the_paper_gets_no_paper_rows(tmp_path):
    selections = {"BPR-MF": fake_selection(0.6, 0.5), "DVBPR": fake_selection(0.66, None)}
    table = build_table("EmbeddedFashion6", selections, "test features", "exact")
    write_table(tmp_path, table)
    rows = list(csv.reader(open(tmp_path / "table.csv")))
    assert rows[0] == ["setting", "source", "BPR-MF", "DVBPR", VS_BPRMF, VS_BEST]
    assert [row[1] for row in rows[1:]] == ["ours", "ours"]
    assert rows[1][4:] == ["10.0", "10.0"] and rows[2][3:] == ["", "", ""]


def test_each_metric_asked_for_adds_its_all_and_cold_rows_without_paper_numbers(tmp_path):
    selections = {method: fake_selection(0.6 + 0.01 * k, 0.5, **{"ndcg@20": 0.1 + 0.01 * k, "ndcg@20_cold": None})
                  for k, method in enumerate(("BPR-MF", "DVBPR"))}
    table = build_table("AmazonFashion6ImgPartitioned", selections, "test features", "exact",
                        metrics=("auc", "ndcg@20"), select_metric="valid_ndcg@20")
    write_table(tmp_path, table)
    rows = list(csv.reader(open(tmp_path / "table.csv")))
    assert [row[:2] for row in rows[1:]] == [["All Items", "ours"], ["All Items", "paper"], ["Cold Items", "ours"],
                                             ["Cold Items", "paper"], ["NDCG@20, All Items", "ours"],
                                             ["NDCG@20, Cold Items", "ours"]]
    assert table["rows"]["NDCG@20, All Items"]["DVBPR"] == 0.11 and rows[5][2:] == ["0.1", "0.11", "10.0", "10.0"]
    assert rows[6][2:] == ["", "", "", ""]
    markdown = (tmp_path / "table.md").read_text()
    assert "Test AUC, NDCG@20 (exact protocol" in markdown and "selected by validation NDCG@20." in markdown


# --------------------------------------------------------------------------------------------- entry point

@pytest.fixture(scope="module")
def paper_named_catalogue(catalogue):
    """A tiny catalogue saved under the AmazonFashion file name, so that the paper's row is printed beside."""
    return catalogue(num_users=40, num_items=60, name="AmazonFashion6ImgPartitioned")


def finished_dvbpr_run(directory, dataset_name, protocol="exact", ties="fail"):
    directory.mkdir()
    (directory / "results.json").write_text(json.dumps(dict(
        dataset=dataset_name, protocol=protocol, ties=ties, k=50, image_size=32, epoch=4, valid_auc=0.71,
        valid_auc_cold=0.69, test_auc=0.7, test_auc_cold=0.68, wall_seconds=1.0)))
    return directory


def quick_argv(dataset_path, out, finished_run):
    """Quick settings; DVBPR's and Attention's columns both read `finished_run`."""
    return ["--dataset", str(dataset_path), "--out", str(out), "--dvbpr-run", str(finished_run),
            "--attention-run", str(finished_run), "--factors", "4",
            "--regs", "0.01", "--epochs", "2", "--feature-image-size", "32", "--feature-epochs", "1",
            "--device", "cpu"]


def test_main_runs_every_method_and_writes_table_iii(tmp_path, paper_named_catalogue):
    run = finished_dvbpr_run(tmp_path / "dvbpr", "AmazonFashion6ImgPartitioned")
    table = baselines_main(quick_argv(paper_named_catalogue, tmp_path / "out", run))
    rows = list(csv.reader(open(tmp_path / "out" / "table.csv")))
    assert rows[0] == ["setting", "source", *LABELS, VS_BPRMF, VS_BEST]
    assert [row[1] for row in rows[1:]] == ["ours", "paper", "ours", "paper"]
    assert float(dict(zip(rows[0], rows[1]))["DVBPR"]) == 0.7
    assert table["selected"]["VBPR"]["params"] == {"factors": 4, "reg": 0.01}
    assert all(0 <= table["rows"]["All Items"][method] <= 1 for method in LABELS)
    assert "CNN-F" in table["features"]
    logged = [json.loads(line)["name"] for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert logged == LABELS


def test_main_refuses_a_dvbpr_run_of_another_dataset(tmp_path, paper_named_catalogue):
    run = finished_dvbpr_run(tmp_path / "dvbpr", "AmazonMenWithImgPartitioned")
    with pytest.raises(SystemExit, match="AmazonMenWithImgPartitioned"):
        baselines_main(quick_argv(paper_named_catalogue, tmp_path / "out", run) + ["--models", "poprank", "dvbpr"])
    with pytest.raises(SystemExit, match="unknown model"):
        baselines_main(["--models", "poprank", "svd"])


def test_main_refuses_a_dvbpr_run_whose_ties_count_otherwise(tmp_path, paper_named_catalogue):
    run = finished_dvbpr_run(tmp_path / "dvbpr", "AmazonFashion6ImgPartitioned", ties="half")
    argv = quick_argv(paper_named_catalogue, tmp_path / "out", run) + ["--models", "dvbpr"]
    refused = r"exact protocol \(ties: half\).*not from a run of the exact protocol \(ties: fail\)"
    with pytest.raises(SystemExit, match=refused):
        baselines_main(argv)
    assert baselines_main(argv + ["--ties", "half"])["ties"] == "half"


def test_ties_half_reaches_the_baselines_and_the_table(tmp_path, paper_named_catalogue):
    run = finished_dvbpr_run(tmp_path / "dvbpr", "AmazonFashion6ImgPartitioned")
    argv = quick_argv(paper_named_catalogue, tmp_path / "out", run) + ["--models", "rand", "poprank"]
    fail = baselines_main(argv)
    half = baselines_main(argv + ["--ties", "half", "--out", str(tmp_path / "half")])
    assert (fail["ties"], half["ties"]) == ("fail", "half")
    assert half["rows"]["All Items"]["PopRank"] > fail["rows"]["All Items"]["PopRank"]  # counts tie a lot
    assert half["rows"]["All Items"]["RAND"] == fail["rows"]["All Items"]["RAND"] > 0.3   # continuous scores
    assert "a tie counts half" in (tmp_path / "half" / "table.md").read_text()


def test_preset_demo_gives_the_demo_settings_on_any_dataset():
    cfg, _ = parse_config(BaselinesConfig, ["--preset", "demo", "--dataset", "elsewhere.npy", "--epochs", "4"], PRESETS)
    assert all(getattr(cfg, name) == value for name, value in DEMO.items() if name != "epochs")
    assert (cfg.epochs, cfg.ties, cfg.protocol) == (4, "fail", "exact")


def test_the_table_shows_the_metrics_asked_for_and_models_are_kept_by_the_one_chosen(tmp_path, paper_named_catalogue):
    run = finished_dvbpr_run(tmp_path / "dvbpr", "AmazonFashion6ImgPartitioned")
    argv = quick_argv(paper_named_catalogue, tmp_path / "out", run) + ["--models", "poprank", "bpr-mf"]
    table = baselines_main(argv + ["--metric", "ndcg@20", "recall@20", "--select-metric", "valid_ndcg@20"])
    assert list(table["rows"]) == ["NDCG@20, All Items", "NDCG@20, Cold Items", "Recall@20, All Items",
                                   "Recall@20, Cold Items"]
    chosen = table["selected"]["BPR-MF"]
    assert 0 <= table["rows"]["NDCG@20, All Items"]["BPR-MF"] == chosen["test"]["metrics"]["ndcg@20"] <= 1
    with pytest.raises(SystemExit, match="kept the epoch of the best valid_auc, not of the best valid_ndcg@20"):
        baselines_main(argv + ["--models", "dvbpr", "--select-metric", "valid_ndcg@20"])
    with pytest.raises(SystemExit, match="--metric ndcg@7 is not one of"):
        baselines_main(argv + ["--metric", "ndcg@7"])
    with pytest.raises(SystemExit, match="every user evaluated, not from a run of the exact .* 5 users evaluated"):
        baselines_main(argv + ["--models", "dvbpr", "--eval-users", "5"])
