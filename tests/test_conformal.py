"""Split-conformal intervals and the conformal decision rule for pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from auq.calibration.conformal import (
    ConformalInterval,
    ConformalPreference,
    conformal_quantile,
    interval_decisions,
    min_calibration_size,
)
from auq.types import PreferencePrediction, RewardPrediction

REPEATS, N_CAL, N_TEST = 300, 200, 200


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def heteroscedastic(rng, n):
    """Predicted means and scales with heavy-tailed (t₅) residuals of that scale."""
    mu = rng.normal(size=n)
    sd = np.exp(0.5 * rng.normal(size=n))
    return mu, sd, mu + sd * rng.standard_t(5, size=n)


@pytest.mark.parametrize("alpha", [0.1, 0.2])
@pytest.mark.parametrize("normalized", [True, False], ids=["normalized", "absolute"])
def test_coverage_over_repeated_splits(alpha, normalized):
    # Mean coverage over 300 independent splits lies in [1 − α, 1 − α + 1/(n+1)] up to
    # sampling noise: its standard error is ≈ 0.0017 at α = 0.1, so 0.008 is ≈ 5 SE.
    rng = np.random.default_rng(0)
    cover = []
    for _ in range(REPEATS):
        mu, sd, y = heteroscedastic(rng, N_CAL + N_TEST)
        scale = (sd[:N_CAL], sd[N_CAL:]) if normalized else (None, None)
        ci = ConformalInterval(alpha=alpha).fit(mu[:N_CAL], y[:N_CAL], scale=scale[0])
        lo, hi = ci.predict_interval(mu[N_CAL:], scale=scale[1])
        cover.append(np.mean((lo <= y[N_CAL:]) & (y[N_CAL:] <= hi)))
    mean = float(np.mean(cover))
    assert 1 - alpha - 0.008 <= mean <= 1 - alpha + 1 / (N_CAL + 1) + 0.008


def test_normalized_intervals_adapt_to_the_predicted_scale():
    rng = np.random.default_rng(1)
    mu, sd, y = heteroscedastic(rng, 2000)
    ci = ConformalInterval(alpha=0.1).fit(mu, y, scale=sd)
    lo, hi = ci.predict_interval(np.zeros(2), scale=np.array([1.0, 3.0]))
    np.testing.assert_allclose(hi - lo, 2 * ci.quantile_ * np.array([1.0, 3.0]))


def test_quantile_is_the_finite_sample_order_statistic():
    # k = ⌈(n + 1)(1 − α)⌉: n = 9 → 9th smallest; n = 19 → 18th smallest
    assert conformal_quantile(np.arange(1.0, 10.0)[::-1], 0.1) == 9.0
    assert conformal_quantile(np.arange(1.0, 20.0), 0.1) == 18.0
    assert min_calibration_size(0.1) == 9
    assert min_calibration_size(0.05) == 19


def test_prediction_objects_supply_mean_and_scale():
    g = torch.Generator().manual_seed(0)
    rp = RewardPrediction.from_samples(torch.randn(8, 300, generator=g, dtype=torch.float64))
    y = rp.mean.numpy() + rp.std.numpy() * np.random.default_rng(2).normal(size=300)
    ci = ConformalInterval(alpha=0.2).fit(rp, y)
    assert ci.normalized_
    lo, hi = ci.predict_interval(rp)
    ref = ConformalInterval(alpha=0.2).fit(rp.mean, y, scale=rp.std)
    np.testing.assert_allclose((lo, hi), ref.predict_interval(rp.mean, scale=rp.std))
    pp = PreferencePrediction.from_margin_samples(torch.randn(8, 300, generator=g))
    ConformalInterval(alpha=0.2).fit(pp, pp.margin_mean.numpy() + 0.1).predict_interval(pp)


def test_margin_interval_decisions_err_at_most_alpha():
    # Gold margins are known (testbed setting): a wrong decision needs the gold margin
    # outside its interval, so P(decided and wrong) ≤ α.
    rng = np.random.default_rng(3)
    wrong, decided = [], []
    for _ in range(REPEATS):
        gold = rng.normal(0, 2, N_CAL + N_TEST)
        sd = np.exp(0.5 * rng.normal(size=gold.size))
        pred = gold + sd * rng.normal(size=gold.size)
        ci = ConformalInterval(alpha=0.1).fit(pred[:N_CAL], gold[:N_CAL], scale=sd[:N_CAL])
        d = ci.decide(pred[N_CAL:], scale=sd[N_CAL:])
        wrong.append(np.mean((d != 0) & (d != np.sign(gold[N_CAL:]))))
        decided.append(np.mean(d != 0))
    assert np.mean(wrong) <= 0.1
    assert 0.2 < np.mean(decided) < 1.0


def test_interval_decisions():
    d = interval_decisions([0.1, -2.0, -0.5, 0.0], [1.0, -0.1, 0.5, 3.0])
    np.testing.assert_array_equal(d, [1, -1, 0, 0])


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_preference_rule_error_rate(alpha):
    # Bradley–Terry pairs with labels drawn from σ(Δ*); the model reports Δ*.
    # Guarantee: P(decided and wrong) ≤ α (tolerance 0.005 ≈ 4 SE over 300 splits).
    # Measured at α = 0.1: 0.098 decided-and-wrong, 69 % decided, 14 % wrong among
    # decisions versus 25 % wrong without abstention.
    rng = np.random.default_rng(4)
    joint, among, decided, overall = [], [], [], []
    for _ in range(REPEATS):
        true = rng.normal(0, 2, N_CAL + N_TEST)
        y = (rng.uniform(size=true.size) < sigmoid(true)).astype(float)
        rule = ConformalPreference(alpha=alpha).fit(true[:N_CAL], y[:N_CAL])
        d = rule.predict(true[N_CAL:])
        bad = (d != 0) & (d != 2 * y[N_CAL:] - 1)
        joint.append(bad.mean())
        decided.append((d != 0).mean())
        among.append(bad.sum() / max((d != 0).sum(), 1))
        overall.append(np.mean((true[N_CAL:] > 0) != (y[N_CAL:] == 1)))
    assert np.mean(joint) <= alpha + 0.005
    assert np.mean(among) < np.mean(overall)  # abstaining removes the hard pairs
    assert 0.2 < np.mean(decided) < 0.95


def test_preference_rule_is_swap_equivariant_and_accepts_predictions():
    rng = np.random.default_rng(5)
    true = rng.normal(0, 2, 500)
    y = (rng.uniform(size=500) < sigmoid(true)).astype(float)
    rule = ConformalPreference(alpha=0.1).fit(true, y)
    grid = np.linspace(-6, 6, 49)
    np.testing.assert_array_equal(rule.predict(-grid), -rule.predict(grid))
    assert rule.threshold_ == max(rule.quantile_, 0.0)
    # all-ones labels on oriented margins give the same rule (the score is swap-invariant)
    oriented = true * (2 * y - 1)
    assert ConformalPreference(alpha=0.1).fit(oriented).threshold_ == rule.threshold_
    pp = PreferencePrediction.from_margin_samples(torch.tensor(oriented)[None].repeat(2, 1))
    by_pp = ConformalPreference(alpha=0.1, source="margin_mean").fit(pp)
    assert by_pp.threshold_ == pytest.approx(rule.threshold_)
    assert set(np.unique(by_pp.predict(pp))) <= {-1, 0, 1}


@pytest.mark.parametrize("cls", [ConformalInterval, ConformalPreference])
def test_state_round_trip(cls):
    rng = np.random.default_rng(6)
    m = rng.normal(size=100)
    est = cls(alpha=0.1).fit(m, rng.normal(size=100) if cls is ConformalInterval else None)
    restored = cls.from_state(json.loads(json.dumps(est.get_state(), allow_nan=False)))
    if cls is ConformalInterval:
        np.testing.assert_array_equal(restored.predict_interval(m), est.predict_interval(m))
    else:
        np.testing.assert_array_equal(restored.predict(m), est.predict(m))


def test_preference_rule_reads_the_float64_logit():
    # margins up to ±50 in float32 draws: the rule sees pred.logit, exactly odd in Δ
    rng = np.random.default_rng(7)
    true = rng.normal(0, 2, 300)
    y = (rng.uniform(size=300) < sigmoid(true)).astype(float)
    rule = ConformalPreference(alpha=0.1).fit(true, y)
    draws = torch.linspace(-50, 50, 201)[None] + torch.tensor([[-0.3], [0.3]])
    pos = PreferencePrediction.from_margin_samples(draws)
    neg = PreferencePrediction.from_margin_samples(-draws)
    np.testing.assert_array_equal(rule.predict(neg), -rule.predict(pos))
    np.testing.assert_array_equal(rule.predict(pos), rule.predict(pos.logit.numpy()))


# -- bad input -----------------------------------------------------------------------------
def test_too_few_calibration_points_rejected():
    with pytest.raises(ValueError, match="alpha=0.1 needs at least 9 calibration points .* got 5"):
        ConformalInterval(alpha=0.1).fit(np.zeros(5), np.ones(5))


def test_alpha_out_of_range_rejected():
    with pytest.raises(ValueError, match=r"alpha must be a number in \(0, 1\), got 1.5"):
        ConformalInterval(alpha=1.5)


def test_alpha_of_the_wrong_type_rejected():
    with pytest.raises(ValueError, match=r"alpha must be a number in \(0, 1\), got '0.1'"):
        ConformalPreference(alpha="0.1")


def test_non_positive_scale_rejected():
    with pytest.raises(ValueError, match="scale must be positive, got 1 non-positive entries"):
        ConformalInterval().fit(np.zeros(20), np.ones(20), scale=np.r_[np.ones(19), 0.0])


def test_scale_required_when_fitted_with_one():
    ci = ConformalInterval().fit(np.zeros(20), np.ones(20), scale=np.ones(20))
    with pytest.raises(ValueError, match="scale is required: this ConformalInterval was fitted"):
        ci.predict_interval(np.zeros(3))


def test_scale_rejected_when_fitted_without_one():
    ci = ConformalInterval().fit(np.zeros(20), np.ones(20))
    with pytest.raises(ValueError, match="scale must be None"):
        ci.predict_interval(np.zeros(3), scale=np.ones(3))


def test_length_mismatch_rejected():
    with pytest.raises(ValueError, match="length mismatch: pred_mean has 20, y_true has 19"):
        ConformalInterval().fit(np.zeros(20), np.ones(19))


def test_nan_target_rejected():
    with pytest.raises(ValueError, match="y_true contains NaN or infinite values"):
        ConformalInterval().fit(np.zeros(20), np.r_[np.ones(19), np.nan])


def test_predict_before_fit_rejected():
    with pytest.raises(NotFittedError, match="This ConformalInterval is not fitted yet"):
        ConformalInterval().predict_interval(np.zeros(3))
    with pytest.raises(NotFittedError, match="This ConformalPreference is not fitted yet"):
        ConformalPreference().predict(np.zeros(3))


def test_preference_labels_validated():
    with pytest.raises(ValueError, match="labels must contain only 0 and 1, found -1"):
        ConformalPreference().fit(np.zeros(20), -np.ones(20))
