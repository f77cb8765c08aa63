"""Shared machinery: sklearn manners, one JSON state path, input resolution, the base calibrator.

:class:`PosthocEstimator` is the base of every post-hoc object in this wing (point
calibrators, :class:`~auq.calibration.SpreadScaler`, the conformal classes). It
subclasses ``sklearn.base.BaseEstimator`` — so ``get_params``, ``set_params`` and
``sklearn.base.clone`` work — validates options on construction and in
``set_params``, and owns the single serialisation path: ``get_state()`` returns a
strict-JSON dict ``{"class", "version", "params", "fitted"}`` and
``from_state(state)`` rebuilds the fitted object (no pickle).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from auq.metrics.checks import as_binary_labels, as_float_array
from auq.types import PreferencePrediction
from auq.utils.validation import check_choice

__all__ = [
    "BaseCalibrator",
    "NotFittedError",
    "PosthocEstimator",
    "resolve_labels",
    "resolve_margins",
]

Source = Literal["logit", "margin_mean"]
SOURCES = ("logit", "margin_mean")
STATE_VERSION = 1


def resolve_margins(margins: Any, source: str = "logit", *, name: str = "margins") -> np.ndarray:
    """Margins as float64, shape (B,), from an array, a tensor or a ``PreferencePrediction``.

    For a ``PreferencePrediction``: ``source="logit"`` takes ``pred.logit`` (the
    float64 predictive log-odds, which already include the epistemic spread; never
    re-derived from ``pred.prob``); ``source="margin_mean"`` takes ``pred.margin_mean``.
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


def _to_json(owner: str, name: str, value: Any) -> Any:
    """A fitted value as a strict-JSON value (finite floats, lists for arrays)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    arr = np.asarray(value, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{owner}.{name} is not finite ({value!r}); its state is not JSON-able")
    return arr.tolist() if arr.ndim else float(arr)


class PosthocEstimator(BaseEstimator):
    """Base of the post-hoc estimators: sklearn parameters, fitted checks, state, repr.

    Subclasses list their fitted attributes (names ending in ``_``) in ``_fitted``,
    validate their options in ``_check_options`` and say how to fit in ``_fit_call``.
    """

    _fitted: ClassVar[tuple[str, ...]] = ()
    _fit_call: ClassVar[str] = "fit(margins, labels)"

    def _check_options(self) -> None:
        """Validate the constructor options (called by ``__init__`` and ``set_params``)."""

    def set_params(self, **params: Any) -> PosthocEstimator:
        """Set options (scikit-learn style) and validate them; returns ``self``."""
        super().set_params(**params)
        self._check_options()
        return self

    # -- fitted state -------------------------------------------------------------------
    def __sklearn_is_fitted__(self) -> bool:
        return all(hasattr(self, name) for name in self._fitted)

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call {self._fit_call} first"
            )

    def get_state(self) -> dict[str, Any]:
        """Strict-JSON description: class name, state version, options and fitted values.

        ``json.dumps(est.get_state(), allow_nan=False)`` always works; rebuild with
        :meth:`from_state` or :func:`auq.calibration.calibrator_from_state`.
        """
        self._check_fitted()
        owner = type(self).__name__
        return {
            "class": owner,
            "version": STATE_VERSION,
            "params": self.get_params(deep=False),
            "fitted": {name: _to_json(owner, name, getattr(self, name)) for name in self._fitted},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PosthocEstimator:
        """Rebuild a fitted estimator from :meth:`get_state` output."""
        if not isinstance(state, dict) or state.get("class") != cls.__name__:
            got = state.get("class") if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"state describes class {got!r}, not {cls.__name__!r}; "
                "use auq.calibration.calibrator_from_state to dispatch"
            )
        version = state.get("version", STATE_VERSION)
        if not isinstance(version, int) or version > STATE_VERSION:
            raise ValueError(
                f"state version {version!r} is newer than this auq supports ({STATE_VERSION})"
            )
        params = state.get("params", {})
        valid = cls._get_param_names()
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(
                f"state['params'] has unknown option(s) {', '.join(map(repr, unknown))} for "
                f"{cls.__name__}; valid: {', '.join(map(repr, valid))}"
            )
        fitted = state.get("fitted", {})
        missing = [name for name in cls._fitted if name not in fitted]
        if missing:
            raise ValueError(
                f"state['fitted'] lacks {', '.join(map(repr, missing))} for {cls.__name__}"
            )
        obj = cls(**params)
        for name in cls._fitted:
            value = fitted[name]
            setattr(
                obj, name, np.asarray(value, dtype=np.float64) if isinstance(value, list) else value
            )
        return obj

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:
        parts = [f"{k}={v!r}" for k, v in self.get_params(deep=False).items()]
        for name in self._fitted if self.__sklearn_is_fitted__() else ():
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                parts.append(f"{name}=<{value.size} values>")
            elif isinstance(value, float):
                parts.append(f"{name}={value:.4g}")
            else:
                parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


class BaseCalibrator(PosthocEstimator):
    """Base class of the point calibrators: margins (logits) in, P(chosen ≻ rejected) out.

    Subclasses set ``name`` and ``min_pairs``, list their fitted attributes in
    ``_fitted`` (``n_pairs_`` included), and implement ``_fit(margins, labels)`` and
    ``_logit(margins)``. Everything is float64 NumPy, so ``g(−Δ) = 1 − g(Δ)`` holds to
    round-off for any margin.

    Parameters
    ----------
    source : {"logit", "margin_mean"}
        What to read from a :class:`~auq.types.PreferencePrediction`: ``pred.logit``
        (default) or ``pred.margin_mean``.
    """

    #: short name (``CALIBRATORS`` key), recorded in ``PreferencePrediction.calibrator``
    name: ClassVar[str] = ""
    min_pairs: ClassVar[int] = 2
    _fitted: ClassVar[tuple[str, ...]] = ("n_pairs_",)

    def __init__(self, *, source: Source = "logit") -> None:
        self.source = source
        self._check_options()

    def _check_options(self) -> None:
        check_choice("source", self.source, SOURCES)

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
    def predict_logit(self, margins: Any) -> np.ndarray:
        """Calibrated logits, antisymmetric: ``ℓ(−Δ) = −ℓ(Δ)``.

        Parameters
        ----------
        margins : ndarray or Tensor, shape (B,), or PreferencePrediction

        Returns
        -------
        ndarray, shape (B,), float64
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
        ndarray, shape (B,), float64
        """
        self._check_fitted()
        return self._proba(resolve_margins(margins, self.source))

    def calibrate(self, pred: PreferencePrediction) -> PreferencePrediction:
        """``pred`` with its ``logit``/``prob`` replaced by the calibrated ones.

        Returns ``pred.calibrated(self.predict_logit(pred), self.name)``: margins,
        draws and entropies are unchanged, ``calibrator`` names this calibrator.
        """
        if not isinstance(pred, PreferencePrediction):
            raise TypeError(
                f"calibrate takes a PreferencePrediction, got {type(pred).__name__}; "
                "use predict_logit / predict_proba for raw margins"
            )
        return pred.calibrated(self.predict_logit(pred), self.name)
