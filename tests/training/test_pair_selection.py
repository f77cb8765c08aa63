"""Online DPO's pair picking: best vs worst per prompt, ties, uncertain orders at level α."""

from __future__ import annotations

import math

import pytest
import torch

from auq.objectives import OBJECTIVES, penalized_reward
from auq.training.pair_selection import SelectedPairs, order_probability, select_pairs
from auq.types import LinearGaussianSampler, RewardPrediction


def _rp(samples) -> RewardPrediction:
    return RewardPrediction.from_samples(torch.tensor(samples, dtype=torch.float64))


# S = 4 members, P = 3 prompts × n = 3 responses, prompt-major.
#   prompt 0: means (1, 3, 2)  -> chosen row 1, rejected row 0; row 1 beats row 0 in 4/4 members
#   prompt 1: means (0, 0, 0)  -> a tie (every response scores the same)
#   prompt 2: means (5, 2, 4)  -> chosen row 6, rejected row 7; row 6 beats row 7 in 3/4 members
SAMPLES = [
    [1.0, 3.0, 2.0, 0.0, 0.0, 0.0, 9.0, 2.0, 4.0],
    [1.0, 3.0, 2.0, 0.0, 0.0, 0.0, 6.0, 2.0, 4.0],
    [1.0, 3.0, 2.0, 0.0, 0.0, 0.0, 6.0, 2.0, 4.0],
    [1.0, 3.0, 2.0, 0.0, 0.0, 0.0, -1.0, 2.0, 4.0],
]


def test_best_vs_worst_and_ties():
    out = select_pairs(_rp(SAMPLES), 3)
    assert isinstance(out, SelectedPairs)
    assert out.prompt_index.tolist() == [0, 2]
    assert out.chosen_index.tolist() == [1, 6]
    assert out.rejected_index.tolist() == [0, 7]
    assert out.chosen_slot.tolist() == [1, 0]
    assert out.rejected_slot.tolist() == [0, 1]
    assert out.reward_gap.tolist() == pytest.approx([2.0, 3.0])
    assert out.n_prompts == 3 and out.n_per_prompt == 3 and len(out) == 2
    assert out.n_skipped_ties == 1 and out.n_skipped_uncertain == 0
    assert out.order_prob is None
    for t in (out.prompt_index, out.chosen_index, out.rejected_index):
        assert t.dtype == torch.int64 and t.device.type == "cpu"
    s = out.summary()
    assert s["n_selected"] == 2 and s["n_skipped_ties"] == 1
    assert s["reward_gap_mean"] == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("alpha", "kept", "uncertain"),
    [(0.2, [0], 1), (0.25, [0, 2], 0), (0.3, [0, 2], 0), (0.01, [0], 1)],
)
def test_uncertain_pairs_at_alpha(alpha, kept, uncertain):
    # by hand: P(r_6 > r_7) = 3/4 (member 4 has -1 < 2), P(r_1 > r_0) = 1; skip when P < 1 - alpha
    out = select_pairs(_rp(SAMPLES), 3, alpha=alpha)
    assert out.prompt_index.tolist() == kept
    assert out.n_skipped_uncertain == uncertain
    assert out.n_skipped_ties == 1  # a tie is counted as a tie, never as uncertain
    assert out.order_prob.tolist() == [{0: 1.0, 2: 0.75}[i] for i in kept]


def test_order_probability_of_members_is_the_share_of_rows():
    rp = _rp(SAMPLES)
    p = order_probability(rp, torch.tensor([6, 1, 8]), torch.tensor([7, 0, 6]))
    assert p.tolist() == [0.75, 1.0, 0.25]  # 4 ≥ 9, 6, 6 false, 4 > -1 true: 1/4
    assert p.dtype == torch.float64


def test_objective_changes_the_pick():
    # prompt 0: row 0 has the higher mean (2.0) but a large spread; row 1 mean 1.5, no spread
    samples = [[5.0, 1.5, 0.0], [-1.0, 1.5, 0.0]]
    rp = _rp(samples)
    mean = select_pairs(rp, 3, objective="mean")
    wco = select_pairs(rp, 3, objective="wco")
    assert mean.chosen_index.tolist() == [0] and mean.rejected_index.tolist() == [2]
    assert wco.chosen_index.tolist() == [1] and wco.rejected_index.tolist() == [0]
    assert wco.reward_gap.tolist() == pytest.approx([2.5])  # 1.5 - min(5, -1)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_picks_are_argmax_and_argmin_of_penalized_reward(objective):
    g = torch.Generator().manual_seed(1)
    rp = RewardPrediction.from_samples(torch.randn(6, 20, generator=g, dtype=torch.float64))
    out = select_pairs(rp, 5, objective=objective, lam=0.3, k=2.0, beta=0.5)
    values = penalized_reward(rp, objective, lam=0.3, k=2.0, beta=0.5).reshape(4, 5)
    assert out.prompt_index.tolist() == [0, 1, 2, 3]
    assert out.chosen_slot.tolist() == values.argmax(1).tolist()
    assert out.rejected_slot.tolist() == values.argmin(1).tolist()
    assert torch.allclose(out.reward_gap, values.max(1).values - values.min(1).values)


