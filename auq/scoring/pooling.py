"""One vector per sequence from per-token hidden states.

Plain backbones (``AutoModel``) pool with the attention mask, so the side the
batch is padded on does not matter:

* ``"last"`` — the last real token (decoders);
* ``"mean"`` — the mean over real tokens (encoders);
* ``"cls"`` — the first token.

Reward checkpoints that score every position (decoder ``*ForSequenceClassification``)
are read where Hugging Face reads them, :func:`last_non_pad_index`: the rightmost
token whose id is not ``config.pad_token_id``. With TRL's setup (pad = EOS, texts
ending in EOS) that is the token *before* the trailing EOS run.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["last_non_pad_index", "pool_hidden_states"]


def pool_hidden_states(hidden: Tensor, mask: Tensor, pooling: str) -> Tensor:
    """Pool per-token states with the attention mask.

    Parameters
    ----------
    hidden : Tensor, shape (B, L, d)
    mask : Tensor, shape (B, L)
        1 for real tokens, 0 for padding (either side).
    pooling : {"last", "mean", "cls"}

    Returns
    -------
    Tensor, shape (B, d)
    """
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling != "last":
        raise ValueError(
            f"pooling={pooling!r} is not supported; valid choices: 'last', 'mean', 'cls'"
        )
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * mask).argmax(-1)  # (B,) last real token, left or right padding
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def last_non_pad_index(
    input_ids: Tensor, pad_token_id: int | None, attention_mask: Tensor | None = None
) -> Tensor:
    """Where a Hugging Face sequence-classification decoder reads its score.

    Parameters
    ----------
    input_ids : Tensor, shape (B, L)
    pad_token_id : int or None
        ``model.config.pad_token_id``; None reads the last position (as HF does
        for a batch of one).
    attention_mask : Tensor, shape (B, L), optional
        Also excludes masked positions (a no-op when padding uses ``pad_token_id``).

    Returns
    -------
    Tensor of int64, shape (B,)
        The rightmost position whose id is not ``pad_token_id`` (0 when there is none).
    """
    b, length = input_ids.shape
    if pad_token_id is None:
        return torch.full((b,), length - 1, dtype=torch.long, device=input_ids.device)
    keep = input_ids != pad_token_id
    if attention_mask is not None:
        keep = keep & attention_mask.bool()
    positions = torch.arange(length, device=input_ids.device)
    return (positions * keep.to(torch.long)).argmax(-1)
