"""Quality per CPU-minute of the conditional generators: KID of random samples against the real items of their
category after 1, 2.5, 5 (and more) minutes of training, for each candidate of CANDIDATES, plotted into
--out/per_minute.png (the README's figure: --plot docs/gan_quality_per_minute.png).

    python bench/gan_quality.py                                   every candidate on the embedded catalogue, then
                                                                  the plot
    python bench/gan_quality.py --candidates sngan --catalogue colour-led-s2 --minutes 5
                                                                  one candidate on a catalogue of the family
                                                                  (experiments/family.py), its 5-minute point
    python bench/gan_quality.py --plot-only                       the plot from the results already measured
    python bench/gan_quality.py --score runs/gan runs/gan_sngan   trained runs' samples scored as the candidates'
                                                                  are: --out/scores.json
    python bench/gan_quality.py --score A1 B1 A2 B2 ... --paired  and each pair's KID ratio B / A, their geometric
                                                                  mean and a paired test, and the same test of the
                                                                  runs' condition consistency: --out/paired.json
    python bench/gan_quality.py --candidates sngan-no-diffaugment --checkpoints 20 22 24 26 28 30 --seeds 5 6 7
                                                                  along one trajectory per seed, the checkpoint a
                                                                  second classifier picks against the last
    python bench/gan_quality.py --candidates sngan-no-diffaugment-channels-last --checkpoints 30 38 --seeds 5 6 7 \
        --against sngan-no-diffaugment:30                         and each seed's last point against that of
                                                                  another candidate measured so before

Each candidate trains as gan/train.py does (the same batches and codes per iteration, the generator's own
train_step) with the clock running only while it trains; at each checkpoint SAMPLES_PER_CATEGORY images per
category from fixed codes of the generator's prior are scored by pm/fidelity.py: KID on the pooled features of
the catalogue's category classifier (common/classifier.py), per category against up to 2,000 real items of it,
averaged over the categories. Results go to --out/<catalogue>/<candidate>.json with the machine's matmul rate and
load average, samples of each category beside real items at each checkpoint to --out/<catalogue>/<candidate>/, and a
finished candidate is read back, not trained again.

With --checkpoints, each candidate is scored at the end of those epochs instead (iterations, not minutes: the same
points on any machine), along one trajectory per --seeds, by two lenses: the report's (as above) and a selector's,
a category classifier of another seed (its initial weights, split and batch order) on codes of its own. How much
the choice of checkpoint matters: the checkpoint with the selector's lowest KID against the last one, as pairs
scored through the report's lens, with the paired test of --paired (--out/<catalogue>/<candidate>-checkpoints.json).
With --against CANDIDATE:EPOCH, each seed's last point is also paired with that seed's point at EPOCH of another
candidate whose trajectories are already in --out: a setting against the demo at an equal time or epoch.
"""
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import matplotlib
import numpy as np
import torch

from common.checkpoint import read_json, write_json
from common.classifier import train_or_load_classifier
from common.cli import MAX_IMAGE_SIZE, parse_config, require_sizes, stage_errors
from common.datasets import open_dataset
from common.device import pick_device
from common.errors import ConfigError, RunError
from common.images import image_store, known_filter
from common.machine import machine_line, matmul_gflops
from common.seeding import seed_everything
from experiments.family import CATALOGUES, catalogue_path
from gan.config import DEMO, GANConfig, check_config, with_generator_latent
from gan.generators import build_generator
from gan.model import generate
from gan.run import open_gan_run
from gan.sample import samples_beside_real
from gan.sngan import YCBCR_TO_RGB
from gan.train import GANTraining, labelled_items, training_batch
from pm.fidelity import CLASSIFIER_EXTRACTOR, Fidelity, classifier_extractor
from pm.judges import paired_test

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

