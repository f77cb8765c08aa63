"""Validation, index normalisation and conversion shared by the prediction types."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import fields, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from auq.types.samplers import move_sampler, select_sampler
from auq.utils.validation import check_positive_int

__all__ = [
    "DEFAULT_N_SAMPLES",
    "SAMPLE_SEED",
    "DrawsMixin",
    "as_numpy",
    "check_draws",
    "check_label",
    "check_vector",
    "normalize_index",
    "scalar_or_none",
]


def _as_tensor(name: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a torch.Tensor (or array-like of numbers)") from err


def _check_finite(name: str, value: Tensor) -> None:
    if not value.is_floating_point():
        return
    if value.device.type == "meta":  # no data to check
        return
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        raise ValueError(
            f"{name} contains NaN or infinite values ({int(bad.sum())} of {value.numel()} entries)"
        )


def check_vector(
    name: str, value: Any, n: int | None = None, *, non_negative: bool = False
) -> Tensor:
    """``value`` as a finite floating 1-D tensor of length ``n`` (any length when None).

    Raises
    ------
    ValueError
        Naming ``name`` when the shape is wrong, an entry is NaN/infinite, or (with
        ``non_negative``) an entry is negative.
    """
    t = _as_tensor(name, value)
    if not t.is_floating_point():
        t = t.double()
    if t.ndim != 1 or (n is not None and t.shape[0] != n):
        want = "(N,)" if n is None else f"({n},)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    _check_finite(name, t)
    if non_negative and t.device.type != "meta" and t.numel() and bool((t < 0).any()):
        raise ValueError(
            f"{name} must be non-negative (a variance), got {int((t < 0).sum())} negative "
            f"entries (min {float(t.min()):g})"
        )
    return t


def check_draws(name: str, value: Any, axis_names: str = "(S, N)") -> Tensor:
    """``value`` as a finite floating tensor of shape (S, N) with S ≥ 1."""
    t = _as_tensor(name, value)
    if not t.is_floating_point():
        t = t.double()
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape {axis_names}, got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one draw (S ≥ 1), got shape {tuple(t.shape)}")
    _check_finite(name, t)
    return t


def check_label(name: str, value: Any) -> str:
    """A non-empty string option (a method or calibrator name)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def normalize_index(index: Any, n: int, what: str) -> slice | Tensor:
    """Turn a sequence-style index over ``n`` items into a slice or a 1-D int64 CPU tensor.

    An int (negative counts from the end) becomes a length-1 slice and raises
    ``IndexError`` when out of range, so ``len``/``__getitem__`` iteration ends;
    slices pass through; index lists, arrays and tensors are range-checked and made
    non-negative; boolean masks must have length ``n``.
    """
    if isinstance(index, slice):
        return index
    if isinstance(index, bool) or (
        isinstance(index, Tensor) and index.dtype == torch.bool and index.ndim == 0
    ):
        raise TypeError(f"cannot index {what} with a single boolean; use a mask of length {n}")
    if not isinstance(index, list | tuple | np.ndarray) and not (
        isinstance(index, Tensor) and index.ndim > 0
    ):
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(
                f"{what} indices must be an int, a slice, a sequence of ints or a boolean mask, "
                f"got {type(index).__name__}"
            ) from None
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for {n} {what}")
        i %= n
        return slice(i, i + 1)
    t = torch.as_tensor(np.asarray(index) if isinstance(index, list | tuple) else index)
    t = t.detach().cpu()
    if t.ndim != 1:
        raise IndexError(f"{what} index must be one-dimensional, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool:
        if t.shape[0] != n:
            raise IndexError(f"boolean mask has length {t.shape[0]}, expected {n} {what}")
        return t.nonzero().flatten()
    if t.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{what} index must hold integers or booleans, got dtype {t.dtype}")
    t = t.long()
    bad = (t < -n) | (t >= n)
    if bool(bad.any()):
        raise IndexError(f"index {int(t[bad][0])} is out of range for {n} {what}")
    return torch.where(t < 0, t + n, t)


def as_numpy(t: Tensor) -> np.ndarray:
    """A detached float64 (or bool) NumPy copy of ``t`` on the CPU (never a view)."""
    t = t.detach().cpu()
    return (t if t.dtype == torch.bool else t.double()).numpy().copy()


def scalar_or_none(t: Tensor) -> float | None:
    """``float(t.mean())`` for a tensor with data, None when empty or on the meta device."""
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return float(t.double().mean())


#: rows drawn for ``.samples`` / ``.margin_samples`` of a closed-form prediction by default
DEFAULT_N_SAMPLES = 64
#: seed of the CPU generator those rows are drawn with (so they are reproducible)
SAMPLE_SEED = 0


class DrawsMixin:
    """Stored or on-demand draws, selection and device moves shared by both prediction types.

    A subclass is a dataclass with a location field, a variance field, a draws
    field (stored draws or the cache of on-demand ones), ``_sampler``,
    ``_n_samples`` and ``_closed_form``; it names them in the class variables.
    """

    _loc_name: ClassVar[str]
    _var_name: ClassVar[str]
    _draws_name: ClassVar[str]
    _items: ClassVar[str]  # "responses" / "pairs", for messages

    _sampler: Any
    _n_samples: int
    _closed_form: bool

    def __len__(self) -> int:
        return getattr(self, self._loc_name).shape[0]

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    # -- draws -------------------------------------------------------------------------
    @property
    def is_sample_based(self) -> bool:
        """True when the draws are stored (ensembles), False for closed-form predictions."""
        return not self._closed_form

    @property
    def n_samples(self) -> int:
        """S: rows of the stored draws; for closed-form predictions, the rows that the
        draws property holds (drawn once, on first access, from the sampler)."""
        stored = getattr(self, self._draws_name)
        return self._n_samples if stored is None else stored.shape[0]

    @property
    def sampler(self) -> Any:
        """The joint sampler of a closed-form prediction (None when draws are stored or
        when items are drawn independently)."""
        return self._sampler

    def _draws(self) -> Tensor:
        stored = getattr(self, self._draws_name)
        if stored is None:
            stored = self.sample(self._n_samples, torch.Generator().manual_seed(SAMPLE_SEED))
            setattr(self, self._draws_name, stored)
        return stored

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` fresh joint draws, shape (n, len(self)).

        Closed-form predictions call their sampler (or, without one, draw each item
        independently from its Gaussian); sample-based ones resample their stored
        rows with replacement. ``generator`` is a CPU generator.
        """
        check_positive_int("n", n)
        loc = getattr(self, self._loc_name)
        if self._sampler is not None:
            out = self._sampler(n, generator)
            if not isinstance(out, Tensor) or tuple(out.shape) != (n, loc.shape[0]):
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(
                    f"the sampler returned {got} for n={n}, expected shape ({n}, {loc.shape[0]})"
                )
            return out
        stored = getattr(self, self._draws_name)
        if stored is not None and not self._closed_form:
            idx = torch.randint(stored.shape[0], (n,), generator=generator)
            return stored[idx.to(stored.device)]
        eps = torch.randn((n, loc.shape[0]), generator=generator, dtype=loc.dtype)
        return loc + eps.to(loc.device) * getattr(self, self._var_name).clamp_min(0).sqrt()

    # -- selection and devices -----------------------------------------------------------
    def __getitem__(self, index: Any) -> Any:
        """Select items like a sequence: an int (negative too) gives a length-1 prediction
        and raises ``IndexError`` out of range; slices, index lists/arrays/tensors and
        boolean masks select several. Stored draws and the sampler are selected too."""
        idx = normalize_index(index, len(self), self._items)
        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == self._draws_name:
                changes[f.name] = value[:, idx]
            elif f.name == "_sampler":
                changes[f.name] = select_sampler(value, idx)
            elif isinstance(value, Tensor | DrawsMixin):
                changes[f.name] = value[idx]
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> Any:
        """A copy with every tensor — draws, sampler and nested predictions included — on
        ``device``."""
        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "_sampler" and value is not None:
                changes[f.name] = move_sampler(value, device)
            elif isinstance(value, Tensor | DrawsMixin):
                changes[f.name] = value.to(device)
        return replace(self, **changes)

    def cpu(self) -> Any:
        """``self.to("cpu")``."""
        return self.to("cpu")

    @property
    def device(self) -> torch.device:
        return getattr(self, self._loc_name).device

    # -- conversions --------------------------------------------------------------------
    def to_dict(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def to_pandas(self) -> Any:
        """:meth:`to_dict` as a ``pandas.DataFrame``, one row per item."""
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"{type(self).__name__}.to_pandas needs pandas: pip install pandas "
                "(or use to_dict(), which needs only NumPy)"
            ) from err
        return pd.DataFrame(self.to_dict())

    def to_numpy(self) -> np.ndarray:
        """The draws as a float64 array, shape (S, len(self)) (drawn once if closed-form).

        Per-item summaries (means, stds, probabilities, entropies) are in :meth:`to_dict`.
        """
        return as_numpy(self._draws())
