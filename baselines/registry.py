"""Every method of Table III, by name: its column label, the function that makes its column, and whether it needs
the pre-trained visual features. The command line's choices, the table's columns (in this order) and the dispatch
all come from here: adding a method is one file (its model and a `column(ctx) -> Selection`, ctx being
baselines.train.Context) and one line below."""
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
    column: Callable
    visual: bool = False


METHODS = {
    "rand": Method("RAND", rand.column),
    "poprank": Method("PopRank", poprank.column),
    "warp": Method("WARP", warp.column),
    "bpr-mf": Method("BPR-MF", bpr.column),
    "gmf": Method("GMF", ncf.gmf_column),
    "mlp": Method("MLP", ncf.mlp_column),
    "visrank": Method("VisRank", visrank.column, visual=True),
    "fm": Method("FM", fm.column, visual=True),
    "vbpr": Method("VBPR", vbpr.column, visual=True),
    "attention": Method("Attention", attention_method.column),
    "dvbpr": Method("DVBPR", dvbpr_method.column),
}
