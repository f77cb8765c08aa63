"""One small training loop for everything fitted with minibatch gradients.

Heads on cached features and fine-tuned backbones share it: the caller supplies
``batch_loss(indices) -> (loss, margins)`` over pair indices, the loop supplies
seeded shuffling, AdamW, gradient clipping, a progress bar, per-epoch held-out
loss/accuracy, early stopping with best-weights restore, and a history.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["FitConfig", "FitHistory", "fit_pairs"]


@dataclass(frozen=True)
class FitConfig:
    """Optimiser and loop settings.

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
        Learning rate of freshly initialised heads when a backbone trains with them
        (None: ``lr``).
    patience : int or None
        Stop after this many epochs without held-out loss improvement and restore
        the best weights (needs evaluation pairs). None disables early stopping.
    seed : int
        Seed of the minibatch order.
    progress : bool
        Show a tqdm progress bar (auto-disabled when not a terminal/notebook).
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
    progress: bool = True

    def replace(self, **changes) -> FitConfig:
        """A copy with ``changes`` applied; unknown names are rejected with the valid ones."""
        valid = set(asdict(self))
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise TypeError(
                f"unknown training option(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(valid))}"
            )
        return replace(self, **changes)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")


@dataclass
class FitHistory:
    """Per-epoch records of a fit: ``train_loss``, ``eval_loss``, ``eval_accuracy``."""

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def fit_pairs(
    module: nn.Module,
    batch_loss: Callable[[Tensor], tuple[Tensor, Tensor]],
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
        Owner of the parameters; its ``state_dict`` is restored to the best epoch.
    batch_loss : callable
        ``batch_loss(indices (b,)) -> (loss (), margins (b,))``; margins feed the
        running training accuracy.
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
    if param_groups is None:
        param_groups = [{"params": [p for p in module.parameters() if p.requires_grad]}]
    params = [p for group in param_groups for p in group["params"]]
    optimizer = torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    history = FitHistory()
    best_loss, best_state, stale = math.inf, None, 0
    steps_per_epoch = math.ceil(n_pairs / config.batch_size)
    bar = tqdm(
        total=config.epochs * steps_per_epoch,
        desc=description,
        disable=not config.progress,
        leave=False,
        dynamic_ncols=True,
    )
    try:
        for epoch in range(config.epochs):
            module.train()
            order = torch.randperm(n_pairs, generator=gen)
            total_loss, correct = 0.0, 0.0
            for start in range(0, n_pairs, config.batch_size):
                idx = order[start : start + config.batch_size]
                loss, margins = batch_loss(idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                total_loss += float(loss.detach()) * len(idx)
                correct += float((margins.detach() > 0).sum())
                bar.update(1)
            history.train_loss.append(total_loss / n_pairs)
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
                    best_state = copy.deepcopy(module.state_dict())
                else:
                    stale += 1
                    if config.patience is not None and stale >= config.patience:
                        history.stopped_early = True
                        break
            bar.set_postfix(postfix)
    finally:
        bar.close()
    if best_state is not None and config.patience is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history
