"""Shared machinery: input resolution, swap-symmetrisation, fitted checks, state dicts."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from sklearn.exceptions import NotFittedError

from auq.metrics.checks import as_binary_labels, as_float_array
from auq.types import PreferencePrediction
from auq.utils.validation import check_choice

__all__ = ["BaseCalibrator", "NotFittedError", "resolve_labels", "resolve_margins"]

Source = Literal["logit", "margin_mean"]
SOURCES = ("logit", "margin_mean")
STATE_VERSION = 1


def resolve_margins(margins: Any, source: str = "logit", *, name: str = "margins") -> np.ndarray:
    """Margins as float64, shape (B,), from an array, a tensor or a ``PreferencePrediction``.

    For a ``PreferencePrediction``: ``source="logit"`` takes ``logit(pred.prob)``
    (the predictive probability, which already includes the epistemic spread);
    ``source="margin_mean"`` takes ``pred.margin_mean`` (the point margin).
    """
    if isinstance(margins, PreferencePrediction):
        check_choice("source", source, SOURCES)
        margins = margins.logit if source == "logit" else margins.margin_mean
    return as_float_array(name, margins)


def resolve_labels(labels: Any, n: int, *, name: str = "labels") -> np.ndarray:
    """Labels as float64 0/1, shape (n,); ``None`` means all ones ("chosen wins")."""
    if labels is None:
        return np.ones(n)
    y = as_binary_labels(name, labels)
    if len(y) != n:
        raise ValueError(f"length mismatch: margins has {n}, {name} has {len(y)}")
    return y


class BaseCalibrator:
    """Base class of the point calibrators: margins (logits) in, P(chosen ≻ rejected) out.

    Subclasses set ``min_pairs``, list their constructor options in
    ``_params`` and their fitted attributes in ``_fitted``, and implement
    ``_fit(margins, labels)`` and ``_logit(margins)``.

    Parameters
    ----------
    source : {"logit", "margin_mean"}
        What to read from a :class:`~auq.types.PreferencePrediction`:
        ``logit(pred.prob)`` (default) or ``pred.margin_mean``.
    """

    min_pairs: ClassVar[int] = 2
    _params: ClassVar[tuple[str, ...]] = ("source",)
    _fitted: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, source: Source = "logit") -> None:
        self.source = check_choice("source", source, SOURCES)

    # -- fitting -----------------------------------------------------------------
    def fit(self, margins: Any, labels: Any = None) -> BaseCalibrator:
        """Fit on held-out pairs.

        Parameters
        ----------
        margins : ndarray or Tensor, shape (B,), or PreferencePrediction
            Margins Δ = r(chosen) − r(rejected) (logits of P(chosen ≻ rejected)).
        labels : array-like or Tensor, shape (B,), optional
            1 if the chosen response won, 0 if not; default all ones.

        Returns
        -------
        self
        """
        m = resolve_margins(margins, self.source)
        y = resolve_labels(labels, len(m))
        if len(m) < self.min_pairs:
            raise ValueError(
                f"{type(self).__name__} needs at least {self.min_pairs} pairs to fit, got {len(m)}"
            )
        self._fit(m, y)
        self.n_pairs_ = len(m)
        return self

    def _fit(self, margins: np.ndarray, labels: np.ndarray) -> None:
        raise NotImplementedError

    def _logit(self, margins: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _proba(self, margins: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        return expit(self._logit(margins))

    # -- prediction --------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "n_pairs_"):
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call fit(margins, labels) first"
            )

    def predict_logit(self, margins: Any) -> np.ndarray:
        """Calibrated logits, antisymmetric: ``ℓ(−Δ) = −ℓ(Δ)``.

        Parameters
        ----------
        margins : ndarray or Tensor, shape (B,), or PreferencePrediction

        Returns
        -------
        ndarray, shape (B,)
        """
        self._check_fitted()
        return self._logit(resolve_margins(margins, self.source))

    def transform(self, margins: Any) -> np.ndarray:
        """Alias of :meth:`predict_logit` (calibrated margins), shape (B,)."""
        return self.predict_logit(margins)

    def predict_proba(self, margins: Any) -> np.ndarray:
        """Calibrated P(chosen ≻ rejected), shape (B,), with ``g(−Δ) = 1 − g(Δ)``.

        Parameters
        ----------
        margins : ndarray or Tensor, shape (B,), or PreferencePrediction

        Returns
        -------
        ndarray, shape (B,)
        """
        self._check_fitted()
        return self._proba(resolve_margins(margins, self.source))

    # -- state -------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """JSON-able description: class name, constructor options and fitted values."""
        self._check_fitted()
        fitted = {"n_pairs_": int(self.n_pairs_)}
        for name in self._fitted:
            value = getattr(self, name)
            fitted[name] = value.tolist() if isinstance(value, np.ndarray) else float(value)
        return {
            "class": type(self).__name__,
            "version": STATE_VERSION,
            "params": {name: getattr(self, name) for name in self._params},
            "fitted": fitted,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BaseCalibrator:
        """Rebuild a fitted calibrator from :meth:`get_state` output."""
        if state.get("class") != cls.__name__:
            raise ValueError(
                f"state describes class {state.get('class')!r}, not {cls.__name__!r}; "
                "use auq.calibration.calibrator_from_state to dispatch"
            )
        obj = cls(**state.get("params", {}))
        for name, value in state["fitted"].items():
            setattr(
                obj, name, np.asarray(value, dtype=np.float64) if isinstance(value, list) else value
            )
        return obj

    def __repr__(self) -> str:
        opts = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._params)
        return f"{type(self).__name__}({opts})"
