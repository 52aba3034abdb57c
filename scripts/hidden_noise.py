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
3. **closed loop**: :class:`NoiseDetector` plays the best single constant until ``--at`` of
   training, then classifies the run's feature to the nearest level (level means measured on
   the *other* base tasks' runs) and plays that level's best value (on validation) to the
   end. It is compared run by run with its task replay (the mean of what it played on the
   other seeds of the same base task), with the best single constant and with the oracle.
   Where every level's best value is the same, it is that constant and its contrasts are zero
   by construction.

With ``--policy RUN_DIR`` the study runs a trained agent instead: its closed loop against its
task replay (noise hidden as above) and against its base rule, with its mean loss parameters by
noise level. ``--split held_out_id`` draws the base tasks and seeds from the held-out split.

Intervals are 95 % stratified-bootstrap intervals (seeds resampled within base tasks).

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/hidden_noise.py --tasks 12 --seeds 6 \\
        --knob scale --values 3 10 --levels 0 0.4 --at 0.3 --out results/hidden_noise/scale
    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/hidden_noise.py --split held_out_id \\
        --levels 0 0.4 --policy results/es-noisy-linear --out ...
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
from agents.evaluate import action_terms, hidden_noise_base_task, task_replay_actions
from agents.rollout import ScheduleRule, group_tasks, rollout_policy
from agents.stats import stratified_bootstrap_ci
from agents.train import AgentPolicy
from lossgym import _checks as checks
from lossgym import params as loss_params
from lossgym.features import FeatureSpec
from lossgym.methods import make_method
from lossgym.schedules import LossSchedule
from lossgym.tasks import TaskSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from headroom import (  # noqa: E402
    add_draw_arguments,
    check_draw_arguments,
    draw_runs,
    publish,
    verdict,
)

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


class NoiseDetector(KnobRule):
    """A closed loop that reads the label noise off its own run: the knob at ``before`` until
    progress ``at``; there it classifies the run's ln(train loss) − ln(val loss) to the
    nearest of ``means`` (one per noise level) and plays that level's ``choices`` value to the
    end. One instance per run (:class:`agents.baselines.PerMemberPolicy`), so that each run's
    detector can be calibrated without its own task."""

    def __init__(self, base: LossSchedule, knob: str, before: float, at: float,
                 means: Sequence[float], choices: Sequence[float]) -> None:
        super().__init__(base, knob, before)
        if len(means) != len(choices) or not means:
            raise ValueError(f"means {list(means)} and choices {list(choices)} need one "
                             "entry per noise level")
        self.before, self.at = float(before), float(at)
        self.means, self.choices = np.asarray(means, float), np.asarray(choices, float)

    def reset(self, num_envs: int) -> None:
        super().reset(num_envs)
        self.level = np.full(num_envs, -1)

    def knob_values(self, obs: np.ndarray, progress: np.ndarray) -> np.ndarray:
        gap = obs[:, TRAIN_LOSS] - obs[:, VAL_LOSS]
        nearest = np.abs(gap[:, None] - self.means[None]).argmin(axis=1)
        self.level = np.where(progress <= 0, -1, self.level)
        decide = (self.level < 0) & (progress >= self.at - 1e-9)
        self.level = np.where(decide, nearest, self.level)
        return np.where(self.level >= 0, self.choices[np.maximum(self.level, 0)],
                        self.before)


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


