"""Penalised rewards: turn a reward distribution into the number a policy optimises.

Optimising the mean of an imperfect reward model exploits its errors; the
conservative objectives below pay less for rewards the model is unsure of. Each
maps a :class:`~auq.types.RewardPrediction` of N responses to a tensor (N,):

==============  ===========================  ==========================================
``objective``   reward                       source
==============  ===========================  ==========================================
``"mean"``      E[r]                         the plain reward model
``"wco"``       min over members/samples     Coste et al. 2023 (worst-case optimisation)
``"uwo"``       E[r] − λ · Var[r]            Coste et al. 2023 (uncertainty-weighted;
                                             λ = 0.5 was best for best-of-n there)
``"lcb"``       E[r] − k · Std[r]            lower confidence bound (Zhang et al. 2024)
``"effective"`` −β · log E[exp(−r/β)]        certainty equivalent of exponential utility
==============  ===========================  ==========================================

The effective reward links the others: it tends to the mean as β → ∞, to the
minimum over samples as β → 0, and equals E[r] − Var[r]/(2β) when r is Gaussian
(so ``"uwo"`` with λ = 1/(2β) is its Gaussian form).

Closed-form predictions (Laplace) use their exact moments: ``"uwo"``, ``"lcb"`` and
``"effective"`` (the Gaussian form) need no sampling; ``"wco"`` takes the minimum
of the prediction's ``n_samples`` posterior draws.

With ``calibrator=`` a fitted :class:`~auq.calibration.SpreadScaler` rescales the
spread first (``r' = E[r]/T + s·(r − E[r])``), so the penalty uses calibrated
uncertainty.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from auq.types import RewardPrediction
from auq.utils.validation import check_choice

__all__ = ["OBJECTIVES", "penalized_reward"]

OBJECTIVES = ("mean", "wco", "uwo", "lcb", "effective")


def _check_number(name: str, value: Any, *, positive: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def penalized_reward(
    prediction: RewardPrediction,
    objective: str = "mean",
    *,
    lam: float = 0.5,
    k: float = 1.0,
    beta: float = 1.0,
    unbiased: bool = False,
    calibrator: Any = None,
) -> Tensor:
    """The reward under an uncertainty-aware objective, shape (N,), float32.

    Parameters
    ----------
    prediction : RewardPrediction
        Rewards of N responses (``rm.score(...)``).
    objective : {"mean", "wco", "uwo", "lcb", "effective"}
        See the module docstring.
    lam : float
        λ ≥ 0 of ``"uwo"`` (the weight of the variance).
    k : float
        k ≥ 0 of ``"lcb"`` (standard deviations below the mean).
    beta : float
        β > 0 of ``"effective"`` (large: risk-neutral, small: worst case).
    unbiased : bool
        ``"uwo"`` / ``"lcb"`` of sample-based predictions: the unbiased variance
        (divisor S − 1) instead of the population variance the prediction stores.
        Closed-form predictions have an exact variance; True is refused for them.
    calibrator : SpreadScaler, optional
        A fitted spread calibrator applied to the rewards first.

    Returns
    -------
    Tensor, shape (N,)

    Raises
    ------
    ValueError
        For an unknown objective or an invalid λ, k or β, naming the valid values.
    """
    check_choice("objective", objective, OBJECTIVES)
    if not isinstance(prediction, RewardPrediction):
        raise TypeError(
            f"prediction must be a RewardPrediction (rm.score(...)), got "
            f"{type(prediction).__name__}"
        )
    lam = _check_number("lam", lam)
    k = _check_number("k", k)
    beta = _check_number("beta", beta, positive=True)
    if calibrator is not None:
        if not hasattr(calibrator, "transform_rewards"):
            raise TypeError(
                f"calibrator must be a fitted SpreadScaler (it rescales the spread of rewards), "
                f"got {type(calibrator).__name__}"
            )
        prediction = calibrator.transform_rewards(prediction)
    if unbiased and not prediction.is_sample_based:
        raise ValueError(
            "unbiased=True applies to sample-based predictions; this one is closed-form "
            f"(method={prediction.method!r}) and its variance is exact"
        )
    mean = prediction.mean.double()
    if objective == "mean":
        out = mean
    elif objective == "wco":
        out = prediction.samples.double().min(dim=0).values
    elif objective in ("uwo", "lcb"):
        var = _variance(prediction, unbiased)
        out = mean - lam * var if objective == "uwo" else mean - k * var.sqrt()
    elif prediction.is_sample_based:  # effective, over the draws: −β log mean exp(−r/β)
        draws = prediction.samples.double()
        log_mean = torch.logsumexp(-draws / beta, dim=0) - math.log(draws.shape[0])
        out = -beta * log_mean
    else:  # effective, Gaussian posterior: exact
        out = mean - prediction.var.double() / (2 * beta)
    return out.float()


def _variance(prediction: RewardPrediction, unbiased: bool) -> Tensor:
    if not unbiased:
        return prediction.var.double().clamp_min(0)
    draws = prediction.samples.double()
    if draws.shape[0] < 2:
        raise ValueError("unbiased=True needs at least 2 samples per response")
    return draws.var(dim=0, unbiased=True)
