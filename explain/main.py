"""Why this item for this user: a heat map of what raises x_ui on each item's image, and how faithful it is.

    python explain/main.py --run runs/dvbpr --user 3                      # user 3's top 5, Grad-CAM
    python explain/main.py --run runs/dvbpr --user 3 --item 42 --method ig
    python explain/main.py --run runs/attention --user 3 --method attention
    python explain/main.py --run runs/dvbpr --evaluate --out runs/explain

--run is a DVBPR run (dvbpr/main.py) or a region-attention run (attention/main.py). The methods (gradcam, ig,
occlusion, attention) are described in explain/saliency.py. A request writes explain_user<U>_<what>_<method>.png, a
strip of each item's image above its heat map, and a .json of the scores beside it, into --out (default: the run
directory). --evaluate measures every method that applies to the run on a catalogue whose truth is known (the
embedded one) and writes explain_eval.md, .csv and .json: see explain/faithfulness.py.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from attention.run import open_attention_run
from common.checkpoint import load_checkpoint, write_json
from common.cli import MAX_BATCH, MAX_IMAGE_SIZE, MAX_TILE_SIZE, parse_config, require_sizes, stage_errors
from common.data import check_id, history
from common.device import pick_device
from common.errors import ConfigError, RunError
from common.images import ImageStore, image_store
from common.original_format import category_name
from dvbpr.run import open_dvbpr_run
from explain.faithfulness import evaluate_faithfulness
from explain.saliency import HEAT_MAP_METHODS, check_method, explain_items

MAX_TOP_K = 20   # items in one strip


@dataclass
class ExplainConfig:
    run: str = field(default="runs/dvbpr", metadata={"help": "DVBPR or attention run directory"})
    user: int | None = field(default=None, metadata={"help": "user id: explain their --top-k best items (or --item)"})
    item: int | None = field(default=None, metadata={"help": "item id: explain this one item for --user"})
    top_k: int = field(default=5, metadata={"help": "how many of the user's top items to explain"})
    method: str = field(default="gradcam", metadata={"help": "heat map method", "choices": list(HEAT_MAP_METHODS)})
    evaluate: bool = field(default=False, metadata={"help": "measure every applicable method's faithfulness "
                                                            "against the catalogue's truth"})
    users: int = field(default=50, metadata={"help": "--evaluate: (user, top item) pairs, users drawn by --seed"})
    ig_steps: int = field(default=32, metadata={"help": "integrated gradients: steps from the grey image"})
    occlusion_patch: int | None = field(default=None, metadata={"help": "occlusion: grey patch side in pixels "
                                                                        "(default: a quarter of the image)"})
    batch_size: int = field(default=10, metadata={"help": "images explained at once"})
    dataset: str | None = field(default=None, metadata={"help": "dataset .npy or folder, if not the one the run was "
                                                                "trained on"})
    out: str | None = field(default=None, metadata={"help": "output directory (default: the run directory)"})
    tile_size: int = field(default=128, metadata={"help": "side of each image in the strip, in pixels"})
    seed: int = field(default=0, metadata={"help": "--evaluate: seed of the users and the random deletion order"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})


@dataclass
class Explained:
    """A run opened for explaining: its model, dataset and images at the model's input size."""
    path: Path
    model: torch.nn.Module
    dataset: object
    store: ImageStore
    resize_filter: str
    description: str
    item_scores: object   # users [B] -> x_ui [B, itemnum]


def open_explained(run, dataset_path=None, device="cpu"):
    """The DVBPR or attention run in `run`, told apart by the stage that wrote its checkpoint."""
    run = Path(run)
    weights = next((p for p in (run / "best.pt", run / "checkpoint.pt") if p.is_file()), None)
    if weights is None:
        raise RunError(f"no trained model in {run} (best.pt or checkpoint.pt): make one with "
                       "`python dvbpr/main.py --out DIR` or `python attention/main.py --out DIR`")
    if load_checkpoint(weights, map_location=device)["stage"] == "attention":
        return open_attention(run, dataset_path, device)
    trained = open_dvbpr_run(run, dataset_path, device, with_model=True)
    cfg = trained.config
    store = image_store(trained.dataset, cfg.image_size, cfg.resize_filter, device=device)
    return Explained(run, trained.model, trained.dataset, store, cfg.resize_filter,
                     f"DVBPR, {cfg.backbone} at {cfg.image_size} px, epoch {trained.epoch}",
                     lambda users: trained.theta[users.to(device)] @ trained.items.T)


def open_attention(run, dataset_path, device):
    trained = open_attention_run(run, dataset_path, device)
    return Explained(run, trained.model, trained.dataset, trained.images, trained.config.resize_filter,
                     f"region attention, cnn-f at {trained.config.image_size} px, epoch {trained.epoch}",
                     lambda users: trained.scorer(users.to(device)))


INFERNO = np.array([[0.0, 0.0, 0.02], [0.34, 0.06, 0.43], [0.8, 0.25, 0.3], [0.99, 0.64, 0.04], [0.99, 1.0, 0.64]])


def heat_colours(heat):
    """[..., 3] colours of heat in [0, 1] on an inferno-like ramp: black, purple, red, orange, pale yellow."""
    stops = np.linspace(0, 1, len(INFERNO))
    return np.stack([np.interp(heat, stops, INFERNO[:, c]) for c in range(3)], axis=-1)


