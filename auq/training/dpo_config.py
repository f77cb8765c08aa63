"""Settings of the offline and online DPO trainers, checked before any compute.

:class:`DPOConfig` (offline) and :class:`OnlineDPOConfig` (online) are frozen
dataclasses whose field names are also the command-line flags of ``auq dpo`` /
``auq online-dpo`` and the keys of their ``--config`` files (YAML or JSON; dashes
or underscores). Every bad value is refused at construction with a message that
names the option and the valid values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from auq.loop import LoopConfig
from auq.objectives import OBJECTIVES
from auq.training.losses import LOSS_TYPES
from auq.training.pair_targets import UNCERTAINTY_MODES, WEIGHT_SCHEDULES
from auq.utils.validation import check_choice

__all__ = ["DPOConfig", "OnlineDPOConfig", "check_output_dir", "read_config_file"]


def _int(name: str, value: Any, minimum: int, *, none: bool = False) -> None:
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or None" if none else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{extra}, got {value!r}")


def _number(name: str, value: Any, low: float, *, strict: bool, high: float = math.inf) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and value <= high
    if not ok:
        rule = f"> {low:g}" if strict else f">= {low:g}"
        if high < math.inf:
            rule += f" and <= {high:g}"
        raise ValueError(f"{name} must be a finite number {rule}, got {value!r}")


def check_output_dir(path: str | None) -> None:
    """Refuse an output directory that cannot be created or written, before any compute."""
    if path is None:
        return
    target = Path(path)
    probe = target
    while not probe.exists():  # the nearest existing ancestor must be writable
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"output_dir={path!r}: {probe} exists and is not a directory")
    import os

    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"output_dir={path!r}: {probe} is not writable")


@dataclass(frozen=True)
class _TrainerConfig:
    """Fields shared by both trainers (see :class:`DPOConfig` for their meaning)."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    max_length: int = 512
    max_prompt_length: int = 256
    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_scheduler_type: str = "linear"
    max_grad_norm: float | None = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    output_dir: str | None = None
    save_steps: int | None = None
    save_total_limit: int | None = 2
    resume_from_checkpoint: str | bool | None = None
    logging_steps: int = 1
    report_to: str = "auto"
    cpu: bool = False
    progress: bool | None = None
    disable_dropout: bool = True

    def __post_init__(self) -> None:
        _number("beta", self.beta, 0, strict=True)
        check_choice("loss_type", self.loss_type, LOSS_TYPES)
        _int("max_length", self.max_length, 2)
        _int("max_prompt_length", self.max_prompt_length, 1)
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length={self.max_prompt_length} must be smaller than "
                f"max_length={self.max_length} (the response needs room)"
            )
        check_output_dir(self.output_dir)
        self.loop_config(1)  # the loop's options are checked by the loop, now

    def loop_config(self, max_steps: int) -> LoopConfig:
        """The :class:`~auq.loop.LoopConfig` of a run of ``max_steps`` updates."""
        return LoopConfig.from_settings(self, max_steps=max_steps)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class DPOConfig(_TrainerConfig):
    """Offline DPO (Rafailov et al., 2023) on a fixed set of preference pairs.

    Attributes
    ----------
    beta : float
        β > 0: the strength of the pull towards the reference policy.
    loss_type : {"sigmoid", "ipo"}
        DPO's logistic loss, or IPO's squared loss (Azar et al., 2023).
    uncertainty : {"none", "soft_label", "weight", "pessimistic"}
        How an auq reward model's view of the same pairs enters (needs
        ``reward_model``): the calibrated P(chosen ≻ rejected) as a soft target
        (conservative DPO), per-pair weights falling in the margin's epistemic
        variance, or pessimism (pairs whose margin interval mean ± k·std lies below 0
        are swapped, those straddling 0 dropped, with counts).
    k : float
        k ≥ 0 of ``uncertainty="pessimistic"``.
    weight_schedule : {"inverse_variance", "exponential"}
        ``uncertainty="weight"``: w = 1/(1 + σ²/s²) or exp(−σ/s), mean 1.
    weight_scale : float or None
        s (default: the median σ over the pairs).
    batch_size : int
        Pairs per update (split into ``gradient_accumulation_steps`` micro-batches
        and, under DDP, across the processes).
    epochs : int
        Passes over the pairs (when ``max_steps`` is None).
    max_steps : int or None
        Updates to take (overrides ``epochs``).
    reference_batch_size : int
        Pairs per forward pass when the reference log-probabilities are computed
        (once, before training).
    max_length, max_prompt_length : int
        Token limits (prompt kept at its end, response cut at its end; counted).
    lr, weight_decay, warmup_steps, lr_scheduler_type, max_grad_norm
        AdamW and its schedule (TRL's defaults: lr 1e-6, linear decay).
    gradient_accumulation_steps, mixed_precision, gradient_checkpointing
        See :class:`~auq.loop.LoopConfig`.
    seed, output_dir, save_steps, save_total_limit, resume_from_checkpoint,
    logging_steps, report_to, cpu, progress
        See :class:`~auq.loop.LoopConfig`.
    disable_dropout : bool
        Switch off the policy's (and reference's) dropout, as TRL does: the
        log-probabilities of a pair are then the same in every pass.
    """

    uncertainty: str = "none"
    k: float = 1.0
    weight_schedule: str = "inverse_variance"
    weight_scale: float | None = None
    batch_size: int = 8
    epochs: int = 1
    max_steps: int | None = None
    reference_batch_size: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("uncertainty", self.uncertainty, UNCERTAINTY_MODES)
        _number("k", self.k, 0, strict=False)
        check_choice("weight_schedule", self.weight_schedule, WEIGHT_SCHEDULES)
        if self.weight_scale is not None:
            _number("weight_scale", self.weight_scale, 0, strict=True)
        _int("batch_size", self.batch_size, 1)
        _int("epochs", self.epochs, 1)
        _int("max_steps", self.max_steps, 1, none=True)
        _int("reference_batch_size", self.reference_batch_size, 1)
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of "
                f"gradient_accumulation_steps={self.gradient_accumulation_steps}"
            )
        if self.loss_type == "ipo" and self.uncertainty == "soft_label":
            raise ValueError(
                "uncertainty='soft_label' needs loss_type='sigmoid' (IPO takes hard labels); "
                "valid uncertainty with ipo: 'none', 'weight', 'pessimistic'"
            )


