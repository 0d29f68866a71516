"""A lever's fig. 5s against the base's, on one blind sheet: how many designs each blind labeller names of each.

The rules by which generator levers were judged (docs/design_half.md) ask blind labellers whether a lever's designs
can be named more often than the base's. This makes that sheet and scores it:

    python experiments/eye_pair.py --base runs/pm_fig_s0 runs/pm_fig_s1 --lever runs/pm_fig_hc_s0 runs/pm_fig_hc_s1
        writes the sheet (--sheet, a PNG), its key (the same path, .json: which figure and design each tile is, and
        the sheet's SHA-256) and the labellers' brief (the same path, .md);
    python experiments/eye_pair.py --key runs/eye_pair.json --answers answers_1.json answers_2.json
        scores the labellers' answers ({"sheet_sha256": ..., "answers": {"1": one of ANSWERS, ...}}, one per tile).

The sheet holds every design of every figure and the real items of each base figure's rows (a control: a labeller
who cannot name real items is not judging garments), all tiles at one size, shuffled by --shuffle-seed, numbered
from 1; nothing on it tells a design from a real item, a lever's figure from a base's, or one figure from another.
Figures are taken in the order base 1, lever 1, base 2, lever 2, ...; the i-th figure's real items are those of
column i (mod 3) of its rows, so that figures of the same queries show different real items.
"""
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.checkpoint import read_json, write_json
from common.cli import parse_config, stage_errors
from common.errors import ConfigError, RunError
from experiments.eye_check import ANSWERS, MAX_JSON_BYTES, cohen_kappa, figure_tiles, write_sheet
from gan.run import open_gan_run

CANNOT_TELL = ANSWERS[-1]
WOMENS_SHOES = ANSWERS.index("sandal")   # the answer named after the category
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
of it). Reply with one line: how many tiles you answered and how many you answered "cannot tell".
"""


@dataclass
class EyePairConfig:
    base: list[str] | None = field(default=None, metadata={
        "help": "the base's fig. 5 runs (pm/main.py --out folders), one per seed"})
    lever: list[str] | None = field(default=None, metadata={
        "help": "the lever's fig. 5 runs, as many as --base, the i-th made with the i-th base's seeds"})
    sheet: str = field(default="runs/eye_pair.png", metadata={
        "help": "where the sheet is written; its key and the labellers' brief beside it (.json, .md)"})
    shuffle_seed: int = field(default=0, metadata={"help": "the seed of the sheet's shuffle"})
    key: str | None = field(default=None, metadata={"help": "a sheet's key (.json): score --answers against it"})
    answers: list[str] | None = field(default=None, metadata={"help": "blind labellers' answer files, one each"})
    out: str = field(default="runs/eye_pair.md", metadata={"help": "where the scores are written"})


def figure_order(base, lever):
    """[(arm, folder)] in the sheet's figure order, base and lever interleaved; ConfigError unless paired."""
    if not base or not lever or len(base) != len(lever):
        raise ConfigError("--base and --lever: give as many lever figures as base figures (one pair per seed)")
    return [pair for runs in zip(base, lever) for pair in (("base", runs[0]), ("lever", runs[1]))]


def image_size(run):
    """The generator's image side behind `run`'s fig. 5 (its tiles are upscaled from it)."""
    settings = read_json(Path(run) / "figures_config.json", MAX_JSON_BYTES, "settings file of pm/main.py")
    return open_gan_run(settings["gan_run"]).config.image_size


def pair_sheet(figures, sizes, shuffle_seed):
    """(tiles [n, 3, S, S], key): every design of `figures` ([(arm, folder)]) and each base figure's real items, in
    one shuffled order; key[i] = [arm, folder, the design's place in its figure or None for a real item,
    category]."""
    tiles, key = [], []
    for index, ((arm, folder), size) in enumerate(zip(figures, sizes)):
        designs, categories = figure_tiles(Path(folder), size)
        tiles += [*designs]
        key += [[arm, folder, place, category] for place, category in enumerate(categories)]
        if arm == "base":
            real, real_categories = figure_tiles(Path(folder), size, real_column=index)
            tiles += [*real]
            key += [[arm, folder, None, category] for category in real_categories]
    side = max(tile.shape[-1] for tile in tiles)
    tiles = [F.interpolate(tile[None], size=(side, side), mode="nearest")[0] for tile in tiles]
    order = np.random.default_rng(shuffle_seed).permutation(len(tiles))
    return torch.stack([tiles[i] for i in order]), [key[i] for i in order]


def make_sheet(cfg):
    """Write the sheet, its key and the brief; the sheet's SHA-256."""
    figures = figure_order(cfg.base, cfg.lever)
    sizes = [image_size(folder) for _, folder in figures]
    tiles, key = pair_sheet(figures, sizes, cfg.shuffle_seed)
    sheet = Path(cfg.sheet)
    sheet.parent.mkdir(parents=True, exist_ok=True)
    digest = write_sheet(sheet, tiles)
    write_json(sheet.with_suffix(".json"), {"sheet_sha256": digest, "shuffle_seed": cfg.shuffle_seed,
                                            "base": cfg.base, "lever": cfg.lever, "key": key})
    sheet.with_suffix(".md").write_text(BRIEF.format(
        sheet=sheet, size=max(sizes), answers=", ".join(f'"{a}"' for a in ANSWERS), count=len(tiles),
        digest=digest))
    return digest, len(tiles)


