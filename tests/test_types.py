"""The currency: moments, entropy identities, closed form vs samples, indexing."""

from __future__ import annotations

import pytest
import torch

from auq.types import PreferencePrediction, RewardPrediction
from auq.uncertainty import binary_entropy_from_logits, probit_probability


def test_reward_prediction_from_samples_moments():
    s = torch.randn(5, 7, dtype=torch.float64)
    rp = RewardPrediction.from_samples(s)
    torch.testing.assert_close(rp.mean, s.mean(0))
    torch.testing.assert_close(rp.var, s.var(0, unbiased=False))
    assert rp.samples.shape == (5, 7) and len(rp) == 7
    sub = rp[[0, 2]]
    torch.testing.assert_close(sub.samples, s[:, [0, 2]])


def test_preference_entropy_decomposition_identity():
    m = torch.randn(16, 40, dtype=torch.float64) * 2 + 0.5
    pp = PreferencePrediction.from_margin_samples(m)
    torch.testing.assert_close(pp.total, pp.aleatoric + pp.epistemic)
    assert torch.all(pp.epistemic >= 0)
    torch.testing.assert_close(pp.prob, torch.sigmoid(m).mean(0))
    assert pp.margin_samples.shape == (16, 40)


def test_single_member_has_no_epistemic_uncertainty():
    pp = PreferencePrediction.from_margin_samples(torch.randn(1, 10))
    assert torch.allclose(pp.epistemic, torch.zeros(10))
    assert torch.allclose(pp.margin_var, torch.zeros(10))


def test_gaussian_margin_matches_monte_carlo():
    mean = torch.tensor([-2.0, 0.0, 0.7, 3.0], dtype=torch.float64)
    var = torch.tensor([0.5, 2.0, 0.1, 4.0], dtype=torch.float64)
    closed = PreferencePrediction.from_gaussian_margin(mean, var)
    g = torch.Generator().manual_seed(0)
    draws = mean + torch.randn(400_000, 4, generator=g, dtype=torch.float64) * var.sqrt()
    mc = PreferencePrediction.from_margin_samples(draws)
    torch.testing.assert_close(closed.prob, mc.prob, atol=2e-3, rtol=0)
    torch.testing.assert_close(closed.aleatoric, mc.aleatoric, atol=2e-3, rtol=0)
    torch.testing.assert_close(closed.epistemic, mc.epistemic, atol=2e-3, rtol=0)
    # the probit approximation is close to the exact expectation
    torch.testing.assert_close(probit_probability(mean, var), closed.prob, atol=2e-2, rtol=0)


def test_closed_form_samples_on_demand_and_sampler():
    mean, var = torch.zeros(3), torch.ones(3)
    pp = PreferencePrediction.from_gaussian_margin(
        mean, var, sampler=lambda n, gen=None: torch.full((n, 3), 2.0)
    )
    assert torch.all(pp.margin_samples == 2.0)
    rp = RewardPrediction.from_moments(mean, var)
    assert rp.n_samples == 0 and rp.samples.shape == (64, 3)


def test_binary_entropy_is_stable_at_extremes():
    h = binary_entropy_from_logits(torch.tensor([-1000.0, 0.0, 1000.0]))
    assert torch.all(torch.isfinite(h))
    torch.testing.assert_close(h[1], torch.log(torch.tensor(2.0)))


def test_shape_errors_name_the_field():
    with pytest.raises(ValueError, match=r"var must have shape \(3,\)"):
        RewardPrediction(mean=torch.zeros(3), var=torch.zeros(4))
    with pytest.raises(ValueError, match=r"margin_samples must have shape \(S, B\)"):
        PreferencePrediction.from_margin_samples(torch.zeros(3))


def test_preference_indexing_and_summary():
    pp = PreferencePrediction.from_margin_samples(torch.randn(4, 6))
    sub = pp[1:3]
    assert len(sub) == 2 and sub.margin_samples.shape == (4, 2)
    summary = pp.summary()
    assert set(summary) >= {"accuracy", "entropy_epistemic"}


def test_sample_based_flag_survives_sampling_and_indexing():
    closed = PreferencePrediction.from_gaussian_margin(torch.zeros(3), torch.ones(3))
    _ = closed.margin_samples  # drawn and cached
    assert not closed.is_sample_based and not closed[:2].is_sample_based
    assert PreferencePrediction.from_margin_samples(torch.randn(4, 3)).is_sample_based
    assert not RewardPrediction.from_moments(torch.zeros(2), torch.ones(2)).is_sample_based
