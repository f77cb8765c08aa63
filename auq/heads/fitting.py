"""One small training loop for everything fitted with minibatch gradients.

Heads on cached features and fine-tuned backbones share it: the caller supplies
``batch_loss(indices) -> StepOutput`` over pair indices, the loop supplies
seeded shuffling, AdamW, gradient clipping, a progress bar, per-epoch held-out
loss/accuracy, early stopping with best-weights restore, and a history in which
the data loss and the penalties (anchoring, diversity) are reported apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

from auq.utils.console import progress_bar

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
    """
    trainable = {name: p for name, p in module.named_parameters() if p.requires_grad}
    if param_groups is None:
        param_groups = [{"params": list(trainable.values())}]
    params = [p for group in param_groups for p in group["params"]]
    optimizer = torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    history = FitHistory()
    best_loss, best_state, stale = math.inf, None, 0
    steps_per_epoch = math.ceil(n_pairs / config.batch_size)
    bar = progress_bar(
        total=config.epochs * steps_per_epoch, desc=description, enabled=config.progress
    )
    try:
        for epoch in range(config.epochs):
            module.train()
            order = torch.randperm(n_pairs, generator=gen)
            total_loss, total_penalty, correct = 0.0, 0.0, 0.0
            has_penalty = False
            for start in range(0, n_pairs, config.batch_size):
                idx = order[start : start + config.batch_size]
                step = batch_loss(idx)
                objective = step.loss if step.penalty is None else step.loss + step.penalty
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                history.n_steps += 1
                total_loss += float(step.loss.detach()) * len(idx)
                if step.penalty is not None:
                    has_penalty = True
                    total_penalty += float(step.penalty.detach()) * len(idx)
                correct += float((step.margins.detach() > 0).sum())
                bar.update(1)
            history.train_loss.append(total_loss / n_pairs)
            if has_penalty:
                history.train_penalty.append(total_penalty / n_pairs)
            history.train_accuracy.append(correct / n_pairs)
            postfix = {"loss": f"{history.train_loss[-1]:.4f}"}
            if evaluate is not None:
                module.eval()
                eval_loss, eval_acc = evaluate()
                history.eval_loss.append(eval_loss)
                history.eval_accuracy.append(eval_acc)
                postfix.update(eval_loss=f"{eval_loss:.4f}", eval_acc=f"{eval_acc:.3f}")
                if eval_loss < best_loss - 1e-6:
                    best_loss, stale, history.best_epoch = eval_loss, 0, epoch
                    if config.patience is not None:
                        best_state = _trainable_snapshot(trainable)
                else:
                    stale += 1
                    if config.patience is not None and stale >= config.patience:
                        history.stopped_early = True
                        break
            bar.set_postfix(postfix)
    finally:
        bar.close()
    if best_state is not None:
        with torch.no_grad():
            for name, value in best_state.items():
                trainable[name].copy_(value)
    module.eval()
    return history
