"""How faithful each heat map method is, measured on a catalogue whose truth is known (the embedded one):

    garment_heat_share   the share of a map's heat on the item's garment, by the renderer's mask resized as the
                         images are; every visible attribute of the hidden taste (shape, colour, pattern, bulk) is
                         drawn there
    garment_area_share   the garment's share of the image: what a map blind to the image would get
    deletion_gap         the mean over 10%, 20%, ..., 90% of (x_ui with that share of random pixels greyed) minus
                         (x_ui with that share of the most-heated pixels greyed), in units of the score: above 0
                         when the map finds what the score rests on
over a fixed sample of (user, top item) pairs: --users users drawn with --seed, each with their highest-scoring
item outside their history. by_top_attribute splits the shares by the group (category, colour, pattern, bulk) of
the attribute each user's hidden taste weights most. Written to explain_eval.json, .csv and .md.
"""
import csv
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from common.catalogue.config import truth_path
from common.catalogue.taste import ATTRIBUTE_GROUPS
from common.catalogue.truth import load_truth
from common.checkpoint import write_json
from common.data import history
from common.device import describe
from common.errors import ConfigError
from common.images import RESIZE_FILTERS
from explain.saliency import (
    DELETION_FRACTIONS,
    applicable_methods,
    deletion_curve,
    explain_items,
    garment_heat_share,
    salience_order,
)

GROUPS = tuple(dict.fromkeys(ATTRIBUTE_GROUPS))
COLUMNS = ("method", "pairs", "garment_heat_share", "garment_area_share", "deletion_gap", "score", "score_grey")


def sample_pairs(explained, count, seed):
    """(users, their top items outside their history), `count` users drawn without replacement."""
    dataset = explained.dataset
    users = np.sort(np.random.default_rng(seed).choice(dataset.usernum, min(count, dataset.usernum), replace=False))
    scores = explained.item_scores(torch.from_numpy(users)).cpu()
    for row, user in enumerate(users):
        scores[row, torch.from_numpy(history(dataset, user))] = -torch.inf
    return torch.from_numpy(users), scores.argmax(dim=1)


def garment_masks(truth, items, size, resize_filter):
    """bool [n, size, size]: the items' garment masks resized with the filter the images were resized with."""
    resize = lambda mask: Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size),
                                                                              RESIZE_FILTERS[resize_filter])
    return torch.from_numpy(np.stack([np.asarray(resize(mask)) >= 128 for mask in truth.item_garment_mask[items]]))


@torch.no_grad()
def deletion_curves(explained, users, items, heat, settings):
    """([n, F] salient, [n, F] random) deletion scores; tie-breaks and random orders drawn from settings.seed,
    the same for every method."""
    ties, shuffles = (torch.Generator().manual_seed(settings.seed + k) for k in (0, 1))
    salient, random = [], []
    for start in range(0, len(items), settings.batch_size):
        rows = slice(start, start + settings.batch_size)
        images = explained.store(items[rows])
        user_ids = users[rows].to(images.device)
        order = salience_order(heat[rows].to(images.device), ties)
        salient.append(deletion_curve(explained.model, user_ids, images, order).cpu())
        order = salience_order(torch.zeros_like(heat[rows], device=images.device), shuffles)
        random.append(deletion_curve(explained.model, user_ids, images, order).cpu())
    return torch.cat(salient), torch.cat(random)


def measure(explained, method, users, items, masks, settings):
    """Per pair: garment heat share, garment area share, deletion curves, score and the all-grey score."""
    heat, scores = explain_items(explained.model, explained.store, method, users, items, settings)
    salient, random = deletion_curves(explained, users, items, heat, settings)
    with torch.no_grad():
        grey = torch.zeros_like(explained.store(items[:1])).expand(len(items), -1, -1, -1)
        grey_scores = explained.model.score(users.to(grey.device), grey).cpu()
    return dict(share=garment_heat_share(heat, masks), area=masks.flatten(1).float().mean(1), salient=salient,
                random=random, score=scores, grey=grey_scores)


