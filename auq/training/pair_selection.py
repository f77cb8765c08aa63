"""Online DPO's pair picking: best vs worst of n scored responses per prompt.

::

    rp = rm.score(prompts_repeated, responses)        # P prompts × n responses, prompt-major
    pairs = select_pairs(rp, n, objective="lcb", k=1.0, alpha=0.1)
    chosen = [responses[i] for i in pairs.chosen_index]
    rejected = [responses[i] for i in pairs.rejected_index]

Per prompt the chosen response is the argmax and the rejected one the argmin of the
penalised reward (:func:`auq.objectives.penalized_reward`), the usual online-DPO
"best vs worst" rule. Prompts whose candidates all score the same are skipped
(a tie teaches nothing); with ``alpha`` so are pairs whose order the reward model
itself is not sure of at level α.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from auq.objectives import OBJECTIVES, penalized_reward
from auq.types import RewardPrediction
from auq.utils.console import get_logger
from auq.utils.validation import check_choice, check_positive_int, check_probability

__all__ = ["DEFAULT_ORDER_DRAWS", "SelectedPairs", "order_probability", "select_pairs"]

logger = get_logger("auq.training")

#: joint posterior draws per call when a closed-form prediction needs Monte Carlo
DEFAULT_ORDER_DRAWS = 4096


@dataclass(frozen=True, eq=False)
class SelectedPairs:
    """The (chosen, rejected) pairs :func:`select_pairs` picked, M ≤ P of them.

    Indices point into the flattened P·n responses in prompt-major order (response
    j of prompt i at row ``i * n_per_prompt + j``), the rows of the
    :class:`~auq.types.RewardPrediction` that was passed; :attr:`chosen_slot` and
    :attr:`rejected_slot` give the position j within the prompt. All tensors are
    on the CPU.

    Attributes
    ----------
    prompt_index : Tensor, shape (M,), int64
        The prompt i of each pair, increasing.
    chosen_index, rejected_index : Tensor, shape (M,), int64
        Flattened rows of the chosen (argmax) and rejected (argmin) responses.
    reward_gap : Tensor, shape (M,), float32
        Penalised reward of chosen minus rejected, > 0.
    order_prob : Tensor, shape (M,), float64, or None
        P(r_chosen > r_rejected) under the reward model's posterior, ≥ 1 − α
        (None when no ``alpha`` was given).
    n_prompts : int
        P, the prompts considered.
    n_per_prompt : int
        n, the responses per prompt.
    n_skipped_uncertain : int
        Prompts whose pair was dropped because its order was uncertain at level α.
    n_skipped_ties : int
        Prompts whose best and worst penalised rewards are equal.
    penalized : Tensor, shape (N,), float32, or None
        The penalised reward of every response the pairs were picked by.
    """

    prompt_index: Tensor
    chosen_index: Tensor
    rejected_index: Tensor
    reward_gap: Tensor
    n_prompts: int
    n_per_prompt: int
    n_skipped_uncertain: int = 0
    n_skipped_ties: int = 0
    order_prob: Tensor | None = None
    penalized: Tensor | None = None

    def __len__(self) -> int:
        return int(self.prompt_index.shape[0])

    @property
    def n_selected(self) -> int:
        """M, the pairs kept."""
        return len(self)

    @property
    def chosen_slot(self) -> Tensor:
        """Position of the chosen response among its prompt's n, shape (M,)."""
        return self.chosen_index - self.prompt_index * self.n_per_prompt

    @property
    def rejected_slot(self) -> Tensor:
        """Position of the rejected response among its prompt's n, shape (M,)."""
        return self.rejected_index - self.prompt_index * self.n_per_prompt

    def summary(self) -> dict[str, float]:
        """Counts and the mean reward gap, for logging."""
        out = {
            "n_prompts": float(self.n_prompts),
            "n_selected": float(len(self)),
            "n_skipped_ties": float(self.n_skipped_ties),
            "n_skipped_uncertain": float(self.n_skipped_uncertain),
            "selected_share": len(self) / self.n_prompts if self.n_prompts else math.nan,
            "reward_gap_mean": float(self.reward_gap.double().mean()) if len(self) else math.nan,
        }
        if self.order_prob is not None:
            out["order_prob_mean"] = float(self.order_prob.mean()) if len(self) else math.nan
        return out

    def __repr__(self) -> str:
        return (
            f"SelectedPairs(n_selected={len(self)}, n_prompts={self.n_prompts}, "
            f"n_per_prompt={self.n_per_prompt}, n_skipped_ties={self.n_skipped_ties}, "
            f"n_skipped_uncertain={self.n_skipped_uncertain})"
        )


