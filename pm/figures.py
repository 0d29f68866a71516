"""PM's figures (paper section IV-D): per-user top-k real vs generated (fig. 5), a prototype tailored for several
users (fig. 6), samples beside their L1 nearest neighbours (fig. 4), every start's trajectory, and the line panels
of the eta sweep (fig. 3) drawn with PIL (the image grids are common/figures.py's).
"""
import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from common.checkpoint import write_json
from common.errors import DatasetError
from common.figures import save_grid
from common.original_format import category_name
from pm.design import choose, retrieve

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e")


def _ticks(low, high, count=4):
    return [low + (high - low) * k / (count - 1) for k in range(count)]


def line_panel(title, x_label, x_values, series, size=(340, 260)):
    """One panel: each of `series` {name: [y per x]} as a line over evenly spaced categorical x positions."""
    width, height = size
    left, right, top, bottom = 64, 12, 24, 48
    values = [y for ys in series.values() for y in ys if math.isfinite(y)]
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or abs(high) * 0.1 or 1.0
    low, high = low - pad, high + pad
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=11)
    x_of = lambda k: left + (width - left - right) * (k + 0.5) / len(x_values)
    y_of = lambda y: top + (height - top - bottom) * (high - y) / (high - low)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((left, 5), title, fill="black", font=font)
    for tick in _ticks(low, high):
        draw.line([left - 4, y_of(tick), left, y_of(tick)], fill="black")
        draw.text((left - 6, y_of(tick)), f"{tick:.3g}", fill="black", font=font, anchor="rm")
    for k, label in enumerate(x_values):
        draw.line([x_of(k), height - bottom, x_of(k), height - bottom + 4], fill="black")
        draw.text((x_of(k), height - bottom + 6), label, fill="black", font=font, anchor="mt")
    draw.text((width - right, height - 12), x_label, fill="black", font=font, anchor="rm")
    legend_x = left
    for colour, (name, ys) in zip(COLOURS, series.items()):
        points = [(x_of(k), y_of(y)) for k, y in enumerate(ys)]
        draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.line([legend_x, height - 12, legend_x + 16, height - 12], fill=colour, width=2)
        draw.text((legend_x + 20, height - 12), name, fill=colour, font=font, anchor="lm")
        legend_x += 30 + int(draw.textlength(name, font=font))
    return image


