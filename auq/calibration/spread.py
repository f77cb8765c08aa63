"""Uncertainty calibration: scale the spread of a predictive margin distribution.

A :class:`~auq.types.PreferencePrediction` predicts ``P(chosen ≻ rejected) =
E[σ(Δ)]`` over its margin draws. If the ensemble (or posterior) is over- or
under-dispersed, that mixture is mis-calibrated even when its mean is right.
:class:`SpreadScaler` fits a factor ``s`` for the deviations from the mean
(and optionally a temperature ``T`` for the mean itself)::

    Δ'_s = μ / T + s · (Δ_s − μ)          (sample-based predictions)
    Δ'  ~ N(μ / T, s² · Var[Δ])           (closed-form Gaussian predictions)

by minimising the NLL of ``E[σ(Δ')]`` on held-out pairs. The map is odd in the
draws, so ``g(−Δ) = 1 − g(Δ)`` holds and swap-symmetrising the pairs would not
change the fit (it is not needed).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np

from auq.calibration.base import STATE_VERSION, NotFittedError, resolve_labels
from auq.types import PreferencePrediction, RewardPrediction
from auq.utils.validation import check_choice

__all__ = ["SpreadScaler"]

Mode = Literal["auto", "samples", "gaussian"]
_LOG_BOUND = 10.0


def _components(
    pred: PreferencePrediction, mode: str, n_points: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(μ (B,), deviations (Q, B), log-weights (Q, 1))`` as float64 NumPy arrays."""
    if not isinstance(pred, PreferencePrediction):
        raise ValueError(
            f"pred must be a PreferencePrediction, got {type(pred).__name__}; "
            "for raw margins use TemperatureScaler"
        )
    if _resolve_mode(pred, mode) == "samples":
        samples = pred.margin_samples.detach().double().cpu().numpy()  # (S, B)
        mu = samples.mean(0)
        dev = samples - mu
        logw = np.full((samples.shape[0], 1), -math.log(samples.shape[0]))
    else:
        z, w = np.polynomial.hermite_e.hermegauss(n_points)  # ∫ f(z) e^{-z²/2} dz
        mu = pred.margin_mean.detach().double().cpu().numpy()
        std = np.sqrt(np.clip(pred.margin_var.detach().double().cpu().numpy(), 0, None))
        dev = z[:, None] * std[None, :]  # (Q, B)
        logw = np.log(w / math.sqrt(2 * math.pi))[:, None]
    if not (np.isfinite(mu).all() and np.isfinite(dev).all()):
        raise ValueError("pred contains NaN or infinite margins")
    return mu, dev, logw


def _resolve_mode(pred: PreferencePrediction, mode: str) -> str:
    if mode == "auto":
        return "samples" if pred.is_sample_based else "gaussian"
    return mode


