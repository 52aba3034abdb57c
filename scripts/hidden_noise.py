"""Room for control where the run hides something (issue 13, target 3): label noise that the
user does not know.

On the default distribution a closed loop has little to react to: the paired seeds of one base
task differ only in their subsample, initialisation and data order, so a task-conditioned
schedule (the task replay of target 3) already knows all there is to know
(``results/control_room``). Here each base task's seeds get different label-noise rates
(``--levels``, cycled over the seeds), and the task replay is taken over the other seeds of the
base task *whatever their noise*, as a user who does not know the noise rate would have to
choose. A closed loop can beat it only by reading the noise off its own run.

The study asks, around a fixed base rule (``--base``, e.g. LDAM-DRW) and one noise knob
(``--knob``, e.g. the gradient gate or label smoothing), at ``--values``:

1. **oracle room**: the knob's best constant per noise level (chosen on validation over the
   tasks) minus its best single constant (chosen on validation over all runs), both on test:
   what knowing the noise is worth;
2. **signal**: how well the run's own curves tell the levels apart: the feature
   ``ln(train loss) − ln(val loss)`` of the base rule's runs at each step, per level;
3. **closed loop**: :class:`NoiseGate` sets the knob to its high value from the first step
   where that feature exceeds ``--threshold`` (after ``--earliest`` of training), else keeps
   the low value, and is compared run by run with its task replay and with both constants.

Intervals are 95 % stratified-bootstrap intervals (seeds resampled within base tasks).

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/hidden_noise.py --tasks 12 --seeds 6 \\
        --out results/hidden_noise
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

from agents.baselines import ReplayPolicy, rollout_members
from agents.rollout import EpisodeRecord, group_tasks, rollout_policy
from agents.stats import stratified_bootstrap_ci
from lossgym import params as loss_params
from lossgym.features import FeatureSpec
from lossgym.methods import make_method
from lossgym.schedules import LossSchedule
from lossgym.tasks import TaskSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from headroom import add_draw_arguments, draw_runs, publish, verdict  # noqa: E402

TRAIN_LOSS, VAL_LOSS = 1, 2  # feature indices (lossgym.features.BASE_FEATURES)


class KnobRule:
    """A base schedule with one more parameter, the knob, set by :meth:`knob` (a constant
    here); it logs each population's observations for the signal analysis."""

    mode = "absolute"

    def __init__(self, base: LossSchedule, knob: str, value: float) -> None:
        self.base, self.knob, self.value = base, knob, float(value)
        self.parameters = tuple(dict.fromkeys([*base.parameters, knob]))
        self._dim = FeatureSpec(self.parameters).dim
        self.logs: list[list[np.ndarray]] = []
        self.reset(0)

    def reset(self, num_envs: int) -> None:
        self.logs.append([])
        self.n = num_envs

    def knob_values(self, obs: np.ndarray, progress: np.ndarray) -> np.ndarray:
        return np.full(len(progress), self.value)

    def params(self, obs: np.ndarray, progress: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        if obs.shape != (self.n, self._dim):
            raise ValueError(f"obs has shape {obs.shape}; expected [{self.n}, {self._dim}]")
        self.logs[-1].append(obs.copy())
        neutral = loss_params.neutral()
        rows = [self.base(float(t)) for t in np.asarray(progress, dtype=np.float64)]
        out = np.array([[row.get(p, neutral[p]) for p in self.parameters] for row in rows])
        out[:, self.parameters.index(self.knob)] = self.knob_values(obs, progress)
        return out

    def observations(self, runs: Sequence[TaskSpec]) -> np.ndarray:
        """The logged observations ``[runs, steps, features]`` in run order (the local
        executor runs populations in :func:`group_tasks` order, one reset each)."""
        chunks = group_tasks(runs)
        logs = [log for log in self.logs if log]
        if len(logs) != len(chunks):
            raise RuntimeError(f"{len(logs)} logged populations for {len(chunks)} groups")
        out: list[np.ndarray | None] = [None] * len(runs)
        for ids, log in zip(chunks, logs):
            steps = np.stack(log, axis=1)  # [members, steps, features]
            for row, i in enumerate(ids):
                out[i] = steps[row]
        return np.stack(out)  # type: ignore[arg-type]


class NoiseGate(KnobRule):
    """The knob at ``high`` from the first step (at progress >= ``earliest``) where
    ln(train loss) − ln(val loss) exceeds ``threshold``, latched; ``low`` before and
    otherwise: a closed loop that reads the label noise off the run."""

    def __init__(self, base: LossSchedule, knob: str, low: float, high: float,
                 threshold: float, earliest: float) -> None:
        super().__init__(base, knob, low)
        self.low, self.high = float(low), float(high)
        self.threshold, self.earliest = float(threshold), float(earliest)

    def reset(self, num_envs: int) -> None:
        super().reset(num_envs)
        self.on = np.zeros(num_envs, dtype=bool)

    def knob_values(self, obs: np.ndarray, progress: np.ndarray) -> np.ndarray:
        gap = obs[:, TRAIN_LOSS] - obs[:, VAL_LOSS]
        self.on = (progress > 0) & (self.on | ((progress >= self.earliest)
                                               & (gap > self.threshold)))
        return np.where(self.on, self.high, self.low)


def hidden_runs(args: argparse.Namespace) -> tuple[list[TaskSpec], list[list[int]],
                                                   list[TaskSpec], np.ndarray]:
    """The draw of :func:`headroom.draw_runs` with the i-th seed of each base task at noise
    ``levels[i % len(levels)]``; also each run's level."""
    tasks, seeds, _ = draw_runs(args)
    tasks = [t.replace(label_noise=0.0) for t in tasks]
    runs, levels = [], []
    for task, ss in zip(tasks, seeds):
        for i, s in enumerate(ss):
            level = args.levels[i % len(args.levels)]
            runs.append(task.replace(seed=s, label_noise=level))
            levels.append(level)
    return tasks, seeds, runs, np.array(levels)


def hidden_replay(records: Sequence[EpisodeRecord], per_task: int) -> list[np.ndarray]:
    """Each run's leave-one-seed-out mean trajectory over the other seeds of its base task,
    whatever their noise (runs in task order, ``per_task`` each)."""
    actions = np.stack([r.actions for r in records])
    out = []
    for i in range(len(records)):
        start = (i // per_task) * per_task
        others = [j for j in range(start, start + per_task) if j != i]
        out.append(actions[others].mean(axis=0))
    return out


def contrast(a: np.ndarray, b: np.ndarray, per_task: int, rng: np.random.Generator
             ) -> dict[str, Any]:
    diff = 100.0 * (np.asarray(a) - np.asarray(b))
    low, high = stratified_bootstrap_ci(np.split(diff, len(diff) // per_task), rng=rng,
                                        n_boot=5000)
    return {"mean": float(diff.mean()), "ci": [float(low), float(high)],
            "verdict": verdict((low, high))}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_draw_arguments(p, tasks=12, seeds=6)
    p.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.2, 0.4])
    p.add_argument("--base", default="ldam_drw", help="a built-in method with a schedule")
    p.add_argument("--knob", default="gate", choices=loss_params.names())
    p.add_argument("--values", type=float, nargs="+", default=[0.0, -2.5, -5.0])
    p.add_argument("--threshold", type=float, default=None,
                   help="the closed loop's gap threshold (default: midway between the "
                        "lowest and the highest level's mean gap at --earliest)")
    p.add_argument("--earliest", type=float, default=0.25)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="results/hidden_noise")
    args = p.parse_args(argv)
    if args.seeds < 2 * len(args.levels):
        p.error(f"--seeds {args.seeds}: need at least 2 seeds per level "
                f"({2 * len(args.levels)} for --levels {args.levels})")
    for v in args.values:
        loss_params.param(args.knob).check(v, f"--values {v:g}")
    schedule = make_method(args.base).schedule()
    if schedule is None:
        p.error(f"--base {args.base!r} has no schedule; choose a parametric method")
    started = time.perf_counter()
    tasks, seeds, runs, levels = hidden_runs(args)
    per_task = args.seeds

    val, test, obs = {}, {}, {}
    for v in args.values:
        rule = KnobRule(schedule, args.knob, v)
        done = rollout_policy(rule, runs, f"{args.knob}={v:g}", device=args.device)
        val[v] = np.array([r.val_curve[-1] for r in done])
        test[v] = np.array([r.test["balanced_accuracy"] for r in done])
        obs[v] = rule.observations(runs)
        print(f"{args.knob}={v:g}: {time.perf_counter() - started:.0f} s", file=sys.stderr,
              flush=True)

    # 1. What knowing the noise is worth.
    names = list(args.values)
    single = names[int(np.argmax([val[v].mean() for v in names]))]
    oracle_choice = {lv: names[int(np.argmax([val[v][levels == lv].mean() for v in names]))]
                     for lv in args.levels}
    oracle = np.array([test[oracle_choice[lv]][i] for i, lv in enumerate(levels)])
    boot = np.random.default_rng(12345)

    # 2. The signal: the base rule's gap per level, at each step.
    neutral_value = loss_params.param(args.knob).neutral
    ref = neutral_value if neutral_value in obs else names[0]
    gap = obs[ref][:, :, TRAIN_LOSS] - obs[ref][:, :, VAL_LOSS]  # [runs, steps]
    horizon = gap.shape[1]
    step = min(horizon - 1, int(np.ceil(args.earliest * horizon)))
    by_level = {lv: gap[levels == lv].mean(axis=0) for lv in args.levels}
    threshold = args.threshold if args.threshold is not None else float(
        (by_level[min(args.levels)][step] + by_level[max(args.levels)][step]) / 2)
    separable = {lv: float((gap[levels == lv, step] > threshold).mean()) for lv in args.levels}

    # 3. The closed loop between the neutral-most and the strongest value.
    low = min(names, key=lambda v: abs(v - neutral_value))
    high = max(names, key=lambda v: abs(v - neutral_value))
    gate = NoiseGate(schedule, args.knob, low, high, threshold, args.earliest)
    closed = rollout_policy(gate, runs, "noise_gate", device=args.device)
    replayed = rollout_members([ReplayPolicy(a[None], parameters=gate.parameters,
                                             mode="absolute")
                                for a in hidden_replay(closed, per_task)],
                               runs, "noise_gate_task_replay", device=args.device)
    closed_test = np.array([r.test["balanced_accuracy"] for r in closed])
    replay_test = np.array([r.test["balanced_accuracy"] for r in replayed])
    switched = np.array([r.params[-1, gate.parameters.index(args.knob)] == high
                         for r in closed])

    contrasts = {
        "oracle per level − best single constant": contrast(oracle, test[single], per_task,
                                                              boot),
        "noise_gate − its task replay": contrast(closed_test, replay_test, per_task, boot),
        f"noise_gate − {args.knob}={single:g} (best single)": contrast(
            closed_test, test[single], per_task, boot),
        f"noise_gate − {args.knob}={low:g}": contrast(closed_test, test[low], per_task, boot),
        f"noise_gate − {args.knob}={high:g}": contrast(closed_test, test[high], per_task,
                                                        boot),
    }
    means = {f"{args.knob}={v:g}": {f"{lv:g}": float(100 * test[v][levels == lv].mean())
                                     for lv in args.levels} for v in names}
    means["noise_gate"] = {f"{lv:g}": float(100 * closed_test[levels == lv].mean())
                           for lv in args.levels}
    means["noise_gate_task_replay"] = {f"{lv:g}": float(100 * replay_test[levels == lv].mean())
                                       for lv in args.levels}
    return publish("hidden_noise", argv, args, started, {
        "tasks": [json.loads(t.replace(seed=0).to_json()) for t in tasks], "seeds": seeds,
        "levels": levels.tolist(), "single": single,
        "oracle_choice": {f"{k:g}": v for k, v in oracle_choice.items()},
        "gap_by_level": {f"{k:g}": v.tolist() for k, v in by_level.items()},
        "gap_step": step, "threshold": threshold, "above_threshold": {
            f"{k:g}": v for k, v in separable.items()},
        "switched_by_level": {f"{lv:g}": float(switched[levels == lv].mean())
                              for lv in args.levels},
        "mean_by_level": means, "contrasts": contrasts}, render)


