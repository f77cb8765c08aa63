"""Preference-pair inputs for metrics and plots: predictions, score names, swap-symmetrisation.

Preference data sets are usually laid out so that every label says "chosen wins"
(``y = 1``). Binned calibration errors, NLL and Brier of such one-class labels only
measure how close ``p`` is to 1; adding each pair swapped — ``(1 − p, 0)`` — makes
them the pair-symmetric figures (a pair and its swap are the same comparison).
:func:`calibration_inputs` does that ("auto": exactly when the labels are one
class), and :func:`uncertainty_values` reads a named uncertainty score from a
:class:`~auq.types.PreferencePrediction`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from auq.metrics.checks import (
    as_binary_labels,
    as_float_array,
    as_probabilities,
    check_same_length,
)
from auq.types import DEFAULT_UNCERTAINTY_SCORE, UNCERTAINTY_SCORES, PreferencePrediction
from auq.utils.validation import check_choice

__all__ = [
    "SYMMETRIZE_CHOICES",
    "CalibrationInputs",
    "calibration_inputs",
    "symmetrize_probabilities",
    "uncertainty_values",
]

SYMMETRIZE_CHOICES = ("auto", True, False)


def _expit(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def symmetrize_probabilities(y_prob: Any, y_true: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Each pair also presented swapped: probabilities and labels, each shape (2B,).

    The probability-level counterpart of :func:`auq.data.symmetrize` (which swaps
    margins): ``(concat([p, 1 − p]), concat([y, 1 − y]))``.

    Parameters
    ----------
    y_prob : array-like or Tensor, shape (B,), or PreferencePrediction
        P(chosen ≻ rejected); for a prediction the swapped side is ``σ(−logit)``
        (exact, no ``1 − p`` round-off).
    y_true : array-like or Tensor, shape (B,), optional
        1 where the chosen response won; default all ones.

    Returns
    -------
    y_prob, y_true : ndarray, shape (2B,)
    """
    if isinstance(y_prob, PreferencePrediction):
        logit = y_prob.logit.detach().cpu().numpy()
        p, q = _expit(logit), _expit(-logit)
    else:
        p = as_probabilities("y_prob", y_prob)
        q = 1.0 - p
    y = np.ones_like(p) if y_true is None else as_binary_labels("y_true", y_true)
    check_same_length(y_true=y, y_prob=p)
    return np.r_[p, q], np.r_[y, 1.0 - y]


class CalibrationInputs(NamedTuple):
    """Labels and probabilities ready for the calibration metrics.

    Attributes
    ----------
    y_true, y_prob : ndarray, shape (M,)
        M = 2B when ``symmetrized`` (each pair also swapped), else B.
    logit : ndarray or None, shape (M,)
        Log-odds of ``y_prob`` when the input was a PreferencePrediction.
    symmetrized : bool
    pairs_true, pairs_prob : ndarray, shape (B,)
        The pairs as given (for accuracy and error detection).
    prediction : PreferencePrediction or None
    """

    y_true: np.ndarray
    y_prob: np.ndarray
    logit: np.ndarray | None
    symmetrized: bool
    pairs_true: np.ndarray
    pairs_prob: np.ndarray
    prediction: PreferencePrediction | None


def calibration_inputs(y_true: Any, y_prob: Any, *, symmetrize: Any = "auto") -> CalibrationInputs:
    """Validate labels and probabilities, and swap-symmetrise them when asked.

    Parameters
    ----------
    y_true : array-like or Tensor, shape (B,), or None
        Outcomes in {0, 1} (1: the chosen response won). May be None when
        ``y_prob`` is a PreferencePrediction: every label is then 1.
    y_prob : array-like or Tensor, shape (B,), or PreferencePrediction
        P(chosen ≻ rejected); a prediction contributes ``prob`` and ``logit``.
    symmetrize : {"auto", True, False}
        ``"auto"`` symmetrises exactly when the labels are all one class (the usual
        "chosen wins" layout); ``True`` always; ``False`` never, and then one-class
        labels are refused (their calibration figures would not measure calibration).

    Returns
    -------
    CalibrationInputs

    Raises
    ------
    ValueError
        For bad labels or probabilities, ``y_true=None`` with an array, or
        one-class labels with ``symmetrize=False``.
    """
    if not (isinstance(symmetrize, bool) or (isinstance(symmetrize, str) and symmetrize == "auto")):
        raise ValueError(
            f"symmetrize={symmetrize!r} is not supported; valid choices: 'auto', True, False"
        )
    pred = y_prob if isinstance(y_prob, PreferencePrediction) else None
    if pred is not None:
        logit = pred.logit.detach().cpu().double().numpy()
        p = _expit(logit)
        if len(p) == 0:
            raise ValueError("y_prob is empty")
        y = np.ones_like(p) if y_true is None else as_binary_labels("y_true", y_true)
    else:
        if y_true is None:
            raise ValueError(
                "y_true is required unless y_prob is a PreferencePrediction "
                "(whose labels default to 'chosen wins')"
            )
        logit = None
        y = as_binary_labels("y_true", y_true)
        p = as_probabilities("y_prob", y_prob)
    check_same_length(y_true=y, y_prob=p)
    one_class = bool(y.min() == y.max())
    if symmetrize is False and one_class:
        raise ValueError(
            f"y_true holds one class only (every label is {int(y[0])}), so ECE, NLL and "
            f"Brier would measure how close p is to {int(y[0])}, not calibration; use "
            "symmetrize='auto' or True to add each pair swapped, (1 − p, 1 − y)"
        )
    sym = symmetrize is True or (symmetrize == "auto" and one_class)
    if not sym:
        return CalibrationInputs(y, p, logit, False, y, p, pred)
    q = _expit(-logit) if logit is not None else 1.0 - p
    return CalibrationInputs(
        np.r_[y, 1.0 - y],
        np.r_[p, q],
        None if logit is None else np.r_[logit, -logit],
        True,
        y,
        p,
        pred,
    )


def uncertainty_values(
    name: str, value: Any, score: str | None = None
) -> tuple[np.ndarray, str | None]:
    """An uncertainty score as float64, shape (N,), and the name of the score used.

    Parameters
    ----------
    name : str
        Argument name for messages.
    value : array-like or Tensor, shape (N,), or PreferencePrediction
    score : str, optional
        For a prediction: one of ``UNCERTAINTY_SCORES`` (default
        ``"response_std"``). For an array it must be None (an array has no named
        scores; the returned name is then None).

    Returns
    -------
    values : ndarray, shape (N,)
    score : str or None
    """
    if isinstance(value, PreferencePrediction):
        score = DEFAULT_UNCERTAINTY_SCORE if score is None else score
        check_choice("score", score, UNCERTAINTY_SCORES)
        return as_float_array(name, value.uncertainty(score)), score
    if score is not None:
        raise ValueError(
            f"score={score!r} names a score of a PreferencePrediction, but {name} is an "
            "array; pass the prediction, or drop score"
        )
    return as_float_array(name, value), None
