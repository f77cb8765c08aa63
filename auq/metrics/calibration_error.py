"""Binned calibration errors and the reliability curve.

Two views of a binary prediction p = P(y = 1) are supported:

``form="positive"``
    confidence ``p``, outcome ``y`` — the positive-class form used by
    torchmetrics' ``BinaryCalibrationError`` (for preference pairs: confidence
    that the chosen response wins, outcome whether it did).
``form="top_label"``
    confidence ``max(p, 1 − p)``, outcome whether the predicted class
    (1 if ``p > 0.5`` else 0, ties to 0 as ``argmax`` does) is correct — the
    form of Guo et al. (2017) and torchmetrics' ``MulticlassCalibrationError``
    with two classes.

Bins are half-open ``[lo, hi)``; a confidence of exactly 1 goes to the last
bin. (torchmetrics puts confidences of exactly 1.0 into an extra bin of their
own; everywhere else the two agree.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from auq.metrics.checks import as_binary_labels, as_probabilities, check_same_length
from auq.utils.validation import check_choice, check_positive_int

__all__ = [
    "ReliabilityCurve",
    "adaptive_calibration_error",
    "expected_calibration_error",
    "maximum_calibration_error",
    "reliability_curve",
]

Strategy = Literal["uniform", "quantile"]
Form = Literal["positive", "top_label"]
STRATEGIES = ("uniform", "quantile")
FORMS = ("positive", "top_label")


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin statistics of a reliability diagram.

    Attributes
    ----------
    confidence : ndarray, shape (n_bins,)
        Mean confidence in each bin (NaN for an empty bin).
    accuracy : ndarray, shape (n_bins,)
        Observed frequency of the outcome in each bin (NaN for an empty bin).
    counts : ndarray of int, shape (n_bins,)
        Number of predictions in each bin.
    edges : ndarray, shape (n_bins + 1,)
        Bin edges; the bins are ``[edges[k], edges[k + 1])``.
    """

    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray
    edges: np.ndarray

    @property
    def gaps(self) -> np.ndarray:
        """``|accuracy − confidence|`` per bin, shape (n_bins,) (NaN where empty)."""
        return np.abs(self.accuracy - self.confidence)

    @property
    def weights(self) -> np.ndarray:
        """Fraction of predictions per bin, shape (n_bins,)."""
        return self.counts / max(int(self.counts.sum()), 1)


def _confidence_outcome(y_true: Any, y_prob: Any, form: str) -> tuple[np.ndarray, np.ndarray]:
    check_choice("form", form, FORMS)
    y = as_binary_labels("y_true", y_true)
    p = as_probabilities("y_prob", y_prob)
    check_same_length(y_true=y, y_prob=p)
    if form == "positive":
        return p, y
    pred = (p > 0.5).astype(np.float64)
    return np.maximum(p, 1.0 - p), (pred == y).astype(np.float64)


def _bin_statistics(conf: np.ndarray, outcome: np.ndarray, edges: np.ndarray) -> ReliabilityCurve:
    n_bins = len(edges) - 1
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / counts
        mean_out = np.bincount(idx, weights=outcome, minlength=n_bins) / counts
    return ReliabilityCurve(mean_conf, mean_out, counts, edges)


def _edges(conf: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    check_positive_int("n_bins", n_bins)
    check_choice("strategy", strategy, STRATEGIES)
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    edges = np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1))
    edges[0], edges[-1] = min(edges[0], 0.0), max(edges[-1], 1.0)
    return np.unique(edges)  # tied quantiles merge bins


def reliability_curve(
    y_true: Any,
    y_prob: Any,
    n_bins: int = 15,
    strategy: Strategy = "uniform",
    *,
    form: Form = "positive",
) -> ReliabilityCurve:
    """Mean confidence, observed frequency and count per bin.

    Parameters
    ----------
    y_true : array-like or Tensor, shape (N,)
        Outcomes in {0, 1} (1: the chosen response won).
    y_prob : array-like or Tensor, shape (N,)
        Predicted P(y = 1).
    n_bins : int
        Number of bins (``"quantile"`` may merge bins with tied edges).
    strategy : {"uniform", "quantile"}
        Equal-width bins on [0, 1] or bins at the quantiles of the confidences.
    form : {"positive", "top_label"}
        See the module docstring.

    Returns
    -------
    ReliabilityCurve
    """
    conf, outcome = _confidence_outcome(y_true, y_prob, form)
    return _bin_statistics(conf, outcome, _edges(conf, n_bins, strategy))


def expected_calibration_error(
    y_true: Any,
    y_prob: Any,
    n_bins: int = 15,
    strategy: Strategy = "uniform",
    *,
    form: Form = "positive",
) -> float:
    """Expected calibration error ``Σ_k (n_k / N) · |acc_k − conf_k|``.

    With ``strategy="uniform"`` and ``form="positive"`` this equals
    ``torchmetrics.classification.BinaryCalibrationError(n_bins, norm="l1")``
    (except for confidences of exactly 1.0, see the module docstring).

    Parameters
    ----------
    y_true : array-like or Tensor, shape (N,)
    y_prob : array-like or Tensor, shape (N,)
    n_bins : int
    strategy : {"uniform", "quantile"}
    form : {"positive", "top_label"}

    Returns
    -------
    float in [0, 1]
    """
    curve = reliability_curve(y_true, y_prob, n_bins, strategy, form=form)
    return float(np.nansum(curve.weights * curve.gaps))


def maximum_calibration_error(
    y_true: Any,
    y_prob: Any,
    n_bins: int = 15,
    strategy: Strategy = "uniform",
    *,
    form: Form = "positive",
) -> float:
    """Largest ``|acc_k − conf_k|`` over the non-empty bins.

    Parameters and binning as in :func:`expected_calibration_error`.

    Returns
    -------
    float in [0, 1]
    """
    curve = reliability_curve(y_true, y_prob, n_bins, strategy, form=form)
    return float(np.nanmax(curve.gaps))


def adaptive_calibration_error(
    y_true: Any, y_prob: Any, n_bins: int = 15, *, form: Form = "positive"
) -> float:
    """ECE over equal-mass bins (Nixon et al., 2019; "aECE" in torch-uncertainty).

    The predictions are sorted by confidence and split into ``n_bins`` groups
    whose sizes differ by at most one (ties may straddle groups, so every bin
    holds the same mass even with repeated confidences).

    Parameters
    ----------
    y_true : array-like or Tensor, shape (N,)
    y_prob : array-like or Tensor, shape (N,)
    n_bins : int
        Capped at N.
    form : {"positive", "top_label"}

    Returns
    -------
    float in [0, 1]
    """
    check_positive_int("n_bins", n_bins)
    conf, outcome = _confidence_outcome(y_true, y_prob, form)
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, min(n_bins, len(conf))):
        total += len(chunk) * abs(outcome[chunk].mean() - conf[chunk].mean())
    return float(total / len(conf))
