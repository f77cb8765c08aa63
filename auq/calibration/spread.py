"""Uncertainty calibration: scale the spread of a predictive margin distribution.

A :class:`~auq.types.PreferencePrediction` predicts ``P(chosen ≻ rejected)`` from
its margin distribution. If the ensemble (or posterior) is over- or
under-dispersed, that predictive is mis-calibrated even when its mean is right.
:class:`SpreadScaler` fits a factor ``s`` for the deviations from the mean (and
optionally a temperature ``T`` for the mean itself)::

    Δ'_s = μ / T + s · (Δ_s − μ)          (sample-based predictions)
    Δ'  ~ N(μ / T, s² · Var[Δ])           (closed-form Gaussian predictions)

by minimising the NLL of the prediction's *own* predictive on held-out pairs:
``mean_s σ(Δ'_s)`` for draws and the probit form ``σ((μ/T) / sqrt(1 + π s² Var[Δ] / 8))``
for a Gaussian margin — exactly the ``prob`` that :meth:`SpreadScaler.transform`
returns. The map is odd in the margins, so ``g(−Δ) = 1 − g(Δ)`` holds and
swap-symmetrising the pairs would not change the fit (it is not needed).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np

from auq.calibration.base import PosthocEstimator, resolve_labels
from auq.types import AffineSampler, PreferencePrediction, RewardPrediction
from auq.utils.validation import check_choice

__all__ = ["SpreadScaler"]

Mode = Literal["auto", "samples", "gaussian"]
MODES = ("auto", "samples", "gaussian")
_LOG_BOUND = 10.0
_PROBIT = math.pi / 8.0


def _check_prediction(pred: Any) -> PreferencePrediction:
    if not isinstance(pred, PreferencePrediction):
        raise ValueError(
            f"pred must be a PreferencePrediction, got {type(pred).__name__}; "
            "for raw margins use TemperatureScaler"
        )
    if pred.calibrator is not None:
        raise ValueError(
            f"pred was already calibrated by {pred.calibrator!r}, so its logit no longer "
            "follows from its margins; SpreadScaler needs the model's own prediction"
        )
    return pred


def _components(pred: PreferencePrediction, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 NumPy ``(μ (B,), deviations (S, B))`` or ``(μ (B,), Var[Δ] (B,))``."""
    if mode == "samples":
        draws = pred.margin_samples.detach().double().cpu().numpy()  # (S, B)
        mu = draws.mean(0)
        return mu, draws - mu
    mu = pred.margin_mean.detach().double().cpu().numpy()
    return mu, np.clip(pred.margin_var.detach().double().cpu().numpy(), 0.0, None)


def _logit_samples(theta: np.ndarray, mu: np.ndarray, dev: np.ndarray) -> tuple[np.ndarray, ...]:
    """Log-odds of ``mean_s σ(Δ'_s)``, shape (B,), and the pieces of its derivative."""
    from scipy.special import log_expit, logsumexp

    s, inv_t = math.exp(theta[0]), math.exp(-theta[1]) if len(theta) > 1 else 1.0
    delta = mu * inv_t + s * dev  # (S, B)
    a, b = log_expit(delta), log_expit(-delta)
    lp, lq = logsumexp(a, axis=0), logsumexp(b, axis=0)
    return lp - lq, delta, a - lp, b - lq, s, inv_t


def _nll_samples(
    theta: np.ndarray, mu: np.ndarray, dev: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray]:
    """NLL of ``p̄ = mean_s σ(Δ'_s)`` and its gradient in ``θ = (log s[, log T])``.

    With ``r_s = σ(Δ'_s)/Σσ(Δ')`` and ``r'_s = σ(−Δ'_s)/Σσ(−Δ')``, ``d log p̄ / dΔ'_s =
    r_s σ(−Δ'_s)`` and ``d log(1 − p̄) / dΔ'_s = −r'_s σ(Δ'_s)``.
    """
    from scipy.special import expit

    logit, delta, log_r, log_rq, s, inv_t = _logit_samples(theta, mu, dev)
    z = (2 * y - 1) * logit
    n = len(y)
    nll = float(np.mean(np.logaddexp(0.0, -z)))
    # dL/dΔ'_s per draw and pair, shape (S, B); L = −mean(y log p̄ + (1 − y) log(1 − p̄))
    g = -(y * np.exp(log_r) * expit(-delta) - (1 - y) * np.exp(log_rq) * expit(delta)) / n
    grad = [float(np.sum(g * dev) * s)]
    if len(theta) > 1:
        grad.append(float(-np.sum(g * mu) * inv_t))
    return nll, np.array(grad)


