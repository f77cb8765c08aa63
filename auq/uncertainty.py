"""Uncertainty decompositions shared by every method.

Reward level
    For S draws ``r_s`` of a reward (ensemble members, posterior samples, dropout
    passes): ``mean = (1/S) Σ_s r_s`` and the *epistemic* variance
    ``var = (1/S) Σ_s (r_s - mean)²`` (population form, so S = 1 gives 0).
    Aleatoric variance is reported only where a method models observation noise.

Preference level
    With margin draws ``Δ_s`` and the Bradley–Terry likelihood ``p_s = σ(Δ_s)``:

    * predictive log-odds ``ℓ = log p̄ − log(1 − p̄)`` with ``p̄ = (1/S) Σ_s p_s``,
      computed as ``logsumexp_s log σ(Δ_s) − logsumexp_s log σ(−Δ_s)`` (the ``1/S``
      cancels), so ``ℓ(−Δ) = −ℓ(Δ)`` exactly and nothing rounds to 0 or 1;
    * total entropy      ``H[p̄] = H[σ(ℓ)]``
    * aleatoric entropy  ``(1/S) Σ_s H[σ(Δ_s)]``  (expected entropy of the likelihood)
    * epistemic entropy  ``H[p̄] − (1/S) Σ_s H[σ(Δ_s)]``  (mutual information between
      the label and the model; ≥ 0 by Jensen's inequality)

    so ``total = aleatoric + epistemic``. For a Gaussian margin ``Δ ~ N(μ, σ²)``
    (closed-form methods) the predictive log-odds is the probit approximation
    ``μ / sqrt(1 + π σ² / 8)`` and the aleatoric entropy ``E[H[σ(Δ)]]`` is computed
    by quadrature (:func:`gaussian_expected_entropy`).

Every function takes margins (logits), never probabilities, and computes in float64.
Entropies are in nats.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

__all__ = [
    "binary_entropy_from_logits",
    "gaussian_expected_entropy",
    "log_odds_from_margin_samples",
    "preference_entropies",
    "probit_logit",
    "probit_probability",
    "reward_moments",
]

#: beyond |Δ| = 40 the Bernoulli entropy is below 2e-16 nats
_ENTROPY_SUPPORT = 40.0
#: the Gaussian is integrated over μ ± 10σ (mass outside: 1.5e-23)
_GAUSS_HALF_WIDTH = 10.0
#: below this standard deviation Gauss–Hermite in z is exact to ~1e-12
_HERMITE_MAX_STD = 1.0
_HERMITE_NODES = 32
_PANELS, _PANEL_NODES = 12, 8
_CHUNK = 4096


def binary_entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy ``H[σ(x)]`` in nats, computed stably from the logit.

    With ``a = |x|`` and ``t = e^{−a}``: ``H = σ(x)·softplus(−x) + σ(−x)·softplus(x)
    = log1p(t) + a·t / (1 + t)``. No ``1 − p`` is formed, so the result keeps its
    relative precision for any |x| (≈ ``(1 + |x|) e^{−|x|}`` in the tails), costs one
    ``exp`` and one ``log1p``, and is exactly even in ``x``.

    Parameters
    ----------
    logits : Tensor, shape (...)

    Returns
    -------
    Tensor, shape (...), float64, values in [0, log 2].
    """
    a = logits.double().abs()
    t = torch.exp(-a)
    return torch.log1p(t) + a * t / (1.0 + t)


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


def log_odds_from_margin_samples(margin_samples: Tensor) -> Tensor:
    """Predictive log-odds ``log p̄ − log(1 − p̄)`` of ``p̄ = mean_s σ(Δ_s)``.

    Computed as ``logsumexp_s log σ(Δ_s) − logsumexp_s log σ(−Δ_s)`` in float64:
    exactly odd in the draws (``ℓ(−Δ) = −ℓ(Δ)`` bit for bit) and finite for any
    finite margin (``≈ mean Δ`` when all draws are large).

    Parameters
    ----------
    margin_samples : Tensor, shape (S, B)
        Draws of Δ = r(chosen) − r(rejected).

    Returns
    -------
    Tensor, shape (B,), float64
    """
    x = margin_samples.double()
    return torch.logsumexp(logsigmoid(x), 0) - torch.logsumexp(logsigmoid(-x), 0)


def probit_logit(mean: Tensor, var: Tensor) -> Tensor:
    """Probit approximation of the log-odds of ``E[σ(Δ)]``, ``Δ ~ N(mean, var)`` (MacKay, 1992).

    ``mean / sqrt(1 + π·var / 8)``, in float64; odd in ``mean``.

    Parameters
    ----------
    mean, var : Tensor, shape (B,)

    Returns
    -------
    Tensor, shape (B,), float64
    """
    return mean.double() / torch.sqrt(1.0 + math.pi * var.double().clamp_min(0.0) / 8.0)


def probit_probability(mean: Tensor, var: Tensor) -> Tensor:
    """``σ(probit_logit(mean, var))``, shape (B,), float64."""
    return torch.sigmoid(probit_logit(mean, var))


