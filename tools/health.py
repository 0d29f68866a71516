"""Two health figures of a trained DVBPR's image network, over every item of its catalogue:

- per CNN-F layer, the share of its units (a conv layer's channels, an fc layer's outputs) that are positive
  after the ReLU for at least one item: a unit that never is ("dead") passes no gradient and adds nothing;
- the number of directions that hold 99% of the variance of the item embeddings Phi(X_i): a K-dim embedding
  that lives in a few directions ranks items by a few visual traits only.

    python tools/health.py --run runs/dvbpr
"""
import json
from dataclasses import dataclass, field

import torch

from common.cli import parse_config, stage_errors
from common.errors import RunError
from common.images import image_store
from dvbpr.run import open_dvbpr_run

VARIANCE_SHARE = 0.99


@dataclass
class HealthConfig:
    run: str = field(default="runs/dvbpr", metadata={"help": "DVBPR run directory (made by python dvbpr/main.py "
                                                             "--out DIR)"})


@torch.no_grad()
def ever_active_units(backbone, store, batch_size=512):
    """{layer name: share of its units positive for at least one item} of a CNN-F backbone (eval mode)."""
    names = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2")
    active = {}

    def hook(name):
        def record(_module, _inputs, output):
            seen = (output > 0).flatten(2).any(2) if output.dim() == 4 else output > 0
            active[name] = active.get(name, False) | seen.any(0)
        return record

    handles = [getattr(backbone, name).register_forward_hook(hook(name)) for name in names]
    try:
        for start in range(0, len(store), batch_size):
            backbone(store(torch.arange(start, min(start + batch_size, len(store)))))
    finally:
        for handle in handles:
            handle.remove()
    return {name: round(active[name].float().mean().item(), 4) for name in names}


def directions_holding(embeddings, share=VARIANCE_SHARE):
    """How many principal directions of the rows of `embeddings` [N, K] hold `share` of their variance."""
    centred = embeddings.double() - embeddings.double().mean(0)
    variance = torch.linalg.svdvals(centred) ** 2
    cumulative = torch.cumsum(variance, 0) / variance.sum()
    return int(torch.searchsorted(cumulative, torch.tensor(share, dtype=cumulative.dtype)).item()) + 1


def health(run_dir):
    """The two figures of the run's kept epoch, as a dict."""
    run = open_dvbpr_run(run_dir, with_model=True)
    if run.config.backbone != "cnn-f":
        raise RunError(f"the unit figures are CNN-F's; the run in {run_dir} has backbone {run.config.backbone}")
    store = image_store(run.dataset, run.config.image_size, run.config.resize_filter, device="cpu")
    return dict(epoch=run.epoch, ever_active=ever_active_units(run.model.backbone.eval(), store),
                directions_99=directions_holding(run.items), k=run.items.shape[1])


def main(argv=None):
    with stage_errors("health"):
        cfg, _ = parse_config(HealthConfig, argv, description=__doc__.split("\n")[0])
        figures = health(cfg.run)
        print(json.dumps(figures))
        return figures


if __name__ == "__main__":
    main()
