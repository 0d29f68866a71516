import dataclasses
import io
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from common.checkpoint import save_checkpoint
from common.data import history, load_dataset
from common.images import decode_image, image_cache, scale_to_model
from common.training import snapshot
from dvbpr.config import DVBPRConfig
from dvbpr.model import build_model
from dvbpr.train import save_embeddings
from tools.recommend import (
    RecommendError,
    main,
    open_dvbpr_run,
    parse_category,
    similar_items,
    top_k,
)

ROOT = Path(__file__).resolve().parents[1]


def save_random_run(run, dataset):
    """A run directory as training leaves it (best.pt, random weights), but without embeddings.pt."""
    torch.manual_seed(0)
    cfg = DVBPRConfig(dataset=str(dataset.path), out=str(run), k=8, image_size=32, fc_width=256, epochs=1)
    model = build_model(cfg, dataset.usernum)
    model.theta.data = torch.randn_like(model.theta)  # trained users are spread out, not the tiny initial theta
    save_checkpoint(run / "best.pt", snapshot("dvbpr", model, cfg, {"epoch": 1, "step": 3}, None))
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, catalogue):
    """Tiny catalogue, a run with random weights, and its item embeddings computed here straight from the pixels."""
    root = tmp_path_factory.mktemp("recommend")
    dataset = load_dataset(catalogue(num_users=12, num_items=40))
    model = save_random_run(root / "run", dataset)
    with torch.no_grad():
        items = model.phi(scale_to_model(torch.from_numpy(np.array(image_cache(dataset, 32)))))
    run = open_dvbpr_run(root / "run")  # computes the embeddings (embeddings.pt is missing) without writing
    assert not (root / "run" / "embeddings.pt").exists()
    save_embeddings(root / "run" / "embeddings.pt", run.theta, run.items, dataclasses.asdict(run.config), 1, 3, None)
    return SimpleNamespace(root=root, run=run, dataset=dataset, theta=model.theta.detach(), items=items)


def cli(argv):
    return main([*argv, "--device", "cpu"])  # CPU float32 everywhere, as the reference embeddings


def brute_force_top(scores, allowed, k):
    order = [i for i in np.argsort(-scores.numpy(), kind="stable") if allowed[i]]
    return order[:k]


def test_top_k_leaves_out_history_and_matches_a_brute_force_ranking(trained):
    for user in range(trained.dataset.usernum):
        ids, scores = top_k(trained.run, user, k=5)
        seen = history(trained.dataset, user)
        assert set(seen) >= set(trained.dataset.user_train[user]) | {trained.dataset.user_validation[user],
                                                                     trained.dataset.user_test[user]}
        assert not set(ids.tolist()) & set(seen)
        assert torch.all(scores[:-1] >= scores[1:])
        reference = trained.items @ trained.theta[user]
        allowed = np.ones(trained.dataset.itemnum, bool)
        allowed[seen] = False
        assert ids.tolist() == brute_force_top(reference, allowed, 5)
        torch.testing.assert_close(scores, reference[ids], rtol=1e-4, atol=1e-5)


def test_include_heldout_keeps_validation_and_test_items(trained):
    dataset, user = trained.dataset, 2
    ids, _ = top_k(trained.run, user, k=dataset.itemnum, include_heldout=True)
    assert {dataset.user_validation[user], dataset.user_test[user]} <= set(ids.tolist())
    assert not set(ids.tolist()) & set(dataset.user_train[user])
    assert len(ids) == dataset.itemnum - len(set(dataset.user_train[user]))


def test_category_restricts_the_list_by_index_or_name(trained):
    dataset, user = trained.dataset, 1
    category = parse_category("Women's Tops", dataset)
    assert category == parse_category("1", dataset) == 1
    ids, _ = top_k(trained.run, user, k=3, category=category)
    allowed = dataset.item_category == category
    allowed[history(dataset, user)] = False
    assert ids.tolist() == brute_force_top(trained.items @ trained.theta[user], allowed, 3)
    with pytest.raises(RecommendError, match="unknown category 'hats'"):
        parse_category("hats", dataset)
    with pytest.raises(RecommendError, match="unknown category '6'"):
        parse_category("6", dataset)