def render(result: dict[str, Any]) -> str:
    cfg = result["config"]
    knob = cfg["knob"]
    lines = [
        "# Room for control under hidden label noise (issue 13, target 3)", "",
        "```", result["command"], "```", "",
        f"{cfg['tasks']} train-split base tasks of `{cfg['distribution']}` × {cfg['seeds']} "
        f"paired seeds, the seeds cycling through label noise {cfg['levels']} (hidden: the "
        f"task replay averages over all of a task's other seeds); base rule `{cfg['base']}`, "
        f"knob `{knob}` at {cfg['values']}; {result['wall_s'] / 60:.1f} min wall. Test "
        "balanced accuracy, points, mean [95 % stratified-bootstrap CI].", "",
        "| contrast | mean [95 % CI] | verdict |", "|---|---|---|"]
    for name, c in result["contrasts"].items():
        lines.append(f"| {name} | {c['mean']:+.2f} [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] | "
                     f"{c['verdict']} |")
    levels = list(next(iter(result["mean_by_level"].values())))
    lines += ["", f"Best single constant (on validation): `{knob}={result['single']:g}`; "
              "best per level: " + ", ".join(f"noise {k}: {v:g}"
                                             for k, v in result["oracle_choice"].items()) + ".",
              "", "Mean test balanced accuracy (%) by noise level:", "",
              "| rule | " + " | ".join(f"noise {lv}" for lv in levels) + " |",
              "|---|" + "---|" * len(levels)]
    lines += [f"| {k} | " + " | ".join(f"{v[lv]:.2f}" for lv in levels) + " |"
              for k, v in result["mean_by_level"].items()]
    step = result["gap_step"]
    lines += ["", f"The signal, ln(train loss) − ln(val loss) of the base rule's runs at step "
              f"{step}, mean by level: " + ", ".join(
                  f"{k}: {v[step]:+.3f}" for k, v in result["gap_by_level"].items())
              + f"; threshold {result['threshold']:+.3f}; share of runs above it: " + ", ".join(
                  f"{k}: {v:.2f}" for k, v in result["above_threshold"].items())
              + "; share of the closed loop's runs that switched: " + ", ".join(
                  f"{k}: {v:.2f}" for k, v in result["switched_by_level"].items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
