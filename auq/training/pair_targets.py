"""Offline DPO's uncertainty-aware targets, from an auq reward model on the same pairs.

::

    targets = pair_targets(rm, pairs, mode="weight")   # one rm.predict(...) call
    loss = dpo_loss(..., weight=targets.weight)

A DPO dataset's labels are noisy where annotators disagree and the reward model,
trained on the same kind of pairs, says how sure it is. Four modes use that:

=================  ===================================================================
``mode``           what the trainer gets
=================  ===================================================================
``"none"``         nothing extra (the plain DPO baseline); margins are still reported
``"soft_label"``   ``label``: P(chosen ≻ rejected), calibrated when the model has a
                   calibrator, as the target of a soft (label-smoothed) DPO loss
``"weight"``       ``weight``: per-pair weights that fall with the margin's epistemic
                   variance, mean 1 over the dataset
``"pessimistic"``  ``actions``: KEEP / SWAP / DROP from a lower confidence bound on
                   the margin (:func:`auq.training.losses.pessimistic_actions`)
=================  ===================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from auq.training.losses import DROP, KEEP, SWAP, pessimistic_actions
from auq.utils.console import get_logger, warn_user
from auq.utils.validation import check_choice

__all__ = [
    "UNCERTAINTY_MODES",
    "WEIGHT_SCHEDULES",
    "PairTargets",
    "pair_targets",
    "uncertainty_weights",
]

logger = get_logger("auq.training")

#: how offline DPO uses the reward model's uncertainty
UNCERTAINTY_MODES: tuple[str, ...] = ("none", "soft_label", "weight", "pessimistic")
#: how ``mode="weight"`` turns the margin's epistemic variance into a weight
WEIGHT_SCHEDULES: tuple[str, ...] = ("inverse_variance", "exponential")


@dataclass(frozen=True, eq=False)
class PairTargets:
    """What :func:`pair_targets` computed for B pairs; tensors float64 / int64 on the CPU.

    Attributes
    ----------
    mode : str
        One of :data:`UNCERTAINTY_MODES`.
    prob : Tensor, shape (B,), float64
        P(chosen ≻ rejected) from ``rm.predict(pairs)``: calibrated when the model
        has a calibrator attached, the model's own predictive otherwise.
    margin_mean : Tensor, shape (B,), float64
        E[Δ], Δ = r(chosen) − r(rejected).
    margin_std : Tensor, shape (B,), float64
        Epistemic std of Δ (with the chosen/rejected covariance; spread-scaled when
        the attached calibrator is a :class:`~auq.calibration.SpreadScaler`).
    epistemic : Tensor, shape (B,), float64
        The epistemic part of the preference entropy, i.e. the mutual information
        between the label and the model (nats, see :mod:`auq.uncertainty`): the
        uncertainty *about the label*, which is small for a pair with a wide but
        clearly positive margin, unlike ``margin_std``.
    label : Tensor, shape (B,), float64, or None
        ``mode="soft_label"``: the soft target, equal to ``prob``.
    weight : Tensor, shape (B,), float64, or None
        ``mode="weight"``: per-pair weights, mean 1 (see :func:`uncertainty_weights`).
    actions : Tensor, shape (B,), int64, or None
        ``mode="pessimistic"``: ``KEEP`` (0), ``SWAP`` (1) or ``DROP`` (2) from
        :mod:`auq.training.losses`.
    n_dropped, n_swapped : int
        Pairs with ``DROP`` / ``SWAP`` (0 outside ``mode="pessimistic"``).
    calibrator : str or None
        Name of the calibrator that produced ``prob`` (None: uncalibrated).
    weight_scale : float or None
        The scale s the weights used (``mode="weight"``).
    """

    mode: str
    prob: Tensor
    margin_mean: Tensor
    margin_std: Tensor
    epistemic: Tensor
    label: Tensor | None = None
    weight: Tensor | None = None
    actions: Tensor | None = None
    n_dropped: int = 0
    n_swapped: int = 0
    calibrator: str | None = None
    weight_scale: float | None = None

    def __len__(self) -> int:
        return int(self.margin_mean.shape[0])

    @property
    def n_kept(self) -> int:
        """Pairs the trainer trains on: all but the dropped ones."""
        return len(self) - self.n_dropped

    def summary(self) -> dict[str, float]:
        """Means and counts for logging: ``prob_mean``, ``margin_mean``, ``margin_std_mean``,
        ``epistemic_mean``, ``n_pairs``, ``n_dropped``, ``n_swapped``, ``dropped_share``,
        and ``weight_min`` / ``weight_max`` when there are weights."""
        n = len(self)

        def mean(t: Tensor) -> float:
            return float(t.double().mean()) if n else math.nan

        out = {
            "n_pairs": float(n),
            "prob_mean": mean(self.prob),
            "margin_mean": mean(self.margin_mean),
            "margin_std_mean": mean(self.margin_std),
            "epistemic_mean": mean(self.epistemic),
            "n_dropped": float(self.n_dropped),
            "n_swapped": float(self.n_swapped),
            "dropped_share": self.n_dropped / n if n else math.nan,
        }
        if self.weight is not None and n:
            out["weight_min"] = float(self.weight.min())
            out["weight_max"] = float(self.weight.max())
        return out

    def __repr__(self) -> str:
        parts = [f"mode={self.mode!r}", f"n_pairs={len(self)}", f"calibrator={self.calibrator!r}"]
        if self.mode == "pessimistic":
            parts += [f"n_dropped={self.n_dropped}", f"n_swapped={self.n_swapped}"]
        return f"PairTargets({', '.join(parts)})"


def _check_number(name: str, value: Any, *, positive: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def uncertainty_weights(
    margin_var: Tensor,
    *,
    schedule: str = "inverse_variance",
    scale: float | None = None,
) -> tuple[Tensor, float | None]:
    """Per-pair weights that fall with the margin's epistemic variance, mean 1.

    With σ² the epistemic variance of the margin and s a scale in margin units
    (a standard deviation):

    * ``"inverse_variance"``: w = 1 / (1 + σ²/s²), s² = ``scale**2`` or, by
      default, the median of σ² over the dataset — a pair as uncertain as the
      median one gets half the weight of a certain one;
    * ``"exponential"``: w = exp(−σ/s), s = ``scale`` or, by default, the median
      of σ.

    A default s of 0 (more than half of the pairs with σ = 0) falls back to the
    mean (of σ² or σ); when every σ is 0 every weight is 1. The weights are then
    divided by their mean, so they average 1 over the dataset: the loss keeps its
    scale and the effective learning rate stays that of unweighted DPO — only
    *which* pairs count more changes.

    Parameters
    ----------
    margin_var : Tensor, shape (B,)
        σ², non-negative.
    schedule : {"inverse_variance", "exponential"}
    scale : float, optional
        s > 0 in margin units (std); None: the dataset's median as above.

    Returns
    -------
    weight : Tensor, shape (B,), float64
        Decreasing in σ², mean 1 (empty for B = 0).
    scale : float or None
        The s used (None when every σ is 0).
    """
    check_choice("weight_schedule", schedule, WEIGHT_SCHEDULES)
    if scale is not None:
        scale = _check_number("weight_scale", scale, positive=True)
    var = margin_var.detach().cpu().double().clamp_min(0)  # (B,)
    if var.numel() == 0:
        return var.clone(), scale
    # the uncertainty in the schedule's own units: σ² (inverse_variance) or σ (exponential)
    u = var if schedule == "inverse_variance" else var.sqrt()
    if scale is None:
        ref = float(torch.quantile(u, 0.5))
        if ref <= 0:
            ref = float(u.mean())
        if ref <= 0:
            return torch.ones_like(var), None
        used = ref if schedule == "exponential" else math.sqrt(ref)
    else:
        used = scale
        ref = scale if schedule == "exponential" else scale**2
    weight = 1.0 / (1.0 + u / ref) if schedule == "inverse_variance" else torch.exp(-u / ref)
    return weight / weight.mean(), used


def pair_targets(
    reward_model: Any,
    dataset: Any,
    *,
    mode: str,
    k: float = 1.0,
    weight_schedule: str = "inverse_variance",
    weight_scale: float | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> PairTargets:
    """Uncertainty-aware targets for offline DPO from one ``reward_model.predict`` call.

    Every mode scores the pairs once through the scoring engine
    (``reward_model.predict(dataset, calibrated=None)``: the attached calibrator
    is applied when there is one). An uncalibrated model's probability is used as
    is; ``mode="soft_label"`` then warns that the labels are uncalibrated
    (call ``rm.calibrate(held_out_pairs)`` first).

    Parameters
    ----------
    reward_model : RewardModel
        A fitted auq reward model.
    dataset : PreferenceDataset, datasets.Dataset, pandas.DataFrame or list of rows
        The B DPO pairs, in the order the trainer reads them.
    mode : {"none", "soft_label", "weight", "pessimistic"}
        See the module docstring.
    k : float
        k ≥ 0 of ``"pessimistic"``: a pair is kept when the lower bound
        ``mean − k·std`` of its margin is positive, swapped when the upper bound
        ``mean + k·std`` is negative, dropped otherwise.
    weight_schedule : {"inverse_variance", "exponential"}
        ``"weight"``: see :func:`uncertainty_weights`.
    weight_scale : float, optional
        ``"weight"``: the scale s (a std in margin units); None: the dataset's median.
    batch_size : int, optional
        Texts per micro-batch of the scoring engine.
    progress : bool or None
        Progress bar; None shows it only on a terminal or in a notebook.

    Returns
    -------
    PairTargets

    Raises
    ------
    ValueError
        For an unknown mode or schedule (listing the valid ones), k < 0 or a
        non-positive weight_scale.
    RuntimeError
        When the reward model is not fitted.
    """
    check_choice("mode", mode, UNCERTAINTY_MODES)
    check_choice("weight_schedule", weight_schedule, WEIGHT_SCHEDULES)
    k = _check_number("k", k)
    if weight_scale is not None:
        weight_scale = _check_number("weight_scale", weight_scale, positive=True)
    if not callable(getattr(reward_model, "predict", None)):
        raise TypeError(
            f"reward_model must be an auq RewardModel (with predict), got "
            f"{type(reward_model).__name__}"
        )
    head = getattr(reward_model, "head", None)
    if head is not None and not getattr(head, "is_fitted", True):
        raise RuntimeError(
            "reward_model is not fitted yet: call rm.fit(train_pairs) (or load a fitted "
            "model with RewardModel.from_pretrained) before computing DPO targets"
        )

    pred = reward_model.predict(dataset, calibrated=None, batch_size=batch_size, progress=progress)
    prob = pred.prob.detach().cpu().double()  # (B,)
    margin_mean = pred.margin_mean.detach().cpu().double()
    margin_var = pred.margin_var.detach().cpu().double().clamp_min(0)
    margin_std = margin_var.sqrt()
    epistemic = pred.epistemic.detach().cpu().double()
    n = prob.shape[0]

    fields: dict[str, Any] = {}
    if mode == "soft_label":
        if pred.calibrator is None:
            warn_user(
                "pair_targets(mode='soft_label'): the reward model is uncalibrated, so the "
                "soft labels are its own probabilities; call rm.calibrate(held_out_pairs) "
                "first for calibrated labels"
            )
        fields["label"] = prob.clone()
    elif mode == "weight":
        weight, used = uncertainty_weights(margin_var, schedule=weight_schedule, scale=weight_scale)
        if used is None and n:
            warn_user(
                "pair_targets(mode='weight'): every pair has zero epistemic margin variance, "
                "so every weight is 1"
            )
        fields["weight"], fields["weight_scale"] = weight, used
    elif mode == "pessimistic":
        actions = pessimistic_actions(margin_mean, margin_std, k=k).cpu().long()  # (B,)
        n_dropped, n_swapped = int((actions == DROP).sum()), int((actions == SWAP).sum())
        fields.update(actions=actions, n_dropped=n_dropped, n_swapped=n_swapped)
        logger.info(
            "pair_targets: %d kept, %d swapped, %d dropped of %d pairs (k=%g)",
            int((actions == KEEP).sum()),
            n_swapped,
            n_dropped,
            n,
            k,
        )
        if n_dropped:
            warn_user(
                f"pair_targets(mode='pessimistic', k={k:g}): {n_dropped} of {n} pairs "
                f"({n_dropped / n:.1%}) are dropped: the reward model's interval "
                "mean ± k·std of their margin contains 0"
            )

    return PairTargets(
        mode=mode,
        prob=prob,
        margin_mean=margin_mean,
        margin_std=margin_std,
        epistemic=epistemic,
        calibrator=pred.calibrator,
        **fields,
    )