def order_probability(
    prediction: RewardPrediction,
    first: Tensor,
    second: Tensor,
    *,
    n_draws: int = DEFAULT_ORDER_DRAWS,
    seed: int = 0,
) -> Tensor:
    """P(r_first > r_second) under the reward model's posterior, for M pairs of rows.

    The probability is taken over the *joint* posterior of the two rewards, so
    whatever the two responses share (a backbone, a prompt) cancels:

    * sample-based predictions (ensembles, dropout passes, Pyro draws): the share
      of the S stored rows in which ``r_first > r_second`` — exact for the
      ensemble's empirical posterior, in steps of 1/S;
    * closed-form predictions with a joint sampler (Laplace's
      :class:`~auq.types.LinearGaussianSampler`, kept through spread calibration
      by :class:`~auq.types.AffineSampler`: one weight draw gives every reward of
      a row, so the covariance between responses is kept): the share of
      ``n_draws`` joint draws from ``prediction.sample`` on a CPU generator seeded
      with ``seed`` (Monte Carlo standard error ≤ 0.5/sqrt(n_draws));
    * closed-form predictions without a sampler carry no covariance, so the two
      rewards are taken as independent Gaussians:
      ``Φ((μ₁ − μ₂) / sqrt(σ₁² + σ₂²))`` (a step at 0 when both variances are 0).

    Equal draws count as "not greater".

    Parameters
    ----------
    prediction : RewardPrediction
        N rewards.
    first, second : Tensor, shape (M,), int64
        Rows of ``prediction``.
    n_draws : int
        Joint draws for closed-form predictions with a sampler.
    seed : int
        Seed of those draws (the result is deterministic).

    Returns
    -------
    Tensor, shape (M,), float64, on the CPU
    """
    check_positive_int("n_draws", n_draws)
    first, second = first.cpu().long(), second.cpu().long()
    m = first.shape[0]
    if m == 0:
        return torch.zeros(0, dtype=torch.float64)
    both = prediction[torch.cat([first, second])]  # (2M,) rows; draws/sampler selected too
    if both.is_sample_based or both.sampler is not None:
        if both.is_sample_based:
            draws = both.samples  # (S, 2M)
        else:
            draws = both.sample(n_draws, torch.Generator().manual_seed(seed))  # (n, 2M)
        draws = draws.detach().cpu().double()
        return (draws[:, :m] > draws[:, m:]).double().mean(0)
    mean, var = both.mean.detach().cpu().double(), both.var.detach().cpu().double()
    diff, scale = mean[:m] - mean[m:], (var[:m] + var[m:]).clamp_min(0).sqrt()
    gaussian = torch.special.ndtr(diff / scale.clamp_min(torch.finfo(torch.float64).tiny))
    return torch.where(scale > 0, gaussian, (diff > 0).double())


