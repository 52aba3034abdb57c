"""A stable-baselines3 ``VecEnv`` over one batched LossTuning population.

stable-baselines3 does not accept Gymnasium ``VectorEnv``s, and wrapping N single
:class:`~lossgym.envs.LossTuningEnv`s in a ``DummyVecEnv`` trains N separate inner models one
after the other. :class:`LossTuningSB3VecEnv` instead drives one
:class:`~lossgym.envs.LossTuningVectorEnv`, which trains all N inner classifiers as one batched
torch program, and translates its Gymnasium API (same-step autoreset, dict-of-arrays infos) into
SB3's conventions. :func:`make_vec_env` builds it in one call, monitored like SB3's own
``make_vec_env``:

>>> from stable_baselines3 import PPO
>>> from agents import make_vec_env
>>> from lossgym import TaskSpec
>>> task = TaskSpec(imbalance_ratio=20, n_max=300, width=16, minibatches_per_step=1, horizon=4)
>>> venv = make_vec_env(4, seed=0, tasks=task)
>>> model = PPO("MlpPolicy", venv, n_steps=8, batch_size=32, seed=0).learn(64)
>>> model.num_timesteps
64

:func:`single_env_fn` builds picklable factories of single envs (for SB3's ``DummyVecEnv`` or
``SubprocVecEnv``), e.g. to compare against or to spread envs over processes.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
    VecEnvWrapper,
)

from lossgym.envs.loss_tuning import LossTuningEnv, LossTuningVectorEnv

__all__ = ["EPISODE_KEYWORDS", "Batched", "EpisodeSummary", "LossTuningSB3VecEnv", "make_vec_env",
           "single_env_fn", "unbatch_infos"]

#: Attributes whose per-env value differs from the vector env's own attribute of that name.
_MEMBER_ATTRS = ("observation_space", "action_space", "metadata", "task")
#: Attributes of the vector env that describe the whole batch, not one env.
_BATCH_ATTRS = ("unwrapped", "num_envs", "single_observation_space", "single_action_space")
#: Methods a single env offers through :meth:`LossTuningSB3VecEnv.env_method`.
_MEMBER_METHODS = ("render", "get_wrapper_attr", "has_wrapper_attr")
#: Keys of the per-env reset options (SB3's ``set_options``).
_RESET_OPTIONS = ("task",)


def _python(value: Any) -> Any:
    """A numpy scalar as the Python scalar a single env would have put in its info."""
    return value.item() if isinstance(value, np.generic) else value


def unbatch_infos(infos: dict[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """Gymnasium's vector infos (a dict of arrays with ``_key`` masks, nested for dict values)
    as one dict per env, holding exactly the keys that env reported."""
    out: list[dict[str, Any]] = [{} for _ in range(num_envs)]
    for key, value in infos.items():
        if key.startswith("_") and key[1:] in infos:
            continue  # a mask
        mask = infos.get(f"_{key}")
        envs = range(num_envs) if mask is None else np.flatnonzero(mask)
        if isinstance(value, dict):
            per_env = unbatch_infos(value, num_envs)
            for i in envs:
                out[i][key] = per_env[i]
        else:
            for i in envs:
                out[i][key] = _python(value[i])
    return out


def _build_single_env(num_threads: int | None, env_kwargs: dict[str, Any]) -> LossTuningEnv:
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    return LossTuningEnv(**env_kwargs)


def single_env_fn(num_threads: int | None = 1, **env_kwargs: Any) -> Callable[[], LossTuningEnv]:
    """A picklable factory of one :class:`LossTuningEnv` (``LossTuningEnv(**env_kwargs)``).

    With ``num_threads`` set, the factory first calls ``torch.set_num_threads(num_threads)``
    in the process that builds the env: one thread per worker is what a ``SubprocVecEnv``
    wants (several workers with several intra-op threads each oversubscribe the cores).
    """
    return functools.partial(_build_single_env, num_threads, dict(env_kwargs))


class LossTuningSB3VecEnv(VecEnv):
    """stable-baselines3 ``VecEnv`` of N LossTuning episodes on one batched population.

    Args:
        vector_env: an existing :class:`LossTuningVectorEnv` to drive (its ``num_envs`` is
            used); or None to build ``LossTuningVectorEnv(num_envs, **env_kwargs)``.
        num_envs: number of envs when building one (default 1).
        env_kwargs: the :class:`LossTuningVectorEnv` arguments (``tasks``, ``metric``, ...).

    SB3 conventions, as in its ``DummyVecEnv`` of single envs:

    * :meth:`reset` returns the observations only and fills ``reset_infos`` (one dict per env,
      ``{"task": ...}``). Seeds queued by :meth:`seed` (env i gets seed + i, as single env i of
      a ``DummyVecEnv`` would) and options queued by :meth:`set_options` (only ``"task"``: a
      :class:`~lossgym.tasks.TaskSpec`, a dict or a dataset name) apply to that reset only.
    * :meth:`step_wait` returns float32 observations ``[N, D]``, float32 rewards, bool dones
      and one info dict per env: the single env's step info (``params``, ``val_metric``,
      ``train_loss``, ``diverged``, ``step``, and at the episode's end ``task`` and ``test``)
      plus ``"TimeLimit.truncated"`` (always set; True only for truncations, which this env
      never makes). For a done env, ``info["terminal_observation"]`` is the episode's last
      observation, the returned observation is the first one of its next episode, and
      ``reset_infos[i]`` that episode's reset info.
    * ``get_attr``/``env_method``/``set_attr`` act on per-env views of the population (see
      :meth:`get_attr`); no env is wrapped in a ``gymnasium.Wrapper``.
    * With ``render_mode="ansi"``, :meth:`render` returns one status line per env; with
      ``"rgb_array"``, :meth:`get_images` one picture of its episode so far per env.
    """

    def __init__(
        self,
        vector_env: LossTuningVectorEnv | None = None,
        *,
        num_envs: int | None = None,
        **env_kwargs: Any,
    ) -> None:
        if vector_env is None:
            vector_env = LossTuningVectorEnv(num_envs=1 if num_envs is None else num_envs,
                                             **env_kwargs)
        elif num_envs is not None or env_kwargs:
            raise ValueError("pass either an existing LossTuningVectorEnv or the arguments to "
                             "build one (num_envs=..., tasks=..., ...), not both")
        if not isinstance(vector_env, LossTuningVectorEnv):
            raise TypeError(f"vector_env must be a LossTuningVectorEnv, got "
                            f"{type(vector_env).__name__}")
        if vector_env.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
            raise ValueError("the vector env must autoreset in the same step")
        self.vector_env = vector_env
        self._actions: np.ndarray | None = None
        self._closed = False
        super().__init__(vector_env.num_envs, vector_env.single_observation_space,
                         vector_env.single_action_space)
        self.metadata = dict(LossTuningEnv.metadata)

    # ----------------------------------------------------------------- reset
    def reset(self) -> VecEnvObs:
        """Reset every env (with the queued seeds and options); returns observations."""
        n = self.num_envs
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        pinned = [self._task_option(i) for i in range(n)]
        venv = self.vector_env
        if all(t is None for t in pinned):
            obs, infos = venv.reset(seed=seeds)
            reset_infos = unbatch_infos(infos, n)
        elif all(t is not None for t in pinned):
            obs, infos = venv.reset(seed=seeds, options={"task": pinned})
            reset_infos = unbatch_infos(infos, n)
        else:
            # Some envs get a task, the others draw one. The vector env draws for all or takes
            # all, so: every env is reset on a given task (a placeholder for the others; this
            # also seeds every env), then the others are reset again and draw theirs. Each
            # env's generator ends where a single env's would.
            fill = next(t for t in pinned if t is not None)
            _, infos = venv.reset(seed=seeds,
                                  options={"task": [fill if t is None else t for t in pinned]})
            pinned_infos = unbatch_infos(infos, n)
            obs, infos = venv.reset(options={"reset_mask": [t is None for t in pinned]})
            drawn_infos = unbatch_infos(infos, n)
            reset_infos = [pinned_infos[i] if pinned[i] is not None else drawn_infos[i]
                           for i in range(n)]
        self.reset_infos = reset_infos
        self._reset_seeds()
        self._reset_options()
        return np.asarray(obs, dtype=np.float32)

    def _task_option(self, i: int) -> Any:
        options = self._options[i] or {}
        unknown = sorted(set(options) - set(_RESET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown reset options {unknown} for env {i}; known: "
                             f"{list(_RESET_OPTIONS)}")
        return options.get("task")

    # ------------------------------------------------------------------ step
    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async()")
        actions, self._actions = self._actions, None
        obs, rewards, terminated, truncated, infos = self.vector_env.step(actions)
        dones = np.logical_or(terminated, truncated)
        per_env = unbatch_infos(infos, self.num_envs)
        out: list[dict[str, Any]] = []
        for i, info in enumerate(per_env):
            if dones[i]:
                final_obs = info.pop("final_obs")
                step_info = dict(info.pop("final_info", {}))
                step_info["terminal_observation"] = final_obs
                self.reset_infos[i] = info  # what is left: the new episode's reset info
                info = step_info
            info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            out.append(info)
        return (np.asarray(obs, dtype=np.float32), np.asarray(rewards, dtype=np.float32),
                dones.astype(bool), out)

    def close(self) -> None:
        if not self._closed:
            self.vector_env.close()
            self._closed = True

    # ---------------------------------------------------------- per-env views
    def _member_attr(self, name: str, i: int) -> Any:
        venv = self.vector_env
        if name == "observation_space":
            return venv.single_observation_space
        if name == "action_space":
            return venv.single_action_space
        if name == "metadata":
            return dict(LossTuningEnv.metadata)
        if name == "task":
            return venv.batch.tasks[i]
        if not name.startswith("_") and name not in _BATCH_ATTRS and hasattr(venv, name):
            value = getattr(venv, name)
            if not callable(value):
                return value  # shared by every env: render_mode, spec, source, batch, ...
        raise AttributeError(
            f"{type(self).__name__} has no per-env attribute {name!r}: its envs are members of "
            f"one population; per-env attributes are {list(_MEMBER_ATTRS)} and the "
            f"non-callable public attributes of LossTuningVectorEnv (shared by all envs)"
        )

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The attribute of each env: ``observation_space``/``action_space`` (the single
        spaces), ``metadata`` (a single env's), ``task`` (each env's current task), or any
        other non-callable public attribute of the vector env (``render_mode``, ``spec``, ...),
        the same for every env. Unknown names raise ``AttributeError``."""
        return [self._member_attr(attr_name, i) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set a shared attribute of the vector env; only for all envs at once."""
        ids = list(self._get_indices(indices))
        if attr_name in _MEMBER_ATTRS or attr_name.startswith("_"):
            raise AttributeError(f"{attr_name!r} cannot be set through set_attr")
        if sorted(ids) != list(range(self.num_envs)):
            raise ValueError(f"set_attr({attr_name!r}) sets an attribute the envs share: pass "
                             f"indices=None (all envs), not {ids}")
        setattr(self.vector_env, attr_name, value)
        if attr_name == "render_mode":
            self.render_mode = value

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Call a single-env method for each env: ``render`` (the env's status line with
        ``render_mode="ansi"``, else None), ``get_wrapper_attr(name)`` (see :meth:`get_attr`) or
        ``has_wrapper_attr(name)``. Other names raise ``AttributeError``."""
        ids = list(self._get_indices(indices))
        if method_name == "render":
            if method_args or method_kwargs:
                raise TypeError("render() takes no arguments")
            return [self._status(i) for i in ids]
        if method_name == "get_wrapper_attr":
            return [self._member_attr(*method_args, i, **method_kwargs) for i in ids]
        if method_name == "has_wrapper_attr":
            out = []
            for i in ids:
                try:
                    self._member_attr(*method_args, i, **method_kwargs)
                    out.append(True)
                except AttributeError:
                    out.append(False)
            return out
        raise AttributeError(f"{type(self).__name__} cannot call {method_name!r} per env; "
                             f"supported: {list(_MEMBER_METHODS)}")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
                       ) -> list[bool]:
        """No env is wrapped: the envs are members of one population."""
        return [False for _ in self._get_indices(indices)]

    # ---------------------------------------------------------------- render
    def _status(self, i: int) -> str | np.ndarray | None:
        if self.vector_env.render_mode == "ansi":
            return self.vector_env.batch.status(i)
        if self.vector_env.render_mode == "rgb_array":
            return self.vector_env._frame(i)
        return None

    def get_images(self) -> Sequence[np.ndarray | None]:
        """With ``render_mode="rgb_array"``: each env's picture of its episode so far."""
        if self.render_mode != "rgb_array":
            warnings.warn(f"The render mode is {self.render_mode}, but this method assumes it "
                          "is `rgb_array` to obtain images.", stacklevel=2)
            return [None for _ in range(self.num_envs)]
        return list(self.vector_env.render())

    def render(self, mode: str | None = None) -> Any:
        """With ``render_mode="ansi"``: the status lines of all envs, one per line."""
        if self.render_mode == "ansi" and mode in (None, "ansi"):
            return "\n".join(self.vector_env.batch.status(i) for i in range(self.num_envs))
        return super().render(mode=mode)

    @property
    def tasks(self) -> list[Any]:
        """The current task of each env."""
        return list(self.vector_env.batch.tasks)