def preference_entropies(logit: Tensor, aleatoric: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Total and epistemic entropy from the predictive log-odds and the aleatoric entropy.

    ``total = H[σ(logit)]``, ``epistemic = max(total − aleatoric, 0)``, then
    ``total = aleatoric + epistemic`` so the identity holds exactly. (The clamp only
    acts on round-off for sample-based predictions; for the probit approximation of a
    Gaussian margin it also absorbs the approximation error where ``H`` of the probit
    probability falls below the exact ``E[H]``.)

    Parameters
    ----------
    logit : Tensor, shape (B,)
    aleatoric : Tensor, shape (B,)

    Returns
    -------
    total, aleatoric, epistemic : Tensor, shape (B,), float64
    """
    aleatoric = aleatoric.double()
    epistemic = (binary_entropy_from_logits(logit) - aleatoric).clamp_min(0.0)
    return aleatoric + epistemic, aleatoric, epistemic


def _hermite_rule(device: torch.device) -> tuple[Tensor, Tensor]:
    z, w = np.polynomial.hermite_e.hermegauss(_HERMITE_NODES)  # ∫ f(z) e^{-z²/2} dz
    return (
        torch.as_tensor(z, dtype=torch.float64, device=device),
        torch.as_tensor(w / math.sqrt(2 * math.pi), dtype=torch.float64, device=device),
    )


def _composite_rule(device: torch.device) -> tuple[Tensor, Tensor]:
    """Composite Gauss–Legendre nodes and weights on [0, 1], shape (P·m,) each."""
    x, w = np.polynomial.legendre.leggauss(_PANEL_NODES)
    u = (np.arange(_PANELS)[:, None] + (x[None, :] + 1) / 2) / _PANELS
    wu = np.tile(w / (2 * _PANELS), _PANELS)
    return (
        torch.as_tensor(u.ravel(), dtype=torch.float64, device=device),
        torch.as_tensor(wu, dtype=torch.float64, device=device),
    )


def _expected_entropy_wide(mu: Tensor, std: Tensor) -> Tensor:
    """``E[H[σ(μ + σz)]]`` for std > 1: composite rule over the z where H lives, shape (B,).

    The integrand ``H(μ + σz) φ(z)`` is negligible outside both ``|z| ≤ 10`` and
    ``|μ + σz| ≤ 40``; the intersection of the two is split into equal panels, each
    narrower than the scale of either factor (``1`` in z, ``1/σ`` in z).
    """
    u, wu = _composite_rule(mu.device)
    z_lo = torch.maximum((-_ENTROPY_SUPPORT - mu) / std, torch.full_like(mu, -_GAUSS_HALF_WIDTH))
    z_hi = torch.minimum((_ENTROPY_SUPPORT - mu) / std, torch.full_like(mu, _GAUSS_HALF_WIDTH))
    width = (z_hi - z_lo).clamp_min(0.0)  # 0 when the two regions do not meet
    z = z_lo[:, None] + width[:, None] * u  # (B, Q)
    density = torch.exp(-0.5 * z.square()) / math.sqrt(2 * math.pi)
    h = binary_entropy_from_logits(mu[:, None] + std[:, None] * z)
    return width * (h * density * wu).sum(1)


def gaussian_expected_entropy(mean: Tensor, var: Tensor) -> Tensor:
    """``E[H[σ(Δ)]]`` for ``Δ ~ N(mean, var)``: the aleatoric entropy of a Gaussian margin.

    Adaptive quadrature, vectorised and processed in chunks of 4096 pairs:

    * ``std ≤ 1``: 32-node Gauss–Hermite in ``z = (Δ − μ) / σ``;
    * ``std > 1``: Gauss–Hermite would need ever more nodes (the integrand narrows to
      width ``1/σ`` in z), so a composite Gauss–Legendre rule (12 panels × 8 nodes)
      is used on the z-interval where both the Gaussian (``|z| ≤ 10``) and the
      entropy (``|Δ| ≤ 40``) are non-negligible.

    Measured against ``scipy.integrate.quad`` the absolute error is below 2e-7 for
    every variance in [0, 1e6] and mean in [−1e3, 1e3] (the test suite asserts 1e-4);
    about 10 µs per pair with std > 1 on one CPU core, 1 µs below.

    Parameters
    ----------
    mean, var : Tensor, shape (B,)
        ``var ≥ 0``; ``var = 0`` gives ``H[σ(mean)]``.

    Returns
    -------
    Tensor, shape (B,), float64, values in [0, log 2].
    """
    mu_all = mean.double().reshape(-1)
    std_all = var.double().clamp_min(0.0).sqrt().reshape(-1)
    out = torch.empty_like(mu_all)
    z, w = _hermite_rule(mu_all.device)
    for start in range(0, mu_all.shape[0], _CHUNK):
        mu, std = mu_all[start : start + _CHUNK], std_all[start : start + _CHUNK]
        narrow = binary_entropy_from_logits(mu[:, None] + std[:, None] * z) @ w  # (b,)
        wide = std > _HERMITE_MAX_STD
        if bool(wide.any()):
            narrow[wide] = _expected_entropy_wide(mu[wide], std[wide])
        out[start : start + _CHUNK] = narrow
    return out.reshape(mean.shape)
