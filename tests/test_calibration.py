"""Calibrators: recovery of known parameters, ECE reduction, symmetry, state, bad input."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from auq.calibration import (
    CALIBRATORS,
    BetaCalibrator,
    IsotonicCalibrator,
    NotFittedError,
    PlattScaler,
    SpreadScaler,
    TemperatureScaler,
    calibrator_from_state,
    make_calibrator,
)
from auq.metrics import expected_calibration_error, negative_log_likelihood
from auq.types import PreferencePrediction, RewardPrediction

NAMES = list(CALIBRATORS)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def bradley_terry(n: int, seed: int, *, scale: float = 2.0):
    """True margins Δ* ~ N(0, scale²) and labels y ~ Bernoulli(σ(Δ*))."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0.0, scale, n)
    return true, (rng.uniform(size=n) < sigmoid(true)).astype(float)


def symmetric_ece(cal, margins, labels) -> float:
    """ECE on swap-symmetrised evaluation pairs (RewardUQ's protocol)."""
    p = cal.predict_proba(margins)
    return expected_calibration_error(np.r_[labels, 1 - labels], np.r_[p, 1 - p])


# -- recovery and ECE reduction ------------------------------------------------------
def test_temperature_recovers_known_temperature():
    # Observed margins are the true Bradley–Terry margins times T = 2.5; 20k pairs.
    # Tolerance 5 % (measured error 0.5 %; the standard error of T is about 1.3 %).
    true, y = bradley_terry(20_000, seed=0)
    cal = TemperatureScaler().fit(2.5 * true, y)
    assert abs(cal.temperature_ - 2.5) / 2.5 < 0.05


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("distortion", [2.5, 0.4], ids=["overconfident", "underconfident"])
def test_calibrators_reduce_held_out_ece(name, distortion):
    true, y = bradley_terry(16_000, seed=1)
    m = distortion * true
    cal = make_calibrator(name).fit(m[:8000], y[:8000])
    before = expected_calibration_error(y[8000:], sigmoid(m[8000:]))
    after = expected_calibration_error(y[8000:], cal.predict_proba(m[8000:]))
    # before: 0.12 (overconfident) / 0.11 (underconfident); after ≈ 0.01 (sampling noise)
    assert before > 0.08
    assert after < 0.03


def test_isotonic_beats_temperature_on_non_logistic_distortion():
    true, y = bradley_terry(16_000, seed=2)
    m = np.sign(true) * np.abs(true) ** 2  # monotone, not a rescaling
    temp = TemperatureScaler().fit(m[:8000], y[:8000])
    iso = IsotonicCalibrator().fit(m[:8000], y[:8000])
    ece_t = expected_calibration_error(y[8000:], temp.predict_proba(m[8000:]))
    ece_i = expected_calibration_error(y[8000:], iso.predict_proba(m[8000:]))
    assert ece_i < 0.03 < ece_t


@pytest.mark.parametrize("name", NAMES)
def test_all_ones_labels_still_calibrate(name):
    # The usual data set: margins oriented chosen − rejected, every label 1.
    true, y = bradley_terry(8000, seed=3)
    oriented = 2.5 * true * (2 * y - 1)
    cal = make_calibrator(name).fit(oriented)  # labels default to 1
    reference = make_calibrator(name).fit(2.5 * true, y)
    grid = np.linspace(-10, 10, 41)
    np.testing.assert_allclose(cal.predict_proba(grid), reference.predict_proba(grid), atol=1e-6)
    assert symmetric_ece(cal, oriented, np.ones_like(oriented)) < 0.02


def test_temperature_warns_when_margins_separate_labels():
    with pytest.warns(RuntimeWarning, match="separate the labels perfectly"):
        cal = TemperatureScaler().fit(np.linspace(0.1, 3.0, 50))
    assert cal.temperature_ < 1e-5


# -- symmetry ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    true, y = bradley_terry(3000, seed=4)
    m = 1.7 * true
    return {name: make_calibrator(name).fit(m, y) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None)
