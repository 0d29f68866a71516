"""TensorBoard event files from RunLog: what a record's fields, a DVBPR run and a GAN run put there, read back
with TensorBoard's own reader (skipped where tensorboard is not installed)."""
import json
import sys

import pytest
import torch

from common.data import load_dataset
from common.runlog import EVENT_FILES, RunLog
from dvbpr.main import main as dvbpr_main
from gan.config import GANConfig
from gan.train import train as train_gan
from tests.helpers import place_random_classifier

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_events(folder):
    """{tag: [(step, value, wall time)]} of the scalars, and {tag: [(step, height, width)]} of the images."""
    events = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0,
                                                                             event_accumulator.IMAGES: 0})
    events.Reload()
    tags = events.Tags()
    scalars = {tag: [(e.step, e.value, e.wall_time) for e in events.Scalars(tag)] for tag in tags["scalars"]}
    images = {tag: [(e.step, e.height, e.width) for e in events.Images(tag)] for tag in tags["images"]}
    return scalars, images


def test_a_record_becomes_scalars_at_its_step_and_starting_afresh_clears_them(tmp_path):
    log = RunLog(tmp_path)
    log.record(epoch=1, step=10, loss=2.5, protocol="exact", diverged=False, valid={"all": 0.75, "cold": None},
               trials=[1, 2], time=1000.0)
    log.record(epoch=2, loss=1.5, time=1001.0)                        # no step: at its epoch
    log.record(name="BPR-MF", valid={"all": 0.6}, time=1002.0)         # neither: at its place in the log
    log.add_image_grid("samples", torch.rand(6, 3, 8, 8) * 2 - 1, 10, nrow=3, value_range=(-1, 1))
    scalars, images = read_events(tmp_path)
    assert scalars == {"epoch": [(10, 1.0, 1000.0)], "loss": [(10, 2.5, 1000.0), (2, 1.5, 1001.0)],
                       "valid/all": [(10, 0.75, 1000.0)], "BPR-MF/valid/all": [(3, pytest.approx(0.6), 1002.0)]}
    assert images == {"samples": [(10, 2 * 8 + 3 * 2, 3 * 8 + 4 * 2)]}  # make_grid's 2-pixel padding

    RunLog(tmp_path, resume=True).record(step=11, loss=1.0)
    assert [step for step, _, _ in read_events(tmp_path)[0]["loss"]] == [10, 2, 11]
    RunLog(tmp_path).record(step=1, loss=9.0, time=2000.0)
    assert read_events(tmp_path) == ({"loss": [(1, 9.0, 2000.0)]}, {})


def test_without_tensorboard_the_log_writes_no_event_file(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when it is not installed
    log = RunLog(tmp_path)
    log.record(step=1, loss=1.0)
    log.add_image_grid("samples", torch.zeros(1, 3, 4, 4), 1)
    assert log.writer is None and not list(tmp_path.glob(EVENT_FILES))
    assert log.records()[0]["loss"] == 1.0


def test_a_dvbpr_run_logs_every_epoch_metric_with_the_learning_rate_and_throughput(catalogue, tmp_path):
    dvbpr_main(["--dataset", str(catalogue()), "--out", str(tmp_path), "--image-size", "32", "--k", "8",
                "--fc-width", "64", "--batch-size", "16", "--epochs", "2", "--lr", "0.01", "--lr-schedule", "cosine",
                "--device", "cpu"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scalars, _ = read_events(tmp_path)
    for name in ("loss", "valid_auc", "valid_auc_cold", "test_auc", "test_auc_cold", "lr", "triplets_per_s",
                 "seconds", "epoch"):
        assert [(step, value) for step, value, _ in scalars[name]] == \
               [(r["step"], pytest.approx(r[name], rel=1e-6)) for r in records], name
    assert records[-1]["lr"] < records[0]["lr"] < 0.01 and all(r["triplets_per_s"] > 0 for r in records)


def test_a_gan_run_logs_its_losses_and_sample_grids(catalogue, tmp_path):
    dataset = load_dataset(catalogue())
    place_random_classifier(tmp_path, dataset, 32)
    cfg = GANConfig(dataset=str(dataset.path), out=str(tmp_path), image_size=32, g_width=4, d_width=4, batch_size=16,
                    epochs=1, sample_every=5, checkpoint_every=5, consistency_samples=2, device="cpu")
    train_gan(cfg)
    scalars, images = read_events(tmp_path)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [step for step, _, _ in scalars["g_loss"]] == [r["step"] for r in logged if "g_loss" in r]
    assert scalars["condition_consistency/overall"][0][1] == pytest.approx(logged[-1]["condition_consistency"]
                                                                            ["overall"])
    grids = sorted((tmp_path / "samples").glob("train_*.png"))
    assert len(images["samples"]) == len(grids) and images["samples"][0][1:] == (4 * 32 + 5 * 2,) * 2