def summarise(pairs, groups):
    mean = lambda values: round(float(values.float().mean()), 4) if len(values) else None
    by_group = {group: {"pairs": int((groups == k).sum()), "garment_heat_share": mean(pairs["share"][groups == k]),
                        "garment_area_share": mean(pairs["area"][groups == k])}
                for k, group in enumerate(GROUPS)}
    return {"pairs": len(pairs["score"]), "garment_heat_share": mean(pairs["share"]),
            "garment_area_share": mean(pairs["area"]), "deletion_gap": mean(pairs["random"] - pairs["salient"]),
            "score": mean(pairs["score"]), "score_grey": mean(pairs["grey"]),
            "deletion_salient": [round(v, 4) for v in pairs["salient"].mean(0).tolist()],
            "deletion_random": [round(v, 4) for v in pairs["random"].mean(0).tolist()], "by_top_attribute": by_group}


def open_truth(dataset):
    path = truth_path(dataset.path)
    if not path.is_file():
        raise ConfigError(f"--evaluate needs a catalogue whose truth is known and {dataset.path} has no {path.name}: "
                          "use a run on the embedded catalogue (python dvbpr/main.py --dataset embedded)")
    truth = load_truth(path)
    if len(truth.item_garment_mask) != dataset.itemnum:
        raise ConfigError(f"{path} describes {len(truth.item_garment_mask)} items, {dataset.path} has "
                          f"{dataset.itemnum}")
    return truth


def evaluate_faithfulness(explained, settings):
    """Measure every method that applies to the run; writes explain_eval.{json,csv,md}, returns the JSON dict."""
    started = time.time()
    truth = open_truth(explained.dataset)
    users, items = sample_pairs(explained, settings.users, settings.seed)
    masks = garment_masks(truth, items.numpy(), explained.store.size, explained.resize_filter)
    groups = torch.tensor([GROUPS.index(ATTRIBUTE_GROUPS[a]) for a in truth.user_top_attribute[users.numpy()]])
    methods = {}
    for method in tqdm(applicable_methods(explained.model), desc="methods", unit="method"):
        method_started = time.time()
        methods[method] = summarise(measure(explained, method, users, items, masks, settings), groups)
        methods[method]["seconds"] = round(time.time() - method_started, 1)
    result = {"run": str(explained.path), "model": explained.description, "dataset": explained.dataset.name,
              "pairs": len(users), "seed": settings.seed, "ig_steps": settings.ig_steps,
              "deletion_fractions": list(DELETION_FRACTIONS), "methods": methods,
              "device": describe(explained.store.device), "wall_seconds": round(time.time() - started, 1)}
    out = Path(settings.out) if settings.out else explained.path
    for path in write_eval(out, result):
        print(f"wrote {path}")
    print(render_markdown(result))
    return result


def write_eval(out, result):
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "explain_eval.json", result)
    curve_columns = [f"{order}_{round(100 * f)}" for order in ("salient", "random") for f in DELETION_FRACTIONS]
    with open(out / "explain_eval.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMNS, *curve_columns])
        for method, row in result["methods"].items():
            writer.writerow([method, *(row[c] for c in COLUMNS[1:]), *row["deletion_salient"],
                             *row["deletion_random"]])
    (out / "explain_eval.md").write_text(render_markdown(result))
    return [out / f"explain_eval.{ext}" for ext in ("json", "csv", "md")]


def markdown_table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


def render_markdown(result):
    methods = result["methods"]
    lines = [f"Faithfulness of the heat maps of {result['model']} on {result['dataset']}: {result['pairs']} (user, "
             f"top item) pairs, seed {result['seed']}; {result['device']}, {result['wall_seconds']} s.", ""]
    lines += markdown_table(COLUMNS, [[m, *(row[c] for c in COLUMNS[1:])] for m, row in methods.items()])
    lines += ["", "Deletion curves: the mean score with the most-heated (salient) or random share of pixels greyed.",
              ""]
    lines += markdown_table(["method", "order", *(f"{round(100 * f)}%" for f in result["deletion_fractions"])],
                            [[m, order, *row[f"deletion_{order}"]] for m, row in methods.items()
                             for order in ("salient", "random")])
    groups = {g: n["pairs"] for g, n in next(iter(methods.values()))["by_top_attribute"].items() if n["pairs"]}
    lines += ["", "garment_heat_share (garment_area_share) by the group of the attribute the user's hidden taste "
              "weights most.", ""]
    lines += markdown_table(["method", *(f"{g} ({n} pairs)" for g, n in groups.items())],
                            [[m, *(f"{row['by_top_attribute'][g]['garment_heat_share']} "
                                   f"({row['by_top_attribute'][g]['garment_area_share']})" for g in groups)]
                             for m, row in methods.items()])
    return "\n".join(lines) + "\n"