def contrast(a: np.ndarray, b: np.ndarray, per_task: int, rng: np.random.Generator
             ) -> dict[str, Any]:
    diff = 100.0 * (np.asarray(a) - np.asarray(b))
    low, high = stratified_bootstrap_ci(np.split(diff, len(diff) // per_task), rng=rng,
                                        n_boot=5000)
    return {"mean": float(diff.mean()), "ci": [float(low), float(high)],
            "verdict": verdict((low, high))}


def agent_study(agent: AgentPolicy, runs: Sequence[TaskSpec], levels: np.ndarray,
                per_task: int, device: str) -> dict[str, Any]:
    """A trained agent on the hidden-noise runs: its closed loop against its task replay (the
    mean of what it played on the other seeds of the same base task, whatever their noise,
    replayed open loop) and against its base rule (its zero action), run by run."""
    closed = rollout_policy(agent, runs, "agent", device=device)
    outcomes = {"agent": closed, "agent_task_replay": rollout_members(
        [ReplayPolicy(a[None], **action_terms(agent))
         for a in task_replay_actions(closed, hidden_noise_base_task)],
        runs, "agent_task_replay", device=device)}
    if agent.base_rule is not None:
        outcomes["base_rule"] = rollout_policy(ScheduleRule(agent.base_rule, agent.parameters),
                                               runs, "base_rule", device=device)
    test = {k: np.array([r.test["balanced_accuracy"] for r in v]) for k, v in outcomes.items()}
    boot = np.random.default_rng(12345)
    return {"agent": {"parameters": list(agent.parameters), "mode": agent.mode},
            "contrasts": {f"agent − {k}": contrast(test["agent"], v, per_task, boot)
                          for k, v in test.items() if k != "agent"},
            "mean_by_level": {k: {f"{lv:g}": float(100 * v[levels == lv].mean())
                                  for lv in np.unique(levels)} for k, v in test.items()},
            "mean_params_by_level": {f"{lv:g}": np.stack(
                [r.params for r, l in zip(closed, levels) if l == lv]).mean(axis=0).tolist()
                for lv in np.unique(levels)}}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_draw_arguments(p, tasks=12, seeds=6)
    p.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.2, 0.4])
    p.add_argument("--base", default="ldam_drw", help="a built-in method with a schedule")
    p.add_argument("--knob", default="gate", choices=loss_params.names())
    p.add_argument("--values", type=float, nargs="+", default=[0.0, -2.5, -5.0])
    p.add_argument("--at", type=float, default=0.1,
                   help="the progress at which the closed loop decides, in (0, 1)")
    p.add_argument("--policy", default=None, metavar="RUN_DIR",
                   help="study a trained agent's closed loop instead of the knob's rules")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="results/hidden_noise")
    args = p.parse_args(argv)
    if not 0.0 < args.at < 1.0:
        p.error(f"--at {args.at}: the closed loop's decision point must be in (0, 1)")
    if args.seeds < 2 * len(args.levels):
        p.error(f"--seeds {args.seeds}: need at least 2 seeds per level "
                f"({2 * len(args.levels)} for --levels {args.levels})")
    check_draw_arguments(p, args)
    try:
        for v in args.levels:
            checks.real("--levels", v, 0.0, 0.5, open_high=True,
                        meaning="a label-noise rate")
        for v in args.values:
            loss_params.param(args.knob).check(v, "--values")
    except ValueError as err:
        p.error(str(err))
    try:
        schedule = make_method(args.base).schedule()
    except ValueError as err:
        p.error(f"--base {args.base!r}: {err}")
    try:  # a run folder that holds a trained agent
        agent = AgentPolicy(args.policy) if args.policy is not None else None
    except (OSError, ValueError) as err:
        p.error(f"--policy {args.policy}: {err}")
    if schedule is None:
        p.error(f"--base {args.base!r} has no schedule; choose a parametric method")
    started = time.perf_counter()
    tasks, seeds, runs, levels = hidden_runs(args)
    per_task = args.seeds
    drawn = {"tasks": [json.loads(t.replace(seed=0).to_json()) for t in tasks], "seeds": seeds,
             "levels": levels.tolist()}
    if agent is not None:
        return publish("hidden_noise", argv, args, started,
                       {**drawn, **agent_study(agent, runs, levels, per_task, args.device)},
                       render)

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

    # 2. The signal at the decision step k, in the runs of the single best constant: the
    # closed loop plays it until k, so up to k its runs are these runs (paired seeds, a
    # deterministic engine).
    gap = obs[single][:, :, TRAIN_LOSS] - obs[single][:, :, VAL_LOSS]  # [runs, steps]
    horizon = gap.shape[1]
    step = min(horizon - 1, int(np.ceil(args.at * horizon - 1e-9)))
    by_level = {lv: gap[levels == lv].mean(axis=0) for lv in args.levels}
    task_of = np.arange(len(runs)) // per_task

    def level_means(i: int) -> list[float]:
        """Each level's mean gap at k over the runs of the OTHER base tasks than run i's."""
        other = task_of != task_of[i]
        return [float(gap[other & (levels == lv), step].mean()) for lv in args.levels]

    # 3. The closed loop: single until k, then the detected level's best value.
    choices = [oracle_choice[lv] for lv in args.levels]
    detectors = [NoiseDetector(schedule, args.knob, single, args.at, level_means(i), choices)
                 for i in range(len(runs))]
    closed = rollout_members(detectors, runs, "noise_detector", device=args.device)
    replayed = rollout_members([ReplayPolicy(a[None], parameters=detectors[0].parameters,
                                             mode="absolute")
                                for a in task_replay_actions(closed, hidden_noise_base_task)],
                               runs, "noise_detector_task_replay", device=args.device)
    closed_test = np.array([r.test["balanced_accuracy"] for r in closed])
    replay_test = np.array([r.test["balanced_accuracy"] for r in replayed])
    detected = np.array([d.level[0] for d in detectors])
    confusion = {f"{lv:g}": {f"{lv2:g}": float((detected[levels == lv] == j).mean())
                             for j, lv2 in enumerate(args.levels)} for lv in args.levels}

    contrasts = {
        "oracle per level − best single constant": contrast(oracle, test[single], per_task,
                                                              boot),
        "noise_detector − its task replay": contrast(closed_test, replay_test, per_task,
                                                     boot),
        f"noise_detector − {args.knob}={single:g} (best single)": contrast(
            closed_test, test[single], per_task, boot),
        "noise_detector − oracle per level": contrast(closed_test, oracle, per_task, boot),
    }
    means = {f"{args.knob}={v:g}": {f"{lv:g}": float(100 * test[v][levels == lv].mean())
                                     for lv in args.levels} for v in names}
    for name, values in (("oracle per level", oracle), ("noise_detector", closed_test),
                         ("noise_detector_task_replay", replay_test)):
        means[name] = {f"{lv:g}": float(100 * values[levels == lv].mean())
                       for lv in args.levels}
    return publish("hidden_noise", argv, args, started, {
        **drawn, "single": single,
        "oracle_choice": {f"{k:g}": v for k, v in oracle_choice.items()},
        "gap_by_level": {f"{k:g}": v.tolist() for k, v in by_level.items()},
        "gap_step": step, "confusion": confusion,
        "mean_by_level": means, "contrasts": contrasts}, render)


