"""The DPO-family losses: hand-computed values, identities, gradients and every bad argument."""

from __future__ import annotations

import math
import re

import pytest
import torch

from auq.training.losses import (
    DROP,
    KEEP,
    LOSS_TYPES,
    SWAP,
    dpo_loss,
    implicit_rewards,
    ipo_loss,
    pessimistic_actions,
    pessimistic_dpo_loss,
    preference_loss,
)

# two pairs; log-ratio differences u = (π_c − ref_c) − (π_r − ref_r):
#   pair 0: (−1.0 + 1.5) − (−3.0 + 2.0) = 0.5 + 1.0 = 1.5
#   pair 1: (−2.0 + 2.5) − (−1.5 + 1.0) = 0.5 + 0.5 = 1.0
PC = [-1.0, -2.0]
PR = [-3.0, -1.5]
RC = [-1.5, -2.5]
RR = [-2.0, -1.0]
U = [1.5, 1.0]


def logps(dtype=torch.float64):
    return tuple(torch.tensor(v, dtype=dtype) for v in (PC, PR, RC, RR))


def softplus(x: float) -> float:
    """−log σ(−x) = log(1 + eˣ)."""
    return math.log1p(math.exp(x))


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype))


# -- values -----------------------------------------------------------------------------------


def test_dpo_loss_hand_values():
    # h = β·u with β = 0.5 → (0.75, 0.5); loss = −log σ(h) = log(1 + e^{−h})
    loss = dpo_loss(*logps(), beta=0.5)
    assert loss.shape == (2,)
    close(loss, [math.log(1 + math.exp(-0.75)), math.log(1 + math.exp(-0.5))])


def test_soft_label_hand_values():
    # y = 0.8: loss = −[0.8 log σ(h) + 0.2 log σ(−h)] = 0.8·log(1+e^{−h}) + 0.2·log(1+e^{h})
    loss = dpo_loss(*logps(), beta=0.5, label=0.8)
    expected = [0.8 * softplus(-h) + 0.2 * softplus(h) for h in (0.75, 0.5)]
    close(loss, expected)
    per_pair = dpo_loss(*logps(), beta=0.5, label=torch.tensor([0.8, 0.0]))
    close(per_pair, [expected[0], softplus(0.5)])


def test_label_one_and_unit_weights_equal_plain_dpo():
    plain = dpo_loss(*logps(), beta=0.3)
    assert torch.equal(dpo_loss(*logps(), beta=0.3, label=1.0), plain)
    assert torch.equal(dpo_loss(*logps(), beta=0.3, label=torch.ones(2)), plain)
    assert torch.equal(dpo_loss(*logps(), beta=0.3, weight=1.0), plain)
    assert torch.equal(dpo_loss(*logps(), beta=0.3, weight=torch.ones(2)), plain)


def test_weights_scale_each_pair():
    plain = dpo_loss(*logps(), beta=0.5)
    weighted = dpo_loss(*logps(), beta=0.5, weight=torch.tensor([2.0, 0.0]))
    close(weighted, [2 * plain[0].item(), 0.0])
    close(dpo_loss(*logps(), beta=0.5, weight=0.5), (0.5 * plain).tolist())


def test_label_half_is_symmetric_in_chosen_and_rejected():
    pc, pr, rc, rr = logps()
    forward = dpo_loss(pc, pr, rc, rr, beta=0.7, label=0.5)
    swapped = dpo_loss(pr, pc, rr, rc, beta=0.7, label=0.5)
    torch.testing.assert_close(forward, swapped)
    # and label y on (c, r) equals label 1 − y on (r, c)
    torch.testing.assert_close(
        dpo_loss(pc, pr, rc, rr, beta=0.7, label=0.9),
        dpo_loss(pr, pc, rr, rc, beta=0.7, label=0.1),
    )


def test_ipo_hand_values():
    # β = 0.25 → target 1/(2β) = 2; loss = (u − 2)² = (−0.5)², (−1)²
    close(ipo_loss(*logps(), beta=0.25), [0.25, 1.0])
    close(ipo_loss(*logps(), beta=0.25, weight=torch.tensor([4.0, 0.5])), [1.0, 0.5])


def test_implicit_rewards():
    pc, _, rc, _ = logps()
    close(implicit_rewards(pc, rc, beta=0.5), [0.25, 0.25])


