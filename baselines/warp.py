"""WARP (Weston et al., IJCAI'11): matrix factorisation (the BPR-MF model) trained with the WARP loss, as LightFM's
`loss="warp"` trains it.

For a positive (u, i), negatives j are drawn one by one until one violates the margin, x_uj > x_ui - 1, or
`max_trials` draws fail. A violator found at draw t means about k = floor((N-1)/t) items outrank i, so its hinge
1 - x_ui + x_uj is weighted by Weston et al.'s L(k) = sum_{r<=k} 1/r, which weights top positions most
(LightFM uses its approximation log k; L(k) ~ log k + 0.577).
Here the draws of a whole batch are made at once ([B, max_trials] negatives) and the first violator per row taken,
which is the same distribution as drawing sequentially.
"""
import torch

from baselines.bpr import BPRMF

MAX_TRIALS = 10  # LightFM's max_sampled default


def harmonic(k):
    """L(k) = 1 + 1/2 + ... + 1/k, for a float tensor k >= 1."""
    return torch.digamma(k + 1) + 0.5772156649015329


def warp_loss(model, users, positives, negatives, reg):
    scores = model(users, torch.cat([positives[:, None], negatives], dim=1))
    positive, negative = scores[:, 0], scores[:, 1:]
    violating = negative > positive[:, None] - 1
    found = violating.any(1)
    first = violating.int().argmax(1)                    # index of the first violating draw
    trials = (first + 1).float()
    weight = harmonic(torch.floor((model.itemnum - 1) / trials).clamp(min=1)) * found
    hinge = 1 - positive + negative.gather(1, first[:, None])[:, 0]
    chosen = torch.stack([positives, negatives.gather(1, first[:, None])[:, 0]], dim=1)
    penalty = model.penalty(users, chosen) * found
    return (weight.detach() * hinge).mean() + reg / 2 * penalty.mean()


def column(ctx):
    return ctx.learned(lambda k: BPRMF(ctx.dataset.usernum, ctx.dataset.itemnum, k), warp_loss,
                       ctx.cfg.warp_max_trials)