def test_similar_to_leaves_out_the_item_and_sorts_neighbours_by_cosine(trained):
    item = 5
    ids, cosines = similar_items(trained.run, item, k=6)
    assert item not in ids.tolist() and torch.all(cosines[:-1] >= cosines[1:])
    unit = F.normalize(trained.items, dim=1)
    reference = unit @ unit[item]
    allowed = np.arange(trained.dataset.itemnum) != item
    assert ids.tolist() == brute_force_top(reference, allowed, 6)
    torch.testing.assert_close(cosines, reference[ids], rtol=1e-4, atol=1e-5)
    for_user, _ = similar_items(trained.run, item, k=trained.dataset.itemnum, user=0)
    assert not set(for_user.tolist()) & set(history(trained.dataset, 0)) and item not in for_user.tolist()


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_a_copy_of_a_catalogue_image_scores_as_that_item(trained, tmp_path, capsys, fmt):
    dataset, user = trained.dataset, 3
    item = int(dataset.user_train[user][0])  # not a candidate itself, so its rank does not tie with its copy
    path = tmp_path / f"new.{fmt}"
    if fmt == "jpeg":
        path.write_bytes(dataset.image_bytes[item])
    else:  # lossless re-encoding of the decoded JPEG: the same pixels
        Image.open(io.BytesIO(dataset.image_bytes[item])).convert("RGB").save(path)
    score, rank = cli(["--run", str(trained.root / "run"), "--user", str(user), "--image", str(path)])
    expected = (trained.items[item] @ trained.theta[user]).item()
    assert score == pytest.approx(expected, rel=1e-4, abs=1e-5)
    candidates = np.ones(dataset.itemnum, bool)
    candidates[history(dataset, user)] = False
    scores = (trained.items @ trained.theta[user]).numpy()[candidates]
    assert rank == 1 + (scores > expected).sum()
    assert f"it would rank {rank} of {candidates.sum() + 1} " in capsys.readouterr().out


def test_an_unreadable_image_is_a_one_line_error_naming_the_file(trained, tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    result = subprocess.run([sys.executable, "tools/recommend.py", "--run", str(trained.root / "run"), "--user", "0",
                             "--image", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip() == f"recommend: {bad} is not a readable image (PIL cannot decode it)"
    with pytest.raises(SystemExit, match="cannot read image file .*missing.png"):
        cli(["--run", str(trained.root / "run"), "--user", "0", "--image", str(tmp_path / "missing.png")])


@pytest.mark.parametrize("mode", [["--user", "4"], ["--similar-to", "9"], ["--user", "4", "--category", "2"]])
def test_the_cli_saves_a_strip_of_the_listed_items_images(trained, tmp_path, capsys, mode):
    k, tile = 4, 24
    ids, values = cli(["--run", str(trained.root / "run"), "--top-k", str(k), "--tile-size", str(tile),
                        "--out", str(tmp_path), *mode])
    strip, = tmp_path.glob("*.png")
    pixels = np.asarray(Image.open(strip).convert("RGB"))
    assert pixels.shape == (tile + 4, k * (tile + 2) + 2, 3)  # save_image's 2 px padding around each tile
    for position, item in enumerate(ids.tolist()):
        left = 2 + position * (tile + 2)
        tile_pixels = pixels[2:2 + tile, left:left + tile].transpose(2, 0, 1)
        np.testing.assert_array_equal(tile_pixels, decode_image(trained.dataset.image_bytes[item], tile, "bicubic"))
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[2:2 + k]]
    assert [int(row[1]) for row in rows] == ids.tolist()
    assert [float(row[2]) for row in rows] == pytest.approx(values.tolist(), rel=1e-4, abs=1e-5)


def test_missing_embeddings_are_computed_and_the_run_is_left_unwritten(trained, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained.root / "run" / "best.pt", run / "best.pt")
    ids, _ = cli(["--run", str(run), "--user", "0", "--top-k", "2", "--out", str(tmp_path / "strips")])
    assert "embeddings.pt missing: computing the item embeddings of best.pt" in capsys.readouterr().out
    assert sorted(path.name for path in run.iterdir()) == ["best.pt"]
    torch.testing.assert_close(open_dvbpr_run(run).items, trained.items, rtol=1e-4, atol=1e-5)
    assert ids.tolist() == cli(["--run", str(trained.root / "run"), "--user", "0", "--top-k", "2",
                                "--out", str(tmp_path / "strips")])[0].tolist()


def test_bad_requests_give_clear_errors(trained, tmp_path, catalogue):
    run = str(trained.root / "run")
    cases = {
        ("--run", str(tmp_path / "nowhere"), "--user", "0"): r"make one with `python dvbpr/main\.py --out",
        ("--run", run, "--user", "12"): r"user 12 is out of range: the dataset has 12 users \(0 to 11\)",
        ("--run", run, "--similar-to", "40"): r"item 40 is out of range",
        ("--run", run, "--user", "0", "--category", "hats"): r"unknown category 'hats'.*0 \(men's tops\)",
        ("--run", run): r"give --user U",
        ("--run", run, "--user", "0", "--top-k", "1000"): r"--top-k must be from 1 to 100",
    }
    for argv, message in cases.items():
        with pytest.raises(SystemExit, match=message):
            cli(list(argv))
    other = catalogue(num_users=13, num_items=40)
    with pytest.raises(SystemExit, match="has 12 users but .* has 13: give the --dataset it was trained on"):
        cli(["--run", run, "--user", "0", "--dataset", str(other)])
