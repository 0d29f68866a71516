"""RAND: every user's items in a random order (expected AUC 0.5)."""
import torch


class Random:
    def __init__(self, itemnum, device="cpu", seed=0):
        self.itemnum, self.device, self.seed = itemnum, torch.device(device), seed

    def scorer(self):
        rng = torch.Generator(self.device).manual_seed(self.seed)
        return lambda users: torch.rand(len(users), self.itemnum, device=self.device, generator=rng)


def column(ctx):
    return ctx.unlearned(Random(ctx.dataset.itemnum, ctx.device, ctx.cfg.seed))
