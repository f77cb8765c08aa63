"""Best-of-n with uncertainty-aware selection.

::

    res = best_of_n(policy, rm, prompts, n=16, objective="uwo", lam=0.5, tokenizer=tok)
    res.responses        # (P,) the picks
    res.reward_std       # (P, n) the reward model's epistemic std of every candidate

Sample n responses per prompt, score all P·n in one ``reward_model.score`` call
(prompts repeated, so a decoder backbone runs each prompt once: prefix sharing),
and keep per prompt the argmax of the penalised reward
(:func:`auq.objectives.penalized_reward`). A conservative objective ("wco", "uwo",
"lcb", "effective") pays less for candidates the reward model is unsure of, which
limits reward over-optimisation (Coste et al. 2023). For curves over n from one
pool, see :func:`~auq.training.expected_best_of_n`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from auq.objectives import OBJECTIVES, penalized_reward
from auq.training.generation import GenerationStats, Generator, HFGenerator, as_prompt_list
from auq.training.order_statistics import best_of_n_kl_bound
from auq.types import RewardPrediction, TruncationStats
from auq.utils.validation import check_choice, check_positive_int

__all__ = ["BestOfNResult", "best_of_n"]


@dataclass(eq=False)
class BestOfNResult:
    """What :func:`best_of_n` picked, and everything it saw.

    Attributes
    ----------
    prompts : list, length P
    responses : list of str, length P
        The pick for each prompt.
    index : np.ndarray of int, shape (P,)
        Position of the pick among the prompt's candidates.
    objective_values : np.ndarray, shape (P, n)
        The penalised reward of every candidate (what was maximised).
    reward_mean : np.ndarray, shape (P, n)
        The reward model's mean reward of every candidate (after ``calibrator``).
    reward_std : np.ndarray, shape (P, n)
        Its epistemic standard deviation (after ``calibrator``).
    candidates : list of P lists of n str
        Every sampled response, in sampling order.
    objective : str
    n : int
        Candidates per prompt.
    options : dict
        The objective's options (``lam``, ``k``, ``beta``, ``unbiased``,
        ``calibrator``), ``seed`` and the generator used.
    n_truncated : int or None
        Candidates that reached ``max_new_tokens`` without an end-of-sequence token
        (None when the generator does not report it).
    truncated : np.ndarray of bool, shape (P, n), or None
        Which candidates those are.
    scoring_truncation : TruncationStats or None
        What the reward model truncated to score the candidates.
    prediction : RewardPrediction
        The reward model's raw prediction of all P·n candidates, prompt-major
        (candidate j of prompt i at ``i * n + j``).
    kl_bound : float
        log n − (n−1)/n, the upper bound on KL(best-of-n ‖ policy).
    """

    prompts: list
    responses: list[str]
    index: np.ndarray
    objective_values: np.ndarray = field(repr=False)
    reward_mean: np.ndarray = field(repr=False)
    reward_std: np.ndarray = field(repr=False)
    candidates: list[list[str]] = field(repr=False)
    objective: str
    n: int
    options: dict[str, Any]
    n_truncated: int | None
    truncated: np.ndarray | None = field(repr=False)
    scoring_truncation: TruncationStats | None
    prediction: RewardPrediction = field(repr=False)
    kl_bound: float

    def __len__(self) -> int:
        return len(self.responses)

    @property
    def best_objective(self) -> np.ndarray:
        """The maximised objective of each pick, shape (P,)."""
        return np.take_along_axis(self.objective_values, self.index[:, None], axis=1)[:, 0]

    @property
    def best_reward_mean(self) -> np.ndarray:
        """Mean reward of each pick, shape (P,)."""
        return np.take_along_axis(self.reward_mean, self.index[:, None], axis=1)[:, 0]

    @property
    def best_reward_std(self) -> np.ndarray:
        """Epistemic std of each pick's reward, shape (P,)."""
        return np.take_along_axis(self.reward_std, self.index[:, None], axis=1)[:, 0]


def _resolve_generator(
    policy: Any, generator: Any, tokenizer: Any, hf_options: dict[str, Any], progress: bool | None
) -> Generator:
    """The Generator to sample with: ``generator``, a Generator policy, or an HFGenerator."""
    given = {k: v for k, v in hf_options.items() if v is not None}
    ready = generator
    if ready is not None and policy is not None:
        raise ValueError(
            "pass the policy either as policy= (a Hugging Face causal LM or a Generator) "
            "or as generator=, not both"
        )
    if ready is None and policy is not None and not isinstance(policy, torch.nn.Module):
        ready = policy  # a Generator passed as the policy
    if ready is not None:
        if not isinstance(ready, Generator):
            raise TypeError(
                "the generator must have generate(prompts, n, *, seed) -> list[list[str]], "
                f"got {type(ready).__name__}"
            )
        unused = sorted([*given, *(["tokenizer"] if tokenizer is not None else [])])
        if unused:
            raise ValueError(
                f"{', '.join(unused)} configure the default HFGenerator and do not apply to "
                f"a ready generator ({type(ready).__name__}); set them on the generator"
            )
        return ready
    if policy is None:
        raise ValueError(
            "best_of_n needs a policy: a Hugging Face causal LM with tokenizer=, or a Generator"
        )
    if tokenizer is None:
        raise ValueError("tokenizer= is required when the policy is a Hugging Face model")
    return HFGenerator(policy, tokenizer, progress=progress, **given)


