"""Choosing PM's starts, steps and lr on validation queries (--tune), never on Table IV: each setting's objective,
the judges' scores of the designs it returns and their KID beside the generator's random samples', and the setting
with the highest objective (and by each judge) whose KID stays within a limit; with --tune-guidance the same for
preference guidance's scale. `--steps-from-tune` takes the choice into Table IV and the figures (pm/stage.py).
"""
import time
from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm

from common.checkpoint import write_json
from pm.design import choose
from pm.fidelity import CLASSIFIER_EXTRACTOR, Fidelity, classifier_extractor
from pm.table import SOURCES, TOP, Measures, draw_trials, recommenders, run_trials

# --tune's scores of the designs returned, where they can be measured; the judges' also choose a setting each
TUNE_SCORES = {"preference": "preference returned", "preference_percentile": "optimised percentile",
               "judge_percentile": "judge percentile", "true_preference": "true preference",
               "realistic": "realistic"}
JUDGED = ("judge_percentile", "true_preference")
# --tune's limits on the designs' KID: the generator's own, and that plus the shift from random real items to
# retrieval's (what choosing by a user's taste alone does to the KID of real items)
KID_LIMITS = {"random": "the random samples'",
              "shifted": "the random samples' + (retrieval's - random real items')"}


def tune(stages, cfg, queries, measures, starts_grid, steps_grid, lr_grid):
    """For each (starts, steps, lr): the mean over `queries` of the best objective (eq. 9) that synthesis reaches,
    the mean scores of the 3 results it returns by the optimised DVBPR and by the judges of `measures` (judged),
    their KID (category classifier) against the real items of their categories, and its seconds per query. Each
    (starts, lr) runs max(steps) steps once and the shorter lengths are read off its trajectory, so their seconds
    are that run's, scaled by the share of its steps (a grid of 0 steps alone: the starts' own seconds). A list of
    dicts."""
    select = "best" if cfg.select == "all" else cfg.select
    longest, rows = max(steps_grid), []
    for starts in starts_grid:
        for lr in lr_grid:
            rng = torch.Generator(device=stages.device).manual_seed(cfg.seed)
            # The selection draws from its own stream, so measuring what is returned leaves the starts as they were.
            selection_rng = torch.Generator(device=stages.device).manual_seed(cfg.seed + 1)
            best, returned = ({steps: [] for steps in steps_grid} for _ in range(2))
            started = time.time()
            for user, category in tqdm(queries, desc=f"tuning: {starts} starts, lr {lr:g}", unit="query"):
                design = stages.designer.synthesise(user, category, starts, longest, lr, cfg.eta, cfg.init,
                                                    cfg.latent, rng, record=lambda step: step in best)
                for snapshot in design.history:
                    best[snapshot.step].append(snapshot.objective.max().item())
                    passes = stages.designer.passes(snapshot.images.to(stages.device), category)
                    kept = choose(snapshot.objective.to(stages.device), TOP, select, selection_rng, passes).cpu()
                    returned[snapshot.step].append((snapshot.images[kept], snapshot.preference[kept]))
            seconds = (time.time() - started) / len(queries)
            for steps, values in best.items():
                images, preference = map(torch.stack, zip(*returned[steps]))
                result = dict(images=images, scores=preference, items=torch.full(preference.shape, -1))
                rows.append(dict(starts=starts, steps=steps, lr=lr, objective=float(np.mean(values)),
                                 **judged(measures, result, queries),
                                 kid=classifier_kid(measures.fidelity, result, queries),
                                 seconds_per_query=round(seconds * (steps / longest if longest else 1), 3)))
    return rows


def judged(measures, result, queries):
    """{trial metric: mean over `queries`} of one source's result (run_trials' layout): the optimised score, its
    percentile and the judges' where there are some."""
    return {metric: float(values.mean()) for metric, values in measures.per_trial(result, queries).items()}


def tuned_setting(tuned, starts, lr):
    """(starts, steps, lr) that a tuning (tune.json's content) chose by the objective within the random samples'
    KID; where no setting stayed within, the starts alone: (`starts`, 0, `lr`)."""
    choice = tuned["on_manifold"]["random"]
    return (choice["starts"], choice["steps"], choice["lr"]) if choice else (starts, 0, lr)


def on_manifold(rows, kid_limit, score="objective"):
    """The row of `tune` (or `tune_guidance`, by "preference") with the highest `score` among those whose KID is
    at most `kid_limit`; None where no row is."""
    close = [row for row in rows if row["kid"] <= kid_limit]
    return max(close, key=lambda row: row[score]) if close else None


def tune_guidance(stages, cfg, queries, measures, scales):
    """For each guidance scale: the mean scores of the guided source's samples over `queries` (judged), their KID
    (category classifier) and its seconds per query. A list of dicts."""
    rows = []
    for scale in scales:
        started = time.time()
        result = run_trials(stages, replace(cfg, guidance=scale), queries, ("guided",),
                            desc=f"tuning: guidance {scale:g}")["guided"]
        rows.append(dict(guidance=scale, **judged(measures, result, queries),
                         kid=classifier_kid(measures.fidelity, result, queries),
                         seconds_per_query=round((time.time() - started) / len(queries), 3)))
    return rows


