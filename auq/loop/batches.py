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
    ``batch_size`` (one per update); the last batch of an epoch may be smaller. With
    ``accumulation`` > 1 each batch is cut further into that many micro-batches, and
    ``batches(i)`` is micro-batch ``i`` (what the loop asks for).

    Parameters
    ----------
    n_items : int
    batch_size : int
    seed : int
    shuffle : bool
        False: every epoch in order.
    accumulation : int
        Micro-batches per batch (the loop's ``gradient_accumulation_steps``); must
        divide ``batch_size``.

    Examples
    --------
    >>> batches = EpochBatches(10, 4, seed=0)
    >>> batches.per_epoch, len(batches(2))   # batch 2 is the last of epoch 0
    (3, 2)
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        accumulation: int = 1,
    ):
        if n_items < 1:
            raise ValueError(f"no items to train on (n_items={n_items})")
        if batch_size % accumulation:
            raise ValueError(
                f"batch_size={batch_size} must be a multiple of the gradient accumulation "
                f"steps ({accumulation})"
            )
        self.n_items, self.batch_size, self.shuffle = n_items, batch_size, shuffle
        self.accumulation = accumulation
        self.per_epoch = math.ceil(n_items / batch_size)
        self._generator = torch.Generator().manual_seed(seed)
        self._orders: list[Tensor] = []

    def epoch_of(self, update: int) -> int:
        """The epoch of update ``update`` (0-based)."""
        return update // self.per_epoch

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
        update, part = divmod(index, self.accumulation)
        epoch, within = divmod(update, self.per_epoch)
        micro = self.batch_size // self.accumulation
        start = within * self.batch_size + part * micro
        end = min(start + micro, (within + 1) * self.batch_size)
        return self._order(epoch)[start:end]


def rank_slice(n: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous share of ``n`` items (sizes differ by at most one)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))