@dataclass(frozen=True)
class OnlineDPOConfig(_TrainerConfig):
    """Online DPO: sample, score with the uncertainty-aware reward model, pair, update.

    Each update takes ``prompts_per_step`` prompts, samples ``num_generations``
    responses per prompt from the current policy, scores them through the scoring
    engine (prefix sharing on), keeps per prompt the best and the worst response
    under the penalised reward ``objective`` (skipping prompts whose order is
    uncertain at level ``alpha``), and takes a DPO step on those pairs.

    Attributes
    ----------
    objective : {"mean", "wco", "uwo", "lcb", "effective"}
        The penalised reward that ranks the samples (:mod:`auq.objectives`).
    lam, k, reward_beta : float
        λ of "uwo", k of "lcb", β of "effective".
    alpha : float or None
        Skip a prompt when P(r_chosen > r_rejected) < 1 − α under the reward
        model's posterior (None: never).
    num_generations : int
        Responses sampled per prompt (≥ 2).
    prompts_per_step : int
        Prompts per update (split into ``gradient_accumulation_steps`` micro-batches
        and, under DDP, across the processes).
    max_steps : int
        Updates to take.
    max_new_tokens, temperature, top_k, top_p : sampling settings
    generation_batch_size : int
        Prompts per ``generate`` call.
    max_length, max_prompt_length : int
        Applied when responses are re-tokenised (a generator that returns texts only).
        With :class:`~auq.training.HFGenerator` the sampled tokens are trained on as
        they are: ``max_new_tokens`` and the policy's positions bound them.
    Others
        As in :class:`DPOConfig`.
    """

    objective: str = "mean"
    lam: float = 0.5
    k: float = 1.0
    reward_beta: float = 1.0
    alpha: float | None = None
    num_generations: int = 4
    prompts_per_step: int = 8
    max_steps: int = 100
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    generation_batch_size: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("objective", self.objective, OBJECTIVES)
        _number("lam", self.lam, 0, strict=False)
        _number("k", self.k, 0, strict=False)
        _number("reward_beta", self.reward_beta, 0, strict=True)
        if self.alpha is not None:
            _number("alpha", self.alpha, 0, strict=True, high=1)
        _int("num_generations", self.num_generations, 2)  # a pair needs two responses
        _int("prompts_per_step", self.prompts_per_step, 1)
        _int("max_steps", self.max_steps, 1)
        _int("max_new_tokens", self.max_new_tokens, 1)
        _number("temperature", self.temperature, 0, strict=True)
        _int("top_k", self.top_k, 0)
        _number("top_p", self.top_p, 0, strict=True, high=1)
        _int("generation_batch_size", self.generation_batch_size, 1)
        if self.prompts_per_step % self.gradient_accumulation_steps:
            raise ValueError(
                f"prompts_per_step={self.prompts_per_step} must be a multiple of "
                f"gradient_accumulation_steps={self.gradient_accumulation_steps}"
            )


def read_config_file(path: str | Path, valid: tuple[str, ...]) -> dict[str, Any]:
    """Options from a YAML or JSON file (keys are flag names; dashes or underscores).

    Raises
    ------
    ValueError
        An unreadable file, a non-mapping, or an unknown key (the message lists the
        valid ones).
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"--config {path}: not valid JSON ({err})") from None
    except Exception as err:  # yaml.YAMLError and its kin
        raise ValueError(
            f"--config {path}: not valid YAML ({' '.join(str(err).split())})"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"--config {path}: must hold a mapping of option: value, got {type(data).__name__}"
        )
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in valid:
            raise ValueError(
                f"--config {path}: unknown option {key!r}; valid: {', '.join(sorted(valid))}"
            )
        out[name] = value
    return out
