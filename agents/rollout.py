"""Run policies and loss methods on fixed lists of tasks, batched, and record the episodes.

Every method a report compares runs through here on the same task list, so seed s of a task
gives every method the same training pool, initialisation and data order (paired results).

* :func:`rollout_policy` runs a :class:`Policy` (an RL agent, a hand schedule, a feedback
  rule, a replay) through the environment's own episode logic (:class:`EpisodeBatch`), one
  batched population per group of compatible tasks.
* :func:`rollout_method` runs a built-in loss rule of :mod:`lossgym.methods` (LDAM-DRW,
  FLSD-53, AdaFocal, class-balanced...) as the method itself, as ``lossgym compare`` does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from agents import distributed
from lossgym import params as loss_params
from lossgym.actions import ActionMapping
from lossgym.envs.core import TEST_METRICS, EpisodeBatch, metric_value
from lossgym.methods import MethodMix, make_method
from lossgym.population import SHARED_FIELDS, Population, resolve_device
from lossgym.schedules import LossSchedule
from lossgym.tasks import TaskSpec


class Policy(Protocol):
    """Anything that maps a batch of observations to actions in [−1, 1]^d, or, for a rule
    (:class:`ScheduleRule`, the feedback rule), to loss parameters directly: then it has
    ``params(obs [N, D], progress [N]) -> [N, d]`` instead of ``act``.

    Attributes:
        parameters: the loss parameters its actions control, in action order.
        mode: the action mode it speaks ("absolute" or "delta"); a policy may also carry
            ``max_step`` (delta mode's step, default 0.1).
    """

    parameters: tuple[str, ...]
    mode: str

    def reset(self, num_envs: int) -> None:
        """Start ``num_envs`` new episodes."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions ``[N, d]`` for observations ``[N, D]``."""


class ScheduleRule:
    """A :class:`~lossgym.schedules.LossSchedule` as a rule: every member's parameters at
    step h of H are the schedule's at progress h/H (what a progress-only hand rule is).

    Args:
        schedule: the schedule.
        parameters: the controlled parameters (default: the scheduled ones); those the
            schedule leaves out stay neutral.
    """

    mode = "absolute"

    def __init__(self, schedule: LossSchedule, parameters: Sequence[str] | None = None
                 ) -> None:
        self.schedule = schedule
        self.parameters = ActionMapping(tuple(parameters or schedule.parameters)).parameters
        missing = set(schedule.parameters) - set(self.parameters)
        if missing:
            raise ValueError(f"the schedule sets {sorted(missing)}, which parameters="
                             f"{self.parameters} does not control")

    def reset(self, num_envs: int) -> None:
        """Nothing to reset: the schedule reads progress only."""

    def params(self, obs: np.ndarray, progress: np.ndarray) -> np.ndarray:
        """Parameters ``[N, d]`` at each row's progress."""
        neutral = loss_params.neutral()
        rows = [self.schedule(float(t)) for t in np.asarray(progress, dtype=np.float64)]
        return np.array([[row.get(p, neutral[p]) for p in self.parameters] for row in rows])

    def __repr__(self) -> str:
        return f"ScheduleRule({json.dumps(self.schedule.to_dict())})"


@dataclass
class EpisodeRecord:
    """One finished episode.

    Attributes:
        task: the task it ran on.
        method: the name of the policy or method.
        params: loss parameters chosen at each step, ``[H, d]`` (empty for methods).
        actions: the raw actions, ``[H, d]`` (empty for methods).
        val_curve: the validation metric at reset and after each step, ``[H + 1]``.
        test: final test metrics (see :data:`lossgym.envs.core.TEST_METRICS`).
        diverged: whether the inner training diverged.
    """

    task: TaskSpec
    method: str
    params: np.ndarray
    actions: np.ndarray
    val_curve: np.ndarray
    test: dict[str, float]
    diverged: bool = False
    parameters: tuple[str, ...] = field(default_factory=tuple)


def group_tasks(tasks: Sequence[TaskSpec]) -> list[list[int]]:
    """Indices of ``tasks`` grouped so that each group can share one population (same
    :data:`SHARED_FIELDS` and horizon) and wastes none of its work (same minibatches per step:
    a population trains every member for its largest count), in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, task in enumerate(tasks):
        key = tuple(getattr(task, f) for f in SHARED_FIELDS) + (task.horizon,
                                                                 task.minibatches_per_step)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def rollout_policy(
    policy: Policy,
    tasks: Sequence[TaskSpec],
    name: str = "policy",
    metric: str = "balanced_accuracy",
    device: str | torch.device = "auto",
    max_members: int = 256,
) -> list[EpisodeRecord]:
    """One episode of ``policy`` on each task; records in task order.

    Each population (a group of compatible tasks, at most ``max_members``) is one unit of the
    current :mod:`agents.distributed` executor, unless the policy carries state from one
    population to the next (``policy.carries_state``): then its populations run in order as
    one unit, so that they see the same policy state wherever they run.
    """
    chunks = [group[start : start + max_members] for group in group_tasks(tasks)
              for start in range(0, len(group), max_members)]
    units = [(policy, [[tasks[i] for i in ids]], name, metric, device) for ids in chunks]
    if getattr(policy, "carries_state", False):
        units = [(policy, [unit[1][0] for unit in units], name, metric, device)]
    results = distributed.current().map(_policy_units, units)
    return _in_task_order(len(tasks), chunks, [chunk for result in results for chunk in result])


def _in_task_order(count: int, chunks: list[list[int]],
                   results: list[list[EpisodeRecord]]) -> list[EpisodeRecord]:
    records: list[EpisodeRecord | None] = [None] * count
    for ids, chunk in zip(chunks, results):
        for i, record in zip(ids, chunk):
            records[i] = record
    return [r for r in records if r is not None]


def _policy_units(policy: Policy, populations: list[list[TaskSpec]], name: str, metric: str,
                  device: str | torch.device) -> list[list[EpisodeRecord]]:
    """:func:`_policy_unit` on each population in turn."""
    return [_policy_unit(policy, tasks, name, metric, device) for tasks in populations]


def _policy_unit(policy: Policy, tasks: list[TaskSpec], name: str, metric: str,
                 device: str | torch.device) -> list[EpisodeRecord]:
    """One episode of ``policy`` on each task of one population."""
    mapping = ActionMapping(tuple(policy.parameters), policy.mode,
                            getattr(policy, "max_step", 0.1))
    n = len(tasks)
    # An agent's episodes show it what it trained on: its features and its base rule.
    batch = EpisodeBatch(n, mapping, metric, "none", 1.0, resolve_device(device), 1024,
                         getattr(policy, "base_rule", None),
                         getattr(policy, "context_features", True),
                         getattr(policy, "progress_basis", False))
    obs = batch.reset(range(n), tasks)
    policy.reset(n)
    curves = [batch.value.copy()]
    params, actions, tests = [], [], [None] * n
    diverged = np.zeros(n, dtype=bool)
    rule = getattr(policy, "params", None)
    while not all(batch.done):
        if rule is not None:  # a rule sets the parameters; its record keeps their actions
            progress = np.array([s / t.horizon for s, t in zip(batch.steps, tasks)])
            obs, _, terminated, infos = batch.step(params=torch.as_tensor(
                np.asarray(rule(obs, progress), dtype=np.float32)))
            actions.append(mapping.normalise(batch.params).cpu().numpy())
        else:
            action = np.asarray(policy.act(obs), dtype=np.float32).reshape(n, -1)
            actions.append(np.clip(action, -1.0, 1.0))
            obs, _, terminated, infos = batch.step(batch.check_actions(action))
        params.append(batch.params.cpu().numpy().copy())
        curves.append(batch.value.copy())
        for k, info in enumerate(infos):
            if info.get("test") is not None:
                tests[k] = info["test"]
                diverged[k] = info["diverged"]
    return [EpisodeRecord(task=task, method=name, params=np.array(params)[:, k],
                          actions=np.array(actions)[:, k], val_curve=np.array(curves)[:, k],
                          test=tests[k], diverged=bool(diverged[k]),
                          parameters=mapping.parameters)
            for k, task in enumerate(tasks)]


def rollout_method(
    method: str,
    tasks: Sequence[TaskSpec],
    metric: str = "balanced_accuracy",
    device: str | torch.device = "auto",
) -> list[EpisodeRecord]:
    """One training run of the built-in loss ``method`` on each task; records in task order."""
    chunks = group_tasks(tasks)
    units = [(method, [tasks[i] for i in ids], metric, device) for ids in chunks]
    return _in_task_order(len(tasks), chunks, distributed.current().map(_method_unit, units))


def _method_unit(method: str, tasks: list[TaskSpec], metric: str,
                 device: str | torch.device) -> list[EpisodeRecord]:
    """One training run of ``method`` on each task of one population."""
    dev = resolve_device(device)
    pop = Population(tasks, device=dev)
    mix = MethodMix([make_method(method, len(tasks), pop.num_classes, dev)])
    soft = metric == "soft_balanced_accuracy"
    curves = [metric_value(pop.evaluate("val", soft=soft), metric).cpu().numpy()]
    for _ in range(tasks[0].horizon):
        pop.train(mix)
        mix.observe_validation(pop.logits("val"), pop.targets("val"))
        curves.append(metric_value(pop.evaluate("val", soft=soft), metric).cpu().numpy())
    test = pop.final_metrics()
    diverged = pop.diverged.cpu().numpy()
    return [EpisodeRecord(task=task, method=method, params=np.zeros((0, 0)),
                          actions=np.zeros((0, 0)), val_curve=np.array(curves)[:, k],
                          test={m: float(test[m][k]) for m in TEST_METRICS},
                          diverged=bool(diverged[k]))
            for k, task in enumerate(tasks)]
