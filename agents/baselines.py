"""Hand-written loss policies, grid tuning and black-box search: the baselines an agent must beat.

Every policy here implements :class:`agents.rollout.Policy` and, unless it replays raw actions,
speaks the ``"absolute"`` action mode of :class:`lossgym.actions.ActionMapping`: an action
``a ∈ [−1, 1]`` sets a parameter to ``low + (a + 1) / 2 · (high − low)`` (γ ∈ [0, 5],
α ∈ [0, 1]; α is the class-balance strength, ``w_c ∝ n_c^(−α)``). A hand policy controls
γ and α; when it is given more ``parameters`` it holds the others at their neutral values.
Policies read training progress from ``obs[:, 0]`` and, for feedback, the validation balanced
accuracy (mean per-class recall, ``obs[:, 4]``) and the worst-class recall (``obs[:, 5]``); see
:mod:`lossgym.features`. Every policy is deterministic given its configuration (a
:class:`RandomPolicy` given its seed and the sequence of calls).

Because a fixed rule can run as one member of a population, a whole grid of configurations
costs one batched rollout: :class:`PerMemberPolicy` drives member ``i`` with its own policy and
:func:`rollout_members` runs "policy i on task i" for any list of pairs.

Tuning and search run on the tasks they are given (meant to be TRAIN tasks) and score a
configuration by the mean final *validation* metric (``EpisodeRecord.val_curve[-1]``), never by
the test metric. The one exception is :func:`oracle_constant`, which picks the best constant
loss on the test metric and is an upper bound for static losses, not a baseline. Budgets are
counted in *inner training runs*: one candidate configuration trained once on one task.

Built-in methods (LDAM-DRW, FLSD-53, AdaFocal...) are named in :data:`METHOD_BASELINES` and run
as methods through :func:`agents.rollout.rollout_method` (those that are schedules of the
parametric loss, :meth:`lossgym.methods.LossMethod.schedule`, can also be base rules);
:func:`rollout_baseline` runs any baseline by name.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from agents import distributed
from agents.rollout import (
    EpisodeRecord,
    Policy,
    ScheduleRule,
    group_tasks,
    rollout_method,
    rollout_policy,
)
from lossgym import _checks as checks
from lossgym import params as loss_params
from lossgym.actions import DEFAULT_PARAMETERS, ActionMapping
from lossgym.envs.core import METRICS
from lossgym.features import FeatureSpec
from lossgym.methods import METHODS, make_method
from lossgym.schedules import LossSchedule, Schedule, constant, cosine, join, linear, step
from lossgym.tasks import TaskSpec

#: Observation columns the feedback rule reads (see :mod:`lossgym.features`).
BALANCED_ACCURACY, WORST_RECALL = 4, 5
#: Schedule shapes of :func:`schedule_rule`.
SHAPES = ("linear", "cosine")
#: Search spaces of :func:`random_search` (all three) and :func:`cma_search` (the first two):
#: constants, schedules, and "mixed" (half constants, half schedules, as schedule configs).
SEARCH_SPACES = ("constant", "schedule", "mixed")

GAMMA_RANGE = loss_params.ranges()["gamma"][:2]
ALPHA_RANGE = loss_params.ranges()["alpha"][:2]

Config = dict[str, Any]
Table = list[dict[str, Any]]


# --------------------------------------------------------------------------- validation
def _check_parameters(parameters: Sequence[str], mode: str = "absolute",
                      required: Sequence[str] = ()) -> tuple[str, ...]:
    """Validated parameter names (via :class:`ActionMapping`) that include ``required``."""
    if isinstance(parameters, str):
        raise ValueError(f"parameters={parameters!r} must be a sequence of names, e.g. "
                         f"{DEFAULT_PARAMETERS}")
    params = ActionMapping(tuple(parameters), mode).parameters
    missing = [p for p in required if p not in params]
    if missing:
        raise ValueError(f"parameters={list(params)} lacks {missing}, which this policy "
                         "controls")
    return params


def _check_tasks(tasks: Sequence[TaskSpec]) -> list[TaskSpec]:
    """``tasks`` as a non-empty list of :class:`TaskSpec`."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks is empty; pass at least one TaskSpec")
    for i, task in enumerate(tasks):
        if not isinstance(task, TaskSpec):
            raise ValueError(f"tasks[{i}] is a {type(task).__name__}, not a TaskSpec")
    return tasks


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not known; choose one of {METRICS}")
    return metric


# --------------------------------------------------------------------------------- rules
def _check_fixed(fixed: Mapping[str, float]) -> dict[str, float]:
    """Constant values of parameters other than γ and α, each checked against its range."""
    out: dict[str, float] = {}
    for name, value in fixed.items():
        if name in ("gamma", "alpha") or name not in loss_params.names():
            allowed = [p for p in loss_params.names() if p not in ("gamma", "alpha")]
            raise ValueError(f"fixed parameter {name!r} is not known; choose from {allowed}")
        low, high, _ = loss_params.ranges()[name]
        out[name] = checks.real(name, value, low, high)
    return out


def _rule_parameters(parameters: Sequence[str] | None, fixed: Mapping[str, float]
                     ) -> tuple[str, ...]:
    """The controlled parameters of a hand rule: γ, α and every fixed one (by default in the
    canonical order of :data:`lossgym.params.LOSS_PARAMS`)."""
    if parameters is None:
        parameters = DEFAULT_PARAMETERS + tuple(p for p in loss_params.names() if p in fixed)
    params = _check_parameters(parameters, "absolute", ("gamma", "alpha"))
    missing = [p for p in fixed if p not in params]
    if missing:
        raise ValueError(f"fixed parameters {missing} are not among the controlled "
                         f"parameters {list(params)}")
    return params


def _drw_alpha(switch: float, alpha: float, before: float = 0.0) -> Schedule:
    """Deferred re-weighting: ``before`` while progress < ``switch``, then ``alpha``."""
    if switch <= 0.0 or alpha == before:
        return constant(alpha)
    if switch >= 1.0:
        return constant(before)
    return step([switch], [before, alpha])


def _hand_rule(gamma: Schedule, alpha: Schedule, parameters: Sequence[str] | None,
               fixed: Mapping[str, float]) -> ScheduleRule:
    fixed = _check_fixed(fixed)
    schedule = LossSchedule({"gamma": gamma, "alpha": alpha,
                             **{k: constant(v) for k, v in fixed.items()}})
    return ScheduleRule(schedule, _rule_parameters(parameters, fixed))


