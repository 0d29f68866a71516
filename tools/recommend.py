"""Use a trained DVBPR model: top-k items for a user, items that look alike, and scores for new images.

    python tools/recommend.py --run runs/dvbpr --user 3 --top-k 10                # top 10 for user 3
    python tools/recommend.py --run runs/dvbpr --user 3 --category "women's tops"  # within one category
    python tools/recommend.py --run runs/dvbpr --similar-to 42                     # items that look like item 42
    python tools/recommend.py --run runs/dvbpr --user 3 --image shoe.jpg           # a new image (cold start)

Scores are the model's x_ui = theta_u . Phi(X_i) (paper eq. 6), one matrix product over the item embeddings that
training saved in embeddings.pt; only a new image goes through the CNN. Similar items are ranked by the cosine
similarity of Phi(X_i), the similarity-based recommender done with DVBPR's learned visual features.
Lists are printed as a table and saved as a strip of the items' images (in the run directory, or --out).
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.cli import MAX_TILE_SIZE, parse_config, require_sizes, stage_errors
from common.data import check_id, history
from common.device import autocast, pick_device
from common.errors import ConfigError
from common.figures import save_grid
from common.images import GREY, decode_image, read_image_file, scale_to_model
from common.original_format import category_name
from dvbpr.run import open_dvbpr_run


@dataclass
class RecommendConfig:
    run: str = field(default="runs/dvbpr", metadata={"help": "DVBPR run directory (made by python dvbpr/main.py "
                                                             "--out DIR)"})
    user: int | None = field(default=None, metadata={"help": "user id: list their top-k items (or score --image "
                                                             "for them)"})
    top_k: int = field(default=10, metadata={"help": "how many items to list"})
    category: str | None = field(default=None, metadata={"help": "only items of this category, by index or name, "
                                                                 "e.g. 1 or \"women's tops\""})
    similar_to: int | None = field(default=None, metadata={"help": "item id: list the --top-k other items nearest "
                                                                   "to it by cosine similarity of DVBPR's item "
                                                                   "embeddings Phi(X_i); with --user, none from "
                                                                   "their history"})
    image: str | None = field(default=None, metadata={"help": "image file not in the catalogue: score it for "
                                                              "--user and say where it would rank"})
    include_heldout: bool = field(default=False, metadata={"help": "a user's history is their train, validation "
                                                                   "and test items, all left out of their lists; "
                                                                   "with this flag only the training items are, "
                                                                   "to see where the held-out ones rank"})
    dataset: str | None = field(default=None, metadata={"help": "dataset .npy or folder, if not the one the run was "
                                                                "trained on"})
    out: str | None = field(default=None, metadata={"help": "directory for the image strip, if not --run"})
    tile_size: int = field(default=128, metadata={"help": "side of each image in the strip, in pixels"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})


MAX_TOP_K = 100   # items in one list and its image strip


class RecommendError(ConfigError):
    """A request this run cannot answer: the message says what was wrong."""


# ----------------------------------------------------------------------------------------------------------
# Requests

def parse_category(text, dataset):
    """A category index from its index or its name (case-insensitive)."""
    names = [category_name(c, dataset.num_categories).lower() for c in range(dataset.num_categories)]
    text = text.strip()
    if text.isdigit() and int(text) < dataset.num_categories:
        return int(text)
    if text.lower() in names:
        return names.index(text.lower())
    known = ", ".join(f"{c} ({name})" for c, name in enumerate(names)) or "none"
    raise RecommendError(f"unknown category {text!r}: the categories of {dataset.name} are {known}")


def candidates(run, exclude=(), category=None):
    """Boolean mask [itemnum] of the items a list may hold."""
    mask = torch.ones(run.dataset.itemnum, dtype=torch.bool, device=run.items.device)
    mask[torch.as_tensor(np.asarray(exclude, dtype=np.int64), device=mask.device)] = False
    if category is not None:
        mask &= torch.as_tensor(run.dataset.item_category, device=mask.device) == category
    if not mask.any():
        raise RecommendError("no items are left to list: every item is excluded or outside the category")
    return mask


def best(values, mask, k):
    """(item ids, values) of the k largest `values` where `mask` holds, largest first."""
    ids = mask.nonzero().squeeze(1)
    top = values[ids].topk(min(k, len(ids)))
    return ids[top.indices].cpu(), top.values.cpu()


def user_scores(run, user):
    """x_ui = theta_u . Phi(X_i) of every item: one product with the cached embeddings."""
    return run.items @ run.theta[user]


def top_k(run, user, k=10, category=None, include_heldout=False):
    """The user's k highest-scoring items outside their history: (item ids, scores)."""
    mask = candidates(run, history(run.dataset, user, include_heldout), category)
    return best(user_scores(run, user), mask, k)


def similar_items(run, item, k=10, category=None, user=None, include_heldout=False):
    """The k items other than `item` nearest to it by cosine similarity of Phi: (item ids, cosines).

    With `user`, items in the user's history are left out too."""
    exclude = [item] if user is None else np.append(history(run.dataset, user, include_heldout), item)
    unit = F.normalize(run.items, dim=1)
    return best(unit @ unit[item], candidates(run, exclude, category), k)


def read_image(path):
    """The bytes of an image file, read with a size cap and checked to decode (before any model is loaded)."""
    return read_image_file(path)


def score_image(run, data, user):
    """theta_u . Phi(x) for an encoded image, preprocessed as in training (size, resize filter, [-1, 1])."""
    pixels = torch.from_numpy(decode_image(data, run.config.image_size, run.config.resize_filter))
    device = run.theta.device
    with torch.no_grad(), autocast(device, run.config.bf16):
        phi = run.model.phi(scale_to_model(pixels[None]).to(device)).float()
    return (phi[0] @ run.theta[user]).item()