def _check_generated(out: Any, n_prompts: int, n: int, generator: Any) -> list[list[str]]:
    name = type(generator).__name__
    ok = isinstance(out, list) and len(out) == n_prompts
    ok = ok and all(isinstance(row, list) and len(row) == n for row in out)
    if not ok:
        raise ValueError(f"{name}.generate must return {n_prompts} lists of n={n} responses")
    for i, row in enumerate(out):
        for j, text in enumerate(row):
            if not isinstance(text, str):
                raise TypeError(f"{name}.generate returned {type(text).__name__} at [{i}][{j}]")
    return out


def best_of_n(
    policy: Any,
    reward_model: Any,
    prompts: Any,
    *,
    n: int,
    objective: str = "mean",
    tokenizer: Any = None,
    lam: float = 0.5,
    k: float = 1.0,
    beta: float = 1.0,
    unbiased: bool = False,
    calibrator: Any = None,
    seed: int = 0,
    generator: Generator | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> BestOfNResult:
    """Sample n responses per prompt and keep the best under an uncertainty-aware objective.

    Parameters
    ----------
    policy : transformers causal LM, Generator or None
        The reference policy: a Hugging Face ``AutoModelForCausalLM`` (with
        ``tokenizer=``), or any :class:`Generator`. None when ``generator=`` is given.
    reward_model : RewardModel
        Anything with ``score(prompts, responses, progress=) -> RewardPrediction``.
    prompts : str, chat, or sequence of P of them
    n : int
        Candidates per prompt (≥ 1).
    objective : {"mean", "wco", "uwo", "lcb", "effective"}
        What is maximised (:func:`auq.objectives.penalized_reward`).
    tokenizer : transformers tokenizer, optional
        The policy's tokenizer (Hugging Face policies only).
    lam, k, beta, unbiased, calibrator
        The objective's options, passed to :func:`~auq.objectives.penalized_reward`.
    seed : int
        Sampling seed (the caller's global random states are left unchanged).
    generator : Generator, optional
        A sampling engine to use instead of the default :class:`HFGenerator`.
    max_new_tokens, temperature, top_p, batch_size : optional
        Options of the default :class:`HFGenerator` (defaults 64, 1.0, 1.0, 8;
        ``batch_size`` counts prompts per ``generate`` call). Refused with a ready
        generator, which carries its own.
    progress : bool or None
        Progress bars for generation and scoring.

    Returns
    -------
    BestOfNResult
        Picks (P,), every candidate's objective, mean and std (P, n), counts.

    Raises
    ------
    ValueError
        For n < 1, an unknown objective or invalid objective options (before sampling).
    """
    n = check_positive_int("n", n)
    check_choice("objective", objective, OBJECTIVES)
    options = {"lam": lam, "k": k, "beta": beta, "unbiased": unbiased}
    # validate every objective option now, on a one-response prediction, not after sampling
    probe = RewardPrediction.from_samples(torch.zeros(2, 1))
    penalized_reward(probe, objective, calibrator=calibrator, **options)
    prompts = as_prompt_list(prompts)
    hf = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "batch_size": batch_size,
    }
    gen = _resolve_generator(policy, generator, tokenizer, hf, progress)
    candidates = _check_generated(gen.generate(prompts, n, seed=seed), len(prompts), n, gen)
    stats = getattr(gen, "last_stats", None)
    stats = stats if isinstance(stats, GenerationStats) else None

    flat_prompts = [p for p in prompts for _ in range(n)]  # (P·n,), prompt-major
    flat_responses = [text for row in candidates for text in row]
    prediction = reward_model.score(flat_prompts, flat_responses, progress=progress)
    if not isinstance(prediction, RewardPrediction):
        raise TypeError(
            f"reward_model.score must return a RewardPrediction, got {type(prediction).__name__}"
        )
    used = prediction if calibrator is None else calibrator.transform_rewards(prediction)
    values = penalized_reward(used, objective, **options).double().numpy()
    shape = (len(prompts), n)
    values = values.reshape(shape)
    if np.isnan(values).any():
        raise ValueError(
            f"objective {objective!r} is NaN for {int(np.isnan(values).sum())} candidates"
        )
    index = values.argmax(axis=1)  # the first candidate among tied maxima
    return BestOfNResult(
        prompts=prompts,
        responses=[candidates[i][j] for i, j in enumerate(index)],
        index=index,
        objective_values=values,
        reward_mean=used.mean.double().numpy().reshape(shape),
        reward_std=used.var.double().clamp_min(0).sqrt().numpy().reshape(shape),
        candidates=candidates,
        objective=objective,
        n=n,
        options={
            **options,
            "calibrator": None if calibrator is None else type(calibrator).__name__,
            "seed": seed,
            "generator": repr(gen),
        },
        n_truncated=None if stats is None else stats.n_truncated,
        truncated=None if stats is None else stats.truncated,
        scoring_truncation=prediction.truncation,
        prediction=prediction,
        kl_bound=float(best_of_n_kl_bound(n)),
    )
