"""lossgym: learn how to adapt a classifier's loss while it trains.

The public API: the loss library (:mod:`lossgym.losses`), tasks and data
(:class:`TaskSpec`, :class:`TaskDistribution`, :func:`from_arrays`), the batched engine
(:class:`Population`), the built-in loss methods (:mod:`lossgym.methods`) and exported losses
for plain PyTorch training (:class:`AdaptiveLoss`, :mod:`lossgym.schedules`).
"""

from lossgym.data import Dataset, from_arrays, load_dataset, register_dataset
from lossgym.export import AdaptiveLoss
from lossgym.population import MinibatchContext, Population, TrainStats
from lossgym.tasks import TaskDistribution, TaskSpec

__all__ = [
    "AdaptiveLoss",
    "Dataset",
    "MinibatchContext",
    "Population",
    "TaskDistribution",
    "TaskSpec",
    "TrainStats",
    "from_arrays",
    "load_dataset",
    "register_dataset",
]
__version__ = "0.1.0"


def _register() -> None:
    try:
        from gymnasium.envs.registration import register, registry
    except ImportError:  # exported losses run without gymnasium; only the environment needs it
        return

    if "LossTuning-v0" not in registry:
        # No max_episode_steps: an episode ends by itself after its task's horizon, which
        # differs between tasks (a TimeLimit at the default horizon would cut longer ones).
        register(
            id="LossTuning-v0",
            entry_point="lossgym.envs.loss_tuning:LossTuningEnv",
            vector_entry_point="lossgym.envs.loss_tuning:LossTuningVectorEnv",
        )


_register()
