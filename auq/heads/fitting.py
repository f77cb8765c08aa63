"""Minibatch-gradient fitting of pair losses, on the one training loop (:mod:`auq.loop`).

Heads on cached features and fine-tuned backbones share it: the caller supplies
``batch_loss(indices) -> StepOutput`` over pair indices; :func:`fit_pairs` turns
epochs into the loop's updates and adds, at each epoch's end, the held-out
loss/accuracy, early stopping with best-weights restore, and a history in which
the data loss and the penalties (anchoring, diversity) are reported apart. The
loop supplies seeded shuffling, AdamW, clipping, accumulation, mixed precision,
data parallelism, checkpoints and resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from auq.loop import EpochBatches, LoopConfig, StepResult, TrainingLoop

__all__ = ["FIT_OPTIONS", "FitConfig", "FitHistory", "StepOutput", "fit_pairs"]


@dataclass(frozen=True)
class FitConfig:
    """Optimiser and loop settings of gradient training.

    Attributes
    ----------
    epochs : int
        Passes over the training pairs.
    batch_size : int
        Pairs per optimiser step.
    lr, weight_decay : float
        AdamW settings.
    max_grad_norm : float or None
        Gradient clipping threshold.
    center_coef : float
        Weight of the reward-centring term (TRL's ``center_rewards_coefficient``).
    head_lr : float or None
        Learning rate of the heads when a backbone trains with them (None: ``lr``);
        only meaningful when a backbone trains.
    patience : int or None
        Stop after this many epochs without held-out loss improvement and restore
        the best weights (needs evaluation pairs). None disables early stopping.
    seed : int
        Seed of the minibatch order.
    progress : bool or None
        Show a progress bar: None (default) only on a terminal or in a notebook.
    gradient_accumulation_steps, mixed_precision, gradient_checkpointing : optional
        The loop's options (:class:`~auq.loop.LoopConfig`); a batch of
        ``batch_size`` pairs is then split into that many micro-batches.
    output_dir, save_steps, resume_from_checkpoint : optional
        Checkpoints every ``save_steps`` updates in ``output_dir`` and resume
        (:class:`~auq.loop.LoopConfig`); ``metrics.jsonl`` goes there too.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 1e-4
    max_grad_norm: float | None = 1.0
    center_coef: float = 0.0
    head_lr: float | None = None
    patience: int | None = 5
    seed: int = 0
    progress: bool | None = None
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    output_dir: str | None = None
    save_steps: int | None = None
    resume_from_checkpoint: str | bool | None = None

    def replace(self, **changes) -> FitConfig:
        """A copy with ``changes`` applied; unknown names are refused with the valid ones."""
        unknown = sorted(set(changes) - set(FIT_OPTIONS))
        if unknown:
            raise TypeError(
                f"unknown training option(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(FIT_OPTIONS))}"
            )
        return replace(self, **changes)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not (isinstance(self.weight_decay, int | float) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.patience is not None and (
            isinstance(self.patience, bool)
            or not isinstance(self.patience, int)
            or self.patience < 1
        ):
            raise ValueError(f"patience must be a positive integer or None, got {self.patience!r}")
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of "
                f"gradient_accumulation_steps={self.gradient_accumulation_steps} (each update "
                "takes batch_size pairs in that many micro-batches)"
            )
        self.loop_config(1)  # the loop's own checks, now rather than at the first fit

    def loop_config(self, max_steps: int, *, cpu: bool = False) -> LoopConfig:
        """The :class:`~auq.loop.LoopConfig` of a fit of ``max_steps`` updates."""
        return LoopConfig.from_settings(self, max_steps=max_steps, cpu=cpu)


#: names of the :class:`FitConfig` training options
FIT_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(FitConfig))


class StepOutput(NamedTuple):
    """What ``batch_loss`` returns for one minibatch.

    Attributes
    ----------
    loss : Tensor, shape ()
        The data loss (Bradley–Terry, centring).
    margins : Tensor, shape (b,)
        Mean predicted margins, for the running training accuracy.
    penalty : Tensor or None, shape ()
        Regularisers added to the loss for the gradient but reported apart
        (anchoring, LoRA diversity).
    """

    loss: Tensor
    margins: Tensor
    penalty: Tensor | None = None


@dataclass
class FitHistory:
    """Per-epoch records of a fit.

    Attributes
    ----------
    train_loss : list of float
        Data loss per epoch (penalties excluded).
    train_penalty : list of float
        Mean regulariser per epoch (anchoring, diversity); empty when there is none.
    train_accuracy, eval_loss, eval_accuracy : list of float
    best_epoch : int or None
        Epoch whose weights were kept (early stopping), 0-based.
    stopped_early : bool
    n_steps : int
        Optimiser steps taken.
    """

    train_loss: list[float] = field(default_factory=list)
    train_penalty: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    n_steps: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def __repr__(self) -> str:
        parts = [f"epochs={len(self.train_loss)}"]
        if self.train_loss:
            parts.append(f"train_loss={self.train_loss[-1]:.4f}")
        if self.eval_loss:
            parts.append(f"eval_loss={self.eval_loss[-1]:.4f}")
            parts.append(f"eval_accuracy={self.eval_accuracy[-1]:.3f}")
        if self.best_epoch is not None:
            parts.append(f"best_epoch={self.best_epoch}")
        if self.stopped_early:
            parts.append("stopped_early=True")
        return f"FitHistory({', '.join(parts)})"