SAMPLES_PER_CATEGORY = 250
MAX_RESULT_BYTES = 16 << 20   # a --checkpoints result read back by --against: a few kilobytes per seed
SELECTOR_SEED = 1   # --checkpoints' selector: its classifier's seed and its codes', another lens than the report's
# name -> settings over the demo settings every generator shares (gan/config.py DEMO)
CANDIDATES = {
    "lsgan-demo": dict(generator="lsgan"),
    "sngan": dict(generator="sngan", lr=2e-4, beta1=0.0, beta2=0.9),
    "sngan-no-diffaugment": dict(generator="sngan", lr=2e-4, beta1=0.0, beta2=0.9, diffaugment=False),
    "sngan-no-diffaugment-ema": dict(generator="sngan", lr=2e-4, beta1=0.0, beta2=0.9, diffaugment=False, ema=0.999),
    "sngan-no-diffaugment-lr-decay": dict(generator="sngan", lr=2e-4, beta1=0.0, beta2=0.9, diffaugment=False,
                                          epochs=30, lr_decay_from=20),
    "sngan-no-diffaugment-lr4e-4": dict(generator="sngan", lr=4e-4, beta1=0.0, beta2=0.9, diffaugment=False),
    "sngan-no-diffaugment-channels-last": dict(generator="sngan", lr=2e-4, beta1=0.0, beta2=0.9, diffaugment=False,
                                               channels_last=True),
    "sngan-no-diffaugment-class-seed": dict(generator="sngan", lr=2e-4, beta1=0.0, beta2=0.9, diffaugment=False,
                                            class_seed=True),
    "sngan-no-diffaugment-half-chroma": dict(generator="sngan", lr=2e-4, beta1=0.0, beta2=0.9, diffaugment=False,
                                             half_chroma=True),
    "sngan-wide": dict(generator="sngan", g_width=32, d_width=32, lr=2e-4, beta1=0.0, beta2=0.9),
    "sngan-lr5e-4": dict(generator="sngan", lr=5e-4, beta1=0.0, beta2=0.9),
    "lsgan-wide": dict(generator="lsgan", g_width=32, d_width=32),
    "diffusion": dict(generator="diffusion", g_width=16, lr=1e-3, beta1=0.9, beta2=0.999),
    "diffusion-lr3e-4": dict(generator="diffusion", g_width=16, lr=3e-4, beta1=0.9, beta2=0.999),
    "diffusion-ema": dict(generator="diffusion", g_width=16, lr=1e-3, beta1=0.9, beta2=0.999, ema=0.999),
}


@dataclass
class QualityConfig:
    candidates: list[str] = field(default_factory=lambda: ["lsgan-demo", "sngan", "sngan-no-diffaugment"], metadata={
        "help": "candidates to measure: " + ", ".join(CANDIDATES)})
    minutes: list[float] = field(default_factory=lambda: [1.0, 2.5, 5.0, 10.0], metadata={
        "help": "training minutes at which the samples are scored"})
    catalogue: str = field(default="embedded", metadata={"help": "embedded, a catalogue of the family "
                                                                 "(experiments/family.py), or a dataset file"})
    data_dir: str = field(default="data/family", metadata={"help": "where the family's catalogues are generated"})
    out: str = field(default="runs/gan_quality", metadata={"help": "folder of the results"})
    plot: str | None = field(default=None, metadata={"help": "the figure written (default: --out/per_minute.png)"})
    plot_only: bool = field(default=False, metadata={"help": "only redraw the figure from the results"})
    seed: int = field(default=0, metadata={"help": "random seed of training and of the scored samples"})
    score: list[str] | None = field(default=None, metadata={"help": "trained GAN runs: score each one's samples as "
                                                                    "the candidates' are, instead of training"})
    score_size: int | None = field(default=None, metadata={
        "help": "--score: every run through one category classifier at this size, its samples and real items resized "
                "to it alike (bilinear, antialiased), so runs of different sizes compare (default: each run at its "
                "own size)"})
    device: str = field(default="cpu", metadata={"help": "where --score scores: cpu, cuda or auto (candidates train "
                                                         "on the CPU, whose minutes they measure)"})
    checkpoints: list[int] | None = field(default=None, metadata={
        "help": "epochs at whose end each candidate is scored, along one trajectory per --seeds, instead of at "
                "--minutes; the checkpoint a second classifier scores best against the last"})
    seeds: list[int] | None = field(default=None, metadata={
        "help": "--checkpoints: the trajectories' training seeds (default: --seed)"})
    against: str | None = field(default=None, metadata={
        "help": "--checkpoints: CANDIDATE:EPOCH, another candidate's trajectories of the same seeds already in --out; "
                "each seed's point at EPOCH against this candidate's at its last epoch, as --paired pairs runs"})
    paired: bool = field(default=False, metadata={
        "help": "--score's runs are pairs A1 B1 A2 B2 ... (say, the same seed and data without and with a setting): "
                "each pair's KID ratio B / A, their geometric mean and a paired sign-flip test of the log ratios"})


