"""Careless and hostile use of the stages: diverging runs, checkpoints of the wrong kind, moved and unwritable
paths, interrupted saves, huge images and non-finite scores. Each is refused with a message that names the file
or setting and the cause, and nothing crashes."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from common.errors import CheckpointError, RunError, TrainingDiverged
from common.images import MAX_PIXELS, decode_image
from common.metrics import evaluate_auc
from common.runlog import run_dir
from dvbpr.main import main as dvbpr_main
from gan.main import main as gan_main
from pm.main import main as pm_main
from tests.helpers import interactions_only

ROOT = Path(__file__).resolve().parents[1]
TINY_DVBPR = ["--image-size", "32", "--k", "8", "--fc-width", "64", "--batch-size", "16", "--epochs", "1",
              "--device", "cpu"]
TINY_GAN = ["--train", "--image-size", "16", "--z-dim", "8", "--g-width", "4", "--d-width", "4", "--batch-size",
            "16", "--epochs", "1", "--consistency-samples", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_path(catalogue):
    return catalogue(num_users=12, num_items=240)


def test_a_diverging_gan_stops_and_says_so(tiny_path, tmp_path):
    with pytest.raises(SystemExit, match="gan: the GAN's losses became .* lower --lr"):
        gan_main([*TINY_GAN, "--dataset", str(tiny_path), "--out", str(tmp_path), "--lr", "1e12",
                  "--epochs", "3"])


def test_auc_refuses_non_finite_scores():
    dataset = interactions_only(3, 6, [[0, 1], [2], [3]], [4, 5, 4], [5, 4, 5])
    scores = torch.zeros(3, 6)
    scores[1, 2] = float("nan")
    with pytest.raises(TrainingDiverged, match="NaN or infinite \\(e.g. for user 1\\)"):
        evaluate_auc(dataset, lambda users: scores[users], split="test")


def test_stage_checkpoints_of_the_wrong_kind_are_refused(tiny_path, tmp_path):
    gan_run = tmp_path / "gan"
    save_checkpoint(gan_run / "checkpoint.pt", {"stage": "gan", "config": {}})
    with pytest.raises(SystemExit, match="pm: .*gan.* was written by the 'gan' stage, not by 'dvbpr'"):
        pm_main(["--dvbpr-run", str(gan_run), "--gan-run", str(gan_run), "--device", "cpu"])
    save_checkpoint(tmp_path / "dvbpr" / "checkpoint.pt", {"stage": "dvbpr", "config": {"k": 8, "nonsense": 1}})
    with pytest.raises(SystemExit, match="dvbpr: .*checkpoint.pt has settings this version does not know: "
                                         "nonsense"):
        dvbpr_main(["--resume", "--out", str(tmp_path / "dvbpr")])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {tmp_path / 'junk.pt'}"):
        load_checkpoint(tmp_path / "junk.pt", "dvbpr")


def test_a_run_opens_from_another_directory_and_a_moved_dataset_is_named(tiny_path, tmp_path):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "Tiny.npy").write_bytes(tiny_path.read_bytes())
    (work / "data" / "Tiny.truth.npz").write_bytes(tiny_path.with_suffix(".truth.npz").read_bytes())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(ROOT / "dvbpr/main.py"), "--dataset", "data/Tiny.npy", "--out", "run",
                    *TINY_DVBPR], cwd=work, check=True, capture_output=True, env=env)
    assert json.loads((work / "run" / "results.json").read_text())["dataset_path"] == str(work / "data/Tiny.npy")
    elsewhere = subprocess.run([sys.executable, str(ROOT / "tools/recommend.py"), "--run", str(work / "run"),
                                "--user", "0", "--top-k", "3", "--device", "cpu"], cwd=tmp_path, capture_output=True,
                               text=True, env=env)
    assert elsewhere.returncode == 0, elsewhere.stderr
    (work / "data" / "Tiny.npy").rename(work / "Tiny.npy")
    (work / "run" / "embeddings.pt").unlink()
    moved = subprocess.run([sys.executable, str(ROOT / "tools/recommend.py"), "--run", str(work / "run"),
                            "--user", "0", "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert moved.returncode == 1 and "is not there any more: give its new place with --dataset" in moved.stderr
    assert "Traceback" not in moved.stderr


def test_an_unwritable_out_and_a_full_disk_are_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunError, match=f"cannot make the run directory {tmp_path / 'file' / 'run'}"):
        run_dir(tmp_path / "file" / "run", "dvbpr")

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(CheckpointError, match=f"cannot write {tmp_path / 'a.pt'}: no space left on the device"):
        atomic_write(tmp_path / "a.pt", full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_cache_beside_an_unwritable_dataset_says_to_use_cache_dir(tiny_path, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("")  # a file where the cache folder would go
    with pytest.raises(SystemExit, match=f"cannot make the image cache folder {blocked}.*--cache-dir"):
        dvbpr_main([*TINY_DVBPR, "--dataset", str(tiny_path), "--out", str(tmp_path / "run"),
                    "--cache-dir", str(blocked)])


def test_temporaries_of_interrupted_saves_are_cleared_on_the_next_start(tmp_path, capsys):
    (tmp_path / "checkpoint.pt.k2j4.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "best.pt").write_bytes(b"kept")
    run_dir(tmp_path, "dvbpr")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", ".lock.pid", "best.pt"]
    assert "removed 1 temporary files of interrupted saves (checkpoint.pt.k2j4.tmp)" in capsys.readouterr().out


def test_a_huge_image_is_not_decoded(tmp_path):
    side = int(MAX_PIXELS ** 0.5) + 100
    Image.new("1", (side, side)).save(tmp_path / "huge.png")
    assert decode_image((tmp_path / "huge.png").read_bytes(), 32) is None
    Image.new("1", (64, 64)).save(tmp_path / "small.png")
    assert decode_image((tmp_path / "small.png").read_bytes(), 32).shape == (3, 32, 32)
    assert np.asarray(decode_image((tmp_path / "small.png").read_bytes(), 32)).max() == 0


def test_preference_maximisation_and_a_baseline_stop_when_they_diverge():
    from baselines.bpr import BPRMF
    from baselines.train import FitSettings, fit
    from tests.test_pm import tiny_designer

    designer = tiny_designer()
    designer.dvbpr.head.weight.data[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="preference maximisation diverged .* lower --lr"):
        designer.maximise(torch.zeros(2, designer.z_dim), user=0, category=1, steps=2, lr=0.1)
    dataset = interactions_only(3, 6, [[0, 1], [2], [3]], [4, 5, 4], [5, 4, 5])
    nan_loss = lambda model, users, positives, negatives, reg: model(users, positives[:, None]).sum() * float("nan")
    with pytest.raises(TrainingDiverged, match="the loss became nan in BPR-MF epoch 1/2, step 1; lower --lr"):
        fit(BPRMF(3, 6, 2), dataset, nan_loss, 0.0, FitSettings(epochs=2, batch_size=4), "cpu", desc="BPR-MF")
