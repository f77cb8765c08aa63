"""Preference-optimisation losses on per-sequence log-probabilities (pure functions).

Every function takes the summed log-probabilities of B (chosen, rejected)
responses under the policy being trained and under the frozen reference policy,
each a tensor of shape (B,) (see :func:`auq.training.logprobs.sequence_logps`),
and returns one loss per pair, shape (B,): the trainer reduces (mean over the
batch, or a weighted mean) and so decides how dropped pairs count.

Notation: ``ρ_c = π_c − ref_c`` and ``ρ_r = π_r − ref_r`` are the chosen and
rejected log-ratios, ``u = ρ_c − ρ_r`` their difference and ``h = β·u`` the DPO
logit (the implicit reward margin).

* :func:`dpo_loss` — DPO (Rafailov et al., 2023), with an optional soft label
  (conservative DPO, Mitchell 2023) and per-pair weights;
* :func:`ipo_loss` — IPO (Azar et al., 2023);
* :func:`pessimistic_dpo_loss` — DPO that trusts the reward model's label only
  where its uncertainty interval excludes a tie (:func:`pessimistic_actions`);
* :func:`implicit_rewards` — ``β(π − ref)``, TRL's ``rewards/chosen`` /
  ``rewards/rejected``;
* :func:`preference_loss` — dispatch on ``loss_type`` (:data:`LOSS_TYPES`).

Inputs are validated (finite β > 0, equal shapes, labels in [0, 1], weights ≥ 0);
a check of a tensor-valued label or weight reads one boolean back from the
device.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from auq.utils.validation import check_choice

__all__ = [
    "DROP",
    "KEEP",
    "LOSS_TYPES",
    "SWAP",
    "dpo_loss",
    "implicit_rewards",
    "ipo_loss",
    "pessimistic_actions",
    "pessimistic_dpo_loss",
    "preference_loss",
]

#: per-pair decisions of :func:`pessimistic_actions`
KEEP, SWAP, DROP = 0, 1, 2
#: ``loss_type`` values accepted by :func:`preference_loss`
LOSS_TYPES = ("sigmoid", "ipo")

_LOGP_NAMES = (
    "policy_chosen_logps",
    "policy_rejected_logps",
    "ref_chosen_logps",
    "ref_rejected_logps",
)


# -- validation ----------------------------------------------------------------------------


def _check_positive(name: str, value: float) -> float:
    """A finite real number > 0 (``beta``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_logps(*logps: Tensor) -> Tensor:
    """The four log-probability tensors: 1-D, equal shapes; returns the first."""
    for name, t in zip(_LOGP_NAMES, logps, strict=True):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    first = logps[0]
    if first.ndim != 1:
        raise ValueError(
            f"{_LOGP_NAMES[0]} must have shape (B,) (one summed log-prob per sequence), "
            f"got shape {tuple(first.shape)}"
        )
    for name, t in zip(_LOGP_NAMES[1:], logps[1:], strict=True):
        if t.shape != first.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but {_LOGP_NAMES[0]} has shape "
                f"{tuple(first.shape)}; all four log-probability tensors must have shape (B,)"
            )
    return first


def _pair_values(name: str, value: float | Tensor, like: Tensor, *, upper: float | None) -> Tensor:
    """A float or (B,) tensor in [0, upper] (finite), as a tensor broadcastable to ``like``."""
    desc = f"a number in [0, {upper:g}]" if upper is not None else "a finite number >= 0"
    if isinstance(value, Tensor):
        if value.ndim > 1 or (value.ndim == 1 and value.shape != like.shape):
            raise ValueError(
                f"{name} must be a float or a tensor of shape {tuple(like.shape)} (B,), "
                f"got shape {tuple(value.shape)}"
            )
        t = value.to(device=like.device, dtype=like.dtype)
        bad = ~torch.isfinite(t) | (t < 0)
        if upper is not None:
            bad |= t > upper
        if bool(bad.any()):
            first = float(t.reshape(-1)[bad.reshape(-1)][0])
            raise ValueError(f"{name} must hold {desc} per pair; got a value {first!r}")
        return t
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    x = float(value) if ok else math.nan
    if not ok or not math.isfinite(x) or x < 0 or (upper is not None and x > upper):
        raise ValueError(f"{name} must be {desc} (a float or a (B,) tensor), got {value!r}")
    return torch.tensor(x, device=like.device, dtype=like.dtype)


