"""The catalogue's item images: JPEG product shots on a white background.

"procedural": PIL-drawn silhouettes (t-shirt, blouse, trousers, skirt, sneaker, heeled shoe) with varied
proportions, a colour, a pattern (plain, stripes, dots, checks) and fabric noise. "fashion-mnist": the grey
Fashion-MNIST photos, tinted with the item's colour and pattern on the garment pixels.
"""
import io

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from common.catalogue.fashion_mnist import fashion_mnist_photos
from common.catalogue.taste import PATTERNS


def render_images(rng, items, cfg, source):
    """JPEG bytes of every item, its bulk (mean garment alpha) and its garment mask (alpha >= 0.5)."""
    size, n = cfg.image_size, len(items["category"])
    photos = fashion_mnist_photos(rng, items["category"], cfg.fashion_mnist_dir) if source == "fashion-mnist" else None
    images, bulk, masks = [], np.zeros(n), np.zeros((n, size, size), dtype=bool)
    for i in tqdm(range(n), desc=f"rendering {source} catalogue", unit="img", leave=False):
        item = {key: value[i] for key, value in items.items()}
        if photos is None:
            pixels, alpha = render_procedural(item, size, rng)
        else:
            pixels, alpha = colourise_photo(photos[i], item, size, rng)
        bulk[i], masks[i] = alpha.mean(), alpha >= 0.5
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=cfg.jpeg_quality)
        images.append(buffer.getvalue())
    return images, bulk, masks


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
        return [((((1 - x) if self.mirror else x) + self.shift[0]) * self.side, (y + self.shift[1]) * self.side)
                for x, y in points]

    def polygon(self, role, points, fill=255):
        self.draw[role].polygon(self._xy(points), fill=fill)

    def ellipse(self, role, centre, radii, fill=255):
        (x, y), = self._xy([centre])
        rx, ry = radii[0] * self.side, radii[1] * self.side
        self.draw[role].ellipse((x - rx, y - ry, x + rx, y + ry), fill=fill)

    def line(self, role, points, width=0.012):
        self.draw[role].line(self._xy(points), fill=255, width=max(1, round(width * self.side)))

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


def render_procedural(item, size, rng) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [size, size, 3] image, float [size, size] garment alpha) of a drawn product shot."""
    category = int(item["category"])
    mirrored = bool(item["mirror"]) and category >= 4      # shoes face either way; clothes are symmetric
    sketch = _Sketch(size, item["shift"], mirrored)
    SILHOUETTES[category](sketch, item["width"], item["length"], bool(item["variant"]))
    alpha = sketch.alphas(size)
    trim_rgb = np.full(3, 0.93, np.float32) if category == 4 else np.float32(item["rgb"] * 0.5)
    image = _compose(_fill(item, size, rng), alpha["body"], alpha["trim"], trim_rgb, alpha["seams"] * alpha["body"])
    return image, np.maximum(alpha["body"], alpha["trim"])


def colourise_photo(grey, item, size, rng) -> tuple[np.ndarray, np.ndarray]:
    """A grey Fashion-MNIST photo (bright garment on black) tinted with the item's colour and pattern."""
    photo = Image.fromarray(grey).resize((size, size), Image.BICUBIC)
    intensity = np.asarray(photo, dtype=np.float32) / 255
    alpha = np.clip(intensity * 6, 0, 1)
    shading = 0.55 + 0.45 * intensity / max(intensity.max(), 1e-6)
    return _compose(_fill(item, size, rng) * shading[..., None], alpha), alpha
