"""The currency: moments, log-odds and entropies, closed form vs samples, samplers,
indexing, devices, conversions, reprs and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from auq.types import (
    DEFAULT_UNCERTAINTY_SCORE,
    UNCERTAINTY_SCORES,
    AffineSampler,
    LinearGaussianSampler,
    PreferencePrediction,
    RewardPrediction,
    TruncationStats,
)
from auq.uncertainty import binary_entropy_from_logits, probit_logit


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _with_sides(b: int = 6, s: int = 4, seed: int = 0) -> PreferencePrediction:
    g = _gen(seed)
    rc = RewardPrediction.from_samples(torch.randn(s, b, generator=g, dtype=torch.float64))
    rr = RewardPrediction.from_samples(torch.randn(s, b, generator=g, dtype=torch.float64))
    return PreferencePrediction.from_margin_samples(
        rc.samples - rr.samples, chosen=rc, rejected=rr, method="heads"
    )


def _laplace_like(b: int = 5, d: int = 3, seed: int = 0) -> PreferencePrediction:
    """A closed-form prediction wired like LaplaceHead: one posterior, three designs."""
    g = _gen(seed)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    tril = torch.linalg.cholesky(a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64))
    x_c = torch.randn(b, d, generator=g, dtype=torch.float64)
    x_r = torch.randn(b, d, generator=g, dtype=torch.float64)
    sides = []
    for x in (x_c, x_r):
        var = (x @ tril).square().sum(-1)
        sides.append(
            RewardPrediction.from_moments(
                x @ w, var, sampler=LinearGaussianSampler(w, tril, x), method="laplace"
            )
        )
    z = x_c - x_r
    return PreferencePrediction.from_gaussian_margin(
        z @ w,
        (z @ tril).square().sum(-1),
        sampler=LinearGaussianSampler(w, tril, z),
        chosen=sides[0],
        rejected=sides[1],
        method="laplace",
    )


# -- moments and entropies --------------------------------------------------------------
def test_reward_prediction_from_samples_moments():
    s = torch.randn(5, 7, dtype=torch.float64)
    rp = RewardPrediction.from_samples(s, aleatoric_var=torch.full((7,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(rp.mean, s.mean(0))
    torch.testing.assert_close(rp.var, s.var(0, unbiased=False))
    torch.testing.assert_close(rp.total_var, rp.var + 0.25)
    assert rp.samples.shape == (5, 7) and len(rp) == 7 and rp.n_samples == 5
    torch.testing.assert_close(rp[[0, 2]].samples, s[:, [0, 2]])


def test_preference_entropy_decomposition_identity():
    m = torch.randn(16, 40, dtype=torch.float64) * 2 + 0.5
    pp = PreferencePrediction.from_margin_samples(m)
    assert torch.equal(pp.total, pp.aleatoric + pp.epistemic)
    assert torch.all(pp.epistemic >= 0)
    assert pp.logit.dtype == pp.prob.dtype == pp.total.dtype == torch.float64
    torch.testing.assert_close(pp.prob, torch.sigmoid(m).mean(0))
    torch.testing.assert_close(pp.total, binary_entropy_from_logits(pp.logit))
    assert pp.margin_samples.shape == (16, 40)


def test_single_member_has_no_epistemic_uncertainty():
    m = torch.randn(1, 10)
    pp = PreferencePrediction.from_margin_samples(m)
    assert torch.all(pp.margin_var == 0)
    torch.testing.assert_close(
        pp.epistemic, torch.zeros(10, dtype=torch.float64), atol=1e-15, rtol=0
    )
    torch.testing.assert_close(pp.logit, m[0].double())


def test_entropies_keep_precision_for_large_float32_margins():
    # A float32 probability of σ(30) rounds to 1 and its entropy to 0; from logits it is
    # (1 + 30)·e^−30 ≈ 2.9e-12 nats.
    pp = PreferencePrediction.from_margin_samples(torch.full((4, 3), 30.0))
    expected = binary_entropy_from_logits(torch.tensor(30.0, dtype=torch.float64))
    torch.testing.assert_close(pp.total, expected.expand(3), rtol=1e-12, atol=0)
    torch.testing.assert_close(pp.aleatoric, expected.expand(3), rtol=1e-12, atol=0)
    assert float(pp.total[0]) > 1e-12


def test_gaussian_margin_matches_monte_carlo():
    mean = torch.tensor([-2.0, 0.0, 0.7, 3.0], dtype=torch.float64)
    var = torch.tensor([0.5, 2.0, 0.1, 4.0], dtype=torch.float64)
    closed = PreferencePrediction.from_gaussian_margin(mean, var)
    draws = mean + torch.randn(400_000, 4, generator=_gen(), dtype=torch.float64) * var.sqrt()
    mc = PreferencePrediction.from_margin_samples(draws)
    # the aleatoric entropy is exact (quadrature); SE of the MC mean ≈ 4e-4
    torch.testing.assert_close(closed.aleatoric, mc.aleatoric, atol=2e-3, rtol=0)
    # logit is the probit form, which is close to the exact E[σ(Δ)] (within 0.02)
    torch.testing.assert_close(closed.logit, probit_logit(mean, var), rtol=0, atol=0)
    torch.testing.assert_close(closed.prob, mc.prob, atol=2e-2, rtol=0)
    torch.testing.assert_close(closed.epistemic, mc.epistemic, atol=2e-2, rtol=0)


def test_closed_form_total_entropy_is_the_entropy_of_prob():
    mu = torch.linspace(-60, 60, 241, dtype=torch.float64).repeat(8)
    var = torch.tensor([0.0, 1e-4, 0.5, 1.0, 4.0, 100.0, 1e4, 1e6], dtype=torch.float64)
    var = var.repeat_interleave(241)
    pp = PreferencePrediction.from_gaussian_margin(mu, var)
    assert torch.equal(pp.total, pp.aleatoric + pp.epistemic) and torch.all(pp.epistemic >= 0)
    torch.testing.assert_close(pp.total, binary_entropy_from_logits(pp.logit), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", ["samples", "gaussian"])
def test_swapping_a_pair_flips_the_probability_to_1e9_up_to_50(kind):
    delta = torch.linspace(-50, 50, 401)  # float32 margins
    if kind == "samples":
        spread = torch.linspace(-1, 1, 5)[:, None]
        pos = PreferencePrediction.from_margin_samples(delta + spread)
        neg = PreferencePrediction.from_margin_samples(-(delta + spread))
    else:
        var = torch.full_like(delta, 2.0)
        pos = PreferencePrediction.from_gaussian_margin(delta, var)
        neg = PreferencePrediction.from_gaussian_margin(-delta, var)
    assert torch.equal(neg.logit, -pos.logit)  # exactly odd
    assert float((neg.prob - (1 - pos.prob)).abs().max()) <= 1e-9
    torch.testing.assert_close(neg.total, pos.total, atol=1e-15, rtol=1e-12)  # even in Δ


# -- closed form: samplers and n_samples -----------------------------------------------------
def test_n_samples_drives_the_closed_form_draws():
    mean, var = torch.zeros(3), torch.ones(3)
    rp = RewardPrediction.from_moments(mean, var, n_samples=7)
    assert rp.n_samples == 7 and rp.samples.shape == (7, 3)
    assert rp.samples is rp.samples  # drawn once, cached
    pp = _laplace_like()
    assert pp.n_samples == 64 and pp.margin_samples.shape == (64, 5)
    pp5 = PreferencePrediction.from_gaussian_margin(
        pp.margin_mean, pp.margin_var, sampler=pp.sampler, n_samples=5
    )
    assert pp5.margin_samples.shape == (5, 5) and pp5.n_samples == 5
    torch.testing.assert_close(pp5.margin_samples, pp.sampler(5, _gen(0)))  # seed 0


def test_closed_form_draws_are_joint_and_consistent_across_sides():
    pp = _laplace_like()
    # the three samplers share the posterior and the seed: Δ_s = r_s(c) − r_s(r)
    torch.testing.assert_close(
        pp.margin_samples, pp.chosen.samples - pp.rejected.samples, atol=1e-12, rtol=0
    )


def test_linear_gaussian_sampler_formula_and_covariance():
    pp = _laplace_like(b=4)
    s = pp.sampler
    g1 = _gen(3)
    eps = torch.randn((6, 3), generator=g1, dtype=torch.float64)
    expected = (s.weight + eps @ s.scale_tril.T) @ s.design.T
    torch.testing.assert_close(s(6, _gen(3)), expected)
    draws = s(200_000, _gen(4))  # (n, N)
    cov = torch.cov(draws.T)
    exact = s.design @ s.scale_tril @ s.scale_tril.T @ s.design.T
    torch.testing.assert_close(cov, exact, atol=0.05 * float(exact.abs().max()), rtol=0)
    torch.testing.assert_close(pp.margin_var, exact.diagonal())
    torch.testing.assert_close(s[[0, 2]](5, _gen(1)), s(5, _gen(1))[:, [0, 2]])


def test_linear_gaussian_sampler_offset_is_added_and_selected():
    g = _gen(6)
    w = torch.tensor([1.0, -1.0], dtype=torch.float64)
    tril = 0.1 * torch.eye(2, dtype=torch.float64)
    x = torch.randn(3, 2, generator=g, dtype=torch.float64)
    base = LinearGaussianSampler(w, tril, x)
    off = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    shifted = LinearGaussianSampler(w, tril, x, offset=off)
    torch.testing.assert_close(shifted(4, _gen(2)), base(4, _gen(2)) + off)
    torch.testing.assert_close(
        shifted[[2, 0]](4, _gen(2)), base(4, _gen(2))[:, [2, 0]] + off[[2, 0]]
    )
    scalar = LinearGaussianSampler(w, tril, x, offset=torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(scalar[1:](3, _gen(1)), base(3, _gen(1))[:, 1:] + 0.5)
    assert shifted.to("meta").offset.device.type == "meta"
    with pytest.raises(
        ValueError, match=r"offset must be a scalar or have shape \(3,\), got \(2,\)"
    ):
        LinearGaussianSampler(w, tril, x, offset=torch.zeros(2))


def test_sampler_shape_errors_name_the_argument():
    w = torch.zeros(3)
    with pytest.raises(ValueError, match=r"scale_tril must have shape \(3, 3\), got \(2, 2\)"):
        LinearGaussianSampler(w, torch.eye(2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"design must have shape \(N, 3\), got \(4, 2\)"):
        LinearGaussianSampler(w, torch.eye(3), torch.zeros(4, 2))


def test_a_sampler_returning_the_wrong_shape_is_reported():
    pp = PreferencePrediction.from_gaussian_margin(
        torch.zeros(3), torch.ones(3), sampler=lambda n, g=None: torch.zeros(n, 2)
    )
    with pytest.raises(
        ValueError, match=r"sampler returned \(64, 2\) for n=64, expected shape \(64, 3\)"
    ):
        _ = pp.margin_samples


def test_plain_callable_samplers_still_work_and_are_indexed():
    pp = PreferencePrediction.from_gaussian_margin(
        torch.zeros(3), torch.ones(3), sampler=lambda n, g=None: torch.arange(3.0).expand(n, 3)
    )
    assert torch.all(pp[1:].margin_samples == torch.tensor([1.0, 2.0]))
    assert torch.all(pp[-1].sample(2) == 2.0)


def test_sample_resamples_stored_rows_or_draws_fresh_gaussians():
    stored = torch.randn(4, 3, dtype=torch.float64)
    rp = RewardPrediction.from_samples(stored)
    rows = rp.sample(10, _gen())
    assert all(any(torch.equal(r, s) for s in stored) for r in rows)
    closed = RewardPrediction.from_moments(torch.zeros(3), torch.ones(3), n_samples=2)
    _ = closed.samples
    fresh = closed.sample(1000, _gen(5))  # not a resample of the 2 cached rows
    assert fresh.unique(dim=0).shape[0] == 1000
    assert closed.sample(3, _gen(9)).shape == (3, 3)


# -- devices -----------------------------------------------------------------------------------
def test_to_moves_tensors_samplers_and_sides():
    pp = _laplace_like()
    meta = pp.to(torch.device("meta"))
    assert meta.margin_mean.device.type == meta.logit.device.type == "meta"
    for sampler in (meta.sampler, meta.chosen.sampler, meta.rejected.sampler):
        assert sampler.weight.device.type == sampler.design.device.type == "meta"
        assert sampler.scale_tril.device.type == "meta"
    assert meta.sample(3).device.type == "meta"
    assert pp.margin_mean.device.type == "cpu"  # the original is untouched
    assert "n_pairs=5" in repr(meta)


def test_to_moves_stored_draws_and_wrapped_samplers():
    pp = _with_sides().to("meta")
    assert pp.margin_samples.device.type == pp.chosen.samples.device.type == "meta"
    scaled = RewardPrediction.from_moments(
        torch.zeros(2),
        torch.ones(2),
        sampler=AffineSampler(lambda n, g=None: torch.ones(n, 2), 2.0, torch.zeros(2)),
    ).to("meta")
    assert scaled.sample(4).device.type == "meta"


# -- indexing ------------------------------------------------------------------------------------
def test_integer_indexing_behaves_like_a_sequence():
    pp = _with_sides(b=6)
    last = pp[-1]
    assert len(last) == 1 and torch.equal(last.margin_mean, pp.margin_mean[5:])
    assert torch.equal(last.chosen.mean, pp.chosen.mean[5:])
    assert len(list(pp)) == 6 and all(len(item) == 1 for item in pp)
    with pytest.raises(IndexError, match="index 6 is out of range for 6 pairs"):
        pp[6]
    with pytest.raises(IndexError, match="index -7 is out of range for 6 pairs"):
        pp[-7]
    rp = pp.chosen
    assert len(list(rp)) == 6 and torch.equal(rp[-2].mean, rp.mean[4:5])
    with pytest.raises(IndexError, match="index 9 is out of range for 6 responses"):
        rp[9]


def test_lists_tensors_and_masks_select_items():
    pp = _with_sides(b=6)
    for index in ([0, -1], torch.tensor([0, 5]), np.array([0, 5])):
        sub = pp[index]
        assert torch.equal(sub.margin_samples, pp.margin_samples[:, [0, 5]])
        assert torch.equal(sub.rejected.samples, pp.rejected.samples[:, [0, 5]])
    mask = torch.tensor([True, False, True, False, False, True])
    assert torch.equal(pp[mask].logit, pp.logit[mask])
    assert len(pp[[]]) == 0 and len(pp[4:]) == 2
    with pytest.raises(IndexError, match="boolean mask has length 2, expected 6 pairs"):
        pp[[True, False]]
    with pytest.raises(IndexError, match="index 8 is out of range for 6 pairs"):
        pp[[0, 8]]
    with pytest.raises(TypeError, match="index must hold integers or booleans"):
        pp[[0.5]]


def test_indexing_a_closed_form_prediction_selects_its_sampler():
    pp = _laplace_like(b=5)
    sub = pp[[4, 1]]
    assert sub.sampler.design.shape == (2, 3)
    torch.testing.assert_close(sub.margin_samples, pp.margin_samples[:, [4, 1]])
    torch.testing.assert_close(sub.chosen.samples, pp.chosen.samples[:, [4, 1]])
    assert not sub.is_sample_based and sub.n_samples == 64


# -- calibrated copies and uncertainty scores ------------------------------------------------
def test_calibrated_copy_replaces_only_the_logit():
    pp = _with_sides()
    new = np.linspace(-1, 1, 6)
    cal = pp.calibrated(new, "temperature")
    assert cal.calibrator == "temperature" and pp.calibrator is None
    np.testing.assert_array_equal(cal.logit.numpy(), new)
    torch.testing.assert_close(cal.prob, torch.sigmoid(torch.tensor(new)))
    assert torch.equal(cal.total, pp.total) and torch.equal(cal.margin_samples, pp.margin_samples)
    assert "calibrator='temperature'" in repr(cal)
    assert cal[-1].calibrator == "temperature"


def test_calibrated_copy_validates_its_input():
    pp = _with_sides()
    with pytest.raises(ValueError, match=r"logit must have shape \(6,\), got \(5,\)"):
        pp.calibrated(np.zeros(5), "temperature")
    with pytest.raises(ValueError, match="logit contains NaN or infinite values"):
        pp.calibrated(np.r_[np.zeros(5), np.inf], "temperature")
    with pytest.raises(ValueError, match="calibrator_name must be a non-empty string"):
        pp.calibrated(np.zeros(6), "")


def test_uncertainty_scores():
    pp = _with_sides()
    assert DEFAULT_UNCERTAINTY_SCORE == "response_std" and "epistemic" in UNCERTAINTY_SCORES
    torch.testing.assert_close(pp.uncertainty(), pp.chosen.std + pp.rejected.std)
    torch.testing.assert_close(pp.uncertainty("margin_std"), pp.margin_var.sqrt())
    for name in ("epistemic", "total", "aleatoric"):
        assert torch.equal(pp.uncertainty(name), getattr(pp, name))
    with pytest.raises(
        ValueError, match=r"score='entropy' is not supported; valid choices: 'response_std'"
    ):
        pp.uncertainty("entropy")


def test_response_std_needs_both_sides():
    pp = PreferencePrediction.from_margin_samples(torch.randn(4, 3), method="heads")
    with pytest.raises(
        ValueError, match=r"response_std needs the chosen and rejected rewards.*method='heads'"
    ):
        pp.uncertainty()


def test_response_std_sees_what_margin_std_cancels():
    # both responses far from the data (large, shared std): the margin std cancels it
    shared = torch.randn(8, 1, dtype=torch.float64) * 5
    own = torch.randn(8, 2, dtype=torch.float64) * 0.1
    rc = RewardPrediction.from_samples(shared + own[:, :1])
    rr = RewardPrediction.from_samples(shared + own[:, 1:])
    pp = PreferencePrediction.from_margin_samples(rc.samples - rr.samples, chosen=rc, rejected=rr)
    assert float(pp.response_std[0]) > 10 * float(pp.margin_std[0])


# -- repr and conversions ---------------------------------------------------------------------------
def test_repr_is_short_and_tells_what_it_is():
    g = _gen()
    pp = PreferencePrediction.from_margin_samples(
        torch.randn(8, 800, generator=g) + 1.0, method="heads"
    )
    text = repr(pp)
    assert text.startswith(
        "PreferencePrediction(n_pairs=800, method='heads', n_samples=8, accuracy="
    )
    assert text.endswith("calibrator=None)") and "tensor" not in text and len(text) < 120
    closed = repr(_laplace_like())
    assert "closed_form=True" in closed and "tensor" not in closed
    rp = repr(_with_sides().chosen)
    assert rp.startswith("RewardPrediction(n_responses=6") and "tensor" not in rp
    assert str(pp) == text


def test_repr_surfaces_truncation():
    stats = TruncationStats(n_items=6, n_prompt_truncated=2)
    pp = PreferencePrediction.from_margin_samples(torch.randn(3, 6), truncation=stats)
    assert "2/6 prompts and 0/6 responses truncated" in repr(pp)
    assert pp[:2].truncation is stats  # counts describe the whole scoring call


def test_to_dict_and_to_pandas_round_trip_the_numbers():
    pp = _with_sides()
    d = pp.to_dict()
    assert list(d) == [
        "margin_mean", "margin_std", "logit", "prob", "entropy_total", "entropy_aleatoric",
        "entropy_epistemic", "chosen_mean", "chosen_std", "rejected_mean", "rejected_std",
        "response_std",
    ]  # fmt: skip
    assert all(isinstance(v, np.ndarray) and v.shape == (6,) for v in d.values())
    np.testing.assert_array_equal(d["logit"], pp.logit.numpy())
    d["logit"][0] = 99.0  # a copy: the prediction is untouched
    assert float(pp.logit[0]) != 99.0
    np.testing.assert_array_equal(d["chosen_std"], pp.chosen.std.numpy())
    df = pp.to_pandas()
    assert df.shape == (6, 12)
    np.testing.assert_array_equal(df["prob"].to_numpy(), pp.prob.numpy())
    rd = pp.chosen.to_dict()
    assert set(rd) == {"mean", "std"} and np.array_equal(rd["mean"], pp.chosen.mean.numpy())
    assert pp.to_numpy().shape == (4, 6) and pp.chosen.to_numpy().dtype == np.float64
    plain = PreferencePrediction.from_margin_samples(torch.randn(2, 3)).to_dict()
    assert "chosen_mean" not in plain and "response_std" not in plain


def test_summary():
    summary = _with_sides().summary()
    assert set(summary) >= {"accuracy", "prob", "entropy_epistemic", "response_std"}
    assert all(isinstance(v, float) for v in summary.values())


def test_sample_based_flag_survives_sampling_and_indexing():
    closed = PreferencePrediction.from_gaussian_margin(torch.zeros(3), torch.ones(3))
    _ = closed.margin_samples  # drawn and cached
    assert not closed.is_sample_based and not closed[:2].is_sample_based
    assert PreferencePrediction.from_margin_samples(torch.randn(4, 3)).is_sample_based
    assert not RewardPrediction.from_moments(torch.zeros(2), torch.ones(2)).is_sample_based


# -- bad input: one test per failure mode -------------------------------------------------------------
def test_shape_errors_name_the_field():
    with pytest.raises(ValueError, match=r"var must have shape \(3,\)"):
        RewardPrediction(mean=torch.zeros(3), var=torch.zeros(4))
    with pytest.raises(ValueError, match=r"margin_samples must have shape \(S, B\), got \(3,\)"):
        PreferencePrediction.from_margin_samples(torch.zeros(3))
    with pytest.raises(ValueError, match=r"samples must have shape \(S, N\), got \(2, 2, 2\)"):
        RewardPrediction.from_samples(torch.zeros(2, 2, 2))


def test_zero_draws_rejected():
    with pytest.raises(ValueError, match=r"samples must hold at least one draw \(S ≥ 1\)"):
        RewardPrediction.from_samples(torch.zeros(0, 3))


def test_non_finite_inputs_rejected():
    with pytest.raises(
        ValueError, match=r"margin_samples contains NaN or infinite values \(2 of 6"
    ):
        PreferencePrediction.from_margin_samples(torch.tensor([[0.0, math.nan, 1.0]] * 2))
    with pytest.raises(ValueError, match="mean contains NaN or infinite values"):
        PreferencePrediction.from_gaussian_margin(torch.tensor([math.inf]), torch.ones(1))


def test_negative_variance_rejected():
    with pytest.raises(
        ValueError, match=r"var must be non-negative \(a variance\), got 1 negative"
    ):
        RewardPrediction.from_moments(torch.zeros(2), torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match="aleatoric_var must be non-negative"):
        RewardPrediction.from_samples(torch.zeros(2, 2), aleatoric_var=torch.tensor([0.1, -1.0]))


def test_mismatched_lengths_rejected():
    with pytest.raises(ValueError, match=r"var must have shape \(3,\), got \(2,\)"):
        PreferencePrediction.from_gaussian_margin(torch.zeros(3), torch.ones(2))
    rc = RewardPrediction.from_samples(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="chosen has 5 responses but there are 4 pairs"):
        PreferencePrediction.from_margin_samples(torch.zeros(2, 4), chosen=rc)
    with pytest.raises(TypeError, match="rejected must be a RewardPrediction or None, got Tensor"):
        PreferencePrediction.from_margin_samples(torch.zeros(2, 4), rejected=torch.zeros(4))


def test_bad_n_samples_rejected():
    with pytest.raises(ValueError, match="n_samples must be an integer >= 1, got 0"):
        RewardPrediction.from_moments(torch.zeros(2), torch.ones(2), n_samples=0)
    with pytest.raises(ValueError, match="n must be an integer >= 1, got -1"):
        PreferencePrediction.from_gaussian_margin(torch.zeros(2), torch.ones(2)).sample(-1)
