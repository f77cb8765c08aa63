"""Metrics: agreement with torchmetrics and sklearn, known values, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from auq import metrics as M
from auq import types as M_types

torchmetrics = pytest.importorskip("torchmetrics")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def miscalibrated(n: int, seed: int):
    rng = np.random.default_rng(seed)
    p = rng.uniform(size=n)
    y = (rng.uniform(size=n) < p**1.6).astype(float)
    return y, p


# -- agreement with torchmetrics -----------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_bins", [5, 15, 20])
def test_ece_equals_torchmetrics_binary(seed, n_bins):
    from torchmetrics.classification import BinaryCalibrationError

    y, p = miscalibrated(500 + 300 * seed, seed)
    expected = BinaryCalibrationError(n_bins=n_bins, norm="l1")(torch.tensor(p), torch.tensor(y))
    assert M.expected_calibration_error(y, p, n_bins) == pytest.approx(float(expected), abs=1e-12)
    mce = BinaryCalibrationError(n_bins=n_bins, norm="max")(torch.tensor(p), torch.tensor(y))
    assert M.maximum_calibration_error(y, p, n_bins) == pytest.approx(float(mce), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_top_label_ece_equals_torchmetrics_multiclass(seed):
    from torchmetrics.classification import MulticlassCalibrationError

    y, p = miscalibrated(800, 10 + seed)
    probs = torch.tensor(np.stack([1 - p, p], axis=1))
    metric = MulticlassCalibrationError(num_classes=2, n_bins=15, norm="l1")
    expected = float(metric(probs, torch.tensor(y).long()))
    # torchmetrics computes the multiclass form in float32
    assert M.expected_calibration_error(y, p, form="top_label") == pytest.approx(expected, abs=1e-6)


def test_ece_accepts_float32_tensors():
    from torchmetrics.classification import BinaryCalibrationError

    y, p = miscalibrated(1000, 20)
    pt, yt = torch.tensor(p, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)
    expected = float(BinaryCalibrationError(n_bins=15)(pt, yt))
    assert M.expected_calibration_error(yt, pt) == pytest.approx(expected, abs=1e-6)


# -- known values ----------------------------------------------------------------------------
def test_ece_near_zero_on_perfectly_calibrated_samples():
    # y ~ Bernoulli(p): every bin holds ≈ 6,700 of 100k samples, so each bin's gap has
    # standard deviation ≤ 0.5 / √6700 ≈ 0.006 and E|gap| ≤ 0.005; bound 0.01.
    rng = np.random.default_rng(0)
    p = rng.uniform(size=100_000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    assert M.expected_calibration_error(y, p) < 0.01
    assert M.expected_calibration_error(y, p, strategy="quantile") < 0.01
    assert M.expected_calibration_error(y, p, form="top_label") < 0.01
    assert M.adaptive_calibration_error(y, p) < 0.01


def test_ece_exact_value_for_constant_prediction():
    y = np.array([1, 0] * 50)
    p = np.full(100, 0.7)
    for fn in (M.expected_calibration_error, M.maximum_calibration_error):
        assert fn(y, p) == pytest.approx(0.2)
    assert M.adaptive_calibration_error(y, p, n_bins=1) == pytest.approx(0.2)


def test_reliability_curve_bins():
    curve = M.reliability_curve([0, 1, 1, 0], [0.05, 0.15, 0.95, 1.0], n_bins=10)
    assert curve.counts.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]  # 1.0 goes to the last bin
    assert np.isnan(curve.confidence[2]) and np.isnan(curve.accuracy[2])
    assert curve.confidence[9] == pytest.approx(0.975) and curve.accuracy[9] == 0.5
    assert curve.edges.shape == (11,)
    q = M.reliability_curve(*miscalibrated(1000, 1), n_bins=10, strategy="quantile")
    assert q.counts.sum() == 1000 and q.counts.min() >= 99


def test_scoring_rules_match_sklearn():
    from sklearn.metrics import brier_score_loss, log_loss

    y, p = miscalibrated(1000, 2)
    assert M.brier_score(y, p) == pytest.approx(brier_score_loss(y, p), rel=1e-12)
    assert M.negative_log_likelihood(y, p) == pytest.approx(log_loss(y, p), rel=1e-9)


def test_nll_from_logits_is_exact_and_stable():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 3, 500)
    y = (rng.uniform(size=500) < sigmoid(z)).astype(float)
    assert M.negative_log_likelihood_from_logits(y, z) == pytest.approx(
        M.negative_log_likelihood(y, sigmoid(z)), rel=1e-9
    )
    # logits of ±1000: probabilities round to 0/1, the logit form stays exact
    assert M.negative_log_likelihood_from_logits([1, 0], [-1000.0, 1000.0]) == pytest.approx(1000)
    assert M.negative_log_likelihood_from_logits([1, 0], [1000.0, -1000.0]) == 0.0
    assert M.negative_log_likelihood([1], [0.0]) == pytest.approx(-math.log(1e-12))


def test_accuracy_counts_ties_as_rejected():
    assert M.accuracy([1, 1, 0, 1], [0.9, 0.5, 0.2, 0.4]) == 0.5


def test_error_detection_and_ood():
    from sklearn.metrics import roc_auc_score

    errors = np.array([0, 0, 1, 1, 0, 1])
    unc = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.7])
    assert M.error_detection_auroc(errors, unc) == 1.0
    assert M.error_detection_aupr(errors, unc) == 1.0
    assert M.error_detection_auroc(errors, -unc) == 0.0
    rng = np.random.default_rng(4)
    e, u = (rng.uniform(size=300) < 0.3).astype(float), rng.normal(size=300)
    assert M.error_detection_auroc(e, u) == pytest.approx(roc_auc_score(e, u))
    assert M.ood_auroc([0.1, 0.2], [0.5, 0.9, 0.7]) == 1.0
    assert M.ood_auroc([0.5, 0.9], [0.1, 0.2]) == 0.0
    assert M.ood_aupr([0.1, 0.2], [0.5, 0.9, 0.7]) == 1.0


def test_risk_coverage_curve_and_aurc():
    losses = np.array([1.0, 0.0, 0.0, 1.0])
    unc = np.array([0.9, 0.1, 0.2, 0.5])
    cov, risk = M.risk_coverage_curve(losses, unc)
    np.testing.assert_allclose(cov, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.0, 1 / 3, 0.5])
    assert M.aurc(losses, unc) == pytest.approx((0 + 0 + 1 / 3 + 0.5) / 4)
    # ties are resolved in expectation: any order of tied inputs gives the same curve
    tied = np.zeros(4)
    np.testing.assert_allclose(M.risk_coverage_curve(losses, tied)[1], [0.5] * 4)
    np.testing.assert_allclose(M.risk_coverage_curve(losses[::-1], tied)[1], [0.5] * 4)


def test_confident_rates():
    lower = np.array([0.5, -1.0, -3.0, -0.2, 0.1])
    upper = np.array([2.0, 1.0, -0.5, 0.4, 0.9])
    out = M.confident_rates(lower, upper)  # labels default: chosen wins
    assert out == {"confident_true": 0.4, "confident_false": 0.2, "confident": 0.6}
    flipped = M.confident_rates(lower, upper, [1, 1, 0, 1, 0])
    assert flipped["confident_true"] == 0.4 and flipped["confident_false"] == 0.2
    with_margin = M.confident_rates(lower, upper, margin=[1.0, 0.3, -1.0, -0.1, 0.5])
    assert with_margin["unconfident_true"] == 0.2 and with_margin["unconfident_false"] == 0.2


def test_bound_calibration():
    out = M.bound_calibration([0.0, 1.0, 2.0, 3.0], [-1.0, 1.5, 1.0, 0.0], [1.0, 2.0, 1.5, 4.0])
    assert out == {"lower_holds": 0.75, "upper_holds": 0.75, "coverage": 0.5, "mean_width": 1.75}


def test_preference_bound_calibration_error():
    y = np.array([1, 1, 0, 0])
    out = M.preference_bound_calibration_error(y, [0.8, 0.8, 0.8, 0.8], [0.9, 0.9, 0.9, 0.9])
    # lower bound 0.8 against frequency 0.5: violated by 0.3; upper 0.9 ≥ 0.5: fine
    assert out["elce"] == pytest.approx(0.3) and out["mlce"] == pytest.approx(0.3)
    assert out["euce"] == 0.0 and out["muce"] == 0.0


REPORT_KEYS = {
    "n", "symmetrized", "accuracy", "ece", "ece_top_label", "mce", "ace", "brier", "nll",
}  # fmt: skip


def test_calibration_report():
    y, p = miscalibrated(2000, 5)
    unc = -np.abs(p - 0.5)
    rng = np.random.default_rng(6)
    report = M.calibration_report(y, p, unc, ood_uncertainty=rng.uniform(-0.1, 0, 100))
    assert set(report) == REPORT_KEYS | {
        "uncertainty_score", "error_auroc", "error_aupr", "aurc", "ood_auroc", "ood_aupr",
    }  # fmt: skip
    assert report["n"] == 2000 and report["symmetrized"] is False  # two classes: as given
    assert report["uncertainty_score"] is None  # a plain array has no name
    assert report["ece"] == M.expected_calibration_error(y, p)
    assert report["accuracy"] == M.accuracy(y, p)
    assert report["error_auroc"] > 0.6  # confidence does rank errors here
    assert set(M.calibration_report(y, p)) == REPORT_KEYS
    json.dumps(report, allow_nan=False)


def test_report_without_errors_to_rank_is_strict_json():
    all_right = M.calibration_report([1, 0], [0.9, 0.2], [0.1, 0.2])
    assert all_right["error_auroc"] is None and all_right["error_aupr"] is None
    assert all_right["aurc"] == 0.0
    json.dumps(all_right, allow_nan=False)


def test_report_symmetrises_one_class_labels():
    _, p = miscalibrated(1000, 8)
    report = M.calibration_report(np.ones(1000), p)
    assert report["symmetrized"] is True and report["n"] == 1000
    p2, y2 = M.symmetrize_probabilities(p)
    assert report["ece"] == M.expected_calibration_error(y2, p2)
    assert report["brier"] == M.brier_score(y2, p2)
    assert report["nll"] == M.negative_log_likelihood(y2, p2)
    assert report["accuracy"] == M.accuracy(np.ones(1000), p)  # on the pairs as given
    forced = M.calibration_report(*miscalibrated(500, 9), symmetrize=True)
    assert forced["symmetrized"] is True


def test_report_refuses_one_class_labels_without_symmetrisation():
    with pytest.raises(
        ValueError, match=r"y_true holds one class only \(every label is 1\), so ECE"
    ):
        M.calibration_report(np.ones(10), np.full(10, 0.7), symmetrize=False)


def test_report_rejects_a_bad_symmetrize_option():
    with pytest.raises(
        ValueError, match="symmetrize='yes' is not supported; valid choices: 'auto', True"
    ):
        M.calibration_report([0, 1], [0.2, 0.8], symmetrize="yes")


def _prediction(n: int, seed: int, shift: float = 0.0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    rc = M_types.RewardPrediction.from_samples(
        torch.randn(6, n, generator=g, dtype=torch.float64) * scale + 1.0 + shift
    )
    rr = M_types.RewardPrediction.from_samples(
        torch.randn(6, n, generator=g, dtype=torch.float64) * scale
    )
    return M_types.PreferencePrediction.from_margin_samples(
        rc.samples - rr.samples, chosen=rc, rejected=rr
    )


def test_report_takes_a_prediction_and_score_names():
    pp = _prediction(400, 0)
    report = M.calibration_report(None, pp, "epistemic")
    assert report["symmetrized"] is True and report["calibrator"] is None  # chosen wins
    assert report["uncertainty_score"] == "epistemic"
    logit = pp.logit.numpy()
    assert report["nll"] == pytest.approx(
        M.negative_log_likelihood_from_logits(
            np.r_[np.ones(400), np.zeros(400)], np.r_[logit, -logit]
        ),
        rel=1e-12,
    )
    assert report["accuracy"] == pp.accuracy()
    assert report["error_auroc"] == M.error_detection_auroc((~pp.correct).double(), pp.epistemic)
    json.dumps(report, allow_nan=False)


def test_report_ood_defaults_to_response_std():
    pp, ood = _prediction(300, 1), _prediction(200, 2, scale=3.0)
    report = M.calibration_report(None, pp, ood_uncertainty=ood)
    assert report["uncertainty_score"] == "response_std"
    assert report["ood_auroc"] == M.ood_auroc(pp, ood)  # score defaults to response_std
    assert report["ood_auroc"] > 0.9  # wider members are plainly out of distribution
    margin = M.calibration_report(None, pp, "margin_std", ood_uncertainty=ood)
    assert margin["ood_auroc"] == M.ood_auroc(pp, ood, score="margin_std")


def test_report_names_the_calibrator():
    pp = _prediction(50, 3)
    cal = pp.calibrated(pp.logit.numpy() / 2, "temperature")
    report = M.calibration_report(None, cal)
    assert report["calibrator"] == "temperature"
    p2, y2 = M.symmetrize_probabilities(cal.prob.numpy())
    assert report["ece"] == pytest.approx(M.expected_calibration_error(y2, p2), abs=1e-12)


def test_symmetrize_probabilities():
    p, y = M.symmetrize_probabilities([0.9, 0.2], [1, 0])
    np.testing.assert_allclose(p, [0.9, 0.2, 0.1, 0.8])
    np.testing.assert_array_equal(y, [1, 0, 0, 1])
    pp = M_types.PreferencePrediction.from_margin_samples(torch.full((2, 1), 40.0))
    p, y = M.symmetrize_probabilities(pp)  # σ(−40) ≈ 4e-18 is kept, not rounded to 1 − 1 = 0
    assert p[1] == pytest.approx(math.exp(-40), rel=1e-9) and y.tolist() == [1.0, 0.0]


def test_detection_metrics_take_predictions_and_a_score():
    pp, ood = _prediction(100, 4), _prediction(80, 5, scale=2.0)
    assert M.ood_auroc(pp, ood) == M.ood_auroc(pp.response_std, ood.response_std)
    assert M.ood_aupr(pp, ood, score="total") == M.ood_aupr(pp.total, ood.total)
    errors = (~pp.correct).double()
    assert M.error_detection_aupr(errors, pp, score="total") == M.error_detection_aupr(
        errors, pp.total
    )
    assert M.aurc(errors, pp, score="margin_std") == M.aurc(errors, pp.margin_std)


def test_torch_and_numpy_inputs_agree():
    y, p = miscalibrated(300, 7)
    t = (torch.tensor(y), torch.tensor(p, requires_grad=True))
    assert M.brier_score(*t) == M.brier_score(y, p)
    assert M.expected_calibration_error(*t) == M.expected_calibration_error(y, p)


# -- bad input: one test per failure mode ------------------------------------------------------
def test_nan_probabilities_rejected():
    with pytest.raises(ValueError, match=r"y_prob contains NaN or infinite values \(1 of 2"):
        M.expected_calibration_error([0, 1], [0.2, math.nan])


def test_probabilities_outside_unit_interval_rejected():
    with pytest.raises(ValueError, match=r"y_prob must contain probabilities in \[0, 1\]"):
        M.brier_score([0, 1], [0.2, 1.5])


def test_labels_outside_zero_one_rejected():
    with pytest.raises(ValueError, match="y_true must contain only 0 and 1, found 0.5"):
        M.accuracy([0.5, 1], [0.2, 0.8])


def test_length_mismatch_rejected():
    with pytest.raises(ValueError, match="length mismatch: y_true has 3, y_prob has 2"):
        M.negative_log_likelihood([0, 1, 1], [0.2, 0.8])


def test_empty_input_rejected():
    with pytest.raises(ValueError, match="y_true is empty"):
        M.brier_score([], [])


def test_two_dimensional_input_rejected():
    with pytest.raises(ValueError, match=r"y_prob must have shape \(N,\), got shape \(2, 2\)"):
        M.brier_score([0, 1], np.full((2, 2), 0.5))


def test_bad_options_rejected():
    with pytest.raises(ValueError, match="n_bins must be an integer >= 1, got 0"):
        M.expected_calibration_error([0, 1], [0.2, 0.8], n_bins=0)
    with pytest.raises(ValueError, match="strategy='equal' is not supported; valid choices"):
        M.expected_calibration_error([0, 1], [0.2, 0.8], strategy="equal")
    with pytest.raises(ValueError, match="form='top' is not supported; valid choices"):
        M.reliability_curve([0, 1], [0.2, 0.8], form="top")


def test_single_class_errors_rejected():
    with pytest.raises(ValueError, match="errors must contain both errors .* got only errors"):
        M.error_detection_auroc([1, 1], [0.1, 0.2])


def test_crossed_intervals_rejected():
    with pytest.raises(ValueError, match="margin_lower must not exceed margin_upper; 1 of 2"):
        M.confident_rates([0.0, 2.0], [1.0, 1.0])


def test_ood_without_in_distribution_scores_rejected():
    with pytest.raises(ValueError, match="ood_uncertainty needs uncertainty"):
        M.calibration_report([0, 1], [0.2, 0.8], ood_uncertainty=[0.1])


def test_score_with_arrays_rejected():
    with pytest.raises(
        ValueError,
        match="score='total' names a score of a PreferencePrediction, but in_uncertainty is an array",
    ):
        M.ood_auroc([0.1, 0.2], [0.3], score="total")


def test_score_name_with_array_probabilities_rejected():
    with pytest.raises(
        ValueError,
        match="uncertainty='epistemic' names a score of a PreferencePrediction, but y_prob is an array",
    ):
        M.calibration_report([0, 1], [0.2, 0.8], "epistemic")


def test_labels_required_with_array_probabilities():
    with pytest.raises(
        ValueError, match="y_true is required unless y_prob is a PreferencePrediction"
    ):
        M.calibration_report(None, [0.2, 0.8])


def test_ood_prediction_needs_a_named_score():
    pp = _prediction(20, 6)
    with pytest.raises(
        ValueError, match="ood_uncertainty is a PreferencePrediction, so name its score"
    ):
        M.calibration_report(None, pp, np.ones(20), ood_uncertainty=pp)


def test_bad_score_name_rejected():
    with pytest.raises(
        ValueError, match="score='std' is not supported; valid choices: 'response_std'"
    ):
        M.calibration_report(None, _prediction(20, 7), "std")
