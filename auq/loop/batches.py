"""Data positions that survive a restart: micro-batch ``i`` is a function of ``i`` and the seed.

The loop asks its data for micro-batch ``i`` (counted from the start of the run,
across epochs); a resumed run asks for the micro-batches after the checkpoint's
position and gets exactly what the uninterrupted run got.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["EpochBatches", "rank_slice"]


class EpochBatches:
    """Shuffled minibatches of ``n_items`` indices, epoch after epoch.

    Each epoch is a fresh permutation from one generator seeded with ``seed`` (the
    permutation of epoch ``e`` is the ``e``-th draw), cut into batches of
    ``batch_size``; the last batch of an epoch may be smaller.

    Parameters
    ----------
    n_items : int
    batch_size : int
    seed : int
    shuffle : bool
        False: every epoch in order.

    Examples
    --------
    >>> batches = EpochBatches(10, 4, seed=0)
    >>> batches.per_epoch, len(batches(2))   # micro-batch 2 is the last of epoch 0
    (3, 2)
    """

    def __init__(self, n_items: int, batch_size: int, *, seed: int = 0, shuffle: bool = True):
        if n_items < 1:
            raise ValueError(f"no items to train on (n_items={n_items})")
        self.n_items, self.batch_size, self.shuffle = n_items, batch_size, shuffle
        self.per_epoch = math.ceil(n_items / batch_size)
        self._generator = torch.Generator().manual_seed(seed)
        self._orders: list[Tensor] = []

    def epoch_of(self, index: int) -> int:
        """The epoch of micro-batch ``index``."""
        return index // self.per_epoch

    def _order(self, epoch: int) -> Tensor:
        while len(self._orders) <= epoch:
            order = (
                torch.randperm(self.n_items, generator=self._generator)
                if self.shuffle
                else torch.arange(self.n_items)
            )
            self._orders.append(order)
        return self._orders[epoch]

    def __call__(self, index: int) -> Tensor:
        """Item indices of micro-batch ``index``, shape (b,)."""
        epoch, within = divmod(index, self.per_epoch)
        start = within * self.batch_size
        return self._order(epoch)[start : start + self.batch_size]


def rank_slice(n: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous share of ``n`` items (sizes differ by at most one)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))
