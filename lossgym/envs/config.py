"""The configuration of LossTuning-v0: one validated dataclass for the single and the vector env.

:class:`LossTuningEnv` and :class:`LossTuningVectorEnv` take the fields below as keyword
arguments (``gym.make("LossTuning-v0", metric="macro_f1")``) or a whole
``config=LossTuningConfig(...)``. Every field is checked here, once: a bad value raises
``ValueError`` naming the argument, the value and what is allowed. A new option is one field
with its docstring and its check in ``_CHECKS``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import torch

from lossgym import _checks as checks
from lossgym import params as loss_params
from lossgym.actions import ACTION_MODES, ActionMapping, parse_parameters
from lossgym.envs.core import METRICS, REWARD_BASELINES, EpisodeBatch, TaskSource, as_task
from lossgym.population import resolve_device
from lossgym.schedules import LossSchedule, constant
from lossgym.tasks import TASK_SPLITS, TaskDistribution, TaskSpec

RENDER_MODES = ("ansi", "rgb_array")
#: The base rule where one is needed and none is given: logit adjustment (τ = 1).
DEFAULT_BASE_RULE = LossSchedule({"tau": constant(1.0)})


@dataclass(frozen=True)
class LossTuningConfig:
    """What an episode is and how the agent acts on it (see :class:`LossTuningEnv`)."""

    tasks: TaskSpec | TaskDistribution | None = None
    """a TaskSpec (a fresh inner seed each episode), a TaskDistribution, a TaskSpec as a dict
    or a dataset name; None: ``TaskDistribution.default()``."""
    split: str = "train"
    """the distribution split episodes are drawn from."""
    action_params: tuple[str, ...] = ("gamma", "alpha")
    """the controlled loss parameters, in action order (a sequence or "gamma,alpha")."""
    action_mode: str = "absolute"
    """"absolute" sets the parameters, "delta" moves them by at most ``max_step``, "residual"
    sets them to the base rule's plus at most ``max_step`` (zero action: the base rule)."""
    max_step: float = 0.1
    """in delta and residual mode, the largest move as a fraction of a parameter's range."""
    metric: str = "balanced_accuracy"
    """the validation metric whose change is the reward."""
    reward_baseline: str = "none"
    """"paired": the reward is the gain over a cross-entropy twin on the same task, seed, pool,
    initialisation and data order; "base": over a twin that trains with the base rule."""
    base_rule: LossSchedule | None = None
    """the base rule of residual actions and of the "base" twin: a LossSchedule, its dict, or
    the name of a built-in method the parametric loss expresses (e.g. "logit_adjusted");
    None: logit adjustment where one is needed (:data:`DEFAULT_BASE_RULE`)."""
    context_features: bool = True
    """observe the training set-up (features version 2); False: version 1."""
    progress_basis: bool = False
    """also observe a piecewise-linear basis of progress (features version 3; needs
    ``context_features``), so that a linear policy can play a piecewise-linear schedule."""
    divergence_penalty: float = 1.0
    """the reward's negative when the inner training diverges."""
    device: str | torch.device = "auto"
    """where the inner classifiers train ("auto" picks CUDA when available)."""
    eval_chunk: int = 1024
    """evaluation batch size (memory only, never the results)."""
    render_mode: str | None = None
    """None, "ansi" (a status line) or "rgb_array" (a small image of the episode so far)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _CHECKS[f.name](getattr(self, f.name)))

    @classmethod
    def build(cls, config: LossTuningConfig | None = None, **options: Any) -> LossTuningConfig:
        """``config`` (or the defaults) with ``options`` replacing its fields."""
        if config is not None and not isinstance(config, LossTuningConfig):
            raise ValueError(f"config={config!r} is invalid: must be a LossTuningConfig or None")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"unknown LossTuning-v0 argument(s) {unknown}; known: {known}")
        if config is None:
            return cls(**options)
        return dataclasses.replace(config, **options) if options else config

    def mapping(self) -> ActionMapping:
        """The action mapping of this configuration."""
        return ActionMapping(self.action_params, self.action_mode, self.max_step)

    def task_source(self) -> TaskSource:
        return TaskSource(self.tasks, self.split)

    def episode_batch(self, num_envs: int) -> EpisodeBatch:
        """The episode logic of ``num_envs`` envs under this configuration."""
        base = self.base_rule
        if base is None and (self.reward_baseline == "base" or self.action_mode == "residual"):
            base = DEFAULT_BASE_RULE
        return EpisodeBatch(num_envs, self.mapping(), self.metric, self.reward_baseline,
                            self.divergence_penalty, self.device, self.eval_chunk, base,
                            self.context_features, self.progress_basis)


# ------------------------------------------------------------------------------ the checks
def _choice(name: str, choices: tuple[str, ...]) -> Any:
    def check(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"{name}={value!r} is invalid: must be one of {list(choices)}")
        return value
    return check


def _tasks(value: object) -> TaskSpec | TaskDistribution:
    if value is None:
        return TaskDistribution.default()
    if isinstance(value, TaskDistribution):
        return value
    if isinstance(value, TaskSpec | dict | str):
        return as_task(value)
    raise ValueError(f"tasks={value!r} is invalid: must be a TaskSpec, a TaskDistribution, a "
                     "TaskSpec's dict, a dataset name or None")


def _action_params(value: object) -> tuple[str, ...]:
    names = loss_params.names()
    if isinstance(value, str) or (isinstance(value, list | tuple)
                                  and all(isinstance(v, str) for v in value)):
        params = parse_parameters(value)
        ActionMapping(params)  # names each unknown or repeated parameter
        return params
    raise ValueError(f"action_params={value!r} is invalid: must be a sequence of names from "
                     f"{names} or one comma-separated string of them")


def _device(value: object) -> str | torch.device:
    resolve_device(value)  # checked now; "auto" is resolved when the env is built
    return value  # type: ignore[return-value]


def _base_rule(value: object) -> LossSchedule | None:
    if value is None or isinstance(value, LossSchedule):
        return value
    if isinstance(value, dict):
        return LossSchedule.from_dict(value)
    if isinstance(value, str):
        from lossgym.methods import make_method

        schedule = make_method(value).schedule()
        if schedule is None:
            raise ValueError(f"base_rule={value!r} is not a rule of the parametric loss; pass "
                             "a LossSchedule (e.g. a tuned DRW schedule) instead")
        return schedule
    raise ValueError(f"base_rule={value!r} is invalid: must be a LossSchedule, its dict, a "
                     "built-in method name or None")


def _flag(name: str) -> Any:
    def check(value: object) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} is invalid: must be True or False")
        return value
    return check


def _render_mode(value: object) -> str | None:
    if value is not None and value not in RENDER_MODES:
        raise ValueError(f"render_mode={value!r} is invalid: must be None or one of "
                         f"{list(RENDER_MODES)}")
    return value


_CHECKS = {
    "tasks": _tasks,
    "split": _choice("split", TASK_SPLITS),
    "action_params": _action_params,
    "action_mode": _choice("action_mode", ACTION_MODES),
    "max_step": partial(checks.real, "max_step", low=0.0, high=1.0, open_low=True,
                        meaning="the largest move as a fraction of a parameter's range"),
    "metric": _choice("metric", METRICS),
    "reward_baseline": _choice("reward_baseline", REWARD_BASELINES),
    "base_rule": _base_rule,
    "context_features": _flag("context_features"),
    "progress_basis": _flag("progress_basis"),
    "divergence_penalty": partial(checks.real, "divergence_penalty", low=0.0),
    "device": _device,
    "eval_chunk": partial(checks.integer, "eval_chunk", low=1),
    "render_mode": _render_mode,
}
