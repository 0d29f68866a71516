"""Table IV of the paper: top-3 images from four sources for random (user, category) queries, and the eta sweep
of Figure 3.

A trial draws a user u uniformly and sets c to the category of u's test item. Each source returns three images:
    real        three random real items of c                    (X_c)
    generated   G(z, c) for three z of G's prior (U(-1, 1))     (G(., c))
    retrieval   the top 3 of eq. 8                              (delta(u, c))
    synthesis   3 of the m results of eq. 10, chosen by eq. 11  (delta-hat(u, c))
    guided      G(z, c) for three z of the prior, each denoising step guided up theta_u . Phi (--guidance, diffusion
                generators only)
    tailored    retrieval's items, each inverted into G (eq. 12) and maximised from there (eq. 10; --tailored)
    sampled     the top 3 by eq. 10's objective of m (steps + 1) samples drawn as synthesis's starts, none moved
                (--sampled): best-of-n at synthesis's number of evaluations, the control for its ascent
Preference score: theta_u . Phi(image) (eq. 6), averaged over the three, then mean and std over trials. Diversity:
1 - mean pairwise SSIM of the three, mean and std over trials. Quality: the Inception Score of all the source's
images over all trials (3 N of them), mean and std over `splits` parts (Salimans et al.). Beside them: the judges
that synthesis was not optimised against (pm/judges.py), KID, FID, precision and recall against the real items of
the category (pm/fidelity.py), and paired tests of the designs against retrieval (and of synthesis against the
best samples).
The tuning of PM's starts, steps and lr on validation queries (--tune) is pm/tune.py's.
"""
import csv
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from common.checkpoint import write_json
from common.original_format import category_name
from common.seeding import derived_seed
from pm.design import choose, retrieve
from pm.fidelity import (
    CLASSIFIER_EXTRACTOR,
    DEFAULT_FID_INCEPTION_WEIGHTS,
    INCEPTION_EXTRACTOR,
    Fidelity,
    classifier_extractor,
    inception_extractor,
)
from pm.figures import line_panel, save_panels
from pm.judges import Recommender, TrueTaste, open_judge, open_true_taste, paired_test
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
    "guided": "G(., c) guided up theta_u . Phi (diffusion)",
    "tailored": "delta(u, c) tailored (eq. 12, then eq. 10)",
    "sampled": "G(., c) best of m (steps + 1) samples (eq. 10's objective, no step)",
}
# Table IV of the paper (1000 trials, AmazonFashion, 128 px GAN, ImageNet Inception): (mean, std) per metric
PAPER_TABLE_IV = {
    "real": {"preference": (-1.9547, 3.8), "quality": (6.8685, 0.36), "diversity": (0.5585, 0.09)},
    "generated": {"preference": (-1.9392, 3.7), "quality": (6.8121, 0.37), "diversity": (0.5589, 0.09)},
    "retrieval": {"preference": (7.1876, 3.2), "quality": (7.6492, 0.27), "diversity": (0.5393, 0.11)},
    "synthesis": {"preference": (7.6760, 4.1), "quality": (7.6524, 0.24), "diversity": (0.5265, 0.12)},
}
PAPER_SOURCES = tuple(PAPER_TABLE_IV)
COMPARED = ("synthesis", "guided", "tailored", "sampled")   # the designs tested against retrieval, paired over trials
# and synthesis against the best of as many samples: what the ascent adds to choosing among the generator's samples
PAIRED = tuple((source, "retrieval") for source in COMPARED) + (("synthesis", "sampled"),)
TAILORING_STREAM = 12   # the tailored source's own random stream: adding it leaves the other sources' draws alone
SAMPLED_STREAM = 13     # the sampled source's, likewise
METRICS = ("preference", "quality", "diversity")
# the scores over trials beside the optimised one (pm/judges.py), where they can be measured
TRIAL_METRICS = {
    "preference": "Optimised score",
    "preference_percentile": "Optimised percentile",
    "judge": "Judge DVBPR",
    "judge_percentile": "Judge percentile",
    "true_preference": "True preference (read)",
    "category_match": "Category match",
    "realistic": "Realistic (k-NN)",
}
# the scores of the per-category view, where a source's images stop looking like their category
BY_CATEGORY = ("category_match", "realistic")
FIDELITY_SHOWN = {"kid": "KID", "fid": "FID", "precision": "Precision", "recall": "Recall"}
EXTRACTORS = {CLASSIFIER_EXTRACTOR: "category classifier", INCEPTION_EXTRACTOR: "Inception"}
SWEEP_PANELS = {"preference": "preference score", "judge": "judge DVBPR", "true_preference": "true preference",
                "quality": "quality (IS)", "diversity": "diversity (1 - SSIM)"}
