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
KID_SUBSETS subsets of min(images of c, real items of c, 1000) from each side.
"""
import contextlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor

from common.errors import ConfigError

CLASSIFIER_EXTRACTOR = "category-classifier"
INCEPTION_EXTRACTOR = "inception-v3-compat"
DEFAULT_FID_INCEPTION_WEIGHTS = Path("pretrained/weights-inception-2015-12-05-6726825d.pth")
MAX_WEIGHTS_BYTES = 256 << 20       # the file is 95 MB
KID_SUBSETS, KID_MAX_SUBSET = 100, 1000
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

    def __call__(self, images, categories):
        """{extractor name: {metric: value}} of images [N, 3, S, S] in [-1, 1] of categories [N]."""
        return {name: fidelity(extract(extractor, images), categories, self.reference[name],
                               self.reference_categories, self.seed)
                for name, extractor in self.extractors.items()}
