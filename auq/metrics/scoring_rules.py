"""Proper scoring rules and accuracy for binary (preference) predictions."""

from __future__ import annotations

from typing import Any

import numpy as np

from auq.metrics.checks import (
    as_binary_labels,
    as_float_array,
    as_probabilities,
    check_same_length,
)

__all__ = [
    "accuracy",
    "brier_score",
    "negative_log_likelihood",
    "negative_log_likelihood_from_logits",
]


def _pair(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = as_binary_labels("y_true", y_true)
    p = as_probabilities("y_prob", y_prob)
    check_same_length(y_true=y, y_prob=p)
    return y, p


def brier_score(y_true: Any, y_prob: Any) -> float:
    """Mean squared error ``mean((p − y)²)`` of the positive-class probability.

    Parameters
    ----------
    y_true : array-like or Tensor, shape (N,)
        Outcomes in {0, 1}.
    y_prob : array-like or Tensor, shape (N,)
        Predicted P(y = 1).

    Returns
    -------
    float in [0, 1]
    """
    y, p = _pair(y_true, y_prob)
    return float(np.mean((p - y) ** 2))


def negative_log_likelihood(y_true: Any, y_prob: Any, *, eps: float = 1e-12) -> float:
    """Mean Bernoulli negative log-likelihood in nats, from probabilities.

    Probabilities are clipped to ``[eps, 1 − eps]`` so that a confident wrong
    prediction costs ``−log(eps)`` (≈ 27.6 nats) instead of infinity. Prefer
    :func:`negative_log_likelihood_from_logits` when margins are available.

    Parameters
    ----------
    y_true : array-like or Tensor, shape (N,)
    y_prob : array-like or Tensor, shape (N,)
    eps : float

    Returns
    -------
    float ≥ 0
    """
    y, p = _pair(y_true, y_prob)
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def negative_log_likelihood_from_logits(y_true: Any, logits: Any) -> float:
    """Mean Bernoulli negative log-likelihood of ``σ(logits)``, computed stably.

    Uses ``softplus(−s·ℓ)`` with ``s = 2y − 1``, exact for any finite logit
    (no clipping, no overflow).

    Parameters
    ----------
    y_true : array-like or Tensor, shape (N,)
    logits : array-like or Tensor, shape (N,)
        Margins Δ, or any logit of P(y = 1).

    Returns
    -------
    float ≥ 0
    """
    y = as_binary_labels("y_true", y_true)
    z = as_float_array("logits", logits)
    check_same_length(y_true=y, logits=z)
    return float(np.mean(np.logaddexp(0.0, -(2.0 * y - 1.0) * z)))


def accuracy(y_true: Any, y_prob: Any) -> float:
    """Fraction of predictions ``1[p > 0.5]`` that equal ``y_true``.

    A tie ``p = 0.5`` predicts 0, so a tied pair labelled "chosen wins" counts
    as an error (as :attr:`auq.types.PreferencePrediction.correct` does).

    Parameters
    ----------
    y_true : array-like or Tensor, shape (N,)
    y_prob : array-like or Tensor, shape (N,)

    Returns
    -------
    float in [0, 1]
    """
    y, p = _pair(y_true, y_prob)
    return float(np.mean((p > 0.5) == (y == 1)))
