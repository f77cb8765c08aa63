"""The reward model: a Hugging Face backbone plus an uncertainty layer, its config and training."""

from auq.models.config import UQ_METHODS, RewardModelConfig
from auq.models.reward_model import RewardModel

__all__ = ["UQ_METHODS", "RewardModel", "RewardModelConfig"]
