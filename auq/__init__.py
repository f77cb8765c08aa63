"""auq: alignment uncertainty quantification.

Reward models that say how sure they are, calibration that makes that statement
honest, and preference optimisation that uses it.
"""

from auq import heads
from auq.data import PreferenceDataError, PreferenceDataset
from auq.reward_model import RewardModel, RewardModelConfig
from auq.types import PreferencePrediction, RewardPrediction

__version__ = "0.1.0"

__all__ = [
    "PreferenceDataError",
    "PreferenceDataset",
    "PreferencePrediction",
    "RewardModel",
    "RewardModelConfig",
    "RewardPrediction",
    "__version__",
    "heads",
]