def rank_among(score, scores):
    """(rank of `score` among `scores`, 1 = best; percentage of them it beats)."""
    rank = int((scores > score).sum()) + 1
    return rank, 100.0 * (scores < score).float().mean().item()


def save_strip(dataset, item_ids, path, tile_size=128):
    """One row of the items' own images (grey where one does not decode)."""
    tiles = [decode_image(dataset.image_bytes[i], tile_size, "bicubic") for i in item_ids]
    tiles = [np.full((3, tile_size, tile_size), GREY, np.uint8) if tile is None else tile for tile in tiles]
    save_grid(path, scale_to_model(torch.from_numpy(np.stack(tiles))), len(tiles))


def table(dataset, item_ids, values, value_name, notes=None):
    lines = [f"{'rank':>4}  {'item':>7}  {value_name:>11}  category"]
    for rank, (item, value) in enumerate(zip(item_ids.tolist(), values.tolist()), start=1):
        note = f"  ({notes[item]})" if notes and item in notes else ""
        category = category_name(dataset.item_category[item], dataset.num_categories)
        lines.append(f"{rank:>4}  {item:>7}  {value:>11.6f}  {category}{note}")
    return "\n".join(lines)


def describe_request(run, cfg, category):
    """What a request ranked among: ' among <category>' and ', leaving out user U's N ... items'."""
    where = "" if category is None else f" among {category_name(category, run.dataset.num_categories)}"
    if cfg.user is None:
        return where, ""
    left_out = len(history(run.dataset, cfg.user, cfg.include_heldout))
    kinds = "training" if cfg.include_heldout else "train/validation/test"
    return where, f", leaving out user {cfg.user}'s {left_out} {kinds} items"


def rank_new_image(run, cfg, image, category):
    score = score_image(run, image, cfg.user)
    mask = candidates(run, history(run.dataset, cfg.user, cfg.include_heldout), category)
    rank, beaten = rank_among(score, user_scores(run, cfg.user)[mask])
    where, left_out = describe_request(run, cfg, category)
    print(f"{cfg.image} for user {cfg.user} ({run.path}, epoch {run.epoch}): theta_u . Phi(x) = {score:.5g}")
    print(f"it would rank {rank} of {int(mask.sum()) + 1} (above {beaten:.1f}% of the {int(mask.sum())} catalogue "
          f"items{where}{left_out})")
    return score, rank


def list_similar(run, cfg, category):
    item = cfg.similar_to
    ids, cosines = similar_items(run, item, cfg.top_k, category, cfg.user, cfg.include_heldout)
    where, left_out = describe_request(run, cfg, category)
    name = category_name(run.dataset.item_category[item], run.dataset.num_categories)
    print(f"{len(ids)} items nearest to item {item} ({name})"
          f"{where} by cosine similarity of Phi(X_i) ({run.path}, epoch {run.epoch}){left_out}")
    print(table(run.dataset, ids, cosines, "cosine"))
    return ids, cosines, f"similar_to_item{item}_top{cfg.top_k}"


def list_top(run, cfg, category):
    ids, scores = top_k(run, cfg.user, cfg.top_k, category, cfg.include_heldout)
    dataset, user = run.dataset, cfg.user
    held_out = {int(dataset.user_validation[user]): "held out: validation",
                int(dataset.user_test[user]): "held out: test"} if cfg.include_heldout else None
    where, left_out = describe_request(run, cfg, category)
    print(f"top {len(ids)} items for user {user}{where} by theta_u . Phi(X_i) ({run.path}, epoch {run.epoch})"
          f"{left_out}")
    print(table(dataset, ids, scores, "score", held_out))
    return ids, scores, f"user{user}_top{cfg.top_k}"


def recommend(cfg):
    """Answer one request as configured; prints it and returns (item ids, values) or, for --image, (score, rank)."""
    require_sizes(cfg, {"tile_size": MAX_TILE_SIZE})
    if cfg.similar_to is not None and cfg.image is not None:
        raise RecommendError("give either --similar-to or --image, not both")
    if cfg.user is None and cfg.similar_to is None:
        raise RecommendError("give --user U (top-k items, or with --image) or --similar-to ITEM")
    if not 1 <= cfg.top_k <= MAX_TOP_K:
        raise RecommendError(f"--top-k must be from 1 to {MAX_TOP_K} (one image strip), not {cfg.top_k}")
    image = None if cfg.image is None else read_image(cfg.image)
    run = open_dvbpr_run(cfg.run, cfg.dataset, pick_device(cfg.device), with_model=image is not None)
    category = None if cfg.category is None else parse_category(cfg.category, run.dataset)
    if cfg.user is not None:
        check_id(cfg.user, run.dataset.usernum, "user")
    if cfg.similar_to is not None:
        check_id(cfg.similar_to, run.dataset.itemnum, "item")
    if image is not None:
        return rank_new_image(run, cfg, image, category)

    ids, values, name = (list_similar if cfg.similar_to is not None else list_top)(run, cfg, category)
    out = Path(cfg.out) if cfg.out else run.path
    strip = out / (name + ("" if category is None else f"_category{category}") + ".png")
    save_strip(run.dataset, ids.tolist(), strip, cfg.tile_size)
    print(f"images: {strip}")
    return ids, values


def main(argv=None):
    summary, _examples, details = __doc__.strip().split("\n\n")
    with stage_errors("recommend"):
        cfg, _ = parse_config(RecommendConfig, argv, description=f"{summary} {details}")
        return recommend(cfg)


if __name__ == "__main__":
    main()