JUDGES_NOTES = [
    "Optimised score: theta_u . Phi of the DVBPR that synthesis maximised; judge DVBPR: another run's, which "
    "synthesis never saw. Percentiles: the share of the real items of the query's category that the same model "
    "scores below the image, for the same user (comparable across the two runs' scales). True preference: the "
    "catalogue's hidden taste of what the attribute reader reads in the image. Category match: the share of the "
    "images that the GAN run's category classifier, trained on the real items, assigns to the query's category "
    "(is the design the garment asked for?). Realistic: the share of the images inside the k-NN ball (k 3) of some "
    "real item of the query's category in the category classifier's features, the per-trial form of the precision "
    "column (real items are in the reference, so 1 by construction): a measure in the classifier's features, not "
    "of what a person sees (against 1,854 blind labels of whether a person can tell the garment, its AUC is 0.54; "
    "docs/design_half.md). Mean ± std over trials.",
    "",
    "KID, FID, precision and recall: torch-fidelity, each source's images against all real items of their "
    "category, averaged over categories weighted by images (pm/fidelity.py); lower KID and FID are closer to the "
    "real items. KID ± its std over torch-fidelity's subsets: how much the draw of the real items moves it; "
    "whether a design source's KID differs from the random samples' is the permutation test after the table.",
]
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


class Sources:
    """The sources of Table IV for one (user, category): (images [3, 3, S, S], preference scores [3], item ids
    [3], -1 for generated images)."""

    def __init__(self, stages, cfg, rng):
        self.stages, self.cfg, self.rng = stages, cfg, rng
        self.select = "best" if cfg.select == "all" else cfg.select
        self.tailoring_rng = torch.Generator(device=rng.device).manual_seed(derived_seed(cfg.seed, TAILORING_STREAM))
        self.sampled_rng = torch.Generator(device=rng.device).manual_seed(derived_seed(cfg.seed, SAMPLED_STREAM))

    def real(self, user, category):
        items = self.stages.items_of(category)
        pick = items[torch.randperm(len(items), generator=self.rng, device=items.device)[:TOP]]
        return self.stages.images(pick), self.stages.item_embeddings[pick] @ self.stages.designer.theta[user], pick

    @torch.no_grad()
    def generated(self, user, category):
        designer = self.stages.designer
        images = designer.generate(designer.sample_z(TOP, self.rng), category)
        return images, designer.preference(user, images), torch.full((TOP,), -1)

    def retrieval(self, user, category):
        items, scores = retrieve(self.stages.designer.theta[user], self.stages.item_embeddings,
                                 self.stages.items_of(category), TOP)
        return self.stages.images(items), scores, items

    @torch.no_grad()
    def guided(self, user, category):
        designer = self.stages.designer
        images = designer.guided(user, category, TOP, self.cfg.guidance, self.rng)
        return images, designer.preference(user, images), torch.full((TOP,), -1)

    def tailored(self, user, category):
        """Retrieval's items, each inverted into the generator (eq. 12) and tailored to the user from there (eq. 10;
        the paper's Sec. IV-E)."""
        cfg, designer = self.cfg, self.stages.designer
        items, _ = retrieve(designer.theta[user], self.stages.item_embeddings, self.stages.items_of(category), TOP)
        designs = [designer.tailor(query, category, [user], cfg.steps, cfg.lr, cfg.eta, cfg.invert_steps,
                                   cfg.invert_lr, cfg.latent, self.tailoring_rng, record=None)[0][0]
                   for query in self.stages.images(items)]
        return (torch.cat([d.images for d in designs]), torch.cat([d.preference for d in designs]),
                torch.full((len(designs),), -1))

    def sampled(self, user, category):
        """The best of as many samples as synthesis evaluates its objective on: m starts x (steps + 1)."""
        cfg = self.cfg
        design = self.stages.designer.best_samples(user, category, cfg.starts * (cfg.steps + 1), TOP, cfg.eta,
                                                   cfg.init, cfg.latent, self.sampled_rng)
        return design.images, design.preference, torch.full((len(design.images),), -1)

    def synthesis(self, user, category, eta=None):
        cfg = self.cfg
        design = self.stages.designer.synthesise(user, category, cfg.starts, cfg.steps, cfg.lr,
                                                 cfg.eta if eta is None else eta, cfg.init, cfg.latent, self.rng)
        kept = choose(design.objective, TOP, self.select, self.rng,
                      self.stages.designer.passes(design.images, category))
        return design.images[kept], design.preference[kept], torch.full((len(kept),), -1)


