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
from sklearn.base import clone

from auq.calibration import (
    CALIBRATORS,
    BetaCalibrator,
    ConformalInterval,
    ConformalPreference,
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
    by_logit = TemperatureScaler().fit(pp)  # pred.logit: float64, equal to Δ for equal draws
    by_mean = TemperatureScaler(source="margin_mean").fit(pp)
    assert by_logit.temperature_ == pytest.approx(ref.temperature_, rel=1e-6)
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
    state = json.loads(json.dumps(cal.get_state(), allow_nan=False))  # strict JSON, no pickle
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
    restored = calibrator_from_state(json.loads(json.dumps(cal.get_state(), allow_nan=False)))
    np.testing.assert_array_equal(restored.predict_proba(pp), cal.predict_proba(pp))


# -- float64 precision: g(−Δ) = 1 − g(Δ) to 1e-9 for |Δ| ≤ 50 ----------------------------------
PRECISION_GRID = np.linspace(-50.0, 50.0, 201)


def _fitted_every_way():
    """Every calibrator (both variants of each), fitted on the same pairs."""
    true, y = bradley_terry(3000, seed=11)
    m = 1.5 * true
    cals = {f"{n}": make_calibrator(n).fit(m, y) for n in NAMES}
    pp = PreferencePrediction.from_margin_samples(torch.tensor(m * (2 * y - 1))[None].repeat(3, 1))
    cals["spread"] = SpreadScaler(fit_temperature=True).fit(pp)
    return cals


@pytest.fixture(scope="module")
def every_calibrator():
    return _fitted_every_way()


@pytest.mark.parametrize("name", [*NAMES, "spread"])
def test_swap_symmetry_to_1e9_up_to_50_from_predictions(every_calibrator, name):
    # float32 draws; the prediction's float64 logit is what the calibrator reads (a float32
    # probability would round to 1 beyond |Δ| ≈ 17 and break the symmetry)
    cal = every_calibrator[name]
    draws = (
        torch.tensor(PRECISION_GRID, dtype=torch.float32) + torch.linspace(-0.5, 0.5, 4)[:, None]
    )
    pos = PreferencePrediction.from_margin_samples(draws)
    neg = PreferencePrediction.from_margin_samples(-draws)
    p_pos, p_neg = cal.predict_proba(pos), cal.predict_proba(neg)
    assert p_pos.dtype == np.float64
    assert np.max(np.abs(p_neg - (1 - p_pos))) <= 1e-9
    assert np.max(np.abs(cal.predict_logit(neg) + cal.predict_logit(pos))) <= 1e-9 * 50


@pytest.mark.parametrize("name", NAMES)
def test_swap_symmetry_to_1e9_up_to_50_from_margins(every_calibrator, name):
    cal = every_calibrator[name]
    for margins in (PRECISION_GRID, torch.tensor(PRECISION_GRID, dtype=torch.float32)):
        p = cal.predict_proba(margins)
        assert np.max(np.abs(cal.predict_proba(-margins) - (1 - p))) <= 1e-9


@pytest.mark.parametrize("name", NAMES)
def test_calibrate_returns_a_named_calibrated_prediction(every_calibrator, name):
    cal = every_calibrator[name]
    pp = PreferencePrediction.from_margin_samples(
        torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    )
    out = cal.calibrate(pp)
    assert isinstance(out, PreferencePrediction) and out.calibrator == name
    np.testing.assert_array_equal(out.logit.numpy(), cal.predict_logit(pp))
    np.testing.assert_allclose(out.prob.numpy(), cal.predict_proba(pp), atol=1e-15)
    assert torch.equal(out.total, pp.total)


def test_spread_scaler_refuses_an_already_calibrated_prediction(every_calibrator):
    pp = PreferencePrediction.from_margin_samples(torch.randn(3, 20))
    calibrated = every_calibrator["temperature"].calibrate(pp)
    with pytest.raises(ValueError, match="pred was already calibrated by 'temperature'"):
        SpreadScaler().fit(calibrated)
    assert every_calibrator["spread"].transform(pp).calibrator == "spread"


# -- scikit-learn manners and the one state path ---------------------------------------------------
ESTIMATORS = [
    TemperatureScaler(source="margin_mean"),
    PlattScaler(symmetric=False),
    IsotonicCalibrator(),
    BetaCalibrator(symmetric=False),
    SpreadScaler(fit_temperature=True, mode="samples"),
    ConformalInterval(alpha=0.2),
    ConformalPreference(alpha=0.05, source="margin_mean"),
]


@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_get_params_set_params_and_clone(est):
    params = est.get_params()
    twin = clone(est)
    assert type(twin) is type(est) and twin.get_params() == params and twin is not est
    assert not twin.__sklearn_is_fitted__()
    key = next(iter(params))
    with pytest.raises(ValueError, match=key):
        clone(est).set_params(**{key: "nonsense"})
    assert clone(est).set_params(**{key: params[key]}).get_params() == params


def _fit(est):
    true, y = bradley_terry(400, seed=12)
    if isinstance(est, SpreadScaler):
        pp = PreferencePrediction.from_margin_samples(
            torch.tensor(true)[None] + torch.randn(4, 400)
        )
        return clone(est).fit(pp, y)
    if isinstance(est, ConformalInterval):
        return clone(est).fit(true, true + np.random.default_rng(0).normal(size=400))
    return clone(est).fit(true, y)


@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_every_state_is_strict_json_and_dispatches(est):
    fitted = _fit(est)
    state = json.loads(json.dumps(fitted.get_state(), allow_nan=False))
    assert state["class"] == type(est).__name__ and state["version"] == 1
    restored = calibrator_from_state(state)
    assert type(restored) is type(est) and restored.get_params() == fitted.get_params()
    for name in type(est)._fitted:
        np.testing.assert_array_equal(getattr(restored, name), getattr(fitted, name))


@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_reprs_are_concise(est):
    text = repr(_fit(est))
    assert text.startswith(type(est).__name__ + "(") and len(text) < 160 and "\n" not in text
    assert "n_pairs_=" in text or "n_calibration_=" in text


def test_conformal_repr_shows_alpha_quantile_and_n():
    text = repr(_fit(ConformalInterval(alpha=0.2)))
    assert text.startswith("ConformalInterval(alpha=0.2, quantile_=")
    assert "n_calibration_=400" in text
    assert repr(ConformalPreference()) == "ConformalPreference(alpha=0.1, source='logit')"


def test_state_with_unknown_option_rejected():
    state = _fit(SpreadScaler()).get_state()
    state["params"]["n_points"] = 32  # an option SpreadScaler no longer has
    with pytest.raises(
        ValueError, match=r"state\['params'\] has unknown option\(s\) 'n_points' for SpreadScaler"
    ):
        calibrator_from_state(state)


def test_state_missing_a_fitted_value_rejected():
    state = _fit(TemperatureScaler()).get_state()
    del state["fitted"]["temperature_"]
    with pytest.raises(
        ValueError, match=r"state\['fitted'\] lacks 'temperature_' for TemperatureScaler"
    ):
        calibrator_from_state(state)


def test_state_from_a_newer_version_rejected():
    state = _fit(PlattScaler()).get_state()
    state["version"] = 99
    with pytest.raises(ValueError, match="state version 99 is newer than this auq supports"):
        calibrator_from_state(state)


def test_state_of_an_unfitted_calibrator_rejected():
    with pytest.raises(
        NotFittedError, match=r"This BetaCalibrator is not fitted yet; call fit\(margins, labels\)"
    ):
        BetaCalibrator().get_state()


def test_bad_symmetric_option_rejected():
    with pytest.raises(ValueError, match="symmetric must be True or False, got 'yes'"):
        PlattScaler(symmetric="yes")


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


def test_calibrate_needs_a_prediction(every_calibrator):
    with pytest.raises(TypeError, match="calibrate takes a PreferencePrediction, got ndarray"):
        every_calibrator["platt"].calibrate(np.ones(5))


def test_bad_state_rejected():
    with pytest.raises(ValueError, match="state must be a dict with a 'class' key"):
        calibrator_from_state({"params": {}})
    with pytest.raises(ValueError, match=r"state\['class'\]='Nope' is not supported"):
        calibrator_from_state({"class": "Nope"})
