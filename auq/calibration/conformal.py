"""Split-conformal intervals for rewards and margins, and a conformal decision rule for pairs.

Guarantee
---------
Fit on n calibration points, predict on a new one. If the n + 1 points
(prediction, target) are *exchangeable* — drawn i.i.d. from one distribution
is enough; a distribution shift between calibration and test data, or reusing
the model's training data for calibration, breaks it — then

    1 − α  ≤  P(y ∈ [lower, upper])  <  1 − α + 1 / (n + 1)

(the upper bound needs continuous scores without ties). The probability is
*marginal*: over the calibration draw and the test point, not conditional on
a particular input. It holds for any model, calibrated or not; a bad model
just gets wide intervals. The scores are ``|y − μ|`` or, with a predicted
scale σ, ``|y − μ| / σ`` (normalised, so intervals adapt to the predicted
uncertainty), and the quantile is the ⌈(n + 1)(1 − α)⌉-th smallest score.

Decisions on preference pairs
-----------------------------
:func:`interval_decisions` says "chosen ≻ rejected" (+1) when a margin interval
lies above 0, "rejected ≻ chosen" (−1) when it lies below, and abstains (0)
otherwise; with a conformal margin interval (targets: true margins, e.g. gold
rewards in the testbed) a wrong non-abstaining decision needs the true margin
outside its interval, so ``P(wrong decision) ≤ α``.

:class:`ConformalPreference` needs only binary labels: conformal prediction sets
for the winner with the score ``1 − p̂(winner)`` (LAC / THR). It decides when the
set holds one response, abstains when it holds both, and again
``P(decided and wrong) ≤ α`` (a wrong decision requires the winner outside the
set). The error rate *among decisions* is at most ``α / P(decide)``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from auq.calibration.base import (
    SOURCES,
    PosthocEstimator,
    Source,
    resolve_labels,
    resolve_margins,
)
from auq.metrics.checks import as_float_array, check_same_length
from auq.types import PreferencePrediction, RewardPrediction
from auq.utils.validation import check_choice, check_probability

__all__ = [
    "ConformalInterval",
    "ConformalPreference",
    "conformal_quantile",
    "interval_decisions",
    "min_calibration_size",
]


def min_calibration_size(alpha: float) -> int:
    """Smallest n for which ``⌈(n + 1)(1 − α)⌉ ≤ n`` (a finite conformal quantile)."""
    check_probability("alpha", alpha, inclusive=False)
    return max(1, math.ceil((1 - alpha) / alpha - 1e-9))


def conformal_quantile(scores: Any, alpha: float) -> float:
    """The ⌈(n + 1)(1 − α)⌉-th smallest of n calibration scores.

    Parameters
    ----------
    scores : array-like or Tensor, shape (n,)
    alpha : float in (0, 1)
        Target miscoverage.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If ``n < min_calibration_size(alpha)`` (the quantile would be infinite).
    """
    alpha = check_probability("alpha", alpha, inclusive=False)
    s = as_float_array("scores", scores)
    n = len(s)
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)
    if k > n:
        raise ValueError(
            f"alpha={alpha:g} needs at least {min_calibration_size(alpha)} calibration points "
            f"for a finite conformal quantile, got {n}"
        )
    return float(np.partition(s, k - 1)[k - 1])


def interval_decisions(lower: Any, upper: Any) -> np.ndarray:
    """+1 where the margin interval lies above 0, −1 where below, 0 (abstain) otherwise.

    Parameters
    ----------
    lower, upper : array-like or Tensor, shape (B,)

    Returns
    -------
    ndarray of int, shape (B,)
    """
    lo = as_float_array("lower", lower)
    hi = as_float_array("upper", upper)
    check_same_length(lower=lo, upper=hi)
    return np.where(lo > 0, 1, np.where(hi < 0, -1, 0)).astype(np.int64)


def _mean_and_scale(pred: Any, scale: Any, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(pred, RewardPrediction):
        mean, default_scale = pred.mean, pred.total_var.sqrt()
    elif isinstance(pred, PreferencePrediction):
        mean, default_scale = pred.margin_mean, pred.margin_std
    else:
        mean, default_scale = pred, None
    mu = as_float_array(name, mean)
    scale = default_scale if scale is None else scale
    if scale is None:
        return mu, None
    sd = as_float_array("scale", scale)
    check_same_length(**{name: mu, "scale": sd})
    if (sd <= 0).any():
        raise ValueError(f"scale must be positive, got {int((sd <= 0).sum())} non-positive entries")
    return mu, sd


class ConformalInterval(PosthocEstimator):
    """Split-conformal interval ``μ ± q·σ`` (or ``μ ± q`` without a scale).

    Parameters
    ----------
    alpha : float in (0, 1)
        Miscoverage; intervals cover with probability ≥ 1 − α.

    Attributes
    ----------
    quantile_ : float
        ``q``, the conformal quantile of the calibration scores.
    normalized_ : bool
        Whether scores were divided by a predicted scale (then ``predict_interval``
        needs one too).
    n_calibration_ : int

    Notes
    -----
    ``pred_mean`` may be a :class:`~auq.types.RewardPrediction` (mean and
    ``sqrt(total_var)`` as scale) or a :class:`~auq.types.PreferencePrediction`
    (``margin_mean`` and ``margin_std``); an explicit ``scale`` overrides.
    """

    _fitted: ClassVar[tuple[str, ...]] = ("quantile_", "normalized_", "n_calibration_")
    _fit_call: ClassVar[str] = "fit(pred_mean, y_true)"

    def __init__(self, *, alpha: float = 0.1) -> None:
        self.alpha = alpha
        self._check_options()

    def _check_options(self) -> None:
        check_probability("alpha", self.alpha, inclusive=False)

    def fit(self, pred_mean: Any, y_true: Any, *, scale: Any = None) -> ConformalInterval:
        """Compute the quantile on calibration data.

        Parameters
        ----------
        pred_mean : array-like or Tensor, shape (n,), or a prediction object
        y_true : array-like or Tensor, shape (n,)
            True rewards or margins.
        scale : array-like or Tensor, shape (n,), optional
            Predicted standard deviation (positive).

        Returns
        -------
        self
        """
        mu, sd = _mean_and_scale(pred_mean, scale, "pred_mean")
        y = as_float_array("y_true", y_true)
        check_same_length(pred_mean=mu, y_true=y)
        scores = np.abs(y - mu) if sd is None else np.abs(y - mu) / sd
        self.quantile_ = conformal_quantile(scores, self.alpha)
        self.normalized_ = sd is not None
        self.n_calibration_ = len(y)
        return self

    def predict_interval(
        self, pred_mean: Any, *, scale: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Intervals for new predictions.

        Parameters
        ----------
        pred_mean : array-like or Tensor, shape (N,), or a prediction object
        scale : array-like or Tensor, shape (N,), optional
            Required exactly when the fit used a scale.

        Returns
        -------
        lower, upper : ndarray, shape (N,)
        """
        self._check_fitted()
        mu, sd = _mean_and_scale(pred_mean, scale, "pred_mean")
        if self.normalized_ and sd is None:
            raise ValueError("scale is required: this ConformalInterval was fitted with a scale")
        if not self.normalized_ and sd is not None:
            raise ValueError("scale must be None: this ConformalInterval was fitted without one")
        half = self.quantile_ if sd is None else self.quantile_ * sd
        return mu - half, mu + half

    def decide(self, pred_mean: Any, *, scale: Any = None) -> np.ndarray:
        """Decisions in {+1, 0, −1} from margin intervals (see :func:`interval_decisions`)."""
        return interval_decisions(*self.predict_interval(pred_mean, scale=scale))


