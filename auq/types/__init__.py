"""The one currency every uncertainty method returns.

``RewardPrediction`` describes N single responses, ``PreferencePrediction`` B
pairs. Samples come first on the sample axis — shape ``(S, N)`` — one row per
ensemble member, posterior sample or dropout pass. Closed-form methods (Laplace)
fill the moments exactly and draw samples once, when first asked, through a
sampler object (:class:`LinearGaussianSampler`).

Everything downstream (calibration, metrics, objectives, trainers) reads these
types and never reaches into a model.
"""

from auq.types._common import DEFAULT_N_SAMPLES, SAMPLE_SEED
from auq.types.preference import (
    DEFAULT_UNCERTAINTY_SCORE,
    UNCERTAINTY_SCORES,
    PreferencePrediction,
)
from auq.types.reward import RewardPrediction
from auq.types.samplers import (
    AffineSampler,
    LinearGaussianSampler,
    Sampler,
    move_sampler,
    select_sampler,
)
from auq.types.truncation import TruncationStats, TruncationWarning

__all__ = [
    "DEFAULT_N_SAMPLES",
    "DEFAULT_UNCERTAINTY_SCORE",
    "SAMPLE_SEED",
    "UNCERTAINTY_SCORES",
    "AffineSampler",
    "LinearGaussianSampler",
    "PreferencePrediction",
    "RewardPrediction",
    "Sampler",
    "TruncationStats",
    "TruncationWarning",
    "move_sampler",
    "select_sampler",
]