def run_trials(stages, cfg, trials, sources=PAPER_SOURCES, eta=None, desc="Table IV trials"):
    """{source: {"images": [N, 3, 3, S, S], "scores": [N, 3], "items": [N, 3] (-1: generated), "diversity": [N]}}
    over the trials, on the CPU."""
    rng = torch.Generator(device=stages.device).manual_seed(cfg.seed)
    pick = Sources(stages, cfg, rng)
    results = {source: {"images": [], "scores": [], "items": [], "diversity": []} for source in sources}
    for user, category in tqdm(trials, desc=desc, unit="trial"):
        for source in sources:
            if source == "synthesis":
                images, scores, items = pick.synthesis(user, category, eta)
            else:
                images, scores, items = getattr(pick, source)(user, category)
            results[source]["images"].append(images.detach().cpu())
            results[source]["scores"].append(scores.detach().cpu())
            results[source]["items"].append(items.cpu())
            results[source]["diversity"].append(ssim_diversity(images))
    return {source: {"images": torch.stack(r["images"]), "scores": torch.stack(r["scores"]),
                     "items": torch.stack(r["items"]), "diversity": np.array(r["diversity"])}
            for source, r in results.items()}


@dataclass
class Measures:
    """What scores a source's images after the trials: the quality scorer (Inception Score), the fidelity
    extractors, the optimised DVBPR, and the judges where there are some (pm/judges.py)."""
    stages: object
    quality: object
    fidelity: Fidelity
    optimised: Recommender
    judge: Recommender | None = None
    taste: TrueTaste | None = None
    category: CategoryInception | None = None   # the GAN run's category classifier: is the image of its category?

    def per_trial(self, result, trials):
        """{metric: [N]} of one source: each trial's mean over its images."""
        values = {metric: [] for metric in self.trial_metrics()}
        for (user, category), images, scores, items in zip(trials, result["images"], result["scores"],
                                                           result["items"]):
            category_items = self.stages.items_of(category)
            values["preference"].append(scores.mean().item())
            values["preference_percentile"].append(self.optimised.percentile(user, scores.to(self.stages.device),
                                                                             category_items))
            if self.judge is not None:
                judged = self.judge.scores(user, images, items)
                values["judge"].append(judged.mean().item())
                values["judge_percentile"].append(self.judge.percentile(user, judged, category_items))
            if self.taste is not None:
                values["true_preference"].append(self.taste.scores(user, images).mean().item())
            if self.category is not None:
                predicted = self.category.predict_proba(images).argmax(dim=1)
                values["category_match"].append((predicted == category).double().mean().item())
            if self.fidelity is not None:
                values["realistic"].append(self.fidelity.realistic(images, category).mean().item())
        return {metric: np.array(v) for metric, v in values.items()}

    def trial_metrics(self):
        return ("preference", "preference_percentile") + (("judge", "judge_percentile") if self.judge else ()) \
            + (("true_preference",) if self.taste else ()) + (("category_match",) if self.category else ()) \
            + (("realistic",) if self.fidelity is not None else ())