def candidate_config(name, dataset_path, seed):
    cfg = replace(GANConfig(), **{**DEMO, **CANDIDATES[name]}, dataset=str(dataset_path), seed=seed, device="cpu")
    check_config(cfg)
    return with_generator_latent(cfg)


def fine_colour_share(images):
    """The mean share, over images [B, 3, S, S] in [-1, 1], of their chroma's (YCbCr's Cb and Cr) power, less the
    mean, at frequencies above half the Nyquist frequency on either axis: a colour weave from pixel to pixel
    (docs/design_half.md, "Colour at half the side")."""
    chroma = torch.einsum("cr,brhw->bchw", torch.linalg.inv(YCBCR_TO_RGB), (images.float().cpu() + 1) / 2)[:, 1:]
    power = torch.fft.fft2(chroma - chroma.mean(dim=(2, 3), keepdim=True)).abs().pow(2)
    frequency = torch.fft.fftfreq(images.shape[-1]).abs()
    fine = torch.maximum(frequency[:, None], frequency[None, :]) > 0.25
    return ((power * fine).sum(dim=(2, 3)) / power.sum(dim=(2, 3)).clamp(min=1e-12)).mean().item()


def classifier_file(size, resize_filter="nearest", classifier_seed=0):
    """The file name of the bench's cached category classifier of images at `size` resized by `resize_filter`."""
    return (f"classifier-{size}px" + (f"-{resize_filter}" if resize_filter != "nearest" else "")
            + (f"-seed{classifier_seed}" if classifier_seed else "") + ".pt")


class Scorer:
    """KID of a generator's samples against the real items, through the catalogue's category classifier (of
    `classifier_seed`), the share of the samples it assigns to the category asked for (condition consistency), and
    their fine colour beside the real items' (fine_colour_share)."""

    def __init__(self, dataset, store, out_dir, seed, device="cpu", size=None, classifier_seed=0):
        """`store`: the real items at the generator's size, as its run's filter resized them (an `image_store`);
        `size`: the classifier's (default the store's), to which the extractor resizes real and generated images
        alike. The classifier learns the images as that filter resizes them, each filter's cached in a file of
        its own."""
        size, resize_filter = size or store.size, known_filter(store)
        lens = store if size == store.size else image_store(dataset, size, resize_filter, device)
        self.classifier = train_or_load_classifier(dataset, lens, out_dir / classifier_file(size, resize_filter,
                                                                                             classifier_seed),
                                                   seed=classifier_seed)
        self.fidelity = Fidelity({CLASSIFIER_EXTRACTOR: classifier_extractor(self.classifier, device)}, store,
                                 dataset.item_category, seed)
        self.labels = torch.arange(dataset.num_categories).repeat_interleave(SAMPLES_PER_CATEGORY)
        self.seed, self.device = seed, device
        self.real_fine_colour = fine_colour_share(store(torch.arange(min(len(store), len(self.labels)))))

    def samples(self, model):
        z = model.sample_z(len(self.labels), rng=torch.Generator().manual_seed(self.seed)).to(self.device)
        return torch.cat([generate(model, z_part, labels_part, bf16=False)
                          for z_part, labels_part in zip(z.split(500), self.labels.to(self.device).split(500))])

    def __call__(self, model, with_consistency=False):
        images = self.samples(model)
        scores = {**self.fidelity(images, self.labels)[CLASSIFIER_EXTRACTOR],
                  "fine_colour": fine_colour_share(images), "real_fine_colour": self.real_fine_colour}
        if with_consistency:
            predicted = self.classifier.predict_proba(images.to(self.device)).argmax(dim=1).cpu()
            scores["consistency"] = (predicted == self.labels).double().mean().item()
        return scores