def _trainable_snapshot(params: dict[str, nn.Parameter]) -> dict[str, Tensor]:
    """Copies of the trainable tensors on the host (not the frozen base, not on the GPU)."""
    return {name: p.detach().to("cpu", copy=True) for name, p in params.items()}


class _EpochTracker:
    """Per-epoch sums, evaluation, early stopping and the best weights of one fit."""

    def __init__(self, module, n_pairs, config, evaluate, trainable):
        self.module, self.n_pairs, self.config = module, n_pairs, config
        self.evaluate, self.trainable = evaluate, trainable
        self.history = FitHistory()
        self.best_loss, self.best_state, self.stale = math.inf, None, 0
        self.sums = {"loss": 0.0, "penalty": 0.0, "correct": 0.0, "has_penalty": 0.0}

    def add(self, step: StepOutput, n: int) -> None:
        self.sums["loss"] += float(step.loss.detach()) * n
        if step.penalty is not None:
            self.sums["has_penalty"] = 1.0
            self.sums["penalty"] += float(step.penalty.detach()) * n
        self.sums["correct"] += float((step.margins.detach() > 0).sum())

    def end_epoch(self) -> bool:
        """Close the epoch's records; True when early stopping ends the fit."""
        history, sums, n = self.history, self.sums, self.n_pairs
        history.train_loss.append(sums["loss"] / n)
        if sums["has_penalty"]:
            history.train_penalty.append(sums["penalty"] / n)
        history.train_accuracy.append(sums["correct"] / n)
        self.sums = dict.fromkeys(sums, 0.0)
        if self.evaluate is None:
            return False
        self.module.eval()
        eval_loss, eval_acc = self.evaluate()
        self.module.train()
        history.eval_loss.append(eval_loss)
        history.eval_accuracy.append(eval_acc)
        if eval_loss < self.best_loss - 1e-6:
            self.best_loss, self.stale = eval_loss, 0
            history.best_epoch = len(history.eval_loss) - 1
            if self.config.patience is not None:
                self.best_state = _trainable_snapshot(self.trainable)
            return False
        self.stale += 1
        if self.config.patience is not None and self.stale >= self.config.patience:
            history.stopped_early = True
            return True
        return False

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the fit (the best weights included)."""
        return {
            "history": self.history.as_dict(),
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "best_state": self.best_state,
            "stale": self.stale,
            "sums": dict(self.sums),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = FitHistory(**state["history"])
        self.best_loss = math.inf if state["best_loss"] is None else state["best_loss"]
        self.best_state, self.stale, self.sums = state["best_state"], state["stale"], state["sums"]


def fit_pairs(
    module: nn.Module,
    batch_loss: Callable[[Tensor], StepOutput],
    *,
    n_pairs: int,
    config: FitConfig,
    evaluate: Callable[[], tuple[float, float]] | None = None,
    param_groups: list[dict] | None = None,
    description: str = "fit",
) -> FitHistory:
    """Minimise ``batch_loss`` over shuffled minibatches of pair indices.

    Parameters
    ----------
    module : nn.Module
        Owner of the parameters; its trainable parameters are restored to the best
        epoch when early stopping is on.
    batch_loss : callable
        ``batch_loss(indices (b,)) -> StepOutput``; the optimiser minimises
        ``loss + penalty``.
    n_pairs : int
        Number of training pairs B.
    config : FitConfig
    evaluate : callable, optional
        ``evaluate() -> (eval_loss, eval_accuracy)`` run after each epoch.
    param_groups : list of dict, optional
        AdamW parameter groups (e.g. a lower learning rate for a backbone); by
        default one group of the module's parameters that require gradients.

    Returns
    -------
    FitHistory
        ``n_steps`` counts the optimiser updates.
    """
    trainable = {name: p for name, p in module.named_parameters() if p.requires_grad}
    batches = EpochBatches(
        n_pairs,
        config.batch_size,
        seed=config.seed,
        accumulation=config.gradient_accumulation_steps,
    )
    first = next(iter(trainable.values()), None)
    on_cpu = first is None or first.device.type == "cpu"
    tracker = _EpochTracker(module, n_pairs, config, evaluate, trainable)

    def step(idx: Tensor) -> StepResult:
        out = batch_loss(idx)
        tracker.add(out, len(idx))
        loss = out.loss if out.penalty is None else out.loss + out.penalty
        return StepResult(loss, {"data_loss": out.loss.detach()})

    def end_of_epoch(update: int, _metrics: dict) -> bool:
        return update % batches.per_epoch == 0 and tracker.end_epoch()

    loop = TrainingLoop(
        module,
        step,
        config=config.loop_config(config.epochs * batches.per_epoch, cpu=on_cpu),
        param_groups=param_groups,
        description=description,
        callbacks=[end_of_epoch],
        state=(tracker.state, tracker.load_state),
    )
    result = loop.run(batches)
    history = tracker.history
    history.n_steps = result.n_steps
    if tracker.best_state is not None:
        with torch.no_grad():
            for name, value in tracker.best_state.items():
                trainable[name].copy_(value)
    module.eval()
    return history
