"""The reference policy's sizes and training schedule: a frozen dataclass the cache key hashes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from auq.utils.validation import check_positive_int

__all__ = ["PolicyConfig"]


@dataclass(frozen=True)
class PolicyConfig:
    """Sizes and training schedule of the reference policy (every field enters the cache key).

    Parameters
    ----------
    n_layer, n_head, n_embd, n_positions : int
        GPT-2 sizes; ``n_embd`` must be divisible by ``n_head``; ``n_positions`` bounds
        prompt + response tokens (longer examples are dropped and counted).
    dropout : float
        GPT-2's residual, embedding and attention dropout during training.
    steps, batch_size : int
        Optimiser steps and sequences per step.
    lr, weight_decay, warmup_steps : float, float, int
        AdamW with linear warm-up, then cosine decay to a tenth of ``lr``.
    n_train, n_eval : int
        (prompt, response) pairs drawn from the world for training / for the held-out loss.
    wide_fraction : float
        Share of those pairs drawn from the world's ``"wide"`` region (1–8 sentences), the
        rest from ``"train"`` (1–3 sentences). 0 by default: the policy then never writes
        more than three sentences, so best-of-n cannot reach the long answers where the
        world's gold reward falls; use e.g. 0.5 (with ``n_positions=256``) to let it.
    min_frequency : int
        Words seen fewer times become ``<unk>``.
    seed : int
        Seeds the world's samples, the initial weights and the batch order.
    """

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 128
    dropout: float = 0.0
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    n_train: int = 20_000
    n_eval: int = 256
    wide_fraction: float = 0.0
    min_frequency: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        minimum = {"warmup_steps": 0, "n_eval": 0, "seed": 0}
        for name in ("n_layer", "n_head", "n_embd", "n_positions", "steps", "batch_size",
                     "n_train", "n_eval", "warmup_steps", "min_frequency", "seed"):  # fmt: skip
            check_positive_int(
                f"PolicyConfig.{name}", getattr(self, name), minimum=minimum.get(name, 1)
            )
        if self.n_embd % self.n_head:
            raise ValueError(
                f"PolicyConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            raise ValueError(f"PolicyConfig.lr must be a number > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, int | float) and self.weight_decay >= 0):
            raise ValueError(
                f"PolicyConfig.weight_decay must be a number >= 0, got {self.weight_decay!r}"
            )
        if not (isinstance(self.wide_fraction, int | float) and 0 <= self.wide_fraction <= 1):
            raise ValueError(
                f"PolicyConfig.wide_fraction must be a number in [0, 1], got {self.wide_fraction!r}"
            )
        if not (isinstance(self.dropout, int | float) and 0 <= self.dropout < 1):
            raise ValueError(
                f"PolicyConfig.dropout must be a number in [0, 1), got {self.dropout!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (what the cache key hashes)."""
        return asdict(self)
