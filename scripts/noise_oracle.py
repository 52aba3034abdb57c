"""What knowing the hidden noise is worth on top of the schedule search (issue 13, target 1).

Target 1 asks a residual agent to beat ``knot_search``: CMA-ES over open-loop schedules of the
agent's own residual actions, tuned on the evaluation's tuning tasks at the agent's budget. On
a ``--hidden-noise`` evaluation a closed loop can beat that schedule by reading the run's
noise; this script measures how much a controller that *knew* it exactly would gain. It runs
``knot_search`` again once per noise level, on the evaluation's tuning tasks with their label
noise set to that level (each at the full budget, so the oracle has the levels' budgets
together), plays each level's schedule on the held-out runs of that level, and compares the
composite, ``noise_oracle``, with the evaluation's records run by run.

``noise_oracle − knot_search`` estimates the room that reading the noise leaves a controller
over the searched schedule. It is not a strict bound (a controller may also read the context
and the run beyond the noise, and both searches carry search noise), but a noise-reading
controller that detects the noise imperfectly, as every one here does, earns only part of it.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/noise_oracle.py \\
        --evaluation results/es-noisy-linear --seeds 6 --out results/es-noisy-linear/noise_oracle
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

from agents import baselines as bl
from agents.evaluate import (
    EvalArgs,
    action_terms,
    draw_of,
    held_out_tasks,
    read_evaluation,
    record_to_dict,
    recorded_draw,
    run_distribution,
    search_budget,
)
from agents.rollout import rollout_policy
from agents.stats import paired_contrast, run_key
from agents.train import AgentPolicy
from lossgym.io import atomic_write_text
from lossgym.tasks import TaskDistribution

#: The evaluation's methods the oracle is compared with, where they are there.
AGAINST = ("knot_search", "agent", "agent_task_replay", "base_rule")


def scores(records: Sequence[dict[str, Any]], method: str) -> dict[tuple[str, int], float]:
    """Test balanced accuracy of ``method``'s records, by run."""
    return {run_key(r["task"]): r["test"]["balanced_accuracy"] for r in records
            if r["method"] == method}


def noise_oracle(run_dir: Path, args: EvalArgs, distribution: TaskDistribution | None = None
                 ) -> dict[str, Any]:
    """Search a schedule per noise level and play it on that level's held-out runs (the
    tasks drawn from ``distribution``, default the run's, as the evaluation drew them)."""
    data = read_evaluation(run_dir)
    levels = tuple(data.get("hidden_noise", ()))
    if len(levels) < 2:
        raise ValueError(f"--evaluation {run_dir}: its evaluation has hidden_noise "
                         f"{list(levels)}; the oracle needs a --hidden-noise evaluation")
    args = recorded_draw(args, data, run_dir / "evaluation.json")
    dist = distribution or run_distribution(run_dir)
    rng = np.random.default_rng(args.seed)
    tasks = held_out_tasks(dist, rng, args.id_tasks, args.seeds, args.ood_tasks, levels)
    tune = [dist.sample(rng, "train") for _ in range(args.tune_tasks)]
    if [r["task"] for r in data["records"] if r["method"] == "ce"] != [t.to_dict()
                                                                      for t in tasks]:
        raise ValueError(f"--evaluation {run_dir} was not drawn with " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in draw_of(args).items()))
    agent = AgentPolicy(run_dir)
    if agent.mode != "residual":
        raise ValueError(f"--evaluation {run_dir}: knot_search needs a residual agent, not "
                         f"{agent.mode!r}")
    budget = search_budget(args, run_dir, len(tune))
    terms, kw = action_terms(agent), {"device": args.device}
    records, schedules = [], {}
    for level in levels:
        start = time.time()
        config = bl.knot_search([t.replace(label_noise=level) for t in tune], budget,
                                args.seed, **terms, **kw)[0]
        policy = bl.KnotPolicy(**config, **terms)
        schedules[str(level)] = policy.schedule().to_dict()
        runs = [t for t in tasks if t.label_noise == level]
        records += [record_to_dict(r)
                    for r in rollout_policy(policy, runs, "noise_oracle", **kw)]
        print(f"level {level}: searched at {budget} runs and played on {len(runs)} runs "
              f"in {time.time() - start:.0f} s", flush=True)
    oracle = scores(records, "noise_oracle")
    by_level = {str(level): {run_key(r["task"]) for r in records
                             if r["task"]["label_noise"] == level} for level in levels}
    contrasts = {}
    for method in AGAINST:
        other = scores(data["records"], method)
        if not other:
            continue
        contrasts[method] = {"all": paired_contrast(oracle, other)} | {
            level: paired_contrast({k: oracle[k] for k in keys}, other)
            for level, keys in by_level.items()}
    means = {m: 100 * float(np.mean(list(scores(records + data["records"], m).values())))
             for m in ("noise_oracle", *contrasts)}
    return {"evaluation": str(run_dir), "draw": draw_of(args), "hidden_noise": list(levels),
            "budget_per_level": budget, "schedules": schedules, "means": means,
            "contrasts": contrasts, "records": records}


def _row(c: dict[str, float]) -> str:
    return f"{c['mean']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"


def report(result: dict[str, Any], command: str) -> str:
    """The markdown report."""
    levels = [str(v) for v in result["hidden_noise"]]
    lines = [
        "# What knowing the hidden noise is worth on top of the schedule search",
        "", f"Command: `{command}`", "",
        f"`knot_search` at {result['budget_per_level']} inner runs per noise level, on the "
        "evaluation's tuning tasks with their noise set to the level; each level's schedule "
        f"played on the held-out runs of that level (`{result['evaluation']}`, draw "
        f"{json.dumps(result['draw'])}). Test balanced accuracy: `noise_oracle` "
        f"{result['means']['noise_oracle']:.2f} %. Paired differences `noise_oracle` − method, "
        "points, 95 % stratified-bootstrap CIs:", "",
        "| method | its mean, % | all runs | " + " | ".join(f"noise {v}" for v in levels) + " |",
        "|---|---|---|" + "---|" * len(levels)]
    for method, c in result["contrasts"].items():
        lines.append(f"| `{method}` | {result['means'][method]:.2f} | {_row(c['all'])} | "
                     + " | ".join(_row(c[v]) for v in levels) + " |")
    lines += ["", "Schedules (the base rule plus each level's searched residual schedule):", ""]
    lines += [f"- noise {v}: `{json.dumps(s)}`" for v, s in result["schedules"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluation", required=True, type=Path,
                        help="a run folder holding a --hidden-noise evaluation.json")
    parser.add_argument("--out", required=True, type=Path)
    for name in ("seed", "id_tasks", "seeds", "ood_tasks", "tune_tasks", "search_budget"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                            help="as agents.evaluate's (default: the evaluation's draw)")
    parser.add_argument("--device", default="auto")
    ns = parser.parse_args(argv)
    given = {k: v for k, v in vars(ns).items() if v is not None and k not in
             ("evaluation", "out")}
    try:
        result = noise_oracle(ns.evaluation, EvalArgs(run_dir=str(ns.evaluation), **given))
    except ValueError as err:
        print(f"noise_oracle: {err}", file=sys.stderr)
        return 2
    ns.out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/noise_oracle.py " + " ".join(argv or sys.argv[1:])
    atomic_write_text(ns.out / "noise_oracle.json", json.dumps(result))
    atomic_write_text(ns.out / "report.md", report(result, command))
    print(report(result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