class Trajectory:
    """One candidate trained as gan/train.py trains it (the same batches and codes per iteration), an iteration at a
    time."""

    def __init__(self, cfg, dataset, store):
        seed_everything(cfg.seed)
        self.cfg, self.store, self.items = cfg, store, labelled_items(dataset)
        self.iterations_per_epoch = len(self.items) // cfg.batch_size
        self.run = GANTraining(cfg, dataset.num_categories, "cpu", self.iterations_per_epoch)
        self.nets = {name: getattr(self.run.model, name).train() for name in self.run.model.nets}
        self.item_labels = torch.as_tensor(dataset.item_category)
        self.step = 0

    @property
    def model(self):
        return self.run.model

    def advance(self):
        self.step += 1
        ids, z = training_batch(self.cfg, self.items, self.step)
        self.run.train_step(self.nets, self.store(ids), self.item_labels[ids], z, self.step)


def measure(cfg, dataset, store, scorer, minutes, grids):
    """[{minutes, iterations, kid, ...}] of one candidate trained for max(minutes), scored at each of them; its
    samples beside real items at each, in grids/<minutes>min.png."""
    trajectory = Trajectory(cfg, dataset, store)
    run = trajectory.run
    points, trained, cpu = [], 0.0, 0.0
    for limit in sorted(minutes):
        while trained < limit * 60:
            start, cpu_start = time.perf_counter(), time.process_time()
            trajectory.advance()
            trained, cpu = trained + time.perf_counter() - start, cpu + time.process_time() - cpu_start
        scores = scorer(run.model)
        samples_beside_real(run.model, dataset, store, cfg.seed, grids / f"{limit:g}min.png")
        # the process's CPU time and the load average show how much other work shared the cores
        points.append({"minutes": limit, "iterations": trajectory.step, "cpu_minutes": cpu / 60,
                       "load_average": os.getloadavg()[0], **scores})
        print(f"  {limit:g} min: {trajectory.step} iterations, {cpu / 60:.1f} CPU-min, load "
              f"{os.getloadavg()[0]:.2f}, {score_line(scores)}", flush=True)
        if run.model.averages:   # the same run's last weights, for a comparison on one trajectory
            points[-1]["last_weights"] = scorer(last_weights(cfg, run.model, dataset.num_categories))
            print(f"  {limit:g} min, last weights: {score_line(points[-1]['last_weights'])}", flush=True)
    return points


def score_line(scores):
    return (f"KID {scores['kid']:.4f} +- {scores['kid_std']:.4f}, FID {scores['fid']:.1f}, "
            f"precision {scores['precision']:.2f}, recall {scores['recall']:.2f}, fine colour "
            f"{scores['fine_colour']:.3f} (real items {scores['real_fine_colour']:.3f})")


def last_weights(cfg, model, num_categories):
    """The generator of `cfg` without moving averages (of weights, or the VAE's of its posterior), holding `model`'s
    last trained weights."""
    last = build_generator(replace(cfg, ema=0.0, ex_post_prior=False, ex_post_components=0), num_categories)
    for name in model.nets:
        getattr(last, name).load_state_dict(getattr(model, name).state_dict())
    return last


def open_catalogue(qc):
    """(dataset path, dataset, its images at the demo's size, --out's folder for it) of --catalogue."""
    if qc.catalogue == "embedded" or qc.catalogue in CATALOGUES:
        path, name = "embedded" if qc.catalogue == "embedded" else catalogue_path(qc, qc.catalogue), qc.catalogue
    elif Path(qc.catalogue).is_file():
        path, name = qc.catalogue, Path(qc.catalogue).stem
    else:
        raise ConfigError(f"--catalogue {qc.catalogue}: give embedded, one of {', '.join(CATALOGUES)} or a dataset "
                          "file")
    unknown = [name for name in qc.candidates if name not in CANDIDATES]
    if unknown:
        raise ConfigError(f"--candidates {' '.join(unknown)}: unknown; choose from {', '.join(CANDIDATES)}")
    dataset, _ = open_dataset(path)
    store = image_store(dataset, DEMO["image_size"], GANConfig.resize_filter, device="cpu")
    return path, dataset, store, Path(qc.out) / name


