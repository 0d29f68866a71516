"""Table IV of the paper: top-3 images from four sources for random (user, category) queries, and the eta sweep
of Figure 3.

A trial draws a user u uniformly and sets c to the category of u's test item. Each source returns three images:
    real        three random real items of c                    (X_c)
    generated   G(z, c) for three z of G's prior (U(-1, 1))     (G(., c))
    retrieval   the top 3 of eq. 8                              (delta(u, c))
    synthesis   3 of the m results of eq. 10, chosen by eq. 11  (delta-hat(u, c))
Preference score: theta_u . Phi(image) (eq. 6), averaged over the three, then mean and std over trials. Diversity:
1 - mean pairwise SSIM of the three, mean and std over trials. Quality: the Inception Score of all the source's
images over all trials (3 N of them), mean and std over `splits` parts (Salimans et al.).
The tuning of PM's starts, steps and lr (--tune) scores the same synthesis on validation queries instead.
"""
import csv
import time

import numpy as np
import torch
from tqdm import tqdm

from common.checkpoint import write_json
from pm.design import choose, retrieve
from pm.figures import line_panel, save_panels
from pm.metrics import (
    DEFAULT_INCEPTION_WEIGHTS,
    CategoryInception,
    ImageNetInception,
    inception_score,
    ssim_diversity,
)

SOURCES = {
    "real": "X_c (random real items)",
    "generated": "G(., c) (random z of the prior)",
    "retrieval": "delta(u, c), retrieval (eq. 8)",
    "synthesis": "delta-hat(u, c), synthesis (eq. 9)",
}
# Table IV of the paper (1000 trials, AmazonFashion, 128 px GAN, ImageNet Inception): (mean, std) per metric
PAPER_TABLE_IV = {
    "real": {"preference": (-1.9547, 3.8), "quality": (6.8685, 0.36), "diversity": (0.5585, 0.09)},
    "generated": {"preference": (-1.9392, 3.7), "quality": (6.8121, 0.37), "diversity": (0.5589, 0.09)},
    "retrieval": {"preference": (7.1876, 3.2), "quality": (7.6492, 0.27), "diversity": (0.5393, 0.11)},
    "synthesis": {"preference": (7.6760, 4.1), "quality": (7.6524, 0.24), "diversity": (0.5265, 0.12)},
}
METRICS = ("preference", "quality", "diversity")
TOP = 3


def draw_trials(dataset, n, rng, split="test"):
    """n (user, category) queries: u uniform over the users whose held-out item of `split` (test for Table IV,
    validation for choosing PM's settings) has a category, c that category."""
    held_out = dataset.user_test if split == "test" else dataset.user_validation
    held_out_category = dataset.item_category[held_out]
    users = np.flatnonzero(held_out_category >= 0)
    if len(users) == 0:
        raise ValueError(f"no {split} item of {dataset.name} has a category; Table IV needs them")
    chosen = rng.choice(users, size=n)
    return [(int(u), int(held_out_category[u])) for u in chosen]


def tune(stages, cfg, queries, starts_grid, steps_grid, lr_grid):
    """The mean over `queries` of the best objective (eq. 9) that synthesis reaches with each (starts, steps, lr),
    and its seconds per query. Each (starts, lr) runs max(steps) steps once and the shorter lengths are read off
    its trajectory, so their seconds are that run's, scaled by the share of its steps. A list of dicts."""
    rows = []
    for starts in starts_grid:
        for lr in lr_grid:
            rng = torch.Generator(device=stages.device).manual_seed(cfg.seed)
            best = {steps: [] for steps in steps_grid}
            started = time.time()
            for user, category in tqdm(queries, desc=f"tuning: {starts} starts, lr {lr:g}", unit="query"):
                design = stages.designer.synthesise(user, category, starts, max(steps_grid), lr, cfg.eta, cfg.init,
                                                    cfg.latent, rng, record=lambda step: step in best)
                for snapshot in design.history:
                    best[snapshot.step].append(snapshot.objective.max().item())
            seconds = (time.time() - started) / len(queries)
            rows += [dict(starts=starts, steps=steps, lr=lr, objective=float(np.mean(values)),
                          seconds_per_query=round(seconds * steps / max(steps_grid), 3))
                     for steps, values in best.items()]
    return rows


class Sources:
    """The four sources of Table IV for one (user, category): (images [3, 3, S, S], preference scores [3])."""

    def __init__(self, stages, cfg, rng):
        self.stages, self.cfg, self.rng = stages, cfg, rng
        self.select = "best" if cfg.select == "all" else cfg.select

    def real(self, user, category):
        items = self.stages.items_of(category)
        pick = items[torch.randperm(len(items), generator=self.rng, device=items.device)[:TOP]]
        return self.stages.images(pick), self.stages.item_embeddings[pick] @ self.stages.designer.theta[user]

    @torch.no_grad()
    def generated(self, user, category):
        designer = self.stages.designer
        images = designer.generate(designer.sample_z(TOP, self.rng), category)
        return images, designer.preference(user, images)

    def retrieval(self, user, category):
        items, scores = retrieve(self.stages.designer.theta[user], self.stages.item_embeddings,
                                 self.stages.items_of(category), TOP)
        return self.stages.images(items), scores

    def synthesis(self, user, category, eta=None):
        cfg = self.cfg
        design = self.stages.designer.synthesise(user, category, cfg.starts, cfg.steps, cfg.lr,
                                                 cfg.eta if eta is None else eta, cfg.init, cfg.latent, self.rng)
        kept = choose(design.objective, TOP, self.select, self.rng)
        return design.images[kept], design.preference[kept]