def summarise(results, trials, measures, splits):
    """({source: {metric: (mean, std)}}, {source: {extractor: {fidelity metric: value}}}, {source: {metric: [N]}}):
    the trial metrics' mean and std over trials, the Inception Score's over `splits` parts and the fidelity of all
    the source's images against the real items of their categories."""
    categories = torch.tensor([category for _, category in trials])
    rows, fidelity, per_trial = {}, {}, {}
    for source, r in results.items():
        images = r["images"].flatten(0, 1)
        per_trial[source] = measures.per_trial(r, trials)
        probs = measures.quality.predict_proba(images)
        rows[source] = {metric: (float(v.mean()), float(v.std())) for metric, v in per_trial[source].items()}
        rows[source]["quality"] = inception_score(probs, min(splits, len(probs)))
        rows[source]["diversity"] = (float(r["diversity"].mean()), float(r["diversity"].std()))
        fidelity[source] = measures.fidelity(images, categories.repeat_interleave(r["images"].shape[1]))
    return rows, fidelity, per_trial


def paired_tests(per_trial, metrics, source="synthesis", against="retrieval"):
    """`source` against `against` over the same trials, per metric (pm/judges.py's sign-flip test)."""
    return {metric: paired_test(per_trial[source][metric], per_trial[against][metric]) for metric in metrics}


def against_samples(per_trial, results, trials, fidelity):
    """{source: {"realistic": paired test, "kid": KID test}}: each design source against the generator's own random
    samples on the same trials (does PM leave the generator's manifold?): the per-trial realistic share, and the KID
    in the category classifier's features (pm/fidelity.py kid_difference_test); none where fidelity is not measured."""
    if fidelity is None:
        return {}
    categories = [category for _, category in trials]
    return {source: {"realistic": paired_test(per_trial[source]["realistic"], per_trial["generated"]["realistic"]),
                     "kid": fidelity.kid_test(results[source]["images"], results["generated"]["images"], categories)}
            for source in COMPARED if source in per_trial}


def by_category(per_trial, trials, num_categories):
    """{category name: {"trials": n, source: {metric: mean over its trials}}} of the metrics of BY_CATEGORY, for
    each category that some trial asked for."""
    categories = np.array([category for _, category in trials])
    view = {}
    for category in np.unique(categories):
        asked = categories == category
        view[category_name(int(category), num_categories)] = {"trials": int(asked.sum()), **{
            source: {metric: float(values[metric][asked].mean()) for metric in BY_CATEGORY}
            for source, values in per_trial.items()}}
    return view


def category_lines(view):
    """The Markdown of by_category's view: a row per category, a column per source and metric."""
    first = next(iter(view.values()))
    columns = [(source, metric) for source in first if source != "trials" for metric in first[source]]
    return ["", "Per category, the mean over its trials:", "",
            "| Category | Trials | " + " | ".join(f"{source}: {TRIAL_METRICS[metric]}" for source, metric in columns)
            + " |", "|---|---|" + "---|" * len(columns),
            *(f"| {name} | {row['trials']} | " + " | ".join(f"{row[source][metric]:.2f}" for source, metric in columns)
              + " |" for name, row in view.items())]


def mean_std(pair):
    return f"{pair[0]:.4f} ± {pair[1]:.3f}"


def paper_mean_std(pair):
    return "—" if pair is None else f"{pair[0]:.4f} ± {pair[1]:g}"  # the paper gives the std to one or two digits


def fidelity_columns(fidelity):
    """(extractor, metric) of the fidelity values that some source has."""
    first = next(iter(fidelity.values()))
    return [(name, metric) for name, values in first.items() for metric in FIDELITY_SHOWN
            if any(row[name][metric] is not None for row in fidelity.values())]


def format_fidelity(values, metric):
    """One fidelity cell: KID with its std over subsets, the others alone; — where not measured."""
    if values[metric] is None:
        return "—"
    spread = f" ± {values['kid_std']:.3f}" if metric == "kid" and values.get("kid_std") is not None else ""
    return f"{values[metric]:.3f}{spread}"


