"""Which measure sees what the eye sees: five measures against the designs of PM's fig. 5, labelled by eye.

The designs of fig. 5 (personal_design.png of `pm/main.py` runs), each labelled by eye before any measure was
computed (docs/eye_labels.json: 1 where a person can tell the garment), against five measures of each design beside
the real items of its category:
- silhouette: the best IoU of its foreground (pixels with a channel below 0.8 on white) with a real item's;
- SSIM: the best structural similarity (scikit-image) of its grey image with a real item's;
- realism: Kynkaanniemi et al.'s (2019) score in the category classifier's features (pm/fidelity.py); at least 1 is
  "realistic", the per-image form of Table IV's precision;
- wholeness (added later, after fig. 5's women's shoes were seen to fall apart into fragments under PM): the share of
  its foreground in its largest 8-connected piece;
- category (added last): the in-domain category classifier's probability that the design is its row's category (the
  classifier whose features realism and KID use; PM never optimises against it).
For each, its AUC against the labels (the chance that a recognisable design outscores an unrecognisable one), and
the agreement of "realistic" with the eye.

A second labeller works blind: every run writes a sheet (--sheet) of the labelled designs and one real item per row
of each figure, shuffled in one fixed order and numbered, with nothing on it to tell a design from a real item or one
figure from another; the labeller names each tile's garment from ANSWERS, or "cannot tell". Their answers (--blind,
with the SHA-256 of the sheet they saw) are compared with the first labels and the measures.

    python experiments/eye_check.py        # the labelled figures must be the ones labelled: their SHA-256 is checked
    python experiments/eye_check.py --sets docs/eye_labels_generators.json   # against many blind labellers' sets

With --sets, the labels are sets of blind labels of other figures, one labeller per set: each measure's AUC against
all of them, against the held-out sets and per set, and the threshold on each measure that agrees best with the first
five sets, checked on the rest (--sets-out); and a sixth measure, "combined", a logistic regression on the five
fitted on the labels of those first sets alone.

The designs are read back from the figure: its tiles are the GAN's images upscaled by nearest neighbours.
"""
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.measure import label as connected_pieces
from skimage.metrics import structural_similarity

from common.checkpoint import read_json
from common.cli import parse_config, stage_errors
from common.device import pick_device
from common.errors import ConfigError, RunError
from common.figures import CAPTION_HEIGHT, CAPTIONED_PADDING, MIN_CAPTIONED_TILE, save_grid
from pm.design import foreground, silhouette
from pm.fidelity import CLASSIFIER_EXTRACTOR, Fidelity, classifier_extractor
from pm.load import Stages

MAX_JSON_BYTES = 1 << 20
# the blind labeller's choices: one per category of the embedded catalogues (common/catalogue/fashion_mnist.py), or none
ANSWERS = ("long-sleeved top", "T-shirt or tank top", "trousers", "dress", "sneaker or ankle boot", "sandal",
           "cannot tell")
SHEET_COLUMNS = 8
COMBINED_L2 = 1e-3   # on the combination's standardised weights: finite where the fit sets separate perfectly


