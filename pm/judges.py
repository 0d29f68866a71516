"""Judges of preference that the designs were not optimised against, beside the score they were (Table IV, the eta
sweep; the field's practice: FashionDPO judges its designs with a separately trained recommender).

    judge DVBPR       another DVBPR run on the same data with another seed (`--judge-run`), which preference
                      maximisation never sees: its theta_u . Phi(image). Two runs' score scales differ, so each
                      score is also given as a percentile: the share of the real items of the query's category
                      that the same model scores below the image for the same user (for the optimised DVBPR too).
    true preference   on generated catalogues, the hidden taste itself: taste_u . read(image), the attribute reader
                      (common/catalogue/reader.py) reading category, colour family, pattern and bulk, scored as
                      the catalogue scores an item (common/catalogue/taste.py).

Images from the catalogue (the real and retrieval sources) are scored through the item embeddings, as the
optimised score scores them; generated images through Phi(Delta image).
"""
from pathlib import Path

import numpy as np
import torch

from common.catalogue.config import truth_path
from common.catalogue.reader import train_or_load_reader
from common.catalogue.truth import load_truth
from common.errors import ConfigError
from common.images import image_store
from dvbpr.run import open_dvbpr_run
from pm.design import resize
from pm.load import check_trained_on, same_model

PERMUTATION_ROUNDS = 10_000
READER_MAX_SIZE = 64    # attributes are legible there (a stripe is a few pixels wide), at a quarter of 128 px's cost


def percentile(scores, reference):
    """100 x the share of `reference` [M] below each of `scores` [n], averaged over the n."""
    return 100.0 * (reference[None, :] < scores[:, None]).double().mean().item()


class Recommender:
    """theta_u . Phi(image) of one DVBPR (eq. 6): catalogue items by their embeddings, other images by Phi."""

    def __init__(self, model, theta, item_embeddings):
        self.model, self.theta, self.items = model, theta, item_embeddings

    def scores(self, user, images, items):
        """[n] scores of one trial's images; `items` [n] their item ids, -1 where generated."""
        if (items >= 0).all():
            return self.items[items.to(self.items.device)] @ self.theta[user]
        with torch.no_grad():
            phi = self.model.phi(resize(images.to(self.theta.device), self.model.input_size))
        return phi @ self.theta[user]

    def percentile(self, user, scores, category_items):
        return percentile(scores, self.items[category_items] @ self.theta[user])


def open_judge(judge_run, stages):
    """The judge DVBPR in `judge_run`, refused when it is a run that synthesis optimised (--dvbpr-run or one of
    --ensemble-runs) or its exact twin, or was trained on other data."""
    optimised = stages.dvbpr_runs
    flags = ["--dvbpr-run"] + [f"--ensemble-runs {run.path}" for run in optimised[1:]]
    for flag, run in zip(flags, optimised):
        if Path(judge_run).resolve() == run.path.resolve():
            raise ConfigError(f"--judge-run is {flag} itself: the judge must be another run (another --seed)")
    judge = open_dvbpr_run(judge_run, stages.dataset.path, stages.device, with_model=True)
    check_trained_on(judge, stages.dataset, "--judge-run", optimised[0])
    for flag, run in zip(flags, optimised):
        if same_model(judge, run):
            raise ConfigError(f"--judge-run {judge_run} is the same model as {flag}: train the judge with "
                              "another --seed")
    return Recommender(judge.model, judge.theta, judge.items)


class TrueTaste:
    """The catalogue's hidden taste read off images by the attribute reader."""

    def __init__(self, truth, reader, metrics):
        self.taste = torch.as_tensor(truth.user_taste)
        self.reader, self.metrics = reader, metrics

    def read(self, images):
        """[n, 19] the attribute vectors the reader reads (common/catalogue/reader.py), on the CPU."""
        return self.reader.read(images.to(next(self.reader.parameters()).device)).cpu()

    def scores(self, user, images):
        """[n] taste_u . read(image) of one trial's images."""
        return self.read(images) @ self.taste[user]


def open_true_taste(stages):
    """The hidden taste of a generated catalogue (its truth file beside it) with an attribute reader at the GAN's
    size up to READER_MAX_SIZE, trained on the real items once and kept beside the catalogue's image caches; None
    for a catalogue without a truth file."""
    if not truth_path(stages.dataset.path).is_file():
        return None
    truth = load_truth(stages.dataset.path)
    size, resize_filter = min(stages.designer.image_size, READER_MAX_SIZE), stages.gan.config.resize_filter
    store = stages.images if size == stages.images.size else image_store(stages.dataset, size, resize_filter,
                                                                         stages.device)
    reader, metrics = train_or_load_reader(stages.dataset, truth, store)
    print("attribute reader, held out real items: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return TrueTaste(truth, reader, metrics)


def paired_test(a, b, rounds=PERMUTATION_ROUNDS, seed=0):
    """Two-sided paired sign-flip permutation test over trials of mean(a - b) = 0: flipping the sign of each
    trial's difference is as likely as not under the null. Returns the mean difference, the p-value (with the
    observed assignment counted among the rounds) and the trials where a is above and below b."""
    difference = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(rounds, len(difference)))
    observed = abs(difference.mean())
    extreme = np.sum(np.abs((signs * difference).mean(axis=1)) >= observed * (1 - 1e-12))
    return {"mean_difference": float(difference.mean()), "p_value": float((1 + extreme) / (1 + rounds)),
            "above": int((difference > 0).sum()), "below": int((difference < 0).sum()), "trials": len(difference)}
