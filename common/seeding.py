"""Seeds. No global random state goes into a checkpoint: each stage draws its batches from seeds derived from
(seed, epoch or step), or keeps its sampler's state, so that a run resumes exactly under any number of ranks."""
import random

import numpy as np
import torch


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def derived_seed(*keys):
    """A seed made from several integers (e.g. seed, step, rank), distinct for distinct keys."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])
