"""Is there room for control? (issue 13, target 3): do hand-written closed loops beat their
own task replay?

Target 3 asks the agent's closed loop to beat ``agent_task_replay``: for each run, the mean
trajectory the same policy played on the task's OTHER seeds, replayed open loop on the run's
seed. A policy can only pass where reacting to one run's own training curve is worth more
than a schedule conditioned on the task. This script asks that question of rules whose
reaction is written by hand, on ``--tasks`` base tasks of a distribution's TRAIN split ×
``--seeds`` paired seeds:

* ``feedback_eta{η}``: :class:`agents.baselines.FeedbackRule` (α up while the worst class
  lags the mean recall);
* ``plateau_ce_drw`` and ``plateau_ldam_drw``: CE-DRW and LDAM-DRW whose deferred
  effective-number weights (the loss parameter ``cb``) switch on when the validation balanced
  accuracy has not risen by ``--delta`` for ``--patience`` evaluations (and at ``--latest``
  of training at the latest), instead of at 80 %: a reactive DRW, as ReduceLROnPlateau is a
  reactive step schedule.

Each closed loop is compared, run by run (paired seeds: same pool, initialisation and data
order), with its task replay, and the plateau rules also with the fixed rule they react
around (switch at 0.8). Intervals are 95 % percentile intervals of a stratified bootstrap
(seeds resampled within each task; :func:`agents.stats.stratified_bootstrap_ci`).

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/control_room.py --distribution default \
        --tasks 20 --seeds 5 --out results/control_room
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.baselines import BALANCED_ACCURACY, FeedbackRule, ReplayPolicy, rollout_members
from agents.evaluate import task_replay_actions
from agents.rollout import EpisodeRecord, ScheduleRule, rollout_policy
from agents.stats import stratified_bootstrap_ci
from lossgym import _checks as checks
from lossgym.features import FeatureSpec
from lossgym.methods import make_method

sys.path.insert(0, str(Path(__file__).resolve().parent))
from headroom import (  # noqa: E402
    add_draw_arguments,
    check_draw_arguments,
    draw_runs,
    publish,
    verdict,
)


class PlateauRule:
    """A fixed rule whose ``cb`` (deferred effective-number weights) switches from 0 to 1 at
    the first evaluation where the validation balanced accuracy has not exceeded its best by
    more than ``delta`` for ``patience`` evaluations in a row, or at progress ``latest``.

    Args:
        fixed: the other parameters, constant (e.g. LDAM's margin and scale).
        patience: evaluations without improvement that trigger the switch, >= 1.
        delta: the smallest rise that counts as an improvement.
        latest: the progress at which the weights switch on in any case, in (0, 1].
    """

    mode = "absolute"

    def __init__(self, fixed: dict[str, float], patience: int = 2, delta: float = 0.005,
                 latest: float = 0.9) -> None:
        self.fixed = dict(fixed)
        self.parameters = tuple([*self.fixed, "cb"])
        self.patience, self.delta, self.latest = int(patience), float(delta), float(latest)
        self._obs_dim = FeatureSpec(self.parameters).dim
        self.reset(0)

    def reset(self, num_envs: int) -> None:
        self.best = np.full(num_envs, -np.inf)
        self.stale = np.zeros(num_envs, dtype=int)
        self.on = np.zeros(num_envs, dtype=bool)

    def params(self, obs: np.ndarray, progress: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        if obs.shape != (len(self.on), self._obs_dim):
            raise ValueError(f"obs has shape {obs.shape}; expected [{len(self.on)}, "
                             f"{self._obs_dim}]")
        progress = np.asarray(progress, dtype=np.float64)
        value = obs[:, BALANCED_ACCURACY]
        fresh = progress <= 0
        improved = value > self.best + self.delta
        self.stale = np.where(fresh | improved, 0, self.stale + 1)
        self.best = np.where(fresh, value, np.maximum(self.best, value))
        self.on = ~fresh & (self.on | (self.stale >= self.patience) | (progress >= self.latest))
        out = np.tile([*self.fixed.values(), 0.0], (len(self.on), 1))
        out[:, -1] = self.on.astype(np.float64)
        return out

    def __repr__(self) -> str:
        return (f"PlateauRule({self.fixed}, patience={self.patience}, delta={self.delta:g}, "
                f"latest={self.latest:g})")


def closed_loops(args: argparse.Namespace) -> dict[str, tuple[Any, str | None]]:
    """name → (closed-loop rule, the built-in method it reacts around, or None)."""
    ldam = {"margin": 0.5, "scale": 30.0}
    rules: dict[str, tuple[Any, str | None]] = {
        f"feedback_eta{eta:g}": (FeedbackRule(eta=eta), None) for eta in args.etas}
    rules["plateau_ce_drw"] = (PlateauRule({}, args.patience, args.delta, args.latest),
                               "ce_drw")
    rules["plateau_ldam_drw"] = (PlateauRule(ldam, args.patience, args.delta, args.latest),
                                 "ldam_drw")
    return rules


def replays(rule: Any, records: Sequence[EpisodeRecord]) -> list[ReplayPolicy]:
    """One open-loop replay per run of the rule's leave-one-seed-out mean trajectory."""
    return [ReplayPolicy(a[None], parameters=rule.parameters, mode="absolute")
            for a in task_replay_actions(records)]


def summary(seeds: list[list[int]], a: np.ndarray, b: np.ndarray, rng: np.random.Generator
            ) -> dict[str, Any]:
    """Mean paired difference a − b in points, with its interval over the tasks' seeds (the
    runs are in task order, ``len(seeds[t])`` per task)."""
    diff = 100.0 * (a - b)
    ends = np.cumsum([len(s) for s in seeds])
    low, high = stratified_bootstrap_ci(np.split(diff, ends[:-1]), rng=rng, n_boot=5000)
    return {"mean": float(diff.mean()), "ci": [float(low), float(high)],
            "verdict": verdict((low, high))}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_draw_arguments(p, tasks=20, seeds=5)
    p.add_argument("--etas", type=float, nargs="+", default=[1.0, 5.0])
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--delta", type=float, default=0.005)
    p.add_argument("--latest", type=float, default=0.9)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="results/control_room")
    args = p.parse_args(argv)
    if args.tasks < 1 or args.seeds < 2:
        p.error(f"need --tasks >= 1 and --seeds >= 2 (a task replay leaves one seed out), got "
                f"--tasks {args.tasks} --seeds {args.seeds}")
    check_draw_arguments(p, args)
    try:
        for eta in args.etas:
            checks.real("--etas", eta, 0.0, meaning="a step size")
        checks.integer("--patience", args.patience, 1)
        checks.real("--delta", args.delta, 0.0, meaning="the smallest rise that counts")
        checks.real("--latest", args.latest, 0.0, 1.0, open_low=True,
                    meaning="a progress")
    except ValueError as err:
        p.error(str(err))
    started = time.perf_counter()
    tasks, seeds, runs = draw_runs(args)
    score: dict[str, np.ndarray] = {}
    rules = closed_loops(args)
    for name, (rule, fixed) in rules.items():
        closed = rollout_policy(rule, runs, name, device=args.device)
        replayed = rollout_members(replays(rule, closed), runs, name + "_task_replay",
                                   device=args.device)
        score[name] = np.array([r.test["balanced_accuracy"] for r in closed])
        score[name + "_task_replay"] = np.array([r.test["balanced_accuracy"] for r in replayed])
        if fixed is not None and fixed not in score:
            schedule = make_method(fixed).schedule()
            done = rollout_policy(ScheduleRule(schedule, rule.parameters), runs, fixed,
                                  device=args.device)
            score[fixed] = np.array([r.test["balanced_accuracy"] for r in done])
        print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    boot = np.random.default_rng(12345)
    contrasts = {}
    for name, (_, fixed) in rules.items():
        contrasts[f"{name} − its task replay"] = summary(
            seeds, score[name], score[name + "_task_replay"], boot)
        if fixed is not None:
            contrasts[f"{name} − {fixed} (switch at 0.8)"] = summary(
                seeds, score[name], score[fixed], boot)
    return publish("control_room", argv, args, started, {
        "tasks": [json.loads(t.replace(seed=0).to_json()) for t in tasks], "seeds": seeds,
        "mean_balanced_accuracy": {k: float(100 * v.mean()) for k, v in score.items()},
        "contrasts": contrasts}, render)


def render(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        "# Room for control (issue 13, target 3)", "",
        "```", result["command"], "```", "",
        f"{cfg['tasks']} train-split base tasks of `{cfg['distribution']}` × {cfg['seeds']} "
        f"paired seeds; {result['wall_s'] / 60:.1f} min wall. Each closed-loop hand rule is "
        "compared run by run with its task replay (its mean trajectory on the task's other "
        "seeds, replayed open loop), the contrast of target 3. Test balanced accuracy, points, "
        "mean [95 % stratified-bootstrap CI].", "",
        "| contrast | mean [95 % CI] | verdict |", "|---|---|---|"]
    for name, c in result["contrasts"].items():
        lines.append(f"| {name} | {c['mean']:+.2f} [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] | "
                     f"{c['verdict']} |")
    lines += ["", "Mean test balanced accuracy (%):", "",
              "| rule | mean |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in result["mean_balanced_accuracy"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
