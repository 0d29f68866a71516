"""The embedded default catalogue: a small synthetic fashion dataset in the original .npy format.

When the real AmazonFashion file is absent, `generate.ensure_embedded_catalogue` generates (once, deterministically
from a seed) a catalogue shaped like it, so that every stage runs on a fresh machine with no downloads:

- 6 categories in the original order (common/original_format.py: CATEGORY_NAMES); `c` is a one-hot list.
- Item images are JPEG product shots on a white background, from one of two sources (render.py):
  "procedural": PIL-drawn silhouettes with varied proportions, a colour, a pattern and fabric noise; needs nothing.
  "fashion-mnist": the grey Fashion-MNIST product photos (fashion_mnist.py), tinted with the item's colour and
      pattern on the garment pixels.
  "auto" picks fashion-mnist when its files are found, else procedural. The source is part of the file name
  (config.py).
- Users have a hidden taste over visual attributes that are visible in the pixels (taste.py); one interaction per
  user is held out for validation and one for test at random, as in the paper.
The hidden truth is saved beside the catalogue as <name>.truth.npz (truth.py).

Modules, each importing only those listed before it: fashion_mnist, taste, render, config, truth, generate.
"""
