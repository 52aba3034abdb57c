"""LossTuning-v0: an agent adapts a classifier's loss while it trains."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from lossgym.actions import ActionMapping, parse_parameters
from lossgym.envs.core import EpisodeBatch, TaskSource, as_task
from lossgym.tasks import TaskDistribution, TaskSpec


def _build(num_envs: int, tasks: TaskSpec | TaskDistribution | None, split: str,
           action_params: str | Sequence[str], action_mode: str, max_step: float, metric: str,
           reward_baseline: str, divergence_penalty: float, device: str | torch.device,
           eval_chunk: int, render_mode: str | None) -> tuple[TaskSource, EpisodeBatch]:
    """The task source and episode logic shared by the single and the vector env."""
    if render_mode not in (None, "ansi"):
        raise ValueError(f"render_mode={render_mode!r} is not supported; use None or 'ansi'")
    mapping = ActionMapping(parse_parameters(action_params), action_mode, max_step)
    batch = EpisodeBatch(num_envs, mapping, metric, reward_baseline, divergence_penalty, device,
                         eval_chunk)
    return TaskSource(tasks, split), batch


def _spaces(batch: EpisodeBatch) -> tuple[spaces.Box, spaces.Box]:
    low, high = batch.features.bounds()
    obs = spaces.Box(np.array(low, dtype=np.float32), np.array(high, dtype=np.float32),
                     dtype=np.float32)
    act = spaces.Box(-1.0, 1.0, (batch.mapping.dim,), dtype=np.float32)
    return obs, act


class LossTuningEnv(gym.Env):
    """
    ## Description

    One episode is one training run of an inner classifier on one task (dataset × imbalance
    ratio × label noise × architecture × optimiser × seed). At each step the agent sets the
    parameters of the training loss (:func:`lossgym.losses.parametric_loss`), the classifier
    trains ``minibatches_per_step`` minibatches with it, and the agent observes the training
    dynamics and is rewarded by the change in a validation metric. Tasks are drawn from a
    :class:`~lossgym.tasks.TaskDistribution`, so one policy meets many training problems.

    ## Action Space

    ``Box(-1, 1, (d,), float32)``, one dimension per controlled parameter (γ and α by
    default), mapped by :class:`lossgym.actions.ActionMapping`:

    | name              | range    | meaning                                    |
    |-------------------|----------|--------------------------------------------|
    | `gamma`           | [0, 5]   | focal exponent γ                           |
    | `alpha`           | [0, 1]   | class-balance strength, w_c ∝ n_c^(−α)     |
    | `tau`             | [0, 2]   | logit-adjustment τ                         |
    | `label_smoothing` | [0, 0.3] | label smoothing                            |
    | `poly_epsilon`    | [−1, 2]  | Poly-1 ε                                   |
    | `gate`            | [−5, 5]  | gradient-gate strength                     |
    | `margin`          | [0, 1]   | LDAM margin of the rarest class            |
    | `scale`           | [1, 30]  | logit scale s                              |

    ``action_mode="absolute"`` sets the parameters (low + (a + 1)/2 · (high − low));
    ``"delta"`` moves them by at most ``max_step`` of their range per step. Values outside
    [−1, 1] are clipped; NaN, ±inf or a wrong shape raise ``ValueError`` and change nothing.

    ## Observation Space

    ``Box(low, high, (11 + 2d,), float32)``; every feature is independent of the dataset and
    is clipped into its bounds:

    | # | feature                | bounds   |
    |---|------------------------|----------|
    | 0 | progress               | [0, 1]   |
    | 1 | log train loss (CE)    | [−14, 5] |
    | 2 | log validation NLL     | [−14, 5] |
    | 3 | validation accuracy    | [0, 1]   |
    | 4 | balanced accuracy      | [0, 1]   |
    | 5 | worst-class recall     | [0, 1]   |
    | 6 | macro-F1               | [0, 1]   |
    | 7 | ECE (15 bins)          | [0, 1]   |
    | 8 | log gradient norm      | [−14, 8] |
    | 9 | gradient-norm CV       | [0, 10]  |
    |10 | log imbalance / ln 1000| [0, 2]   |
    |11…| parameters in [−1, 1]  | [−1, 1]  |
    |  …| their last change      | [−2, 2]  |

    (:mod:`lossgym.features` defines them; exported losses use the same code.)

    ## Rewards

    The change of the validation ``metric`` ("balanced_accuracy" by default, or
    "macro_f1", "accuracy", "neg_ece") since the previous step, so an episode's return is
    the final value minus the initial one. With ``reward_baseline="paired"`` a plain
    cross-entropy twin (same data, initialisation and data order) trains beside the agent's
    classifier and the reward is the change of (metric − twin's metric), which cancels most of
    the seed noise. The test split is never read for rewards; the final step's ``info["test"]``
    reports it.

    ## Starting State

    A fresh classifier (initialised from the task seed) and neutral loss parameters (plain
    cross-entropy). The first observation is computed from its validation predictions.

    ## Episode End

    The episode terminates when the task's training budget is spent (``horizon`` steps) or when
    the inner training diverges (a non-finite loss or gradient): then the reward is
    ``-divergence_penalty`` and ``info["diverged"]`` is True.

    ## Arguments

    ```python
    gym.make("LossTuning-v0", tasks=None, split="train", action_params=("gamma", "alpha"),
             action_mode="absolute", max_step=0.1, metric="balanced_accuracy",
             reward_baseline="none", divergence_penalty=1.0, device="auto", eval_chunk=1024,
             render_mode=None)
    ```

    * `tasks`: a fixed :class:`TaskSpec` (a new inner seed each episode) or a
      :class:`TaskDistribution` (default: ``TaskDistribution.default()``).
    * `split`: the distribution split to draw from ("train", "held_out", "held_out_id",
      "held_out_ood").
    * `reset(seed=..., options={"task": TaskSpec | dict | dataset name})` pins a task.
    * `render_mode="ansi"` makes ``render()`` return a one-line status.

    ## Vectorized environment

    ``gym.make_vec("LossTuning-v0", num_envs=N)`` gives :class:`LossTuningVectorEnv`: one
    population of N classifiers trained as one batched torch program, with same-step
    autoreset. Its members share the dataset and architecture of their first task; later draws
    are conditioned on them. Member i with seed s + i matches a single env with seed s + i.

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        tasks: TaskSpec | TaskDistribution | None = None,
        split: str = "train",
        action_params: str | Sequence[str] = ("gamma", "alpha"),
        action_mode: str = "absolute",
        max_step: float = 0.1,
        metric: str = "balanced_accuracy",
        reward_baseline: str = "none",
        divergence_penalty: float = 1.0,
        device: str | torch.device = "auto",
        eval_chunk: int = 1024,
        render_mode: str | None = None,
    ):
        self.source, self.batch = _build(1, tasks, split, action_params, action_mode, max_step,
                                         metric, reward_baseline, divergence_penalty, device,
                                         eval_chunk, render_mode)
        self.render_mode = render_mode
        self.observation_space, self.action_space = _spaces(self.batch)

    @property
    def task(self) -> TaskSpec | None:
        """The current episode's task."""
        return self.batch.tasks[0]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        if "task" in options:
            task = as_task(options.pop("task"))
        else:
            task = self.source.draw(self.np_random)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; known: ['task']")
        obs = self.batch.reset([0], [task])[0]
        return obs, {"task": task.to_dict()}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.batch.done[0]:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        actions = self.batch.check_actions(action)
        obs, rewards, terminated, infos = self.batch.step(actions)
        return obs[0], float(rewards[0]), bool(terminated[0]), False, infos[0]

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self.batch.status(0)
        return None