def _nll_and_grad(
    theta: np.ndarray, mu: np.ndarray, dev: np.ndarray, logw: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """NLL of ``p̄ = E[σ(Δ')]``, its gradient in ``θ = (log s[, log T])``, and ``log p̄`` (B,).

    ``Δ' = μ·exp(−log T) + exp(log s)·dev``; with ``r = w σ(Δ') / p̄`` and
    ``r' = w σ(−Δ') / (1 − p̄)`` the derivative of ``log p̄`` in ``Δ'`` is
    ``r σ(−Δ')`` and that of ``log(1 − p̄)`` is ``−r' σ(Δ')``.
    """
    from scipy.special import expit, log_expit, logsumexp

    s = math.exp(theta[0])
    inv_t = math.exp(-theta[1]) if len(theta) > 1 else 1.0
    delta = mu * inv_t + s * dev  # (Q, B)
    a, b = log_expit(delta) + logw, log_expit(-delta) + logw
    lp, lq = logsumexp(a, axis=0), logsumexp(b, axis=0)
    n = len(y)
    nll = -float(np.mean(y * lp + (1 - y) * lq))
    # dL/dΔ' per node and pair, shape (Q, B)
    g = -(y * np.exp(a - lp) * expit(-delta) - (1 - y) * np.exp(b - lq) * expit(delta)) / n
    grad = [float(np.sum(g * dev) * s)]
    if len(theta) > 1:
        grad.append(float(-np.sum(g * mu) * inv_t))
    return nll, np.array(grad), lp


class SpreadScaler:
    """Calibrate the predictive mixture by scaling the margin spread.

    Parameters
    ----------
    fit_temperature : bool
        Also fit a temperature ``T`` for the mean margin (default: only ``s``).
    mode : {"auto", "samples", "gaussian"}
        Use the stored margin draws, or the Gaussian ``N(margin_mean, margin_var)``
        with Gauss–Hermite quadrature; ``"auto"`` picks draws when the prediction
        stores them (sample-based methods) and the Gaussian otherwise (Laplace).
    n_points : int
        Quadrature nodes for the Gaussian mode.

    Attributes
    ----------
    spread_ : float
        ``s``; below 1 the ensemble was over-dispersed, above 1 under-dispersed.
    temperature_ : float
        ``T`` (1.0 unless ``fit_temperature``).
    n_pairs_ : int
    """

    min_pairs: ClassVar[int] = 2
    _params: ClassVar[tuple[str, ...]] = ("fit_temperature", "mode", "n_points")

    def __init__(
        self, *, fit_temperature: bool = False, mode: Mode = "auto", n_points: int = 32
    ) -> None:
        self.fit_temperature = bool(fit_temperature)
        self.mode = check_choice("mode", mode, ("auto", "samples", "gaussian"))
        self.n_points = int(n_points)

    def fit(self, pred: PreferencePrediction, labels: Any = None) -> SpreadScaler:
        """Fit ``s`` (and ``T``) by NLL with L-BFGS-B on held-out pairs.

        Parameters
        ----------
        pred : PreferencePrediction, B pairs
        labels : array-like or Tensor, shape (B,), optional
            1 if the chosen response won; default all ones.

        Returns
        -------
        self
        """
        from scipy.optimize import minimize

        mu, dev, logw = _components(pred, self.mode, self.n_points)
        y = resolve_labels(labels, len(mu))
        if len(mu) < self.min_pairs:
            raise ValueError(f"SpreadScaler needs at least {self.min_pairs} pairs, got {len(mu)}")

        n_par = 2 if self.fit_temperature else 1
        res = minimize(
            lambda x: _nll_and_grad(x, mu, dev, logw, y)[:2],
            np.zeros(n_par),
            jac=True,
            method="L-BFGS-B",
            bounds=[(-_LOG_BOUND, _LOG_BOUND)] * n_par,
            options={"ftol": 1e-13, "gtol": 1e-9, "maxiter": 500},
        )
        self.spread_ = float(np.exp(res.x[0]))
        self.temperature_ = float(np.exp(res.x[1])) if self.fit_temperature else 1.0
        self.n_pairs_ = len(mu)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_pairs_"):
            raise NotFittedError(
                "This SpreadScaler is not fitted yet; call fit(pred, labels) first"
            )

    def predict_proba(self, pred: PreferencePrediction) -> np.ndarray:
        """Calibrated ``E[σ(Δ')]``, shape (B,)."""
        self._check_fitted()
        mu, dev, logw = _components(pred, self.mode, self.n_points)
        theta = np.log([self.spread_, self.temperature_])
        return np.exp(_nll_and_grad(theta, mu, dev, logw, np.ones(len(mu)))[2])

    def transform(self, pred: PreferencePrediction) -> PreferencePrediction:
        """A new prediction with the spread (and mean) rescaled.

        Sample-based predictions get rescaled draws (``from_margin_samples``),
        closed-form ones a rescaled Gaussian (``from_gaussian_margin``) whose
        sampler wraps the original joint sampler. ``chosen``/``rejected``
        rewards are rescaled the same way (``r' = E[r]/T + s(r − E[r])``), which
        keeps ``Δ' = r'_c − r'_r``.
        """
        self._check_fitted()
        _components(pred, self.mode, self.n_points)  # validates
        s, t = self.spread_, self.temperature_
        mu = pred.margin_mean
        sides = {
            "chosen": _scale_reward(pred.chosen, s, t),
            "rejected": _scale_reward(pred.rejected, s, t),
        }
        if _resolve_mode(pred, self.mode) == "samples":
            samples = pred.margin_samples
            mu = samples.mean(0)
            return PreferencePrediction.from_margin_samples(
                mu / t + s * (samples - mu), method=pred.method, **sides
            )
        sample = pred.sample
        return PreferencePrediction.from_gaussian_margin(
            mu / t,
            pred.margin_var * s**2,
            sampler=lambda n, generator=None: mu / t + s * (sample(n, generator) - mu),
            method=pred.method,
            **sides,
        )

    def get_state(self) -> dict[str, Any]:
        """JSON-able description: class name, options and fitted values."""
        self._check_fitted()
        return {
            "class": type(self).__name__,
            "version": STATE_VERSION,
            "params": {name: getattr(self, name) for name in self._params},
            "fitted": {
                "spread_": self.spread_,
                "temperature_": self.temperature_,
                "n_pairs_": int(self.n_pairs_),
            },
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SpreadScaler:
        """Rebuild a fitted scaler from :meth:`get_state` output."""
        if state.get("class") != cls.__name__:
            raise ValueError(f"state describes class {state.get('class')!r}, not {cls.__name__!r}")
        obj = cls(**state.get("params", {}))
        for name, value in state["fitted"].items():
            setattr(obj, name, value)
        return obj

    def __repr__(self) -> str:
        opts = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._params)
        return f"SpreadScaler({opts})"


def _scale_reward(rp: RewardPrediction | None, s: float, t: float) -> RewardPrediction | None:
    if rp is None:
        return None
    aleatoric = None if rp.aleatoric is None else rp.aleatoric / t**2
    if rp.n_samples > 0:
        mean = rp.samples.mean(0)
        return RewardPrediction.from_samples(
            mean / t + s * (rp.samples - mean), aleatoric=aleatoric, method=rp.method
        )
    mean, sample = rp.mean, rp.sample
    return RewardPrediction.from_moments(
        mean / t,
        rp.var * s**2,
        sampler=lambda n, generator=None: mean / t + s * (sample(n, generator) - mean),
        aleatoric=aleatoric,
        method=rp.method,
    )