def measure_all(qc):
    path, dataset, store, out_dir = open_catalogue(qc)
    scorer = Scorer(dataset, store, out_dir, qc.seed)
    for name in qc.candidates:
        result_path = out_dir / f"{name}.json"
        if result_path.is_file() and max(qc.minutes) <= max(p["minutes"] for p in json.loads(
                result_path.read_text())["points"]):
            print(f"{name}: measured before, in {result_path}")
            continue
        cfg = candidate_config(name, path, qc.seed)
        machine = machine_line()
        print(f"{name} on {qc.catalogue}; {machine}; load average {os.getloadavg()[0]:.2f}", flush=True)
        points = measure(cfg, dataset, store, scorer, qc.minutes, out_dir / name)
        write_json(result_path, {"candidate": name, "settings": CANDIDATES[name], "catalogue": qc.catalogue,
                                 "machine": machine, "gflops_after": matmul_gflops(),
                                 "load_average_after": os.getloadavg(), "points": points})


def along_trajectory(cfg, dataset, store, lenses, epochs):
    """[{epoch, iterations, selector_kid, kid, ...}] of one candidate trained by iterations to max(epochs), scored at
    the end of each of `epochs` by the report's lens and the selector's."""
    trajectory = Trajectory(cfg, dataset, store)
    report, selector = lenses
    points = []
    for epoch in sorted(epochs):
        while trajectory.step < epoch * trajectory.iterations_per_epoch:
            trajectory.advance()
        points.append({"epoch": epoch, "iterations": trajectory.step, "selector_kid": selector(trajectory.model)["kid"],
                       **report(trajectory.model, with_consistency=True)})
        print(f"  seed {cfg.seed}, epoch {epoch}: selector KID {points[-1]['selector_kid']:.4f}; "
              f"{score_line(points[-1])}, consistency {points[-1]['consistency']:.3f}", flush=True)
    return points


def compare_points(points):
    """Points {name: point} in pairs (A1 B1 A2 B2 ...), compared as --paired compares runs: each pair's KID ratio and
    the paired test, and the same test of condition consistency."""
    names = list(points)
    return {**paired_kid(points, names),
            "consistency": paired_consistency({name: point["consistency"] for name, point in points.items()}, names)}


def choice_against_last(points_per_seed, seeds):
    """The checkpoint the selector's KID picks on each trajectory against its last, through the report's lens."""
    points = {}
    for seed, trajectory in zip(seeds, points_per_seed):
        points[f"seed {seed}: last"] = max(trajectory, key=lambda point: point["epoch"])
        points[f"seed {seed}: chosen"] = min(trajectory, key=lambda point: point["selector_kid"])
    return {**compare_points(points), "chosen_epochs": [point["epoch"] for point in list(points.values())[1::2]]}


def control_points(against, seeds, out_dir):
    """--against CANDIDATE:EPOCH: {seed: that candidate's point at EPOCH}, read from its result in `out_dir`; refused
    in one line before anything trains where the flag, the file, its epoch or one of `seeds` is missing."""
    name, _, epoch = against.rpartition(":")
    if name not in CANDIDATES or not epoch.isdigit():
        raise ConfigError(f"--against takes CANDIDATE:EPOCH, a candidate of {', '.join(CANDIDATES)}; got {against}")
    path = out_dir / f"{name}-checkpoints.json"
    result = read_json(path, MAX_RESULT_BYTES, f"result of `bench/gan_quality.py --candidates {name} --checkpoints`")
    try:
        points = {seed: point for seed, trajectory in zip(result["seeds"], result["trajectories"])
                  for point in trajectory if point["epoch"] == int(epoch)}
    except (KeyError, TypeError) as error:
        raise RunError(f"{path} is not a --checkpoints result (no {error})") from None
    missing = [seed for seed in seeds if seed not in points]
    if missing:
        raise ConfigError(f"--against {against}: {path} has no point at epoch {epoch} for seeds {missing}")
    return {seed: points[seed] for seed in seeds}