def select_pairs(
    prediction: RewardPrediction,
    n_per_prompt: int,
    *,
    objective: str = "mean",
    lam: float = 0.5,
    k: float = 1.0,
    beta: float = 1.0,
    alpha: float | None = None,
    calibrator: Any = None,
    n_draws: int = DEFAULT_ORDER_DRAWS,
    seed: int = 0,
) -> SelectedPairs:
    """Pick one (chosen, rejected) pair per prompt from n scored responses.

    Rows are P prompts × n responses in prompt-major order (response j of prompt i
    at row ``i * n + j``). The penalised reward of every response comes from
    :func:`auq.objectives.penalized_reward`; per prompt the chosen response is its
    argmax and the rejected one its argmin (the first one on equal values). A
    prompt is skipped when

    * its largest and smallest penalised rewards are equal (``n_skipped_ties``);
    * ``alpha`` is given and the reward model's posterior gives
      P(r_chosen > r_rejected) < 1 − α (``n_skipped_uncertain``), computed from
      the joint draws of the two rewards by :func:`order_probability` (see there
      for sample-based, joint closed-form and sampler-less predictions). With a
      ``calibrator`` the posterior is the spread-calibrated one.

    Deterministic: the only draws (closed-form predictions with ``alpha``) use a
    CPU generator seeded with ``seed``.

    Parameters
    ----------
    prediction : RewardPrediction
        Rewards of P·n responses, prompt-major (``rm.score(...)``).
    n_per_prompt : int
        n ≥ 2, the responses per prompt.
    objective : {"mean", "wco", "uwo", "lcb", "effective"}
        The penalised reward to rank by (see :mod:`auq.objectives`).
    lam, k, beta : float
        Options of ``"uwo"``, ``"lcb"`` and ``"effective"``.
    alpha : float in (0, 1), optional
        Skip pairs whose order is uncertain at this level; None keeps every
        non-tied pair.
    calibrator : SpreadScaler, optional
        A fitted spread calibrator applied to the rewards first (objective and
        posterior).
    n_draws : int
        Joint posterior draws for a closed-form prediction with a sampler.
    seed : int
        Seed of those draws.

    Returns
    -------
    SelectedPairs
        M pairs, indices on the CPU.

    Raises
    ------
    ValueError
        For n_per_prompt < 2, N not a multiple of n_per_prompt, alpha outside
        (0, 1), or an invalid objective option (naming the valid values).
    """
    if not isinstance(prediction, RewardPrediction):
        raise TypeError(
            "prediction must be a RewardPrediction of P·n responses (rm.score(...)), got "
            f"{type(prediction).__name__}"
        )
    check_positive_int("n_per_prompt", n_per_prompt, minimum=2)
    check_choice("objective", objective, OBJECTIVES)
    if alpha is not None:
        alpha = check_probability("alpha", alpha, inclusive=False)
    check_positive_int("n_draws", n_draws)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    n = len(prediction)
    if n % n_per_prompt:
        raise ValueError(
            f"prediction has N={n} responses, not a multiple of n_per_prompt={n_per_prompt}; "
            "rows must be P prompts × n_per_prompt responses in prompt-major order"
        )
    n_prompts = n // n_per_prompt

    values = penalized_reward(prediction, objective, lam=lam, k=k, beta=beta, calibrator=calibrator)
    flat = values.detach().cpu()  # (N,)
    values = flat.reshape(n_prompts, n_per_prompt)  # (N,) -> (P, n)
    best, worst = values.argmax(dim=1), values.argmin(dim=1)  # (P,) slots, first on ties
    rows = torch.arange(n_prompts)
    gap = values[rows, best] - values[rows, worst]  # (P,)
    tie = gap <= 0
    chosen, rejected = rows * n_per_prompt + best, rows * n_per_prompt + worst  # (P,) flat rows

    keep = ~tie
    prob = None
    n_uncertain = 0
    if alpha is not None:
        posterior = prediction if calibrator is None else calibrator.transform_rewards(prediction)
        prob = order_probability(posterior, chosen, rejected, n_draws=n_draws, seed=seed)
        uncertain = keep & (prob < 1 - alpha)
        n_uncertain = int(uncertain.sum())
        keep &= ~uncertain
        prob = prob[keep]

    out = SelectedPairs(
        prompt_index=rows[keep],
        chosen_index=chosen[keep],
        rejected_index=rejected[keep],
        reward_gap=gap[keep],
        n_prompts=n_prompts,
        n_per_prompt=n_per_prompt,
        n_skipped_uncertain=n_uncertain,
        n_skipped_ties=int(tie.sum()),
        order_prob=prob,
        penalized=flat,
    )
    logger.info(
        "select_pairs: %d of %d prompts kept (%d ties, %d uncertain at alpha=%s)",
        len(out),
        n_prompts,
        out.n_skipped_ties,
        n_uncertain,
        alpha,
    )
    return out