def constant_rule(gamma: float = 0.0, alpha: float = 0.0,
                  parameters: Sequence[str] | None = None, **fixed: float) -> ScheduleRule:
    """A fixed loss for the whole run: ``(0, 0)`` is cross-entropy, ``(γ, 0)`` focal loss,
    ``(0, α)`` class-balanced cross-entropy with ``w_c ∝ n_c^(−α)``, ``(γ, α)`` both.

    Args:
        gamma: focal exponent γ in [0, 5].
        alpha: class-balance strength α in [0, 1].
        parameters: the controlled parameters (γ, α and every fixed one; default in that
            order), e.g. an agent's action set, whose other parameters stay neutral.
        **fixed: constant values of other parameters (τ, margin, scale, ...).
    """
    return _hand_rule(constant(checks.real("gamma", gamma, *GAMMA_RANGE)),
                      constant(checks.real("alpha", alpha, *ALPHA_RANGE)), parameters, fixed)


def drw_rule(switch: float = 0.8, alpha: float = 1.0, gamma: float = 0.0,
             parameters: Sequence[str] | None = None, **fixed: float) -> ScheduleRule:
    """Deferred re-weighting: α = 0 while progress < ``switch``, then ``alpha``.

    Step h of H runs at progress h/H, so on a horizon of H steps the re-weighted share of
    training is ``1 − ⌈switch · H⌉ / H``; ``switch = 1`` never re-weights, ``switch = 0``
    re-weights from the start.

    Args:
        switch: progress in [0, 1] at which re-weighting starts.
        alpha: class-balance strength α in [0, 1] after the switch.
        gamma: constant focal exponent γ in [0, 5].
        parameters, **fixed: as :func:`constant_rule`.
    """
    switch = checks.real("switch", switch, 0.0, 1.0)
    alpha = checks.real("alpha", alpha, *ALPHA_RANGE)
    return _hand_rule(constant(checks.real("gamma", gamma, *GAMMA_RANGE)),
                      _drw_alpha(switch, alpha), parameters, fixed)


def ldam_drw_rule(scale: float = 30.0, switch: float = 0.8,
                  parameters: Sequence[str] | None = None) -> ScheduleRule:
    """LDAM-DRW (:class:`lossgym.methods.LDAMDRW`'s schedule of the parametric loss: LDAM's
    margins, the logit scale ``scale``, and the deferred effective-number weights ``cb`` from
    ``switch`` on), the family that ``tuned_ldam_drw`` tunes: the paper's s = 30 is not the
    best scale on every task distribution.

    Args:
        scale: the logit scale s, in the range of the loss parameter ``scale``.
        switch: progress in [0, 1) at which the re-weighting starts.
        parameters: the controlled parameters (default margin, scale and cb).
    """
    low, high = loss_params.param("scale").low, loss_params.param("scale").high
    schedule = make_method("ldam_drw", scale=checks.real("scale", scale, low, high),
                           switch=checks.real("switch", switch, 0.0, 0.999)).schedule()
    return ScheduleRule(schedule, parameters)


def schedule_rule(gamma_start: float = 2.0, gamma_end: float = 0.0, shape: str = "cosine",
                  drw_switch: float = 0.8, drw_alpha: float = 1.0, alpha_start: float = 0.0,
                  parameters: Sequence[str] | None = None, **fixed: float) -> ScheduleRule:
    """A parametric schedule: γ anneals over progress p, α is a deferred re-weighting step.

    ``γ(p) = gamma_start + (gamma_end − gamma_start) · s(p)`` with ``s(p) = p`` (linear) or
    ``s(p) = (1 − cos πp) / 2`` (cosine); ``α(p) = drw_alpha`` once ``p ≥ drw_switch``, else
    ``alpha_start``. With ``gamma_start == gamma_end`` and ``alpha_start == drw_alpha`` it is a
    constant loss, so the family contains the static losses.

    Args:
        gamma_start, gamma_end: γ at the start and the end of training, in [0, 5].
        shape: ``"linear"`` or ``"cosine"``.
        drw_switch: progress in [0, 1] at which α switches to ``drw_alpha``.
        drw_alpha, alpha_start: α in [0, 1] after and before the switch.
        parameters, **fixed: as :func:`constant_rule`.
    """
    start = checks.real("gamma_start", gamma_start, *GAMMA_RANGE)
    end = checks.real("gamma_end", gamma_end, *GAMMA_RANGE)
    if shape not in SHAPES:
        raise ValueError(f"shape={shape!r} is not known; choose one of {SHAPES}")
    gamma = constant(start) if start == end else (linear if shape == "linear" else cosine)(
        start, end)
    alpha = _drw_alpha(checks.real("drw_switch", drw_switch, 0.0, 1.0),
                       checks.real("drw_alpha", drw_alpha, *ALPHA_RANGE),
                       checks.real("alpha_start", alpha_start, *ALPHA_RANGE))
    return _hand_rule(gamma, alpha, parameters, fixed)