def _apply_weight(loss: Tensor, weight: float | Tensor | None) -> Tensor:
    if weight is None:
        return loss
    return loss * _pair_values("weight", weight, loss, upper=None)


def _logit_difference(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> Tensor:
    """``u = (π_c − ref_c) − (π_r − ref_r)``, shape (B,), after the shape checks."""
    _check_logps(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


# -- losses --------------------------------------------------------------------------------


def implicit_rewards(policy_logps: Tensor, ref_logps: Tensor, *, beta: float) -> Tensor:
    """DPO's implicit reward ``β (log π(y|x) − log π_ref(y|x))``.

    Parameters
    ----------
    policy_logps, ref_logps : Tensor, shape (B,)
        Summed response log-probabilities under the policy and the reference.
    beta : float
        The KL coefficient β > 0.

    Returns
    -------
    Tensor, shape (B,)
        What TRL logs as ``rewards/chosen`` / ``rewards/rejected`` (detach it for logging).
    """
    beta = _check_positive("beta", beta)
    for name, t in (("policy_logps", policy_logps), ("ref_logps", ref_logps)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {type(t).__name__}")
    if policy_logps.shape != ref_logps.shape:
        raise ValueError(
            f"ref_logps has shape {tuple(ref_logps.shape)} but policy_logps has shape "
            f"{tuple(policy_logps.shape)}; they must match"
        )
    return beta * (policy_logps - ref_logps)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label: float | Tensor | None = None,
    weight: float | Tensor | None = None,
) -> Tensor:
    """DPO loss per pair, with an optional soft label and per-pair weight.

    .. math::

        h = β[(π_c − \\mathrm{ref}_c) − (π_r − \\mathrm{ref}_r)], \\qquad
        \\ell = −w\\,[y \\log σ(h) + (1 − y) \\log σ(−h)]

    With ``y = 1`` (``label=None``) this is DPO (Rafailov et al., 2023,
    "Direct Preference Optimization"); a soft ``y`` = P(chosen ≻ rejected) < 1
    is conservative DPO (Mitchell, 2023, "A note on DPO with noisy
    preferences"; TRL's ``label_smoothing`` ε is ``y = 1 − ε``). The loss is the
    binary cross-entropy between the model's implied preference σ(h) and ``y``;
    ``y = 0.5`` makes it symmetric in chosen/rejected. Computed with
    ``logsigmoid`` (stable for any ``h``).

    Parameters
    ----------
    policy_chosen_logps, policy_rejected_logps : Tensor, shape (B,)
        Summed response log-probabilities under the trained policy.
    ref_chosen_logps, ref_rejected_logps : Tensor, shape (B,)
        The same under the frozen reference policy.
    beta : float
        β > 0, the strength of the implicit KL penalty.
    label : float or Tensor of shape (B,), optional
        Soft target P(chosen ≻ rejected) in [0, 1]; None means 1.
    weight : float or Tensor of shape (B,), optional
        Per-pair weight ``w`` ≥ 0 (finite); None means 1.

    Returns
    -------
    Tensor, shape (B,)
        One loss per pair (not reduced).

    Raises
    ------
    ValueError
        ``beta`` not > 0, shapes that differ, ``label`` outside [0, 1], ``weight``
        negative or not finite.
    """
    beta = _check_positive("beta", beta)
    h = beta * _logit_difference(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    if label is None:
        loss = -F.logsigmoid(h)
    else:
        y = _pair_values("label", label, h, upper=1.0)
        loss = -(y * F.logsigmoid(h) + (1 - y) * F.logsigmoid(-h))
    return _apply_weight(loss, weight)


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    weight: float | Tensor | None = None,
) -> Tensor:
    """IPO loss per pair (Azar et al., 2023, "A general theoretical paradigm ...", eq. 17).

    .. math::

        \\ell = w\\,\\Big[(π_c − \\mathrm{ref}_c) − (π_r − \\mathrm{ref}_r) − \\frac{1}{2β}\\Big]^2

    with the regulariser τ = β, as TRL's ``loss_type="ipo"``. The squared loss
    regresses the log-ratio difference onto 1/(2β) instead of pushing it to
    infinity. TRL feeds it log-probabilities *averaged* over response tokens
    (``sequence_logps(..., reduction="mean")``); summed ones make the target
    scale with length.

    Parameters
    ----------
    policy_chosen_logps, policy_rejected_logps : Tensor, shape (B,)
    ref_chosen_logps, ref_rejected_logps : Tensor, shape (B,)
        As in :func:`dpo_loss`.
    beta : float
        τ = β > 0.
    weight : float or Tensor of shape (B,), optional
        Per-pair weight ≥ 0.

    Returns
    -------
    Tensor, shape (B,)
    """
    beta = _check_positive("beta", beta)
    u = _logit_difference(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return _apply_weight((u - 1.0 / (2.0 * beta)) ** 2, weight)


def pessimistic_actions(margin_mean: Tensor, margin_std: Tensor, *, k: float = 1.0) -> Tensor:
    """What to do with each pair, given the reward model's margin interval.

    The margin Δ = r(chosen) − r(rejected) lies in ``[mean − k·std, mean + k·std]``:

    * ``LCB = mean − k·std > 0`` → :data:`KEEP` (the label is trusted);
    * ``UCB = mean + k·std < 0`` → :data:`SWAP` (the model is confident the label
      is reversed);
    * otherwise (the interval contains 0) → :data:`DROP`.

    Parameters
    ----------
    margin_mean, margin_std : Tensor, shape (B,)
        Mean and (epistemic) standard deviation of Δ, e.g. from a
        :class:`~auq.types.PreferencePrediction` (``margin_var.sqrt()``); std ≥ 0.
    k : float
        Width of the interval in standard deviations, ≥ 0 (0: trust the mean's sign).

    Returns
    -------
    LongTensor, shape (B,)
        :data:`KEEP` (0), :data:`SWAP` (1) or :data:`DROP` (2) per pair; count them
        with ``torch.bincount(actions, minlength=3)``.
    """
    ok = isinstance(k, numbers.Real) and not isinstance(k, bool)
    if not ok or not math.isfinite(float(k)) or float(k) < 0:
        raise ValueError(f"k must be a finite number >= 0, got {k!r}")
    for name, t in (("margin_mean", margin_mean), ("margin_std", margin_std)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {type(t).__name__}")
        if t.ndim != 1:
            raise ValueError(f"{name} must have shape (B,), got shape {tuple(t.shape)}")
    if margin_std.shape != margin_mean.shape:
        raise ValueError(
            f"margin_std has shape {tuple(margin_std.shape)} but margin_mean has shape "
            f"{tuple(margin_mean.shape)}; they must match"
        )
    if not bool(torch.isfinite(margin_mean).all()):
        raise ValueError("margin_mean must be finite; got a nan or inf value")
    if not bool((torch.isfinite(margin_std) & (margin_std >= 0)).all()):
        raise ValueError("margin_std must be finite and >= 0; got a negative, nan or inf value")
    lcb = margin_mean - k * margin_std
    ucb = margin_mean + k * margin_std
    actions = torch.full(margin_mean.shape, DROP, dtype=torch.long, device=margin_mean.device)
    actions[lcb > 0] = KEEP
    actions[ucb < 0] = SWAP
    return actions


def pessimistic_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    margin_mean: Tensor,
    margin_std: Tensor,
    beta: float = 0.1,
    k: float = 1.0,
    weight: float | Tensor | None = None,
) -> Tensor:
    """DPO that follows the reward model only where its interval excludes a tie.

    Per pair, :func:`pessimistic_actions` decides from the interval
    ``mean ± k·std`` of the reward margin:

    .. math::

        \\ell = w \\cdot \\begin{cases}
            −\\log σ(h)  & \\text{KEEP: } \\mathrm{LCB} > 0 \\\\
            −\\log σ(−h) & \\text{SWAP: } \\mathrm{UCB} < 0
                          \\text{ (chosen and rejected exchanged)} \\\\
            0            & \\text{DROP: the interval contains 0}
        \\end{cases}

    with ``h`` the DPO logit of :func:`dpo_loss`. A dropped pair contributes a
    loss and a gradient of exactly 0; a trainer that averages over kept pairs
    only divides by ``(actions != DROP).sum()``.

    Parameters
    ----------
    policy_chosen_logps, policy_rejected_logps : Tensor, shape (B,)
    ref_chosen_logps, ref_rejected_logps : Tensor, shape (B,)
        As in :func:`dpo_loss`.
    margin_mean, margin_std : Tensor, shape (B,)
        The reward model's margin Δ = r(chosen) − r(rejected): mean and std ≥ 0.
    beta : float
        β > 0.
    k : float
        Interval half-width in standard deviations, ≥ 0.
    weight : float or Tensor of shape (B,), optional
        Per-pair weight ≥ 0.

    Returns
    -------
    Tensor, shape (B,)
    """
    beta = _check_positive("beta", beta)
    h = beta * _logit_difference(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    actions = pessimistic_actions(margin_mean, margin_std, k=k)
    if actions.shape != h.shape:
        raise ValueError(
            f"margin_mean has shape {tuple(margin_mean.shape)} but the log-probabilities "
            f"have shape {tuple(h.shape)}; they must match"
        )
    actions = actions.to(h.device)
    sign = torch.where(actions == SWAP, -1.0, 1.0).to(h.dtype)  # (B,)
    keep = (actions != DROP).to(h.dtype)  # (B,)
    return _apply_weight(-F.logsigmoid(sign * h) * keep, weight)


def _is_hard_label(label: float | Tensor | None) -> bool:
    """True for None or a label equal to 1 everywhere."""
    if label is None:
        return True
    if isinstance(label, Tensor):
        return bool((label == 1).all())
    return isinstance(label, numbers.Real) and float(label) == 1.0


def preference_loss(
    loss_type: str,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label: float | Tensor | None = None,
    weight: float | Tensor | None = None,
) -> Tensor:
    """The per-pair loss named by ``loss_type`` (one of :data:`LOSS_TYPES`).

    ``"sigmoid"`` → :func:`dpo_loss` (soft labels allowed), ``"ipo"`` →
    :func:`ipo_loss` (``label`` must be None or 1).

    Returns
    -------
    Tensor, shape (B,)

    Raises
    ------
    ValueError
        An unknown ``loss_type`` (the message lists the valid ones), or a soft
        label with ``loss_type="ipo"``.
    """
    check_choice("loss_type", loss_type, LOSS_TYPES)
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if loss_type == "sigmoid":
        return dpo_loss(*logps, beta=beta, label=label, weight=weight)
    if not _is_hard_label(label):
        shown = "a tensor with values other than 1" if isinstance(label, Tensor) else repr(label)
        raise ValueError(
            f"label={shown}: soft labels apply to loss_type='sigmoid' only; "
            "loss_type='ipo' takes label=None (or 1)"
        )
    return ipo_loss(*logps, beta=beta, weight=weight)
