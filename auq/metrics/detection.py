"""How well an uncertainty score ranks errors and out-of-distribution inputs.

Convention: a larger ``uncertainty`` means "less sure". Any score works — the
predictive entropy, the epistemic mutual information, a margin standard
deviation, ``1 − max(p, 1 − p)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from auq.metrics.checks import as_binary_labels, as_float_array, check_same_length

__all__ = [
    "aurc",
    "error_detection_aupr",
    "error_detection_auroc",
    "ood_aupr",
    "ood_auroc",
    "risk_coverage_curve",
]


def _errors_scores(errors: Any, uncertainty: Any) -> tuple[np.ndarray, np.ndarray]:
    e = as_binary_labels("errors", errors)
    u = as_float_array("uncertainty", uncertainty)
    check_same_length(errors=e, uncertainty=u)
    if e.min() == e.max():
        kind = "errors" if e[0] == 1 else "correct predictions"
        raise ValueError(
            f"errors must contain both errors (1) and correct predictions (0); got only {kind}"
        )
    return e, u


def error_detection_auroc(errors: Any, uncertainty: Any) -> float:
    """AUROC of ``uncertainty`` for telling the model's errors from its hits.

    0.5 means the score carries no information about errors, 1.0 that every
    error is more uncertain than every correct prediction.

    Parameters
    ----------
    errors : array-like or Tensor, shape (N,)
        1 where the prediction was wrong (e.g. ``(p > 0.5) != y``), else 0.
    uncertainty : array-like or Tensor, shape (N,)

    Returns
    -------
    float in [0, 1]
    """
    from sklearn.metrics import roc_auc_score

    e, u = _errors_scores(errors, uncertainty)
    return float(roc_auc_score(e, u))


def error_detection_aupr(errors: Any, uncertainty: Any) -> float:
    """Average precision of ``uncertainty`` for retrieving errors (errors positive).

    The chance level is the error rate.

    Parameters
    ----------
    errors : array-like or Tensor, shape (N,)
    uncertainty : array-like or Tensor, shape (N,)

    Returns
    -------
    float in [0, 1]
    """
    from sklearn.metrics import average_precision_score

    e, u = _errors_scores(errors, uncertainty)
    return float(average_precision_score(e, u))


def _ood(in_uncertainty: Any, ood_uncertainty: Any) -> tuple[np.ndarray, np.ndarray]:
    u_in = as_float_array("in_uncertainty", in_uncertainty)
    u_out = as_float_array("ood_uncertainty", ood_uncertainty)
    labels = np.concatenate([np.zeros(len(u_in)), np.ones(len(u_out))])
    return labels, np.concatenate([u_in, u_out])


def ood_auroc(in_uncertainty: Any, ood_uncertainty: Any) -> float:
    """AUROC of the uncertainty for telling out-of-distribution inputs from in-distribution ones.

    Parameters
    ----------
    in_uncertainty : array-like or Tensor, shape (N_in,)
    ood_uncertainty : array-like or Tensor, shape (N_ood,)

    Returns
    -------
    float in [0, 1]
    """
    from sklearn.metrics import roc_auc_score

    labels, scores = _ood(in_uncertainty, ood_uncertainty)
    return float(roc_auc_score(labels, scores))


def ood_aupr(in_uncertainty: Any, ood_uncertainty: Any) -> float:
    """Average precision for retrieving out-of-distribution inputs (OOD positive).

    Parameters
    ----------
    in_uncertainty : array-like or Tensor, shape (N_in,)
    ood_uncertainty : array-like or Tensor, shape (N_ood,)

    Returns
    -------
    float in [0, 1]
    """
    from sklearn.metrics import average_precision_score

    labels, scores = _ood(in_uncertainty, ood_uncertainty)
    return float(average_precision_score(labels, scores))


def risk_coverage_curve(losses: Any, uncertainty: Any) -> tuple[np.ndarray, np.ndarray]:
    """Selective risk as predictions are accepted from most to least certain.

    Ties in ``uncertainty`` are resolved in expectation over a random order
    (the cumulative loss is interpolated linearly across a tied group), so
    the curve does not depend on how the input happens to be ordered.

    Parameters
    ----------
    losses : array-like or Tensor, shape (N,)
        Per-prediction loss: 0/1 errors, or any non-negative loss (e.g. NLL).
    uncertainty : array-like or Tensor, shape (N,)

    Returns
    -------
    coverage : ndarray, shape (N,)
        ``k / N`` for ``k = 1 … N``.
    risk : ndarray, shape (N,)
        Mean loss of the ``k`` most certain predictions.
    """
    loss = as_float_array("losses", losses)
    u = as_float_array("uncertainty", uncertainty)
    n = check_same_length(losses=loss, uncertainty=u)
    order = np.argsort(u, kind="stable")
    u_sorted, l_sorted = u[order], loss[order]
    _, group, group_size = np.unique(u_sorted, return_inverse=True, return_counts=True)
    group_mean = np.bincount(group, weights=l_sorted) / group_size
    cumulative = np.cumsum(group_mean[group])
    k = np.arange(1, n + 1)
    return k / n, cumulative / k


def aurc(losses: Any, uncertainty: Any) -> float:
    """Area under the risk–coverage curve (Geifman et al., 2019); lower is better.

    The mean of the selective risks at coverages ``1/N, 2/N, …, 1``.

    Parameters
    ----------
    losses : array-like or Tensor, shape (N,)
    uncertainty : array-like or Tensor, shape (N,)

    Returns
    -------
    float
    """
    _, risk = risk_coverage_curve(losses, uncertainty)
    return float(risk.mean())
