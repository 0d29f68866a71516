"""The embedded default catalogue: a small synthetic fashion dataset in the original .npy format.

When the real AmazonFashion file is absent, `ensure_embedded_catalogue` generates (once, deterministically from a
seed) a catalogue shaped like it, so that every stage runs on a fresh machine with no downloads:

- 6 categories in the original order: 0 men's tops, 1 women's tops, 2 men's bottoms, 3 women's bottoms,
  4 men's shoes, 5 women's shoes; `c` is a one-hot list.
- Item images are JPEG product shots on a white background, from one of two sources:
  "procedural": PIL-drawn silhouettes (t-shirt, blouse, trousers, skirt, sneaker, heeled shoe) with varied
      proportions, a colour, a pattern (plain, stripes, dots, checks) and fabric noise; needs nothing.
  "fashion-mnist": the grey Fashion-MNIST product photos, tinted with the item's colour and pattern on the
      garment pixels. Its classes map onto the categories as
          men's tops      <- Pullover (2), Coat (4), Shirt (6)      (long-sleeved tops)
          women's tops    <- T-shirt/top (0)                         (tees and tank tops)
          men's bottoms   <- Trouser (1)
          women's bottoms <- Dress (3)                               (the skirt-like silhouette)
          men's shoes     <- Sneaker (7), Ankle boot (9)
          women's shoes   <- Sandal (5)                              (many of them heeled)
      Bag (8) is dropped. The IDX files (train-/t10k-images-idx3-ubyte[.gz], ...-labels-idx1-ubyte[.gz]) are
      read from `fashion_mnist_dir`, else from data/fashion-mnist/, else from where Debian's
      dataset-fashion-mnist package installs them.
  "auto" picks fashion-mnist when its files are found, else procedural. The source is part of the file name.
- Users have a hidden taste over visual attributes that are visible in the pixels: category (shape), colour
  family, pattern and bulk (the garment's share of the picture, within its category). Each user picks at least 5
  distinct items with probability proportional to popularity * exp(taste score); item popularity is lognormal,
  so most items are cold (< 5 training interactions). One interaction per user is held out for validation and
  one for test at random, as in the paper.
The hidden truth is saved beside the catalogue as <name>.truth.npz (see `load_truth`, `true_scores`).
"""
import colorsys
import dataclasses
import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from common.data import save_original_format

GENERATOR_VERSION = 1
CATEGORY_NAMES = ("men's tops", "women's tops", "men's bottoms", "women's bottoms", "men's shoes", "women's shoes")
# colour family -> (hue in degrees, saturation, value) of its centre
COLOUR_FAMILIES = {
    "red": (0, 0.80, 0.80), "orange": (28, 0.85, 0.95), "yellow": (52, 0.80, 0.95), "green": (125, 0.65, 0.70),
    "blue": (215, 0.75, 0.75), "purple": (275, 0.55, 0.75), "pink": (330, 0.45, 0.95), "black": (0, 0.0, 0.15),
}
PATTERNS = ("plain", "stripes", "dots", "checks")
ATTRIBUTE_NAMES = (*CATEGORY_NAMES, *COLOUR_FAMILIES, *PATTERNS, "bulk")
FASHION_MNIST_CLASSES = {0: (2, 4, 6), 1: (0,), 2: (1,), 3: (3,), 4: (7, 9), 5: (5,)}
FASHION_MNIST_DIRS = (Path("data/fashion-mnist"), Path("/usr/share/datasets/fashion-mnist"))
MIN_INTERACTIONS = 5


@dataclass
class CatalogueConfig:
    seed: int = field(default=0, metadata={"help": "seed of everything generated"})
    num_users: int = field(default=1500, metadata={"help": "number of users"})
    num_items: int = field(default=2500, metadata={"help": "number of items"})
    image_size: int = field(default=128, metadata={"help": "side of the stored JPEG images in pixels"})
    image_source: str = field(default="auto", metadata={"help": "item images",
                                                        "choices": ["auto", "procedural", "fashion-mnist"]})
    fashion_mnist_dir: str | None = field(default=None, metadata={"help": "directory with the Fashion-MNIST "
                                                                          "IDX files (default: search)"})
    mean_extra_interactions: float = field(default=3.0, metadata={"help": "mean interactions per user beyond 5"})
    popularity_sigma: float = field(default=0.75, metadata={"help": "spread of the lognormal item popularity"})
    jpeg_quality: int = field(default=90, metadata={"help": "JPEG quality of the item images"})