def judges_table(rows, fidelity, paired, samples):
    """The Markdown of the judges, the fidelity and the paired tests ({(source, against): its tests}, and against
    the random samples)."""
    shown = [m for m in TRIAL_METRICS if m in next(iter(rows.values()))]
    columns = fidelity_columns(fidelity)
    lines = ["| Item source | " + " | ".join(TRIAL_METRICS[m] for m in shown) + " | "
             + " | ".join(f"{FIDELITY_SHOWN[metric]} ({EXTRACTORS[name]})" for name, metric in columns) + " |",
             "|---|" + "---|" * (len(shown) + len(columns))]
    for source, row in rows.items():
        lines.append(f"| {SOURCES[source]} | " + " | ".join(mean_std(row[m]) for m in shown) + " | "
                     + " | ".join(format_fidelity(fidelity[source][name], metric)
                                  for name, metric in columns) + " |")
    for (source, against), tests in paired.items():
        n = next(iter(tests.values()))["trials"]
        lines += ["", f"{SOURCES[source]} against {SOURCES[against]}, paired over the {n} trials (two-sided sign-flip "
                  "permutation test of the mean difference):", "",
                  f"| Score | Mean difference | Trials {source} above / below | p |", "|---|---|---|---|"]
        lines += [f"| {TRIAL_METRICS[m]} | {t['mean_difference']:+.4f} | {t['above']} / {t['below']} | "
                  f"{t['p_value']:.4f} |" for m, t in tests.items()]
    for source, tests in samples.items():
        realistic, kid = tests["realistic"], tests["kid"]
        kid_line = ("KID not tested (no category with two images from each)" if kid["p_value"] is None else
                    f"KID (category classifier, all of each side's images of a category against all its real items, "
                    f"no subsets) {kid['kid_difference']:+.4f}, p {kid['p_value']:.4f} (two-sided permutation test "
                    "swapping the two sources' images within trials)")
        lines += ["", f"{SOURCES[source]} against {SOURCES['generated']} on the same trials: realistic "
                  f"{realistic['mean_difference']:+.4f} ({realistic['above']} trials above, {realistic['below']} "
                  f"below, p {realistic['p_value']:.4f}); {kid_line}."]
    return lines


def write_table(out, rows, fidelity, paired, samples, quality_label, notes, categories):
    """table_iv.md, table_iv.csv and table_iv.json in `out`: the paper's numbers beside ours, then the judges,
    the fidelity, the paired tests and the per-category view (by_category's)."""
    lines = ["# Table IV: top-3 images for a given user and category", "", *notes, "",
             f"Quality: {quality_label}.", "",
             "| Item source | Preference score | Quality | Diversity | Paper: preference | Paper: quality | "
             "Paper: diversity |",
             "|---|---|---|---|---|---|---|"]
    for source, row in rows.items():
        paper = PAPER_TABLE_IV.get(source, {})
        lines.append(f"| {SOURCES[source]} | " + " | ".join(mean_std(row[m]) for m in METRICS) + " | "
                     + " | ".join(paper_mean_std(paper.get(m)) for m in METRICS) + " |")
    lines += ["", "## Judges and fidelity", "", *JUDGES_NOTES, "", *judges_table(rows, fidelity, paired, samples),
              *category_lines(categories)]
    (out / "table_iv.md").write_text("\n".join(lines) + "\n")
    shown = [m for m in TRIAL_METRICS if m in next(iter(rows.values()))]
    columns = fidelity_columns(fidelity)
    with open(out / "table_iv.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source"] + [f"{who}{m}_{stat}" for who in ("", "paper_") for m in METRICS
                                      for stat in ("mean", "std")]
                        + [f"{m}_{stat}" for m in shown for stat in ("mean", "std")]
                        + [f"{name}_{metric}" for name, metric in columns])
        for source, row in rows.items():
            writer.writerow([source] + [v for m in METRICS for v in row[m]]
                            + [v for m in METRICS for v in PAPER_TABLE_IV.get(source, {}).get(m, (None, None))]
                            + [v for m in shown for v in row[m]]
                            + [fidelity[source][name][metric] for name, metric in columns])
    write_json(out / "table_iv.json", {"notes": notes, "quality": quality_label,
                                       "ours": {s: {m: list(v) for m, v in row.items()} for s, row in rows.items()},
                                       "fidelity": fidelity,
                                       **{f"{source}_vs_{against}": tests
                                          for (source, against), tests in paired.items()},
                                       **{f"{source}_vs_generated": tests for source, tests in samples.items()},
                                       "by_category": categories,
                                       "paper": {s: {m: list(v) for m, v in p.items()}
                                                 for s, p in PAPER_TABLE_IV.items()}})
    return "\n".join(lines)


