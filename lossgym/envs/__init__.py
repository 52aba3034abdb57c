"""Gymnasium environments of lossgym."""

from lossgym.envs.config import LossTuningConfig
from lossgym.envs.loss_tuning import LossTuningEnv, LossTuningVectorEnv

__all__ = ["LossTuningConfig", "LossTuningEnv", "LossTuningVectorEnv"]