def test_preference_loss_dispatches():
    assert LOSS_TYPES == ("sigmoid", "ipo")
    args = logps()
    assert torch.equal(
        preference_loss("sigmoid", *args, beta=0.5, label=0.8),
        dpo_loss(*args, beta=0.5, label=0.8),
    )
    assert torch.equal(preference_loss("ipo", *args, beta=0.25), ipo_loss(*args, beta=0.25))
    # a hard label is fine for IPO
    assert torch.equal(
        preference_loss("ipo", *args, beta=0.25, label=1.0), ipo_loss(*args, beta=0.25)
    )


# -- pessimistic DPO --------------------------------------------------------------------------

MEAN = torch.tensor([2.0, -2.0, 0.5, -0.5, 0.0])
STD = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])


def test_pessimistic_actions_hand_case():
    # k = 1: intervals [1, 3], [−3, −1], [−0.5, 1.5], [−1.5, 0.5], [0, 0]
    assert pessimistic_actions(MEAN, STD, k=1.0).tolist() == [KEEP, SWAP, DROP, DROP, DROP]
    # k = 0: the sign of the mean decides; a zero mean is still a tie
    assert pessimistic_actions(MEAN, STD, k=0.0).tolist() == [KEEP, SWAP, KEEP, SWAP, DROP]
    # k = 2.5: every interval with std > 0 contains 0
    assert pessimistic_actions(MEAN, STD, k=2.5).tolist() == [DROP] * 5
    actions = pessimistic_actions(MEAN, STD)
    assert actions.dtype == torch.long
    assert torch.bincount(actions, minlength=3).tolist() == [1, 1, 3]


def test_pessimistic_dpo_keep_swap_drop():
    # five pairs, all with u = 1.5 (β = 0.5 → h = 0.75)
    pc = torch.full((5,), -1.0, dtype=torch.float64, requires_grad=True)
    pr = torch.full((5,), -3.0, dtype=torch.float64)
    rc = torch.full((5,), -1.5, dtype=torch.float64)
    rr = torch.full((5,), -2.0, dtype=torch.float64)
    loss = pessimistic_dpo_loss(pc, pr, rc, rr, margin_mean=MEAN, margin_std=STD, beta=0.5, k=1.0)
    keep, swap = softplus(-0.75), softplus(0.75)  # −log σ(h), −log σ(−h)
    close(loss, [keep, swap, 0.0, 0.0, 0.0])
    loss.sum().backward()
    assert pc.grad[2:].tolist() == [0.0, 0.0, 0.0]  # dropped pairs: no gradient
    assert pc.grad[0] < 0 < pc.grad[1]  # keep pushes π_c up, swap pushes it down
    # a swapped pair is plain DPO with chosen and rejected exchanged
    swapped = dpo_loss(pr[1:2], pc[1:2].detach(), rr[1:2], rc[1:2], beta=0.5)
    torch.testing.assert_close(loss[1:2].detach(), swapped)
    weighted = pessimistic_dpo_loss(
        pc.detach(), pr, rc, rr, margin_mean=MEAN, margin_std=STD, beta=0.5, weight=2.0
    )
    close(weighted, [2 * keep, 2 * swap, 0.0, 0.0, 0.0])


# -- gradients --------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradients_finite_for_extreme_log_ratios(loss_type):
    pc = torch.tensor([-1e4, -1.0, -300.0], requires_grad=True)
    pr = torch.tensor([-1.0, -1e4, -200.0], requires_grad=True)
    ref = torch.zeros(3)
    loss = preference_loss(loss_type, pc, pr, ref, ref, beta=0.5)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()


def test_soft_label_gradient_finite_and_pessimistic_finite():
    pc = torch.tensor([-1e4, 50.0], requires_grad=True)
    pr = torch.tensor([0.0, -1e4], requires_grad=True)
    ref = torch.zeros(2)
    loss = dpo_loss(pc, pr, ref, ref, beta=1.0, label=torch.tensor([0.3, 0.9]))
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(pc.grad).all()
    pc.grad = None
    loss = pessimistic_dpo_loss(
        pc, pr, ref, ref, margin_mean=torch.tensor([-5.0, 5.0]), margin_std=torch.ones(2)
    )
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(pc.grad).all()


# -- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_bad_beta(beta):
    msg = f"beta must be a finite number > 0, got {beta!r}"
    for fn in (dpo_loss, ipo_loss):
        with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
            fn(*logps(), beta=beta)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        implicit_rewards(logps()[0], logps()[2], beta=beta)