def against_control(name, trajectories, seeds, against, control):
    """Each seed's last point of candidate `name` against the control's point (control_points) of the same seed."""
    points = {}
    for seed, trajectory in zip(seeds, trajectories):
        last = max(trajectory, key=lambda point: point["epoch"])
        points[f"seed {seed}: {against}"] = control[seed]
        points[f"seed {seed}: {name}:{last['epoch']}"] = last
    return compare_points(points)


def checkpoint_choice(qc):
    """--checkpoints: every candidate along one trajectory per seed, the selector's choice against the last."""
    path, dataset, store, out_dir = open_catalogue(qc)
    seeds = qc.seeds or [qc.seed]
    control = control_points(qc.against, seeds, out_dir) if qc.against else None
    lenses = (Scorer(dataset, store, out_dir, qc.seed),
              Scorer(dataset, store, out_dir, SELECTOR_SEED, classifier_seed=SELECTOR_SEED))
    for name in qc.candidates:
        print(f"{name} on {qc.catalogue}; {machine_line()}", flush=True)
        trajectories = [along_trajectory(candidate_config(name, path, seed), dataset, store, lenses, qc.checkpoints)
                        for seed in seeds]
        comparison = choice_against_last(trajectories, seeds)
        print(f"{name}, chosen epochs {comparison['chosen_epochs']}: " + paired_line(comparison), flush=True)
        result = {"candidate": name, "settings": CANDIDATES[name], "catalogue": qc.catalogue, "seeds": seeds,
                  "epochs": sorted(qc.checkpoints), "machine": machine_line(), "trajectories": trajectories,
                  "chosen_against_last": comparison}
        if control is not None:
            result["against"] = against_control(name, trajectories, seeds, qc.against, control)
            print(f"{name} at epoch {max(qc.checkpoints)} against {qc.against}: " + paired_line(result["against"]),
                  flush=True)
        write_json(out_dir / f"{name}-checkpoints.json", result)


