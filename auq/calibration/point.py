"""Point calibrators: temperature, Platt, isotonic and beta calibration of margins.

Pairwise symmetry
-----------------
A preference must satisfy ``g(−Δ) = 1 − g(Δ)``: swapping the two responses
flips the probability. Every calibrator here is fitted on swap-symmetrised
pairs ``(Δ, y) ∪ (−Δ, 1 − y)`` (:func:`auq.data.symmetrize`), so a data set in
which every label says "chosen wins" still has two classes and calibrates, and
its prediction is symmetric by construction:

* temperature: ``ℓ(Δ) = Δ / T`` is odd;
* Platt: ``ℓ(Δ) = aΔ`` — the intercept ``b`` is fixed to 0, which is exactly
  the maximum-likelihood intercept on symmetrised data;
* isotonic: ``g(Δ) = ½ + ½ (f(Δ) − f(−Δ))`` averages the fitted step function
  ``f`` with its swapped image ``1 − f(−Δ)``;
* beta: the antisymmetric part ``½ (ℓ(Δ) − ℓ(−Δ))`` of the fitted beta map.
  Because ``log σ(Δ) − log σ(−Δ) = Δ`` this equals ``½ (a + b) Δ``: under the
  symmetry constraint beta calibration *reduces to Platt scaling without an
  intercept* — its extra freedom (``a ≠ b``, ``c ≠ 0``) is precisely the
  asymmetric part. Use ``symmetric=False`` for a non-pairwise binary task.

Platt and beta use Platt's (1999) smoothed targets ``(N₊+1)/(N₊+2)`` and
``1/(N₋+2)`` so that perfectly separable data (a model that is always right)
still gives finite parameters.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np

from auq.calibration.base import BaseCalibrator, Source
from auq.data import symmetrize

__all__ = ["BetaCalibrator", "IsotonicCalibrator", "PlattScaler", "TemperatureScaler"]

_LOG_T_BOUND = 15.0  # temperature kept in [e^-15, e^15]


def _fit_logistic(
    features: np.ndarray, labels: np.ndarray, *, fit_intercept: bool
) -> tuple[np.ndarray, float]:
    """Unregularised logistic regression on Platt-smoothed targets.

    Each row appears twice, with label 1 weighted by its target ``t`` and with
    label 0 weighted by ``1 − t``.

    Parameters
    ----------
    features : ndarray, shape (N, k)
    labels : ndarray, shape (N,)

    Returns
    -------
    coef : ndarray, shape (k,)
    intercept : float
    """
    from sklearn.linear_model import LogisticRegression

    n_pos = labels.sum()
    n_neg = len(labels) - n_pos
    target = np.where(labels == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    x = np.concatenate([features, features])
    y = np.concatenate([np.ones(len(labels)), np.zeros(len(labels))])
    w = np.concatenate([target, 1 - target])
    model = LogisticRegression(
        C=1e12, fit_intercept=fit_intercept, solver="newton-cholesky", max_iter=1000, tol=1e-8
    )
    model.fit(x, y, sample_weight=w)
    return model.coef_[0].astype(np.float64), float(model.intercept_[0]) if fit_intercept else 0.0


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _two_classes(name: str, labels: np.ndarray) -> None:
    if labels.min() == labels.max():
        raise ValueError(
            f"{name}(symmetric=False) needs labels of both classes, got only "
            f"{int(labels[0])}s; use symmetric=True for pairwise data"
        )


class TemperatureScaler(BaseCalibrator):
    """Temperature scaling ``g(Δ) = σ(Δ / T)`` with ``T > 0``.

    ``T`` is parametrised as ``exp(θ)`` and fitted by minimising the NLL with
    L-BFGS-B (scipy) using the exact gradient; ``θ`` is bounded to [−15, 15].
    When the margins separate the labels perfectly (every pair ranked right)
    the NLL has no minimum; ``T`` is then set to ``e^−15`` with a warning.

    Parameters
    ----------
    source : {"logit", "margin_mean"}
        What to read from a PreferencePrediction (see :class:`BaseCalibrator`).

    Attributes
    ----------
    temperature_ : float
    n_pairs_ : int
        Pairs seen in ``fit`` (before symmetrisation).
    """

    name: ClassVar[str] = "temperature"
    min_pairs: ClassVar[int] = 2
    _fitted: ClassVar[tuple[str, ...]] = ("temperature_", "n_pairs_")

    def _fit(self, margins: np.ndarray, labels: np.ndarray) -> None:
        from scipy.optimize import minimize
        from scipy.special import expit

        m, y = symmetrize(margins, labels)
        sm = (2 * y - 1) * m  # signed margins: the likelihood is σ(sm / T)

        def nll_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            z = sm * np.exp(-theta[0])
            # d/dθ softplus(−z) = σ(−z)·z
            return float(np.mean(np.logaddexp(0.0, -z))), np.array([np.mean(expit(-z) * z)])

        if sm.min() > 0:  # every label agrees with its margin: the NLL falls as T → 0
            warnings.warn(
                "the margins separate the labels perfectly, so the NLL is minimised as T → 0; "
                f"temperature_ is set to its lower bound exp(-{_LOG_T_BOUND:g}). "
                "PlattScaler (smoothed targets) gives a finite slope on such data",
                RuntimeWarning,
                stacklevel=3,
            )
            self.temperature_ = float(np.exp(-_LOG_T_BOUND))
            return
        res = minimize(
            nll_and_grad,
            x0=np.zeros(1),
            jac=True,
            method="L-BFGS-B",
            bounds=[(-_LOG_T_BOUND, _LOG_T_BOUND)],
            options={"ftol": 1e-14, "gtol": 1e-10, "maxiter": 500},
        )
        theta = float(res.x[0])
        self.temperature_ = float(np.exp(theta))

    def _logit(self, margins: np.ndarray) -> np.ndarray:
        return margins / self.temperature_


class PlattScaler(BaseCalibrator):
    """Platt scaling ``g(Δ) = σ(aΔ + b)`` with ``b = 0`` for pairwise data.

    Fitted with sklearn's ``LogisticRegression`` on Platt-smoothed targets.
    Unlike :class:`TemperatureScaler`, the slope ``a`` may be negative (a
    reward model that ranks backwards).

    Parameters
    ----------
    symmetric : bool
        Fit on swap-symmetrised pairs with ``b`` fixed to 0 (default). With
        ``False`` fit ``a`` and ``b`` on the data as given (a non-pairwise
        binary task; needs both labels).
    source : {"logit", "margin_mean"}

    Attributes
    ----------
    coef_ : float
        The slope ``a``.
    intercept_ : float
        ``b`` (0.0 when ``symmetric``).
    n_pairs_ : int
    """

    name: ClassVar[str] = "platt"
    min_pairs: ClassVar[int] = 2
    _fitted: ClassVar[tuple[str, ...]] = ("coef_", "intercept_", "n_pairs_")

    def __init__(self, *, symmetric: bool = True, source: Source = "logit") -> None:
        self.symmetric = symmetric
        super().__init__(source=source)

    def _check_options(self) -> None:
        super()._check_options()
        _check_bool("symmetric", self.symmetric)

    def _fit(self, margins: np.ndarray, labels: np.ndarray) -> None:
        if self.symmetric:
            margins, labels = symmetrize(margins, labels)
        else:
            _two_classes(type(self).__name__, labels)
        coef, b = _fit_logistic(margins[:, None], labels, fit_intercept=not self.symmetric)
        self.coef_, self.intercept_ = float(coef[0]), b

    def _logit(self, margins: np.ndarray) -> np.ndarray:
        return self.coef_ * margins + self.intercept_


class IsotonicCalibrator(BaseCalibrator):
    """Isotonic regression of the outcome on the margin (sklearn ``IsotonicRegression``).

    A non-decreasing step-wise linear map, clipped outside the fitted range.
    With ``symmetric=True`` the prediction is ``½ + ½ (f(Δ) − f(−Δ))``.
    Calibrated logits are clipped to ``logit(1e-6)`` in magnitude since
    ``f`` reaches 0 and 1.

    Parameters
    ----------
    symmetric : bool
    source : {"logit", "margin_mean"}

    Attributes
    ----------
    x_thresholds_, y_thresholds_ : ndarray, shape (K,)
        Knots of the fitted map ``f`` (interpolated linearly).
    n_pairs_ : int
    """

    name: ClassVar[str] = "isotonic"
    min_pairs: ClassVar[int] = 10
    _fitted: ClassVar[tuple[str, ...]] = ("x_thresholds_", "y_thresholds_", "n_pairs_")
    eps: ClassVar[float] = 1e-6

    def __init__(self, *, symmetric: bool = True, source: Source = "logit") -> None:
        self.symmetric = symmetric
        super().__init__(source=source)

    def _check_options(self) -> None:
        super()._check_options()
        _check_bool("symmetric", self.symmetric)

    def _fit(self, margins: np.ndarray, labels: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        if self.symmetric:
            margins, labels = symmetrize(margins, labels)
        else:
            _two_classes(type(self).__name__, labels)
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(margins, labels)
        self.x_thresholds_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y_thresholds_ = np.asarray(iso.y_thresholds_, dtype=np.float64)

    def _f(self, margins: np.ndarray) -> np.ndarray:
        return np.interp(margins, self.x_thresholds_, self.y_thresholds_)

    def _half_gap(self, margins: np.ndarray) -> np.ndarray:
        """``d = g(Δ) − ½`` in [−½, ½], odd in Δ when symmetric."""
        if self.symmetric:
            return 0.5 * (self._f(margins) - self._f(-margins))
        return self._f(margins) - 0.5

    def _proba(self, margins: np.ndarray) -> np.ndarray:
        return 0.5 + self._half_gap(margins)

    def _logit(self, margins: np.ndarray) -> np.ndarray:
        d = np.clip(self._half_gap(margins), self.eps - 0.5, 0.5 - self.eps)
        return np.log(0.5 + d) - np.log(0.5 - d)  # exactly odd in d


class BetaCalibrator(BaseCalibrator):
    """Beta calibration (Kull et al., 2017) of ``p = σ(Δ)``.

    ``logit g = a·log p − b·log(1 − p) + c``, a logistic regression on the
    features ``(log p, −log(1 − p))`` (sklearn ``LogisticRegression``, Platt
    targets). As in Kull et al., a negative ``a`` or ``b`` is set to 0 and the
    other refitted, which keeps the map monotone.

    With ``symmetric=True`` (default) the prediction is the antisymmetric part
    of the map, which is exactly ``½ (a + b) Δ``: the symmetric beta family is
    Platt scaling without an intercept (see the module docstring).

    Parameters
    ----------
    symmetric : bool
    source : {"logit", "margin_mean"}

    Attributes
    ----------
    a_, b_, c_ : float
        Beta-map parameters.
    n_pairs_ : int
    """

    name: ClassVar[str] = "beta"
    min_pairs: ClassVar[int] = 4
    _fitted: ClassVar[tuple[str, ...]] = ("a_", "b_", "c_", "n_pairs_")

    def __init__(self, *, symmetric: bool = True, source: Source = "logit") -> None:
        self.symmetric = symmetric
        super().__init__(source=source)

    def _check_options(self) -> None:
        super()._check_options()
        _check_bool("symmetric", self.symmetric)

    @staticmethod
    def _features(margins: np.ndarray) -> np.ndarray:
        # log σ(Δ) = −softplus(−Δ);  −log(1 − σ(Δ)) = softplus(Δ)   -> (N, 2)
        return np.stack([-np.logaddexp(0.0, -margins), np.logaddexp(0.0, margins)], axis=1)

    def _fit(self, margins: np.ndarray, labels: np.ndarray) -> None:
        if self.symmetric:
            margins, labels = symmetrize(margins, labels)
        else:
            _two_classes(type(self).__name__, labels)
        x = self._features(margins)
        coef, c = _fit_logistic(x, labels, fit_intercept=True)
        for drop in (0, 1):
            if coef[drop] < 0:  # refit on the other feature only (Kull et al., 2017)
                keep = 1 - drop
                sub, c = _fit_logistic(x[:, [keep]], labels, fit_intercept=True)
                coef = np.zeros(2)
                coef[keep] = max(sub[0], 0.0)
                break
        self.a_, self.b_, self.c_ = float(coef[0]), float(coef[1]), float(c)

    def _logit(self, margins: np.ndarray) -> np.ndarray:
        if self.symmetric:
            return 0.5 * (self.a_ + self.b_) * margins
        return self._features(margins) @ np.array([self.a_, self.b_]) + self.c_
