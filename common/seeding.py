"""Seeds. Each stage draws its batches from seeds derived from (seed, epoch or step), or keeps its sampler's state,
so that a run resumes exactly under any number of ranks. Draws inside a training step (a diffusion model's
timesteps and noise, DiffAugment's) come from torch's generators, whose state the GAN's checkpoint keeps: such a
run resumes exactly under the same number of ranks."""
import random

import numpy as np
import torch

from common.errors import CheckpointError
from common.safe_pickle import describe_value


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def derived_seed(*keys):
    """A seed made from several integers (e.g. seed, step, rank), distinct for distinct keys."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def torch_rng_state(device):
    """torch's generator states for a checkpoint: the CPU's, and on CUDA `device`'s."""
    state = {"cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_torch_rng_state(state, device, source):
    """Set torch's generators to `state` (torch_rng_state's); one that is not theirs is refused naming `source`."""
    try:
        torch.set_rng_state(state["cpu"])
        if torch.device(device).type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], device)
    except (KeyError, TypeError, RuntimeError):
        raise CheckpointError(f"{source}: its random generator state is {describe_value(state)}, not torch's "
                              "(the file was edited or is corrupted)") from None
