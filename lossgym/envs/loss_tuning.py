"""LossTuning-v0: an agent adapts a classifier's loss while it trains."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from lossgym import _checks as checks
from lossgym.envs.config import RENDER_MODES, LossTuningConfig
from lossgym.envs.core import EpisodeBatch, TaskSource, as_task
from lossgym.envs.render import episode_image
from lossgym.tasks import TaskSpec

#: The autoreset modes of :class:`LossTuningVectorEnv`.
AUTORESET_MODES = (AutoresetMode.SAME_STEP, AutoresetMode.NEXT_STEP)


def _spaces(batch: EpisodeBatch) -> tuple[spaces.Box, spaces.Box]:
    low, high = batch.features.bounds()
    obs = spaces.Box(np.array(low, dtype=np.float32), np.array(high, dtype=np.float32),
                     dtype=np.float32)
    act = spaces.Box(-1.0, 1.0, (batch.mapping.dim,), dtype=np.float32)
    return obs, act


def _options(options: object) -> dict[str, Any]:
    """``reset``'s ``options``: a dict (or None), copied."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"options={options!r:.80} must be a dict or None")
    return dict(options)


class _Episodes:
    """What the single and the vector env share: the configuration, the task source, the
    episode logic and each member's observations so far (for ``"rgb_array"`` frames)."""

    def _setup(self, num_envs: int, config: LossTuningConfig | None, options: dict[str, Any]
               ) -> None:
        self.config = LossTuningConfig.build(config, **options)
        self.source: TaskSource = self.config.task_source()
        self.batch: EpisodeBatch = self.config.episode_batch(num_envs)
        self.render_mode = self.config.render_mode
        self._trace: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        names = self.batch.features.names
        metric = self.config.metric
        # The frame plots the observed validation curve of the reward's metric; the soft
        # metric is not observed, so its frames plot balanced accuracy, its hard counterpart.
        observed = {"neg_ece": "ece", "soft_balanced_accuracy": "balanced_accuracy"}
        self._metric_column = names.index(f"val_{observed.get(metric, metric)}")
        self._param_columns = slice(names.index(f"param_{self.batch.mapping.parameters[0]}"),
                                    names.index(f"param_{self.batch.mapping.parameters[-1]}") + 1)

    def _frame(self, i: int) -> np.ndarray:
        """Member i's episode so far as an image (see :mod:`lossgym.envs.render`)."""
        task = self.batch.tasks[i]
        if task is None or not self._trace[i]:
            return episode_image([], [], 1)
        trace = np.stack(self._trace[i])
        return episode_image(trace[:, self._metric_column],
                             (trace[1:, self._param_columns] + 1.0) / 2.0, task.horizon)


