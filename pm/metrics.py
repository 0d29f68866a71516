"""Image quality and diversity of Table IV: the Inception Score and one minus the mean pairwise SSIM.

Inception Score (Salimans et al., 2016): IS = exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over the set,
computed on each of `splits` equal parts of a set of images and reported as mean and std over the parts.
p(y|x) comes from torchvision's Inception v3 with the ImageNet weights file download_pretrained_models.sh fetches
(the paper's choice), or, offline, from the catalogue's category classifier (common/classifier.py): an in-domain
score bounded by the number of categories, not comparable with the paper's numbers.
"""
import itertools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from skimage.metrics import structural_similarity

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_SIZE = 299
DEFAULT_INCEPTION_WEIGHTS = Path("pretrained/inception_v3_google-0cc3c7bd.pth")


def inception_score(probs, splits=1):
    """(mean, std) over `splits` parts of exp(mean_x KL(p(y|x) || p(y))); probs [N, classes], rows sum to 1."""
    scores = []
    for part in torch.tensor_split(probs.double(), splits):
        marginal = part.mean(dim=0, keepdim=True)
        kl = torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)  # 0 log 0 = 0
        scores.append(kl.sum(dim=1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def ssim_diversity(images):
    """1 - mean SSIM over all pairs of images [n, 3, S, S] in [-1, 1] (the paper's "Opposite Mean SSIM").

    SSIM with the settings of Wang et al. (2004) as skimage documents them: 11x11 Gaussian window, sigma 1.5.
    """
    arrays = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    similarities = [structural_similarity(a, b, channel_axis=2, data_range=2.0, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False)
                    for a, b in itertools.combinations(arrays, 2)]
    return 1.0 - float(np.mean(similarities))


class ImageNetInception:
    """p(y|x) over ImageNet's 1000 classes from torchvision's Inception v3.

    Images in [-1, 1] are resized to 299 px (bilinear), normalised with ImageNet's mean and std, and the network
    undoes that with transform_input, as torchvision does for the Google weights.
    """

    label = "Inception Score (ImageNet Inception v3)"

    def __init__(self, network, device="cpu", batch_size=64):
        self.network = network.to(device).eval().requires_grad_(False)
        self.device, self.batch_size = torch.device(device), batch_size
        self.mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
        self.std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]

    @classmethod
    def from_weights(cls, path, device="cpu"):
        """Inception v3 with the ImageNet weights at `path` (never downloaded here)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no Inception v3 weights at {path}: run `bash download_pretrained_models.sh "
                                    f"torchvision` (it fetches {DEFAULT_INCEPTION_WEIGHTS})")
        network = torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=True,
                                                  init_weights=False)
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return cls(network, device)

    @torch.no_grad()
    def predict_proba(self, images):
        probs = []
        for batch in images.split(self.batch_size):
            batch = F.interpolate(batch.to(self.device).float(), size=(INCEPTION_SIZE, INCEPTION_SIZE),
                                  mode="bilinear", align_corners=False)
            batch = ((batch + 1) / 2 - self.mean) / self.std
            probs.append(F.softmax(self.network(batch), dim=1).cpu())
        return torch.cat(probs)


class CategoryInception:
    """p(y|x) over the catalogue's categories from the GAN stage's category classifier (offline stand-in)."""

    label = "in-domain Inception Score (category classifier; not comparable with the paper's)"

    def __init__(self, classifier, batch_size=256):
        self.classifier, self.batch_size = classifier, batch_size

    def predict_proba(self, images):
        device = next(self.classifier.parameters()).device
        return torch.cat([self.classifier.predict_proba(batch.to(device)).cpu()
                          for batch in images.split(self.batch_size)])
