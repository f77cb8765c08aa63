"""Joint samplers of closed-form predictions: small objects that draw, move and select.

A sampler is any callable ``sampler(n, generator=None) -> Tensor`` of shape
``(n, N)`` — ``n`` joint draws of N rewards or margins. The objects here also
support ``.to(device)`` and ``sampler[index]`` (selecting outputs), which the
prediction types use when a prediction is moved or indexed. A plain callable
still works: :func:`select_sampler` and :func:`move_sampler` wrap it.

Randomness is always drawn on the CPU generator (so a seed gives the same draws
on every device) and then moved to the sampler's device.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "AffineSampler",
    "LinearGaussianSampler",
    "Sampler",
    "move_sampler",
    "select_sampler",
]


@runtime_checkable
class Sampler(Protocol):
    """``sampler(n, generator=None) -> Tensor`` of shape (n, N): n joint draws."""

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...


class LinearGaussianSampler:
    """Draws of ``design @ w + offset`` with ``w ~ N(weight, L Lᵀ)`` (a last-layer posterior).

    ``sampler(n, generator)`` returns ``(weight + ε Lᵀ) @ designᵀ + offset``, shape
    (n, N), with ε ~ N(0, I) of shape (n, d) drawn on the CPU ``generator`` in the
    weight dtype and then moved to the weight's device. All outputs of one call share
    the same weight draws, so the rows are joint samples (covariances between outputs
    are kept), and samplers built on the same posterior with the same seed draw the
    same weights (e.g. the chosen, rejected and margin samplers of a pair).

    Parameters
    ----------
    weight : Tensor, shape (d,)
        Posterior mean.
    scale_tril : Tensor, shape (d, d)
        Lower Cholesky factor ``L`` of the posterior covariance.
    design : Tensor, shape (N, d)
        One row per output (features, or feature differences for margins).
    offset : float or Tensor, shape () or (N,)
        Added to every draw (a fixed bias); selected with the outputs when (N,).
    """

    def __init__(
        self,
        weight: Tensor,
        scale_tril: Tensor,
        design: Tensor,
        *,
        offset: Tensor | float = 0.0,
    ) -> None:
        if not isinstance(weight, Tensor) or weight.ndim != 1:
            raise ValueError(f"weight must be a Tensor of shape (d,), got {_shape(weight)}")
        d = weight.shape[0]
        if not isinstance(scale_tril, Tensor) or tuple(scale_tril.shape) != (d, d):
            raise ValueError(f"scale_tril must have shape ({d}, {d}), got {_shape(scale_tril)}")
        if not isinstance(design, Tensor) or design.ndim != 2 or design.shape[1] != d:
            raise ValueError(f"design must have shape (N, {d}), got {_shape(design)}")
        n = design.shape[0]
        if isinstance(offset, Tensor) and offset.ndim and tuple(offset.shape) != (n,):
            raise ValueError(f"offset must be a scalar or have shape ({n},), got {_shape(offset)}")
        if not isinstance(offset, Tensor | float | int) or isinstance(offset, bool):
            raise TypeError(f"offset must be a float or a Tensor, got {type(offset).__name__}")
        self.weight, self.scale_tril, self.design = weight, scale_tril, design
        self.offset = offset

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn((n, self.weight.shape[0]), generator=generator, dtype=self.weight.dtype)
        w = self.weight + eps.to(self.weight.device) @ self.scale_tril.T  # (n, d)
        return w @ self.design.T + self.offset  # (n, d) @ (d, N) -> (n, N)

    def __len__(self) -> int:
        return self.design.shape[0]

    def __getitem__(self, index: Any) -> LinearGaussianSampler:
        """The sampler of the selected outputs (rows of ``design``)."""
        offset = self.offset
        if isinstance(offset, Tensor) and offset.ndim:
            offset = offset[index]
        return LinearGaussianSampler(
            self.weight, self.scale_tril, self.design[index], offset=offset
        )

    def to(self, device: torch.device | str) -> LinearGaussianSampler:
        offset = self.offset.to(device) if isinstance(self.offset, Tensor) else self.offset
        return LinearGaussianSampler(
            self.weight.to(device),
            self.scale_tril.to(device),
            self.design.to(device),
            offset=offset,
        )

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def __repr__(self) -> str:
        return f"LinearGaussianSampler(d={self.weight.shape[0]}, n_outputs={len(self)})"


class AffineSampler:
    """``scale · base(n) + shift``: a base sampler rescaled about a point, shape (n, N).

    Parameters
    ----------
    base : sampler
        Draws of shape (n, N).
    scale : float
    shift : Tensor, shape (N,)
    """

    def __init__(self, base: Sampler, scale: float, shift: Tensor) -> None:
        if not callable(base):
            raise TypeError(f"base must be a sampler (a callable), got {type(base).__name__}")
        self.base, self.scale, self.shift = base, float(scale), shift

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.scale * self.base(n, generator) + self.shift

    def __getitem__(self, index: Any) -> AffineSampler:
        return AffineSampler(select_sampler(self.base, index), self.scale, self.shift[index])

    def to(self, device: torch.device | str) -> AffineSampler:
        return AffineSampler(move_sampler(self.base, device), self.scale, self.shift.to(device))

    def __repr__(self) -> str:
        return f"AffineSampler(base={self.base!r}, scale={self.scale:g})"


class _SelectedSampler:
    """Columns ``index`` of a plain callable's draws (a callable with no ``__getitem__``)."""

    def __init__(self, base: Sampler, index: Any) -> None:
        self.base, self.index = base, index

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.base(n, generator)[:, self.index]

    def __getitem__(self, index: Any) -> _SelectedSampler:
        return _SelectedSampler(self, index)

    def to(self, device: torch.device | str) -> _SelectedSampler:
        return _SelectedSampler(move_sampler(self.base, device), self.index)

    def __repr__(self) -> str:
        return f"{self.base!r}[selected]"


class _MovedSampler:
    """A plain callable's draws moved to ``device`` (a callable with no ``.to``)."""

    def __init__(self, base: Sampler, device: torch.device | str) -> None:
        self.base, self.device = base, torch.device(device)

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.base(n, generator).to(self.device)

    def __getitem__(self, index: Any) -> _MovedSampler:
        return _MovedSampler(select_sampler(self.base, index), self.device)

    def to(self, device: torch.device | str) -> _MovedSampler:
        return _MovedSampler(self.base, device)

    def __repr__(self) -> str:
        return f"{self.base!r}.to({str(self.device)!r})"


def select_sampler(sampler: Sampler, index: Any) -> Sampler:
    """``sampler[index]`` when supported, else a wrapper that selects the output columns."""
    if hasattr(sampler, "__getitem__"):
        return sampler[index]
    return _SelectedSampler(sampler, index)


def move_sampler(sampler: Sampler, device: torch.device | str) -> Sampler:
    """``sampler.to(device)`` when supported, else a wrapper that moves its draws."""
    if hasattr(sampler, "to"):
        return sampler.to(device)
    return _MovedSampler(sampler, device)


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__
