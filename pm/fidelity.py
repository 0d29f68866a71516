"""Fidelity of Table IV's sources as the field measures generative models: KID (Binkowski et al., 2018), FID (Heusel
et al., 2017), precision and recall (Kynkaanniemi et al., 2019), computed by torch-fidelity on features of a
source's images against the real items of the same category.

Two feature extractors, each a torch-fidelity feature extractor:
- "category-classifier": the pooled features of the GAN run's category classifier (common/classifier.py), an
  in-domain network registered here; always available, the one that knows generated catalogues;
- "inception-v3-compat": torch-fidelity's Inception v3, the TensorFlow FID network (pool3, 2048 features), read
  from a local weights file (`--fid-inception-weights`; nothing is downloaded), for real photographs.

Per category c, the source's images of c are compared with the real items of c (all of them, or
REFERENCE_PER_CATEGORY drawn at random where there are more), and each metric is averaged over
the categories weighted by the source's images there. Every source of a table has the same images per category
(the trials are shared), so FID's small-sample bias is the same for each; KID is unbiased at any size. KID draws
KID_SUBSETS subsets of min(images of c, real items of c, 1000) from each side. Whether two sources' KIDs differ
(a design source's and the random samples') is kid_difference_test's permutation test over the shared trials.
"""
import contextlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kernel_poly, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor

from common.errors import ConfigError

CLASSIFIER_EXTRACTOR = "category-classifier"
INCEPTION_EXTRACTOR = "inception-v3-compat"
DEFAULT_FID_INCEPTION_WEIGHTS = Path("pretrained/weights-inception-2015-12-05-6726825d.pth")
MAX_WEIGHTS_BYTES = 256 << 20       # the file is 95 MB
KID_SUBSETS, KID_MAX_SUBSET = 100, 1000
KID_TEST_ROUNDS, KID_TEST_CHUNK = 10_000, 1000   # the permutation test's swaps, drawn and scored this many at a time
PRC_NEIGHBOURHOOD = 3               # k of the k-NN balls, torch-fidelity's default
REFERENCE_PER_CATEGORY = 2000       # real items per category in the reference: twice KID's largest subset
METRICS = ("kid", "kid_std", "fid", "precision", "recall")


class ClassifierFeatures(FeatureExtractorBase):
    """The category classifier as a torch-fidelity feature extractor: uint8 images [B, 3, H, W] -> its globally
    pooled last conv features ("pool", [B, 4 * width]), at the classifier's own size."""

    def __init__(self, name, features_list, classifier=None, **_):
        super().__init__(name, features_list)
        self.classifier = classifier

    @staticmethod
    def get_provided_features_list():
        return ("pool",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "pool"

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, images):
        images = images.float() / 127.5 - 1
        if images.shape[-1] != self.classifier.image_size:
            images = F.interpolate(images, size=self.classifier.image_size, mode="bilinear", antialias=True)
        return (self.classifier.features(images).mean(dim=(2, 3)),)


if CLASSIFIER_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(CLASSIFIER_EXTRACTOR, ClassifierFeatures)


@contextlib.contextmanager
def weights_only_loads():
    """torch-fidelity reads its Inception file with torch.load(weights_only=False); PyTorch's documented switch
    TORCH_FORCE_WEIGHTS_ONLY_LOAD makes that call use the safe loader."""
    saved = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = saved


def classifier_extractor(classifier, device="cpu"):
    return create_feature_extractor(CLASSIFIER_EXTRACTOR, ["pool"], cuda=False, classifier=classifier,
                                    verbose=False).to(device)


def inception_extractor(path, device="cpu"):
    """torch-fidelity's FID Inception with the weights at `path`; ConfigError in one line if they do not fit."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no FID Inception weights at {path}")
    if path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise ConfigError(f"{path} is over {MAX_WEIGHTS_BYTES >> 20} MB: not torch-fidelity's Inception weights")
    try:
        with weights_only_loads():
            extractor = create_feature_extractor(INCEPTION_EXTRACTOR, ["2048"], cuda=False,
                                                 feature_extractor_weights_path=str(path), verbose=False)
    except Exception as exc:  # torch.load and load_state_dict raise many types
        raise ConfigError(f"{path} is not torch-fidelity's Inception v3 weights file: {str(exc)[:300]}") from exc
    return extractor.to(device)


def to_uint8(images):
    """Images in [-1, 1] as the uint8 pixels torch-fidelity's extractors take."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def extract(extractor, images, batch_size=64):
    """Features [N, F] on the CPU of images [N, 3, S, S] in [-1, 1]."""
    device = next(extractor.parameters()).device
    return torch.cat([extractor(to_uint8(batch).to(device))[0].float().cpu() for batch in images.split(batch_size)])


