"""Is the agent a task-conditioned schedule, or one schedule for every task?

The evaluation's ``agent_task_replay`` replays, on each held-out run, the mean trajectory the
agent played on the other seeds of the same base task: it separates control (reacting to the
run) from a task-conditioned schedule. This script adds the next ablation down: the
**global schedule**, the agent's mean parameter trajectory over ALL held-out runs, replayed
open loop on every run (a :class:`~lossgym.schedules.LossSchedule` of step functions, step h
of H at progress h/H). Closed loop against it measures what conditioning on the task (through
the context features and the curves) adds over one fixed schedule; the global schedule
against the agent's base rule measures what the schedule itself adds.

It reads ``evaluation.json`` of an evaluated run (the held-out tasks and seeds, and the
agent's per-step parameters) and runs the global schedule on the same tasks and seeds
(paired). Intervals: 95 % stratified bootstrap, seeds resampled within base tasks.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/schedule_ablation.py \
        --run-dir results/es-ldamdrw10
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.rollout import ScheduleRule, rollout_policy
from agents.stats import paired_contrast, run_key
from lossgym.io import write_study
from lossgym.population import resolve_device
from lossgym.schedules import LossSchedule, step
from lossgym.tasks import TaskSpec


def global_schedule(records: Sequence[dict[str, Any]]) -> LossSchedule:
    """The mean parameter trajectory of ``records`` (one horizon), as step schedules."""
    horizons = {len(r["params"]) for r in records}
    if len(horizons) != 1:
        raise ValueError(f"the agent's runs have horizons {sorted(horizons)}; the global "
                         "schedule needs one")
    (h,) = horizons
    mean = np.mean([r["params"] for r in records], axis=0)  # [H, d]
    bounds = [k / h for k in range(1, h)]
    return LossSchedule({p: step(bounds, [float(v) for v in mean[:, i]])
                         for i, p in enumerate(records[0]["parameters"])})


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True, help="an evaluated run (evaluation.json)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="default: RUN_DIR/schedule_ablation.md")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    path = run_dir / "evaluation.json"
    if not path.is_file():
        p.error(f"--run-dir {run_dir}: no evaluation.json (run agents.evaluate first)")
    out = Path(args.out) if args.out else run_dir / "schedule_ablation.md"
    if out.is_dir():
        p.error(f"--out {out} is a folder: must be the Markdown file to write")
    try:
        resolve_device(args.device)
    except ValueError as err:
        p.error(str(err))
    try:
        records = json.loads(path.read_text())["records"]
        agent = [r for r in records if r["method"] == "agent"]
    except ValueError as err:
        p.error(f"--run-dir {run_dir}: {path} cannot be read: {err}")
    except (KeyError, TypeError):
        p.error(f"--run-dir {run_dir}: {path} is not an evaluation (it needs 'records', "
                "each with a 'method')")
    if not agent:
        p.error(f"--run-dir {run_dir}: {path} holds no records of the agent")
    started = time.perf_counter()
    schedule = global_schedule(agent)
    tasks = [TaskSpec.from_dict(r["task"]) for r in agent]
    replayed = rollout_policy(ScheduleRule(schedule, agent[0]["parameters"]), tasks,
                              "agent_global_schedule", device=args.device)
    score: dict[str, dict[tuple[str, int], float]] = {}
    for r in records:
        score.setdefault(r["method"], {})[run_key(r["task"])] = \
            r["test"]["balanced_accuracy"]
    score["agent_global_schedule"] = {
        run_key(r["task"]): g.test["balanced_accuracy"]
        for r, g in zip(agent, replayed)}
    pairs = [(a, b) for a, b in (
        ("agent", "agent_global_schedule"), ("agent_task_replay", "agent_global_schedule"),
        ("agent_global_schedule", "agent_mean_action"), ("agent_global_schedule", "base_rule"),
        ("agent_global_schedule", "tuned_ldam_drw")) if a in score and b in score]
    result = {"command": "python scripts/schedule_ablation.py " + shlex.join(
                  sys.argv[1:] if argv is None else list(argv)),
              "schedule": schedule.to_dict(),
              "mean_balanced_accuracy": {m: 100 * float(np.mean(list(v.values())))
                                         for m, v in score.items()},
              "contrasts": {f"{a} − {b}": paired_contrast(score[a], score[b]) for a, b in pairs},
              "wall_s": time.perf_counter() - started}
    lines = [f"# Global-schedule ablation of `{run_dir}`", "",
             f"Command: `{result['command']}` ({result['wall_s']:.0f} s). Test balanced "
             "accuracy, points, 95 % stratified-bootstrap intervals (seeds resampled within "
             "base tasks), paired runs.", "", "| contrast | mean [95 % CI] | runs |",
             "|---|---|---|"]
    for name, c in result["contrasts"].items():
        lines.append(f"| {name} | {c['mean']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] "
                     f"| {c['n']} |")
    text = "\n".join(lines) + "\n"
    write_study(out.with_suffix(".json"), result, out, text)
    print(text)
    return result


if __name__ == "__main__":
    main()
