"""LossTuning-v0 for RLlib: an ``env_config`` creator that works on remote workers.

RLlib builds environments inside its env-runner processes, where ``gym.make("LossTuning-v0")``
may fail: the gymnasium registry is filled by ``import lossgym``, which a fresh worker has not
run. So the env is registered with Ray's own registry (:func:`ray.tune.registry.register_env`)
under :data:`ENV_NAME`, and the creator imports what it needs and rebuilds the task from the
JSON-able ``env_config``.

    from agents.rllib_env import ENV_NAME, register, env_config
    register()
    config = PPOConfig().environment(ENV_NAME, env_config=env_config(task))

``scripts/rllib_ppo.py`` runs a few PPO iterations on it. Needs ``pip install 'lossgym[ray]'``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from lossgym.tasks import TaskDistribution, TaskSpec

#: The name the creator is registered under in Ray's registry.
ENV_NAME = "lossgym-LossTuning-v0"


def env_config(task: TaskSpec | None = None, **env_kwargs: Any) -> dict[str, Any]:
    """A JSON-able ``env_config``: ``task`` (a :class:`TaskSpec`, as a dict; None draws from
    ``TaskDistribution.default()``) plus keyword arguments of
    :class:`~lossgym.envs.loss_tuning.LossTuningEnv` (``split``, ``action_params``, ...)."""
    config = dict(env_kwargs)
    if task is not None:
        config["task"] = task.to_dict()
    return config


def env_creator(config: dict[str, Any] | None = None) -> gym.Env:
    """A :class:`~lossgym.envs.loss_tuning.LossTuningEnv` from an ``env_config``.

    Args:
        config: ``task`` (a TaskSpec dict; absent: the default distribution) and any other
            keyword arguments of the env. RLlib passes an ``EnvContext`` (a dict subclass that
            also carries the worker index), which is read like a dict.
    """
    from lossgym.envs.loss_tuning import LossTuningEnv

    kwargs = dict(config or {})
    task = kwargs.pop("task", None)
    tasks = TaskSpec.from_dict(task) if task is not None else TaskDistribution.default()
    kwargs.setdefault("device", "cpu")
    # RLlib checks the env's spaces itself and wraps nothing: the env's own TimeLimit is the
    # task horizon, after which it terminates.
    return LossTuningEnv(tasks=tasks, **kwargs)


def register(name: str = ENV_NAME) -> str:
    """Register :func:`env_creator` with Ray's registry under ``name``; returns the name."""
    try:
        from ray.tune.registry import register_env
    except ImportError as error:
        raise ImportError("the RLlib env needs Ray: pip install 'lossgym[ray]'") from error
    register_env(name, env_creator)
    return name
