"""Pure decompositions: stable log-odds, entropies from logits, quadrature of E[H[σ(Δ)]]."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import integrate

from auq.uncertainty import (
    binary_entropy_from_logits,
    gaussian_expected_entropy,
    log_odds_from_margin_samples,
    preference_entropies,
    probit_logit,
    probit_probability,
)

MEANS = [-1000.0, -300.0, -45.0, -10.0, -2.0, -0.5, 0.0, 0.3, 1.0, 4.0, 15.0, 39.0, 100.0, 1000.0]
VARS = [0.0, 1e-8, 1e-4, 0.01, 0.3, 0.99, 1.01, 3.0, 10.0, 50.0, 300.0, 3e3, 1e4, 1e5, 1e6]


def _h(x: float) -> float:
    """Bernoulli entropy of σ(x) in float64 (reference, scalar)."""
    return float(binary_entropy_from_logits(torch.tensor(x, dtype=torch.float64)))


def _reference_expected_entropy(mu: float, var: float) -> float:
    """E[H[σ(Δ)]], Δ ~ N(μ, var), by adaptive scipy quadrature over Δ."""
    if var == 0:
        return _h(mu)
    s = math.sqrt(var)
    lo, hi = max(-60.0, mu - 12 * s), min(60.0, mu + 12 * s)
    if lo >= hi:
        return 0.0  # H < 1e-24 wherever the Gaussian has mass

    def f(d: float) -> float:
        return _h(d) * math.exp(-0.5 * ((d - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))

    points = [p for p in (0.0, mu) if lo < p < hi] or None
    value, _ = integrate.quad(f, lo, hi, points=points, limit=500, epsabs=1e-14, epsrel=1e-12)
    return value


def test_expected_entropy_matches_scipy_quad_over_all_variances():
    # 14 means × 15 variances up to 1e6 (std 1000): one code path must stay accurate on
    # both sides of the Gauss–Hermite / composite switch. Required: 1e-4 absolute.
    grid = [(m, v) for m in MEANS for v in VARS]
    mu = torch.tensor([g[0] for g in grid], dtype=torch.float64)
    var = torch.tensor([g[1] for g in grid], dtype=torch.float64)
    ours = gaussian_expected_entropy(mu, var).numpy()
    ref = np.array([_reference_expected_entropy(m, v) for m, v in grid])
    err = np.abs(ours - ref)
    assert err.max() <= 1e-4, f"max error {err.max():.2e} at (μ, var) = {grid[int(err.argmax())]}"
    assert err.max() <= 1e-6  # measured 1.7e-7: far inside the requirement


def test_expected_entropy_known_limits():
    # var → ∞: E[H] ≈ φ(μ/σ)/σ · ∫H = φ(μ/σ)/σ · π²/3
    sigma = 1e3
    mu = torch.tensor([0.0, 500.0], dtype=torch.float64)
    got = gaussian_expected_entropy(mu, torch.full_like(mu, sigma**2))
    phi = torch.exp(-0.5 * (mu / sigma) ** 2) / math.sqrt(2 * math.pi)
    torch.testing.assert_close(got, phi / sigma * math.pi**2 / 3, rtol=1e-5, atol=0)
    # var = 0: the entropy of σ(μ) itself
    m = torch.tensor([-3.0, 0.0, 2.5], dtype=torch.float64)
    torch.testing.assert_close(
        gaussian_expected_entropy(m, torch.zeros(3)), binary_entropy_from_logits(m)
    )


def test_expected_entropy_chunks_equal_one_by_one():
    # 10 000 pairs run in chunks of 4096 with mixed branches; each equals its own call.
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(10_000, generator=g, dtype=torch.float64) * 20
    var = 10 ** (torch.rand(10_000, generator=g, dtype=torch.float64) * 9 - 3)
    batched = gaussian_expected_entropy(mu, var)
    for i in (0, 4095, 4096, 9999):
        torch.testing.assert_close(
            batched[i : i + 1], gaussian_expected_entropy(mu[i : i + 1], var[i : i + 1])
        )
    assert batched.shape == (10_000,) and batched.dtype == torch.float64


def test_expected_entropy_is_continuous_at_the_branch_switch():
    mu = torch.linspace(-8, 8, 33, dtype=torch.float64)
    below = gaussian_expected_entropy(mu, torch.full_like(mu, (1 - 1e-9) ** 2))
    above = gaussian_expected_entropy(mu, torch.full_like(mu, (1 + 1e-9) ** 2))
    torch.testing.assert_close(below, above, atol=1e-9, rtol=0)  # |dE/dσ| · 2e-9 ≈ 3e-10


def test_binary_entropy_is_stable_in_the_tails():
    x = torch.tensor([-1000.0, -30.0, 0.0, 30.0, 1000.0])  # float32 input
    h = binary_entropy_from_logits(x)
    assert h.dtype == torch.float64 and torch.all(torch.isfinite(h))
    assert h[2] == math.log(2.0) and h[0] == h[4] == 0.0
    # relative precision at |x| = 30 against 50-digit arithmetic (a float32 p would give 0)
    mpmath.mp.dps = 50
    p = 1 / (1 + mpmath.e**-30)
    ref = float(-(p * mpmath.log(p) + (1 - p) * mpmath.log(1 - p)))
    assert h[3] == pytest.approx(ref, rel=1e-12)
    assert h[1] == h[3]  # exactly even


def test_log_odds_equal_the_naive_form_and_are_exactly_odd():
    g = torch.Generator().manual_seed(1)
    d = torch.randn(16, 200, generator=g, dtype=torch.float64) * 3
    p = torch.sigmoid(d).mean(0)
    torch.testing.assert_close(log_odds_from_margin_samples(d), torch.log(p / (1 - p)))
    wide = (torch.rand(8, 500, generator=g) * 100 - 50).float()  # float32 draws in ±50
    assert torch.equal(log_odds_from_margin_samples(-wide), -log_odds_from_margin_samples(wide))


def test_log_odds_stay_finite_for_huge_margins():
    d = torch.tensor([[1000.0, -1000.0, 40.0]], dtype=torch.float64)
    torch.testing.assert_close(log_odds_from_margin_samples(d), d[0])


def test_probit_logit_and_probability():
    mean = torch.tensor([1.0, -2.0, 0.0])
    var = torch.tensor([0.0, 8 / math.pi, 5.0])
    logit = probit_logit(mean, var)
    assert logit.dtype == torch.float64
    torch.testing.assert_close(
        logit, torch.tensor([1.0, -2 / math.sqrt(2), 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(probit_probability(mean, var), torch.sigmoid(logit))


def test_preference_entropies_identity_and_clamp():
    logit = torch.tensor([0.0, 2.0, -5.0], dtype=torch.float64)
    aleatoric = torch.tensor([0.5, 0.9, 0.0], dtype=torch.float64)  # 0.9 > H(σ(2))
    total, ale, epi = preference_entropies(logit, aleatoric)
    assert torch.equal(total, ale + epi) and torch.all(epi >= 0)
    assert epi[1] == 0 and total[1] == 0.9
    assert total[0] == pytest.approx(math.log(2))
