"""lossgym: learn how to adapt a classifier's loss while it trains.

The public API: the loss library (:mod:`lossgym.losses`), tasks and data
(:class:`TaskSpec`, :class:`TaskDistribution`, :func:`from_arrays`), the batched engine
(:class:`Population`) and the built-in loss methods (:mod:`lossgym.methods`).
"""

from lossgym.data import Dataset, from_arrays, load_dataset, register_dataset
from lossgym.population import MinibatchContext, Population, TrainStats
from lossgym.tasks import TaskDistribution, TaskSpec

__all__ = [
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
