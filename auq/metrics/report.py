"""One call that computes every calibration and uncertainty metric that applies."""

from __future__ import annotations

from typing import Any

import numpy as np

from auq.metrics.calibration_error import (
    adaptive_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
)
from auq.metrics.checks import check_same_length
from auq.metrics.detection import (
    aurc,
    error_detection_aupr,
    error_detection_auroc,
    ood_aupr,
    ood_auroc,
)
from auq.metrics.preference import calibration_inputs, uncertainty_values
from auq.metrics.scoring_rules import (
    brier_score,
    negative_log_likelihood,
    negative_log_likelihood_from_logits,
)
from auq.types import DEFAULT_UNCERTAINTY_SCORE, PreferencePrediction
from auq.utils.validation import check_positive_int

__all__ = ["calibration_report"]


def _uncertainty(
    uncertainty: Any, pred: PreferencePrediction | None, ood: Any
) -> tuple[np.ndarray | None, str | None]:
    """The in-distribution scores and the name of the score (None for a plain array)."""
    if uncertainty is None:
        if ood is None:
            return None, None
        if pred is None:
            raise ValueError(
                "ood_uncertainty needs uncertainty (the in-distribution scores) as well"
            )
        uncertainty = DEFAULT_UNCERTAINTY_SCORE
    if isinstance(uncertainty, str):
        if pred is None:
            raise ValueError(
                f"uncertainty={uncertainty!r} names a score of a PreferencePrediction, but "
                "y_prob is an array; pass the prediction as y_prob, or the scores as an array"
            )
        return uncertainty_values("uncertainty", pred, uncertainty)
    return uncertainty_values("uncertainty", uncertainty)


def calibration_report(
    y_true: Any,
    y_prob: Any,
    uncertainty: Any = None,
    *,
    ood_uncertainty: Any = None,
    n_bins: int = 15,
    symmetrize: Any = "auto",
) -> dict[str, Any]:
    """Calibration, scoring-rule and (optionally) uncertainty-quality metrics.

    Parameters
    ----------
    y_true : array-like or Tensor, shape (B,), or None
        Outcomes in {0, 1} (1: the chosen response won). None is allowed when
        ``y_prob`` is a PreferencePrediction: every label is then 1 ("chosen wins").
    y_prob : array-like or Tensor, shape (B,), or PreferencePrediction
        Predicted P(chosen ≻ rejected). A prediction contributes its ``prob``
        (calibrated if it came from ``calibrator.calibrate``) and its float64
        ``logit`` (used for an exact NLL).
    uncertainty : array-like or Tensor, shape (B,), or str, optional
        Larger means less sure: an array, or — with a prediction as ``y_prob`` —
        the name of one of its scores (``"response_std"``, ``"margin_std"``,
        ``"epistemic"``, ``"total"``, ``"aleatoric"``). Adds error-detection
        AUROC/AUPR and AURC with 0/1 losses (computed on the B pairs as given).
    ood_uncertainty : array-like or Tensor, shape (M,), or PreferencePrediction, optional
        The same score on out-of-distribution inputs; a prediction contributes the
        score named by ``uncertainty``, which defaults to ``"response_std"`` when
        ``y_prob`` is a prediction. Adds OOD AUROC/AUPR.
    n_bins : int
        Bins for the binned calibration errors.
    symmetrize : {"auto", True, False}
        Swap-symmetrise the pairs (add ``(1 − p, 1 − y)`` for each) before the
        calibration metrics: ``"auto"`` does so exactly when the labels are all one
        class; ``False`` never, and then refuses one-class labels with the reason.

    Returns
    -------
    dict
        Strict-JSON-able (``json.dumps(report, allow_nan=False)`` works):

        * ``n`` (int, pairs), ``symmetrized`` (bool), ``accuracy`` (on the pairs as
          given; ties count as wrong);
        * ``ece`` (uniform bins, positive class), ``ece_top_label``, ``mce``,
          ``ace`` (equal-mass bins), ``brier``, ``nll`` — on the 2n symmetrised
          pairs when ``symmetrized``;
        * with a prediction: ``calibrator`` (its name or None);
        * with ``uncertainty``: ``uncertainty_score`` (the score's name, None for a
          plain array), ``error_auroc``, ``error_aupr`` (None when every pair is
          right, or every one wrong: no errors to rank) and ``aurc``;
        * with ``ood_uncertainty``: ``ood_auroc``, ``ood_aupr``.
    """
    check_positive_int("n_bins", n_bins)
    inputs = calibration_inputs(y_true, y_prob, symmetrize=symmetrize)
    y, p = inputs.y_true, inputs.y_prob
    pred = inputs.prediction
    nll = (
        negative_log_likelihood_from_logits(y, inputs.logit)
        if inputs.logit is not None
        else negative_log_likelihood(y, p)
    )
    # the predicted winner: logit > 0 for a prediction (exact), p > 0.5 otherwise
    wins = pred.logit.detach().cpu().numpy() > 0 if pred is not None else inputs.pairs_prob > 0.5
    errors = (wins != (inputs.pairs_true == 1)).astype(np.float64)
    report: dict[str, Any] = {
        "n": len(inputs.pairs_true),
        "symmetrized": inputs.symmetrized,
        "accuracy": float(1.0 - errors.mean()),
        "ece": expected_calibration_error(y, p, n_bins),
        "ece_top_label": expected_calibration_error(y, p, n_bins, form="top_label"),
        "mce": maximum_calibration_error(y, p, n_bins),
        "ace": adaptive_calibration_error(y, p, n_bins),
        "brier": brier_score(y, p),
        "nll": nll,
    }
    if pred is not None:
        report["calibrator"] = pred.calibrator
    u, score = _uncertainty(uncertainty, pred, ood_uncertainty)
    if u is None:
        return report
    check_same_length(y_true=inputs.pairs_true, uncertainty=u)
    report["uncertainty_score"] = score
    if errors.min() == errors.max():
        report["error_auroc"] = report["error_aupr"] = None
    else:
        report["error_auroc"] = error_detection_auroc(errors, u)
        report["error_aupr"] = error_detection_aupr(errors, u)
    report["aurc"] = aurc(errors, u)
    if ood_uncertainty is not None:
        if isinstance(ood_uncertainty, PreferencePrediction) and score is None:
            raise ValueError(
                "ood_uncertainty is a PreferencePrediction, so name its score: pass "
                "uncertainty='response_std' (or another score) with a prediction as y_prob"
            )
        u_ood, _ = uncertainty_values(
            "ood_uncertainty",
            ood_uncertainty,
            score if isinstance(ood_uncertainty, PreferencePrediction) else None,
        )
        report["ood_auroc"] = ood_auroc(u, u_ood)
        report["ood_aupr"] = ood_aupr(u, u_ood)
    return report
