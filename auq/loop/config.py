"""The settings of the training loop (:class:`LoopConfig`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from auq.utils.validation import check_choice

__all__ = ["LOOP_OPTIONS", "LR_SCHEDULES", "MIXED_PRECISIONS", "REPORT_TO", "LoopConfig"]

#: ``mixed_precision`` values (accelerate's)
MIXED_PRECISIONS = ("no", "fp16", "bf16")
#: learning-rate schedules after the warm-up (Hugging Face's names)
LR_SCHEDULES = ("constant", "linear", "cosine")
#: metric sinks: "auto" = JSONL when there is an output directory, plus TensorBoard when installed
REPORT_TO = ("auto", "jsonl", "tensorboard", "none")


def _positive_int(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a positive integer{extra}, got {value!r}")


@dataclass(frozen=True)
class LoopConfig:
    """How the one training loop runs (what trains and on which data is the caller's).

    Attributes
    ----------
    max_steps : int
        Optimiser updates to take.
    gradient_accumulation_steps : int
        Micro-batches per update; their gradients add up before the step.
    lr, weight_decay : float
        AdamW settings (parameter groups may override them).
    adam_betas : (float, float)
        AdamW's β₁, β₂.
    max_grad_norm : float or None
        Clip the gradient norm to this before each update (None: no clipping).
    warmup_steps : int
        Linear learning-rate warm-up over the first updates.
    lr_scheduler_type : {"constant", "linear", "cosine"}
        After the warm-up: constant, or a linear / cosine decay to
        ``min_lr_ratio * lr`` at ``max_steps``.
    min_lr_ratio : float
        Where the decay ends, as a fraction of ``lr`` (in [0, 1]).
    mixed_precision : {"no", "fp16", "bf16"}
        accelerate's autocast of the forward; fp16 needs a GPU.
    gradient_checkpointing : bool
        Recompute activations in the backward pass of every Hugging Face model that
        trains (less memory, about a third more compute).
    seed : int
        Seeds the data order (through the caller's batches) and the torch RNG of the
        run (dropout).
    output_dir : str or None
        Where checkpoints and ``metrics.jsonl`` go (None: nothing is written).
    save_steps : int or None
        Write a checkpoint every this many updates (and at the end); needs ``output_dir``.
    save_total_limit : int or None
        Keep at most this many checkpoints (the oldest are removed).
    resume_from_checkpoint : str, bool or None
        A checkpoint directory, or True for the latest one in ``output_dir``.
    logging_steps : int
        Log (JSONL, TensorBoard, progress bar) every this many updates.
    report_to : {"auto", "jsonl", "tensorboard", "none"}
        Metric sinks; "auto" writes JSONL when ``output_dir`` is set and TensorBoard
        too when it is installed.
    cpu : bool
        Train on the CPU even when a GPU is present.
    progress : bool or None
        Progress bar: None shows it only on a terminal or in a notebook.
    """

    max_steps: int = 100
    gradient_accumulation_steps: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 0
    lr_scheduler_type: str = "constant"
    min_lr_ratio: float = 0.0
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

    def __post_init__(self) -> None:
        _positive_int("max_steps", self.max_steps)
        _positive_int("gradient_accumulation_steps", self.gradient_accumulation_steps)
        _positive_int("logging_steps", self.logging_steps)
        _positive_int("save_steps", self.save_steps, allow_none=True)
        _positive_int("save_total_limit", self.save_total_limit, allow_none=True)
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int):
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not (isinstance(self.lr, int | float) and 0 < self.lr < math.inf):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, int | float) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.max_grad_norm is not None and not (
            isinstance(self.max_grad_norm, int | float) and self.max_grad_norm > 0
        ):
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        check_choice("lr_scheduler_type", self.lr_scheduler_type, LR_SCHEDULES)
        if not (isinstance(self.min_lr_ratio, int | float) and 0 <= self.min_lr_ratio <= 1):
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        betas = self.adam_betas
        if not (
            isinstance(betas, tuple | list)
            and len(betas) == 2
            and all(isinstance(b, int | float) and 0 <= b < 1 for b in betas)
        ):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {betas!r}")
        check_choice("report_to", self.report_to, REPORT_TO)
        if self.report_to in ("jsonl", "tensorboard") and self.output_dir is None:
            raise ValueError(
                f"report_to={self.report_to!r} writes into output_dir; set output_dir "
                "(or report_to='auto' / 'none')"
            )
        if self.report_to == "tensorboard":
            from auq.loop.tracking import tensorboard_available

            if not tensorboard_available():
                raise ValueError(
                    "report_to='tensorboard' needs the tensorboard package (pip install "
                    "tensorboard); valid without it: 'auto', 'jsonl', 'none'"
                )
        if self.save_steps is not None and self.output_dir is None:
            raise ValueError("save_steps needs output_dir (where the checkpoints go)")
        if self.resume_from_checkpoint is True and self.output_dir is None:
            raise ValueError(
                "resume_from_checkpoint=True resumes from the latest checkpoint in output_dir; "
                "set output_dir, or pass the checkpoint directory"
            )

    def lr_factor(self, step: int) -> float:
        """The learning rate of update ``step`` (0-based) as a fraction of ``lr``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_scheduler_type == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        shape = (
            1 - progress
            if self.lr_scheduler_type == "linear"
            else 0.5 * (1 + math.cos(math.pi * progress))
        )
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * shape

    @classmethod
    def from_settings(cls, settings: Any, *, max_steps: int, **overrides: Any) -> LoopConfig:
        """The loop's options a trainer's settings object carries under the same names
        (:class:`~auq.heads.FitConfig`, :class:`~auq.training.DPOConfig`, ...), plus
        ``max_steps`` and ``overrides``."""
        values = {name: getattr(settings, name) for name in LOOP_OPTIONS if hasattr(settings, name)}
        return cls(**{**values, "max_steps": max_steps, **overrides})

    def replace(self, **changes: Any) -> LoopConfig:
        """A copy with ``changes``; unknown names are refused with the valid ones."""
        unknown = sorted(set(changes) - set(LOOP_OPTIONS))
        if unknown:
            raise TypeError(
                f"unknown loop option(s) {', '.join(unknown)}; valid: {', '.join(LOOP_OPTIONS)}"
            )
        return replace(self, **changes)


#: names of the :class:`LoopConfig` options
LOOP_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(LoopConfig))