@dataclass
class EyeCheckConfig:
    labels: str = field(default="docs/eye_labels.json", metadata={"help": "the labels by eye, per figure run"})
    out: str = field(default="runs/eye_check.md", metadata={"help": "where the table is written"})
    sheet: str = field(default="runs/eye_sheet.png", metadata={"help": "where the blind sheet is written: the labelled "
                                                                      "designs and a real item per row, shuffled"})
    blind: str = field(default="docs/eye_labels_blind.json", metadata={
        "help": "a second labeller's answers on the sheet (their comparison is skipped where the file is absent)"})
    sets: str | None = field(default=None, metadata={
        "help": "a file of blind label sets of fig. 5 figures (docs/eye_labels_generators.json): the measures against "
                "them instead of the first labels"})
    sets_out: str = field(default="runs/eye_check_sets.md", metadata={"help": "where --sets writes its table"})
    fit_sets: int = field(default=5, metadata={"help": "--sets: the first this many sets choose each measure's "
                                                       "threshold, the rest check it"})
    skip_missing: bool = field(default=False, metadata={"help": "--sets: leave out the figures not made here (the "
                                                                "table names them) instead of stopping"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda or auto"})


def figure_tiles(run, size, real_column=None):
    """(designs [n, 3, size, size] in [-1, 1], their categories [n]): the generated tiles of `run`'s fig. 5 (with
    `real_column`: the real item in that column of each row instead)."""
    record = read_json(run / "personal_design.json", MAX_JSON_BYTES, "fig. 5 record of pm/main.py")
    figure = np.asarray(Image.open(run / "personal_design.png").convert("RGB"), dtype=np.float32) / 127.5 - 1
    tile = max(size, MIN_CAPTIONED_TILE)
    step, columns = tile // size, 2 * len(record["queries"][0]["real"])
    designs, categories = [], []
    for row, query in enumerate(record["queries"]):
        for column in range(len(query["real"]), columns) if real_column is None else [real_column % len(query["real"])]:
            x = CAPTIONED_PADDING + column * (tile + CAPTIONED_PADDING)
            y = CAPTIONED_PADDING + row * (tile + CAPTION_HEIGHT + CAPTIONED_PADDING)
            designs.append(figure[y:y + tile:step, x:x + tile:step].transpose(2, 0, 1))
            categories.append(query["category"])
    return torch.from_numpy(np.stack(designs)), categories


def wholeness(designs):
    """Per design, the share of its foreground in its largest 8-connected piece (0 where it has none): near 1 for a
    garment's one silhouette, low for scattered fragments."""
    shares = []
    for mask in foreground(designs).numpy():
        pieces = connected_pieces(mask, connectivity=2)
        sizes = np.bincount(pieces.ravel())[1:]
        shares.append(sizes.max() / sizes.sum() if len(sizes) else 0.0)
    return torch.tensor(shares, dtype=torch.float64)


def ssim(designs, real):
    """Per design, the best SSIM of its grey image with a real item's, on [0, 1] (SSIM is not shift-invariant)."""
    grey, real_grey = ((designs.mean(1) + 1) / 2).numpy(), ((real.mean(1) + 1) / 2).numpy()
    return torch.tensor([max(structural_similarity(a, b, data_range=1.0) for b in real_grey) for a in grey])


def auc(scores, labels):
    """P(a score of label 1 > one of label 0), ties counted half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return ((pos[:, None] > neg).double().mean() + 0.5 * (pos[:, None] == neg).double().mean()).item()


def labelled_figures(path):
    """{figure run folder: {"made_by", "sha256", "labels"}} of a labels file, refused in one line (RunError) when it
    is not in that form."""
    content = read_json(path, MAX_JSON_BYTES, "labels file")
    return checked_figures(content.get("figures") if isinstance(content, dict) else None, path)


def checked_figures(figures, path):
    """`figures` of the labels file `path` when they are {folder: {"made_by", "sha256", "labels"}}, else RunError."""
    entries = figures.values() if isinstance(figures, dict) and figures else [None]
    if not all(isinstance(entry, dict) and isinstance(entry.get("made_by"), str)
               and isinstance(entry.get("sha256"), str) and isinstance(entry.get("labels"), list)
               and all(label in (0, 1) for label in entry["labels"]) for entry in entries):
        raise RunError(f"{path} is not a labels file: it needs \"figures\": {{folder: {{\"made_by\", \"sha256\", "
                       "\"labels\": [0 or 1 per design]}}}}")
    return figures


def label_sets(path):
    """[{folder: entry}] of a file of blind label sets ({"sets": [{"figures": {folder: entry}}, ...]}), refused in
    one line (RunError) when it is not in that form."""
    content = read_json(path, MAX_JSON_BYTES, "file of label sets")
    sets = content.get("sets") if isinstance(content, dict) else None
    if not (isinstance(sets, list) and sets and all(isinstance(one, dict) for one in sets)):
        raise RunError(f"{path} is not a file of label sets: it needs \"sets\": [{{\"figures\": ...}}, ...]")
    return [checked_figures(one.get("figures"), path) for one in sets]


def open_figure(folder, entry, source, device):
    """(run, labels, stages, designs, categories) of one figure of the labels file `source`, checked to be the one
    labelled."""
    run = Path(folder)
    if not (run / "personal_design.png").is_file():
        raise RunError(f"no {run / 'personal_design.png'}: make it with `{entry['made_by']}`")
    digest = hashlib.sha256((run / "personal_design.png").read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise RunError(f"{run / 'personal_design.png'} is not the figure that was labelled (made by: "
                       f"{entry['made_by']})")
    settings = read_json(run / "figures_config.json", MAX_JSON_BYTES, "settings file of pm/main.py")
    stages = Stages(settings["dvbpr_run"], settings["gan_run"], settings["dataset"], pick_device(device))
    designs, categories = figure_tiles(run, stages.designer.image_size)
    if len(entry["labels"]) != len(designs):
        raise RunError(f"{source} gives {len(entry['labels'])} labels for the {len(designs)} designs of {run}")
    return run, entry["labels"], stages, designs, categories


def open_figures(cfg):
    """[(run, labels, stages, designs, categories)] of the labelled figures, each checked to be the one labelled."""
    figures = labelled_figures(cfg.labels)
    return [open_figure(folder, entry, cfg.labels, cfg.device) for folder, entry in figures.items()]


def measure(figures):
    """({measure: per design}, the first labels) of every design of the figures, in figure order."""
    scores, eye = {"silhouette": [], "SSIM": [], "realism": [], "wholeness": [], "category": []}, []
    for run, labels, stages, designs, categories in figures:
        classifier = stages.category_classifier(run)
        fidelity = Fidelity({CLASSIFIER_EXTRACTOR: classifier_extractor(classifier)}, stages.images,
                            stages.dataset.item_category)
        for design, category in zip(designs, categories):
            real = stages.images(stages.items_of(category))
            scores["silhouette"].append(silhouette(design[None], real).item())
            scores["SSIM"].append(ssim(design[None], real).item())
            scores["realism"].append(fidelity.realism(design[None], category).item())
            scores["wholeness"].append(wholeness(design[None]).item())
            scores["category"].append(classifier.predict_proba(design[None])[0, category].item())
        eye += labels
    return {name: torch.tensor(values) for name, values in scores.items()}, torch.tensor(eye)


def blind_sheet(figures):
    """(tiles [n, 3, S, S], key): every design of the figures and a real item of each row, in one fixed shuffled
    order; key[i] = (the tile's place among the designs in figure order, or None for a real item; its category; its
    figure's index)."""
    tiles, key, designs_before = [], [], 0
    for figure, (run, _, stages, designs, categories) in enumerate(figures):
        # figures of the same queries show the same real items: each figure gives another column of them
        controls, control_categories = figure_tiles(run, stages.designer.image_size, real_column=figure)
        tiles += [*designs, *controls]
        key += [(designs_before + i, c, figure) for i, c in enumerate(categories)]
        key += [(None, c, figure) for c in control_categories]
        designs_before += len(designs)
    return shuffled_sheet(tiles, key, seed=0)


def shuffled_sheet(tiles, key, seed):
    """(tiles [n, 3, S, S] at the largest tile's size, upscaled by nearest neighbours, key) in one shuffled order."""
    size = max(tile.shape[-1] for tile in tiles)
    tiles = [F.interpolate(tile[None], size=(size, size), mode="nearest")[0] for tile in tiles]
    order = np.random.default_rng(seed).permutation(len(tiles))
    return torch.stack([tiles[i] for i in order]), [key[i] for i in order]


def write_sheet(path, tiles):
    """The sheet as a PNG, tiles numbered from 1; its SHA-256."""
    save_grid(path, tiles, SHEET_COLUMNS, [str(number) for number in range(1, len(tiles) + 1)])
    return hashlib.sha256(path.read_bytes()).hexdigest()


def blind_answers(path, sheet_digest, count):
    """A blind labeller's answers in tile order, one per tile of the sheet whose SHA-256 is `sheet_digest`: a list,
    or tile numbers "1" to `count` as keys (the form eye_pair.py's brief asks for); RunError in one line when the
    file is in neither form or was answered on another sheet."""
    content = read_json(path, MAX_JSON_BYTES, "blind answers file")
    answers = content.get("answers") if isinstance(content, dict) else None
    numbers = [str(n) for n in range(1, count + 1)]
    if isinstance(answers, dict) and sorted(answers) == sorted(numbers):
        answers = [answers[n] for n in numbers]
    if not (isinstance(answers, list) and len(answers) == count and all(a in ANSWERS for a in answers)):
        raise RunError(f"{path} is not a blind answers file for {count} tiles: it needs \"answers\": one of "
                       f"{', '.join(ANSWERS)} per tile, as a list or as {{\"1\": ..., \"{count}\": ...}}")
    if content.get("sheet_sha256") != sheet_digest:
        raise RunError(f"{path} answers another sheet than this one (its sheet_sha256 differs)")
    return answers


def cohen_kappa(a, b):
    """Agreement of two binary labellings beyond what their rates alone give."""
    observed = (a == b).double().mean()
    expected = a.double().mean() * b.double().mean() + (1 - a.double().mean()) * (1 - b.double().mean())
    return ((observed - expected) / (1 - expected)).item()


def blind_report(answers, key, scores, eye, figure_names):
    named = [(*tile, ANSWERS.index(answer)) for answer, tile in zip(answers, key)]   # (place, category, figure, answer)
    real = [(category, answer) for place, category, _, answer in named if place is None]
    by_place = sorted(entry for entry in named if entry[0] is not None)
    garment = torch.tensor([int(answer != len(ANSWERS) - 1) for *_, answer in by_place])
    right = torch.tensor([int(answer == category) for _, category, _, answer in by_place])
    figure_of = torch.tensor([figure for _, _, figure, _ in by_place])
    lines = [f"Second labeller, blind (a shuffled sheet of {len(by_place)} designs and {len(real)} real items): real "
             f"items named as their category {sum(c == a for c, a in real)} of {len(real)}; designs named as a "
             f"garment {int(garment.sum())} of {len(garment)} (first labeller: {int(eye.sum())} recognisable), as "
             f"the garment of their category {int(right.sum())}. The two labellers agree on "
             f"{int((garment == eye).sum())} of {len(eye)} designs (Cohen's kappa "
             f"{cohen_kappa(garment, eye):.2f}).", "",
             "| measure | AUC against the second labeller: named a garment | named their category |", "|---|---|---|"]
    lines += [f"| {name} | {auc(values, garment):.3f} | {auc(values, right):.3f} |" for name, values in scores.items()]
    lines += ["", "| figure | designs | first labeller: recognisable | second: named a garment | second: named their "
              "category |", "|---|---|---|---|---|"]
    for figure, name in enumerate(figure_names):
        mine = figure_of == figure
        lines.append(f"| {name} | {int(mine.sum())} | {int(eye[mine].sum())} | {int(garment[mine].sum())} | "
                     f"{int(right[mine].sum())} |")
    return "\n".join(lines) + "\n"


def report(scores, eye):
    lines = ["| measure | AUC against the eye | mean, recognisable | mean, not recognisable |", "|---|---|---|---|"]
    for name, values in scores.items():
        lines.append(f"| {name} | {auc(values, eye):.3f} | {values[eye == 1].mean():.3f} | "
                     f"{values[eye == 0].mean():.3f} |")
    realistic = scores["realism"] >= 1
    lines += ["", f"{len(eye)} designs, {int(eye.sum())} recognisable by eye; realistic (realism >= 1) agrees with "
              f"the eye on {int((realistic == eye.bool()).sum())}: {int((realistic & (eye == 0)).sum())} realistic "
              f"but not recognisable, {int((~realistic & (eye == 1)).sum())} recognisable but not realistic."]
    return "\n".join(lines) + "\n"


def best_threshold(values, labels):
    """The threshold t for which "value >= t means nameable" agrees with the most labels (the lowest such t)."""
    candidates = torch.cat([values.unique(), values.max()[None] + 1])
    agreement = torch.stack([((values >= t).long() == labels).sum() for t in candidates])
    return candidates[agreement.argmax()].item()


def measure_sets(cfg):
    """([(set index, figure folder, {measure: per design}, labels)] of every figure of every set, each figure
    measured once; [(set index, folder)] of those left out as not made, with --skip-missing)."""
    measured, rows, missing = {}, [], []
    for index, figures in enumerate(label_sets(cfg.sets)):
        for folder, entry in figures.items():
            if cfg.skip_missing and not (Path(folder) / "personal_design.png").is_file():
                missing.append((index, folder))
                continue
            key = (folder, entry["sha256"])
            if key not in measured:
                measured[key] = measure([open_figure(folder, entry, cfg.sets, cfg.device)])[0]
            rows.append((index, folder, measured[key], torch.tensor(entry["labels"])))
    return rows, missing


def with_combination(rows, fit_sets):
    """The rows with one more measure, "combined": the probability of "nameable" by a logistic regression on every
    measure, each standardised over the first `fit_sets` sets, fitted by maximum likelihood on their labels alone."""
    names = list(rows[0][2])
    stacked = [torch.stack([scores[name].double() for name in names], dim=1) for _, _, scores, _ in rows]
    fit = [(features, labels) for features, (index, *_, labels) in zip(stacked, rows) if index < fit_sets]
    features, labels = torch.cat([f for f, _ in fit]), torch.cat([labels for _, labels in fit]).double()
    mean, spread = features.mean(dim=0), features.std(dim=0).clamp(min=1e-12)
    weights = torch.zeros(len(names) + 1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights], max_iter=500, line_search_fn="strong_wolfe")
    logits = lambda f: ((f - mean) / spread) @ weights[1:] + weights[0]

    def loss():
        optimiser.zero_grad()
        value = F.binary_cross_entropy_with_logits(logits(features), labels) + COMBINED_L2 * weights[1:].square().sum()
        value.backward()
        return value

    optimiser.step(loss)
    with torch.no_grad():
        return [(index, folder, {**scores, "combined": torch.sigmoid(logits(f)).float()}, eye)
                for f, (index, folder, scores, eye) in zip(stacked, rows)]


def figures_ordered(rows, name, keep):
    """(pairs ordered alike, pairs) over the pairs of figures of one set (of the sets `keep` keeps) whose labeller
    named different numbers of designs: alike where the figure with more named has the higher mean measure."""
    alike = pairs = 0
    for index in {i for i, *_ in rows if keep(i)}:
        figures = [(scores[name].mean().item(), labels.sum().item()) for i, _, scores, labels in rows if i == index]
        for a, (mean_a, named_a) in enumerate(figures):
            for mean_b, named_b in figures[a + 1:]:
                if named_a != named_b:
                    pairs += 1
                    alike += (mean_a - mean_b) * (named_a - named_b) > 0
    return alike, pairs


def sets_report(rows, fit_sets, missing=()):
    """Each measure's AUC against every set's labels pooled, on the held-out sets and per set, its threshold fitted on
    the first `fit_sets` sets, checked on the rest against always saying "nameable", and how often its mean orders
    two figures of a held-out set as their labeller's counts do; the figures `missing` named."""
    if not rows:
        raise RunError("none of the labelled figures is made here: make them with the commands of their made_by")
    count = max(index for index, *_ in rows) + 1
    if not 0 < fit_sets < count:
        raise ConfigError(f"--fit-sets {fit_sets}: give 1 to {count - 1}, so that some of the {count} sets check the "
                          "thresholds the others fit")
    rows = with_combination(rows, fit_sets)
    pooled = lambda name, keep: (torch.cat([scores[name] for i, _, scores, _ in rows if keep(i)]),
                                 torch.cat([labels for i, _, _, labels in rows if keep(i)]))
    eye = torch.cat([labels for *_, labels in rows])
    lines = [f"{len(eye)} labels of {len({folder for _, folder, *_ in rows})} figures in {count} sets, "
             f"{int(eye.sum())} nameable; thresholds fitted on sets 1-{fit_sets}, checked on sets "
             f"{fit_sets + 1}-{count}.", "",
             "combined: a logistic regression on the other measures, fitted on the same sets as the thresholds (so "
             "its AUC over all sets counts the sets it was fitted on; the held-out AUC does not).", "",
             "| measure | AUC, all sets | AUC, held-out sets | " + " | ".join(f"set {i + 1}" for i in range(count))
             + " | threshold | accuracy on the held-out sets | always \"nameable\" there | figure pairs of a held-out "
             "set ordered as its labeller ordered them |",
             "|---|---|---|" + "---|" * count + "---|---|---|---|"]
    for name in rows[0][2]:
        values, labels = pooled(name, lambda i: True)
        per_set = []
        for index in range(count):
            mine, theirs = pooled(name, lambda i: i == index)
            per_set.append(f"{auc(mine, theirs):.2f}" if 0 < theirs.sum() < len(theirs) else "-")
        threshold = best_threshold(*pooled(name, lambda i: i < fit_sets))
        held_values, held_labels = pooled(name, lambda i: i >= fit_sets)
        accuracy = ((held_values >= threshold).long() == held_labels).double().mean().item()
        lines.append(f"| {name} | {auc(values, labels):.3f} | {auc(held_values, held_labels):.3f} | "
                     + " | ".join(per_set)
                     + f" | {threshold:.3g} | {accuracy:.3f} | {held_labels.double().mean().item():.3f} | "
                     + "{} of {} |".format(*figures_ordered(rows, name, lambda i: i >= fit_sets)))
    if missing:
        left_out = ", ".join(f"{folder} (set {index + 1})" for index, folder in missing)
        lines += ["", f"Left out, not made here: {left_out}."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    with stage_errors("eye_check"):
        cfg, _ = parse_config(EyeCheckConfig, argv, description=__doc__.splitlines()[0])
        if cfg.sets is not None:
            rows, missing = measure_sets(cfg)
            table = sets_report(rows, cfg.fit_sets, missing)
            Path(cfg.sets_out).parent.mkdir(parents=True, exist_ok=True)
            Path(cfg.sets_out).write_text(table)
            print(table)
            return
        figures = open_figures(cfg)
        scores, eye = measure(figures)
        table = report(scores, eye)
        tiles, key = blind_sheet(figures)
        digest = write_sheet(Path(cfg.sheet), tiles)
        if Path(cfg.blind).is_file():
            table += "\n" + blind_report(blind_answers(cfg.blind, digest, len(tiles)), key, scores, eye,
                                         [str(run) for run, *_ in figures])
        else:
            print(f"no second labeller's answers at {cfg.blind}; their sheet is {cfg.sheet} (SHA-256 {digest})")
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(table)
        print(table)


if __name__ == "__main__":
    main()