def read_key(path):
    """(sheet SHA-256, key) of a sheet's key file, refused in one line (RunError) when it is not one."""
    content = read_json(path, MAX_JSON_BYTES, "sheet key of experiments/eye_pair.py")
    key = content.get("key") if isinstance(content, dict) else None
    if not (isinstance(content.get("sheet_sha256") if key else None, str) and isinstance(key, list)
            and all(isinstance(tile, list) and len(tile) == 4 and tile[0] in ("base", "lever")
                    and isinstance(tile[1], str) and (tile[2] is None or type(tile[2]) is int)
                    and type(tile[3]) is int and 0 <= tile[3] < len(ANSWERS) - 1 for tile in key)):
        raise RunError(f"{path} is not a sheet key: it needs \"sheet_sha256\" and \"key\": [[arm, figure, place or "
                       "null, category] per tile]")
    return content["sheet_sha256"], key


def read_answers(path, digest, count):
    """One labeller's answers in tile order, refused in one line (RunError) unless one of ANSWERS per tile of the
    sheet whose SHA-256 is `digest`."""
    content = read_json(path, MAX_JSON_BYTES, "blind answers file")
    answers = content.get("answers") if isinstance(content, dict) else None
    numbers = [str(n) for n in range(1, count + 1)]
    if not (isinstance(answers, dict) and sorted(answers) == sorted(numbers)
            and all(answers[n] in ANSWERS for n in numbers)):
        raise RunError(f"{path} is not a blind answers file for {count} tiles: it needs \"answers\": {{\"1\": one of "
                       f"{', '.join(ANSWERS)}, ... \"{count}\": ...}}")
    if content.get("sheet_sha256") != digest:
        raise RunError(f"{path} answers another sheet than the key's (its sheet_sha256 differs)")
    return [answers[n] for n in numbers]


def labels_of(answers, key):
    """({figure: [1 where the design was named a garment, per design in figure order]}, the real items' [named their
    category, count])."""
    named, real = {}, [0, 0]
    for (arm, figure, place, category), answer in zip(key, answers):
        if place is None:
            real[0] += answer == ANSWERS[category]
            real[1] += 1
            continue
        named.setdefault(figure, {})[place] = int(answer != CANNOT_TELL)
    return {figure: [labels[p] for p in sorted(labels)] for figure, labels in named.items()}, real


def arm_figures(key):
    """{arm: [figure]} in the sheet's figure order."""
    figures = {"base": [], "lever": []}
    for arm, figure, *_ in key:
        if figure not in figures[arm]:
            figures[arm].append(figure)
    return figures


def score(answer_files, digest, key):
    """The scores of every labeller's answers as a Markdown report."""
    figures, categories = arm_figures(key), {}
    for _, figure, place, category in key:
        if place is not None:
            categories.setdefault(figure, {})[place] = category
    lines = ["| labeller | real items named as their category | base: designs named, per figure | lever: designs "
             "named, per figure | lever - base | women's shoes named, base / lever |", "|---|---|---|---|---|---|"]
    named_by, differences = [], []
    for path in answer_files:
        labels, real = labels_of(read_answers(path, digest, len(key)), key)
        per_arm = {arm: [sum(labels[f]) for f in arm_figures_of] for arm, arm_figures_of in figures.items()}
        shoes = {arm: sum(label for f in figs for place, label in enumerate(labels[f])
                          if categories[f][place] == WOMENS_SHOES) for arm, figs in figures.items()}
        differences.append(sum(per_arm["lever"]) - sum(per_arm["base"]))
        named_by.append(torch.tensor([label for arm in ("base", "lever") for f in figures[arm] for label in labels[f]]))
        lines.append(f"| {Path(path).name} | {real[0]} of {real[1]} | {' / '.join(map(str, per_arm['base']))} = "
                     f"{sum(per_arm['base'])} | {' / '.join(map(str, per_arm['lever']))} = {sum(per_arm['lever'])} "
                     f"| {differences[-1]:+d} | {shoes['base']} / {shoes['lever']} |")
    designs = len(named_by[0]) // 2
    lines += ["", f"Designs named, the lever's minus the base's, of {designs} each: {np.mean(differences):+.2f} on "
              f"average over {len(answer_files)} labellers."]
    if len(named_by) > 1:
        pairs = [(int((a == b).sum()), cohen_kappa(a, b)) for a, b in combinations(named_by, 2)]
        lines.append(f"Two labellers agree on {min(p[0] for p in pairs)} to {max(p[0] for p in pairs)} of "
                     f"{2 * designs} designs (Cohen's kappa {min(p[1] for p in pairs):.2f} to "
                     f"{max(p[1] for p in pairs):.2f}).")
    return "\n".join(lines) + "\n"


def main(argv=None):
    with stage_errors("eye_pair"):
        cfg, _ = parse_config(EyePairConfig, argv, description=__doc__.splitlines()[0])
        if cfg.answers:
            if cfg.key is None:
                raise ConfigError("--answers: give the sheet's --key (the .json written beside it)")
            digest, key = read_key(cfg.key)
            report = score(cfg.answers, digest, key)
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