class _Shrink:
    """A stand-in spread calibrator: r' = E[r] + s(r − E[r])."""

    def __init__(self, s: float) -> None:
        self.s = s

    def transform_rewards(self, rp: RewardPrediction) -> RewardPrediction:
        mean = rp.samples.mean(0)
        return RewardPrediction.from_samples(mean + self.s * (rp.samples - mean))


def test_calibrator_sets_the_posterior_of_the_order():
    # spread 0: every member agrees with the means, so prompt 2's order (5 > 2) is certain
    out = select_pairs(_rp(SAMPLES), 3, alpha=0.2, calibrator=_Shrink(0.0))
    assert out.prompt_index.tolist() == [0, 2]
    assert out.order_prob.tolist() == [1.0, 1.0]
    assert out.n_skipped_uncertain == 0


# -- closed-form predictions -------------------------------------------------------------------
def _laplace_like(shared_std: float) -> RewardPrediction:
    """Two responses whose rewards share a large common component w₂ (a shared backbone term).

    r = x·w, w ~ N((1, 0), diag(0.5², shared_std²)), x₀ = (1, 1), x₁ = (0, 1):
    r₀ − r₁ = w₁ ~ N(1, 0.25) exactly, so P(r₀ > r₁) = Φ(2) ≈ 0.977, while each reward
    alone has variance 0.25 + shared_std² (or shared_std²).
    """
    weight = torch.tensor([1.0, 0.0], dtype=torch.float64)
    tril = torch.diag(torch.tensor([0.5, shared_std], dtype=torch.float64))
    design = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    sampler = LinearGaussianSampler(weight, tril, design)
    cov = design @ tril @ tril.T @ design.T
    return RewardPrediction.from_moments(design @ weight, cov.diagonal(), sampler=sampler)


def test_closed_form_uses_joint_draws():
    rp = _laplace_like(shared_std=10.0)
    exact = 0.5 * (1 + math.erf(2 / math.sqrt(2)))  # Φ(2)
    p = order_probability(rp, torch.tensor([0]), torch.tensor([1]), n_draws=20_000, seed=3)
    assert abs(float(p) - exact) < 4 * math.sqrt(exact * (1 - exact) / 20_000)
    # independence would give Φ(1 / sqrt(0.25 + 200)) ≈ 0.53: the pair would be skipped
    out = select_pairs(rp, 2, alpha=0.05, n_draws=20_000, seed=3)
    assert out.chosen_index.tolist() == [0] and out.rejected_index.tolist() == [1]
    assert out.n_skipped_uncertain == 0
    assert float(out.order_prob[0]) == pytest.approx(exact, abs=0.01)


def test_closed_form_draws_are_seeded():
    rp = _laplace_like(shared_std=1.0)
    a = select_pairs(rp, 2, alpha=0.5, n_draws=500, seed=7)
    b = select_pairs(rp, 2, alpha=0.5, n_draws=500, seed=7)
    assert torch.equal(a.order_prob, b.order_prob)


def test_closed_form_without_sampler_is_the_independent_gaussian():
    mean = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    var = torch.tensor([0.3, 0.7, 0.0, 0.0], dtype=torch.float64)
    rp = RewardPrediction.from_moments(mean, var)
    p = order_probability(rp, torch.tensor([0, 2]), torch.tensor([1, 3]))
    assert float(p[0]) == pytest.approx(0.5 * (1 + math.erf(1.0 / math.sqrt(2))))  # Φ(1/√1)
    assert float(p[1]) == 0.0  # no variance, equal means: not greater
    out = select_pairs(rp, 2, alpha=0.2)  # prompt 0: P = Φ(1) ≈ 0.84 ≥ 0.8; prompt 1: a tie
    assert out.prompt_index.tolist() == [0]
    assert out.n_skipped_ties == 1 and out.n_skipped_uncertain == 0
    assert select_pairs(rp, 2, alpha=0.1).n_skipped_uncertain == 1  # 0.84 < 0.9


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n_per_prompt", [1, 0, 2.0, True])
def test_n_per_prompt_must_be_at_least_two(n_per_prompt):
    with pytest.raises(ValueError, match="n_per_prompt must be an integer >= 2"):
        select_pairs(_rp(SAMPLES), n_per_prompt)


def test_rows_must_be_a_multiple_of_n_per_prompt():
    with pytest.raises(ValueError, match=r"N=9 responses, not a multiple of n_per_prompt=4"):
        select_pairs(_rp(SAMPLES), 4)


@pytest.mark.parametrize("alpha", [0, 1, 1.5, -0.1, "0.1"])
def test_alpha_must_be_in_the_open_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"alpha must be a number in \(0, 1\)"):
        select_pairs(_rp(SAMPLES), 3, alpha=alpha)


def test_unknown_objective_lists_the_choices():
    with pytest.raises(ValueError, match="objective='max' is not supported; valid choices: 'mean'"):
        select_pairs(_rp(SAMPLES), 3, objective="max")


def test_prediction_must_be_a_reward_prediction():
    with pytest.raises(TypeError, match="prediction must be a RewardPrediction"):
        select_pairs(torch.zeros(4, 9), 3)