def category_fidelity(features, reference, seed=0):
    """{kid, kid_std, fid, precision, recall} of one category's features against its reference; precision and
    recall are None when either side has PRC_NEIGHBOURHOOD items or fewer."""
    subset = min(len(features), len(reference), KID_MAX_SUBSET)
    kid = kid_features_to_metric(features, reference, kid_subsets=KID_SUBSETS, kid_subset_size=subset,
                                 rng_seed=seed, verbose=False)
    fid = fid_statistics_to_metric(fid_features_to_statistics(features), fid_features_to_statistics(reference),
                                   verbose=False)
    result = {"kid": kid[KEY_METRIC_KID_MEAN], "kid_std": kid[KEY_METRIC_KID_STD], "fid": fid[KEY_METRIC_FID],
              "precision": None, "recall": None}
    if min(len(features), len(reference)) > PRC_NEIGHBOURHOOD:
        prc = prc_features_to_metric(features, reference, prc_neighborhood=PRC_NEIGHBOURHOOD, verbose=False)
        result.update(precision=prc[KEY_METRIC_PRECISION], recall=prc[KEY_METRIC_RECALL])
    return result


def fidelity(features, categories, reference, reference_categories, seed=0):
    """Each metric of `features` [N, F] (their categories [N]) against the reference features of the same
    category, averaged over the categories weighted by their images; a category with fewer than two images on
    either side is left out, and a metric that no category gives is None."""
    per_category = []
    for c in torch.unique(categories).tolist():
        mine, theirs = features[categories == c], reference[reference_categories == c]
        if min(len(mine), len(theirs)) >= 2:
            per_category.append((len(mine), category_fidelity(mine, theirs, seed)))
    averaged = {}
    for metric in METRICS:
        pairs = [(n, row[metric]) for n, row in per_category if row[metric] is not None]
        averaged[metric] = float(np.average([v for _, v in pairs], weights=[n for n, _ in pairs])) if pairs else None
    return averaged


def kid_gap(in_a, kernel, cross):
    """Per row of in_a [rounds, n_pooled] (1: the pooled image is in set A, else in B), the unbiased MMD^2 of A minus
    that of B against the same real items, whose own term cancels: kernel [n_pooled, n_pooled] with a zero diagonal,
    cross [n_pooled] each pooled image's mean kernel value with the real items."""
    in_b = 1 - in_a
    n_a, n_b = in_a.sum(1), in_b.sum(1)
    within_a, within_b = ((in_a @ kernel) * in_a).sum(1), ((in_b @ kernel) * in_b).sum(1)
    return (within_a / (n_a * (n_a - 1)) - 2 * (in_a @ cross) / n_a
            - within_b / (n_b * (n_b - 1)) + 2 * (in_b @ cross) / n_b)


