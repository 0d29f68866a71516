"""Condition consistency of a conditional generator: the share of its images that a category classifier trained
on real items (common/classifier.py) assigns to the category they were generated for."""
import torch

from gan.model import generate


def condition_consistency(probs, conditioned_on, num_categories):
    """The fraction of images whose most likely category is the one they were generated for.

    Returns {"per_category": [fraction for c in 0..C-1] (None where no image was conditioned on c), "overall": float}.
    """
    hits = (probs.argmax(dim=1) == conditioned_on).float()
    per_category = [hits[conditioned_on == c].mean().item() if (conditioned_on == c).any() else None
                    for c in range(num_categories)]
    return {"per_category": per_category, "overall": hits.mean().item()}


def measure_consistency(model, classifier, num_categories, per_category, device, bf16=True, seed=0):
    """Condition consistency of a ConditionalGenerator's samples (z from its prior, in inference mode, as in
    sampling mode)."""
    rng = torch.Generator(device=device).manual_seed(seed)
    labels = torch.arange(num_categories, device=device).repeat_interleave(per_category)
    probs = torch.cat([classifier.predict_proba(generate(model, model.sample_z(len(chunk), device, rng), chunk, bf16))
                       for chunk in labels.split(256)])
    return condition_consistency(probs, labels, num_categories)


def format_consistency(result):
    per = " ".join(f"{c}:{p:.2f}" for c, p in enumerate(result["per_category"]))
    return f"condition consistency {result['overall']:.3f} (per category {per})"
