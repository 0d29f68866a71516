"""The catalogue's items and users: visual attributes, hidden taste, interactions and their splits.

Users have a hidden taste over visual attributes that are visible in the pixels: category (shape), colour family,
pattern and bulk (the garment's share of the picture, within its category). Each user picks at least 5 distinct
items with probability proportional to popularity * exp(taste score); item popularity is lognormal, so most items
are cold (< 5 training interactions). One interaction per user is held out for validation and one for test at
random, as in the paper.
"""
import colorsys

import numpy as np

from common.original_format import CATEGORY_NAMES

# colour family -> (hue in degrees, saturation, value) of its centre
COLOUR_FAMILIES = {
    "red": (0, 0.80, 0.80), "orange": (28, 0.85, 0.95), "yellow": (52, 0.80, 0.95), "green": (125, 0.65, 0.70),
    "blue": (215, 0.75, 0.75), "purple": (275, 0.55, 0.75), "pink": (330, 0.45, 0.95), "black": (0, 0.0, 0.15),
}
PATTERNS = ("plain", "stripes", "dots", "checks")
ATTRIBUTE_NAMES = (*CATEGORY_NAMES, *COLOUR_FAMILIES, *PATTERNS, "bulk")
ATTRIBUTE_GROUPS = (("category",) * len(CATEGORY_NAMES) + ("colour",) * len(COLOUR_FAMILIES)
                    + ("pattern",) * len(PATTERNS) + ("bulk",))
MIN_INTERACTIONS = 5


def sample_items(rng, n):
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


def remove_combination(items, pattern, categories):
    """Items of `categories` drawn with `pattern` get the next pattern instead, so that no item has the combination;
    without a random draw, so that the rest of the catalogue is as it would be without it (both checked by
    config.py check_catalogue)."""
    code = PATTERNS.index(pattern)
    lacking = np.isin(items["category"], categories) & (items["pattern"] == code)
    items["pattern"][lacking] = (code + 1) % len(PATTERNS)


def item_attributes(items, bulk):
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


def sample_taste(rng, num_users):
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


def taste_weights(cfg):
    """Per attribute, the scale its taste group gets: the catalogue's taste mix."""
    by_group = {"category": cfg.category_weight, "colour": cfg.colour_weight, "pattern": cfg.pattern_weight,
                "bulk": cfg.bulk_weight}
    return np.array([by_group[group] for group in ATTRIBUTE_GROUPS], dtype=np.float32)


def sample_interactions(rng, scores, log_popularity, mean_extra, chunk=512):
    """Per user, distinct items drawn without replacement with P(i) ~ popularity_i * exp(score_ui) (Gumbel top-k)."""
    num_users, num_items = scores.shape
    counts = MIN_INTERACTIONS + rng.geometric(1 / (1 + mean_extra), num_users) - 1
    counts = np.minimum(counts, num_items // 2)
    chosen = []
    for start in range(0, num_users, chunk):
        block = scores[start:start + chunk]
        keys = block + log_popularity + rng.gumbel(size=block.shape)
        order = np.argsort(-keys, axis=1, kind="stable")
        chosen += [order[row, :counts[start + row]] for row in range(len(order))]
    return chosen


def split_interactions(rng, chosen):
    """Hold out one random interaction per user for validation and another for test; the rest is training."""
    user_train, user_validation, user_test = {}, {}, {}
    for user, item_ids in enumerate(chosen):
        shuffled = [{"productid": int(i)} for i in rng.permutation(item_ids)]
        user_validation[user], user_test[user], user_train[user] = [shuffled[0]], [shuffled[1]], shuffled[2:]
    return user_train, user_validation, user_test
