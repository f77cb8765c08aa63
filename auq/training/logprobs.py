"""Per-sequence log-probabilities of responses under a causal language model.

:func:`collate_sequences` packs B (prompt ids, response ids) into one right-padded
:class:`SequenceBatch`; :func:`sequence_logps` runs the model once over it and
sums ``log p(token | prefix)`` over the response tokens, giving the (B,) inputs of
:mod:`auq.training.losses`.

Right padding keeps every real token at the position it has unpadded, so GPT-2
style absolute positions need no ``position_ids``, and causal attention never
lets a real token see a pad.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch import Tensor

from auq.utils.validation import check_choice

__all__ = ["REDUCTIONS", "SequenceBatch", "collate_sequences", "sequence_logps"]

#: ``reduction`` values of :func:`sequence_logps`
REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class SequenceBatch:
    """B prompt + response sequences, right-padded to a common length L.

    Attributes
    ----------
    input_ids : LongTensor, shape (B, L)
        Prompt tokens, then response tokens, then padding.
    attention_mask : LongTensor, shape (B, L)
        1 on real tokens, 0 on padding.
    response_mask : BoolTensor, shape (B, L)
        True on response tokens: the ones whose log-probability counts.
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor

    def __post_init__(self) -> None:
        shape = self.input_ids.shape
        if len(shape) != 2:
            raise ValueError(f"input_ids must have shape (B, L), got {tuple(shape)}")
        for name in ("attention_mask", "response_mask"):
            other = getattr(self, name).shape
            if other != shape:
                raise ValueError(
                    f"{name} has shape {tuple(other)} but input_ids has shape {tuple(shape)}"
                )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_response_tokens(self) -> Tensor:
        """Response tokens per sequence, LongTensor shape (B,)."""
        return self.response_mask.sum(dim=1)

    def to(self, device: torch.device | str) -> SequenceBatch:
        """The same batch on ``device`` (a new object; this one is frozen)."""
        return SequenceBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            response_mask=self.response_mask.to(device),
        )


def collate_sequences(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
) -> SequenceBatch:
    """Concatenate each prompt with its response and right-pad them into one batch.

    Parameters
    ----------
    prompt_ids : sequence of B sequences of int
        Each prompt's token ids (at least one: the first response token needs a prefix).
    response_ids : sequence of B sequences of int
        Each response's token ids (at least one).
    pad_token_id : int
        Written on padding positions (masked out; any valid id will do, e.g. EOS).

    Returns
    -------
    SequenceBatch
        L = the longest prompt + response.

    Raises
    ------
    ValueError
        Lists of different lengths, an empty prompt or response (the message names
        the index), or a ``pad_token_id`` that is not an int ≥ 0.
    """
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int | np.integer):
        raise ValueError(
            f"pad_token_id must be an int >= 0, got {pad_token_id!r} (a tokenizer without a "
            "pad token can pad with its eos_token_id: padding is masked out)"
        )
    if pad_token_id < 0:
        raise ValueError(f"pad_token_id must be an int >= 0, got {pad_token_id!r}")
    if len(prompt_ids) != len(response_ids):
        raise ValueError(
            f"prompt_ids has {len(prompt_ids)} sequences but response_ids has "
            f"{len(response_ids)}; they must pair up"
        )
    n = len(prompt_ids)
    if n == 0:
        raise ValueError("collate_sequences needs at least one sequence, got none")
    p_len = np.fromiter(map(len, prompt_ids), dtype=np.int64, count=n)  # (B,)
    r_len = np.fromiter(map(len, response_ids), dtype=np.int64, count=n)  # (B,)
    for name, lengths in (("prompt_ids", p_len), ("response_ids", r_len)):
        empty = np.flatnonzero(lengths == 0)
        if empty.size:
            raise ValueError(
                f"{name}[{int(empty[0])}] is empty ({empty.size} empty in all); every "
                "sequence needs at least one prompt token and one response token"
            )
    total = p_len + r_len  # (B,)
    flat = np.fromiter(
        chain.from_iterable(chain.from_iterable(zip(prompt_ids, response_ids, strict=True))),
        dtype=np.int64,
        count=int(total.sum()),
    )  # (T,) every sequence, prompt then response, one after the other
    width = int(total.max())
    pos = np.arange(width)[None, :]  # (1, L)
    real = pos < total[:, None]  # (B, L)
    ids = np.full((n, width), pad_token_id, dtype=np.int64)
    ids[real] = flat  # row-major fill: row b gets its own tokens, in order
    response = real & (pos >= p_len[:, None])  # (B, L)
    return SequenceBatch(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(real.astype(np.int64)),
        response_mask=torch.from_numpy(response),
    )


def sequence_logps(model: Any, batch: SequenceBatch, *, reduction: str = "sum") -> Tensor:
    """Log-probability of each response given its prompt, ``Σ_t log p(y_t | x, y_<t)``.

    One forward pass of the causal LM over the batch; the logits at position
    ``t − 1`` score the token at ``t`` (shift by one). Only response positions
    are turned into log-probabilities, as ``logit[token] − logsumexp(logits)`` in
    float32 (whatever the model's dtype), so no (B, L, V) log-softmax is built:
    the extra memory is (T, V) for the T response tokens of the batch.

    Parameters
    ----------
    model : transformers causal LM
        Called as ``model(input_ids=..., attention_mask=..., use_cache=False)``;
        must return ``.logits`` of shape (B, L, V). Gradients flow when enabled.
    batch : SequenceBatch
        On the model's device (see :meth:`SequenceBatch.to`); right-padded, with
        response tokens only after position 0.
    reduction : {"sum", "mean"}
        Sum over response tokens (DPO), or their mean (the length-normalised
        log-probabilities TRL feeds IPO).

    Returns
    -------
    Tensor, float32, shape (B,)
    """
    check_choice("reduction", reduction, REDUCTIONS)
    if bool(batch.response_mask[:, 0].any()):
        raise ValueError(
            "batch.response_mask is True at position 0, where a token has no prefix to be "
            "scored from; every sequence needs at least one prompt token"
        )
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
    ).logits  # (B, L, V)
    scored = batch.response_mask[:, 1:]  # (B, L-1): token t+1 is scored by logits at t
    labels = batch.input_ids[:, 1:][scored]  # (T,)
    picked = logits[:, :-1][scored].float()  # (T, V), response positions only
    token_logps = picked.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(picked, -1)
    rows = scored.nonzero()[:, 0]  # (T,) which sequence each scored token belongs to
    n = batch.input_ids.shape[0]
    out = torch.zeros(n, dtype=torch.float32, device=token_logps.device)
    out = out.index_add(0, rows, token_logps)  # (B,)
    if reduction == "mean":
        out = out / scored.sum(dim=1).clamp_min(1).to(out.dtype)
    return out
