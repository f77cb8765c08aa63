"""Uncertainty decompositions shared by every method.

Reward level
    For S draws ``r_s`` of a reward (ensemble members, posterior samples, dropout
    passes): ``mean = (1/S) Σ_s r_s`` and the *epistemic* variance
    ``var = (1/S) Σ_s (r_s - mean)²`` (population form, so S = 1 gives 0).
    Aleatoric variance is reported only where a method models observation noise.

Preference level
    With margin draws ``Δ_s`` and ``p_s = σ(Δ_s)`` (Bradley–Terry likelihood):

    * total entropy      ``H[p̄]`` with ``p̄ = (1/S) Σ_s p_s``
    * aleatoric entropy  ``(1/S) Σ_s H[p_s]``  (expected entropy of the likelihood)
    * epistemic entropy  ``H[p̄] - (1/S) Σ_s H[p_s]``  (mutual information between
      the label and the model; ≥ 0 by Jensen's inequality)

    so ``total = aleatoric + epistemic`` holds exactly. For a Gaussian margin
    ``Δ ~ N(μ, σ²)`` (closed-form methods) the expectations are computed with
    Gauss–Hermite quadrature instead of samples.

All functions take margins (logits), never probabilities, and compute in float64
where precision matters near 0 and 1. Entropies are in nats.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "binary_entropy_from_logits",
    "gaussian_logistic_expectations",
    "preference_entropies_from_samples",
    "probit_probability",
    "reward_moments",
]

_LOG2 = math.log(2.0)


def binary_entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy H[σ(x)] in nats, computed stably from the logit.

    Parameters
    ----------
    logits : Tensor, shape (...)

    Returns
    -------
    Tensor, shape (...), values in [0, log 2].
    """
    x = logits.double()
    p = torch.sigmoid(x)
    # H = softplus(-x)·p + softplus(x)·(1-p) = -p log p - (1-p) log(1-p)
    h = p * torch.nn.functional.softplus(-x) + (1 - p) * torch.nn.functional.softplus(x)
    return h.to(logits.dtype) if logits.is_floating_point() else h


def _entropy_of_probability(p: Tensor) -> Tensor:
    p = p.double().clamp(1e-300, 1 - 1e-16)
    return -(p * torch.log(p) + (1 - p) * torch.log1p(-p))


def reward_moments(samples: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and epistemic variance across the sample axis.

    Parameters
    ----------
    samples : Tensor, shape (S, N)

    Returns
    -------
    mean : Tensor, shape (N,)
    var : Tensor, shape (N,)
        Population variance (divides by S), zero when S = 1.
    """
    mean = samples.mean(0)
    var = samples.var(0, unbiased=False) if samples.shape[0] > 1 else torch.zeros_like(mean)
    return mean, var


def preference_entropies_from_samples(
    margin_samples: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Predictive probability and entropy decomposition from margin draws.

    Parameters
    ----------
    margin_samples : Tensor, shape (S, B)
        Draws of Δ = r(chosen) − r(rejected).

    Returns
    -------
    prob : Tensor, shape (B,)
        ``p̄ = mean_s σ(Δ_s)``, the predictive P(chosen ≻ rejected).
    total, aleatoric, epistemic : Tensor, shape (B,)
        Entropies in nats; ``total = aleatoric + epistemic``.
    """
    x = margin_samples.double()
    prob = torch.sigmoid(x).mean(0)
    total = _entropy_of_probability(prob)
    aleatoric = binary_entropy_from_logits(x).mean(0)
    epistemic = (total - aleatoric).clamp_min(0.0)
    # keep the identity exact after clamping tiny negative round-off
    total = aleatoric + epistemic
    dtype = margin_samples.dtype
    return prob.to(dtype), total.to(dtype), aleatoric.to(dtype), epistemic.to(dtype)


def probit_probability(mean: Tensor, var: Tensor) -> Tensor:
    """Probit approximation of E[σ(Δ)] for Δ ~ N(mean, var) (MacKay, 1992).

    ``σ(mean / sqrt(1 + π·var / 8))``.

    Parameters
    ----------
    mean, var : Tensor, shape (B,)

    Returns
    -------
    Tensor, shape (B,)
    """
    return torch.sigmoid(mean / torch.sqrt(1.0 + math.pi * var / 8.0))


def gaussian_logistic_expectations(
    mean: Tensor, var: Tensor, n_points: int = 32
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Predictive probability and entropy decomposition for a Gaussian margin.

    Uses Gauss–Hermite quadrature with ``n_points`` nodes for
    ``E[σ(Δ)]`` and ``E[H[σ(Δ)]]`` under ``Δ ~ N(mean, var)``.

    Parameters
    ----------
    mean, var : Tensor, shape (B,)
    n_points : int
        Quadrature nodes; 32 is accurate to ~1e-6 for var ≤ 100.

    Returns
    -------
    prob, total, aleatoric, epistemic : Tensor, shape (B,)
    """
    import numpy as np

    nodes, weights = np.polynomial.hermite_e.hermegauss(n_points)  # ∫ f(z) e^{-z²/2} dz
    z = torch.as_tensor(nodes, dtype=torch.float64, device=mean.device)
    w = torch.as_tensor(weights / math.sqrt(2 * math.pi), dtype=torch.float64, device=mean.device)
    delta = (
        mean.double()[None, :] + var.double().clamp_min(0).sqrt()[None, :] * z[:, None]
    )  # (Q, B)
    prob = (w[:, None] * torch.sigmoid(delta)).sum(0)
    aleatoric = (w[:, None] * binary_entropy_from_logits(delta)).sum(0)
    total = _entropy_of_probability(prob)
    epistemic = (total - aleatoric).clamp_min(0.0)
    total = aleatoric + epistemic
    dtype = mean.dtype
    return prob.to(dtype), total.to(dtype), aleatoric.to(dtype), epistemic.to(dtype)


def max_binary_entropy() -> float:
    """log 2, the largest possible binary entropy in nats."""
    return _LOG2
