"""Export trained agents and baseline policies as adaptive losses for plain PyTorch training.

    python -m agents.export RUN --kind schedule|controller [--out DIR]
    python -m agents.export --baseline drw --out DIR            (lossgym export does the same)

* ``kind="controller"``: the agent's actor network (from ``policy.pt``, read with
  ``weights_only=True``), its observation normalisation and action mapping, as
  :class:`lossgym.export.Controller`. PPO and RecurrentPPO act with the clipped mean of their
  Gaussian, SAC with ``tanh`` of its mean, as their deterministic ``predict`` does.
* ``kind="schedule"``: the parameters the agent chose on reference tasks (by default the default
  task over 5 seeds), averaged over the tasks. An episode's parameters form a step function
  over progress (step h holds from h/H to (h+1)/H), so their average is again a step function,
  with a boundary wherever any episode changes step: exact, with no resampling.

Hand baselines whose parameters depend on progress alone (constant losses, DRW, the γ/α
schedule) export as their exact schedule, so they hold for any number of steps; feedback and
random policies export as their averaged trajectory, as agents do. Built-in methods that the
parametric loss expresses with constant parameters (cross-entropy, focal, logit adjustment,
Poly-1) export as constants; the others (class-balanced and CE-DRW's effective-number weights,
LDAM-DRW's margins, FLSD-53's per-sample γ, AdaFocal's per-bin γ, AdaLoss, the gradient gate)
export as ``kind="method"``: the manifest names the loss and its hyperparameters, and
:class:`lossgym.export.AdaptiveLoss` applies it as the engine does.
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.torch_layers import FlattenExtractor
from torch import Tensor, nn

from agents.arguments import run_command
from agents.baselines import RULES
from agents.rollout import EpisodeRecord, Policy, ScheduleRule, rollout_policy
from agents.train import AgentPolicy
from lossgym import params as loss_params
from lossgym.actions import ActionMapping, parse_parameters
from lossgym.export import Controller, write_export
from lossgym.features import FeatureSpec, feature_version
from lossgym.methods import METHODS, Parametric, make_method
from lossgym.schedules import LossSchedule, Schedule, constant, step
from lossgym.tasks import TaskSpec

KINDS = ("schedule", "controller")
DEFAULT_SEEDS = 5

def reference_tasks(task: TaskSpec | None = None, seeds: int = DEFAULT_SEEDS) -> list[TaskSpec]:
    """``task`` (default: ``TaskSpec()``) with seeds 0 .. seeds − 1."""
    if seeds < 1:
        raise ValueError(f"seeds={seeds} must be at least 1")
    task = task or TaskSpec()
    return [task.replace(seed=s) for s in range(seeds)]


# ------------------------------------------------------------------------------ schedules
def average_schedule(records: Sequence[EpisodeRecord]) -> LossSchedule:
    """The mean over episodes of the parameters they chose, as a step schedule over progress.

    Episode k with horizon H_k used ``params[h]`` from progress h/H_k to (h+1)/H_k; the
    average is constant between consecutive points of the union of those grids. Diverged
    episodes are left out unless all diverged.

    Args:
        records: episodes of one policy (same controlled parameters).
    """
    records = [r for r in records if not r.diverged] or list(records)
    if not records:
        raise ValueError("records is empty; roll the policy out on at least one task")
    names = {tuple(r.parameters) for r in records}
    if len(names) != 1:
        raise ValueError(f"records control different parameters {sorted(names)}")
    parameters = names.pop()
    grids = [[h / len(r.params) for h in range(1, len(r.params))] for r in records]
    starts = [0.0] + sorted({b for grid in grids for b in grid})
    # values[j, p]: mean over episodes of parameter p on segment j.
    values = np.mean([np.asarray(r.params, dtype=np.float64)[
        [bisect.bisect_right(grid, s) for s in starts]] for r, grid in zip(records, grids)],
        axis=0)
    schedules: dict[str, Schedule] = {}
    for p, name in enumerate(parameters):
        low, high = loss_params.param(name).low, loss_params.param(name).high
        # Parameters are float32 in the engine (0.3 rounds up); the schedule checks the range.
        column = np.clip(values[:, p], low, high).tolist()
        keep = [0] + [j for j in range(1, len(column)) if column[j] != column[j - 1]]
        if len(keep) == 1:
            schedules[name] = constant(column[0])
        else:
            schedules[name] = step([starts[j] for j in keep[1:]], [column[j] for j in keep])
    return LossSchedule(schedules)


# ------------------------------------------------------------------------------ controllers
def _layer(module: nn.Module, index: int, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """One SB3 module as a layer of :class:`lossgym.export.Controller` (its weights go to
    ``tensors``)."""
    for name, value in module.state_dict().items():
        tensors[f"{index}.{name}"] = value.detach().to("cpu", torch.float32).clone()
    if isinstance(module, nn.Linear):
        return {"kind": "linear", "in_features": module.in_features,
                "out_features": module.out_features}
    if isinstance(module, nn.Tanh | nn.ReLU):
        return {"kind": "tanh" if isinstance(module, nn.Tanh) else "relu"}
    if isinstance(module, nn.LSTM) and module.num_layers == 1 and module.bias \
            and not module.bidirectional and not module.batch_first and not module.proj_size:
        return {"kind": "lstm", "input_size": module.input_size,
                "hidden_size": module.hidden_size}
    raise ValueError(f"the actor holds a {module!r}, which lossgym.export cannot express; "
                     "use the default MlpPolicy / MlpLstmPolicy architectures")


def agent_controller(agent: AgentPolicy, mapping: ActionMapping) -> Controller:
    """The actor of a trained agent as a :class:`~lossgym.export.Controller`."""
    policy = agent.model.policy
    if agent.algo == "sac":
        actor = policy.actor
        if actor.use_sde:
            raise ValueError("SAC with gSDE cannot be exported; train with use_sde=False")
        extractor, modules, output = actor.features_extractor, [*actor.latent_pi, actor.mu], "tanh"
    else:
        if policy.squash_output:
            raise ValueError("a policy with squash_output=True cannot be exported")
        extractor = getattr(policy, "pi_features_extractor", policy.features_extractor)
        modules = [*policy.mlp_extractor.policy_net, policy.action_net]
        if agent.recurrent:
            modules.insert(0, policy.lstm_actor)
        output = "clip"
    if not isinstance(extractor, FlattenExtractor):
        raise ValueError(f"the actor's features extractor is {type(extractor).__name__}; "
                         "only FlattenExtractor (the default for vector observations) exports")
    tensors: dict[str, Tensor] = {}
    layers = [_layer(m, i, tensors) for i, m in enumerate(modules)]
    return Controller(layers, tensors, mapping, output, agent.norm, agent.algo,
                      feature_version(agent.context_features, agent.progress_basis),
                      agent.base_rule)


def run_mapping(run_dir: str | Path) -> ActionMapping:
    """The action mapping a run trained with (from its ``config.json``)."""
    config = json.loads((Path(run_dir) / "config.json").read_text())
    env_kwargs = dict(config["hyperparams"].get("env_kwargs") or {})
    return ActionMapping(parse_parameters(env_kwargs.get("action_params", ("gamma", "alpha"))),
                         env_kwargs.get("action_mode", "absolute"),
                         float(env_kwargs.get("max_step", 0.1)))


def run_features(run_dir: str | Path) -> FeatureSpec:
    """The observation a run trained on (from its ``config.json``; runs that name no
    features version observed version 1, as :class:`agents.train.AgentPolicy` reads them)."""
    config = json.loads((Path(run_dir) / "config.json").read_text())
    env_kwargs = dict(config["hyperparams"].get("env_kwargs") or {})
    return FeatureSpec(run_mapping(run_dir).parameters,
                       feature_version(bool(env_kwargs.get("context_features", False)),
                                       bool(env_kwargs.get("progress_basis", False))))


# ------------------------------------------------------------------------------ exports
def export_run(run_dir: str | Path, kind: str = "controller", out: str | Path | None = None,
               tasks: Sequence[TaskSpec] | None = None, device: str = "auto") -> Path:
    """Export a training run (``agents.train``'s run folder) as an adaptive loss.

    Args:
        run_dir: the run folder.
        kind: ``"controller"`` (the actor network) or ``"schedule"`` (its averaged
            parameter trajectory on ``tasks``).
        out: the export folder (default ``run_dir/adaptive_loss``).
        tasks: reference tasks (default :func:`reference_tasks`); their first horizon is the
            export's default ``total_steps``.
        device: where the schedule's reference episodes train.

    Returns:
        the export folder.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not known; choose one of {KINDS}")
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"{run_dir} is not a training run: it has no config.json")
    tasks = list(tasks) if tasks is not None else reference_tasks()
    agent = AgentPolicy(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    source = {"run": str(run_dir), "algorithm": agent.algo,
              "num_timesteps": config.get("num_timesteps")}
    if kind == "controller":
        rule: LossSchedule | Controller = agent_controller(agent, run_mapping(run_dir))
    else:
        rule = average_schedule(rollout_policy(agent, tasks, agent.algo, device=device))
        source["tasks"] = [t.to_dict() for t in tasks]
    return write_export(rule, out or run_dir / "adaptive_loss", total_steps=tasks[0].horizon,
                        source=source)


def export_policy(policy: Policy, out: str | Path, tasks: Sequence[TaskSpec] | None = None,
                  name: str = "policy", device: str = "auto") -> Path:
    """Export any policy as a schedule: exact for a schedule rule (the progress-only hand
    rules), else its averaged trajectory on ``tasks``."""
    tasks = list(tasks) if tasks is not None else reference_tasks()
    schedule = policy.schedule if isinstance(policy, ScheduleRule) else None
    source: dict[str, Any] = {"policy": name, "description": repr(policy)}
    if schedule is None:
        schedule = average_schedule(rollout_policy(policy, tasks, name, device=device))
        source["tasks"] = [t.to_dict() for t in tasks]
    return write_export(schedule, out, total_steps=tasks[0].horizon, source=source)


def export_baseline(name: str, out: str | Path, tasks: Sequence[TaskSpec] | None = None,
                    device: str = "auto") -> Path:
    """Export the baseline ``name``: a rule of :data:`agents.baselines.RULES` or a built-in
    method of :data:`lossgym.methods.METHODS`. Methods the parametric loss expresses export
    as constant schedules, the others as ``kind="method"`` (the method object's own
    :meth:`~lossgym.methods.LossMethod.to_dict`) with the first reference task's horizon and
    minibatches per step."""
    if name in RULES:
        return export_policy(RULES[name](), out, tasks, name, device)
    if name not in METHODS:
        if name == "class_balanced":
            raise ValueError(f"baseline {name!r} is now cb_power (power-law weights) or "
                             f"cb_effective (effective-number weights)")
        make_method(name)  # names the new name of a renamed method
        raise ValueError(f"baseline {name!r} is not known; choose a rule {sorted(RULES)} or "
                         f"a built-in method {sorted(METHODS)}")
    method = make_method(name)
    task = list(tasks)[0] if tasks else TaskSpec()
    if not isinstance(method, Parametric):
        return write_export(method, out, total_steps=task.horizon, source={"method": name},
                            minibatches_per_step=task.minibatches_per_step)
    schedule = LossSchedule({k: constant(v) for k, v in method.values.items()}
                            or {"gamma": constant(0.0)})
    return write_export(schedule, out, total_steps=task.horizon, source={"method": name})


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``lossgym export`` (``python -m agents.export``)."""
    parser.add_argument("run_dir", nargs="?", default=None, metavar="RUN",
                        help="a training run folder")
    parser.add_argument("--baseline", default=None,
                        help="export a baseline instead: a hand baseline (drw, schedule, "
                             "feedback, ce, focal_2, cb_power, ...) or a built-in method "
                             "(logit_adjusted, poly1, ldam_drw, ce_drw, cb_effective, "
                             "flsd53, adafocal, adaloss, gradient_gate, the β grid "
                             "cb_beta0.9 ... cb_beta0.9999); needs --out")
    parser.add_argument("--kind", default=None, choices=KINDS,
                        help="controller (the actor network, the default for runs) or "
                             "schedule (its averaged parameter trajectory)")
    parser.add_argument("--out", default=None, help="the export folder (default "
                                                    "RUN/adaptive_loss)")
    parser.add_argument("--task", default=None,
                        help="a TaskSpec JSON file: the reference task (default TaskSpec())")
    parser.add_argument("--seeds", type=int, default=5, help="reference seeds (default 5)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")


def main(argv: Sequence[str] | None = None) -> int:
    """``lossgym export`` / ``python -m agents.export``: export a run or a baseline (see the
    module docstring); bad input exits with status 2 and a message."""
    parser = argparse.ArgumentParser(prog="lossgym export", description=__doc__.splitlines()[0])
    add_export_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(lambda: f"wrote {run_from_args(args)}", "lossgym export")


def run_from_args(args: argparse.Namespace) -> Path:
    """Run an export from parsed :func:`add_export_arguments` arguments."""
    task = TaskSpec.from_json(Path(args.task).read_text()) if args.task else None
    tasks = reference_tasks(task, args.seeds)
    if (args.run_dir is None) == (args.baseline is None):
        raise ValueError("give a run folder or --baseline NAME (one of them)")
    if args.baseline is not None:
        if args.out is None:
            raise ValueError("--baseline needs --out DIR")
        if args.kind == "controller":
            raise ValueError("baselines have no network; they export as a schedule or, for "
                             "built-in methods outside the parametric loss, as a method")
        return export_baseline(args.baseline, args.out, tasks, args.device)
    return export_run(args.run_dir, args.kind or "controller", args.out, tasks, args.device)


if __name__ == "__main__":
    sys.exit(main())