def run_trials(stages, cfg, trials, sources=tuple(SOURCES), eta=None, desc="Table IV trials"):
    """{source: {"images": [N, 3, 3, S, S] on the CPU, "preference": [N], "diversity": [N]}} over the trials."""
    rng = torch.Generator(device=stages.device).manual_seed(cfg.seed)
    pick = Sources(stages, cfg, rng)
    results = {source: {"images": [], "preference": [], "diversity": []} for source in sources}
    for user, category in tqdm(trials, desc=desc, unit="trial"):
        for source in sources:
            if source == "synthesis":
                images, scores = pick.synthesis(user, category, eta)
            else:
                images, scores = getattr(pick, source)(user, category)
            results[source]["images"].append(images.detach().cpu())
            results[source]["preference"].append(scores.mean().item())
            results[source]["diversity"].append(ssim_diversity(images))
    return {source: {"images": torch.stack(r["images"]), "preference": np.array(r["preference"]),
                     "diversity": np.array(r["diversity"])} for source, r in results.items()}


def summarise(results, scorer, splits):
    """{source: {metric: (mean, std)}}."""
    rows = {}
    for source, r in results.items():
        probs = scorer.predict_proba(r["images"].flatten(0, 1))
        rows[source] = {"preference": (float(r["preference"].mean()), float(r["preference"].std())),
                        "quality": inception_score(probs, min(splits, len(probs))),
                        "diversity": (float(r["diversity"].mean()), float(r["diversity"].std()))}
    return rows


def mean_std(pair):
    return f"{pair[0]:.4f} ± {pair[1]:.3f}"


def paper_mean_std(pair):
    return f"{pair[0]:.4f} ± {pair[1]:g}"  # the paper gives the std to one or two digits


def write_table(out, rows, quality_label, notes):
    """table_iv.md, table_iv.csv and table_iv.json in `out`, the paper's numbers beside ours."""
    lines = ["# Table IV: top-3 images for a given user and category", "", *notes, "",
             f"Quality: {quality_label}.", "",
             "| Item source | Preference score | Quality | Diversity | Paper: preference | Paper: quality | "
             "Paper: diversity |",
             "|---|---|---|---|---|---|---|"]
    for source, row in rows.items():
        paper = PAPER_TABLE_IV[source]
        lines.append(f"| {SOURCES[source]} | " + " | ".join(mean_std(row[m]) for m in METRICS) + " | "
                     + " | ".join(paper_mean_std(paper[m]) for m in METRICS) + " |")
    (out / "table_iv.md").write_text("\n".join(lines) + "\n")
    with open(out / "table_iv.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source"] + [f"{who}{m}_{stat}" for who in ("", "paper_") for m in METRICS
                                      for stat in ("mean", "std")])
        for source, row in rows.items():
            writer.writerow([source] + [v for m in METRICS for v in row[m]]
                            + [v for m in METRICS for v in PAPER_TABLE_IV[source][m]])
    write_json(out / "table_iv.json", {"notes": notes, "quality": quality_label,
                                       "ours": {s: {m: list(row[m]) for m in METRICS} for s, row in rows.items()},
                                       "paper": {s: {m: list(v) for m, v in p.items()}
                                                 for s, p in PAPER_TABLE_IV.items()}})
    return "\n".join(lines)


def sweep_eta(stages, cfg, trials, etas, scorer, out):
    """Figure 3: synthesis over the same trials for each eta; eta_sweep.png (three panels) and eta_sweep.json.
    Retrieval, which does not depend on eta, is drawn as the reference line."""
    reference = summarise(run_trials(stages, cfg, trials, ("retrieval",), desc="retrieval"), scorer, cfg.splits)
    by_eta = {}
    for eta in etas:
        results = run_trials(stages, cfg, trials, ("synthesis",), eta=eta, desc=f"synthesis, eta={eta:g}")
        by_eta[eta] = summarise(results, scorer, cfg.splits)["synthesis"]
    labels = [f"{eta:g}" for eta in etas]
    titles = {"preference": "preference score", "quality": "quality (IS)", "diversity": "diversity (1 - SSIM)"}
    panels = [line_panel(titles[m], "eta", labels,
                         {"synthesis": [by_eta[eta][m][0] for eta in etas],
                          "retrieval": [reference["retrieval"][m][0]] * len(etas)})
              for m in METRICS]
    save_panels(out / "eta_sweep.png", panels)
    write_json(out / "eta_sweep.json", {"quality": scorer.label, "trials": len(trials),
                                        "synthesis": {f"{eta:g}": {m: list(v) for m, v in row.items()}
                                                      for eta, row in by_eta.items()},
                                        "retrieval": {m: list(v) for m, v in reference["retrieval"].items()}})
    return by_eta, reference["retrieval"]


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
