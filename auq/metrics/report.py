"""One call that computes every calibration and uncertainty metric that applies."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from auq.metrics.calibration_error import (
    adaptive_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
)
from auq.metrics.checks import (
    as_binary_labels,
    as_float_array,
    as_probabilities,
    check_same_length,
)
from auq.metrics.detection import (
    aurc,
    error_detection_aupr,
    error_detection_auroc,
    ood_aupr,
    ood_auroc,
)
from auq.metrics.scoring_rules import accuracy, brier_score, negative_log_likelihood

__all__ = ["calibration_report"]


def calibration_report(
    y_true: Any,
    y_prob: Any,
    uncertainty: Any = None,
    *,
    ood_uncertainty: Any = None,
    n_bins: int = 15,
) -> dict[str, float]:
    """Calibration, scoring-rule and (optionally) uncertainty-quality metrics.

    Parameters
    ----------
    y_true : array-like or Tensor, shape (N,)
        Outcomes in {0, 1} (1: the chosen response won).
    y_prob : array-like or Tensor, shape (N,)
        Predicted P(y = 1), e.g. ``PreferencePrediction.prob``.
    uncertainty : array-like or Tensor, shape (N,), optional
        Larger means less sure (e.g. ``pp.epistemic`` or ``pp.total``). Adds
        error-detection AUROC/AUPR and AURC with 0/1 losses.
    ood_uncertainty : array-like or Tensor, shape (M,), optional
        The same score on out-of-distribution inputs; needs ``uncertainty``
        (the in-distribution scores). Adds OOD AUROC/AUPR.
    n_bins : int
        Bins for the binned calibration errors.

    Returns
    -------
    dict of str to float
        ``n``, ``accuracy``, ``ece`` (uniform bins, positive class), ``ece_top_label``,
        ``mce``, ``ace`` (equal-mass bins), ``brier``, ``nll``; with
        ``uncertainty``: ``error_auroc``, ``error_aupr``, ``aurc`` (NaN for the
        first two when every prediction is right, or every one wrong); with
        ``ood_uncertainty``: ``ood_auroc``, ``ood_aupr``.
    """
    y = as_binary_labels("y_true", y_true)
    p = as_probabilities("y_prob", y_prob)
    check_same_length(y_true=y, y_prob=p)
    report: dict[str, float] = {
        "n": float(len(y)),
        "accuracy": accuracy(y, p),
        "ece": expected_calibration_error(y, p, n_bins),
        "ece_top_label": expected_calibration_error(y, p, n_bins, form="top_label"),
        "mce": maximum_calibration_error(y, p, n_bins),
        "ace": adaptive_calibration_error(y, p, n_bins),
        "brier": brier_score(y, p),
        "nll": negative_log_likelihood(y, p),
    }
    if uncertainty is None:
        if ood_uncertainty is not None:
            raise ValueError(
                "ood_uncertainty needs uncertainty (the in-distribution scores) as well"
            )
        return report
    u = as_float_array("uncertainty", uncertainty)
    check_same_length(y_true=y, uncertainty=u)
    errors = ((p > 0.5) != (y == 1)).astype(np.float64)
    if errors.min() == errors.max():
        report["error_auroc"] = report["error_aupr"] = math.nan
    else:
        report["error_auroc"] = error_detection_auroc(errors, u)
        report["error_aupr"] = error_detection_aupr(errors, u)
    report["aurc"] = aurc(errors, u)
    if ood_uncertainty is not None:
        report["ood_auroc"] = ood_auroc(u, ood_uncertainty)
        report["ood_aupr"] = ood_aupr(u, ood_uncertainty)
    return report
