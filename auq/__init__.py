"""auq: alignment uncertainty quantification.

Reward models that say how sure they are, calibration that makes that statement
honest, and preference optimisation that uses it.

>>> import auq
>>> ds = auq.PreferenceDataset.from_records(rows)                        # doctest: +SKIP
>>> rm = auq.RewardModel.from_backbone(path, uq="heads", n_members=8)   # doctest: +SKIP
>>> rm.fit(ds).predict(ds).margin_samples.shape                         # doctest: +SKIP

``import auq`` stays light: the wings that pull in scikit-learn, Pyro or
matplotlib (``auq.calibration``, ``auq.conformal``, ``auq.plotting``,
``auq.heads.PyroHead``) are imported on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

from auq import data, heads, metrics, objectives, uncertainty
from auq.data import PreferenceDataError, PreferenceDataset, load_builtin_preferences, symmetrize
from auq.models import UQ_METHODS, RewardModel, RewardModelConfig
from auq.types import PreferencePrediction, RewardPrediction
from auq.utils.metadata import package_version

__version__ = package_version()

#: attribute → module, imported on first access (scikit-learn / matplotlib load only when used)
_LAZY_MODULES = {
    "calibration": "auq.calibration",
    "conformal": "auq.calibration.conformal",
    "plotting": "auq.plotting",
    "members": "auq.members",
    "scoring": "auq.scoring",
    "models": "auq.models",
    "testbed": "auq.testbed",
    "training": "auq.training",
}

__all__ = [
    "UQ_METHODS",
    "PreferenceDataError",
    "PreferenceDataset",
    "PreferencePrediction",
    "RewardModel",
    "RewardModelConfig",
    "RewardPrediction",
    "__version__",
    "calibration",
    "conformal",
    "data",
    "heads",
    "load_builtin_preferences",
    "metrics",
    "objectives",
    "plotting",
    "symmetrize",
    "testbed",
    "training",
    "uncertainty",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        module = importlib.import_module(_LAZY_MODULES[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module 'auq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_MODULES})
