"""Personalised fashion design with the trained DVBPR and GAN (paper sections III-D, IV-C and IV-D).

    python pm/main.py                    figures: per-user top-3 real vs generated (fig. 5), tailoring a prototype
                                         item for several users (fig. 6), samples beside their L1 nearest
                                         neighbours (fig. 4), and every start's trajectory per category
    python pm/main.py --table            Table IV (Markdown, CSV, JSON) over --trials random queries
    python pm/main.py --sweep-eta 0 0.1 1 10 100     Figure 3: the three metrics against eta
    python pm/main.py --tune             the best objective that each --tune-starts x --tune-steps x --tune-lrs
                                         reaches on --trials validation queries (how the defaults were chosen)

Reads the trained models from --dvbpr-run (default runs/dvbpr) and --gan-run (default runs/gan) and writes into
--out (default runs/pm). Preset `paper`: z = tanh(z') from 64 starts z ~ U(-1, 1), eta 1, the top 3 drawn by
eq. 11, and 200 Adam steps at lr 0.1 (the paper gives neither; chosen with --tune, see DEMO below). Preset
`original`: what the original code did (PM/main.py of the original repository): z optimised directly from
N(0, 0.5^2), 16 starts, 10 Adam steps at lr 0.05, all 16 kept. On the embedded demo catalogue fewer queries, starts
and steps are used (printed).
"""

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from common.catalogue.config import is_embedded
from common.checkpoint import write_json
from common.cli import parse_config, settle, stage_errors
from common.device import describe, pick_device
from common.errors import DatasetError
from common.figures import save_grid
from common.original_format import category_name
from common.runlog import run_dir
from common.seeding import seed_everything
from gan.model import sample_z
from pm.design import choose, retrieve
from pm.load import Stages
from pm.metrics import DEFAULT_INCEPTION_WEIGHTS, CategoryInception, ImageNetInception
from pm.table import draw_trials, run_trials, summarise, sweep_eta, tune, write_table


@dataclass
class PMConfig:
    preset: str = field(default="paper", metadata={"help": "paper: tanh(z') from U(-1,1) starts, softmax top-k; "
                                                           "original: z from N(0, 0.5^2), 16 starts, 10 steps, "
                                                           "lr 0.05, all kept"})
    dvbpr_run: str = field(default="runs/dvbpr", metadata={"help": "run directory of the trained DVBPR"})
    gan_run: str = field(default="runs/gan", metadata={"help": "run directory of the trained GAN"})
    out: str | None = field(default=None, metadata={"help": "output directory (default: runs/pm)"})
    dataset: str | None = field(default=None, metadata={"help": "dataset .npy or folder (default: the one DVBPR "
                                                                "was trained on)"})
    user: int | None = field(default=None, metadata={"help": "design for this user (default: one per category, "
                                                             "drawn as the original did)"})
    category: int | None = field(default=None, metadata={"help": "only this category (default: all)"})
    starts: int = field(default=64, metadata={"help": "random initial points m"})
    steps: int = field(default=200, metadata={"help": "Adam steps of preference maximisation"})
    lr: float = field(default=0.1, metadata={"help": "Adam learning rate on z'"})
    eta: float = field(default=1.0, metadata={"help": "weight of the realism loss [D_c(G_c(z)) - 1]^2"})
    init: str = field(default="uniform", metadata={"help": "starts: atanh of U(-1,1), or N(0, 0.5^2)",
                                                   "choices": ["uniform", "normal"]})
    latent: str = field(default="tanh", metadata={"help": "z = tanh(z') (paper) or z optimised directly (original)",
                                                  "choices": ["tanh", "direct"]})
    select: str = field(default="softmax", metadata={"help": "which results to return: drawn by softmax of the "
                                                             "objective (eq. 11), the best, or all",
                                                     "choices": ["softmax", "best", "all"]})
    top_k: int = field(default=3, metadata={"help": "images per user and source in the figures"})
    min_train_items: int = field(default=10, metadata={"help": "the drawn users have more training items than this"})
    prototype: int | None = field(default=None, metadata={"help": "item to tailor (default: a random item of "
                                                                  "--prototype-category)"})
    prototype_category: int = field(default=0, metadata={"help": "category of the default prototype"})
    tailor_users: int = field(default=6, metadata={"help": "users to tailor the prototype for"})
    invert_steps: int = field(default=300, metadata={"help": "Adam steps of the L1 inversion (eq. 12)"})
    invert_lr: float = field(default=0.05, metadata={"help": "Adam learning rate of the inversion"})
    neighbour_samples: int = field(default=4, metadata={"help": "samples per category beside their L1 nearest "
                                                                "neighbours"})
    table: bool = field(default=False, metadata={"help": "write Table IV instead of the figures"})
    trials: int = field(default=1000, metadata={"help": "random (user, category) queries of Table IV and the sweep"})
    tune: bool = field(default=False, metadata={"help": "instead of the table: the mean best objective of each "
                                                        "(starts, steps, lr) of the grids below on --trials "
                                                        "queries of validation users"})
    tune_starts: list[int] = field(default_factory=lambda: [8, 16, 32], metadata={"help": "starts grid of --tune"})
    tune_steps: list[int] = field(default_factory=lambda: [25, 50, 100, 200], metadata={"help": "steps grid"})
    tune_lrs: list[float] = field(default_factory=lambda: [0.03, 0.1, 0.3], metadata={"help": "lr grid"})
    sweep_eta: list[float] | None = field(default=None, metadata={"help": "eta values of the Figure 3 sweep"})
    inception_weights: str | None = field(default=None, metadata={
        "help": f"ImageNet Inception v3 weights for the Inception Score (default: {DEFAULT_INCEPTION_WEIGHTS} if "
                "present, else the in-domain score of the GAN run's category classifier)"})
    splits: int = field(default=10, metadata={"help": "parts of the Inception Score's mean and std"})
    seed: int = field(default=0, metadata={"help": "seed of the users, latent codes and samples"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})


