"""The BPR criterion (Rendle et al., UAI'09; the paper's eq. 4 with x_uij = x_ui - x_uj) and the user factors it
trains, shared by DVBPR, the region-attention recommender and the BPR-family baselines."""
import torch
import torch.nn as nn
import torch.nn.functional as F

THETA_INITS = ("uniform", "centred")


def bpr_loss(x_uij, reduction="sum"):
    """-ln sigma(x_uij) over the triplets, to minimise: summed, as the original DVBPR (DVBPR/main.py of the original
    repository), or averaged ("mean"), as Rendle's SGD and the baselines here."""
    terms = -F.logsigmoid(x_uij)
    return terms.sum() if reduction == "sum" else terms.mean()


def init_theta(usernum, k, how="uniform"):
    """theta_u [usernum, K]: U[0, 1)/100 as the original drew it, or that draw centred on 0 ("centred"), so that
    users do not all start along one all-positive direction."""
    theta = torch.rand(usernum, k) / 100
    return nn.Parameter(theta - 0.005 if how == "centred" else theta)