class ConformalPreference(PosthocEstimator):
    """Conformal decision rule for pairs with binary labels.

    Calibration scores ``−(2y − 1)·ℓ`` (a monotone image of ``1 − p̂(winner)``
    with ``p̂ = σ(ℓ)``) give a conformal quantile ``t``; the prediction set for
    the winner contains "chosen" iff ``ℓ ≥ −t`` and "rejected" iff ``ℓ ≤ t``.
    The rule decides ``sign(ℓ)`` when ``|ℓ| > τ = max(t, 0)`` — the interval
    ``[ℓ − τ, ℓ + τ]`` excludes 0 — and abstains otherwise. It is
    swap-equivariant (``decision(−ℓ) = −decision(ℓ)``), so labels that are all
    1 need no symmetrisation.

    Parameters
    ----------
    alpha : float in (0, 1)
        Bound on ``P(decided and wrong)``.
    source : {"logit", "margin_mean"}
        What to read from a PreferencePrediction: ``pred.logit`` (default) or
        ``pred.margin_mean``.

    Attributes
    ----------
    quantile_ : float
        ``t``, in logit units.
    threshold_ : float
        ``τ = max(t, 0)``: abstain when ``|ℓ| ≤ τ`` (confidence ≤ σ(τ)).
    n_calibration_ : int
    """

    _fitted: ClassVar[tuple[str, ...]] = ("quantile_", "threshold_", "n_calibration_")
    _fit_call: ClassVar[str] = "fit(margins, labels)"

    def __init__(self, *, alpha: float = 0.1, source: Source = "logit") -> None:
        self.alpha = alpha
        self.source = source
        self._check_options()

    def _check_options(self) -> None:
        check_probability("alpha", self.alpha, inclusive=False)
        check_choice("source", self.source, SOURCES)

    def fit(self, margins: Any, labels: Any = None) -> ConformalPreference:
        """Compute the threshold on calibration pairs.

        Parameters
        ----------
        margins : ndarray or Tensor, shape (n,), or PreferencePrediction
            Logits of P(chosen ≻ rejected) — calibrated or not.
        labels : array-like or Tensor, shape (n,), optional
            1 if the chosen response won; default all ones.

        Returns
        -------
        self
        """
        m = resolve_margins(margins, self.source)
        y = resolve_labels(labels, len(m))
        self.quantile_ = conformal_quantile(-(2 * y - 1) * m, self.alpha)
        self.threshold_ = max(self.quantile_, 0.0)
        self.n_calibration_ = len(m)
        return self

    def predict(self, margins: Any) -> np.ndarray:
        """Decisions: +1 chosen ≻ rejected, −1 rejected ≻ chosen, 0 abstain.

        Parameters
        ----------
        margins : ndarray or Tensor, shape (B,), or PreferencePrediction

        Returns
        -------
        ndarray of int, shape (B,)
        """
        self._check_fitted()
        m = resolve_margins(margins, self.source)
        return (np.sign(m) * (np.abs(m) > self.threshold_)).astype(np.int64)