class LossTuningVectorEnv(VectorEnv):
    """N LossTuning episodes on one batched population (see :class:`LossTuningEnv`).

    Autoreset is same-step: when member i's episode ends, the returned observation is the
    first of its next episode, and ``infos["final_obs"][i]`` / ``infos["final_info"][i]`` hold
    the last ones. ``reset(seed=s)`` seeds member i with s + i; ``options`` may hold
    ``"task"`` (one task or a list of N) and ``"reset_mask"`` (reset only some members).
    ``max_episode_steps`` (set by ``gym.make_vec`` from the registration) truncates like
    gymnasium's ``TimeLimit``.
    """

    metadata = {"render_modes": ["ansi"], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        tasks: TaskSpec | TaskDistribution | None = None,
        split: str = "train",
        action_params: str | Sequence[str] = ("gamma", "alpha"),
        action_mode: str = "absolute",
        max_step: float = 0.1,
        metric: str = "balanced_accuracy",
        reward_baseline: str = "none",
        divergence_penalty: float = 1.0,
        device: str | torch.device = "auto",
        eval_chunk: int = 1024,
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
    ):
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r} must be a positive integer")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps={max_episode_steps} must be >= 1 or None")
        self.source, self.batch = _build(num_envs, tasks, split, action_params, action_mode,
                                         max_step, metric, reward_baseline, divergence_penalty,
                                         device, eval_chunk, render_mode)
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self.single_observation_space, self.single_action_space = _spaces(self.batch)
        self.observation_space = spaces.Box(
            np.tile(self.single_observation_space.low, (num_envs, 1)),
            np.tile(self.single_observation_space.high, (num_envs, 1)),
            dtype=np.float32,
        )
        self.action_space = spaces.Box(-1.0, 1.0, (num_envs, self.batch.mapping.dim),
                                       dtype=np.float32)
        self._rngs = [np.random.default_rng() for _ in range(num_envs)]

    def _draw_tasks(self, ids: Sequence[int]) -> list[TaskSpec]:
        """Tasks for the members ``ids``, all able to share one population.

        When every member restarts, the first draw is free (so successive generations of the
        population cover the distribution's datasets and architectures) and the others are
        conditioned on it; otherwise all are conditioned on the running population.
        """
        pop = self.batch.population
        like = pop.reference if pop is not None and len(ids) < self.num_envs else None
        tasks = []
        for i in ids:
            tasks.append(self.source.draw(self._rngs[i], like=like))
            like = like or tasks[0]
        return tasks

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:
            seeds = ([seed + i for i in range(self.num_envs)] if isinstance(seed, int)
                     else list(seed))
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} envs")
            for i, s in enumerate(seeds):
                if s is not None:
                    self._rngs[i] = np.random.default_rng(s)
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        ids = list(range(self.num_envs)) if mask is None else list(np.flatnonzero(mask))
        task_opt = options.pop("task", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; known: ['task', "
                             "'reset_mask']")
        if len(ids) < self.num_envs and self.batch.population is None:
            raise ValueError("a partial reset (options['reset_mask']) needs a full reset first")
        if task_opt is None:
            tasks = self._draw_tasks(ids)
        elif isinstance(task_opt, list | tuple):
            if len(task_opt) != len(ids):
                raise ValueError(f"options['task'] has {len(task_opt)} tasks for {len(ids)} envs")
            tasks = [as_task(t) for t in task_opt]
        else:
            tasks = [as_task(task_opt)] * len(ids)
        obs_ids = self.batch.reset(ids, tasks)
        obs = np.zeros(self.observation_space.shape, dtype=np.float32)
        if len(ids) < self.num_envs:
            obs[:] = self._last_obs
        obs[ids] = obs_ids
        self._last_obs = obs.copy()
        infos: dict[str, Any] = {}
        for i, task in zip(ids, tasks):
            infos = self._add_info(infos, {"task": task.to_dict()}, i)
        return obs, infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                          dict[str, Any]]:
        acts = self.batch.check_actions(actions)
        obs, rewards, terminated, step_infos = self.batch.step(acts)
        # Like gymnasium's TimeLimit: truncated whenever the limit is reached.
        limit = self.max_episode_steps
        truncated = np.array([limit is not None and s >= limit for s in self.batch.steps])
        for i in np.flatnonzero(truncated & ~terminated):
            step_infos[i]["test"] = self.batch.test_metrics(int(i))
        infos: dict[str, Any] = {}
        done = list(np.flatnonzero(terminated | truncated))
        if done:
            tasks = self._draw_tasks(done)
            fresh = self.batch.reset(done, tasks)
            for k, i in enumerate(done):
                step_infos[i] = {"final_obs": obs[i].copy(), "final_info": step_infos[i],
                                 "task": tasks[k].to_dict()}
                obs[i] = fresh[k]
        for i, info in enumerate(step_infos):
            infos = self._add_info(infos, info, i)
        self._last_obs = obs.copy()
        return obs, rewards, terminated, truncated, infos

    def render(self) -> tuple[str, ...] | None:
        if self.render_mode == "ansi":
            return tuple(self.batch.status(i) for i in range(self.num_envs))
        return None
