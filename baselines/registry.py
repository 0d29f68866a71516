"""Every method of Table III, by name: its column label, how it runs, and whether it needs the pre-trained
visual features. The command line's choices, the table's columns (in this order) and the dispatch all come from
here: adding a method is one file (its model and a `run(ctx) -> Selection`, ctx being baselines.train.Context)
and one line below."""
from dataclasses import dataclass
from typing import Callable

from baselines import (
    attention_method,
    bpr,
    dvbpr_method,
    fm,
    ncf,
    poprank,
    rand,
    vbpr,
    visrank,
    warp,
)


@dataclass(frozen=True)
class Method:
    label: str
    run: Callable
    visual: bool = False


METHODS = {
    "rand": Method("RAND", rand.run),
    "poprank": Method("PopRank", poprank.run),
    "warp": Method("WARP", warp.run),
    "bpr-mf": Method("BPR-MF", bpr.run),
    "gmf": Method("GMF", ncf.run_gmf),
    "mlp": Method("MLP", ncf.run_mlp),
    "visrank": Method("VisRank", visrank.run, visual=True),
    "fm": Method("FM", fm.run, visual=True),
    "vbpr": Method("VBPR", vbpr.run, visual=True),
    "attention": Method("Attention", attention_method.column),
    "dvbpr": Method("DVBPR", dvbpr_method.column),
}
