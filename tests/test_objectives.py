"""Penalised rewards: each objective's formula, its limits, closed-form moments, calibration."""

from __future__ import annotations

import math

import pytest
import torch

from auq.objectives import OBJECTIVES, penalized_reward
from auq.types import RewardPrediction

SAMPLES = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, -1.0], [2.0, 0.0, 5.0], [2.0, 0.0, 2.0]])


@pytest.fixture
def rp():
    return RewardPrediction.from_samples(SAMPLES)


def test_each_objective_matches_its_formula(rp):
    mean, var = SAMPLES.mean(0), SAMPLES.var(0, unbiased=False)
    torch.testing.assert_close(penalized_reward(rp, "mean"), mean)
    torch.testing.assert_close(penalized_reward(rp, "wco"), SAMPLES.min(0).values)
    torch.testing.assert_close(penalized_reward(rp, "uwo", lam=0.5), mean - 0.5 * var)
    unbiased = mean - 0.5 * SAMPLES.var(0, unbiased=True)
    torch.testing.assert_close(penalized_reward(rp, "uwo", lam=0.5, unbiased=True), unbiased)
    torch.testing.assert_close(penalized_reward(rp, "lcb", k=2.0), mean - 2.0 * var.sqrt())
    eff = -2.0 * (torch.logsumexp(-SAMPLES / 2.0, 0) - math.log(4))
    torch.testing.assert_close(penalized_reward(rp, "effective", beta=2.0), eff)
    assert penalized_reward(rp, "uwo")[1] == 0  # no spread, no penalty


def test_effective_reward_limits(rp):
    torch.testing.assert_close(
        penalized_reward(rp, "effective", beta=1e6), SAMPLES.mean(0), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        penalized_reward(rp, "effective", beta=1e-3), SAMPLES.min(0).values, atol=5e-3, rtol=0
    )
    gen = torch.Generator().manual_seed(0)
    gauss = RewardPrediction.from_samples(1.0 + 0.5 * torch.randn(200_000, 2, generator=gen))
    expected = 1.0 - 0.25 / (2 * 2.0)
    got = penalized_reward(gauss, "effective", beta=2.0)
    torch.testing.assert_close(got, torch.full((2,), expected), atol=5e-3, rtol=0)


def test_closed_form_predictions_use_exact_moments():
    mean, var = torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.25])
    rp = RewardPrediction.from_moments(mean, var, n_samples=64)
    torch.testing.assert_close(penalized_reward(rp, "uwo", lam=1.0), mean - var)
    torch.testing.assert_close(penalized_reward(rp, "lcb", k=1.0), mean - var.sqrt())
    torch.testing.assert_close(penalized_reward(rp, "effective", beta=0.5), mean - var)
    assert penalized_reward(rp, "wco").shape == (2,)  # min of the 64 posterior draws
    with pytest.raises(ValueError, match="closed-form .* variance is exact"):
        penalized_reward(rp, "uwo", unbiased=True)


def test_calibrated_spread_changes_the_penalty(rp):
    from auq.calibration import SpreadScaler

    scaler = SpreadScaler()
    scaler.spread_, scaler.temperature_, scaler.n_pairs_ = 2.0, 1.0, 1  # a fitted state
    scaled = penalized_reward(rp, "uwo", lam=1.0, calibrator=scaler)
    expected = SAMPLES.mean(0) - 4.0 * SAMPLES.var(0, unbiased=False)
    torch.testing.assert_close(scaled, expected)
    with pytest.raises(TypeError, match="calibrator must be a fitted SpreadScaler"):
        penalized_reward(rp, "uwo", calibrator=object())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objective": "median"}, "objective='median' is not supported; valid choices: 'mean'"),
        ({"objective": "uwo", "lam": -1}, "lam must be a finite number >= 0"),
        ({"objective": "lcb", "k": float("nan")}, "k must be a finite number >= 0"),
        ({"objective": "effective", "beta": 0}, "beta must be a finite number > 0"),
    ],
)
def test_bad_options_name_the_valid_values(rp, kwargs, message):
    with pytest.raises(ValueError, match=message):
        penalized_reward(rp, **kwargs)


def test_every_objective_returns_one_reward_per_response(rp):
    for objective in OBJECTIVES:
        assert penalized_reward(rp, objective).shape == (3,)
    with pytest.raises(TypeError, match="prediction must be a RewardPrediction"):
        penalized_reward(SAMPLES, "mean")