class FeedbackRule:
    """Raises re-weighting while the worst class lags behind the average class.

    Each episode starts at α = 0. After every evaluation of the trained network (every
    observation with progress > 0) each row updates
    ``α ← clip(α + eta · (mean recall − worst-class recall − margin), 0, alpha_max)``
    with mean recall = validation balanced accuracy ``obs[:, 4]`` and worst-class recall
    ``obs[:, 5]``. A row whose progress is 0 starts a new episode (α back to 0), so the rule
    also works under a vector env's autoreset; :meth:`reset` restarts every row.

    Args:
        eta: step size η >= 0 (α per unit of recall gap).
        margin: recall gap in [−1, 1] that is tolerated; a smaller gap lowers α.
        alpha_max: the largest α, in [0, 1].
        gamma: constant focal exponent γ in [0, 5].
        parameters: the controlled parameters (γ and α at least; the others stay neutral).
    """

    mode = "absolute"

    def __init__(self, eta: float = 1.0, margin: float = 0.0, alpha_max: float = 1.0,
                 gamma: float = 0.0, parameters: Sequence[str] | None = None) -> None:
        self.parameters = _rule_parameters(parameters, {})
        self.eta = checks.real("eta", eta, 0.0, math.inf)
        self.margin = checks.real("margin", margin, -1.0, 1.0)
        self.alpha_max = checks.real("alpha_max", alpha_max, *ALPHA_RANGE)
        self.gamma = checks.real("gamma", gamma, *GAMMA_RANGE)
        self._neutral = np.array([loss_params.param(p).neutral for p in self.parameters])
        self._obs_dim = FeatureSpec(self.parameters).dim
        self.alpha = np.zeros(0)

    def reset(self, num_envs: int) -> None:
        """Start ``num_envs`` new episodes, each at α = 0."""
        self.alpha = np.zeros(checks.integer("num_envs", num_envs, 1))

    def params(self, obs: np.ndarray, progress: np.ndarray) -> np.ndarray:
        """Update each row's α from its observation ``[N, D]``, then its parameters ``[N, d]``."""
        array = np.asarray(obs, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != self._obs_dim:
            raise ValueError(f"obs has shape {array.shape}; expected [N, {self._obs_dim}] for "
                             f"parameters {self.parameters}")
        if array.shape[0] != len(self.alpha):
            raise ValueError(f"obs has {array.shape[0]} rows but reset() started "
                             f"{len(self.alpha)} episodes; call reset(num_envs) first")
        gap = array[:, BALANCED_ACCURACY] - array[:, WORST_RECALL] - self.margin
        updated = np.clip(self.alpha + self.eta * gap, 0.0, self.alpha_max)
        self.alpha = np.where(np.asarray(progress) > 0, updated, 0.0)
        out = np.tile(self._neutral, (len(self.alpha), 1))
        out[:, self.parameters.index("gamma")] = self.gamma
        out[:, self.parameters.index("alpha")] = self.alpha
        return out

    def __repr__(self) -> str:
        return (f"FeedbackRule(eta={self.eta:g}, margin={self.margin:g}, "
                f"alpha_max={self.alpha_max:g}, gamma={self.gamma:g})")


class _ActionPolicy:
    """What the action policies share: the controlled parameters, their action mode and, for
    delta and residual actions, the step and the base rule."""

    def __init__(self, parameters: Sequence[str], mode: str,
                 base_rule: LossSchedule | None = None, max_step: float = 0.1) -> None:
        self.parameters = _check_parameters(parameters, mode)
        self.mode = mode
        self.base_rule = base_rule  # what residual actions correct
        self.max_step = max_step  # of delta and residual actions

    def reset(self, num_envs: int) -> None:
        """Start ``num_envs`` new episodes (nothing to do; a generator is not re-seeded)."""
        checks.integer("num_envs", num_envs, 1)


class RandomPolicy(_ActionPolicy):
    """Uniform actions in [−1, 1]^d from its own ``np.random.default_rng(seed)``.

    The generator is created once, so a fresh ``RandomPolicy(seed)`` replays the same actions
    for the same sequence of calls; later episodes continue the stream.

    Args:
        seed: seed of the generator, an int >= 0.
        parameters: the controlled parameters.
        mode: ``"absolute"`` or ``"delta"``.
    """

    #: Its generator runs on across populations (see :func:`agents.rollout.rollout_policy`).
    carries_state = True

    def __init__(self, seed: int = 0, parameters: Sequence[str] = DEFAULT_PARAMETERS,
                 mode: str = "absolute") -> None:
        self.seed = checks.integer("seed", seed, 0)
        super().__init__(parameters, mode)
        self.rng = np.random.default_rng(self.seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """``[N, d]`` uniform draws (float32)."""
        n = np.asarray(obs).shape[0]
        return self.rng.uniform(-1.0, 1.0, (n, len(self.parameters))).astype(np.float32)

    def __repr__(self) -> str:
        return f"RandomPolicy(seed={self.seed})"


class ConstantActionPolicy(_ActionPolicy):
    """The same raw action at every step and for every row (e.g. an agent's mean action).

    Args:
        action: ``[d]`` finite values; values outside [−1, 1] are clipped to it.
        parameters: the controlled parameters, ``d`` of them.
        mode: ``"absolute"`` or ``"delta"``.
    """

    def __init__(self, action: Sequence[float] | np.ndarray,
                 parameters: Sequence[str] = DEFAULT_PARAMETERS, mode: str = "absolute",
                 base_rule: LossSchedule | None = None, max_step: float = 0.1) -> None:
        super().__init__(parameters, mode, base_rule, max_step)
        array = np.asarray(action, dtype=np.float64).reshape(-1)
        if array.shape != (len(self.parameters),) or not np.all(np.isfinite(array)):
            raise ValueError(f"action={np.asarray(action).tolist()} is invalid: must be "
                             f"{len(self.parameters)} finite values (one per parameter "
                             f"{self.parameters}), in [-1, 1]")
        self.action = np.clip(array, -1.0, 1.0).astype(np.float32)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """``action`` repeated for every row."""
        return np.tile(self.action, (np.asarray(obs).shape[0], 1))


class ReplayPolicy(_ActionPolicy):
    """Open-loop replay of recorded action trajectories, one per member.

    At step t (the t-th :meth:`act` since :meth:`reset`) member i gets ``actions[i, t]``. It
    needs ``reset(N)`` with N = ``actions.shape[0]``, so with :func:`rollout_policy` all tasks
    must form one population; for any task list run single-member replays through
    :func:`rollout_members` (``[ReplayPolicy(a[None]) for a in actions]``).

    Args:
        actions: ``[N, H, d]`` finite actions (clipped to [−1, 1]).
        parameters: the controlled parameters, ``d`` of them.
        mode: the action mode the actions were recorded in.
    """

    def __init__(self, actions: np.ndarray, parameters: Sequence[str] = DEFAULT_PARAMETERS,
                 mode: str = "absolute", base_rule: LossSchedule | None = None,
                 max_step: float = 0.1) -> None:
        super().__init__(parameters, mode, base_rule, max_step)
        array = np.asarray(actions, dtype=np.float64)
        if array.ndim != 3 or array.shape[0] < 1 or array.shape[1] < 1 \
                or array.shape[2] != len(self.parameters):
            raise ValueError(f"actions has shape {array.shape}; expected [N >= 1, H >= 1, "
                             f"{len(self.parameters)}] for parameters {self.parameters}")
        if not np.all(np.isfinite(array)):
            raise ValueError("actions hold NaN or infinite values; they must be finite")
        self.actions = np.clip(array, -1.0, 1.0).astype(np.float32)
        self.step = 0

    @classmethod
    def from_records(cls, records: Sequence[EpisodeRecord], mode: str = "absolute"
                     ) -> ReplayPolicy:
        """Replay the actions of recorded episodes (same horizon and parameters).

        Args:
            records: episodes from :func:`agents.rollout.rollout_policy`.
            mode: the action mode they were recorded in.
        """
        records = list(records)
        if not records:
            raise ValueError("records is empty; pass at least one EpisodeRecord")
        params = {tuple(r.parameters) for r in records}
        shapes = {np.asarray(r.actions).shape for r in records}
        if len(params) != 1 or len(shapes) != 1:
            raise ValueError(f"records mix parameters {sorted(params)} or action shapes "
                             f"{sorted(shapes)}; replay needs one of each")
        return cls(np.stack([r.actions for r in records]), params.pop(), mode)

    def reset(self, num_envs: int) -> None:
        """Rewind to step 0 for ``num_envs`` = N members."""
        if num_envs != self.actions.shape[0]:
            raise ValueError(f"num_envs={num_envs} but the replay holds "
                             f"{self.actions.shape[0]} trajectories")
        self.step = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The recorded actions of the current step, ``[N, d]``."""
        n, horizon = self.actions.shape[:2]
        if np.asarray(obs).shape[0] != n:
            raise ValueError(f"obs has {np.asarray(obs).shape[0]} rows; the replay holds {n}")
        if self.step >= horizon:
            raise ValueError(f"step {self.step} is past the {horizon} recorded steps")
        self.step += 1
        return self.actions[:, self.step - 1].copy()


class KnotPolicy(_ActionPolicy):
    """An open-loop action schedule: parameter j's action is linear in training progress p
    (``obs[:, 0]``) between ``knots[j]``, evenly spaced on p ∈ [0, 1], clipped to [−1, 1].

    In residual mode (with the agent's ``base_rule`` and ``max_step``) all-zero knots are the
    base rule exactly, so :func:`knot_search` starts from it, as a residual agent does.

    Args:
        knots: ``[d, K]`` finite values, K >= 2 knots for each of the d parameters.
        parameters, mode, base_rule, max_step: the action terms, as an agent's.
    """

    def __init__(self, knots: Sequence[Sequence[float]] | np.ndarray,
                 parameters: Sequence[str] = DEFAULT_PARAMETERS, mode: str = "absolute",
                 base_rule: LossSchedule | None = None, max_step: float = 0.1) -> None:
        super().__init__(parameters, mode, base_rule, max_step)
        array = np.asarray(knots, dtype=np.float64)
        if (array.ndim != 2 or array.shape[0] != len(self.parameters) or array.shape[1] < 2
                or not np.all(np.isfinite(array))):
            raise ValueError(f"knots has shape {array.shape}; expected [{len(self.parameters)},"
                             f" K >= 2] finite values for parameters {self.parameters}")
        self.knots = np.clip(array, -1.0, 1.0)
        self._at = np.linspace(0.0, 1.0, array.shape[1])

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The actions at each row's progress, ``[N, d]``."""
        progress = np.asarray(obs, dtype=np.float64)[:, 0]
        return np.stack([np.interp(progress, self._at, row) for row in self.knots],
                        axis=1).astype(np.float32)

    def __repr__(self) -> str:
        return f"KnotPolicy(mode={self.mode!r}, knots={np.round(self.knots, 4).tolist()})"

    def schedule(self) -> LossSchedule:
        """The loss schedule this residual policy plays, as a :class:`LossSchedule` that can
        itself be a base rule: each parameter is ``clip(base(p) + a(p) · max_step · range)``
        written exactly as a ``join`` of linear pieces, broken at the knots, at the base
        rule's own boundaries and where the clip starts or stops.

        Raises:
            ValueError: the policy is not residual, or its base rule has a cosine piece
                (:meth:`lossgym.schedules.Schedule.breaks`).
        """
        if self.mode != "residual" or self.base_rule is None:
            raise ValueError(f"only a residual KnotPolicy with a base rule has a loss "
                             f"schedule; this one's mode is {self.mode!r}")
        base = self.base_rule.schedules
        out: dict[str, Schedule] = {}
        for j, name in enumerate(self.parameters):
            spec = loss_params.param(name)
            width = self.max_step * (spec.high - spec.low)
            part = base.get(name, constant(spec.neutral))
            cuts = sorted({*self._at[1:-1].tolist(), *part.breaks()})
            pieces: list[tuple[float, float, float]] = []  # (lo, value at lo+, value at hi-)
            for lo, hi in zip([0.0, *cuts], [*cuts, 1.0]):
                # The sum is linear on (lo, hi): read it at two inner points, extend to the ends.
                t1, t2 = lo + (hi - lo) / 3.0, lo + 2.0 * (hi - lo) / 3.0
                v1, v2 = (part(t) + float(np.interp(t, self._at, self.knots[j])) * width
                          for t in (t1, t2))
                slope = (v2 - v1) / (t2 - t1)
                start, end = v1 - slope * (t1 - lo), v1 + slope * (hi - t1)
                # Where the line leaves [low, high] the clip bends it: cut there too.
                inner = sorted(lo + (bound - start) / (end - start) * (hi - lo)
                               for bound in (spec.low, spec.high)
                               if end != start and min(start, end) < bound < max(start, end))
                inner = [x for x in inner if lo + 1e-12 < x < hi - 1e-12]
                for a, b in zip([lo, *inner], [*inner, hi]):
                    va = start + (end - start) * (a - lo) / (hi - lo)
                    vb = start + (end - start) * (b - lo) / (hi - lo)
                    ends = np.clip([va, vb], spec.low, spec.high)
                    for bound in (spec.low, spec.high):  # a crossing's rounding error
                        ends[np.abs(ends - bound) <= 1e-12 * (spec.high - spec.low)] = bound
                    pieces.append((a, *ends.tolist()))
            pieces = [pieces[0]] + [p for q, p in zip(pieces, pieces[1:]) if p[0] - q[0] > 1e-12]
            lines = [linear(a, b) for _, a, b in pieces]
            out[name] = lines[0] if len(lines) == 1 else join(lines, [p[0] for p in pieces[1:]])
        return LossSchedule(out)


class PerMemberPolicy:
    """Member i of the population is driven by ``policies[i]``: all rules (parameters from
    :meth:`params`) or all action policies (:meth:`act`).

    Each sub-policy is reset with ``num_envs=1`` and acts on its own observation row, so member
    i behaves exactly as ``policies[i]`` alone on that member's task — and a whole grid of
    fixed rules runs as one batched population.

    Args:
        policies: one policy per member, distinct objects, all with the same ``parameters``
            and ``mode``.
    """

    def __init__(self, policies: Sequence[Policy]) -> None:
        self.policies = list(policies)
        if not self.policies:
            raise ValueError("policies is empty; pass one policy per member")
        first = self.policies[0]
        self.parameters = tuple(first.parameters)
        self.mode = first.mode
        self.base_rule = getattr(first, "base_rule", None)
        self.max_step = getattr(first, "max_step", 0.1)
        rules = {hasattr(p, "params") for p in self.policies}
        if len(rules) > 1:
            raise ValueError("policies mix rules (params) and action policies (act)")
        if not rules.pop():
            self.params = None  # type: ignore[assignment]
        seen: dict[int, int] = {}
        for i, policy in enumerate(self.policies):
            if (tuple(policy.parameters), policy.mode) != (self.parameters, self.mode):
                raise ValueError(
                    f"policies[{i}] controls {tuple(policy.parameters)} in mode "
                    f"{policy.mode!r} but policies[0] controls {self.parameters} in mode "
                    f"{self.mode!r}; all must agree")
            if id(policy) in seen:
                raise ValueError(f"policies[{i}] is the same object as policies[{seen[id(policy)]}]"
                                 "; pass a separate instance per member")
            seen[id(policy)] = i

    def reset(self, num_envs: int) -> None:
        """Start one episode per sub-policy; ``num_envs`` must equal ``len(policies)``."""
        if num_envs != len(self.policies):
            raise ValueError(f"num_envs={num_envs} but PerMemberPolicy holds "
                             f"{len(self.policies)} policies (one per member)")
        for policy in self.policies:
            policy.reset(1)

    def _rows(self, obs: np.ndarray, call: Callable[[Policy, int], np.ndarray]) -> np.ndarray:
        array = np.asarray(obs)
        if array.shape[0] != len(self.policies):
            raise ValueError(f"obs has {array.shape[0]} rows; PerMemberPolicy holds "
                             f"{len(self.policies)} policies")
        d = len(self.parameters)
        return np.concatenate([np.asarray(call(p, i), dtype=np.float32).reshape(1, d)
                               for i, p in enumerate(self.policies)])

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Row i from ``policies[i].act(obs[i:i+1])``, ``[N, d]``."""
        return self._rows(obs, lambda p, i: p.act(obs[i : i + 1]))

    def params(self, obs: np.ndarray, progress: np.ndarray) -> np.ndarray:
        """Row i from ``policies[i].params(obs[i:i+1], progress[i:i+1])``, ``[N, d]``."""
        return self._rows(obs, lambda p, i: p.params(obs[i : i + 1], progress[i : i + 1]))


# ------------------------------------------------------------------------------ registry
#: Fixed hand baselines: name → factory of a fresh policy.
HAND_BASELINES: dict[str, Callable[[], Policy]] = {
    "ce": partial(constant_rule, 0.0, 0.0),
    **{f"focal_{g:g}": partial(constant_rule, g, 0.0) for g in (0.5, 1.0, 2.0, 3.0, 5.0)},
    "cb_power": partial(constant_rule, 0.0, 1.0),
    "cb_power_focal": partial(constant_rule, 1.0, 1.0),
    "random": partial(RandomPolicy, 0),
}

#: Built-in methods of :mod:`lossgym.methods` run with :func:`agents.rollout.rollout_method`.
METHOD_BASELINES: tuple[str, ...] = (
    "ldam_drw", "flsd53", "adafocal", "ce_drw", "logit_adjusted", "poly1",
    *(m for m in METHODS if m.startswith("cb_beta")),  # the effective-number β grid
)
#: Every rule by one name: the hand baselines, the tuned families at their defaults and the
#: built-in methods (a name that is in both, ``focal_1``..``focal_3``, is the same loss).
RULES: dict[str, Callable[[], Policy]] = {
    **HAND_BASELINES, "drw": drw_rule, "schedule": schedule_rule, "feedback": FeedbackRule,
}


def rollout_baseline(name: str, tasks: Sequence[TaskSpec], metric: str = "balanced_accuracy",
                     device: str | torch.device = "auto",
                     max_members: int = 256) -> list[EpisodeRecord]:
    """One episode of the baseline ``name`` (a key of :data:`HAND_BASELINES` or a name in
    :data:`METHOD_BASELINES`) on each task; records in task order.

    Args:
        name: the baseline.
        tasks: the tasks.
        metric: the validation metric recorded in ``val_curve``.
        device: torch device (``"auto"``: CUDA when available).
        max_members: largest population of one batched rollout (hand baselines only).
    """
    if name in HAND_BASELINES:
        return rollout_policy(HAND_BASELINES[name](), _check_tasks(tasks), name, metric,
                              device, max_members)
    if name in METHOD_BASELINES:
        return rollout_method(name, _check_tasks(tasks), metric, device)
    raise ValueError(f"baseline {name!r} is not known; choose from "
                     f"{sorted(HAND_BASELINES) + list(METHOD_BASELINES)}")


def rollout_members(policies: Sequence[Policy], tasks: Sequence[TaskSpec],
                    name: str | Sequence[str] = "per_member", metric: str = "balanced_accuracy",
                    device: str | torch.device = "auto",
                    max_members: int = 256) -> list[EpisodeRecord]:
    """One episode of ``policies[i]`` on ``tasks[i]`` for every i, batched.

    Pairs whose tasks can share a population (:func:`agents.rollout.group_tasks`) run as one
    :func:`rollout_policy` of a :class:`PerMemberPolicy`, in chunks of at most
    ``max_members``; that is one inner training run per pair.

    Args:
        policies: one distinct policy object per task.
        tasks: the tasks, as many as policies.
        name: the records' ``method``: one name, or one per pair.
        metric: the validation metric recorded in ``val_curve``.
        device: torch device (``"auto"``: CUDA when available).
        max_members: largest population of one batched rollout.

    Returns:
        the records, in task order.
    """
    policies, tasks = list(policies), _check_tasks(tasks)
    if len(policies) != len(tasks):
        raise ValueError(f"{len(policies)} policies for {len(tasks)} tasks; pass one per task")
    names = [name] * len(tasks) if isinstance(name, str) else list(name)
    if len(names) != len(tasks):
        raise ValueError(f"{len(names)} names for {len(tasks)} tasks; pass one or one per task")
    max_members = checks.integer("max_members", max_members, 1)
    chunks = [group[start : start + max_members] for group in group_tasks(tasks)
              for start in range(0, len(group), max_members)]
    # The chunks are independent populations: let the executor run them side by side.
    results = distributed.current().gather([
        partial(rollout_policy, PerMemberPolicy([policies[i] for i in ids]),
                [tasks[i] for i in ids], "per_member", metric, device, len(ids))
        for ids in chunks])
    records: list[EpisodeRecord | None] = [None] * len(tasks)
    for ids, chunk in zip(chunks, results):
        for i, record in zip(ids, chunk):
            record.method = names[i]
            records[i] = record
    return [r for r in records if r is not None]


# ------------------------------------------------------------------------ scoring/search
def _scored(record: EpisodeRecord, value: float, metric: str) -> float:
    """``value``, or for a diverged run or a non-finite value the metric's worst (0, or −1 for
    ``neg_ece``)."""
    worst = -1.0 if metric == "neg_ece" else 0.0
    return worst if record.diverged or not math.isfinite(value) else value


def final_val_score(record: EpisodeRecord, metric: str = "balanced_accuracy") -> float:
    """The final validation metric ``val_curve[-1]`` of a run; a diverged run, or a non-finite
    value, scores the metric's worst value (0, or −1 for ``neg_ece``)."""
    return _scored(record, float(record.val_curve[-1]) if len(record.val_curve) else math.nan,
                   metric)


def final_test_score(record: EpisodeRecord, metric: str = "balanced_accuracy") -> float:
    """The final test metric of a run (``−ece`` for ``neg_ece``); a diverged run, or a
    non-finite value, scores the metric's worst value."""
    return _scored(record, float(-record.test["ece"] if metric == "neg_ece"
                                 else record.test[metric]), metric)


def policy_from_config(space: str, config: Mapping[str, Any]) -> Policy:
    """A fresh policy from a configuration returned by tuning or search.

    Args:
        space: ``"constant"`` (:func:`constant_rule`), ``"schedule"`` or ``"mixed"``
            (:func:`schedule_rule`), ``"drw"`` (:func:`drw_rule`), ``"ldam_drw"``
            (:func:`ldam_drw_rule`) or ``"feedback"`` (:class:`FeedbackRule`).
        config: the constructor's keyword arguments.
    """
    factories: dict[str, Callable[..., Policy]] = {
        "constant": constant_rule, "schedule": schedule_rule, "mixed": schedule_rule,
        "drw": drw_rule, "feedback": FeedbackRule, "ldam_drw": ldam_drw_rule,
    }
    if space not in factories:
        raise ValueError(f"space={space!r} is not known; choose one of {tuple(factories)}")
    return factories[space](**config)


def evaluate_configs(space: str, configs: Sequence[Mapping[str, Any]], tasks: Sequence[TaskSpec], *,
                     metric: str = "balanced_accuracy", device: str | torch.device = "auto",
                     max_members: int = 256) -> tuple[Table, list[list[EpisodeRecord]]]:
    """Run every configuration on every task as members of one batched rollout.

    Uses exactly ``len(configs) · len(tasks)`` inner training runs.

    Args:
        space: the policy family (see :func:`policy_from_config`).
        configs: the configurations.
        tasks: the tasks each configuration is trained on.
        metric: the validation metric that scores a run.
        device: torch device (``"auto"``: CUDA when available).
        max_members: largest population of one batched rollout.

    Returns:
        one row per configuration (its keys plus ``score``, the mean validation score of
        :func:`final_val_score` over tasks, and ``task_scores``), and the records per
        configuration, in task order.
    """
    tasks = _check_tasks(tasks)
    metric = _check_metric(metric)
    configs = [dict(c) for c in configs]
    policies = [policy_from_config(space, c) for c in configs for _ in tasks]
    records = rollout_members(policies, tasks * len(configs), f"search_{space}", metric,
                              device, max_members)
    n = len(tasks)
    per_config = [records[k * n : (k + 1) * n] for k in range(len(configs))]
    scores = [[final_val_score(r, metric) for r in recs] for recs in per_config]
    return [{**config, "score": float(np.mean(s)), "task_scores": s}
            for config, s in zip(configs, scores)], per_config


def _best(table: Table, keys: Sequence[str], score: str = "score") -> Config:
    """The configuration of the highest-scoring row (the first one on ties)."""
    best = max(range(len(table)), key=lambda i: (table[i][score], -i))
    return {k: table[best][k] for k in keys}


#: The default grids of :func:`grid_search` (each the product of its values, in this order).
GRIDS: dict[str, dict[str, tuple[Any, ...]]] = {
    "drw": {"switch": (0.5, 0.6, 0.7, 0.8, 0.9), "alpha": (0.5, 1.0), "gamma": (0.0,)},
    "feedback": {"eta": (0.5, 1.0, 2.0, 5.0), "margin": (0.0, 0.05), "alpha_max": (1.0,)},
    "constant": {"gamma": (0.0, 0.5, 1.0, 2.0, 3.0, 5.0), "alpha": (0.0, 0.5, 1.0)},
    "ldam_drw": {"scale": (5.0, 10.0, 20.0, 30.0), "switch": (0.7, 0.8)},
}


def grid_search(space: str, tasks: Sequence[TaskSpec], *, select: str = "val",
                metric: str = "balanced_accuracy", device: str | torch.device = "auto",
                max_members: int = 256, **grid: Sequence[Any]) -> tuple[Config, Table]:
    """Grid-tune a rule family (:func:`policy_from_config`: ``"drw"``, ``"feedback"``,
    ``"constant"``, ...) on ``tasks`` by the mean final validation metric, all candidates as
    one batched rollout: ``candidates · len(tasks)`` inner training runs.

    Args:
        space: the family.
        tasks: the tuning (train) tasks.
        select: ``"val"``, or ``"test"`` for the oracle (it peeks at the test split, so it is an
            upper bound, not a baseline: rows then hold ``score`` and ``task_scores`` of the
            test metric and ``val_score``, the validation one).
        metric, device, max_members: as :func:`evaluate_configs`.
        **grid: values per keyword of the family (default :data:`GRIDS`); the candidates are
            their product, in order.

    Returns:
        the best config and the table of scores in grid order.
    """
    if select not in ("val", "test"):
        raise ValueError(f"select={select!r} must be 'val' or 'test'")
    axes = {**GRIDS.get(space, {}), **grid}
    for name, values in axes.items():
        if not list(values):
            raise ValueError(f"the grid of {name} is empty; give at least one value")
    configs = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    for config in configs:
        policy_from_config(space, config)  # names the first value out of range
    table, records = evaluate_configs(space, configs, tasks, metric=metric, device=device,
                                      max_members=max_members)
    if select == "test":
        for row, recs in zip(table, records):
            row["val_score"] = row["score"]
            row["task_scores"] = [final_test_score(r, metric) for r in recs]
            row["score"] = float(np.mean(row["task_scores"]))
    return _best(table, tuple(axes)), table


def _space_keys(space: str, parameters: Sequence[str] = DEFAULT_PARAMETERS
                ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The config keys of a search space, and the searched parameters besides γ and α (held
    constant over a run), checked."""
    params = _check_parameters(parameters, "absolute", ("gamma", "alpha"))
    extra = tuple(p for p in params if p not in ("gamma", "alpha"))
    if space == "constant":
        return ("gamma", "alpha") + extra, extra
    if space in ("schedule", "mixed"):
        return ("gamma_start", "gamma_end", "shape", "drw_switch", "drw_alpha",
                "alpha_start") + extra, extra
    raise ValueError(f"space={space!r} is not known; choose one of {SEARCH_SPACES}")


def _check_budget(budget: int, tasks: list[TaskSpec]) -> int:
    """Candidates that ``budget`` inner runs buy: budget must be a multiple of len(tasks)."""
    budget = checks.integer("budget", budget, 1)
    if budget % len(tasks):
        raise ValueError(f"budget={budget} is invalid: it counts inner training runs "
                         f"(candidates × tasks) and must be a positive multiple of "
                         f"len(tasks)={len(tasks)}")
    return budget // len(tasks)


def random_search(tasks: Sequence[TaskSpec], budget: int, rng: np.random.Generator,
                  space: str = "constant", *, parameters: Sequence[str] = DEFAULT_PARAMETERS,
                  metric: str = "balanced_accuracy", device: str | torch.device = "auto",
                  max_members: int = 256) -> tuple[Config, Table]:
    """Random search over a policy family, scored by mean final validation metric.

    ``budget`` counts inner training runs: each candidate is trained once on every task, so
    ``budget // len(tasks)`` candidates run (budget must be a multiple of len(tasks)), all in
    one batched rollout.

    Spaces (uniform draws): ``"constant"``: γ ∈ [0, 5], α ∈ [0, 1]; ``"schedule"``:
    gamma_start, gamma_end ∈ [0, 5], shape ∈ {linear, cosine} (categorical), drw_switch ∈
    [0, 1], drw_alpha, alpha_start ∈ [0, 1]; ``"mixed"``: each candidate is a constant or a
    schedule with probability 1/2, both as schedule configs (a constant has gamma_start ==
    gamma_end, alpha_start == drw_alpha and drw_switch 0; :func:`best_constant` picks the
    best of them). Every parameter of ``parameters`` besides γ and α (τ, margin,
    scale, ...) is searched too, as a constant uniform over its range, in both spaces.

    Args:
        tasks: the search (train) tasks.
        budget: inner training runs, a positive multiple of ``len(tasks)``.
        rng: source of the candidates; advanced by the call.
        space: ``"constant"``, ``"schedule"`` or ``"mixed"``.
        parameters: the searched loss parameters (γ and α at least): an agent's action set.
        metric, device, max_members: as :func:`evaluate_configs`.

    Returns:
        the best config (``policy_from_config(space, config)``) and the history: one row per
        candidate in draw order, with ``candidate``, the config, ``score`` and ``task_scores``.
    """
    tasks = _check_tasks(tasks)
    keys, extra = _space_keys(space, parameters)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    count = _check_budget(budget, tasks)
    configs: list[Config] = []
    for _ in range(count):  # uniform draws in the unit box, in the order of the keys
        if space == "constant":
            config = _unit_to_config("constant", rng.random(2 + len(extra)), extra)
        elif space == "mixed" and rng.random() < 0.5:  # a constant, as a schedule config
            (gamma, alpha), rest = rng.random(2), rng.random(len(extra))
            config = {**_unit_to_config("schedule", np.r_[gamma, gamma, alpha, 0.0, alpha, rest],
                                        extra), "shape": "linear"}
        else:
            gammas, shape = rng.random(2), SHAPES[int(rng.integers(len(SHAPES)))]
            rest = rng.random(3 + len(extra))  # drw_switch, drw_alpha, alpha_start, extra
            config = {**_unit_to_config("schedule", np.r_[gammas, rest[2], rest[:2], rest[3:]],
                                        extra), "shape": shape}
        configs.append(config)
    table, _ = evaluate_configs(space, configs, tasks, metric=metric, device=device,
                                max_members=max_members)
    history = [{"candidate": k, **row} for k, row in enumerate(table)]
    return _best(history, keys), history


def is_constant_config(config: Mapping[str, Any]) -> bool:
    """Whether a schedule config (``"schedule"``/``"mixed"`` space) is a constant loss."""
    return (config["gamma_start"] == config["gamma_end"]
            and (config["alpha_start"] == config["drw_alpha"]
                 or config["drw_switch"] <= 0.0))


def best_constant(history: Table, parameters: Sequence[str] = DEFAULT_PARAMETERS
                  ) -> Config | None:
    """The best constant of a ``"mixed"`` (or ``"schedule"``) search history, as a
    :func:`constant_rule` config; None when no candidate was a constant."""
    keys, extra = _space_keys("schedule", parameters)
    rows = [row for row in history if is_constant_config(row)]
    if not rows:
        return None
    best = _best(rows, keys)
    alpha = best["drw_alpha"] if best["drw_switch"] <= 0.0 else best["alpha_start"]
    return {"gamma": best["gamma_start"], "alpha": alpha, **{k: best[k] for k in extra}}


def _unit_to_config(space: str, x: np.ndarray, extra: Sequence[str] = ()) -> Config:
    """Map a point of the unit box to a configuration (CMA's genotype → phenotype); the last
    ``len(extra)`` coordinates are the constant parameters ``extra``."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    g_low, g_high = GAMMA_RANGE
    a_low, a_high = ALPHA_RANGE
    if space == "constant":
        config: Config = {"gamma": float(g_low + x[0] * (g_high - g_low)),
                          "alpha": float(a_low + x[1] * (a_high - a_low))}
    else:
        config = {"gamma_start": float(g_low + x[0] * (g_high - g_low)),
                  "gamma_end": float(g_low + x[1] * (g_high - g_low)), "shape": "cosine",
                  "drw_switch": float(x[3]), "drw_alpha": float(a_low + x[4] * (a_high - a_low)),
                  "alpha_start": float(a_low + x[2] * (a_high - a_low))}
    base = len(x) - len(extra)
    for j, name in enumerate(extra):
        low, high, _ = loss_params.ranges()[name]
        config[name] = float(low + x[base + j] * (high - low))
    return config


def default_popsize(candidates: int, dim: int) -> int:
    """CMA population size for ``candidates`` evaluations in ``dim`` dimensions: the largest
    divisor of ``candidates`` in [2, max(4 + ⌊3 ln dim⌋, ⌊candidates / 8⌋)], or
    ``candidates`` itself (one generation) when there is none.

    4 + ⌊3 ln dim⌋ is CMA-ES's default size; a large budget gets larger generations (about 8
    of them), because a generation is one batched rollout and small ones batch poorly (171
    candidates in 8 dimensions: 9 generations of 19 instead of 19 of 9)."""
    cap = max(4 + int(3 * math.log(dim)), candidates // 8)
    divisors = [p for p in range(2, min(cap, candidates) + 1) if candidates % p == 0]
    return max(divisors) if divisors else candidates


def _cma(count: int, budget: int, tasks: int, dim: int, start: float, bound: float, seed: int,
         sigma0: float, popsize: int | None,
         generation: Callable[[list[np.ndarray], int], list[float]]) -> None:
    """CMA-ES (the ``cma`` package, ask/tell) over ``count`` candidates in ``dim`` dimensions
    (starting at ``start`` in each, within [start − bound, start + bound], step ``sigma0``) in
    generations of ``popsize`` (None: :func:`default_popsize`), maximising the scores that
    ``generation(points, index)`` returns. numpy's global random state, which pycma seeds and
    draws from, is restored afterwards."""
    import cma

    if count < 2:
        raise ValueError(f"budget={budget} buys {count} candidate(s) on {tasks} tasks; "
                         f"CMA-ES needs at least 2 (budget >= {2 * tasks})")
    popsize = checks.integer("popsize", default_popsize(count, dim) if popsize is None
                             else popsize, 2)
    if count % popsize:
        raise ValueError(f"popsize={popsize} must divide the {count} candidates that "
                         f"budget={budget} buys on {tasks} tasks")
    state = np.random.get_state()
    try:
        es = cma.CMAEvolutionStrategy([start] * dim, sigma0, {
            "popsize": popsize, "bounds": [start - bound, start + bound], "seed": seed + 1,
            "verbose": -9, "verb_log": 0, "verb_disp": 0})
        for index in range(count // popsize):
            points = es.ask()
            es.tell(points, [-score for score in generation(points, index)])
    finally:
        np.random.set_state(state)


def cma_search(tasks: Sequence[TaskSpec], budget: int, seed: int = 0, space: str = "constant",
               popsize: int | None = None, sigma0: float = 0.3, *,
               parameters: Sequence[str] = DEFAULT_PARAMETERS, metric: str = "balanced_accuracy",
               device: str | torch.device = "auto", max_members: int = 256) -> tuple[Config, Table]:
    """CMA-ES (the ``cma`` package, ask/tell) over a policy family, maximising the mean final
    validation metric.

    ``budget`` counts inner training runs as in :func:`random_search`; the candidates run in
    generations of ``popsize``, a generation one batched rollout. CMA searches the unit box
    (bounds [0, 1], start at its centre, step ``sigma0``), mapped linearly to ``"constant"``:
    (γ ∈ [0, 5], α ∈ [0, 1]) or ``"schedule"``: (gamma_start, gamma_end ∈ [0, 5], alpha_start,
    drw_switch, drw_alpha ∈ [0, 1]) with the cosine shape (which contains the constants), plus
    one coordinate per parameter of ``parameters`` besides γ and α, held constant.
    numpy's global random state, which pycma seeds and draws from, is restored afterwards.

    Args:
        tasks: the search (train) tasks.
        budget: inner training runs, a positive multiple of ``len(tasks)`` that buys at least
            2 candidates.
        seed: int >= 0; pycma gets ``seed + 1`` (it reads 0 as "seed from the clock").
        space: ``"constant"`` or ``"schedule"``.
        parameters: the searched loss parameters (γ and α at least): an agent's action set.
        popsize: candidates per generation, >= 2 and dividing the candidate count; None picks
            :func:`default_popsize`.
        sigma0: initial step size in the unit box, in (0, 1].
        metric, device, max_members: as :func:`evaluate_configs`.

    Returns:
        the best evaluated config (``policy_from_config(space, config)``) and the history: one
        row per candidate with ``candidate``, ``generation``, the config, ``score`` and
        ``task_scores``.
    """
    tasks = _check_tasks(tasks)
    keys, extra = _space_keys(space, parameters)
    seed = checks.integer("seed", seed, 0)
    sigma0 = checks.real("sigma0", sigma0, 0.0, 1.0, open_low=True)
    count = _check_budget(budget, tasks)
    if space == "mixed":
        raise ValueError("space='mixed' is random search's; CMA-ES searches 'constant' or "
                         "'schedule' (which contains the constants)")
    history: Table = []

    def generation(points: list[np.ndarray], index: int) -> list[float]:
        configs = [_unit_to_config(space, x, extra) for x in points]
        table, _ = evaluate_configs(space, configs, tasks, metric=metric, device=device,
                                    max_members=max_members)
        history.extend([{"candidate": len(history) + i, "generation": index, **row}
                        for i, row in enumerate(table)])
        return [row["score"] for row in table]

    _cma(count, budget, len(tasks), (2 if space == "constant" else 5) + len(extra), 0.5, 0.5,
         seed, sigma0, popsize, generation)
    return _best(history, keys), history


def knot_search(tasks: Sequence[TaskSpec], budget: int, seed: int = 0, *, knots: int = 4,
                popsize: int | None = None, sigma0: float = 0.3,
                parameters: Sequence[str] = DEFAULT_PARAMETERS, mode: str = "residual",
                base_rule: LossSchedule | None = None, max_step: float = 0.2,
                metric: str = "balanced_accuracy", device: str | torch.device = "auto",
                max_members: int = 256) -> tuple[Config, Table]:
    """CMA-ES over open-loop action schedules in an agent's own terms (:class:`KnotPolicy`:
    ``knots`` actions per parameter), starting at zero (in residual mode: the base rule),
    maximising the mean final validation metric on ``tasks``; ``budget`` counts inner runs as
    in :func:`random_search`. It is the search a learned schedule must beat: a residual agent
    that plays one schedule has earned its training only if no schedule search of the same
    budget finds a better one. numpy's global random state is restored afterwards.

    Returns:
        the best config, ``{"knots": [d][K]}`` (``KnotPolicy(**config, ...)`` with the same
        action terms), and the history: one row per candidate with ``candidate``,
        ``generation``, ``knots``, ``score`` and ``task_scores``.
    """
    tasks = _check_tasks(tasks)
    seed = checks.integer("seed", seed, 0)
    knots = checks.integer("knots", knots, 2)
    sigma0 = checks.real("sigma0", sigma0, 0.0, 1.0, open_low=True)
    terms = {"parameters": parameters, "mode": mode, "base_rule": base_rule,
             "max_step": max_step}
    d = len(KnotPolicy(np.zeros((len(parameters), knots)), **terms).parameters)
    history: Table = []

    def generation(points: list[np.ndarray], index: int) -> list[float]:
        grids = [np.clip(np.asarray(x).reshape(d, knots), -1.0, 1.0) for x in points]
        records = rollout_members([KnotPolicy(g, **terms) for g in grids for _ in tasks],
                                  [t for _ in grids for t in tasks], "knot_search", metric,
                                  device, max_members)
        scores = np.array([final_val_score(r, metric) for r in records]).reshape(
            len(grids), len(tasks))
        history.extend([{"candidate": len(history) + i, "generation": index, "knots": g.tolist(),
                         "score": float(row.mean()), "task_scores": row.tolist()}
                        for i, (g, row) in enumerate(zip(grids, scores))])
        return [float(row.mean()) for row in scores]

    _cma(_check_budget(budget, tasks), budget, len(tasks), d * knots, 0.0, 1.0, seed, sigma0,
         popsize, generation)
    best = max(history, key=lambda row: row["score"])
    return {"knots": best["knots"]}, history