def save_panels(path, panels):
    """Panels (PIL images of one size) side by side in one PNG."""
    width, height = panels[0].size
    figure = Image.new("RGB", (width * len(panels), height), "white")
    for k, panel in enumerate(panels):
        figure.paste(panel, (k * width, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.save(path)


def pick_user(dataset, category, rng, min_train_items):
    """As PM/main.py of the original repository: users drawn uniformly until one has more than `min_train_items`
    training items and a test item of `category`. Where no such user exists the threshold is relaxed to the largest
    that one meets."""
    train_sizes = np.array([len(items) for items in dataset.user_train])
    candidates = np.flatnonzero(dataset.item_category[dataset.user_test] == category)
    if len(candidates) == 0:
        raise DatasetError(f"no user's test item is in category {category}")
    threshold = min(min_train_items, int(train_sizes[candidates].max()) - 1)
    if threshold < min_train_items:
        print(f"category {category}: no user with a test item there has more than {min_train_items} training items;"
              f" drawing among those with more than {threshold}")
    return int(rng.choice(candidates[train_sizes[candidates] > threshold]))


def snapshot_steps(steps, count=11):
    """`count` evenly spaced steps from 0 to `steps` (the original showed the start and each of its 10 steps)."""
    return sorted({round(k * steps / (count - 1)) for k in range(count)})


def personal_design(stages, cfg, queries, out, rng):
    """Fig. 5: per (user, category) the top-k real items (eq. 8) and top-k generated images (eq. 10, 11), scores
    under the tiles; and the original's picture of every start's trajectory (starts_<c>_user<u>.png)."""
    designer, k = stages.designer, cfg.top_k
    shown = snapshot_steps(cfg.steps)
    images, captions, record = [], [], []
    for user, category in tqdm(queries, desc="personal design", unit="user"):
        items, real_scores = retrieve(designer.theta[user], stages.item_embeddings, stages.items_of(category), k)
        design = designer.synthesise(user, category, cfg.starts, cfg.steps, cfg.lr, cfg.eta, cfg.init, cfg.latent,
                                     rng, record=lambda step: step in shown)
        passes = designer.passes(design.images, category)
        kept = choose(design.objective, k, cfg.select, rng, passes)
        kept = kept[design.objective[kept].argsort(descending=True)]
        generated = design.pick(kept)
        images += [stages.images(items).cpu(), generated.images.cpu()]
        captions += [f"real x={s:.2f}" for s in real_scores.tolist()]
        captions += [f"gen x={s:.2f}" for s in generated.preference.tolist()]
        trajectory = torch.stack([snapshot.images[:16] for snapshot in design.history], dim=1)
        save_grid(out / f"starts_{category}_user{user}.png", trajectory.flatten(0, 1), len(shown))
        record.append({"user": user, "category": category,
                       "category_name": category_name(category, stages.dataset.num_categories),
                       "real": [{"item": i, "preference": s} for i, s in zip(items.tolist(), real_scores.tolist())],
                       "generated": [{"start": int(s), "preference": p, "objective": o, "realism_loss": r}
                                     for s, p, o, r in zip(kept.tolist(), generated.preference.tolist(),
                                                           generated.objective.tolist(), generated.realism.tolist())],
                       "starts": {"steps": shown, "preference": [s.preference[:16].tolist() for s in design.history],
                                  "objective": [s.objective[:16].tolist() for s in design.history]}})
        if passes is not None:   # which shown designs reached --min-silhouette (the rest made up the number)
            record[-1]["passed_screen"] = passes[kept].tolist()
        if designer.support is not None:
            record[-1]["support"] = support_distances(designer, stages.item_embeddings[items], generated.images,
                                                      category)
    columns = len(captions) // len(queries)
    save_grid(out / "personal_design.png", torch.cat(images), columns, captions)
    write_json(out / "personal_design.json", {"columns": f"{k} real (eq. 8), then {columns - k} generated",
                                              "select": cfg.select, "queries": record})


@torch.no_grad()
def support_distances(designer, real_embeddings, generated_images, category):
    """The distances d_c in Phi's space of the real and generated images of one row from the real items of c, and
    the radius past which the support penalty starts (pm/design.py's EmbeddingSupport)."""
    support = designer.support
    return {"radius": support.radius(category),
            "real": support.distance(real_embeddings, category).tolist(),
            "generated": support.distance(designer.phi(generated_images), category).tolist()}


def tailoring(stages, cfg, users, out, rng):
    """Fig. 6: a prototype item inverted into the GAN (eq. 12), then tailored to each user (eq. 10); each row is
    the prototype, its L1 approximation and snapshots of the optimisation, every step's scores in the JSON."""
    designer, draws = stages.designer, np.random.default_rng(cfg.seed)
    if cfg.prototype is None:
        item = int(draws.choice(stages.items_of(cfg.prototype_category).cpu().numpy()))
    else:
        item = cfg.prototype
    category = int(stages.dataset.item_category[item])
    query = stages.images(torch.tensor([item]))
    designs, errors = designer.tailor(query, category, users, cfg.steps, cfg.lr, cfg.eta, cfg.invert_steps,
                                      cfg.invert_lr, cfg.latent, rng)
    shown = snapshot_steps(cfg.steps, count=8)
    images, captions, record = [], [], []
    for user, design in zip(users, designs):
        prototype_score = (stages.item_embeddings[item] @ designer.theta[user]).item()
        images += [query.cpu()] + [design.history[step].images for step in shown]
        captions += [f"item x={prototype_score:.2f}"] + [f"{step}: x={design.history[step].preference[0]:.2f}"
                                                        for step in shown]
        record.append({"user": user, "prototype_preference": prototype_score,
                       "preference": [s.preference[0].item() for s in design.history],
                       "objective": [s.objective[0].item() for s in design.history]})
    save_grid(out / "tailoring.png", torch.cat(images), len(shown) + 1, captions)
    write_json(out / "tailoring.json", {"prototype": item, "category": category,
                                        "columns": "the prototype, then its optimisation at steps " + str(shown)
                                                   + " (step 0 = the L1 approximation, eq. 12)",
                                        "inversion_l1": errors.tolist(), "users": record})


@torch.no_grad()
def nearest_neighbours(stages, cfg, out, rng):
    """Fig. 4: G(z, c) for z of the generator's prior beside the catalogue image nearest in mean L1 (searched over
    all items)."""
    designer, n = stages.designer, cfg.neighbour_samples
    categories = range(stages.dataset.num_categories)
    samples = torch.cat([designer.generate(designer.sample_z(n, rng), c) for c in categories])
    best = torch.full((len(samples),), float("inf"), device=stages.device)
    nearest = torch.zeros(len(samples), dtype=torch.long, device=stages.device)
    for start in range(0, len(stages.images), 256):
        ids = torch.arange(start, min(start + 256, len(stages.images)), device=stages.device)
        distance = (samples[:, None] - stages.images(ids)[None]).abs().mean(dim=(2, 3, 4))
        value, index = distance.min(dim=1)
        better = value < best
        best[better], nearest[better] = value[better], ids[index[better]]
    images = torch.stack([samples.cpu(), stages.images(nearest).cpu()], dim=1).flatten(0, 1)
    labels = [c for c in categories for _ in range(n)]
    captions = [text for c, i, d in zip(labels, nearest.tolist(), best.tolist())
                for text in (f"G(z, {c})", f"#{i} L1={d:.2f}")]
    save_grid(out / "neighbours.png", images, 2 * n, captions)
    write_json(out / "neighbours.json", {"columns": "pairs: a sample G(z, c), its L1 nearest catalogue item",
                                         "rows": [category_name(c, stages.dataset.num_categories) for c in categories],
                                         "nearest": nearest.tolist(), "mean_l1": best.tolist()})


def figures(stages, cfg, out):
    draws = np.random.default_rng(cfg.seed)
    rng = torch.Generator(device=stages.device).manual_seed(cfg.seed)
    dataset = stages.dataset
    categories = [cfg.category] if cfg.category is not None else range(dataset.num_categories)
    queries = [(cfg.user if cfg.user is not None else pick_user(dataset, c, draws, cfg.min_train_items), c)
               for c in categories]
    personal_design(stages, cfg, queries, out, rng)
    users = list(draws.choice(dataset.usernum, size=cfg.tailor_users, replace=False))
    if cfg.user is not None:
        users = [cfg.user] + [u for u in users if u != cfg.user][:cfg.tailor_users - 1]
    tailoring(stages, cfg, [int(u) for u in users], out, rng)
    nearest_neighbours(stages, cfg, out, rng)
    print(f"wrote personal_design, tailoring, neighbours (.png, .json) and starts_<c>_user<u>.png to {out}")