def render(result: dict[str, Any]) -> str:
    cfg = result["config"]
    knob = cfg["knob"]
    studied = (f"the agent `{cfg['policy']}` (its closed loop, its task replay and its base "
               "rule)" if "agent" in result else
               f"base rule `{cfg['base']}`, knob `{knob}` at {cfg['values']}")
    lines = [
        "# Room for control under hidden label noise (issue 13, target 3)", "",
        "```", result["command"], "```", "",
        f"{cfg['tasks']} {cfg['split']}-split base tasks of `{cfg['distribution']}` × "
        f"{cfg['seeds']} "
        f"paired seeds, the seeds cycling through label noise {cfg['levels']} (hidden: the "
        f"task replay averages over all of a task's other seeds); {studied}; "
        f"{result['wall_s'] / 60:.1f} min wall. Test balanced accuracy, points, mean [95 % "
        "stratified-bootstrap CI].", "",
        "| contrast | mean [95 % CI] | verdict |", "|---|---|---|"]
    for name, c in result["contrasts"].items():
        lines.append(f"| {name} | {c['mean']:+.2f} [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] | "
                     f"{c['verdict']} |")
    levels = list(next(iter(result["mean_by_level"].values())))
    if "single" in result:
        lines += ["", f"Best single constant (on validation): `{knob}={result['single']:g}`; "
                  "best per level: " + ", ".join(f"noise {k}: {v:g}"
                                                 for k, v in result["oracle_choice"].items())
                  + "."]
    lines += ["", "Mean test balanced accuracy (%) by noise level:", "",
              "| rule | " + " | ".join(f"noise {lv}" for lv in levels) + " |",
              "|---|" + "---|" * len(levels)]
    lines += [f"| {k} | " + " | ".join(f"{v[lv]:.2f}" for lv in levels) + " |"
              for k, v in result["mean_by_level"].items()]
    if "agent" in result:
        names = result["agent"]["parameters"]
        lines += ["", "The agent's mean loss parameters by noise level, over the episode "
                  "(its steps' mean):", "", "| noise | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for lv, rows in result["mean_params_by_level"].items():
            mean = np.mean(rows, axis=0)
            lines.append(f"| {lv} | " + " | ".join(f"{x:.3f}" for x in mean) + " |")
        return "\n".join(lines) + "\n"
    step = result["gap_step"]
    lines += ["", f"The signal, ln(train loss) − ln(val loss) at step {step} of the single "
              "best constant's runs, mean by level: " + ", ".join(
                  f"{k}: {v[step]:+.3f}" for k, v in result["gap_by_level"].items()) + ".", "",
              "The detector's decisions (rows: true noise; columns: detected; share of runs):",
              "", "| true \\ detected | " + " | ".join(levels) + " |",
              "|---|" + "---|" * len(levels)]
    lines += [f"| {k} | " + " | ".join(f"{row[lv]:.2f}" for lv in levels) + " |"
              for k, row in result["confusion"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
