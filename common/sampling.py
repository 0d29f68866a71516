"""(user, positive, negative) triplets for BPR-style training, as the original DVBPR drew them (its main.py):
u uniform over users, i uniform over u's training items, j uniform over all items, redrawn while it is one of
u's training items (validation and test items can be negatives). An epoch is as many triplets as training
interactions. DVBPR and the BPR-family baselines share this sampler.
"""
import numpy as np

from common.errors import DatasetError


class TripletSampler:
    """Vectorised over any number of triplets; its generator's state goes into a checkpoint, so that a resumed run
    draws the triplets the uninterrupted run would have drawn."""

    def __init__(self, dataset, seed):
        self.indptr, self.items = dataset.train_csr()
        self.usernum, self.itemnum = dataset.usernum, dataset.itemnum
        users = np.repeat(np.arange(self.usernum), np.diff(self.indptr))
        self.train_keys = np.unique(users * self.itemnum + self.items)
        self._check_samplable()
        self.rng = np.random.default_rng(seed)

    def _check_samplable(self):
        distinct = np.bincount(self.train_keys // self.itemnum, minlength=self.usernum)
        if (distinct == 0).any():
            raise DatasetError(f"{(distinct == 0).sum()} users have no training item (e.g. user "
                               f"{np.flatnonzero(distinct == 0)[0]}); every user needs one to draw a positive")
        if (distinct >= self.itemnum).any():
            raise DatasetError(f"user {np.flatnonzero(distinct >= self.itemnum)[0]} has every item in training, "
                               "so no negative can be drawn")

    def is_training_pair(self, users, items):
        """Whether each (user, item) is a training pair; users broadcast against items."""
        keys = users * self.itemnum + items
        found = np.searchsorted(self.train_keys, keys).clip(max=len(self.train_keys) - 1)
        return self.train_keys[found] == keys

    def sample(self, n, negatives=None):
        """users [n], positives [n], negatives [n] (or [n, negatives] when a count is given: WARP's trials,
        NCF's negatives per positive), int64 numpy arrays."""
        users = self.rng.integers(self.usernum, size=n)
        starts = self.indptr[users]
        positives = self.items[starts + self.rng.integers(0, self.indptr[users + 1] - starts)]
        shape = n if negatives is None else (n, negatives)
        drawn = self.rng.integers(self.itemnum, size=shape)
        owners = users if negatives is None else users[:, None].repeat(negatives, axis=1)
        redraw = self.is_training_pair(owners, drawn)
        while redraw.any():
            drawn[redraw] = self.rng.integers(self.itemnum, size=redraw.sum())
            redraw[redraw] = self.is_training_pair(owners[redraw], drawn[redraw])
        return users, positives, drawn

    def state_dict(self):
        return self.rng.bit_generator.state

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state