def classifier_kid(fidelity, result, queries):
    """The KID over the category classifier of one source's images of run_trials over `queries`."""
    categories = torch.tensor([category for _, category in queries]).repeat_interleave(result["images"].shape[1])
    return fidelity(result["images"].flatten(0, 1), categories)[CLASSIFIER_EXTRACTOR]["kid"]


def manifold_lines(rows, limits, setting, score="objective"):
    """({limit name: chosen row}, Markdown lines): on_manifold by `score` under each of `limits`."""
    chosen = {name: on_manifold(rows, limit, score) for name, limit in limits.items()}
    return chosen, [f"Highest {TUNE_SCORES.get(score, 'objective')} with KID at most {KID_LIMITS[name]} "
                    f"({limits[name]:.3f}): " + (setting(row) if row else "none") for name, row in chosen.items()]


def score_cells(row, scores):
    return " | ".join(f"{row[score]:.{2 if score.endswith('percentile') else 4}f}" for score in scores)


def choices(rows, limits, setting, scores, by="objective"):
    """({score: {limit name: chosen row}}, Markdown lines): the setting chosen by `by` and by each judge's score."""
    chosen, lines = {}, [""]
    for score in [by, *(s for s in scores if s in JUDGED)]:
        chosen[score], chosen_lines = manifold_lines(rows, limits, setting, score)
        lines += chosen_lines
    return chosen, lines


def tuning(stages, cfg, out):
    """--tune: the grid on validation queries, and the setting chosen on the generator's manifold (on_manifold), by
    the objective and by each judge; with --tune-guidance the same for the guided source's scale."""
    queries = draw_trials(stages.dataset, cfg.trials, np.random.default_rng(cfg.seed + 1), split="validation")
    fidelity = Fidelity({CLASSIFIER_EXTRACTOR: classifier_extractor(stages.category_classifier(out), stages.device)},
                        stages.images, stages.dataset.item_category, cfg.seed)
    measures = Measures(stages, None, fidelity, *recommenders(stages, cfg))
    scores = [score for score in TUNE_SCORES if score in measures.trial_metrics()]
    references = {source: dict(**judged(measures, r, queries), kid=classifier_kid(fidelity, r, queries))
                  for source, r in run_trials(stages, cfg, queries, ("real", "generated", "retrieval"),
                                              desc="reference sources").items()}
    kid = {source: reference["kid"] for source, reference in references.items()}
    limits = {"random": kid["generated"], "shifted": kid["generated"] + kid["retrieval"] - kid["real"]}
    rows = tune(stages, cfg, queries, measures, cfg.tune_starts, cfg.tune_steps, cfg.tune_lrs)
    chosen, chosen_lines = choices(rows, limits, lambda r: f"{r['starts']} starts, {r['steps']} steps, "
                                                           f"lr {r['lr']:g}", scores)
    result = {"queries": len(queries), "split": "validation", "eta": cfg.eta, "latent": cfg.latent,
              "init": cfg.init, "judge_run": cfg.judge_run, "kid": kid, "kid_limits": limits,
              "references": references, "rows": rows, "on_manifold": chosen.pop("objective"),
              "judged_on_manifold": chosen}
    header = " | ".join(TUNE_SCORES[score] for score in scores)
    lines = [f"{len(queries)} validation queries, 3 images per query of each source: the mean scores of the 3 "
             "(percentiles among the real items of the category) and their KID (category classifier) against the "
             "real items of each category.", "",
             f"| source | {header} | KID |", "|---|" + "---|" * (len(scores) + 1)]
    lines += [f"| {SOURCES[source]} | {score_cells(r, scores)} | {r['kid']:.3f} |" for source, r in references.items()]
    lines += ["", f"| starts | steps | lr | mean best objective | {header} | KID | s per query |",
              "|---|---|---|---|" + "---|" * (len(scores) + 2)]
    lines += [f"| {r['starts']} | {r['steps']} | {r['lr']:g} | {r['objective']:.4f} | {score_cells(r, scores)} | "
              f"{r['kid']:.3f} | {r['seconds_per_query']} |" for r in rows]
    lines += chosen_lines
    if cfg.tune_guidance:
        guided = tune_guidance(stages, cfg, queries, measures, cfg.tune_guidance)
        result["guided_rows"] = guided
        chosen, chosen_lines = choices(guided, limits, lambda r: f"guidance {r['guidance']:g}", scores,
                                       by="preference")
        result["guided_on_manifold"], result["guided_judged_on_manifold"] = chosen.pop("preference"), chosen
        lines += ["", f"| guidance | {header} | KID | s per query |", "|---|" + "---|" * (len(scores) + 2)]
        lines += [f"| {r['guidance']:g} | {score_cells(r, scores)} | {r['kid']:.3f} | {r['seconds_per_query']} |"
                  for r in guided]
        lines += chosen_lines
    write_json(out / "tune.json", result)
    (out / "tune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