def _logit_gaussian(theta: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    s2, inv_t = math.exp(2 * theta[0]), math.exp(-theta[1]) if len(theta) > 1 else 1.0
    return mu * inv_t / np.sqrt(1.0 + _PROBIT * s2 * var)


def _nll_gaussian(
    theta: np.ndarray, mu: np.ndarray, var: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray]:
    """NLL of the probit predictive and its gradient in ``θ = (log s[, log T])``.

    ``dℓ/d log s = −ℓ · c s² v / (1 + c s² v)`` (``c = π/8``), ``dℓ/d log T = −ℓ``.
    """
    from scipy.special import expit

    logit = _logit_gaussian(theta, mu, var)
    sign = 2 * y - 1
    nll = float(np.mean(np.logaddexp(0.0, -sign * logit)))
    dl = -sign * expit(-sign * logit) / len(y)  # dL/dℓ, shape (B,)
    csv = _PROBIT * math.exp(2 * theta[0]) * var
    grad = [float(np.sum(dl * -logit * csv / (1.0 + csv)))]
    if len(theta) > 1:
        grad.append(float(np.sum(dl * -logit)))
    return nll, np.array(grad)


class SpreadScaler(PosthocEstimator):
    """Calibrate the predictive by scaling the margin spread.

    Parameters
    ----------
    fit_temperature : bool
        Also fit a temperature ``T`` for the mean margin (default: only ``s``).
    mode : {"auto", "samples", "gaussian"}
        Use the margin draws, or the Gaussian ``N(margin_mean, margin_var)`` with its
        probit predictive; ``"auto"`` picks draws for sample-based predictions
        (ensembles) and the Gaussian for closed-form ones (Laplace).

    Attributes
    ----------
    spread_ : float
        ``s``; below 1 the ensemble was over-dispersed, above 1 under-dispersed.
    temperature_ : float
        ``T`` (1.0 unless ``fit_temperature``).
    n_pairs_ : int
    """

    name: ClassVar[str] = "spread"
    min_pairs: ClassVar[int] = 2
    _fitted: ClassVar[tuple[str, ...]] = ("spread_", "temperature_", "n_pairs_")
    _fit_call: ClassVar[str] = "fit(pred, labels)"

    def __init__(self, *, fit_temperature: bool = False, mode: Mode = "auto") -> None:
        self.fit_temperature = fit_temperature
        self.mode = mode
        self._check_options()

    def _check_options(self) -> None:
        if not isinstance(self.fit_temperature, bool | np.bool_):
            raise ValueError(f"fit_temperature must be True or False, got {self.fit_temperature!r}")
        check_choice("mode", self.mode, MODES)

    def _mode(self, pred: PreferencePrediction) -> str:
        if self.mode == "auto":
            return "samples" if pred.is_sample_based else "gaussian"
        return self.mode

    def fit(self, pred: PreferencePrediction, labels: Any = None) -> SpreadScaler:
        """Fit ``s`` (and ``T``) by NLL with L-BFGS-B on held-out pairs.

        Parameters
        ----------
        pred : PreferencePrediction, B pairs
            The model's own (uncalibrated) prediction.
        labels : array-like or Tensor, shape (B,), optional
            1 if the chosen response won; default all ones.

        Returns
        -------
        self
        """
        from scipy.optimize import minimize

        pred = _check_prediction(pred)
        mode = self._mode(pred)
        mu, spread = _components(pred, mode)
        y = resolve_labels(labels, len(mu))
        if len(mu) < self.min_pairs:
            raise ValueError(f"SpreadScaler needs at least {self.min_pairs} pairs, got {len(mu)}")
        objective = _nll_samples if mode == "samples" else _nll_gaussian
        n_par = 2 if self.fit_temperature else 1
        res = minimize(
            lambda x: objective(x, mu, spread, y),
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

    def _theta(self) -> np.ndarray:
        return np.log([self.spread_, self.temperature_])

    def predict_logit(self, pred: PreferencePrediction) -> np.ndarray:
        """Calibrated log-odds, shape (B,), float64 (odd in the margins)."""
        self._check_fitted()
        pred = _check_prediction(pred)
        mode = self._mode(pred)
        mu, spread = _components(pred, mode)
        if mode == "samples":
            return _logit_samples(self._theta(), mu, spread)[0]
        return _logit_gaussian(self._theta(), mu, spread)

    def predict_proba(self, pred: PreferencePrediction) -> np.ndarray:
        """Calibrated P(chosen ≻ rejected), shape (B,), float64."""
        from scipy.special import expit

        return expit(self.predict_logit(pred))

    def transform(self, pred: PreferencePrediction) -> PreferencePrediction:
        """A new prediction with the spread (and mean) rescaled; its ``calibrator`` is ``"spread"``.

        Sample-based predictions get rescaled draws (``from_margin_samples``),
        closed-form ones a rescaled Gaussian (``from_gaussian_margin``) whose sampler
        is an :class:`~auq.types.AffineSampler` of the original joint sampler.
        ``chosen``/``rejected`` rewards are rescaled the same way
        (``r' = E[r]/T + s(r − E[r])``), which keeps ``Δ' = r'_c − r'_r``. Its
        ``prob`` equals :meth:`predict_proba` and its entropies are recomputed.
        """
        self._check_fitted()
        pred = _check_prediction(pred)
        s, t = self.spread_, self.temperature_
        sides = {
            "chosen": _scale_reward(pred.chosen, s, t),
            "rejected": _scale_reward(pred.rejected, s, t),
        }
        common = {"method": pred.method, "truncation": pred.truncation, **sides}
        if self._mode(pred) == "samples":
            draws = pred.margin_samples
            mu = draws.mean(0)
            out = PreferencePrediction.from_margin_samples(mu / t + s * (draws - mu), **common)
        else:
            mu = pred.margin_mean
            base = pred.sampler
            out = PreferencePrediction.from_gaussian_margin(
                mu / t,
                pred.margin_var * s**2,
                sampler=None if base is None else AffineSampler(base, s, mu / t - s * mu),
                n_samples=pred.n_samples,
                **common,
            )
        return replace(out, calibrator=self.name)

    def calibrate(self, pred: PreferencePrediction) -> PreferencePrediction:
        """Alias of :meth:`transform` (every calibrator has ``calibrate(pred)``)."""
        return self.transform(pred)

    def transform_rewards(self, rewards: RewardPrediction) -> RewardPrediction:
        """Rewards with the fitted spread (and temperature): ``r' = E[r]/T + s(r − E[r])``.

        What :meth:`transform` does to a pair's two sides, for N single responses
        (the penalised objectives read the calibrated spread through it).
        """
        self._check_fitted()
        if not isinstance(rewards, RewardPrediction):
            raise ValueError(f"rewards must be a RewardPrediction, got {type(rewards).__name__}")
        return _scale_reward(rewards, self.spread_, self.temperature_)


def _scale_reward(rp: RewardPrediction | None, s: float, t: float) -> RewardPrediction | None:
    if rp is None:
        return None
    aleatoric_var = None if rp.aleatoric_var is None else rp.aleatoric_var / t**2
    common = {"aleatoric_var": aleatoric_var, "method": rp.method, "truncation": rp.truncation}
    if rp.is_sample_based:
        mean = rp.samples.mean(0)
        return RewardPrediction.from_samples(mean / t + s * (rp.samples - mean), **common)
    mean, base = rp.mean, rp.sampler
    return RewardPrediction.from_moments(
        mean / t,
        rp.var * s**2,
        sampler=None if base is None else AffineSampler(base, s, mean / t - s * mean),
        n_samples=rp.n_samples,
        **common,
    )
