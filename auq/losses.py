"""Pure loss functions for preference learning.

Every function takes margins (logits), never probabilities, and reduces over the
pair axis with optional per-pair weights. A leading member axis ``K`` is kept
separate so an ensemble trains all members in one call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bradley_terry_loss", "centering_penalty", "member_preference_loss"]


def bradley_terry_loss(
    margins: Tensor,
    *,
    target_margin: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Bradley–Terry negative log-likelihood ``-log σ(Δ - m)``.

    Parameters
    ----------
    margins : Tensor, shape (..., B)
        Predicted Δ = r(chosen) − r(rejected); leading axes (e.g. members K) are kept.
    target_margin : Tensor, shape (B,), optional
        Required margin ``m`` per pair (TRL's ``margin`` column, Llama-2 style).
    weight : Tensor, shape (..., B), optional
        Non-negative pair weights (e.g. bootstrap counts of shape (K, B)).
        With ``reduction="mean"`` the loss is ``Σ w·ℓ / Σ w`` per leading index.
    reduction : {"mean", "sum", "none"}

    Returns
    -------
    Tensor, shape (...) for "mean"/"sum", or the shape of ``margins`` for "none".
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be one of 'mean', 'sum', 'none'; got {reduction!r}")
    logits = margins if target_margin is None else margins - target_margin
    loss = F.softplus(-logits)  # = -log σ(logits), stable for large |logits|
    if reduction == "none":
        return loss if weight is None else loss * weight
    if weight is None:
        return loss.mean(-1) if reduction == "mean" else loss.sum(-1)
    total = (loss * weight).sum(-1)
    if reduction == "sum":
        return total
    return total / weight.sum(-1).clamp_min(torch.finfo(loss.dtype).tiny)


def centering_penalty(rewards_chosen: Tensor, rewards_rejected: Tensor) -> Tensor:
    """Mean squared reward, ``mean((r_c + r_r)²)`` per leading index (TRL's centring term).

    Parameters
    ----------
    rewards_chosen, rewards_rejected : Tensor, shape (..., B)

    Returns
    -------
    Tensor, shape (...)
        Pushes rewards towards zero mean so members share an origin and the
        min / variance across members is meaningful (Eisenstein et al., 2023).
    """
    return ((rewards_chosen + rewards_rejected) ** 2).mean(-1)


def member_preference_loss(
    rewards_chosen: Tensor,
    rewards_rejected: Tensor,
    *,
    target_margin: Tensor | None = None,
    weight: Tensor | None = None,
    center_coef: float = 0.0,
) -> Tensor:
    """Bradley–Terry loss plus the optional centring term, per member.

    Parameters
    ----------
    rewards_chosen, rewards_rejected : Tensor, shape (K, B)
    target_margin : Tensor, shape (B,), optional
    weight : Tensor, shape (B,) or (K, B), optional
    center_coef : float

    Returns
    -------
    Tensor, shape (K,)
    """
    loss = bradley_terry_loss(
        rewards_chosen - rewards_rejected, target_margin=target_margin, weight=weight
    )
    if center_coef:
        loss = loss + center_coef * centering_penalty(rewards_chosen, rewards_rejected)
    return loss