@dataclass
class CatalogueTruth:
    """The hidden generative truth: score(u, i) = user_taste[u] . item_attributes[i]."""
    user_taste: np.ndarray          # [usernum, len(ATTRIBUTE_NAMES)] float32
    item_attributes: np.ndarray     # [itemnum, len(ATTRIBUTE_NAMES)] float32: one-hots and the bulk z-score
    item_log_popularity: np.ndarray  # [itemnum] float32
    item_category: np.ndarray       # [itemnum] int64
    item_colour: np.ndarray         # [itemnum] int64, index into COLOUR_FAMILIES
    item_pattern: np.ndarray        # [itemnum] int64, index into PATTERNS
    attribute_names: tuple
    config: dict


# ----------------------------------------------------------------------------- files and caching

def find_fashion_mnist(directory=None):
    """The directory holding the Fashion-MNIST IDX files, or None."""
    candidates = [Path(directory)] if directory else FASHION_MNIST_DIRS
    for candidate in candidates:
        if all(_idx_file(candidate, name) for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
            return candidate
    return None


def resolve_image_source(cfg):
    """'procedural' or 'fashion-mnist'; FileNotFoundError if fashion-mnist is asked for but absent."""
    if cfg.image_source not in ("auto", "procedural", "fashion-mnist"):
        raise ValueError(f"image_source must be auto, procedural or fashion-mnist, not {cfg.image_source!r}")
    if cfg.image_source == "procedural":
        return "procedural"
    if find_fashion_mnist(cfg.fashion_mnist_dir) is not None:
        return "fashion-mnist"
    if cfg.image_source == "fashion-mnist":
        searched = cfg.fashion_mnist_dir or ", ".join(map(str, FASHION_MNIST_DIRS))
        raise FileNotFoundError(f"Fashion-MNIST IDX files not found in {searched}")
    return "procedural"


def embedded_dataset_path(data_dir=Path("data/embedded"), cfg=None):
    """Where the catalogue for `cfg` lives: the name carries the image source and a hash of the settings."""
    cfg = cfg or CatalogueConfig()
    source = resolve_image_source(cfg)
    settings = {**dataclasses.asdict(cfg), "image_source": source, "fashion_mnist_dir": None,
                "version": GENERATOR_VERSION}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return Path(data_dir) / f"EmbeddedFashion6_{source.replace('-', '')}_{key}.npy"


def truth_path(dataset_path):
    dataset_path = Path(dataset_path)
    return dataset_path.with_name(dataset_path.stem + ".truth.npz")


def ensure_embedded_catalogue(data_dir=Path("data/embedded"), cfg=None):
    """Path of the embedded catalogue, generating it first if it is not there yet."""
    path = embedded_dataset_path(data_dir, cfg)
    if not (path.exists() and truth_path(path).exists()):
        generate_catalogue(path, cfg or CatalogueConfig())
    return path


def generate_catalogue(path, cfg):
    """Write the catalogue to `path` (.npy, original layout) and its truth beside it; both appear atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = resolve_image_source(cfg)
    item_rng, image_rng, user_rng, interaction_rng = (
        np.random.default_rng(seq) for seq in np.random.SeedSequence(cfg.seed).spawn(4))

    items = _sample_items(item_rng, cfg.num_items)
    images, bulk = _render_images(image_rng, items, cfg, source)
    attributes = _item_attributes(items, bulk)
    taste = _sample_taste(user_rng, cfg.num_users)
    log_popularity = item_rng.normal(0.0, cfg.popularity_sigma, cfg.num_items).astype(np.float32)
    chosen = _sample_interactions(interaction_rng, taste @ attributes.T, log_popularity, cfg.mean_extra_interactions)

    user_train, user_validation, user_test = _split(interaction_rng, chosen)
    records = [{"imgs": image, "c": [int(c == k) for k in range(len(CATEGORY_NAMES))]}
               for image, c in zip(images, items["category"])]
    temp_npy = path.with_name(f".{path.stem}.{os.getpid()}.partial.npy")
    temp_truth = path.with_name(f".{path.stem}.{os.getpid()}.partial.truth.npz")
    try:
        save_original_format(temp_npy, user_train, user_validation, user_test, records, cfg.num_users, cfg.num_items)
        np.savez(temp_truth, user_taste=taste, item_attributes=attributes, item_log_popularity=log_popularity,
                 item_category=items["category"], item_colour=items["colour"], item_pattern=items["pattern"],
                 attribute_names=np.array(ATTRIBUTE_NAMES),
                 config=np.array(json.dumps({**dataclasses.asdict(cfg), "image_source": source})))
        os.replace(temp_truth, truth_path(path))
        os.replace(temp_npy, path)
    finally:
        temp_npy.unlink(missing_ok=True)
        temp_truth.unlink(missing_ok=True)
    return path


def load_truth(path):
    """The hidden truth of a catalogue, from its .npy path or its .truth.npz path."""
    path = Path(path)
    if not path.name.endswith(".truth.npz"):
        path = truth_path(path)
    with np.load(path) as f:
        return CatalogueTruth(
            user_taste=f["user_taste"], item_attributes=f["item_attributes"],
            item_log_popularity=f["item_log_popularity"], item_category=f["item_category"],
            item_colour=f["item_colour"], item_pattern=f["item_pattern"],
            attribute_names=tuple(f["attribute_names"].tolist()), config=json.loads(f["config"].item()))


def true_scores(truth):
    """[usernum, itemnum] float32: the hidden taste score of every user for every item."""
    return truth.user_taste @ truth.item_attributes.T


# ----------------------------------------------------------------------------- items and users

def _sample_items(rng, n):
    """Visual attributes of each item: category, colour family (+ the exact jittered RGB), pattern, proportions."""
    colour = rng.integers(len(COLOUR_FAMILIES), size=n)
    centres = np.array(list(COLOUR_FAMILIES.values()), dtype=np.float64)[colour]
    hue, saturation, value = (centres + rng.uniform(-1, 1, (n, 3)) * [8, 0.1, 0.1]).T
    hue, saturation, value = hue % 360 / 360, np.clip(saturation, 0, 1), np.clip(value, 0, 1)
    pattern_value = np.where(value < 0.3, 0.8, value * 0.5)    # a darker shade; light grey on black
    return {
        "category": rng.integers(len(CATEGORY_NAMES), size=n),
        "colour": colour,
        "rgb": np.array([colorsys.hsv_to_rgb(*hsv) for hsv in zip(hue, saturation, value)]),
        "pattern_rgb": np.array([colorsys.hsv_to_rgb(*hsv) for hsv in zip(hue, saturation, pattern_value)]),
        "pattern": rng.integers(len(PATTERNS), size=n),
        "pattern_period": rng.uniform(0.06, 0.13, n),     # fraction of the image side
        "pattern_angle": rng.choice([0.0, 45.0, 90.0], n),
        "width": rng.uniform(0.85, 1.15, n),
        "length": rng.uniform(0.85, 1.15, n),
        "variant": rng.integers(2, size=n),
        "shift": rng.uniform(-0.03, 0.03, (n, 2)),
        "mirror": rng.integers(2, size=n),
    }


def _item_attributes(items, bulk):
    """One-hot category, colour and pattern, and bulk as a z-score within the category."""
    n = len(items["category"])
    blocks = [np.eye(len(CATEGORY_NAMES))[items["category"]], np.eye(len(COLOUR_FAMILIES))[items["colour"]],
              np.eye(len(PATTERNS))[items["pattern"]]]
    bulk_z = np.zeros(n)
    for c in range(len(CATEGORY_NAMES)):
        members = items["category"] == c
        if members.sum() > 1:
            bulk_z[members] = (bulk[members] - bulk[members].mean()) / (bulk[members].std() + 1e-6)
    return np.concatenate([*blocks, bulk_z[:, None]], axis=1).astype(np.float32)


def _sample_taste(rng, num_users):
    """Taste vectors dominated by a few clear factors: a favourite colour or two, a gender side, a pattern."""
    n_cat, n_col, n_pat = len(CATEGORY_NAMES), len(COLOUR_FAMILIES), len(PATTERNS)
    gender = rng.choice(3, num_users, p=[0.4, 0.45, 0.15])      # men, women, both
    category = rng.normal(0, 0.5, (num_users, n_cat))
    category[:, 0::2] += np.where(gender == 0, 1.5, np.where(gender == 2, 0.75, 0.0))[:, None]
    category[:, 1::2] += np.where(gender == 1, 1.5, np.where(gender == 2, 0.75, 0.0))[:, None]
    colour = rng.normal(0, 0.3, (num_users, n_col))
    users = np.arange(num_users)
    colour[users, rng.integers(n_col, size=num_users)] += 3.0
    second = rng.integers(n_col, size=num_users)
    colour[users, second] += np.where(rng.random(num_users) < 0.5, 1.5, 0.0)
    pattern = rng.normal(0, 0.3, (num_users, n_pat))
    pattern[users, rng.integers(n_pat, size=num_users)] += 1.5
    bulk = rng.normal(0, 0.5, (num_users, 1))
    return np.concatenate([category, colour, pattern, bulk], axis=1).astype(np.float32)


def _sample_interactions(rng, scores, log_popularity, mean_extra, chunk=512):
    """Per user, distinct items drawn without replacement with P(i) ~ popularity_i * exp(score_ui) (Gumbel top-k)."""
    num_users, num_items = scores.shape
    counts = MIN_INTERACTIONS + rng.geometric(1 / (1 + mean_extra), num_users) - 1
    counts = np.minimum(counts, num_items // 2)
    chosen = []
    for start in range(0, num_users, chunk):
        keys = scores[start:start + chunk] + log_popularity + rng.gumbel(size=(len(scores[start:start + chunk]),
                                                                               num_items))
        order = np.argsort(-keys, axis=1, kind="stable")
        chosen += [order[row, :counts[start + row]] for row in range(len(order))]
    return chosen


def _split(rng, chosen):
    """Hold out one random interaction per user for validation and another for test; the rest is training."""
    user_train, user_validation, user_test = {}, {}, {}
    for user, item_ids in enumerate(chosen):
        shuffled = [{"productid": int(i)} for i in rng.permutation(item_ids)]
        user_validation[user], user_test[user], user_train[user] = [shuffled[0]], [shuffled[1]], shuffled[2:]
    return user_train, user_validation, user_test


# ----------------------------------------------------------------------------- images

def _render_images(rng, items, cfg, source):
    """JPEG bytes of every item and its bulk (mean garment alpha)."""
    size, n = cfg.image_size, len(items["category"])
    photos = _fashion_mnist_photos(rng, items["category"], cfg.fashion_mnist_dir) if source == "fashion-mnist" else None
    images, bulk = [], np.zeros(n)
    for i in tqdm(range(n), desc=f"rendering {source} catalogue", unit="img", leave=False):
        item = {key: value[i] for key, value in items.items()}
        if photos is None:
            pixels, alpha = render_procedural(item, size, rng)
        else:
            pixels, alpha = colourise_photo(photos[i], item, size, rng)
        bulk[i] = alpha.mean()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=cfg.jpeg_quality)
        images.append(buffer.getvalue())
    return images, bulk


def _fill(item, size, rng):
    """[size, size, 3] float32 fabric: the item colour with its pattern, shading and a little noise."""
    x = np.arange(size, dtype=np.float32)[None, :] / size
    y = x.T
    period = item["pattern_period"]
    pattern = PATTERNS[item["pattern"]]
    if pattern == "stripes":
        angle = np.deg2rad(item["pattern_angle"])
        mix = (x * np.cos(angle) + y * np.sin(angle)) / period % 1.0 < 0.35
    elif pattern == "dots":
        mix = ((x / period) % 1.0 - 0.5) ** 2 + ((y / period) % 1.0 - 0.5) ** 2 < 0.09
    elif pattern == "checks":
        mix = 0.5 * ((x / period) % 1.0 < 0.5) + 0.5 * ((y / period) % 1.0 < 0.5)
    else:
        mix = np.zeros((1, 1))
    base, accent = item["rgb"].astype(np.float32), item["pattern_rgb"].astype(np.float32)
    fabric = base + np.float32(mix)[..., None] * (accent - base)
    shading = 1.05 - 0.15 * y + 0.04 * rng.standard_normal((size, size), dtype=np.float32)
    return np.clip(fabric * shading[..., None], 0, 1)


def _compose(fill, alpha, trim=None, trim_rgb=None, seams=None):
    """Garment over a white background; trim (soles, heels) in a flat colour; seams darkened."""
    image = 1 - alpha[..., None] * (1 - fill)
    if trim is not None:
        image = image * (1 - trim[..., None]) + trim[..., None] * trim_rgb
    if seams is not None:
        image = image * (1 - 0.45 * seams[..., None])
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


class _Sketch:
    """Supersampled masks drawn in unit coordinates (x right, y down), shifted and optionally mirrored."""
    ROLES = ("body", "trim", "seams")

    def __init__(self, size, shift, mirror):
        self.side, self.shift, self.mirror = 2 * size, shift, mirror
        self.masks = {role: Image.new("L", (self.side, self.side)) for role in self.ROLES}
        self.draw = {role: ImageDraw.Draw(mask) for role, mask in self.masks.items()}

    def _xy(self, points):
        return [(((1 - x) if self.mirror else x) + self.shift[0]) * self.side for x, _ in points], \
               [(y + self.shift[1]) * self.side for _, y in points]

    def polygon(self, role, points, fill=255):
        xs, ys = self._xy(points)
        self.draw[role].polygon(list(zip(xs, ys)), fill=fill)

    def ellipse(self, role, centre, radii, fill=255):
        (x,), (y,) = self._xy([centre])
        rx, ry = radii[0] * self.side, radii[1] * self.side
        self.draw[role].ellipse((x - rx, y - ry, x + rx, y + ry), fill=fill)

    def line(self, role, points, width=0.012):
        xs, ys = self._xy(points)
        self.draw[role].line(list(zip(xs, ys)), fill=255, width=max(1, round(width * self.side)))

    def alphas(self, size):
        return {role: np.asarray(mask.resize((size, size), Image.BOX), dtype=np.float32) / 255
                for role, mask in self.masks.items()}


def _tshirt(s, w, l, long_sleeves):
    bw, top, hem = 0.19 * w, 0.2, 0.2 + 0.62 * l
    cuff = (0.33, 0.14) if long_sleeves else (0.15, 0.12)       # sleeve drop, sleeve outward reach
    left = [(0.5 - 0.07, top - 0.02), (0.5 - bw, top), (0.5 - bw - cuff[1] - 0.05, top + cuff[0]),
            (0.5 - bw - cuff[1] + 0.04, top + cuff[0] + 0.04), (0.5 - bw, top + 0.16), (0.5 - bw, hem)]
    s.polygon("body", left + [(1 - x, y) for x, y in reversed(left)])
    s.ellipse("body", (0.5, top - 0.01), (0.07, 0.05), fill=0)
    s.line("seams", [(0.5 - bw, top + 0.16), (0.5 - bw, top)])
    s.line("seams", [(0.5 + bw, top + 0.16), (0.5 + bw, top)])


def _blouse(s, w, l, camisole):
    sw, waist, hem = 0.15 * w, 0.13 * w, 0.22 + 0.55 * l
    top = 0.32 if camisole else 0.22
    left = [(0.5 - 0.06, top), (0.5 - sw, top + 0.01), (0.5 - waist, 0.55), (0.5 - 0.21 * w, hem)]
    if not camisole:
        left[1:1] = [(0.5 - sw - 0.07, top + 0.07), (0.5 - sw - 0.02, top + 0.12)]
    s.polygon("body", left + [(1 - x, y) for x, y in reversed(left)])
    s.polygon("body", [(0.5 - 0.06, top - 0.01), (0.5 + 0.06, top - 0.01), (0.5, top + 0.14)], fill=0)
    if camisole:
        s.line("body", [(0.5 - sw + 0.02, top + 0.01), (0.5 - sw + 0.04, 0.16)], width=0.015)
        s.line("body", [(0.5 + sw - 0.02, top + 0.01), (0.5 + sw - 0.04, 0.16)], width=0.015)


def _trousers(s, w, l, wide):
    hip, hem_y = 0.18 * w, 0.1 + 0.8 * l
    leg = (0.13 if wide else 0.09) * w
    s.polygon("body", [(0.5 - hip, 0.1), (0.5 + hip, 0.1), (0.5 + hip + 0.01, hem_y), (0.5 + hip - leg, hem_y),
                       (0.5, 0.36), (0.5 - hip + leg, hem_y), (0.5 - hip - 0.01, hem_y)])
    s.line("seams", [(0.5 - hip, 0.16), (0.5 + hip, 0.16)])
    s.line("seams", [(0.5, 0.16), (0.5, 0.3)])


def _skirt(s, w, l, pleated):
    waist, hem_y = 0.15 * w, 0.15 + 0.55 * l
    flare = waist + 0.16 * l
    s.polygon("body", [(0.5 - waist, 0.15), (0.5 + waist, 0.15), (0.5 + flare, hem_y), (0.5 - flare, hem_y)])
    s.ellipse("body", (0.5, hem_y), (flare, 0.035))
    s.line("seams", [(0.5 - waist, 0.2), (0.5 + waist, 0.2)])
    if pleated:
        for k in (-2, -1, 0, 1, 2):
            s.line("seams", [(0.5 + k * waist / 3, 0.2), (0.5 + k * flare / 3, hem_y)], width=0.006)


def _sneaker(s, w, l, high_top):
    collar = 0.3 if high_top else 0.45
    toe = 0.5 + 0.38 * l
    s.polygon("body", [(0.13, 0.64), (0.13, collar), (0.28, collar - 0.01), (0.34, collar + 0.04),
                       (0.42, collar - 0.06 * w), (toe - 0.16, 0.52), (toe - 0.08, 0.55), (toe - 0.08, 0.64)])
    s.ellipse("body", (toe - 0.08, 0.6), (0.08, 0.05))
    s.polygon("trim", [(0.11, 0.62), (toe + 0.02, 0.62), (toe + 0.02, 0.7), (0.13, 0.72), (0.11, 0.69)])
    for k in range(4):
        x = 0.44 + 0.055 * k
        y = collar - 0.03 + k * (0.52 - collar) / 4
        s.line("seams", [(x - 0.02, y), (x + 0.03, y - 0.015)], width=0.01)


def _heel(s, w, l, high):
    heel_bottom = 0.82 if high else 0.72
    toe = 0.5 + 0.4 * l
    s.polygon("body", [(0.2, 0.42), (0.36, 0.5), (0.55, 0.58 - 0.02 * w), (toe - 0.15, 0.66), (toe, 0.76),
                       (toe - 0.02, 0.785), (0.52, 0.72), (0.36, 0.6), (0.22, 0.56)])
    s.polygon("trim", [(0.2, 0.54), (0.27, 0.56), (0.25, heel_bottom), (0.235, heel_bottom)])


SILHOUETTES = (_tshirt, _blouse, _trousers, _skirt, _sneaker, _heel)


def render_procedural(item, size, rng):
    """(uint8 [size, size, 3] image, float [size, size] garment alpha) of a drawn product shot."""
    category = int(item["category"])
    mirrored = bool(item["mirror"]) and category >= 4      # shoes face either way; clothes are symmetric
    sketch = _Sketch(size, item["shift"], mirrored)
    SILHOUETTES[category](sketch, item["width"], item["length"], bool(item["variant"]))
    alpha = sketch.alphas(size)
    trim_rgb = np.full(3, 0.93, np.float32) if category == 4 else np.float32(item["rgb"] * 0.5)
    image = _compose(_fill(item, size, rng), alpha["body"], alpha["trim"], trim_rgb, alpha["seams"] * alpha["body"])
    return image, np.maximum(alpha["body"], alpha["trim"])


def colourise_photo(grey, item, size, rng):
    """A grey Fashion-MNIST photo (bright garment on black) tinted with the item's colour and pattern."""
    photo = Image.fromarray(grey).resize((size, size), Image.BICUBIC)
    intensity = np.asarray(photo, dtype=np.float32) / 255
    alpha = np.clip(intensity * 6, 0, 1)
    shading = 0.55 + 0.45 * intensity / max(intensity.max(), 1e-6)
    return _compose(_fill(item, size, rng) * shading[..., None], alpha), alpha


def _idx_file(directory, name):
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path):
    """An IDX file (optionally gzipped) as a uint8 array: [n] labels or [n, rows, cols] images."""
    path = Path(path)
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    ndim = raw[3]
    shape = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    if raw[:3] != b"\x00\x00\x08" or len(raw) != 4 + 4 * ndim + int(np.prod(shape)):
        raise ValueError(f"{path} is not a uint8 IDX file")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist_photos(rng, categories, directory=None):
    """One grey 28x28 photo per item, drawn from the Fashion-MNIST classes of its category (distinct if possible)."""
    directory = find_fashion_mnist(directory)
    images = np.concatenate([read_idx(_idx_file(directory, f"{part}-images-idx3-ubyte")) for part in ("train", "t10k")])
    labels = np.concatenate([read_idx(_idx_file(directory, f"{part}-labels-idx1-ubyte")) for part in ("train", "t10k")])
    photos = np.zeros((len(categories), 28, 28), dtype=np.uint8)
    for category, classes in FASHION_MNIST_CLASSES.items():
        members = np.flatnonzero(categories == category)
        pool = np.flatnonzero(np.isin(labels, classes))
        photos[members] = images[rng.choice(pool, len(members), replace=len(members) > len(pool))]
    return photos