class LossTuningEnv(_Episodes, gym.Env):
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

    | name | range | neutral | meaning |
    |---|---|---|---|
    | `gamma` | [0, 5] | 0 | focal exponent γ |
    | `alpha` | [0, 1] | 0 | class-balance strength, w_c ∝ n_c^(−α) |
    | `tau` | [0, 2] | 0 | logit-adjustment temperature τ |
    | `label_smoothing` | [0, 0.3] | 0 | label smoothing |
    | `poly_epsilon` | [-1, 2] | 0 | Poly-1 ε |
    | `gate` | [-5, 5] | 0 | gradient-gate strength |
    | `margin` | [0, 1] | 0 | LDAM margin of the rarest class (∝ n^(−1/4)) |
    | `scale` | [1, 30] | 1 | logit scale s (LDAM's s) |
    | `cb` | [0, 1] | 0 | mix of effective-number weights (β 0.9999), w = 1 − λ + λ·w_cb |

    (:data:`lossgym.params.LOSS_PARAMS` defines them; ``tests/test_params.py`` checks this
    table against it.) ``action_mode="absolute"`` sets the parameters (low + (a + 1)/2 ·
    (high − low)); ``"delta"`` moves them by at most ``max_step`` of their range per step;
    ``"residual"`` sets them to the base rule's (``base_rule``) plus at most ``max_step`` of
    their range, so that a zero action is the base rule exactly. Values outside
    [−1, 1] are clipped; NaN, ±inf, values that are not real numbers (strings, complex numbers,
    objects) or a shape other than ``(d,)`` raise ``ValueError`` and change nothing.

    ## Observation Space

    ``Box(low, high, (19 + 2d,), float32)`` (``11 + 2d`` with ``context_features=False``,
    ``23 + 2d`` with ``progress_basis=True``: four hat functions of progress at the end);
    every feature is clipped into its bounds:

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
    |  …| 8 context features     | see below|

    The context features (version 2) describe the training set-up: ln train size,
    ln classes, log10 learning rate, weight decay, log2 batch size, ln budget in epochs,
    CNN or not, log2 width. (:mod:`lossgym.features` defines them all; exported losses
    compute the same features from what the user's loop gives them.)

    ## Rewards

    The change of the validation ``metric`` ("balanced_accuracy" by default, or
    "macro_f1", "accuracy", "neg_ece", "soft_balanced_accuracy": the smooth counterpart of
    balanced accuracy, :func:`lossgym.metrics.soft_balanced_accuracy`, which costs a
    temperature fit per evaluation) since the previous step, so an episode's return is
    the final value minus the initial one. With ``reward_baseline="paired"`` a plain
    cross-entropy twin (same data, initialisation and data order) trains beside the agent's
    classifier and the reward is the change of (metric − twin's metric), which cancels most of
    the seed noise; with ``"base"`` the twin trains with the base rule, so a policy earns only
    what it adds to the base rule (a zero residual action earns exactly 0). The test split is
    never read for rewards; the final step's ``info["test"]``
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
             reward_baseline="none", base_rule=None, context_features=True,
             progress_basis=False, divergence_penalty=1.0, device="auto", eval_chunk=1024,
             render_mode=None)
    ```

    The keyword arguments are the fields of :class:`~lossgym.envs.config.LossTuningConfig`,
    which checks them (``config=LossTuningConfig(...)`` passes them all at once):

    * `tasks`: a fixed :class:`TaskSpec` (a new inner seed each episode), a
      :class:`TaskDistribution` (default: ``TaskDistribution.default()``), a TaskSpec's dict or
      a dataset name (the last two keep ``env.spec`` JSON-serialisable).
    * `split`: the distribution split to draw from ("train", "held_out", "held_out_id",
      "held_out_ood").
    * `device`: "auto" picks CUDA when available; "cuda" without a CUDA device is refused.
    * `reset(seed=..., options={"task": TaskSpec | dict | dataset name})` pins a task.
    * `render_mode="ansi"` makes ``render()`` return a one-line status, ``"rgb_array"`` a
      uint8 ``[96, 128, 3]`` image of the episode so far (the validation metric above, the
      loss parameters below, over the task's horizon).

    The registration sets no ``max_episode_steps``: every episode ends by itself after its
    task's ``horizon`` steps, whatever the horizon.

    ## Vectorized environment

    ``gym.make_vec("LossTuning-v0", num_envs=N)`` gives :class:`LossTuningVectorEnv`: one
    population of N classifiers trained as one batched torch program, with same-step
    autoreset (``autoreset_mode="NextStep"`` for wrappers that need it). Its members share the
    dataset and architecture of their first task; later draws are conditioned on them. Member
    i with seed s + i matches a single env with seed s + i.

    ## Version History

    * v0: initial version (no ``max_episode_steps`` in the registration, "rgb_array"
      rendering and next-step autoreset added since, with the same dynamics); features
      version 2 (context) by default, residual actions and the base twin added since.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4}

    def __init__(self, config: LossTuningConfig | None = None, **options: Any):
        self._setup(1, config, options)
        self.observation_space, self.action_space = _spaces(self.batch)

    @property
    def task(self) -> TaskSpec | None:
        """The current episode's task."""
        return self.batch.tasks[0]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None and not checks.is_seed(seed):
            raise ValueError(f"seed={seed!r} is invalid: must be None or an integer >= 0")
        options = _options(options)
        task = as_task(options.pop("task")) if "task" in options else None
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; known: ['task']")
        super().reset(seed=None if seed is None else int(seed))
        if task is None:
            task = self.source.draw(self.np_random)
        obs = self.batch.reset([0], [task])[0]
        self._trace[0] = [obs]
        return obs, {"task": task.to_dict()}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.batch.done[0]:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        actions = self.batch.check_actions(action)
        if np.ndim(action) != 1:
            raise ValueError(f"action has shape {np.shape(action)}; expected "
                             f"{self.action_space.shape}")
        obs, rewards, terminated, infos = self.batch.step(actions)
        self._trace[0].append(obs[0])
        return obs[0], float(rewards[0]), bool(terminated[0]), False, infos[0]

    def render(self) -> str | np.ndarray | None:
        if self.render_mode == "ansi":
            return self.batch.status(0)
        if self.render_mode == "rgb_array":
            return self._frame(0)
        return None


class LossTuningVectorEnv(_Episodes, VectorEnv):
    """N LossTuning episodes on one batched population (see :class:`LossTuningEnv`).

    Args:
        num_envs: the number of members N.
        config: a :class:`~lossgym.envs.config.LossTuningConfig`; keyword ``options`` (its
            fields) replace its values.
        max_episode_steps: truncates episodes like gymnasium's ``TimeLimit`` (None: episodes
            end after their task's horizon only).
        autoreset_mode: ``AutoresetMode.SAME_STEP`` (default; also "SameStep") or
            ``AutoresetMode.NEXT_STEP`` ("NextStep"), gymnasium's two conventions:

            * same-step: when member i's episode ends, the returned observation is the first of
              its next episode, and ``infos["final_obs"][i]`` / ``infos["final_info"][i]`` hold
              the last ones;
            * next-step: the step that ends an episode returns its last observation and info;
              the next ``step`` ignores member i's action and returns the first observation of
              its next episode (reward 0, not terminated, ``infos["task"]``). The wrappers of
              ``gymnasium.wrappers.vector`` that normalise observations need this mode.

    ``reset(seed=s)`` seeds member i with s + i (or takes one seed, or None, per member);
    ``options`` may hold ``"task"`` (one task or a list, one per reset member) and
    ``"reset_mask"`` (N booleans, at least one True, as gymnasium's vector envs ask: reset only
    those members).
    """

    def __init__(
        self,
        num_envs: int = 1,
        config: LossTuningConfig | None = None,
        *,
        max_episode_steps: int | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.SAME_STEP,
        **options: Any,
    ):
        checks.integer("num_envs", num_envs, 1)
        if max_episode_steps is not None and not (
                checks.is_integer(max_episode_steps) and max_episode_steps >= 1):
            raise ValueError(f"max_episode_steps={max_episode_steps!r} is invalid: must be an "
                             "integer >= 1 or None")
        try:
            mode = AutoresetMode(autoreset_mode)
        except ValueError:
            mode = None
        if mode not in AUTORESET_MODES:
            raise ValueError(f"autoreset_mode={autoreset_mode!r} is invalid: must be one of "
                             f"{[m.value for m in AUTORESET_MODES]} (or the AutoresetMode)")
        num_envs = int(num_envs)
        self._setup(num_envs, config, options)
        self.num_envs = num_envs
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.autoreset_mode = mode
        self.metadata = {"render_modes": list(RENDER_MODES), "autoreset_mode": mode}
        self.single_observation_space, self.single_action_space = _spaces(self.batch)
        self.observation_space = spaces.Box(
            np.tile(self.single_observation_space.low, (num_envs, 1)),
            np.tile(self.single_observation_space.high, (num_envs, 1)),
            dtype=np.float32,
        )
        self.action_space = spaces.Box(-1.0, 1.0, (num_envs, self.batch.mapping.dim),
                                       dtype=np.float32)
        self._rngs = [np.random.default_rng() for _ in range(num_envs)]
        # Next-step autoreset: members whose episode ended at the last step.
        self._pending = np.zeros(num_envs, dtype=bool)

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

    def _seeds(self, seed: Any) -> list[int | None]:
        n = self.num_envs
        if seed is None:
            return [None] * n
        if checks.is_seed(seed):
            return [int(seed) + i for i in range(n)]
        if isinstance(seed, Sequence | np.ndarray) and not isinstance(seed, str) \
                and len(seed) == n and all(s is None or checks.is_seed(s) for s in seed):
            return [None if s is None else int(s) for s in seed]
        raise ValueError(f"seed={seed!r} is invalid: must be None, an integer >= 0 (member i "
                         f"gets seed + i) or a sequence of {n} integers >= 0 or None")

    def _mask(self, mask: Any) -> list[int]:
        n = self.num_envs
        if mask is None:
            return list(range(n))
        array = np.asarray(mask) if isinstance(mask, Sequence | np.ndarray) else None
        if array is None or array.shape != (n,) or array.dtype != np.bool_:
            raise ValueError(f"options['reset_mask']={mask!r} is invalid: must be {n} booleans "
                             f"(a bool array of shape ({n},)), True for the members to reset")
        if not array.any():
            raise ValueError(f"options['reset_mask']={mask!r} is invalid: it resets no member; "
                             "at least one must be True (as gymnasium's vector envs require)")
        return [int(i) for i in np.flatnonzero(array)]

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        # Everything is checked before anything (a generator, a member) changes.
        seeds = self._seeds(seed)
        options = _options(options)
        ids = self._mask(options.pop("reset_mask", None))
        task_opt = options.pop("task", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; known: ['task', "
                             "'reset_mask']")
        if len(ids) < self.num_envs and self.batch.population is None:
            raise ValueError("a partial reset (options['reset_mask']) needs a full reset first")
        pinned = None
        if isinstance(task_opt, list | tuple):
            if len(task_opt) != len(ids):
                raise ValueError(f"options['task'] has {len(task_opt)} tasks for {len(ids)} envs")
            pinned = [as_task(t) for t in task_opt]
        elif task_opt is not None:
            pinned = [as_task(task_opt)] * len(ids)
        for i in ids:
            if seeds[i] is not None:
                self._rngs[i] = np.random.default_rng(seeds[i])
        tasks = pinned if pinned is not None else self._draw_tasks(ids)
        obs = self._last_obs.copy() if len(ids) < self.num_envs else \
            np.zeros(self.observation_space.shape, dtype=np.float32)
        obs[ids] = self.batch.reset(ids, tasks)
        self._pending[ids] = False
        self._last_obs = obs.copy()
        infos: dict[str, Any] = {}
        for i, task in zip(ids, tasks):
            self._trace[i] = [obs[i].copy()]
            infos = self._add_info(infos, {"task": task.to_dict()}, i)
        return obs, infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                          dict[str, Any]]:
        if self.batch.population is None:
            raise RuntimeError("step() called before reset()")
        acts = self.batch.check_actions(actions)
        n = self.num_envs
        stepping = ~np.array(self.batch.done)
        if stepping.any():
            obs, rewards, terminated, step_infos = self.batch.step(acts)
        else:  # next-step autoreset of every member
            obs, rewards = self._last_obs.copy(), np.zeros(n)
            terminated, step_infos = np.zeros(n, dtype=bool), [{} for _ in range(n)]
        # Like gymnasium's TimeLimit: truncated whenever the limit is reached.
        limit = self.max_episode_steps
        truncated = stepping & np.array([limit is not None and s >= limit
                                         for s in self.batch.steps])
        for i in np.flatnonzero(truncated & ~terminated):
            step_infos[i]["test"] = self.batch.test_metrics(int(i))
        for i in np.flatnonzero(stepping):
            self._trace[i].append(obs[i].copy())
        ended = list(np.flatnonzero(terminated | truncated))
        if self.autoreset_mode == AutoresetMode.SAME_STEP:
            restart = ended
        else:
            restart = list(np.flatnonzero(self._pending))
            for i in ended:
                self.batch.done[i] = True  # a truncated episode sits out until its reset
        if restart:
            tasks = self._draw_tasks(restart)
            fresh = self.batch.reset(restart, tasks)
            for k, i in enumerate(restart):
                if self.autoreset_mode == AutoresetMode.SAME_STEP:
                    step_infos[i] = {"final_obs": obs[i].copy(), "final_info": step_infos[i],
                                     "task": tasks[k].to_dict()}
                else:
                    step_infos[i] = {"task": tasks[k].to_dict()}
                obs[i] = fresh[k]
                self._trace[i] = [fresh[k].copy()]
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._pending[:] = False
            self._pending[ended] = True
        infos: dict[str, Any] = {}
        for i, info in enumerate(step_infos):
            infos = self._add_info(infos, info, i)
        self._last_obs = obs.copy()
        return obs, rewards, terminated, truncated, infos

    def render(self) -> tuple[str, ...] | tuple[np.ndarray, ...] | None:
        if self.render_mode == "ansi":
            return tuple(self.batch.status(i) for i in range(self.num_envs))
        if self.render_mode == "rgb_array":
            return tuple(self._frame(i) for i in range(self.num_envs))
        return None
