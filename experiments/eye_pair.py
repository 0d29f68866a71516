"""Fig. 5's designs on one blind sheet against a lever's or against the real items beside them, and how many of
each arm blind labellers name.

The rules by which generator levers were judged (docs/design_half.md) ask blind labellers whether a lever's designs
can be named more often than the base's; the acceptance asks whether a person can tell the designs' garments as
well as the real products' at the same size. This makes those sheets and scores them:

    python experiments/eye_pair.py --base runs/pm_fig_s0 runs/pm_fig_s1 --lever runs/pm_fig_hc_s0 runs/pm_fig_hc_s1
        writes the sheet (--sheet, a PNG), its key (the same path, .json: which figure and design each tile is, and
        the sheet's SHA-256) and the labellers' brief (the same path, .md);
    python experiments/eye_pair.py --key runs/eye_pair.json --answers answers_1.json answers_2.json
        scores the labellers' answers ({"sheet_sha256": ..., "answers": {"1": one of ANSWERS, ...}}, one per tile,
        or the answers as a list in tile order);
    python experiments/eye_pair.py --real-items --base runs/pm_fig_s0 runs/pm_fig_s1
        the base's designs against every real item of their rows (the users' top items by eq. 8) instead;
    ... --key K --answers ... --against-key K2 --against-answers ...
        two sheets of the same rows and arms compared row by row (each within its own labellers).

The sheet holds every design of every figure and the real items of one column of each base figure's rows (a
control: a labeller who cannot name real items is not judging garments; with --real-items, every real item of each
row, as the second arm), all tiles at one size, shuffled by --shuffle-seed, numbered
from 1; nothing on it tells a design from a real item, a lever's figure from a base's, or one figure from another.
Figures are taken in the order base 1, lever 1, base 2, lever 2, ...; the i-th figure's real items are those of
column i (mod 3) of its rows, so that figures of the same queries show different real items.
"""
from dataclasses import dataclass, field
from functools import cache
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import read_json, write_json
from common.cli import parse_config, stage_errors
from common.errors import ConfigError, RunError
from experiments.eye_check import (
    ANSWERS,
    MAX_JSON_BYTES,
    blind_answers,
    cohen_kappa,
    figure_tiles,
    shuffled_sheet,
    write_sheet,
)
from gan.run import open_gan_run

CANNOT_TELL = ANSWERS[-1]
WOMENS_SHOES = ANSWERS.index("sandal")   # the answer named after the category
MEASURES = ("named a garment", "named as their category")
BRIEF = """You are a careful, independent labeller of small clothing images. Look at the image file {sheet} (use
your image viewing tool; view the file itself, and if it helps, crop it into parts and view those at a larger scale,
but do not compute anything about the pixels: judge by eye only). It holds numbered tiles (the number is under each
tile), each a {size}x{size}-pixel picture of a single item of clothing or footwear on a white ground; some are photos
of real products, some are made by a computer, and you are not told which.

For every tile, say which garment it shows, choosing exactly one of:
  {answers}
Name a garment only where you can actually tell what garment it is, as a shopper glancing at a product thumbnail
would; where it is a blob, a fragment, a patch of pattern or otherwise not recognisable as a garment, answer
"cannot tell". Do not guess from colour or position. Judge each tile on its own.

Write your answers as JSON to OUTFILE, exactly in this form (every tile number from 1 to {count}, as strings):
{{"sheet_sha256": "{digest}", "answers": {{"1": "...", "2": "...", ...}}}}
Do not read any other file in any folder, and do not look at any other image than the sheet (and crops you make
of it, kept in a folder of your own: other labellers may be cropping the same sheet at the same time). Reply with
one line: how many tiles you answered and how many you answered "cannot tell".
"""


@dataclass
class EyePairConfig:
    base: list[str] | None = field(default=None, metadata={
        "help": "the base's fig. 5 runs (pm/main.py --out folders), one per seed"})
    lever: list[str] | None = field(default=None, metadata={
        "help": "the lever's fig. 5 runs, as many as --base, the i-th made with the i-th base's seeds"})
    real_items: bool = field(default=False, metadata={
        "help": "instead of --lever, every real item of the base figures' rows (the users' top items by eq. 8, at "
                "the designs' size): are the designs named as often as real products?"})
    sheet: str = field(default="runs/eye_pair.png", metadata={
        "help": "where the sheet is written; its key and the labellers' brief beside it (.json, .md)"})
    shuffle_seed: int = field(default=0, metadata={"help": "the seed of the sheet's shuffle"})
    key: str | None = field(default=None, metadata={"help": "a sheet's key (.json): score --answers against it"})
    answers: list[str] | None = field(default=None, metadata={"help": "blind labellers' answer files, one each"})
    against_key: str | None = field(default=None, metadata={
        "help": "with --answers: a second sheet of the same rows and arms (its designs made otherwise), compared per "
                "row: this sheet's difference between its arms minus the second's"})
    against_answers: list[str] | None = field(default=None, metadata={
        "help": "the second sheet's labellers' answer files"})
    out: str = field(default="runs/eye_pair.md", metadata={"help": "where the scores are written"})


