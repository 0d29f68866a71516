"""bench/gan_quality.py: --score (trained runs scored as the bench scores its candidates), --paired, and where its
figure goes."""
import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

import bench.gan_quality
from bench.gan_quality import (
    SELECTOR_SEED,
    Scorer,
    Trajectory,
    candidate_config,
    classifier_file,
    paired_consistency,
    paired_kid,
)
from bench.gan_quality import main as gan_quality
from bench.gan_throughput import main as gan_throughput
from common.checkpoint import load_checkpoint, save_checkpoint
from common.data import load_dataset
from common.errors import ConfigError
from common.images import image_store
from gan.generators import build_generator
from gan.run import open_gan_run
from gan.train import train as train_gan
from tests.helpers import place_random_classifier
from tests.test_gan_modern import tiny_config


@pytest.fixture(autouse=True)
def fewer_samples(monkeypatch):
    """A fifth of the benchmark's samples per category at each point: the same code, at a test's cost."""
    monkeypatch.setattr(bench.gan_quality, "SAMPLES_PER_CATEGORY", 50)


def collapse(run_dir):
    """The run's generator with every weight zeroed: one image, whatever the code."""
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt", "gan")
    checkpoint["model"]["generator"] = {name: torch.zeros_like(value)
                                        for name, value in checkpoint["model"]["generator"].items()}
    save_checkpoint(run_dir / "checkpoint.pt", checkpoint)


def test_score_writes_each_runs_fidelity_from_fixed_codes_through_one_classifier(catalogue, tmp_path):
    path = catalogue()
    place_random_classifier(tmp_path / "trained", load_dataset(path), 16)
    train_gan(tiny_config(dataset=str(path), out=str(tmp_path / "trained"), epochs=2))
    shutil.copytree(tmp_path / "trained", tmp_path / "collapsed")
    collapse(tmp_path / "collapsed")
    runs = [str(tmp_path / "trained"), str(tmp_path / "collapsed")]
    place_bench_classifier(tmp_path / "bench" / "Tiny", load_dataset(path), 16)   # the bench's, not trained here

    scores = gan_quality(["--score", *runs, "--paired", "--out", str(tmp_path / "bench")])
    assert json.loads((tmp_path / "bench" / "scores.json").read_text()) == scores
    paired = json.loads((tmp_path / "bench" / "paired.json").read_text())
    assert paired["pairs"] == [runs] and paired["ratios"] == [scores[runs[1]]["kid"] / scores[runs[0]]["kid"]]
    recorded = open_gan_run(runs[0]).metrics["condition_consistency"]["overall"]   # the copy's log is the same
    assert paired["consistency"]["values"] == [[recorded, recorded]] and paired["consistency"]["p_value"] == 1
    assert set(scores) == set(runs) and all(set(s) == {"kid", "kid_std", "fid", "precision", "recall", "fine_colour",
                                                       "real_fine_colour"} for s in scores.values())
    assert scores[runs[0]]["real_fine_colour"] == scores[runs[1]]["real_fine_colour"]   # the same real items
    assert [p.name for p in (tmp_path / "bench").rglob("classifier*.pt")] == ["classifier-16px.pt"]   # one per dataset
    assert scores[runs[1]]["kid"] != scores[runs[0]]["kid"]   # the generator's weights are what is scored
    assert gan_quality(["--score", runs[0], "--out", str(tmp_path / "bench")])[runs[0]] == scores[runs[0]]


def kid_results(pairs):
    runs = [name for index in range(len(pairs)) for name in (f"a{index}", f"b{index}")]
    return runs, {name: {"kid": kid} for name, kid in zip(runs, np.ravel(pairs))}


def test_paired_kid_finds_a_setting_that_halves_the_kid_on_every_item_set_and_not_a_coin_toss():
    firsts = np.geomspace(0.3, 1.5, 10)                       # item sets whose KIDs differ five-fold
    runs, results = kid_results(np.stack([firsts, 0.5 * firsts * np.linspace(0.8, 1.2, 10)], 1))
    test = paired_kid(results, runs)["test"]
    assert test["below"] == 10 and test["p_value"] < 0.01
    assert math.isclose(test["geometric_mean_ratio"], 0.5 * np.exp(np.log(np.linspace(0.8, 1.2, 10)).mean()))
    runs, results = kid_results(np.stack([firsts, firsts * np.tile([0.5, 2.0], 5)], 1))   # halved or doubled
    test = paired_kid(results, runs)["test"]
    assert math.isclose(test["geometric_mean_ratio"], 1.0) and test["p_value"] > 0.5
    runs, results = kid_results([[0.4, 0.2], [0.3, -0.01]])   # a KID below 0: ratios, but no test of their logs
    assert paired_kid(results, runs)["test"] is None