def kid_difference_test(features_a, trial_of_a, features_b, trial_of_b, trial_categories, reference,
                        reference_categories, rounds=KID_TEST_ROUNDS, seed=0):
    """KID(a) - KID(b) against the real items of the images' categories, and a two-sided paired permutation test
    of it being 0.

    features_a [N_a, F] and features_b [N_b, F] are two sources' images of the same trials (trial_of_a [N_a],
    trial_of_b [N_b] their trial; trial_categories [trials] each trial's category). KID here is the unbiased MMD^2
    of all of a source's images of a category against all the reference items of it (torch-fidelity's polynomial
    kernel), averaged over the categories weighted by a's images as `fidelity` averages; torch-fidelity's subsets
    estimate the same quantity. The null: a trial's images from the two sources are exchangeable, so each trial's
    two sets swap with probability 1/2 (pm/judges.py's paired sign-flip test, for a statistic that is not a mean
    over trials). Returns the difference, the p-value (the observed assignment counted among the rounds) and the
    trials; the first two None where no category has two images of each source."""
    trial_of_a, trial_of_b = np.asarray(trial_of_a), np.asarray(trial_of_b)
    trial_categories = np.asarray(trial_categories)
    swaps = np.random.default_rng(seed).random((rounds, len(trial_categories))) < 0.5
    swaps = np.concatenate([np.zeros((1, len(trial_categories)), bool), swaps])   # row 0: as observed
    gaps, weights = [], []
    for c in np.unique(trial_categories):
        mine_a, mine_b = trial_categories[trial_of_a] == c, trial_categories[trial_of_b] == c
        theirs = reference[torch.as_tensor(reference_categories) == int(c)].double().numpy()
        if min(mine_a.sum(), mine_b.sum(), len(theirs)) < 2:
            continue
        pooled = torch.cat([features_a[mine_a], features_b[mine_b]]).double().numpy()
        kernel = kernel_poly(pooled, pooled)
        np.fill_diagonal(kernel, 0)
        cross = kernel_poly(pooled, theirs).mean(axis=1)
        from_a = np.concatenate([np.ones(mine_a.sum(), bool), np.zeros(mine_b.sum(), bool)])
        pooled_trials = np.concatenate([trial_of_a[mine_a], trial_of_b[mine_b]])
        gaps.append(np.concatenate([kid_gap((from_a ^ chunk[:, pooled_trials]).astype(np.float64), kernel, cross)
                                    for chunk in np.array_split(swaps, max(1, len(swaps) // KID_TEST_CHUNK))]))
        weights.append(mine_a.sum())
    if not gaps:   # no category with two images on each side: no MMD^2 to estimate
        return {"kid_difference": None, "p_value": None, "trials": len(trial_categories)}
    gap = np.average(np.stack(gaps), axis=0, weights=weights)
    noise = 1e-12 * max(1.0, np.abs(gap).max())   # float64 rounding: two sets of the same images tie, p = 1
    extreme = np.sum(np.abs(gap[1:]) >= abs(gap[0]) - noise)
    return {"kid_difference": float(gap[0]), "p_value": float((1 + extreme) / (1 + rounds)),
            "trials": len(trial_categories)}


def reference_items(item_category, per_category, seed=0):
    """(item ids, their categories): up to `per_category` real items of each category, drawn at random."""
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(item_category == c))[:per_category]
              for c in np.unique(item_category[item_category >= 0])]
    ids = torch.as_tensor(np.sort(np.concatenate(chosen)))
    return ids, torch.as_tensor(item_category)[ids]


class Fidelity:
    """The fidelity of image sets against the real items of their categories (up to REFERENCE_PER_CATEGORY of
    each), through each available extractor; the real items' features are extracted once per extractor, batch by
    batch from the image store."""

    def __init__(self, extractors, store, item_category, seed=0):
        self.extractors, self.seed = extractors, seed
        ids, self.reference_categories = reference_items(np.asarray(item_category), REFERENCE_PER_CATEGORY, seed)
        self.reference = {name: torch.cat([extract(extractor, store(batch)) for batch in ids.split(256)])
                          for name, extractor in extractors.items()}
        self._balls = {}

    def balls(self, name, category):
        """(reference features of `category` [R, F], the radius of each one's k-NN ball [R]) under extractor `name`,
        as torch-fidelity's precision draws them (k = PRC_NEIGHBOURHOOD, the item itself not counted)."""
        key = (name, category)
        if key not in self._balls:
            reference = self.reference[name][self.reference_categories == category]
            radii = (torch.cdist(reference, reference).kthvalue(PRC_NEIGHBOURHOOD + 1, dim=1).values
                     if len(reference) > PRC_NEIGHBOURHOOD else torch.full((len(reference),), float("nan")))
            self._balls[key] = reference, radii
        return self._balls[key]

    def realism(self, images, category, name=CLASSIFIER_EXTRACTOR):
        """Per image of `category`, the realism score of Kynkaanniemi et al. (2019) over all the real items of
        `category` in the reference: the largest ratio of a real item's k-NN radius to the image's distance from
        it. At least 1 where the image lies in some real item's k-NN ball, as precision counts it; NaN where the
        category has too few real items."""
        reference, radii = self.balls(name, category)
        if torch.isnan(radii).all():
            return torch.full((len(images),), float("nan"))
        distances = torch.cdist(extract(self.extractors[name], images), reference)
        return (radii / distances.clamp(min=1e-12)).amax(dim=1)

    def realistic(self, images, category, name=CLASSIFIER_EXTRACTOR):
        """Per image, 1 where its realism is at least 1, else 0 (NaN where it is NaN): the per-image form of
        precision, which is its mean over a set."""
        realism = self.realism(images, category, name)
        return torch.where(realism.isnan(), realism, (realism >= 1).to(realism.dtype)).double()

    def kid_test(self, images_a, images_b, trial_categories, name=CLASSIFIER_EXTRACTOR):
        """kid_difference_test of two sources' images [trials, k, 3, S, S] of the same trials (their categories
        [trials]; k may differ between the two) under extractor `name`."""
        trial_of = lambda images: np.repeat(np.arange(len(images)), images.shape[1])
        return kid_difference_test(extract(self.extractors[name], images_a.flatten(0, 1)), trial_of(images_a),
                                   extract(self.extractors[name], images_b.flatten(0, 1)), trial_of(images_b),
                                   trial_categories, self.reference[name], self.reference_categories,
                                   seed=self.seed)

    def __call__(self, images, categories):
        """{extractor name: {metric: value}} of images [N, 3, S, S] in [-1, 1] of categories [N]."""
        return {name: fidelity(extract(extractor, images), categories, self.reference[name],
                               self.reference_categories, self.seed)
                for name, extractor in self.extractors.items()}
