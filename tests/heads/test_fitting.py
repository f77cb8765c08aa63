"""The one gradient loop: options checked, penalties reported apart, best weights restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from auq.heads.fitting import FitConfig, StepOutput, fit_pairs


class _Toy(nn.Module):
    """A trainable vector next to a large frozen one (a stand-in for a frozen base)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.frozen = nn.Parameter(torch.randn(50), requires_grad=False)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    return x, (x @ torch.tensor([1.0, -2.0, 0.5]) > 0).float()


def test_penalty_is_optimised_but_reported_apart():
    toy, (x, y) = _Toy(), _data()

    def batch_loss(idx):
        m = x[idx] @ toy.w
        loss = nn.functional.binary_cross_entropy_with_logits(m, y[idx])
        return StepOutput(loss, m, 0.5 * toy.w.square().sum())

    history = fit_pairs(toy, batch_loss, n_pairs=64, config=FitConfig(epochs=3, lr=0.1))
    assert len(history.train_loss) == len(history.train_penalty) == 3
    assert history.train_penalty[-1] > 0 and history.n_steps == 3
    assert "epochs=3" in repr(history)


def test_early_stopping_restores_the_best_trainable_weights_only():
    toy, (x, y) = _Toy(), _data()
    frozen_before = toy.frozen.clone()
    seen: list[torch.Tensor] = []
    losses = iter([0.5, 0.2, 0.9, 0.8, 0.7])  # best at epoch 1, then worse

    def batch_loss(idx):
        m = x[idx] @ toy.w
        return StepOutput(nn.functional.binary_cross_entropy_with_logits(m, y[idx]), m)

    def evaluate():
        seen.append(toy.w.detach().clone())
        return next(losses), 0.5

    config = FitConfig(epochs=5, lr=0.1, patience=2)
    history = fit_pairs(toy, batch_loss, n_pairs=64, config=config, evaluate=evaluate)
    assert history.stopped_early and history.best_epoch == 1
    torch.testing.assert_close(toy.w, seen[1])
    assert torch.equal(toy.frozen, frozen_before)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"epochs": 0}, ValueError, "epochs must be a positive integer"),
        ({"lr": -1.0}, ValueError, "lr must be > 0"),
        ({"patience": 0}, ValueError, "patience must be a positive integer or None"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay must be >= 0"),
        ({"epoch": 3}, TypeError, r"unknown training option\(s\) epoch; valid: batch_size"),
    ],
)
def test_bad_training_options(changes, error, message):
    with pytest.raises(error, match=message):
        FitConfig().replace(**changes)
