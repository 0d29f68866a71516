"""Heat maps of what raises a user's score x_ui of an item image, and how faithful they are.

A model here is anything with `score(users [B], images [B, 3, S, S]) -> [B]` (DVBPR: theta_u . Phi(X_i); the
region-attention model of attention/). Every map is [B, S, S], non-negative, on the model's input pixels:

    gradcam    Grad-CAM (Captum's LayerGradCam) on the backbone's `last_conv_map`: CNN-F's conv5 map before the
               last pool (2 x 2 at 32 px), a ResNet's layer4; ViT has no convolutional map and is refused.
               Upsampled bilinearly; ReLU of the channel-weighted map.
    ig         integrated gradients (Captum) from a mid-grey image, summed over colour channels; positive part.
    occlusion  the score drop when a grey patch (a quarter of the side, stride half a patch; Captum's Occlusion)
               covers each pixel, averaged over the patches that cover it; positive part.
    attention  the attention model's a_u(r) over its regions, upsampled bilinearly.

Grey is 0 in the model's [-1, 1] input, the same for the baseline, the patch and the deletion curve; a white
baseline would give every white background pixel zero attribution by construction.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion
from tqdm import tqdm

from common.errors import ConfigError

HEAT_MAP_METHODS = ("gradcam", "ig", "occlusion", "attention")
DELETION_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class UserScore(nn.Module):
    """Captum's forward function: images first (what is attributed), the users as an additional argument."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, users):
        return self.model.score(users, images)


def applicable_methods(model):
    """The methods that can explain `model`, in HEAT_MAP_METHODS order."""
    has_map = getattr(model.backbone, "last_conv_map", None) is not None
    return [m for m in HEAT_MAP_METHODS if (m != "gradcam" or has_map)
            and (m != "attention" or hasattr(model, "attention_map"))]


def check_method(model, method):
    if method not in HEAT_MAP_METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(HEAT_MAP_METHODS)}")
    if method not in applicable_methods(model):
        why = {"gradcam": f"its backbone ({type(model.backbone).__name__}) has no convolutional map (ViT's are "
                          "tokens)",
               "attention": "it has no attention: give a run of attention/main.py"}[method]
        raise ConfigError(f"--method {method} cannot explain this model: {why}; use one of "
                          f"{', '.join(applicable_methods(model))}")


def heat_maps(model, method, users, images, ig_steps=32, patch=None):
    """[B, S, S] non-negative heat of each row's image for that row's user."""
    check_method(model, method)
    side = images.shape[-1]
    forward = UserScore(model)
    if method == "gradcam":
        cam = LayerGradCam(forward, model.backbone.last_conv_map).attribute(
            images, additional_forward_args=(users,), relu_attributions=True)
        return LayerAttribution.interpolate(cam, (side, side), "bilinear")[:, 0].detach()
    if method == "ig":
        attributions = IntegratedGradients(forward).attribute(
            images, torch.zeros_like(images), additional_forward_args=(users,), n_steps=ig_steps,
            internal_batch_size=max(len(images), 64))
        return attributions.sum(dim=1).clamp(min=0).detach()
    if method == "occlusion":
        patch = patch or max(1, side // 4)
        stride = max(1, patch // 2)
        drops = Occlusion(forward).attribute(images, sliding_window_shapes=(3, patch, patch),
                                             strides=(3, stride, stride), baselines=0.0,
                                             additional_forward_args=(users,), perturbations_per_eval=16)
        return drops.mean(dim=1).clamp(min=0).detach()
    with torch.no_grad():
        maps = model.attention_map(users, images)
    return F.interpolate(maps[:, None], (side, side), mode="bilinear")[:, 0]


def explain_items(model, store, method, users, items, settings):
    """(heat [n, S, S], scores [n]) of each item for the user in the same place, in batches of
    settings.batch_size with a progress bar; `store(item ids)` gives the model's input images."""
    heat, scores = [], []
    batches = range(0, len(items), settings.batch_size)
    for start in tqdm(batches, desc=f"{method} heat maps", unit="batch", leave=False, disable=len(batches) < 2):
        images = store(items[start:start + settings.batch_size])
        user_ids = users[start:start + settings.batch_size].to(images.device)
        heat.append(heat_maps(model, method, user_ids, images, settings.ig_steps, settings.occlusion_patch).cpu())
        with torch.no_grad():
            scores.append(model.score(user_ids, images).cpu())
    return torch.cat(heat), torch.cat(scores)


def garment_heat_share(heat, masks):
    """[B]: the share of each map's heat on the garment; a map with no heat counts as spread evenly."""
    total = heat.flatten(1).sum(1)
    on_garment = (heat * masks).flatten(1).sum(1)
    area = masks.flatten(1).float().mean(1)
    return torch.where(total > 0, on_garment / total.clamp(min=1e-12), area)


def salience_order(heat, generator):
    """[B, S*S] pixel indices, most heat first; ties (e.g. the zeros) in random order, not raster order."""
    flat = heat.flatten(1)
    shuffle = torch.rand(flat.shape, generator=generator).argsort(dim=1).to(flat.device)
    ranks = flat.gather(1, shuffle).argsort(dim=1, descending=True, stable=True)
    return shuffle.gather(1, ranks)


@torch.no_grad()
def deletion_curve(model, users, images, order, fractions=DELETION_FRACTIONS):
    """[B, len(fractions)]: the score with the first `fraction` of each image's pixels in `order` greyed."""
    batch, _, side, _ = images.shape
    scores = []
    for fraction in fractions:
        keep = torch.ones(batch, side * side, device=images.device)
        keep.scatter_(1, order[:, :round(fraction * side * side)], 0.0)
        scores.append(model.score(users, images * keep.view(batch, 1, side, side)))
    return torch.stack(scores, dim=1)
