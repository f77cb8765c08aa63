"""Feature-level uncertainty heads: they map backbone features (N, d) to reward draws.

``EnsembleHead`` (K stacked linear/MLP heads), ``LaplaceHead`` (closed-form
last-layer Laplace) and ``PyroHead`` (Bayesian head, SVI or NUTS; Pyro is imported
on first use).
"""

from __future__ import annotations

from typing import Any

from auq.heads.base import HEAD_REGISTRY, PreferenceHead, head_class, register_head
from auq.heads.bayesian import LinearBayesianHead
from auq.heads.checkpoints import load_head, save_head
from auq.heads.ensemble import EnsembleHead
from auq.heads.fitting import FitConfig, FitHistory
from auq.heads.laplace import LaplaceHead

__all__ = [
    "HEAD_REGISTRY",
    "EnsembleHead",
    "FitConfig",
    "FitHistory",
    "LaplaceHead",
    "LinearBayesianHead",
    "PreferenceHead",
    "PyroHead",
    "head_class",
    "load_head",
    "register_head",
    "save_head",
]


def __getattr__(name: str) -> Any:
    if name == "PyroHead":  # lazy: importing Pyro costs about a second
        from auq.heads.pyro_head import PyroHead

        return PyroHead
    raise AttributeError(f"module 'auq.heads' has no attribute {name!r}")
