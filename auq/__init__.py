"""auq: alignment uncertainty quantification.

Reward models that say how sure they are, calibration that makes that statement
honest, and preference optimisation that uses it.

>>> import auq
>>> ds = auq.PreferenceDataset.from_records(rows)                        # doctest: +SKIP
>>> rm = auq.RewardModel.from_backbone(path, uq="heads", n_members=8)   # doctest: +SKIP
>>> rm.fit(ds).predict(ds).margin_samples.shape                         # doctest: +SKIP
"""

from auq import calibration, conformal, heads, metrics, uncertainty
from auq.builtin import load_builtin_preferences
from auq.data import PreferenceDataError, PreferenceDataset, symmetrize
from auq.reward_model import UQ_METHODS, RewardModel, RewardModelConfig
from auq.types import PreferencePrediction, RewardPrediction

__version__ = "0.1.0"

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
    "heads",
    "load_builtin_preferences",
    "metrics",
    "symmetrize",
    "uncertainty",
]