PRESETS = {
    "paper": {},
    "original": dict(starts=16, steps=10, lr=0.05, init="normal", latent="direct", select="all"),
}
# Steps and lr, chosen by the best objective on validation queries (`--tune`), never on Table IV. On the current
# DVBPR and GAN demos (10 queries, 16 starts): after 25 / 50 / 100 / 200 steps lr 0.03 reaches 4.10 / 4.98 / 5.73 /
# 6.23, lr 0.1 5.14 / 5.89 / 6.26 / 6.53, lr 0.3 5.15 / 5.82 / 6.23 / 6.48; lr 0.1 is best at every length. On the
# embedded catalogue, which runs on a CPU, 100 steps and 20 queries keep `--table` within 5 minutes on a 2-core
# 100 GFLOP/s machine (one query's synthesis took 3.8 s at 281 GFLOP/s).
DEMO = dict(trials=20, starts=16, steps=100)


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
        kept = choose(design.objective, k, cfg.select, rng)
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
    columns = len(captions) // len(queries)
    save_grid(out / "personal_design.png", torch.cat(images), columns, captions)
    write_json(out / "personal_design.json", {"columns": f"{k} real (eq. 8), then {columns - k} generated",
                                              "select": cfg.select, "queries": record})


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
    """Fig. 4: G(z, c) for z ~ U(-1, 1) beside the catalogue image nearest in mean L1 (searched over all items)."""
    designer, n = stages.designer, cfg.neighbour_samples
    categories = range(stages.dataset.num_categories)
    samples = torch.cat([designer.generate(sample_z(n, designer.z_dim, "uniform", stages.device, rng), c)
                         for c in categories])
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


def quality_scorer(cfg, stages, out):
    path = cfg.inception_weights or (DEFAULT_INCEPTION_WEIGHTS if DEFAULT_INCEPTION_WEIGHTS.is_file() else None)
    if path is not None:
        return ImageNetInception.from_weights(path, stages.device)
    print(f"no Inception v3 weights ({DEFAULT_INCEPTION_WEIGHTS} absent; `bash download_pretrained_models.sh "
          "torchvision` fetches them): Quality is the in-domain score of the category classifier")
    return CategoryInception(stages.category_classifier(out))


def tables(stages, cfg, out):
    scorer = quality_scorer(cfg, stages, out)
    trials = draw_trials(stages.dataset, cfg.trials, np.random.default_rng(cfg.seed))
    if cfg.select == "all":
        print("--select all: Table IV takes the best 3 of the m results")
    notes = [f"{cfg.trials} trials on {stages.dataset.name}; DVBPR {stages.dvbpr_config.image_size} px, "
             f"K={stages.dvbpr_config.k}; GAN {stages.designer.image_size} px.",
             f"Synthesis: preset {cfg.preset}, {cfg.starts} starts, {cfg.steps} Adam steps at lr {cfg.lr}, "
             f"eta {cfg.eta}, latent {cfg.latent}, init {cfg.init}, select {cfg.select}.",
             "Preference and diversity: mean ± std over trials; quality: over all 3 x trials images of a source, "
             f"mean ± std over {cfg.splits} splits."]
    if cfg.table:
        rows = summarise(run_trials(stages, cfg, trials), scorer, cfg.splits)
        print(write_table(out, rows, scorer.label, notes))
    if cfg.sweep_eta:
        by_eta, retrieval = sweep_eta(stages, cfg, trials, cfg.sweep_eta, scorer, out)
        for eta, row in by_eta.items():
            print(f"eta {eta:g}: " + ", ".join(f"{m} {v[0]:.4f} ± {v[1]:.3f}" for m, v in row.items()))
        print("retrieval: " + ", ".join(f"{m} {v[0]:.4f} ± {v[1]:.3f}" for m, v in retrieval.items()))
        print(f"wrote {out / 'eta_sweep.png'}")


def tuning(stages, cfg, out):
    queries = draw_trials(stages.dataset, cfg.trials, np.random.default_rng(cfg.seed + 1), split="validation")
    rows = tune(stages, cfg, queries, cfg.tune_starts, cfg.tune_steps, cfg.tune_lrs)
    write_json(out / "tune.json", {"queries": len(queries), "split": "validation", "eta": cfg.eta, "rows": rows})
    lines = ["| starts | steps | lr | mean best objective | s per query |", "|---|---|---|---|---|"]
    lines += [f"| {r['starts']} | {r['steps']} | {r['lr']:g} | {r['objective']:.4f} | {r['seconds_per_query']} |"
              for r in rows]
    (out / "tune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


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


def run(cfg, protected):
    device = pick_device(cfg.device)
    stages = Stages(cfg.dvbpr_run, cfg.gan_run, cfg.dataset, device)
    settle(cfg, protected, "pm", DEMO, embedded=is_embedded(stages.dataset.path))
    out = run_dir(cfg.out, "pm")
    mode = "tune" if cfg.tune else "table" if cfg.table or cfg.sweep_eta else "figures"
    write_json(out / f"{mode}_config.json", asdict(cfg))
    seed_everything(cfg.seed)
    print(f"preference maximisation on {describe(device)}: DVBPR {cfg.dvbpr_run}, GAN {cfg.gan_run}, out {out}")
    {"tune": tuning, "table": tables, "figures": figures}[mode](stages, cfg, out)


def main(argv=None):
    with stage_errors("pm"):
        cfg, protected = parse_config(PMConfig, argv, PRESETS, description=__doc__.splitlines()[0])
        run(cfg, protected)


if __name__ == "__main__":
    main()
