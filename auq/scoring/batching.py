"""Length-aware micro-batching and right-padded collation of tokenised texts.

:func:`token_budget_batches` sorts items by length and packs them into
micro-batches whose padded size ``rows × longest`` stays under a token budget;
the caller scatters results back with the returned indices, so the caller's order
is kept while padding stays minimal. :func:`collate` right-pads one micro-batch.
(Tokenisation and the truncation policy: :mod:`auq.scoring.tokenization`.)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from auq.scoring.tokenization import TokenizedTexts

__all__ = ["collate", "token_budget_batches"]


def token_budget_batches(
    lengths: np.ndarray | list[int], *, max_tokens: int, max_batch_size: int | None = None
) -> list[np.ndarray]:
    """Group items into micro-batches of similar length under a padded-token budget.

    Parameters
    ----------
    lengths : array of int, shape (N,)
        Tokens per item.
    max_tokens : int
        Upper bound on ``rows × longest row`` per micro-batch (an item longer than
        the budget gets a micro-batch of its own).
    max_batch_size : int, optional
        Upper bound on rows per micro-batch.

    Returns
    -------
    list of int arrays
        Indices into the input per micro-batch; together a permutation of range(N).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")  # longest first: OOM shows up at once
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, max_tokens // longest)
        if max_batch_size is not None:
            rows = min(rows, max_batch_size)
        batches.append(order[start : start + rows])
        start += rows
    return batches


def collate(
    tokenized: TokenizedTexts,
    indices: np.ndarray | list[int],
    *,
    pad_token_id: int,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Right-pad the selected items into model inputs.

    Returns
    -------
    dict with ``input_ids`` and ``attention_mask`` (and ``token_type_ids``), each (b, L).
    """
    rows = [tokenized.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        input_ids[j, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[j, : len(r)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if tokenized.token_type_ids is not None:
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(indices):
            t = tokenized.token_type_ids[i]
            types[j, : len(t)] = torch.as_tensor(t, dtype=torch.long)
        batch["token_type_ids"] = types
    if device is not None:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return batch
