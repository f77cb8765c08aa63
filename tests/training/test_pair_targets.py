"""Offline DPO targets from a reward model: soft labels, weights, pessimistic actions."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

import auq
from auq.training.losses import DROP, KEEP, SWAP
from auq.training.pair_targets import (
    UNCERTAINTY_MODES,
    WEIGHT_SCHEDULES,
    PairTargets,
    pair_targets,
    uncertainty_weights,
)


@pytest.fixture(scope="module")
def pairs(builtin_small):
    return builtin_small[1].select(range(24))


@pytest.fixture(scope="module", params=["heads", "laplace"])
def reward_model(request, tiny_gpt2_dir, builtin_small):
    options = {"n_members": 4, "hidden_size": 8} if request.param == "heads" else {}
    rm = auq.RewardModel.from_backbone(tiny_gpt2_dir, uq=request.param, max_length=256, **options)
    fit = {"epochs": 1} if request.param == "heads" else {}
    return rm.fit(builtin_small[0].select(range(32)), progress=False, **fit)


@pytest.fixture(scope="module")
def calibrated_model(reward_model, builtin_small):
    rm = copy.deepcopy(reward_model)
    rm.calibrate(builtin_small[0].select(range(32, 64)), method="temperature")
    return rm


@pytest.fixture(scope="module")
def reference(reward_model, pairs):
    """What the model predicts for the pairs, computed independently of pair_targets."""
    return reward_model.predict(pairs, calibrated=False)


def _quiet(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pair_targets(**kwargs)


# -- every mode ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", UNCERTAINTY_MODES)
def test_one_predict_call_and_the_margins_in_every_mode(mode, reward_model, pairs, reference):
    calls = []
    predict = reward_model.predict

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return predict(*args, **kwargs)

    reward_model.predict = counting
    try:
        out = _quiet(reward_model=reward_model, dataset=pairs, mode=mode)
    finally:
        del reward_model.predict  # back to the class method
    assert len(calls) == 1 and calls[0]["calibrated"] is None
    assert isinstance(out, PairTargets) and out.mode == mode and len(out) == len(pairs)
    assert torch.allclose(out.margin_mean, reference.margin_mean.double())
    assert torch.allclose(out.margin_std, reference.margin_std.double())
    assert torch.allclose(out.epistemic, reference.epistemic.double())
    assert torch.allclose(out.prob, reference.prob)
    assert (out.label is not None) == (mode == "soft_label")
    assert (out.weight is not None) == (mode == "weight")
    assert (out.actions is not None) == (mode == "pessimistic")
    s = out.summary()
    assert s["n_pairs"] == len(pairs)
    assert s["prob_mean"] == pytest.approx(float(reference.prob.mean()))
    assert s["margin_std_mean"] == pytest.approx(float(reference.margin_std.double().mean()))


# -- soft labels ---------------------------------------------------------------------------------
def test_soft_labels_of_an_uncalibrated_model_are_its_probabilities(reward_model, pairs, reference):
    with pytest.warns(UserWarning, match="uncalibrated"):
        out = pair_targets(reward_model, pairs, mode="soft_label")
    assert out.calibrator is None
    assert torch.equal(out.label, reference.prob)


def test_soft_labels_of_a_calibrated_model_are_calibrated(calibrated_model, pairs, reference):
    expected = calibrated_model.predict(pairs)
    assert expected.calibrator == "temperature"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "uncalibrated" warning
        out = pair_targets(calibrated_model, pairs, mode="soft_label")
    assert out.calibrator == "temperature"
    assert torch.equal(out.label, expected.prob)
    assert not torch.allclose(out.label, reference.prob)  # the calibrator changed them


# -- weights -------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", WEIGHT_SCHEDULES)
def test_weights_fall_with_the_margin_std_and_average_one(schedule, reward_model, pairs, reference):
    out = pair_targets(reward_model, pairs, mode="weight", weight_schedule=schedule)
    std = reference.margin_std.double()
    assert out.weight.mean().item() == pytest.approx(1.0)
    order = torch.argsort(std)
    w_sorted, s_sorted = out.weight[order], std[order]
    assert bool((w_sorted[1:] <= w_sorted[:-1] + 1e-12).all())
    assert bool((w_sorted[1:] < w_sorted[:-1])[s_sorted[1:] > s_sorted[:-1] * (1 + 1e-9)].all())
    # the documented schedule with the dataset's median as the scale
    if schedule == "inverse_variance":
        raw = 1 / (1 + std**2 / torch.quantile(std**2, 0.5))
    else:
        raw = torch.exp(-std / torch.quantile(std, 0.5))
    assert torch.allclose(out.weight, raw / raw.mean(), rtol=1e-6)
    u = std**2 if schedule == "inverse_variance" else std
    s = float(torch.quantile(u, 0.5)) ** (0.5 if schedule == "inverse_variance" else 1)
    assert out.weight_scale == pytest.approx(s, rel=1e-6)


def test_weight_scale_sets_s(reward_model, pairs, reference):
    std = reference.margin_std.double()
    s = 0.5 * float(std.mean())
    out = pair_targets(reward_model, pairs, mode="weight", weight_scale=s)
    raw = 1 / (1 + std**2 / s**2)
    assert torch.allclose(out.weight, raw / raw.mean(), rtol=1e-6)
    assert out.weight_scale == s


def test_uncertainty_weights_by_hand():
    var = torch.tensor([0.0, 1.0, 4.0])  # median σ² = 1: raw weights 1, 1/2, 1/5
    w, s = uncertainty_weights(var)
    raw = torch.tensor([1.0, 0.5, 0.2], dtype=torch.float64)
    assert torch.allclose(w, raw / raw.mean()) and s == 1.0
    w, s = uncertainty_weights(var, schedule="exponential")  # median σ = 1: e^0, e^-1, e^-2
    raw = torch.exp(-torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(w, raw / raw.mean()) and s == 1.0
    # more than half of the pairs certain: the scale falls back to the mean σ² (= 1 here)
    w, s = uncertainty_weights(torch.tensor([0.0, 0.0, 0.0, 4.0]))
    raw = torch.tensor([1.0, 1.0, 1.0, 0.2], dtype=torch.float64)
    assert torch.allclose(w, raw / raw.mean()) and s == 1.0
    w, s = uncertainty_weights(torch.zeros(3))
    assert w.tolist() == [1.0, 1.0, 1.0] and s is None


# -- pessimism -----------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [None, 0.25, 0.5, 0.75])
def test_pessimistic_counts_match_a_hand_count(q, reward_model, pairs, reference):
    mean, std = reference.margin_mean.double(), reference.margin_std.double()
    # k at a quantile of |mean|/std, so that whatever the tiny model's scale some pairs are
    # dropped and some kept (q=None: k = 0, nothing dropped)
    k = 0.0 if q is None else float(torch.quantile(mean.abs() / std, q))
    keep, swap = (mean - k * std > 0), (mean + k * std < 0)
    drop = ~keep & ~swap
    if q is not None:
        assert 0 < int(drop.sum()) < len(pairs)
    out = _quiet(reward_model=reward_model, dataset=pairs, mode="pessimistic", k=k)
    assert out.actions.dtype == torch.int64
    assert out.actions[keep].eq(KEEP).all() and out.actions[swap].eq(SWAP).all()
    assert out.actions[drop].eq(DROP).all()
    assert (out.n_dropped, out.n_swapped) == (int(drop.sum()), int(swap.sum()))
    assert out.n_kept == len(pairs) - int(drop.sum())
    s = out.summary()
    assert (s["n_dropped"], s["n_swapped"]) == (int(drop.sum()), int(swap.sum()))
    assert s["dropped_share"] == pytest.approx(int(drop.sum()) / len(pairs))
    if q is None:
        assert out.n_dropped == 0 and out.n_swapped == int((mean < 0).sum()) > 0


def test_dropping_pairs_warns_with_the_count_and_share(reward_model, pairs):
    b = len(pairs)
    with pytest.warns(UserWarning, match=rf"{b} of {b} pairs \(100\.0%\) are dropped"):
        out = pair_targets(reward_model, pairs, mode="pessimistic", k=1e9)
    assert out.n_dropped == b and out.n_kept == 0 and out.summary()["dropped_share"] == 1.0


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"mode": "soft"},
            "mode='soft' is not supported; valid choices: 'none', 'soft_label', 'weight', "
            "'pessimistic'",
        ),
        (
            {"mode": "weight", "weight_schedule": "linear"},
            "weight_schedule='linear' is not supported; valid choices: 'inverse_variance', "
            "'exponential'",
        ),
        ({"mode": "pessimistic", "k": -1.0}, "k must be a finite number >= 0, got -1.0"),
        ({"mode": "pessimistic", "k": math.inf}, "k must be a finite number >= 0"),
        ({"mode": "weight", "weight_scale": 0.0}, "weight_scale must be a finite number > 0"),
    ],
)
def test_bad_options_name_the_option_and_the_choices(options, message):
    class Unused:
        def predict(self, *args, **kwargs):  # pragma: no cover - must not be reached
            raise AssertionError("options are checked before scoring")

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pair_targets(Unused(), [], **options)


def test_an_unfitted_model_is_refused(tiny_gpt2_dir, pairs):
    rm = auq.RewardModel.from_backbone(tiny_gpt2_dir, n_members=2, hidden_size=8)
    with pytest.raises(RuntimeError, match="reward_model is not fitted yet: call rm.fit"):
        pair_targets(rm, pairs, mode="none")


def test_not_a_reward_model():
    with pytest.raises(TypeError, match="reward_model must be an auq RewardModel"):
        pair_targets(object(), [], mode="none")
