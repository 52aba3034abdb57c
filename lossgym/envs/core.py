"""The episode logic shared by the single and the vector environment.

:class:`EpisodeBatch` runs N episodes side by side on one :class:`~lossgym.population.Population`:
it maps actions to loss parameters, trains, evaluates, and turns the population's statistics
into observations, rewards and infos. With ``reward_baseline="paired"`` the population holds N
more members, member N + i being a plain cross-entropy twin of member i (same task, seed,
pool, initialisation and data order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lossgym.actions import ActionMapping
from lossgym.features import (
    FeatureSpec,
    compute_features,
    feature_version,
    log_imbalance,
    task_context_values,
)
from lossgym.losses import ParametricCriterion
from lossgym.population import SHARED_FIELDS, MinibatchContext, Population, resolve_device
from lossgym.schedules import LossSchedule
from lossgym.tasks import TASK_SPLITS, TaskDistribution, TaskSpec

METRICS = ("balanced_accuracy", "macro_f1", "accuracy", "neg_ece", "soft_balanced_accuracy")
REWARD_BASELINES = ("none", "paired", "base")
TEST_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "ece", "ece_ts", "nll",
                "worst_class_recall", "soft_balanced_accuracy")


def metric_value(metrics: dict[str, Tensor], metric: str) -> Tensor:
    """The reward metric from :func:`lossgym.metrics.classification_metrics` output."""
    return -metrics["ece"] if metric == "neg_ece" else metrics[metric]


class TaskSource:
    """Where episodes' tasks come from: one fixed task or a :class:`TaskDistribution` split.

    A fixed task gets a fresh inner seed per episode from the env's generator; a distribution
    is sampled with it.
    """

    def __init__(self, tasks: TaskSpec | TaskDistribution | None, split: str):
        if tasks is None:
            tasks = TaskDistribution.default()
        if not isinstance(tasks, TaskSpec | TaskDistribution):
            raise ValueError(f"tasks must be a TaskSpec or a TaskDistribution, got "
                             f"{type(tasks).__name__}")
        if split not in TASK_SPLITS:
            raise ValueError(f"split={split!r} is not known; choose one of {TASK_SPLITS}")
        self.tasks = tasks
        self.split = split

    def draw(self, rng: np.random.Generator, like: TaskSpec | None = None) -> TaskSpec:
        """A task; with ``like``, one that shares its :data:`SHARED_FIELDS` (by redrawing)."""
        for _ in range(1000):
            if isinstance(self.tasks, TaskSpec):
                task = self.tasks.replace(seed=int(rng.integers(0, 2**31 - 1)))
            else:
                task = self.tasks.sample(rng, self.split)
            if like is None or compatible(task, like):
                return task
        raise ValueError(
            f"no task in split {self.split!r} shares {SHARED_FIELDS} with {like}; "
            "pass tasks with one architecture and dataset"
        )


def compatible(a: TaskSpec, b: TaskSpec) -> bool:
    """Whether two tasks can be members of one population."""
    return all(getattr(a, f) == getattr(b, f) for f in SHARED_FIELDS)


def as_task(value: Any) -> TaskSpec:
    """A task from ``options["task"]``: a TaskSpec, a dict, or a dataset name."""
    if isinstance(value, TaskSpec):
        return value
    if isinstance(value, dict):
        return TaskSpec.from_dict(value)
    if isinstance(value, str):
        return TaskSpec(dataset=value)
    raise ValueError(f"options['task'] must be a TaskSpec, a dict or a dataset name, got "
                     f"{value!r}")


class EpisodeBatch:
    """N episodes on one population (see the module docstring)."""

    def __init__(
        self,
        num_envs: int,
        mapping: ActionMapping,
        metric: str,
        reward_baseline: str,
        divergence_penalty: float,
        device: str | torch.device,
        eval_chunk: int,
        base_rule: LossSchedule | None = None,
        context_features: bool = True,
        progress_basis: bool = False,
    ):
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} is not known; choose one of {METRICS}")
        if reward_baseline not in REWARD_BASELINES:
            raise ValueError(f"reward_baseline={reward_baseline!r} is not known; choose one of "
                             f"{REWARD_BASELINES}")
        if not np.isfinite(divergence_penalty) or divergence_penalty < 0:
            raise ValueError(f"divergence_penalty={divergence_penalty} must be finite and >= 0")
        if base_rule is None and (reward_baseline == "base" or mapping.mode == "residual"):
            raise ValueError("reward_baseline='base' and action_mode='residual' need a base "
                             "rule (base_rule=)")
        if base_rule is not None and set(base_rule.parameters) - set(mapping.parameters):
            raise ValueError(f"the base rule sets {list(base_rule.parameters)}, but the agent "
                             f"controls {list(mapping.parameters)}: control every parameter "
                             "the base rule sets")
        self.num_envs = num_envs
        self.mapping = mapping
        if progress_basis and not context_features:
            raise ValueError("progress_basis=True needs context_features=True (features "
                             "version 3 holds both)")
        self.features = FeatureSpec(mapping.parameters, feature_version(context_features,
                                                                        progress_basis))
        self.metric = metric
        self._soft = metric == "soft_balanced_accuracy"  # needs a temperature fit
        # The twin: a second member per env on the same task, seed, pool, initialisation and
        # data order, trained with cross-entropy ("paired") or the base rule ("base").
        self.paired = reward_baseline in ("paired", "base")
        self.base_rule = base_rule
        self._twin_base = reward_baseline == "base"
        self.divergence_penalty = float(divergence_penalty)
        self.device = resolve_device(device)
        self.eval_chunk = eval_chunk
        self.population: Population | None = None
        self.tasks: list[TaskSpec | None] = [None] * num_envs
        d = mapping.dim
        self.params = mapping.neutral(self.device).repeat(num_envs, 1)
        self.last_change = torch.zeros(num_envs, d, device=self.device)
        self.value = np.zeros(num_envs)
        self.steps = [0] * num_envs
        self.done = [True] * num_envs
        self.last_reward = np.zeros(num_envs)
        self.last_obs = np.zeros((num_envs, self.features.dim), dtype=np.float32)
        # The last finite train loss of each episode (NaN before its first step).
        self.train_loss = np.full(num_envs, np.nan)
        self._neutral = mapping.neutral(self.device)
        self._twin = self._neutral.repeat(num_envs, 1)  # the base twin's parameters
        self._loss = ParametricCriterion(reduction="none")
        # The loss parameters by name while self.params stays the same tensor, unmodified
        # (a step), so that the criterion keeps its terms: (params, version, values).
        self._values: tuple[Tensor, int, dict[str, Tensor]] | None = None

    # ----------------------------------------------------------------- helpers
    def _members(self, env_ids: Sequence[int]) -> list[int]:
        """Population members of the given envs (and their paired twins)."""
        ids = list(env_ids)
        return ids + [self.num_envs + i for i in ids] if self.paired else ids

    def _base_params(self) -> Tensor:
        """The base rule's parameters ``[N, d]`` for each env's coming step (at progress
        steps / horizon; neutral where it sets none)."""
        assert self.base_rule is not None
        rows = []
        for i in range(self.num_envs):
            task = self.tasks[i]
            values = self.base_rule(self.steps[i] / task.horizon if task else 0.0)
            rows.append([values.get(p, float(self._neutral[j]))
                         for j, p in enumerate(self.mapping.parameters)])
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    def _criterion(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        cached = self._values
        if cached is None or cached[0] is not self.params or cached[1] != self.params._version:
            params = self.params
            if self.paired:
                twin = self._twin if self._twin_base else self._neutral.expand_as(params)
                params = torch.cat([params, twin])
            cached = self._values = (self.params, self.params._version,
                                     self.mapping.as_kwargs(params))
        return self._loss(logits, targets, cached[2], ctx.class_counts).mean(-1)

    def _value(self, metrics: dict[str, Tensor], n: int) -> np.ndarray:
        v = metric_value(metrics, self.metric).double().cpu().numpy()
        return v[:n] - v[n:] if self.paired else v

    # ------------------------------------------------------------------- reset
    def reset(self, env_ids: Sequence[int], tasks: Sequence[TaskSpec]) -> np.ndarray:
        """Start new episodes for ``env_ids`` on ``tasks``; returns their observations."""
        ids = list(env_ids)
        pop = self.population
        if pop is not None and not all(compatible(t, pop.reference) for t in tasks):
            if len(ids) < self.num_envs:
                bad = next(t for t in tasks if not compatible(t, pop.reference))
                raise ValueError(
                    f"task {bad} cannot join this vector env's population, which uses "
                    + ", ".join(f"{f}={getattr(pop.reference, f)!r}" for f in SHARED_FIELDS)
                )
            pop = None
        if pop is None:
            # (Re)build with every env on a compatible task; untouched envs keep theirs.
            all_tasks = [tasks[ids.index(i)] if i in ids else self.tasks[i] or tasks[0]
                         for i in range(self.num_envs)]
            members = all_tasks + (all_tasks if self.paired else [])
            self.population = Population(members, device=self.device, eval_chunk=self.eval_chunk)
        else:
            for i, task in zip(ids, tasks):
                pop.reset_member(i, task)
                if self.paired:
                    pop.reset_member(self.num_envs + i, task)
        for i, task in zip(ids, tasks):
            self.tasks[i] = task
            self.steps[i] = 0
            self.done[i] = False
            self.params[i] = self._neutral
            self.last_change[i] = 0.0
            self.last_reward[i] = 0.0
            self.train_loss[i] = np.nan
        if self.mapping.mode == "residual":  # episodes start at the base rule
            self.params[ids] = self._base_params()[ids]
        obs = self._observe(ids, stats=None)
        self.last_obs[ids] = obs
        return obs

    def _observe(self, ids: list[int], stats: Any, metrics: dict[str, Tensor] | None = None
                 ) -> np.ndarray:
        """Observations of ``ids`` (their rows of ``stats``/``metrics`` when given)."""
        pop = self.population
        assert pop is not None
        if metrics is None:
            metrics = pop.evaluate("val", self._members(ids), soft=self._soft)
            rows = slice(0, len(ids))
            value = self._value(metrics, len(ids))
            self.value[ids] = value
        else:
            rows = torch.as_tensor(ids, device=self.device)
        own = {k: v[rows] for k, v in metrics.items()}
        index = torch.as_tensor(ids, device=self.device)
        if stats is None:  # at reset: no minibatch yet (see lossgym.features)
            train_loss = own["nll"]
            gnorm = gstd = torch.zeros_like(train_loss)
        else:
            train_loss = stats.ce[index]
            gnorm, gstd = stats.grad_norm[index], stats.grad_norm_std[index]
        obs = compute_features(
            self.features,
            progress=pop.progress()[index],
            train_loss=train_loss,
            grad_norm=gnorm,
            grad_norm_std=gstd,
            val_metrics=own,
            params=self.mapping.normalise(self.params[index]),
            last_change=self.last_change[index],
            imbalance=log_imbalance(pop.class_counts[index]),
            context=self._context(ids) if self.features.context else None,
        )
        return obs.cpu().numpy()

    def _context(self, ids: list[int]) -> Tensor:
        """The context features of the envs' tasks (:func:`lossgym.features.context_values`)."""
        pop = self.population
        assert pop is not None
        sizes = pop.class_counts[torch.as_tensor(ids, device=self.device)].sum(-1).tolist()
        rows = []
        for i, size in zip(ids, sizes):
            t = self.tasks[i]
            assert t is not None
            rows.append(task_context_values(t, size))
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    # -------------------------------------------------------------------- step
    def check_actions(self, actions: Any) -> Tensor:
        """Actions as a ``[N, d]`` tensor; NaN, ±inf or a wrong shape raise ``ValueError``."""
        shape = (self.num_envs, self.mapping.dim)
        expected = shape if self.num_envs > 1 else shape[1:]
        try:
            array = np.asarray(actions)
        except ValueError:  # ragged nested sequences
            array = np.empty(0, dtype=object)
        if array.dtype.kind not in "iuf":  # strings, complex numbers, dicts, objects
            raise ValueError(f"action {actions!r} is invalid: must be real numbers of shape "
                             f"{expected}, got dtype {array.dtype}")
        array = array.astype(np.float64)
        if array.shape != shape and not (self.num_envs == 1 and array.shape == shape[1:]):
            raise ValueError(f"action has shape {array.shape}; expected {expected}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"action {array.tolist()} holds NaN or infinite values; "
                             "actions must be finite (values outside [-1, 1] are clipped)")
        return torch.as_tensor(array.reshape(shape), dtype=torch.float32, device=self.device)

    def step(self, actions: Tensor | None = None, *, params: Tensor | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """One step of every running episode: observations, rewards, terminations, infos.

        The loss parameters come from ``actions`` ``[N, d]`` through the action mapping, or
        directly as ``params`` ``[N, d]`` (a rule's; clipped to their ranges). Envs whose
        episode has ended sit the step out: they do not train, their reward is 0, their
        observation and parameters stay, and their info is empty."""
        pop = self.population
        if pop is None or all(self.done):
            raise RuntimeError("step() called with no running episode; call reset() first")
        if (actions is None) == (params is None):
            raise ValueError("step() takes actions or params, one of them")
        n = self.num_envs
        running = torch.tensor([not d for d in self.done], device=self.device)
        base = self._base_params() if self.base_rule is not None else None
        if self._twin_base:
            self._twin = base
        if params is None:
            params = self.mapping.apply(actions, self.params, base)
        else:
            low, high = self.mapping.bounds(self.device)
            params = torch.as_tensor(params, dtype=torch.float32, device=self.device)
            params = torch.minimum(torch.maximum(params.reshape(n, -1), low), high)
        new = torch.where(running.unsqueeze(1), params, self.params)
        change = self.mapping.normalise(new) - self.mapping.normalise(self.params)
        self.last_change = torch.where(running.unsqueeze(1), change, self.last_change)
        self.params = new
        active = [not d for d in self.done]
        stats = pop.train(self._criterion, active=active + (active if self.paired else []))
        metrics = pop.evaluate("val", soft=self._soft)
        value = np.where(active, self._value(metrics, n), self.value)
        rewards = value - self.value
        self.value = value
        diverged = pop.diverged[:n].cpu().numpy().copy()
        if self.paired:
            # A diverged twin leaves no reference: the member's episode ends with it.
            diverged |= pop.diverged[n:].cpu().numpy()
        # A member whose own training diverged skipped its non-finite minibatches, which left
        # zeros in its statistics: it is observed at the loss and gradient features' upper
        # bounds (non-finite), not at their floor, which would read as a perfect fit.
        bad = pop.diverged.clone()
        bad[n:] = False
        inf = torch.full_like(stats.ce, float("inf"))
        stats = dataclasses.replace(stats, ce=torch.where(bad, inf, stats.ce),
                                    grad_norm=torch.where(bad, inf, stats.grad_norm))
        own_diverged = bad[:n].cpu().numpy()
        self.train_loss = np.where(own_diverged | ~np.array(active), self.train_loss,
                                   stats.ce[:n].double().cpu().numpy())
        obs = self._observe(list(range(n)), stats, metrics)
        obs[~np.array(active)] = self.last_obs[~np.array(active)]
        self.last_obs = obs.copy()
        infos: list[dict] = []
        terminated = np.zeros(n, dtype=bool)
        params_cpu = self.params.cpu().numpy()
        for i in range(n):
            if self.done[i]:
                infos.append({})
                continue
            self.steps[i] += 1
            task = self.tasks[i]
            assert task is not None
            info: dict[str, Any] = {
                "params": {p: float(params_cpu[i, j])
                           for j, p in enumerate(self.mapping.parameters)},
                "val_metric": float(metric_value(metrics, self.metric)[i]),
                "train_loss": float(self.train_loss[i]),
                "diverged": bool(diverged[i]),
                "step": self.steps[i],
            }
            if diverged[i]:
                rewards[i] = -self.divergence_penalty
                terminated[i] = True
            elif self.steps[i] >= task.horizon:
                terminated[i] = True
            if terminated[i]:
                info["task"] = task.to_dict()
                info["test"] = self.test_metrics(i)
            infos.append(info)
        self.last_reward = rewards
        for i in np.flatnonzero(terminated):
            self.done[i] = True
        return obs, rewards.astype(np.float64), terminated, infos

    def test_metrics(self, i: int) -> dict[str, float]:
        """Test metrics of env i's member (and its twin's, when paired): final reports only."""
        pop = self.population
        assert pop is not None
        test = pop.final_metrics(self._members([i]))
        out = {k: float(test[k][0]) for k in TEST_METRICS}
        if self.paired:
            out.update({f"reference_{k}": float(test[k][1]) for k in TEST_METRICS})
        return out

    def status(self, i: int) -> str:
        """A one-line status of env ``i``."""
        task = self.tasks[i]
        if task is None:
            return "not reset"
        params = " ".join(f"{p}={float(v):.2f}"
                          for p, v in zip(self.mapping.parameters, self.params[i]))
        return (f"step {self.steps[i]}/{task.horizon} {task.dataset} rho={task.imbalance_ratio:g}"
                f" {task.arch}{task.width} seed={task.seed} | {params} | val {self.metric}"
                f"={self.value[i]:+.4f} reward={self.last_reward[i]:+.4f}")