def sweep_eta(stages, cfg, trials, etas, measures, out):
    """Figure 3: synthesis over the same trials for each eta; eta_sweep.png (a panel per score) and eta_sweep.json.
    Retrieval, which does not depend on eta, is drawn as the reference line."""
    retrieval, retrieval_fidelity, retrieval_trials = summarise(
        run_trials(stages, cfg, trials, ("retrieval",), desc="retrieval"), trials, measures, cfg.splits)
    by_eta, fidelity, paired = {}, {}, {}
    for eta in etas:
        results = run_trials(stages, cfg, trials, ("synthesis",), eta=eta, desc=f"synthesis, eta={eta:g}")
        rows, fidelities, per_trial = summarise(results, trials, measures, cfg.splits)
        by_eta[eta], fidelity[eta] = rows["synthesis"], fidelities["synthesis"]
        paired[eta] = paired_tests({**per_trial, **retrieval_trials}, measures.trial_metrics())
    labels = [f"{eta:g}" for eta in etas]
    shown = [m for m in SWEEP_PANELS if m in retrieval["retrieval"]]
    panels = [line_panel(SWEEP_PANELS[m], "eta", labels, {"synthesis": [by_eta[eta][m][0] for eta in etas],
                                                          "retrieval": [retrieval["retrieval"][m][0]] * len(etas)})
              for m in shown]
    kid = [fidelity[eta][CLASSIFIER_EXTRACTOR]["kid"] for eta in etas]
    panels.append(line_panel("KID (in-domain)", "eta", labels, {
        "synthesis": kid, "retrieval": [retrieval_fidelity["retrieval"][CLASSIFIER_EXTRACTOR]["kid"]] * len(etas)}))
    save_panels(out / "eta_sweep.png", panels)
    write_json(out / "eta_sweep.json", {
        "quality": measures.quality.label, "trials": len(trials),
        "synthesis": {f"{eta:g}": {m: list(v) for m, v in row.items()} for eta, row in by_eta.items()},
        "synthesis_fidelity": {f"{eta:g}": row for eta, row in fidelity.items()},
        "synthesis_vs_retrieval": {f"{eta:g}": tests for eta, tests in paired.items()},
        "retrieval": {m: list(v) for m, v in retrieval["retrieval"].items()},
        "retrieval_fidelity": retrieval_fidelity["retrieval"]})
    return by_eta, retrieval["retrieval"]


def quality_scorer(cfg, stages, classifier):
    path = cfg.inception_weights or (DEFAULT_INCEPTION_WEIGHTS if DEFAULT_INCEPTION_WEIGHTS.is_file() else None)
    if path is not None:
        return ImageNetInception.from_weights(path, stages.device)
    print(f"no Inception v3 weights ({DEFAULT_INCEPTION_WEIGHTS} absent; `bash download_pretrained_models.sh "
          "torchvision` fetches them): Quality is the in-domain score of the category classifier")
    return CategoryInception(classifier)


def fidelity_extractors(cfg, stages, classifier):
    """The category classifier's features, and torch-fidelity's FID Inception where its weights file is."""
    extractors = {CLASSIFIER_EXTRACTOR: classifier_extractor(classifier, stages.device)}
    path = cfg.fid_inception_weights or (DEFAULT_FID_INCEPTION_WEIGHTS if DEFAULT_FID_INCEPTION_WEIGHTS.is_file()
                                         else None)
    if path is None:
        print(f"KID and FID over Inception skipped: no weights file ({DEFAULT_FID_INCEPTION_WEIGHTS} absent; "
              "`bash download_pretrained_models.sh fidelity` fetches it); those over the category classifier follow")
    else:
        extractors[INCEPTION_EXTRACTOR] = inception_extractor(path, stages.device)
    return extractors


def recommenders(stages, cfg):
    """(the optimised DVBPR, the judge DVBPR of --judge-run or None, the hidden taste or None)."""
    judge = open_judge(cfg.judge_run, stages) if cfg.judge_run else None
    optimised = Recommender(stages.designer.dvbpr, stages.designer.theta, stages.item_embeddings)
    return optimised, judge, open_true_taste(stages)


def measures_of(stages, cfg, out):
    classifier = stages.category_classifier(out)
    fidelity = Fidelity(fidelity_extractors(cfg, stages, classifier), stages.images, stages.dataset.item_category,
                        cfg.seed)
    return Measures(stages, quality_scorer(cfg, stages, classifier), fidelity, *recommenders(stages, cfg),
                    category=CategoryInception(classifier))


