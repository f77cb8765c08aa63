"""The contract of backbone-level ensembles (LoRA, partial, deep, MC dropout).

A member backbone is a :class:`~auq.backbone.Backbone` whose ``forward`` returns
one feature set per member, shape (K, B, d), instead of (B, d). An
:class:`~auq.heads.EnsembleHead` with K members then applies member k's head to
member k's features (``einsum("knd,kd->kn")``), and :class:`~auq.RewardModel`
trains backbone members and heads together through its fine-tuning loop.

Subclasses implement :meth:`build` (wrap an already loaded plain backbone), the
forward — :meth:`_member_hidden` (every member in one batched forward) or
:meth:`_member_states` (one member after the other) —, :attr:`rows_per_item` (rows
one forward runs per item, which the scoring engine's token budget counts) and, when
they hold weights beyond the base model, :meth:`save_members` / :meth:`load_members`
(safetensors + JSON). One that can continue a shared prompt prefix
(:mod:`auq.scoring.prefix`) overrides :meth:`forward_shared_prefix` and
:meth:`prefix_sharing_unsupported`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from auq.backbone import Backbone, model_inputs, pool_hidden_states

__all__ = [
    "MEMBER_REGISTRY",
    "MemberBackbone",
    "check_n_members",
    "register_members",
    "relative_noise",
]

MEMBER_REGISTRY: dict[str, type[MemberBackbone]] = {}


def register_members(cls: type[MemberBackbone]) -> type[MemberBackbone]:
    """Class decorator: make a member backbone available as ``uq=cls.method``."""
    MEMBER_REGISTRY[cls.method] = cls
    return cls


class MemberBackbone(Backbone):
    """A backbone with K members; ``forward`` returns features of shape (K, B, d).

    Attributes
    ----------
    method : str
        The ``uq=`` name.
    n_members : int
        K, for the ensembles (MC dropout has passes instead: ``n_passes``).
    """

    method: ClassVar[str] = ""
    n_members: int

    @property
    def n_samples(self) -> int:
        """S, the feature sets an inference forward returns: K members (T passes for MC dropout)."""
        return self.n_members

    @classmethod
    @abstractmethod
    def build(cls, backbone: Backbone, **options: Any) -> MemberBackbone:
        """Wrap a loaded plain backbone (its model and tokenizer are reused).

        ``options`` hold the count (``n_members=K``, or ``n_passes=T`` for MC dropout)
        and the method's own options.
        """

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """JSON-able options that, with the count, rebuild the members via :meth:`build`."""

    def _member_hidden(self, kwargs: dict[str, Tensor]) -> Tensor:
        """Last hidden states of every member, shape (K, B, L, d), for model kwargs of B rows.

        A subclass overrides this (one batched forward over K·B rows: LoRA, MC dropout)
        or :meth:`_member_states` (one member after the other: partial, deep).
        """
        return torch.stack(list(self._member_states(kwargs)))

    def _member_states(self, kwargs: dict[str, Tensor]) -> Iterator[Tensor]:
        """Each member's last hidden states, (B, L, d), in turn (default: :meth:`_member_hidden`).

        :meth:`forward` pools each one as it comes, so a method that runs its
        members one after the other never holds all K members' states at once.
        """
        yield from self._member_hidden(kwargs)

    @property
    def rows_per_item(self) -> int:
        """Rows the inference forward runs per item (K members by default)."""
        return self.n_samples

    @property
    def feature_batch_shape(self) -> tuple[int, ...]:
        return (self.n_samples,)

    def feature_settings(self) -> dict[str, Any]:
        return {"method": self.method, "n_samples": self.n_samples, **self.get_config()}

    def prefix_sharing_unsupported(self) -> str | None:
        return f"uq={self.method!r} does not continue a shared prefix"

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """Per-member features of a padded batch.

        Parameters
        ----------
        input_ids, attention_mask, token_type_ids, position_ids : Tensor, shape (B, L)

        Returns
        -------
        Tensor, shape (K, B, d), float32.
        """
        kwargs = model_inputs(input_ids, attention_mask, token_type_ids, position_ids)
        pooled = [
            pool_hidden_states(states, attention_mask, self.pooling)  # (B, d)
            for states in self._member_states(kwargs)
        ]
        return torch.stack(pooled).float()

    def _pool_members(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """(K, B, L, d) member states → (K, B, d) float32 features (pooled with the mask)."""
        k, b, length, d = hidden.shape
        mask = attention_mask.repeat(k, 1)  # (K·B, L)
        return (
            pool_hidden_states(hidden.reshape(k * b, length, d), mask, self.pooling)
            .reshape(k, b, d)
            .float()
        )

    def set_trainable(self) -> None:
        """Set ``requires_grad`` so that exactly the member weights train (default: all)."""
        self.requires_grad_(True)

    def save_members(self, directory: str | Path) -> None:
        """Write member weights that the base model does not hold (default: none)."""

    def load_members(self, directory: str | Path) -> None:
        """Read what :meth:`save_members` wrote (default: nothing)."""

    @classmethod
    def _adopt(cls, backbone: Backbone) -> MemberBackbone:
        """A new instance of ``cls`` sharing ``backbone``'s model, tokenizer and settings."""
        if backbone.is_reward_checkpoint:
            raise ValueError(
                f"uq={cls.method!r} needs a plain AutoModel backbone, not a reward checkpoint; "
                "use uq='heads', 'laplace' or 'pyro' to add uncertainty to a reward checkpoint"
            )
        member = cls.__new__(cls)
        Backbone.__init__(
            member,
            backbone.model,
            backbone.tokenizer,
            pooling=backbone.pooling,
            max_length=backbone.text_encoder.max_length,
            name_or_path=backbone.name_or_path,
            scoring=backbone.scoring,
        )
        return member


def check_n_members(value: object, *, what: str = "n_members") -> int:
    """K ≥ 2 for an ensemble (T ≥ 2 passes for MC dropout), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"{what} must be an integer >= 2 for an ensemble, got {value!r}")
    return value


def relative_noise(tensor: Tensor, scale: float, generator: torch.Generator) -> Tensor:
    """``scale · rms(tensor) · N(0, 1)`` noise of ``tensor``'s shape (drawn on the CPU, seeded).

    Used to perturb member copies so that they do not start identical.

    Parameters
    ----------
    tensor : Tensor, any shape
    scale : float
    generator : torch.Generator
        A CPU generator.

    Returns
    -------
    Tensor, the shape, dtype and device of ``tensor``.
    """
    rms = tensor.detach().float().pow(2).mean().sqrt().item()
    noise = torch.randn(tensor.shape, generator=generator) * (scale * rms)
    return noise.to(device=tensor.device, dtype=tensor.dtype)