def overlay_tile(image, heat, tile_size):
    """(image, heat map over the image in grey) as PIL tiles; the heat is scaled to its maximum. The grey keeps the
    garment's own colours from being read as heat."""
    picture = Image.fromarray(image.transpose(1, 2, 0)).resize((tile_size, tile_size), Image.NEAREST)
    heat = heat / heat.max() if heat.max() > 0 else heat
    heat = np.asarray(Image.fromarray(heat.astype(np.float32)).resize((tile_size, tile_size), Image.BILINEAR))
    grey = np.asarray(picture.convert("L"), dtype=np.float32)[..., None] / 255
    tinted = 0.3 * grey + 0.7 * heat_colours(np.clip(heat, 0, 1))
    return picture, Image.fromarray((tinted * 255 + 0.5).astype(np.uint8))


def save_strip(path, images, heat, captions, tile_size):
    """Two rows, the images over their heat maps, each column captioned."""
    gap, caption = 4, 14
    strip = Image.new("RGB", (len(images) * (tile_size + gap) + gap, 2 * tile_size + 3 * gap + caption), "white")
    draw = ImageDraw.Draw(strip)
    for column, (image, item_heat, text) in enumerate(zip(images, heat, captions)):
        x = gap + column * (tile_size + gap)
        picture, tinted = overlay_tile(image, item_heat, tile_size)
        strip.paste(picture, (x, gap))
        strip.paste(tinted, (x, 2 * gap + tile_size))
        draw.text((x, 3 * gap + 2 * tile_size), text, fill="black")
    strip.save(path)


def requested_items(explained, cfg):
    """(item ids, what) of a request: the user's top k outside their history, or the one --item."""
    dataset, user = explained.dataset, cfg.user
    if cfg.item is not None:
        check_id(cfg.item, dataset.itemnum, "item")
        return torch.tensor([cfg.item]), f"item{cfg.item}"
    scores = explained.item_scores(torch.tensor([user]))[0].cpu()
    scores[torch.from_numpy(history(dataset, user))] = -torch.inf
    return scores.topk(min(cfg.top_k, dataset.itemnum)).indices, f"top{cfg.top_k}"


def explain_user(explained, cfg):
    """Explain a request for one user: the strip and its JSON; returns their paths."""
    dataset, user = explained.dataset, cfg.user
    items, what = requested_items(explained, cfg)
    heat, scores = explain_items(explained.model, explained.store, cfg.method, torch.full_like(items, user), items,
                                 cfg)
    seen = history(dataset, user)
    every = explained.item_scores(torch.tensor([user]))[0].cpu()
    others = every.clone()
    others[torch.from_numpy(seen)] = -torch.inf
    ranks = [int((others > every[item]).sum()) + 1 for item in items.tolist()]
    seen = set(seen.tolist())
    out = Path(cfg.out) if cfg.out else explained.path
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"explain_user{user}_{what}_{cfg.method}"
    save_strip(stem.with_suffix(".png"), explained.store.cache[items.numpy()], heat.numpy(),
               [f"#{rank} item {item}" for rank, item in zip(ranks, items.tolist())], cfg.tile_size)
    write_json(stem.with_suffix(".json"), {
        "run": str(explained.path), "model": explained.description, "user": user, "method": cfg.method,
        "items": [{"item": item, "score": score, "rank": rank, "in_history": item in seen,
                   "category": category_name(int(dataset.item_category[item]), dataset.num_categories)}
                  for item, score, rank in zip(items.tolist(), scores.tolist(), ranks)]})
    for item, score, rank in zip(items.tolist(), scores.tolist(), ranks):
        print(f"item {item:>6}  score {score:.6f}  rank {rank}{'  (in history)' if item in seen else ''}")
    print(f"wrote {stem}.png and {stem}.json")
    return stem.with_suffix(".png"), stem.with_suffix(".json")


def check_request(cfg):
    require_sizes(cfg, dict(users=100_000, ig_steps=1024, occlusion_patch=MAX_IMAGE_SIZE, batch_size=MAX_BATCH,
                            tile_size=MAX_TILE_SIZE))
    if cfg.evaluate:
        return
    if cfg.user is None:
        raise ConfigError("give --user U (their --top-k best items, or one --item I) or --evaluate")
    if not 1 <= cfg.top_k <= MAX_TOP_K:
        raise ConfigError(f"--top-k must be from 1 to {MAX_TOP_K} (one image strip), not {cfg.top_k}")


def run_explain(cfg):
    check_request(cfg)
    explained = open_explained(cfg.run, cfg.dataset, pick_device(cfg.device))
    if cfg.evaluate:
        return evaluate_faithfulness(explained, cfg)
    check_id(cfg.user, explained.dataset.usernum, "user")
    check_method(explained.model, cfg.method)
    if (cfg.occlusion_patch or 0) > explained.store.size:
        raise ConfigError(f"--occlusion-patch {cfg.occlusion_patch} is larger than the run's {explained.store.size} "
                          "px images")
    return explain_user(explained, cfg)


def main(argv=None):
    with stage_errors("explain"):
        cfg, _ = parse_config(ExplainConfig, argv, description=__doc__.split("\n")[0])
        return run_explain(cfg)


if __name__ == "__main__":
    main()
