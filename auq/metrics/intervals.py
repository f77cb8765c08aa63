"""Metrics for interval predictions (reward bounds ``r ± β·u``, margin intervals).

In the spirit of RewardUQ (lasgroup/rewarduq): a pair is *confident* when its
interval for the margin Δ = r(chosen) − r(rejected) excludes 0; it is
confident-true when the interval lies on the side of the actual winner and
confident-false otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from auq.metrics.calibration_error import _bin_statistics
from auq.metrics.checks import (
    as_binary_labels,
    as_float_array,
    as_probabilities,
    check_same_length,
)
from auq.utils.validation import check_positive_int

__all__ = ["bound_calibration", "confident_rates", "preference_bound_calibration_error"]


def _bounds(lower_name: str, lower: Any, upper_name: str, upper: Any) -> tuple[np.ndarray, ...]:
    lo = as_float_array(lower_name, lower)
    hi = as_float_array(upper_name, upper)
    check_same_length(**{lower_name: lo, upper_name: hi})
    crossed = lo > hi
    if crossed.any():
        raise ValueError(
            f"{lower_name} must not exceed {upper_name}; {int(crossed.sum())} of {len(lo)} "
            "intervals are crossed"
        )
    return lo, hi


def confident_rates(
    margin_lower: Any,
    margin_upper: Any,
    y_true: Any = None,
    *,
    margin: Any = None,
) -> dict[str, float]:
    """Rates of confident-true and confident-false pairs.

    Parameters
    ----------
    margin_lower, margin_upper : array-like or Tensor, shape (B,)
        Interval for each pair's margin Δ (e.g. ``r_c,lower − r_r,upper`` and
        ``r_c,upper − r_r,lower``, or a conformal interval).
    y_true : array-like or Tensor, shape (B,), optional
        1 if the chosen response won, 0 if the rejected one did; defaults to
        all ones (the usual "chosen wins" data set).
    margin : array-like or Tensor, shape (B,), optional
        Point prediction of Δ; adds the unconfident-true/-false rates.

    Returns
    -------
    dict
        ``confident_true``: fraction of pairs whose interval excludes 0 on the
        winner's side; ``confident_false``: on the loser's side;
        ``confident``: their sum; with ``margin`` also ``unconfident_true`` and
        ``unconfident_false`` (interval contains 0, point prediction right /
        wrong). All fractions of all B pairs.
    """
    lo, hi = _bounds("margin_lower", margin_lower, "margin_upper", margin_upper)
    y = np.ones_like(lo) if y_true is None else as_binary_labels("y_true", y_true)
    check_same_length(margin_lower=lo, y_true=y)
    win = y == 1
    right = np.where(win, lo > 0, hi < 0)  # interval entirely on the winner's side
    wrong = np.where(win, hi < 0, lo > 0)
    out = {
        "confident_true": float(right.mean()),
        "confident_false": float(wrong.mean()),
        "confident": float((right | wrong).mean()),
    }
    if margin is not None:
        m = as_float_array("margin", margin)
        check_same_length(margin_lower=lo, margin=m)
        correct = np.where(win, m > 0, m < 0)
        unsure = ~(right | wrong)
        out["unconfident_true"] = float((unsure & correct).mean())
        out["unconfident_false"] = float((unsure & ~correct).mean())
    return out


def bound_calibration(y_true: Any, lower: Any, upper: Any) -> dict[str, float]:
    """How often lower and upper bounds on a real-valued target hold.

    Use with gold rewards (the testbed) or gold margins; for a ``1 − α``
    two-sided interval expect ``coverage ≈ 1 − α`` and each one-sided rate
    ``≈ 1 − α/2``.

    Parameters
    ----------
    y_true : array-like or Tensor, shape (N,)
        True rewards (or margins).
    lower, upper : array-like or Tensor, shape (N,)

    Returns
    -------
    dict
        ``lower_holds`` = mean(lower ≤ y), ``upper_holds`` = mean(y ≤ upper),
        ``coverage`` = mean(lower ≤ y ≤ upper), ``mean_width`` = mean(upper − lower).
    """
    y = as_float_array("y_true", y_true)
    lo, hi = _bounds("lower", lower, "upper", upper)
    check_same_length(y_true=y, lower=lo)
    return {
        "lower_holds": float(np.mean(lo <= y)),
        "upper_holds": float(np.mean(y <= hi)),
        "coverage": float(np.mean((lo <= y) & (y <= hi))),
        "mean_width": float(np.mean(hi - lo)),
    }


def preference_bound_calibration_error(
    y_true: Any, prob_lower: Any, prob_upper: Any, n_bins: int = 20
) -> dict[str, float]:
    """One-sided calibration errors of lower/upper bounds on P(chosen ≻ rejected).

    A lower bound is violated in a bin when its mean exceeds the observed
    frequency, an upper bound when it falls below it (RewardUQ's ELCE/EUCE).
    Equal-width bins on [0, 1], binned by the bound itself.

    Parameters
    ----------
    y_true : array-like or Tensor, shape (B,)
        Outcomes in {0, 1}.
    prob_lower, prob_upper : array-like or Tensor, shape (B,)
        E.g. ``σ(margin_lower)`` and ``σ(margin_upper)``.
    n_bins : int

    Returns
    -------
    dict
        ``elce``/``mlce``: expected/maximum lower-bound violation,
        ``euce``/``muce``: the same for the upper bound.
    """
    check_positive_int("n_bins", n_bins)
    y = as_binary_labels("y_true", y_true)
    lo = as_probabilities("prob_lower", prob_lower)
    hi = as_probabilities("prob_upper", prob_upper)
    _bounds("prob_lower", lo, "prob_upper", hi)
    check_same_length(y_true=y, prob_lower=lo)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = {}
    for key, bound, sign in (("l", lo, 1.0), ("u", hi, -1.0)):
        curve = _bin_statistics(bound, y, edges)
        violation = np.maximum(sign * (curve.confidence - curve.accuracy), 0.0)
        out[f"e{key}ce"] = float(np.nansum(curve.weights * violation))
        out[f"m{key}ce"] = float(np.nanmax(violation))
    return out