@given(margins=st.lists(st.floats(-60, 60, allow_nan=False), min_size=1, max_size=40))
def test_symmetry_property(fitted, name, margins):
    cal = fitted[name]
    m = np.asarray(margins)
    np.testing.assert_allclose(cal.predict_proba(-m), 1 - cal.predict_proba(m), atol=1e-12)
    np.testing.assert_array_equal(cal.predict_logit(-m), -cal.predict_logit(m))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=20, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.floats(-8, 8, allow_nan=False), st.sampled_from([0.0, 1.0])),
        min_size=10,
        max_size=50,
    ),
    query=st.floats(-20, 20, allow_nan=False),
)
def test_symmetry_holds_for_any_training_set(name, data, query):
    m, y = (np.asarray(v) for v in zip(*data, strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # separable draws hit the T bound
        cal = make_calibrator(name).fit(m, y)
    q = np.array([query, -query])
    p = cal.predict_proba(q)
    assert abs(p[1] - (1 - p[0])) < 1e-12


# -- variants and equivalences ----------------------------------------------------------
def test_symmetric_beta_equals_platt_without_intercept():
    true, y = bradley_terry(4000, seed=5)
    m = 2.0 * true + 0.3 * true**3 / 10
    beta, platt = BetaCalibrator().fit(m, y), PlattScaler().fit(m, y)
    assert beta.a_ == pytest.approx(beta.b_, rel=1e-6)
    assert abs(beta.c_) < 1e-6
    grid = np.linspace(-8, 8, 33)
    np.testing.assert_allclose(beta.predict_proba(grid), platt.predict_proba(grid), rtol=1e-6)


def test_asymmetric_variants_fit_an_intercept_and_a_skew():
    rng = np.random.default_rng(6)
    m = rng.normal(0, 2, 8000)
    y = (rng.uniform(size=m.size) < sigmoid(m + 1.0)).astype(float)  # biased task
    platt = PlattScaler(symmetric=False).fit(m, y)
    assert platt.coef_ == pytest.approx(1.0, abs=0.1)
    assert platt.intercept_ == pytest.approx(1.0, abs=0.1)
    # a skewed beta map (a, b, c) = (2, 0.5, 0.3) is outside Platt's family
    p = sigmoid(m)
    y2 = (rng.uniform(size=m.size) < sigmoid(2 * np.log(p) - 0.5 * np.log1p(-p) + 0.3)).astype(
        float
    )
    beta = BetaCalibrator(symmetric=False).fit(m[:4000], y2[:4000])
    platt2 = PlattScaler(symmetric=False).fit(m[:4000], y2[:4000])
    nll_beta = negative_log_likelihood(y2[4000:], beta.predict_proba(m[4000:]))
    nll_platt = negative_log_likelihood(y2[4000:], platt2.predict_proba(m[4000:]))
    assert nll_beta < nll_platt
    assert (beta.a_, beta.b_, beta.c_) == pytest.approx((2.0, 0.5, 0.3), abs=0.3)


def test_accepts_torch_and_preference_prediction():
    true, y = bradley_terry(2000, seed=7)
    m = 2.0 * true
    ref = TemperatureScaler().fit(m, y)
    cal = TemperatureScaler().fit(torch.tensor(m, dtype=torch.float32), torch.tensor(y))
    assert cal.temperature_ == pytest.approx(ref.temperature_, rel=1e-5)
    # a PreferencePrediction: labels default to 1, margins oriented chosen − rejected
    oriented = torch.tensor(m * (2 * y - 1))
    pp = PreferencePrediction.from_margin_samples(oriented[None, :].repeat(3, 1))
    by_logit = TemperatureScaler().fit(pp)
    by_mean = TemperatureScaler(source="margin_mean").fit(pp)
    assert by_logit.temperature_ == pytest.approx(ref.temperature_, rel=1e-4)
    assert by_mean.temperature_ == pytest.approx(ref.temperature_, rel=1e-6)
    assert by_mean.predict_proba(pp).shape == (2000,)


# -- serialisation ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "factory",
    [
        TemperatureScaler,
        PlattScaler,
        IsotonicCalibrator,
        BetaCalibrator,
        lambda: PlattScaler(symmetric=False),
        lambda: IsotonicCalibrator(symmetric=False),
        lambda: BetaCalibrator(symmetric=False, source="margin_mean"),
    ],
)
def test_state_round_trip_gives_identical_predictions(factory):
    true, y = bradley_terry(1000, seed=8)
    cal = factory().fit(1.8 * true, y)
    state = json.loads(json.dumps(cal.get_state()))  # JSON-able, no pickle
    restored = calibrator_from_state(state)
    assert type(restored) is type(cal)
    grid = np.linspace(-12, 12, 101)
    np.testing.assert_array_equal(restored.predict_proba(grid), cal.predict_proba(grid))
    np.testing.assert_array_equal(restored.predict_logit(grid), cal.predict_logit(grid))


def test_make_calibrator_and_registry():
    assert set(CALIBRATORS) == {"temperature", "platt", "isotonic", "beta"}
    assert isinstance(make_calibrator("platt", symmetric=False), PlattScaler)
    with pytest.raises(ValueError, match=r"name='tempreature' is not supported; valid choices: "):
        make_calibrator("tempreature")


# -- SpreadScaler ----------------------------------------------------------------------
def _ensemble(k: float, n: int = 4000, members: int = 16, seed: int = 9):
    """Synthetic ensemble whose spread is ``k`` times the actual error scale of its mean.

    Per pair: error scale τ ~ U(0.3, 3), true margin Δ* ~ N(0, 3²), label
    y ~ Bernoulli(σ(Δ*)), mean margin Δ* + τ·ε, members mean + k·τ·z
    (z standardised per pair). k > 1 is over-dispersed, k < 1 under-dispersed.
    """
    rng = np.random.default_rng(seed)
    tau = rng.uniform(0.3, 3.0, n)
    true = rng.normal(0.0, 3.0, n)
    y = (rng.uniform(size=n) < sigmoid(true)).astype(float)
    mean = true + tau * rng.normal(size=n)
    z = rng.normal(size=(members, n))
    z = (z - z.mean(0)) / z.std(0)
    return torch.tensor(mean + k * tau * z), y


@pytest.fixture(scope="module")
def spread_fits():
    fits = {}
    for k in (3.0, 0.2):
        samples, y = _ensemble(k)
        pp = PreferencePrediction.from_margin_samples(samples)
        fits[k] = (pp, y, SpreadScaler().fit(pp[:2000], y[:2000]))
    return fits


@pytest.mark.parametrize("k", [3.0, 0.2], ids=["over-dispersed", "under-dispersed"])
def test_spread_scaler_moves_factor_and_lowers_nll(spread_fits, k):
    pp, y, cal = spread_fits[k]
    # measured: s = 0.49 for k = 3 and s = 7.3 for k = 0.2 (s·k ≈ 1.46 in both)
    assert cal.spread_ < 0.7 if k > 1 else cal.spread_ > 3.0
    before = negative_log_likelihood(y[2000:], pp.prob[2000:].numpy())
    after = negative_log_likelihood(y[2000:], cal.predict_proba(pp[2000:]))
    assert after < before - 0.02  # measured 0.498 -> 0.470 and 0.531 -> 0.470
    out = cal.transform(pp)
    assert isinstance(out, PreferencePrediction)
    np.testing.assert_allclose(out.prob.numpy(), cal.predict_proba(pp), atol=1e-12)


def test_spread_scaler_is_equivariant_to_the_input_spread(spread_fits):
    # The two ensembles differ only by a factor 15 in spread, so s·k must agree.
    s_over, s_under = spread_fits[3.0][2].spread_, spread_fits[0.2][2].spread_
    assert s_over * 3.0 == pytest.approx(s_under * 0.2, rel=1e-3)


def test_spread_scaler_gaussian_mode_and_temperature():
    samples, y = _ensemble(3.0, n=2000)
    pp = PreferencePrediction.from_gaussian_margin(samples.mean(0), samples.var(0, unbiased=False))
    cal = SpreadScaler(fit_temperature=True).fit(pp, y)
    assert cal.spread_ < 1.0
    assert 0.5 < cal.temperature_ < 1.5
    out = cal.transform(pp)
    np.testing.assert_allclose(out.margin_var.numpy(), pp.margin_var.numpy() * cal.spread_**2)
    np.testing.assert_allclose(out.prob.numpy(), cal.predict_proba(pp), atol=1e-9)
    assert out.sample(8, torch.Generator().manual_seed(0)).shape == (8, len(pp))


def test_spread_scaler_rescales_rewards_consistently():
    rng = torch.Generator().manual_seed(0)
    rc = RewardPrediction.from_samples(torch.randn(8, 50, generator=rng, dtype=torch.float64))
    rr = RewardPrediction.from_samples(torch.randn(8, 50, generator=rng, dtype=torch.float64))
    pp = PreferencePrediction.from_margin_samples(rc.samples - rr.samples, chosen=rc, rejected=rr)
    cal = SpreadScaler(fit_temperature=True).fit(pp)
    out = cal.transform(pp)
    np.testing.assert_allclose(
        (out.chosen.samples - out.rejected.samples).numpy(), out.margin_samples.numpy(), atol=1e-12
    )
    restored = calibrator_from_state(json.loads(json.dumps(cal.get_state())))
    np.testing.assert_array_equal(restored.predict_proba(pp), cal.predict_proba(pp))


# -- bad input: one test per failure mode ------------------------------------------------
def test_nan_margins_rejected():
    with pytest.raises(ValueError, match=r"margins contains NaN or infinite values \(1 of 3"):
        TemperatureScaler().fit([0.1, math.nan, 0.3])


def test_inf_margins_rejected():
    with pytest.raises(ValueError, match="margins contains NaN or infinite"):
        PlattScaler().fit(np.array([0.1, np.inf, 0.3]), [1, 0, 1])


def test_labels_outside_zero_one_rejected():
    with pytest.raises(ValueError, match="labels must contain only 0 and 1, found 2"):
        TemperatureScaler().fit([0.1, 0.2, 0.3], [1, 2, 0])


def test_length_mismatch_rejected():
    with pytest.raises(ValueError, match="length mismatch: margins has 3, labels has 2"):
        BetaCalibrator().fit([0.1, 0.2, 0.3], [1, 0])


def test_margins_must_be_one_dimensional():
    with pytest.raises(ValueError, match=r"margins must have shape \(N,\), got shape \(2, 2\)"):
        TemperatureScaler().fit(np.ones((2, 2)))


@pytest.mark.parametrize(("name", "needed"), [("temperature", 2), ("isotonic", 10), ("beta", 4)])
def test_too_few_pairs_rejected(name, needed):
    cls = CALIBRATORS[name].__name__
    with pytest.raises(ValueError, match=f"{cls} needs at least {needed} pairs to fit, got 1"):
        make_calibrator(name).fit([0.5])


def test_predict_before_fit_rejected():
    with pytest.raises(NotFittedError, match="This IsotonicCalibrator is not fitted yet"):
        IsotonicCalibrator().predict_proba([0.1])
    with pytest.raises(NotFittedError, match="This SpreadScaler is not fitted yet"):
        SpreadScaler().predict_proba(PreferencePrediction.from_margin_samples(torch.ones(2, 3)))


def test_one_class_without_symmetrisation_rejected():
    with pytest.raises(ValueError, match=r"PlattScaler\(symmetric=False\) needs labels of both"):
        PlattScaler(symmetric=False).fit([0.1, 0.2, 0.3])


def test_bad_source_rejected():
    with pytest.raises(ValueError, match="source='mean' is not supported; valid choices"):
        TemperatureScaler(source="mean")


def test_spread_scaler_needs_a_prediction():
    with pytest.raises(ValueError, match="pred must be a PreferencePrediction, got ndarray"):
        SpreadScaler().fit(np.ones(5))


def test_bad_state_rejected():
    with pytest.raises(ValueError, match="state must be a dict with a 'class' key"):
        calibrator_from_state({"params": {}})
    with pytest.raises(ValueError, match=r"state\['class'\]='Nope' is not supported"):
        calibrator_from_state({"class": "Nope"})
