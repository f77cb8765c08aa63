"""Input conversion and validation shared by metrics, calibration and conformal code.

Everything here turns NumPy arrays, torch tensors or sequences into float64 NumPy
arrays and raises ``ValueError`` messages that name the offending argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_binary_labels", "as_float_array", "as_probabilities", "check_same_length"]


def _to_numpy(value: Any) -> np.ndarray:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def as_float_array(
    name: str, value: Any, *, ndim: int = 1, allow_empty: bool = False
) -> np.ndarray:
    """Return ``value`` as a finite float64 array with ``ndim`` dimensions.

    Parameters
    ----------
    name : str
        Argument name used in error messages.
    value : array-like or Tensor
    ndim : int
        Required number of dimensions (1 for shape (N,), 2 for shape (S, N)).
    allow_empty : bool
        Whether a zero-length first axis is accepted.

    Raises
    ------
    ValueError
        If ``value`` is not numeric, has the wrong number of dimensions, is
        empty, or contains NaN or infinite entries.
    """
    if value is None:
        raise ValueError(f"{name} is required, got None")
    arr = _to_numpy(value)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != ndim:
        want = "(N,)" if ndim == 1 else "(S, N)" if ndim == 2 else f"{ndim} dimensions"
        raise ValueError(f"{name} must have shape {want}, got shape {arr.shape}")
    if not allow_empty and arr.shape[-1 if ndim == 1 else 0] == 0:
        raise ValueError(f"{name} is empty")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} contains NaN or infinite values ({int(bad.sum())} of {arr.size} entries)"
        )
    return arr


def as_binary_labels(name: str, value: Any) -> np.ndarray:
    """Return labels as a float64 array of 0s and 1s, shape (N,).

    Booleans, integers and floats equal to 0 or 1 are accepted.

    Raises
    ------
    ValueError
        If any label is not 0 or 1 (the message lists up to five offenders).
    """
    arr = as_float_array(name, value)
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        shown = ", ".join(f"{v:g}" for v in np.unique(arr[bad])[:5])
        raise ValueError(f"{name} must contain only 0 and 1, found {shown}")
    return arr


def as_probabilities(name: str, value: Any) -> np.ndarray:
    """Return probabilities as a float64 array in [0, 1], shape (N,).

    Raises
    ------
    ValueError
        If an entry lies outside [0, 1] (pass logits to the ``*_from_logits`` variants).
    """
    arr = as_float_array(name, value)
    if arr.min() < 0 or arr.max() > 1:
        raise ValueError(
            f"{name} must contain probabilities in [0, 1], got values in "
            f"[{arr.min():g}, {arr.max():g}]"
        )
    return arr


def check_same_length(**arrays: np.ndarray) -> int:
    """Check that every array has the same length along axis 0 and return it."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"length mismatch: {listed}")
    return next(iter(lengths.values()))
