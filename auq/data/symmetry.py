"""Swap-symmetrisation of pairwise margins and labels (used by every calibrator)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["symmetrize"]


def symmetrize(margins: Any, labels: Any = None) -> tuple[Any, Any]:
    """Swap-symmetrise pairwise data for calibration.

    Each pair (Δ, y) is also presented swapped, (−Δ, 1 − y). For an antisymmetric
    model, P(b ≻ a) = 1 − P(a ≻ b), the swapped pair carries the same information:
    a temperature fit σ(Δ / T) (no intercept) gets exactly twice the likelihood and
    the same T. But a calibration set built the usual way has every label equal to 1
    ("chosen wins"): Platt scaling's intercept then absorbs "always 1" and diverges,
    and isotonic regression or scikit-learn's ``LogisticRegression`` see one class
    only. The symmetrised set is balanced, has both classes, and so still calibrates.

    Parameters
    ----------
    margins : np.ndarray or torch.Tensor, shape (B,)
        Margins (logits) Δ = r(chosen) − r(rejected).
    labels : array-like, shape (B,), optional
        1 where the first response won, 0 where it lost; default all ones.

    Returns
    -------
    margins, labels : shape (2B,)
        ``concat([Δ, −Δ])`` and ``concat([y, 1 − y])``, in the type of ``margins``.
    """
    import torch

    is_torch = isinstance(margins, torch.Tensor)
    m = margins if is_torch else np.asarray(margins, dtype=np.float64)
    if m.ndim != 1:
        raise ValueError(f"margins must have shape (B,), got {tuple(m.shape)}")
    if labels is None:
        y = torch.ones_like(m) if is_torch else np.ones_like(m)
    else:
        y = torch.as_tensor(labels, device=m.device) if is_torch else np.asarray(labels)
    if tuple(y.shape) != tuple(m.shape):
        raise ValueError(f"labels must have shape {tuple(m.shape)}, got {tuple(y.shape)}")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("labels must be 0 or 1")
    flipped = ~y if y.dtype in (torch.bool, np.bool_) else 1 - y
    cat = torch.cat if is_torch else np.concatenate
    return cat([m, -m]), cat([y, flipped])
