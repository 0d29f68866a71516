"""The region-attention stage: trained by the shared loop, resumed to identical numbers, read back by its run.py,
and its command line."""
import json

import pytest
import torch

from attention.config import AttentionConfig
from attention.main import main
from attention.model import build_attention
from attention.run import open_attention_run, read_results
from common.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def tiny_path(catalogue):
    return catalogue(num_users=12, num_items=240, image_size=32)


def cli_args(dataset, out, *extra):
    return ["--dataset", str(dataset), "--out", str(out), "--k", "8", "--hidden", "8", "--image-size", "32",
            "--conv-widths", "8", "8", "8", "8", "8", "--batch-size", "16", "--lr", "0.01", "--device", "cpu",
            *extra]


def test_resume_reproduces_the_uninterrupted_run(tiny_path, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    results = main(cli_args(tiny_path, whole, "--epochs", "3"))
    main(cli_args(tiny_path, resumed, "--epochs", "1"))
    timeless = lambda history: [{k: v for k, v in r.items() if k not in ("seconds", "triplets_per_s")}
                                for r in history]
    again = main(["--out", str(resumed), "--resume", "--epochs", "3"])
    assert timeless(again["history"]) == timeless(results["history"])
    expected, got = load_checkpoint(whole / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    for name, tensor in expected["model"].items():
        torch.testing.assert_close(got["model"][name], tensor, rtol=0, atol=0)
    records = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]


def test_the_run_reads_back_what_training_kept(tiny_path, tmp_path):
    results = main(cli_args(tiny_path, tmp_path, "--epochs", "2", "--select-metric", "valid_ndcg@10"))
    assert read_results(tmp_path)["test_auc"] == results["test_auc"]
    assert results["select_metric"] == "valid_ndcg@10" and 0 <= results["test_ndcg@10_cold"] <= 1
    run = open_attention_run(tmp_path)
    assert run.epoch == results["epoch"] and not any(p.requires_grad for p in run.model.parameters())
    scores = run.scorer(torch.arange(run.dataset.usernum))
    assert scores.shape == (run.dataset.usernum, run.dataset.itemnum) and torch.isfinite(scores).all()
    kept = load_checkpoint(tmp_path / "best.pt")["metrics"]
    assert kept["valid_ndcg@10"] == max(r["valid_ndcg@10"] for r in results["history"])


def test_cnn_fs_fc_layers_are_frozen_and_left_out_of_the_decay():
    model = build_attention(AttentionConfig(image_size=32, conv_widths=[4, 4, 4, 4, 4], k=4), usernum=3)
    assert not any(p.requires_grad for layer in model.backbone.fc_layers() for p in layer.parameters())
    decayed = {id(w) for w in model.regularised_weights()}
    assert all(id(layer.weight) not in decayed for layer in model.backbone.fc_layers())
    assert all(id(conv.weight) in decayed for conv in model.backbone.convs())


@pytest.mark.parametrize("argv, message", [
    (["--hidden", "0"], "attention: --hidden must be at least 1, got 0"),
    (["--conv-widths", "8", "8"], "attention: --conv-widths takes five positive channel counts"),
    (["--warmup-epochs", "9", "--epochs", "2"], "attention: --warmup-epochs must be between 0 and --epochs"),
    (["--select-metric", "valid_ndcg@7"], "attention: --select-metric valid_ndcg@7 is not one of"),
])
def test_bad_flags_give_one_line(tmp_path, argv, message):
    with pytest.raises(SystemExit) as error:
        main(["--out", str(tmp_path), *argv])
    assert str(error.value).startswith(message)


def test_a_missing_run_says_how_to_make_it(tmp_path):
    with pytest.raises(Exception, match="python attention/main.py --out"):
        open_attention_run(tmp_path)