@pytest.mark.parametrize("label", [1.5, -0.1, float("nan"), True])
def test_bad_label_number(label):
    with pytest.raises(
        ValueError, match=r"label must be a number in \[0, 1\] \(a float or a \(B,\) tensor\), got "
    ):
        dpo_loss(*logps(), label=label)


@pytest.mark.parametrize("bad", [2.0, -0.5, float("nan")])
def test_bad_label_tensor(bad):
    with pytest.raises(
        ValueError, match=r"label must hold a number in \[0, 1\] per pair; got a value"
    ):
        dpo_loss(*logps(), label=torch.tensor([0.5, bad]))


def test_bad_label_shape():
    with pytest.raises(
        ValueError, match=r"label must be a float or a tensor of shape \(2,\) .*got shape \(3,\)"
    ):
        dpo_loss(*logps(), label=torch.tensor([0.5, 0.5, 0.5]))


@pytest.mark.parametrize("weight", [-1.0, float("inf"), float("nan")])
def test_bad_weight(weight):
    with pytest.raises(
        ValueError, match=r"weight must be a finite number >= 0 \(a float or a \(B,\) tensor\), got"
    ):
        dpo_loss(*logps(), weight=weight)
    with pytest.raises(
        ValueError, match=r"weight must hold a finite number >= 0 per pair; got a value"
    ):
        ipo_loss(*logps(), weight=torch.tensor([1.0, weight]))


def test_shape_mismatch_names_argument_and_shapes():
    pc, pr, rc, rr = logps()
    with pytest.raises(
        ValueError,
        match=r"ref_rejected_logps has shape \(3,\) but policy_chosen_logps has shape \(2,\)",
    ):
        dpo_loss(pc, pr, rc, torch.zeros(3))
    with pytest.raises(ValueError, match=r"policy_chosen_logps must have shape \(B,\).*\(2, 1\)"):
        dpo_loss(pc[:, None], pr[:, None], rc[:, None], rr[:, None])
    with pytest.raises(TypeError, match="policy_rejected_logps must be a torch.Tensor.*list"):
        dpo_loss(pc, [0.0, 0.0], rc, rr)
    with pytest.raises(TypeError, match="ref_chosen_logps must be a floating-point tensor"):
        dpo_loss(pc, pr, torch.zeros(2, dtype=torch.long), rr)
    with pytest.raises(
        ValueError, match=r"ref_logps has shape \(3,\) but policy_logps has shape \(2,\)"
    ):
        implicit_rewards(pc, torch.zeros(3), beta=0.1)


def test_bad_loss_type_lists_choices():
    with pytest.raises(
        ValueError, match=r"loss_type='hinge' is not supported; valid choices: 'sigmoid', 'ipo'"
    ):
        preference_loss("hinge", *logps())


@pytest.mark.parametrize("label", [0.9, torch.tensor([1.0, 0.7])])
def test_ipo_refuses_soft_labels(label):
    with pytest.raises(ValueError, match=r"soft labels apply to loss_type='sigmoid' only"):
        preference_loss("ipo", *logps(), label=label)


def test_bad_pessimistic_arguments():
    with pytest.raises(ValueError, match=r"k must be a finite number >= 0, got -1.0"):
        pessimistic_actions(MEAN, STD, k=-1.0)
    with pytest.raises(ValueError, match="margin_std must be finite and >= 0"):
        pessimistic_actions(MEAN, -STD - 1)
    with pytest.raises(ValueError, match="margin_mean must be finite"):
        pessimistic_actions(torch.tensor([float("nan")]), torch.ones(1))
    with pytest.raises(
        ValueError, match=r"margin_std has shape \(4,\) but margin_mean has shape \(5,\)"
    ):
        pessimistic_actions(MEAN, STD[:4])
    with pytest.raises(ValueError, match=r"margin_mean must have shape \(B,\), got shape \(5, 1\)"):
        pessimistic_actions(MEAN[:, None], STD[:, None])
    with pytest.raises(TypeError, match="margin_std must be a torch.Tensor"):
        pessimistic_actions(MEAN, [1.0] * 5)
    with pytest.raises(
        ValueError,
        match=r"margin_mean has shape \(5,\) but the log-probabilities have shape \(2,\)",
    ):
        pessimistic_dpo_loss(*logps(), margin_mean=MEAN, margin_std=STD)