#: The per-episode values :class:`EpisodeSummary` adds to a finished episode's info, flat, so
#: that ``VecMonitor(info_keywords=EPISODE_KEYWORDS)`` writes them as monitor.csv columns.
EPISODE_KEYWORDS = ("val_metric", "test_balanced_accuracy", "twin_test_balanced_accuracy",
                    "diverged", "task_dataset", "task_imbalance_ratio", "task_seed")


def episode_summary(info: dict[str, Any]) -> dict[str, Any]:
    """The :data:`EPISODE_KEYWORDS` of a finished episode's info (NaN for the twin's test
    accuracy without ``reward_baseline="paired"``)."""
    test, task = info.get("test", {}), info.get("task", {})
    return {
        "val_metric": info.get("val_metric", float("nan")),
        "test_balanced_accuracy": test.get("balanced_accuracy", float("nan")),
        "twin_test_balanced_accuracy": test.get("reference_balanced_accuracy", float("nan")),
        "diverged": bool(info.get("diverged", False)),
        "task_dataset": task.get("dataset", ""),
        "task_imbalance_ratio": task.get("imbalance_ratio", float("nan")),
        "task_seed": task.get("seed", -1),
    }


class EpisodeSummary(VecEnvWrapper):
    """Adds :func:`episode_summary` to the info of every finished episode."""

    def reset(self) -> VecEnvObs:
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        for i in np.flatnonzero(dones):
            infos[i].update(episode_summary(infos[i]))
        return obs, rewards, dones, infos


