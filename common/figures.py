"""The one writer of image grids and strips: images in the networks' range [-1, 1], mapped to [0, 1] with a fixed
range (the original's scipy.misc.imsave min-max rescaled each grid instead), on white padding, with an optional
caption under every tile. The GAN's sample grids, preference maximisation's figures and recommend's strips use it."""
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import save_image

from common.errors import RunError

MIN_CAPTIONED_TILE = 96   # captioned tiles are upscaled (nearest) to at least this many pixels so that captions fit
CAPTION_HEIGHT = 14
CAPTIONED_PADDING = 4     # pixels between captioned tiles (2 between plain ones)


def to_display(images):
    """[-1, 1] -> [0, 1] on the CPU."""
    return ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)


def captioned(images, captions):
    """Images [n, 3, S, S] in [-1, 1] -> tiles [n, 3, T + caption, T] in [0, 1], each caption drawn under its tile."""
    tile = max(images.shape[-1], MIN_CAPTIONED_TILE)
    tiles, font = to_display(images), ImageFont.load_default(size=11)
    if tiles.shape[-1] != tile:
        tiles = F.interpolate(tiles, size=(tile, tile), mode="nearest")
    drawn = []
    for image, caption in zip(tiles, captions):
        canvas = Image.new("RGB", (tile, tile + CAPTION_HEIGHT), "white")
        canvas.paste(to_pil_image(image), (0, 0))
        ImageDraw.Draw(canvas).text((2, tile + 1), caption, fill="black", font=font)
        drawn.append(pil_to_tensor(canvas).float() / 255)
    return torch.stack(drawn)


def save_grid(path, images, columns, captions=None):
    """A PNG of `images` [n, 3, S, S] in [-1, 1], `columns` to a row, with `captions` under the tiles if given;
    RunError naming the file when its folder cannot be made or written."""
    tiles = to_display(images) if captions is None else captioned(images, captions)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(tiles, path, nrow=columns, padding=2 if captions is None else CAPTIONED_PADDING, pad_value=1)
    except OSError as exc:
        raise RunError(f"cannot write {path}: {exc.strerror or exc} (give another --out)") from exc