def figure_order(base, lever, real_items=False):
    """[(arm, folder)] in the sheet's figure order, base and lever interleaved (the base alone with `real_items`);
    ConfigError unless paired."""
    if real_items:
        if not base or lever:
            raise ConfigError("--real-items: give --base figures and no --lever")
        return [("base", folder) for folder in base]
    if not base or not lever or len(base) != len(lever):
        raise ConfigError("--base and --lever: give as many lever figures as base figures (one pair per seed)")
    return [pair for runs in zip(base, lever) for pair in (("base", runs[0]), ("lever", runs[1]))]


def image_size(run):
    """The generator's image side behind `run`'s fig. 5 (its tiles are upscaled from it)."""
    path = Path(run) / "figures_config.json"
    settings = read_json(path, MAX_JSON_BYTES, "settings file of pm/main.py")
    if not (isinstance(settings, dict) and isinstance(settings.get("gan_run"), str)):
        raise RunError(f"{path} names no GAN run (\"gan_run\"): not a settings file of pm/main.py")
    return gan_image_size(settings["gan_run"])


@cache
def gan_image_size(gan_run):
    """The image side of the GAN trained in `gan_run`, read once however many figures it made."""
    return open_gan_run(gan_run).config.image_size


def columns_per_row(folder):
    """How many real items, and as many designs, each row of `folder`'s fig. 5 shows."""
    record = read_json(Path(folder) / "personal_design.json", MAX_JSON_BYTES, "fig. 5 record of pm/main.py")
    return len(record["queries"][0]["real"])