def make_vec_env(n_envs: int = 1, *, seed: int | None = None, monitor_dir: str | None = None,
                 **env_kwargs: Any) -> VecEnv:
    """The batched SB3 vector env of ``n_envs`` LossTuning-v0 episodes in one call.

    ``LossTuningSB3VecEnv(num_envs=n_envs, **env_kwargs)`` (``env_kwargs``: the fields of
    :class:`~lossgym.envs.config.LossTuningConfig`), seeded with ``seed`` (env i gets
    seed + i) and wrapped in :class:`EpisodeSummary` and SB3's ``VecMonitor`` (writing
    ``monitor_dir/monitor.csv`` when given, with the :data:`EPISODE_KEYWORDS` columns), like
    ``stable_baselines3.common.env_util.make_vec_env`` of the single env but trained as one
    population.
    """
    venv = LossTuningSB3VecEnv(num_envs=n_envs, **env_kwargs)
    if seed is not None:
        venv.seed(seed)
    filename = None if monitor_dir is None else str(Path(monitor_dir) / "monitor.csv")
    return VecMonitor(EpisodeSummary(venv), filename=filename, info_keywords=EPISODE_KEYWORDS)


class Batched(VecEnvWrapper):
    """rl-zoo's ``vec_env_wrapper`` for LossTuning-v0: replaces the ``DummyVecEnv`` (or
    ``SubprocVecEnv``) of N single envs that rl-zoo builds by one batched population on the
    same configuration (the ``env_kwargs``) and seeds, monitored in the same folder.

    In an rl-zoo YAML: ``vec_env_wrapper: agents.vec_env.Batched`` (see
    ``agents/hyperparams/*.yml``). The single envs are closed unused; episodes go to
    ``monitor.csv`` beside their empty ``<rank>.monitor.csv`` files.
    """

    def __init__(self, venv: VecEnv):
        config = venv.get_attr("config")[0]
        seeds = list(getattr(venv, "_seeds", [None] * venv.num_envs))
        monitor_dir = None
        first = venv.envs[0] if hasattr(venv, "envs") else None
        writer = getattr(first, "results_writer", None)
        if writer is not None:
            monitor_dir = str(Path(writer.file_handler.name).parent)
        venv.close()
        adapter = LossTuningSB3VecEnv(num_envs=venv.num_envs, config=config)
        adapter._seeds = seeds
        filename = None if monitor_dir is None else str(Path(monitor_dir) / "monitor.csv")
        super().__init__(VecMonitor(EpisodeSummary(adapter), filename=filename,
                                    info_keywords=EPISODE_KEYWORDS))

    def reset(self) -> VecEnvObs:
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        return self.venv.step_wait()
