"""Gymnasium environments of lossgym."""

from lossgym.envs.loss_tuning import LossTuningEnv, LossTuningVectorEnv

__all__ = ["LossTuningEnv", "LossTuningVectorEnv"]