def plot(qc):
    """KID against training minutes and against iterations, a line per candidate on the embedded catalogue, the
    family's points as markers; the machine's matmul rates and load averages as measured, under the plot."""
    results = [json.loads(path.read_text()) for path in sorted(Path(qc.out).glob("*/*.json"))]
    if not results:
        raise ConfigError(f"no results in {qc.out}: measure first")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    colours, markers = {}, dict(zip(sorted({r["catalogue"] for r in results} - {"embedded"}), "s^vD"))
    for result in sorted(results, key=lambda r: r["catalogue"] != "embedded"):
        name, catalogue = result["candidate"], result["catalogue"]
        for ax, x in zip(axes, ("minutes", "iterations")):
            xs, kid = zip(*[(p[x], p["kid"]) for p in result["points"]])
            if catalogue == "embedded":
                line, = ax.plot(xs, kid, marker="o", label=name)
                colours[name] = line.get_color()
            else:
                ax.plot(xs, kid, marker=markers[catalogue], linestyle=":", color=colours.get(name, "black"),
                        label=f"{name} on {catalogue}")
    axes[0].set(xlabel="training minutes (wall clock, 2 CPU cores)", ylabel="KID (category-classifier features)",
                yscale="log")
    axes[1].set(xlabel="iterations (batch 32)", xscale="log")
    axes[0].legend(fontsize=7)
    fig.suptitle("Sample quality per CPU-minute at 32 px: KID of 250 samples per category against the real items")
    rates = [float(r["machine"].split(": ")[2].split(" GFLOP")[0].replace(",", "")) for r in results]
    loads = [p["load_average"] for r in results for p in r["points"] if "load_average" in p]
    fig.text(0.01, 0.01, f"cpu fp32 matmul 2048^2 at the start of each candidate: {min(rates):.0f}-{max(rates):.0f} "
             f"GFLOP/s (2 threads)" + (f"; load average at the points {min(loads):.1f}-{max(loads):.1f}"
                                       if loads else ""), fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(qc.plot or Path(qc.out) / "per_minute.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def score_runs(qc):
    """{run: KID, FID, precision, recall} of each trained run in --score, scored as the candidates are (the
    category classifier of its dataset in --out/<dataset name>/, at --score-size if given), written to
    --out/scores.json. Runs on the same dataset and image size share one image cache and scorer."""
    results, scorers, consistency = {}, {}, {}
    device = pick_device(qc.device)
    for run_dir in qc.score:
        run = open_gan_run(run_dir, device)
        consistency[run_dir] = run.metrics.get("condition_consistency", {}).get("overall")
        key = (run.config.dataset, run.config.image_size, run.config.resize_filter)
        if key not in scorers:
            dataset, store = run.real_items("cpu")
            scorers[key] = Scorer(dataset, store, Path(qc.out) / dataset.name, qc.seed, device, qc.score_size)
        results[run_dir] = scorers[key](run.model)
        print(f"{run_dir}: {score_line(results[run_dir])}", flush=True)
    write_json(Path(qc.out) / "scores.json", results)
    if qc.paired:
        comparison = {**paired_kid(results, qc.score), "consistency": paired_consistency(consistency, qc.score)}
        write_json(Path(qc.out) / "paired.json", comparison)
        print(paired_line(comparison), flush=True)
    return results


def paired_kid(results, runs):
    """Each pair's KID ratio (runs A1 B1 A2 B2 ...: B over A), their geometric mean, and pm/judges.py's paired
    sign-flip test of log KID B against log KID A. Ratios, not differences: one run's KID moves several-fold with
    the seed and the items (docs/design_half.md), and a setting's effect is closer to a factor than to an offset.
    No test where a KID is not positive (the unbiased estimate can be, for samples as near as the real items)."""
    pairs = [list(pair) for pair in zip(runs[0::2], runs[1::2])]
    kids = np.array([[results[first]["kid"], results[second]["kid"]] for first, second in pairs])
    comparison = {"pairs": pairs, "ratios": (kids[:, 1] / kids[:, 0]).tolist(), "test": None}
    if (kids > 0).all():
        test = paired_test(np.log(kids[:, 1]), np.log(kids[:, 0]))
        comparison["test"] = {"geometric_mean_ratio": float(np.exp(test["mean_difference"])), **test}
    return comparison


def paired_consistency(consistency, runs):
    """Each pair's condition consistency as its runs recorded it (gan/consistency.py) and the sign-flip test of
    the second's against the first's; None where a run recorded none (trained without a category classifier)."""
    if any(consistency[run] is None for run in runs):
        return None
    values = np.array([[consistency[first], consistency[second]] for first, second in zip(runs[0::2], runs[1::2])])
    return {"values": values.tolist(), **paired_test(values[:, 1], values[:, 0])}


def paired_line(comparison):
    test, consistency = comparison["test"], comparison["consistency"]
    line = f"paired, second over first, {len(comparison['pairs'])} pairs: "
    if test is None:
        line += "a KID is not positive, so no ratio test"
    else:
        line += (f"geometric mean KID ratio {test['geometric_mean_ratio']:.2f}, lower on {test['below']}, higher on "
                 f"{test['above']}, sign-flip p {test['p_value']:.3f}")
    if consistency is not None:
        line += (f"; condition consistency higher on {consistency['above']}, lower on {consistency['below']}, "
                 f"sign-flip p {consistency['p_value']:.3f}")
    return line


def main(argv=None):
    with stage_errors("gan_quality"):
        qc, _ = parse_config(QualityConfig, argv, description=__doc__.splitlines()[0])
        require_sizes(qc, {"score_size": MAX_IMAGE_SIZE})
        if qc.paired and (not qc.score or len(qc.score) % 2):
            raise ConfigError(f"--paired takes --score runs in pairs, got {len(qc.score or [])} runs")
        if qc.checkpoints and (qc.score or min(qc.checkpoints) < 1):
            raise ConfigError("--checkpoints takes epochs of at least 1, and trains candidates: leave out --score")
        if (qc.seeds or qc.against) and not qc.checkpoints:
            raise ConfigError("--seeds and --against are --checkpoints' options: give --checkpoints")
        if qc.score:
            return score_runs(qc)
        if qc.checkpoints:
            return checkpoint_choice(qc)
        if not qc.plot_only:
            measure_all(qc)
        plot(qc)


if __name__ == "__main__":
    main()