def tables(stages, cfg, out):
    measures = measures_of(stages, cfg, out)
    trials = draw_trials(stages.dataset, cfg.trials, np.random.default_rng(cfg.seed))
    if cfg.select == "all":
        print("--select all: Table IV takes the best 3 of the m results")
    terms = [f"shape weight {cfg.shape_weight}"] + (
        [f"structure weight {cfg.structure_weight}"] if cfg.structure_weight else []) + (
        [f"jitter {cfg.jitter} px"] if cfg.jitter else []) + (
        [f"truncation {cfg.truncation}"] if cfg.truncation < 1 else []) + (
        [f"screen at silhouette {cfg.min_silhouette}"] if cfg.min_silhouette is not None else [])
    notes = [f"{cfg.trials} trials on {stages.dataset.name}; DVBPR {stages.dvbpr_config.image_size} px, "
             f"K={stages.dvbpr_config.k}; GAN {stages.designer.image_size} px ({stages.gan.config.generator}).",
             f"Synthesis: preset {cfg.preset}, {cfg.starts} starts, {cfg.steps} Adam steps at lr {cfg.lr}, "
             f"eta {cfg.eta}, realism floor {cfg.realism_floor}, support quantile {cfg.support_quantile} (weight "
             f"{cfg.support_weight}), {', '.join(terms)}, latent {cfg.latent}, init {cfg.init}, "
             f"select {cfg.select}.",
             "Preference and diversity: mean ± std over trials; quality: over all 3 x trials images of a source, "
             f"mean ± std over {cfg.splits} splits."]
    if cfg.ensemble_runs:
        notes.append(f"Optimised score: the mean of the DVBPRs {', '.join([cfg.dvbpr_run, *cfg.ensemble_runs])}.")
    if cfg.judge_run:
        notes.append(f"Judge DVBPR: {cfg.judge_run}.")
    if measures.taste is not None:
        notes.append("Attribute reader on held-out real items: " + ", ".join(
            f"{name.replace('_', ' ')} {value:.3f}" for name, value in measures.taste.metrics.items()) + ".")
    if cfg.guidance is not None:
        notes.append(f"Guided: {TOP} samples of the prior per trial, guided at scale {cfg.guidance:g}.")
    if cfg.tailored:
        notes.append(f"Tailored: retrieval's {TOP} items, each inverted by {cfg.invert_steps} L1 steps at lr "
                     f"{cfg.invert_lr} (best of 8 starts), then {cfg.steps} steps of eq. 10 from there.")
    if cfg.sampled:
        notes.append(f"Best samples: {TOP} of {cfg.starts * (cfg.steps + 1)} starts drawn as synthesis draws them "
                     f"(its {cfg.starts} x ({cfg.steps} + 1) evaluations of eq. 10's objective): the top {TOP} by "
                     "that objective, with no gradient step.")
    if cfg.table:
        sources = PAPER_SOURCES + (("guided",) if cfg.guidance is not None else ()) + (
            ("tailored",) if cfg.tailored else ()) + (("sampled",) if cfg.sampled else ())
        results = run_trials(stages, cfg, trials, sources)
        rows, fidelity, per_trial = summarise(results, trials, measures, cfg.splits)
        paired = {(source, against): paired_tests(per_trial, measures.trial_metrics(), source, against)
                  for source, against in PAIRED if source in per_trial and against in per_trial}
        samples = against_samples(per_trial, results, trials, measures.fidelity)
        print(write_table(out, rows, fidelity, paired, samples, measures.quality.label, notes,
                          by_category(per_trial, trials, stages.dataset.num_categories)))
    if cfg.sweep_eta:
        by_eta, retrieval = sweep_eta(stages, cfg, trials, cfg.sweep_eta, measures, out)
        for eta, row in by_eta.items():
            print(f"eta {eta:g}: " + ", ".join(f"{m} {v[0]:.4f} ± {v[1]:.3f}" for m, v in row.items()))
        print("retrieval: " + ", ".join(f"{m} {v[0]:.4f} ± {v[1]:.3f}" for m, v in retrieval.items()))
        print(f"wrote {out / 'eta_sweep.png'}")