def pair_sheet(figures, sizes, shuffle_seed, real_items=False):
    """(tiles [n, 3, S, S], key): every design of `figures` ([(arm, folder)]) and, with `real_items`, every real
    item of their rows (arm "real"), else the real items of one column of each base figure (a control: place None),
    in one shuffled order; key[i] = {arm, figure, place (in its figure and arm, row by row), row, category}."""
    tiles, key = [], []
    for index, ((arm, folder), size) in enumerate(zip(figures, sizes)):
        per_row = columns_per_row(folder)
        designs, categories = figure_tiles(Path(folder), size)
        tiles += [*designs]
        key += [{"arm": arm, "figure": folder, "place": place, "row": place // per_row, "category": category}
                for place, category in enumerate(categories)]
        for column in range(per_row) if real_items else [index] if arm == "base" else []:
            real, categories = figure_tiles(Path(folder), size, real_column=column)
            tiles += [*real]
            key += [{"arm": "real" if real_items else arm, "figure": folder,
                     "place": row * per_row + column if real_items else None, "row": row, "category": category}
                    for row, category in enumerate(categories)]
    return shuffled_sheet(tiles, key, shuffle_seed)


def make_sheet(cfg):
    """Write the sheet, its key and the brief; (the sheet's SHA-256, its tile count)."""
    figures = figure_order(cfg.base, cfg.lever, cfg.real_items)
    sizes = [image_size(folder) for _, folder in figures]
    tiles, key = pair_sheet(figures, sizes, cfg.shuffle_seed, cfg.real_items)
    sheet = Path(cfg.sheet)
    sheet.parent.mkdir(parents=True, exist_ok=True)
    digest = write_sheet(sheet, tiles)
    write_json(sheet.with_suffix(".json"), {"sheet_sha256": digest, "shuffle_seed": cfg.shuffle_seed,
                                            "base": cfg.base, "lever": cfg.lever, "real_items": cfg.real_items,
                                            "key": key})
    sheet.with_suffix(".md").write_text(BRIEF.format(
        sheet=sheet, size=max(sizes), answers=", ".join(f'"{a}"' for a in ANSWERS), count=len(tiles),
        digest=digest))
    return digest, len(tiles)


def is_tile(tile):
    return (isinstance(tile, dict) and tile.get("arm") in ("base", "lever", "real")
            and isinstance(tile.get("figure"), str) and (tile.get("place") is None or type(tile["place"]) is int)
            and type(tile.get("row")) is int and type(tile.get("category")) is int
            and 0 <= tile["category"] < len(ANSWERS) - 1)


def read_key(path):
    """(sheet SHA-256, key) of a sheet's key file, refused in one line (RunError) when it is not one."""
    content = read_json(path, MAX_JSON_BYTES, "sheet key of experiments/eye_pair.py")
    key = content.get("key") if isinstance(content, dict) else None
    if not (isinstance(key, list) and key and isinstance(content.get("sheet_sha256"), str)
            and all(is_tile(tile) for tile in key) and len({tile["arm"] for tile in key} - {"base"}) == 1):
        raise RunError(f"{path} is not a sheet key: it needs \"sheet_sha256\" and \"key\": [{{arm (base and one of "
                       "lever, real), figure, place or null, row, category}} per tile]")
    return content["sheet_sha256"], key


def arm_figures(key):
    """{arm: [figure]} in the sheet's figure order, the base first."""
    figures = {"base": []}
    for tile in key:
        if tile["figure"] not in figures.setdefault(tile["arm"], []):
            figures[tile["arm"]].append(tile["figure"])
    return figures


def tile_labels(answers, key):
    """{measure: [0 or 1 per tile]} of one labeller's answers, for each of MEASURES."""
    named = [int(answer != CANNOT_TELL) for answer in answers]
    right = [int(answer == ANSWERS[tile["category"]]) for tile, answer in zip(key, answers)]
    return dict(zip(MEASURES, (named, right)))


def labels_of(labels, key):
    """{(arm, figure): [label per tile, by place]} of per-tile labels, the controls left out."""
    by_figure = {}
    for tile, label in zip(key, labels):
        if tile["place"] is not None:
            by_figure.setdefault((tile["arm"], tile["figure"]), {})[tile["place"]] = label
    return {figure: [labels[place] for place in sorted(labels)] for figure, labels in by_figure.items()}


def row_differences(labels, key, other):
    """{(figure pair, row): the share of `other`'s tiles labelled 1 minus the base's} of per-tile labels: one unit
    per user's query."""
    figures, shares = arm_figures(key), {}
    for tile, label in zip(key, labels):
        if tile["place"] is not None:
            unit = (figures[tile["arm"]].index(tile["figure"]), tile["row"])
            shares.setdefault(unit, {}).setdefault(tile["arm"], []).append(label)
    return {unit: np.mean(arms[other]) - np.mean(arms["base"]) for unit, arms in shares.items()}


def bootstrap_interval(differences, draws=10_000):
    """(mean, 2.5th and 97.5th percentiles of the mean) of per-unit differences over resampled units."""
    values = np.asarray(differences)
    means = values[np.random.default_rng(0).integers(0, len(values), (draws, len(values)))].mean(1)
    return values.mean(), *np.percentile(means, [2.5, 97.5])


def labeller_row(name, labels, key, other):
    """One labeller's line of the report, from their tile_labels."""
    figures = arm_figures(key)
    named = labels_of(labels["named a garment"], key)
    right = labels_of(labels["named as their category"], key)
    control = [label for tile, label in zip(key, labels["named as their category"]) if tile["place"] is None]
    counts = {arm: [sum(named[(arm, figure)]) for figure in figures[arm]] for arm in ("base", other)}
    on_category = {arm: sum(sum(right[(arm, figure)]) for figure in figures[arm]) for arm in ("base", other)}
    shoes = {arm: sum(label for tile, label in zip(key, labels["named a garment"])
                      if tile["arm"] == arm and tile["place"] is not None and tile["category"] == WOMENS_SHOES)
             for arm in ("base", other)}
    return (f"| {name} | {f'{sum(control)} of {len(control)}' if control else '-'} | "
            f"{' / '.join(map(str, counts['base']))} = {sum(counts['base'])} | "
            f"{' / '.join(map(str, counts[other]))} = {sum(counts[other])} | "
            f"{sum(counts[other]) - sum(counts['base']):+d} | {on_category['base']} / {on_category[other]} | "
            f"{shoes['base']} / {shoes[other]} |")


def by_category(labels, key, other):
    """A table per category: of its tiles in each arm, how many times the labellers named a garment and their
    category."""
    lines = [f"| category (its garment) | base: named a garment | {other}: the same | base: named as their category | "
             f"{other}: the same |", "|---|---|---|---|---|"]
    for category in sorted({tile["category"] for tile in key}):
        cells = []
        for measure in ("named a garment", "named as their category"):
            for arm in ("base", other):
                tiles = [i for i, tile in enumerate(key)
                         if tile["place"] is not None and tile["arm"] == arm and tile["category"] == category]
                cells.append(f"{sum(one[measure][i] for one in labels for i in tiles)} of {len(tiles) * len(labels)}")
        lines.append(f"| {category} ({ANSWERS[category]}) | {' | '.join(cells)} |")
    return "\n".join(lines)


def other_arm(key):
    return next(arm for arm in arm_figures(key) if arm != "base")


def row_means(labels, key, measure):
    """{(figure pair, row): the other arm's share minus the base's, averaged over the labellers' `labels`}."""
    per_labeller = [row_differences(one[measure], key, other_arm(key)) for one in labels]
    return {unit: np.mean([one[unit] for one in per_labeller]) for unit in sorted(per_labeller[0])}


def sheet_labels(answer_files, digest, key):
    """[tile_labels of each labeller's answers] on the sheet of `key`, whose SHA-256 is `digest`."""
    return [tile_labels(blind_answers(path, digest, len(key)), key) for path in answer_files]


def score(answer_files, labels, key):
    """The scores of the labellers' per-tile `labels` (sheet_labels, one per file of `answer_files`) as a Markdown
    report."""
    other = other_arm(key)
    lines = [f"| labeller | control: real items named as their category | base: named a garment, per figure | "
             f"{other}: the same | {other} - base | named as their category: base / {other} | women's shoes named: "
             f"base / {other} |", "|---|---|---|---|---|---|---|"]
    lines += [labeller_row(Path(path).name, one, key, other) for path, one in zip(answer_files, labels)]
    shown = [index for index, tile in enumerate(key) if tile["place"] is not None]
    per_arm = sum(key[index]["arm"] == "base" for index in shown)
    difference = np.mean([sum(one["named a garment"][i] * (1 if key[i]["arm"] == other else -1) for i in shown)
                          for one in labels])
    lines += ["", f"Tiles named a garment, {other} minus base, of {per_arm} each: {difference:+.2f} on average over "
              f"{len(labels)} labellers."]
    for measure in MEASURES:
        rows = row_means(labels, key, measure)
        mean, low, high = bootstrap_interval(list(rows.values()))
        lines.append(f"Share {measure}, {other} minus base, over the labellers: {mean:+.3f} (95% interval {low:+.3f} "
                     f"to {high:+.3f}, a bootstrap over the {len(rows)} rows: one user's query each).")
    named = [torch.tensor([one["named a garment"][index] for index in shown]) for one in labels]
    if len(named) > 1:
        pairs = [(int((a == b).sum()), cohen_kappa(a, b)) for a, b in combinations(named, 2)]
        lines.append(f"Two labellers agree on {min(p[0] for p in pairs)} to {max(p[0] for p in pairs)} of "
                     f"{len(shown)} tiles (Cohen's kappa {min(p[1] for p in pairs):.2f} to "
                     f"{max(p[1] for p in pairs):.2f}).")
    return "\n".join(lines + ["", by_category(labels, key, other)]) + "\n"


def between_sheets(first, second):
    """Lines comparing two sheets of the same rows ((labels, key) each, the same arms): per row, the first's
    difference between its arms minus the second's, with a bootstrap interval over the rows."""
    lines, other = [], other_arm(first[1])
    for measure in MEASURES:
        ours, theirs = row_means(*first, measure), row_means(*second, measure)
        if sorted(ours) != sorted(theirs):
            raise RunError("--against-key: the two sheets do not hold the same rows (figure pairs and rows)")
        mean, low, high = bootstrap_interval([ours[unit] - theirs[unit] for unit in ours])
        lines.append(f"Share {measure}, ({other} minus base) on this sheet minus the same on the --against sheet, per "
                     f"row: {mean:+.3f} (95% interval {low:+.3f} to {high:+.3f}, a bootstrap over the {len(ours)} "
                     "rows).")
    return lines


def main(argv=None):
    with stage_errors("eye_pair"):
        cfg, _ = parse_config(EyePairConfig, argv, description=__doc__.splitlines()[0])
        if cfg.answers:
            if cfg.key is None:
                raise ConfigError("--answers: give the sheet's --key (the .json written beside it)")
            digest, key = read_key(cfg.key)
            labels = sheet_labels(cfg.answers, digest, key)
            report = score(cfg.answers, labels, key)
            if (cfg.against_key is None) != (not cfg.against_answers):
                raise ConfigError("--against-key and --against-answers: give both (the other sheet's key and its "
                                  "labellers' answers) or neither")
            if cfg.against_key is not None:
                against_digest, against_key = read_key(cfg.against_key)
                against_labels = sheet_labels(cfg.against_answers, against_digest, against_key)
                report += "\n" + "\n".join(between_sheets((labels, key), (against_labels, against_key))) + "\n"
            Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
            Path(cfg.out).write_text(report)
            print(report)
            return
        digest, count = make_sheet(cfg)
        sheet = Path(cfg.sheet)
        print(f"{sheet}: {count} tiles, SHA-256 {digest}; key {sheet.with_suffix('.json')}, the labellers' brief "
              f"{sheet.with_suffix('.md')} (its OUTFILE is theirs to fill in)")


if __name__ == "__main__":
    main()
