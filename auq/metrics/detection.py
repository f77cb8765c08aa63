"""How well an uncertainty score ranks errors and out-of-distribution inputs.

Convention: a larger ``uncertainty`` means "less sure". Any score works — the
predictive entropy, the epistemic mutual information, a margin standard
deviation, ``1 − max(p, 1 − p)``. Wherever a function takes uncertainty scores it
also takes a :class:`~auq.types.PreferencePrediction` together with ``score=``,
the name of one of its scores (default ``"response_std"``, the responses' own
epistemic std, which detects out-of-distribution pairs best).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from auq.metrics.checks import as_binary_labels, as_float_array, check_same_length
from auq.metrics.preference import uncertainty_values

__all__ = [
    "aurc",
    "error_detection_aupr",
    "error_detection_auroc",
    "ood_aupr",
    "ood_auroc",
    "risk_coverage_curve",
]


def _errors_scores(
    errors: Any, uncertainty: Any, score: str | None
) -> tuple[np.ndarray, np.ndarray]:
    e = as_binary_labels("errors", errors)
    u, _ = uncertainty_values("uncertainty", uncertainty, score)
    check_same_length(errors=e, uncertainty=u)
    if e.min() == e.max():
        kind = "errors" if e[0] == 1 else "correct predictions"
        raise ValueError(
            f"errors must contain both errors (1) and correct predictions (0); got only {kind}"
        )
    return e, u


def error_detection_auroc(errors: Any, uncertainty: Any, *, score: str | None = None) -> float:
    """AUROC of ``uncertainty`` for telling the model's errors from its hits.

    0.5 means the score carries no information about errors, 1.0 that every
    error is more uncertain than every correct prediction.

    Parameters
    ----------
    errors : array-like or Tensor, shape (N,)
        1 where the prediction was wrong (e.g. ``(p > 0.5) != y``), else 0.
    uncertainty : array-like or Tensor, shape (N,), or PreferencePrediction
    score : str, optional
        The prediction's score to use (default ``"response_std"``); only with a
        prediction.

    Returns
    -------
    float in [0, 1]
    """
    from sklearn.metrics import roc_auc_score

    e, u = _errors_scores(errors, uncertainty, score)
    return float(roc_auc_score(e, u))


def error_detection_aupr(errors: Any, uncertainty: Any, *, score: str | None = None) -> float:
    """Average precision of ``uncertainty`` for retrieving errors (errors positive).

    The chance level is the error rate.

    Parameters
    ----------
    errors : array-like or Tensor, shape (N,)
    uncertainty : array-like or Tensor, shape (N,), or PreferencePrediction
    score : str, optional
        As in :func:`error_detection_auroc`.

    Returns
    -------
    float in [0, 1]
    """
    from sklearn.metrics import average_precision_score

    e, u = _errors_scores(errors, uncertainty, score)
    return float(average_precision_score(e, u))


def _ood(
    in_uncertainty: Any, ood_uncertainty: Any, score: str | None
) -> tuple[np.ndarray, np.ndarray]:
    u_in, _ = uncertainty_values("in_uncertainty", in_uncertainty, score)
    u_out, _ = uncertainty_values("ood_uncertainty", ood_uncertainty, score)
    labels = np.concatenate([np.zeros(len(u_in)), np.ones(len(u_out))])
    return labels, np.concatenate([u_in, u_out])


def ood_auroc(in_uncertainty: Any, ood_uncertainty: Any, *, score: str | None = None) -> float:
    """AUROC of the uncertainty for telling out-of-distribution inputs from in-distribution ones.

    Parameters
    ----------
    in_uncertainty : array-like or Tensor, shape (N_in,), or PreferencePrediction
    ood_uncertainty : array-like or Tensor, shape (N_ood,), or PreferencePrediction
    score : str, optional
        The predictions' score (default ``"response_std"``); only with predictions.

    Returns
    -------
    float in [0, 1]
    """
    from sklearn.metrics import roc_auc_score

    labels, scores = _ood(in_uncertainty, ood_uncertainty, score)
    return float(roc_auc_score(labels, scores))


def ood_aupr(in_uncertainty: Any, ood_uncertainty: Any, *, score: str | None = None) -> float:
    """Average precision for retrieving out-of-distribution inputs (OOD positive).

    Parameters
    ----------
    in_uncertainty : array-like or Tensor, shape (N_in,), or PreferencePrediction
    ood_uncertainty : array-like or Tensor, shape (N_ood,), or PreferencePrediction
    score : str, optional
        The predictions' score (default ``"response_std"``); only with predictions.

    Returns
    -------
    float in [0, 1]
    """
    from sklearn.metrics import average_precision_score

    labels, scores = _ood(in_uncertainty, ood_uncertainty, score)
    return float(average_precision_score(labels, scores))


def risk_coverage_curve(
    losses: Any, uncertainty: Any, *, score: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Selective risk as predictions are accepted from most to least certain.

    Ties in ``uncertainty`` are resolved in expectation over a random order
    (the cumulative loss is interpolated linearly across a tied group), so
    the curve does not depend on how the input happens to be ordered.

    Parameters
    ----------
    losses : array-like or Tensor, shape (N,)
        Per-prediction loss: 0/1 errors, or any non-negative loss (e.g. NLL).
    uncertainty : array-like or Tensor, shape (N,), or PreferencePrediction
    score : str, optional
        The prediction's score (default ``"response_std"``); only with a prediction.

    Returns
    -------
    coverage : ndarray, shape (N,)
        ``k / N`` for ``k = 1 … N``.
    risk : ndarray, shape (N,)
        Mean loss of the ``k`` most certain predictions.
    """
    loss = as_float_array("losses", losses)
    u, _ = uncertainty_values("uncertainty", uncertainty, score)
    n = check_same_length(losses=loss, uncertainty=u)
    order = np.argsort(u, kind="stable")
    u_sorted, l_sorted = u[order], loss[order]
    _, group, group_size = np.unique(u_sorted, return_inverse=True, return_counts=True)
    group_mean = np.bincount(group, weights=l_sorted) / group_size
    cumulative = np.cumsum(group_mean[group])
    k = np.arange(1, n + 1)
    return k / n, cumulative / k


def aurc(losses: Any, uncertainty: Any, *, score: str | None = None) -> float:
    """Area under the risk–coverage curve (Geifman et al., 2019); lower is better.

    The mean of the selective risks at coverages ``1/N, 2/N, …, 1``.

    Parameters
    ----------
    losses : array-like or Tensor, shape (N,)
    uncertainty : array-like or Tensor, shape (N,), or PreferencePrediction
    score : str, optional
        As in :func:`risk_coverage_curve`.

    Returns
    -------
    float
    """
    _, risk = risk_coverage_curve(losses, uncertainty, score=score)
    return float(risk.mean())
