"""An auq reward model as a TRL reward function (GRPO, RLOO, Online DPO).

::

    from trl import GRPOConfig, GRPOTrainer
    from auq.integrations.trl import reward_function

    rm = auq.RewardModel.from_pretrained("my-auq-rm").to("cuda")
    reward = reward_function(rm, "lcb", k=1.0)             # __name__ == "auq_lcb_k1.0"
    trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=GRPOConfig(...), ...)

TRL calls ``reward(prompts=..., completions=..., completion_ids=..., **columns)``
with one row per completion; the callable scores every row with
``reward_model.score`` (the one scoring engine: length buckets, shared prompts run
once, token budget) and returns the penalised reward
:func:`auq.objectives.penalized_reward` of each row, in order. Nothing here imports
TRL: any trainer with TRL's ``reward_funcs`` convention can call it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from auq.calibration import SpreadScaler
from auq.objectives import OBJECTIVES, penalized_reward
from auq.types import RewardPrediction
from auq.utils.validation import check_choice, check_positive_int

__all__ = ["AuqRewardFunction", "reward_function"]

#: the option each objective's default name carries
_NAME_OPTION = {"uwo": "lam", "lcb": "k", "effective": "beta"}


def reward_function(
    reward_model: Any,
    objective: str = "mean",
    *,
    lam: float = 0.5,
    k: float = 1.0,
    beta: float = 1.0,
    unbiased: bool = False,
    calibrated: bool | None = None,
    spread_calibrator: SpreadScaler | None = None,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    name: str | None = None,
    log_uncertainty: bool = True,
    empty_reward: float | None = None,
) -> AuqRewardFunction:
    """A TRL ``reward_funcs`` callable that scores completions with an auq reward model.

    Parameters
    ----------
    reward_model : RewardModel
        Anything with ``score(prompts, responses, *, batch_size, max_tokens, progress)
        -> RewardPrediction``. TRL does not move it: place it on the trainer's device
        yourself (``rm.to(device)``).
    objective : {"mean", "wco", "uwo", "lcb", "effective"}
        What the policy is rewarded with (:func:`auq.objectives.penalized_reward`):
        ``"mean"`` E[r], ``"wco"`` the worst member, ``"uwo"`` E[r] − λ·Var[r],
        ``"lcb"`` E[r] − k·Std[r], ``"effective"`` −β·log E[exp(−r/β)].
    lam, k, beta, unbiased
        The objective's options (λ ≥ 0, k ≥ 0, β > 0), passed to ``penalized_reward``.
    calibrated : bool or None
        Rescale the reward spread with a fitted :class:`~auq.calibration.SpreadScaler`
        before the penalty: None (default) uses ``spread_calibrator`` if given, else
        the model's attached ``calibrator_`` when it is a ``SpreadScaler``, else none;
        True requires one of them; False uses none.
    spread_calibrator : SpreadScaler, optional
        A fitted spread calibrator (``SpreadScaler().fit(rm.predict(held_out,
        calibrated=False))``).
    batch_size, max_tokens : int, optional
        Micro-batch limits of ``score`` (default: the model's ``scoring`` options).
    name : str, optional
        The callable's ``__name__``, which TRL puts in its metric names
        (``rewards/<name>/mean``). Default ``"auq_<objective>"`` with the objective's
        option: ``"auq_mean"``, ``"auq_wco"``, ``"auq_uwo_lam0.5"``, ``"auq_lcb_k1.0"``,
        ``"auq_effective_beta1.0"``.
    log_uncertainty : bool
        Report each batch's statistics through TRL's ``log_metric`` (see Notes).
    empty_reward : float or None
        The reward of a conversational completion with an empty message, which the
        reward model refuses to score (its chat validation rejects empty messages):
        None (default) returns NaN, which TRL treats as "not scored" (GRPO and RLOO
        leave the row out of the group baseline and give it zero advantage); a float,
        e.g. ``-1.0``, penalises such completions. Plain-text completions ``""`` are
        scored by the model like any other text.

    Returns
    -------
    AuqRewardFunction
        ``fn(prompts, completions, completion_ids=None, **kwargs) -> list[float]``.

    Raises
    ------
    ValueError
        An unknown objective (the valid choices are listed), an invalid λ, k or β,
        ``calibrated=True`` without a spread calibrator, or ``calibrated=False``
        together with ``spread_calibrator=``.
    TypeError
        ``spread_calibrator`` that is not a :class:`~auq.calibration.SpreadScaler`.

    Notes
    -----
    **Batch layout.** TRL (GRPO, RLOO) repeats each prompt ``num_generations`` times
    in ``prompts`` — the completions of one prompt are consecutive rows — and under
    several processes each process holds a slice of the rows, so the completions of
    one prompt may be split across processes; Online DPO passes ``2 * prompts`` with
    the two completions of a prompt half a batch apart. The function scores every
    row on its own and returns one reward per row in the order given, so none of
    this matters to it: TRL gathers the rewards across processes before it forms
    group baselines. Rows of a shared prompt run that prompt once in the scoring
    engine (prefix sharing on causal backbones) with the same result as alone.

    **Inputs.** Plain rows: ``prompts`` and ``completions`` are strings (the raw
    prompt, not the policy's chat rendering). Conversational rows: a prompt is a
    list of ``{"role", "content"}`` messages and a completion a list such as
    ``[{"role": "assistant", "content": "..."}]``; the reward model renders
    ``prompt + completion`` with its own tokenizer's chat template (what TRL does for
    a reward model) or as ``"role: content"`` lines without one. ``completion_ids``,
    ``trainer_state``, ``log_extra`` and the dataset's extra columns are accepted and
    not used.

    **Logging.** With ``log_uncertainty`` and a trainer that passes ``log_metric``
    (GRPO and RLOO in TRL 1.16), every call logs, averaged by TRL over a logging
    step: ``rewards/<name>/epistemic_std`` (mean over the batch of Std[r]),
    ``rewards/<name>/reward_mean`` (mean E[r] before the penalty),
    ``rewards/<name>/penalty`` (mean of E[r] − objective),
    ``rewards/<name>/aleatoric_std`` (methods that model it),
    ``rewards/<name>/prompt_truncated_frac`` and ``.../response_truncated_frac``
    (shares of scored rows whose prompt / response the scoring engine cut to fit
    ``max_length``) and ``rewards/<name>/empty_frac``.
    Trainers without ``log_metric`` (Online DPO) still get the rewards; the same
    statistics of the last call are kept on ``fn.last_stats`` (with the raw
    truncation counts) and its prediction on ``fn.last_prediction``. Truncation also
    emits auq's ``TruncationWarning``.
    """
    check_choice("objective", objective, OBJECTIVES)
    if not callable(getattr(reward_model, "score", None)):
        raise TypeError(
            "reward_model must have a score(prompts, responses) method returning a "
            f"RewardPrediction (an auq.RewardModel), got {type(reward_model).__name__}"
        )
    calibrator = _resolve_calibrator(reward_model, calibrated, spread_calibrator)
    options = {"lam": lam, "k": k, "beta": beta, "unbiased": unbiased}
    # validate λ, k, β and the calibrator now, on a one-response prediction, not mid-training
    probe = RewardPrediction.from_samples(torch.zeros(2, 1))
    penalized_reward(probe, objective, calibrator=calibrator, **options)
    budget = {
        key: check_positive_int(key, value)
        for key, value in (("batch_size", batch_size), ("max_tokens", max_tokens))
        if value is not None
    }
    if name is None:
        option = _NAME_OPTION.get(objective)
        name = f"auq_{objective}" + ("" if option is None else f"_{option}{float(options[option])}")
    elif not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if empty_reward is not None and not (
        isinstance(empty_reward, int | float) and not isinstance(empty_reward, bool)
    ):
        raise TypeError(f"empty_reward must be a float or None, got {empty_reward!r}")
    return AuqRewardFunction(
        reward_model,
        objective,
        options=options,
        calibrator=calibrator,
        budget=budget,
        name=name,
        log_uncertainty=bool(log_uncertainty),
        empty_reward=math.nan if empty_reward is None else float(empty_reward),
    )


def _resolve_calibrator(
    reward_model: Any, calibrated: bool | None, spread_calibrator: Any
) -> SpreadScaler | None:
    if calibrated not in (None, True, False):
        raise ValueError(f"calibrated must be None, True or False, got {calibrated!r}")
    if spread_calibrator is not None and not isinstance(spread_calibrator, SpreadScaler):
        raise TypeError(
            "spread_calibrator must be a fitted auq.calibration.SpreadScaler (it rescales the "
            f"spread of rewards), got {type(spread_calibrator).__name__}; point calibrators "
            "such as TemperatureScaler calibrate preference probabilities, not rewards"
        )
    if calibrated is False:
        if spread_calibrator is not None:
            raise ValueError("calibrated=False contradicts spread_calibrator=; drop one of them")
        return None
    if spread_calibrator is not None:
        return spread_calibrator
    attached = getattr(reward_model, "calibrator_", None)
    if isinstance(attached, SpreadScaler):
        return attached
    if calibrated:
        what = "no calibrator" if attached is None else f"a {type(attached).__name__}"
        raise ValueError(
            f"calibrated=True needs a fitted SpreadScaler; the reward model has {what} "
            "attached: pass spread_calibrator=SpreadScaler().fit(rm.predict(held_out, "
            "calibrated=False))"
        )
    return None


class AuqRewardFunction:
    """The callable :func:`reward_function` returns (build it with that function).

    Not an ``nn.Module`` on purpose: TRL would then call it as a Hugging Face
    sequence classifier instead of a reward function.

    Attributes
    ----------
    __name__ : str
        The name TRL puts in its metric names.
    reward_model, objective, options, calibrator
        What it scores with.
    last_stats : dict or None
        Statistics of the last call (see :func:`reward_function`, Notes).
    last_prediction : RewardPrediction or None
        The last call's prediction of its scored rows (the calibrator not applied).
    """

    def __init__(
        self,
        reward_model: Any,
        objective: str,
        *,
        options: dict[str, Any],
        calibrator: SpreadScaler | None,
        budget: dict[str, int],
        name: str,
        log_uncertainty: bool,
        empty_reward: float,
    ) -> None:
        self.reward_model = reward_model
        self.objective = objective
        self.options = options
        self.calibrator = calibrator
        self.budget = budget
        self.__name__ = name
        self.log_uncertainty = log_uncertainty
        self.empty_reward = empty_reward
        self.last_stats: dict[str, Any] | None = None
        self.last_prediction: RewardPrediction | None = None

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.options.items())
        calibrator = None if self.calibrator is None else type(self.calibrator).__name__
        return (
            f"AuqRewardFunction(name={self.__name__!r}, objective={self.objective!r}, "
            f"{options}, calibrator={calibrator})"
        )

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        """Penalised rewards of N (prompt, completion) rows, in order.

        Parameters
        ----------
        prompts : sequence of N prompts (str or message lists)
        completions : sequence of N completions (str or message lists)
        completion_ids : sequence of N token-id lists, optional
            Not used (TRL passes the policy's token ids).
        **kwargs
            TRL's ``trainer_state``, ``log_metric``, ``log_extra`` and the dataset's
            extra columns; only ``log_metric`` is used.

        Returns
        -------
        list of N floats
            NaN (or ``empty_reward``) for conversational completions with an empty message.
        """
        prompts, completions = _check_rows(prompts, completions)
        n = len(completions)
        empty = [_is_empty(c) for c in completions]
        rows = [i for i in range(n) if not empty[i]]
        rewards = [self.empty_reward] * n
        pred = used = values = None
        if rows:
            pred = self.reward_model.score(
                [prompts[i] for i in rows],
                [completions[i] for i in rows],
                progress=False,
                **self.budget,
            )
            if not isinstance(pred, RewardPrediction):
                raise TypeError(
                    f"reward_model.score must return a RewardPrediction, got {type(pred).__name__}"
                )
            # = penalized_reward(pred, objective, calibrator=...), the calibrated spread kept
            used = pred if self.calibrator is None else self.calibrator.transform_rewards(pred)
            values = penalized_reward(used, self.objective, **self.options)
            for i, value in zip(rows, values.tolist(), strict=True):
                rewards[i] = value
        self.last_prediction = pred
        self.last_stats = _batch_stats(pred, used, values, n)
        self.last_stats["calibrated"] = self.calibrator is not None
        log_metric = kwargs.get("log_metric")
        if self.log_uncertainty and callable(log_metric):
            self._log(log_metric, self.last_stats)
        return rewards

    def _log(self, log_metric: Callable[[str, float], None], stats: Mapping[str, Any]) -> None:
        for key in ("epistemic_std", "reward_mean", "penalty", "aleatoric_std"):
            value = stats.get(key)
            if value is not None and math.isfinite(value):
                log_metric(f"rewards/{self.__name__}/{key}", value)
        n, scored = stats["n"], max(stats["n_scored"], 1)
        log_metric(f"rewards/{self.__name__}/empty_frac", stats["n_empty"] / n)
        for side in ("prompt", "response"):
            cut = stats[f"n_{side}_truncated"] / scored
            log_metric(f"rewards/{self.__name__}/{side}_truncated_frac", cut)


def _check_rows(prompts: Any, completions: Any) -> tuple[list, list]:
    for what, value in (("prompts", prompts), ("completions", completions)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise TypeError(
                f"{what} must be a list with one entry per completion (TRL's reward_funcs "
                f"call), got {type(value).__name__}"
            )
    prompts, completions = list(prompts), list(completions)
    if len(prompts) != len(completions):
        raise ValueError(
            f"prompts and completions must have the same length (one prompt per completion, "
            f"as TRL repeats them), got {len(prompts)} and {len(completions)}"
        )
    if not completions:
        raise ValueError("the reward function needs at least one completion; got 0")
    return prompts, completions


def _is_empty(completion: Any) -> bool:
    """A message-list completion the reward model cannot score: no messages, or an empty one."""
    if isinstance(completion, str) or not isinstance(completion, Sequence):
        return False
    if len(completion) == 0:
        return True
    return any(
        isinstance(m, Mapping) and isinstance(m.get("content"), str) and not m["content"].strip()
        for m in completion
    )


def _batch_stats(
    pred: RewardPrediction | None,
    used: RewardPrediction | None,
    values: torch.Tensor | None,
    n: int,
) -> dict[str, Any]:
    """One call's statistics: ``pred`` as scored, ``used`` calibrated, ``values`` (N_scored,)."""
    n_scored = 0 if pred is None else len(pred)
    stats: dict[str, Any] = {
        "n": n,
        "n_scored": n_scored,
        "n_empty": n - n_scored,
        "objective_mean": math.nan,
        "reward_mean": math.nan,
        "penalty": math.nan,
        "epistemic_std": math.nan,
        "aleatoric_std": None,
        "n_prompt_truncated": 0,
        "n_response_truncated": 0,
        "truncation": None,
    }
    if pred is None or used is None or values is None:
        return stats
    mean = used.mean.double()
    objective = values.double()
    stats["objective_mean"] = float(objective.mean())
    stats["reward_mean"] = float(mean.mean())
    stats["penalty"] = float((mean - objective).mean())
    stats["epistemic_std"] = float(used.var.double().clamp_min(0).sqrt().mean())
    if used.aleatoric_var is not None:
        stats["aleatoric_std"] = float(used.aleatoric_var.double().clamp_min(0).sqrt().mean())
    if pred.truncation is not None:
        stats["truncation"] = pred.truncation
        stats["n_prompt_truncated"] = pred.truncation.n_prompt_truncated
        stats["n_response_truncated"] = pred.truncation.n_response_truncated
    return stats