def test_paired_consistency_counts_the_pairs_a_setting_raised_and_needs_every_run_to_have_recorded_one():
    runs = [name for index in range(8) for name in (f"a{index}", f"b{index}")]
    raised = {run: (0.80 if run.startswith("a") else 0.90) + int(run[1:]) / 100 for run in runs}
    test = paired_consistency(raised, runs)
    assert (test["above"], test["below"]) == (8, 0) and test["p_value"] < 0.01
    assert math.isclose(test["mean_difference"], 0.10)
    assert paired_consistency({**raised, "b3": None}, runs) is None


def test_paired_wants_its_runs_in_pairs(tmp_path):
    with pytest.raises(SystemExit, match="--paired takes --score runs in pairs, got 3 runs"):
        gan_quality(["--score", "a", "b", "c", "--paired", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--paired takes --score runs in pairs, got 0 runs"):
        gan_quality(["--paired", "--out", str(tmp_path)])


def test_score_size_scores_runs_of_two_sizes_through_one_classifier_resizing_both_sides(catalogue, tmp_path):
    path = catalogue()
    for name, size in (("small", 16), ("large", 32)):
        place_random_classifier(tmp_path / name, load_dataset(path), size)
        train_gan(tiny_config(dataset=str(path), out=str(tmp_path / name), image_size=size, epochs=1))
    runs = [str(tmp_path / "small"), str(tmp_path / "large")]
    place_bench_classifier(tmp_path / "bench" / "Tiny", load_dataset(path), 16)

    scores = gan_quality(["--score", *runs, "--score-size", "16", "--out", str(tmp_path / "bench")])
    assert [p.name for p in (tmp_path / "bench").rglob("classifier*.pt")] == ["classifier-16px.pt"]
    assert all(0 <= s["precision"] <= 1 and s["kid"] == s["kid"] for s in scores.values())
    # the 32-px run's real items are resized as its samples are: its own samples' KID against them is one number,
    # and the same run scored at its own size (a 32-px classifier) gives another
    place_bench_classifier(tmp_path / "own" / "Tiny", load_dataset(path), 32)
    at_own_size = gan_quality(["--score", runs[1], "--out", str(tmp_path / "own")])
    assert at_own_size[runs[1]]["kid"] != scores[runs[1]]["kid"]


def test_runs_trained_on_images_resized_otherwise_are_scored_through_a_classifier_of_their_own(catalogue, tmp_path):
    path = catalogue()
    for name, resize_filter in (("nearest", "nearest"), ("bilinear", "bilinear")):
        place_random_classifier(tmp_path / name, load_dataset(path), 16, resize_filter)
        train_gan(tiny_config(dataset=str(path), out=str(tmp_path / name), resize_filter=resize_filter, epochs=1))
    runs = [str(tmp_path / "nearest"), str(tmp_path / "bilinear")]
    bench_dir = tmp_path / "bench" / "Tiny"
    place_bench_classifier(bench_dir, load_dataset(path), 16)
    place_bench_classifier(bench_dir, load_dataset(path), 16, resize_filter="bilinear")
    nearest_lens = (bench_dir / "classifier-16px.pt").read_bytes()

    scores = gan_quality(["--score", *runs, "--out", str(tmp_path / "bench")])
    assert (bench_dir / "classifier-16px.pt").read_bytes() == nearest_lens   # neither retrained nor overwritten
    # the bilinear run was scored through the bilinear lens, against its real items as its filter resized them
    bilinear_run = open_gan_run(runs[1])
    for run_dir, lens_agrees in ((runs[1], True), (runs[0], False)):
        scorer = Scorer(load_dataset(path), open_gan_run(run_dir).real_items("cpu")[1], bench_dir, 0)
        assert (scorer(bilinear_run.model)["kid"] == scores[runs[1]]["kid"]) == lens_agrees


def place_bench_classifier(folder, dataset, size, seed=0, resize_filter="nearest"):
    place_random_classifier(folder, dataset, size, resize_filter, seed=seed)
    (folder / "classifier.pt").rename(folder / classifier_file(size, resize_filter, seed))


def test_checkpoints_follow_gan_training_and_set_the_selectors_pick_against_the_last(catalogue, tmp_path):
    path = catalogue()
    dataset, bench = load_dataset(path), tmp_path / "bench" / "Tiny"
    place_bench_classifier(bench, dataset, 32)
    place_bench_classifier(bench, dataset, 32, seed=SELECTOR_SEED)
    gan_quality(["--candidates", "sngan-no-diffaugment", "--catalogue", str(path), "--checkpoints", "2", "1",
                 "--seeds", "0", "1", "--out", str(tmp_path / "bench")])
    result = json.loads((bench / "sngan-no-diffaugment-checkpoints.json").read_text())
    assert result["seeds"] == [0, 1] and result["epochs"] == [1, 2]
    assert result["chosen_against_last"]["pairs"] == [["seed 0: last", "seed 0: chosen"],
                                                      ["seed 1: last", "seed 1: chosen"]]
    trajectories, comparison = result["trajectories"], result["chosen_against_last"]
    assert [[point["epoch"] for point in points] for points in trajectories] == [[1, 2], [1, 2]]
    assert all(point["selector_kid"] != point["kid"] for points in trajectories for point in points)  # two lenses
    picks = [min(points, key=lambda point: point["selector_kid"]) for points in trajectories]
    assert comparison["chosen_epochs"] == [pick["epoch"] for pick in picks]
    assert comparison["ratios"] == [pick["kid"] / points[-1]["kid"] for pick, points in zip(picks, trajectories)]
    assert comparison["consistency"]["values"] == [[points[-1]["consistency"], pick["consistency"]]
                                                   for pick, points in zip(picks, trajectories)]

    # another candidate's last point against this one's at epoch 2, seed by seed
    gan_quality(["--candidates", "sngan-no-diffaugment-channels-last", "--catalogue", str(path), "--checkpoints", "1",
                 "--seeds", "1", "0", "--against", "sngan-no-diffaugment:2", "--out", str(tmp_path / "bench")])
    other = json.loads((bench / "sngan-no-diffaugment-channels-last-checkpoints.json").read_text())
    against = other["against"]
    assert against["pairs"] == [["seed 1: sngan-no-diffaugment:2", "seed 1: sngan-no-diffaugment-channels-last:1"],
                                ["seed 0: sngan-no-diffaugment:2", "seed 0: sngan-no-diffaugment-channels-last:1"]]
    assert against["ratios"] == [other["trajectories"][0][0]["kid"] / trajectories[1][1]["kid"],
                                 other["trajectories"][1][0]["kid"] / trajectories[0][1]["kid"]]
    assert against["consistency"]["values"][0] == [trajectories[1][1]["consistency"],
                                                   other["trajectories"][0][0]["consistency"]]
    for flag, refusal in [("sngan-no-diffaugment:3", r"has no point at epoch 3 for seeds \[1\]"),
                          ("sngan-wide:2", "no .*sngan-wide-checkpoints.json: expected a result of"),
                          ("sngan-no-diffaugment", "--against takes CANDIDATE:EPOCH")]:
        with pytest.raises(SystemExit, match=refusal):
            gan_quality(["--candidates", "sngan", "--catalogue", str(path), "--checkpoints", "1", "--seeds", "1",
                         "--against", flag, "--out", str(tmp_path / "bench")])
    assert not (bench / "sngan-checkpoints.json").exists()

    # the point at epoch 2 of seed 0 is gan/train.py's run of the candidate's settings for 2 epochs, scored alike
    settings = candidate_config("sngan-no-diffaugment", path, 0)
    place_random_classifier(tmp_path / "trained", dataset, 32)
    train_gan(dataclasses.replace(settings, epochs=2, out=str(tmp_path / "trained")))
    scored = gan_quality(["--score", str(tmp_path / "trained"), "--out", str(tmp_path / "bench")])
    assert scored[str(tmp_path / "trained")]["kid"] == trajectories[0][1]["kid"]


def test_a_candidate_whose_rate_decays_is_not_trained_past_its_epochs(catalogue):
    dataset = load_dataset(catalogue())
    store = image_store(dataset, 16, "nearest", device="cpu")
    trajectory = Trajectory(tiny_config(epochs=1, lr_decay_from=0, batch_size=64), dataset, store)
    for _ in range(trajectory.iterations_per_epoch):
        trajectory.advance()
    with pytest.raises(ConfigError, match="^--lr-decay-from decays the learning rate over --epochs 1: iteration"):
        trajectory.advance()


def test_checkpoints_and_seeds_are_checked_before_anything_trains(tmp_path):
    out = ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="^gan_quality: --checkpoints takes epochs of at least 1, and trains"):
        gan_quality(["--checkpoints", "0", "2", *out])
    with pytest.raises(SystemExit, match="^gan_quality: --checkpoints takes epochs of at least 1, and trains"):
        gan_quality(["--checkpoints", "2", "--score", "run", *out])
    for options in (["--seeds", "1", "2"], ["--against", "sngan:2"]):
        with pytest.raises(SystemExit, match="^gan_quality: --seeds and --against are --checkpoints' options"):
            gan_quality([*options, *out])
    with pytest.raises(SystemExit, match="^gan_quality: --catalogue nowhere.npy: give embedded, one of"):
        gan_quality(["--checkpoints", "2", "--catalogue", "nowhere.npy", *out])
    assert not (tmp_path / "out").exists()


def test_plot_goes_into_the_results_folder_unless_named(tmp_path):
    result = {"candidate": "sngan", "catalogue": "embedded",
              "machine": "machine: cpu fp32 matmul 2048^2: 150 GFLOP/s (2 threads)",
              "points": [{"minutes": 1.0, "iterations": 900, "kid": 2.0, "load_average": 1.9},
                         {"minutes": 2.5, "iterations": 2400, "kid": 1.0, "load_average": 2.0}]}
    (tmp_path / "out" / "embedded").mkdir(parents=True)
    (tmp_path / "out" / "embedded" / "sngan.json").write_text(json.dumps(result))

    gan_quality(["--plot-only", "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "per_minute.png").stat().st_size > 0
    gan_quality(["--plot-only", "--out", str(tmp_path / "out"), "--plot", str(tmp_path / "named.png")])
    assert (tmp_path / "named.png").stat().st_size > 0


def test_score_device_and_size_are_checked_before_any_run_is_read(tmp_path):
    if not torch.cuda.is_available():   # where there is a GPU, --device cuda is a place to score, not an error
        with pytest.raises(SystemExit, match="^gan_quality: --device cuda was asked for but no CUDA GPU"):
            gan_quality(["--score", str(tmp_path / "run"), "--device", "cuda", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="^gan_quality: --score-size must be at least 1, got 0$"):
        gan_quality(["--score", str(tmp_path / "run"), "--score-size", "0", "--out", str(tmp_path / "out")])


def test_gan_throughput_times_any_generator_in_each_memory_format(capsys):
    gan_throughput(["--preset", "demo", "--image-size", "16", "--batch-size", "8", "--devices", "cpu",
                    "--iterations", "1", "--warmup", "0"])
    printed = capsys.readouterr().out
    assert "sngan: 16 px, batch 8" in printed
    for name in ("as-built", "channels_last", "contiguous"):
        assert f"fp32, {name}: " in printed and "images/s" in printed
    with pytest.raises(SystemExit):
        gan_throughput(["--memory-formats", "strided"])


def test_every_quality_candidate_names_real_settings_and_builds_its_generator():
    for name in bench.gan_quality.CANDIDATES:
        cfg = candidate_config(name, "unused.npy", seed=0)
        assert build_generator(cfg, 6).image_size == cfg.image_size, name


def test_fine_colour_is_high_for_a_colour_weave_from_pixel_to_pixel_and_low_for_a_smooth_garment():
    """Red and green pixels alternating: nearly all of the chroma's power at the highest frequency; a colour changing
    smoothly across the image: none of it; a grey image, without chroma: 0."""
    y, x = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    red, green = torch.tensor([0.9, -0.6, -0.6]), torch.tensor([-0.6, 0.3, -0.6])
    weave = torch.where(((x + y) % 2 == 0)[None], red[:, None, None], green[:, None, None])
    mix = (0.5 - 0.5 * torch.cos(2 * math.pi * x / 16))[None]   # one period across: no jump at the border
    smooth = red[:, None, None] * mix + green[:, None, None] * (1 - mix)
    assert bench.gan_quality.fine_colour_share(weave[None]) > 0.95
    assert bench.gan_quality.fine_colour_share(smooth[None]) < 0.05
    assert bench.gan_quality.fine_colour_share(torch.zeros(1, 3, 16, 16)) == 0
