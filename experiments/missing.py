"""Designing what the catalogue lacks, the paper's motivation ("suggest styles and aid the design of new products",
Sec. I): a catalogue in which no item of some categories has some pattern (no striped shoes: CatalogueConfig's
missing_pattern and missing_categories), while some users love that pattern and those categories. Retrieval
(eq. 8) cannot reach the combination; does synthesis (eq. 9) make it for those users, and would they like it?

The queries: users whose hidden taste ranks the missing pattern first among the patterns, each in the missing
category its taste prefers. Every image of the three sources (random samples of the generator, retrieval,
synthesis) is read by the attribute reader (pm/judges.py): the share read as the missing combination (the reader's
most likely category one of the missing ones and its most likely pattern the missing one; on retrieval's real
items, which never have it, this is the reader's false-positive rate), and its true preference under the
catalogue's hidden taste, synthesis against retrieval paired over the queries.
"""
import numpy as np
import torch

from common.catalogue.reader import SLICES
from common.catalogue.taste import PATTERNS
from common.catalogue.truth import load_truth
from pm.judges import open_true_taste, paired_test
from pm.table import run_trials

SOURCES = ("generated", "retrieval", "synthesis")
SOURCE_NAMES = {"generated": "G(., c) (random z of the prior)", "retrieval": "delta(u, c), retrieval (eq. 8)",
                "synthesis": "delta-hat(u, c), synthesis (eq. 9)"}


def lovers(truth, pattern, categories, n, rng):
    """(n (user, category) queries, how many users love `pattern`): u uniform over the users whose hidden taste ranks
    `pattern` first among the patterns, c the one of `categories` that u's taste prefers."""
    taste = truth.user_taste
    users = np.flatnonzero(taste[:, SLICES["pattern"]].argmax(1) == PATTERNS.index(pattern))
    if len(users) == 0:
        raise ValueError(f"no user of the catalogue loves {pattern} most")
    category_taste = taste[:, SLICES["category"]][:, categories]
    return [(int(u), int(categories[category_taste[u].argmax()])) for u in rng.choice(users, size=n)], len(users)


def reads_combination(attributes, pattern, categories):
    """[n] whether the reader's most likely category is one of `categories` and its most likely pattern `pattern`."""
    category = attributes[:, SLICES["category"]].argmax(1)
    return torch.isin(category, torch.tensor(categories)) & \
        (attributes[:, SLICES["pattern"]].argmax(1) == PATTERNS.index(pattern))


def missing_combination(stages, cfg, pattern, categories):
    """The experiment's result: {"queries", "lovers", "items_with_combination", "reader", "sources": {source:
    {metric: (mean, std)}}, "paired": {metric: paired_test}}."""
    truth = load_truth(stages.dataset.path)
    taste = open_true_taste(stages)
    trials, num_lovers = lovers(truth, pattern, categories, cfg.trials, np.random.default_rng(cfg.seed))
    results = run_trials(stages, cfg, trials, SOURCES, desc="missing-combination queries")
    per_trial = {}
    for source, result in results.items():
        reads = [taste.read(images) for images in result["images"]]
        per_trial[source] = dict(
            combination=np.array([reads_combination(read, pattern, categories).float().mean().item()
                                  for read in reads]),
            true_preference=np.array([(read @ taste.taste[user]).mean().item() for read, (user, _) in
                                      zip(reads, trials)]),
            optimised_score=result["scores"].mean(1).numpy())
    in_catalogue = np.isin(truth.item_category, categories) & (truth.item_pattern == PATTERNS.index(pattern))
    return dict(pattern=pattern, categories=list(categories), queries=len(trials), lovers=num_lovers,
                items_with_combination=int(in_catalogue.sum()), reader=taste.metrics,
                sources={source: {metric: (float(v.mean()), float(v.std())) for metric, v in values.items()}
                         for source, values in per_trial.items()},
                paired={metric: paired_test(per_trial["synthesis"][metric], per_trial["retrieval"][metric])
                        for metric in ("combination", "true_preference", "optimised_score")})


def missing_markdown(rows):
    lines = []
    for name, row in rows.items():
        lines += [f"### {name}: no item of categories {row['categories']} is {row['pattern']} "
                  f"({row['items_with_combination']} such items)",
                  "", f"{row['queries']} queries of the {row['lovers']} users who love {row['pattern']} most. "
                  "Attribute reader on held-out real items: " + ", ".join(
                      f"{k.replace('_', ' ')} {v:.3f}" for k, v in row["reader"].items()) + ".", "",
                  f"| Source | Read as {row['pattern']} in those categories | True preference (read) | "
                  "Optimised score |", "|---|---|---|---|"]
        for source, metrics in row["sources"].items():
            lines.append(f"| {SOURCE_NAMES[source]} | " + " | ".join(
                f"{metrics[m][0]:.3f} ± {metrics[m][1]:.3f}" for m in ("combination", "true_preference",
                                                                      "optimised_score")) + " |")
        lines += ["", "Synthesis against retrieval, paired over the queries (two-sided sign-flip test): " + "; ".join(
            f"{metric.replace('_', ' ')} {test['mean_difference']:+.3f} (synthesis above in {test['above']}, below "
            f"in {test['below']}, p = {test['p_value']:.4f})" for metric, test in row["paired"].items()) + ".", ""]
    return "\n".join(lines)
