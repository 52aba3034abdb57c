"""How far one inner run moves when its loss moves by almost nothing: the noise floor of a run.

Every comparison in lossgym pairs runs (same task, seed, pool, initialisation and data order),
which removes the noise of the draw. What pairing cannot remove is the chaos of training
itself: a change of the loss parameters far below anything that matters changes the order of
floating-point rounding, then the trajectory, then the final predictions. This script
measures it. It runs a rule (LDAM-DRW at s = 10, the default agent's base rule) on
``--tasks`` train-split base tasks × ``--seeds`` paired seeds, and again with its margin
moved by each ``--eps``, and, as a yardstick of a real effect, LDAM-DRW at the paper's s = 30.
For each it prints the paired difference against the rule (mean and 95 % stratified-bootstrap
interval over seeds within tasks), the standard deviation of the per-run differences, and the
fraction of runs whose score did not change, for test balanced accuracy and for its smooth
counterpart ``soft_balanced_accuracy`` (:func:`lossgym.metrics.soft_balanced_accuracy`), and
how many chaos sds the real effect is under each.

An ES fitness difference between the two members of an antithetic pair is one such paired
difference of one run: when the per-run standard deviation at a tiny ε is as large as the
effects a policy can add, a generation's ranks are mostly noise.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/noise_floor.py --out results/noise_floor
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.rollout import ScheduleRule, rollout_policy
from agents.stats import stratified_bootstrap_ci
from lossgym.schedules import LossSchedule, constant, step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from headroom import add_draw_arguments, check_draw_arguments, draw_runs, publish  # noqa: E402

PARAMETERS = ("margin", "scale", "cb")


def ldam_drw(scale: float = 10.0, margin: float = 0.5) -> LossSchedule:
    """LDAM-DRW: margin ``margin`` for the rarest class, logit scale ``scale``, ``cb`` from 0.8."""
    return LossSchedule({"margin": constant(margin), "scale": constant(scale),
                         "cb": step([0.8], [0.0, 1.0])})


#: The per-run scores compared: the target's metric and its smooth counterpart.
METRICS = ("balanced_accuracy", "soft_balanced_accuracy")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Test scores per run (each of :data:`METRICS`) of the rule, its ε-moved copies and
    s = 30."""
    tasks, _, runs = draw_runs(args)
    rules = {"rule": ldam_drw(), "rule again": ldam_drw(),
             **{f"margin + {eps:g}": ldam_drw(margin=0.5 + eps) for eps in args.eps},
             "scale 30 (a real effect)": ldam_drw(scale=30.0)}
    scores: dict[str, dict[str, list[float]]] = {m: {} for m in METRICS}
    for name, rule in rules.items():
        records = rollout_policy(ScheduleRule(rule, PARAMETERS), runs, name, device="cpu")
        for m in METRICS:
            scores[m][name] = [r.test[m] for r in records]
        print(f"{name}: {100 * np.mean(scores[METRICS[0]][name]):.2f}", file=sys.stderr,
              flush=True)
    return {"runs": len(runs), "tasks": len(tasks), "scores": scores}


def _table(scores: dict[str, np.ndarray], n_tasks: int) -> list[str]:
    ref = scores["rule"]
    lines = ["| against the rule | mean % | mean difference [95 % CI] | sd per run | "
             "largest per run | unchanged |", "|---|---|---|---|---|---|"]
    for name, values in scores.items():
        if name == "rule":
            continue
        d = values - ref
        low, high = stratified_bootstrap_ci(list(d.reshape(n_tasks, -1)), rng=1)
        lines.append(f"| {name} | {values.mean():.2f} | {d.mean():+.2f} [{low:+.2f}, "
                     f"{high:+.2f}] | {d.std(ddof=1):.2f} | {np.abs(d).max():.2f} | "
                     f"{np.mean(d == 0):.0%} |")
    return lines


def signal_to_noise(scores: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """For one metric: the real effect's mean paired difference over the sd per run at the
    smallest ε, and the fractions of single runs that rank the real effect and the smallest
    ε's move the way their mean does."""
    ref, real = scores["rule"], scores["scale 30 (a real effect)"]
    tiny = next(v for k, v in scores.items() if k.startswith("margin + "))
    d_real, d_tiny = real - ref, tiny - ref
    sd = d_tiny.std(ddof=1)
    ratio = abs(d_real.mean()) / sd if sd > 0 else float("inf")
    return ratio, float(np.mean(np.sign(d_real) == np.sign(d_real.mean()))), \
        float(np.mean(d_tiny == 0))


def render(result: dict[str, Any]) -> str:
    """The Markdown report of :func:`main`'s result."""
    per_metric = {m: {k: 100 * np.asarray(v) for k, v in result["scores"][m].items()}
                  for m in METRICS}
    n_tasks, cfg = result["tasks"], result["config"]
    tiny = next(k for k in per_metric[METRICS[0]] if k.startswith("margin + "))
    lines = ["# The noise floor of one inner run", "",
             f"Command: `{result['command']}`. Wall time {result['wall_s'] / 60:.1f} min.", "",
             f"LDAM-DRW at s = 10 (margin 0.5, `cb` from 0.8) on {n_tasks} train-split base "
             f"tasks of `TaskDistribution.{cfg['distribution']}()` × {cfg['seeds']} paired "
             f"seeds ({result['runs']} runs), against itself with its margin moved by ε and "
             "against s = 30. Differences in points; the interval is the 95 % stratified "
             "bootstrap of the mean (seeds resampled within tasks); *sd* is the standard "
             "deviation of the per-run differences; *unchanged* the fraction of runs whose "
             "score did not move.", ""]
    for m in METRICS:
        lines += [f"## Test `{m}`", "", *_table(per_metric[m], n_tasks), ""]
    lines += ["## Signal to noise", "",
              f"|real effect| / sd per run at {tiny}: how many sds of one run's chaos the real "
              "effect (s = 30) is; and the fraction of single paired runs whose sign agrees "
              "with the real effect's mean, which is how often one antithetic pair would rank "
              "the two rules right.", "",
              "| metric | real effect / chaos sd | single runs ranking the real effect right |",
              "|---|---|---|"]
    for m in METRICS:
        ratio, right, _ = signal_to_noise(per_metric[m])
        lines.append(f"| `{m}` | {ratio:.2f} | {right:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_draw_arguments(p, tasks=12, seeds=4)
    p.add_argument("--eps", default="1e-6,1e-4,1e-2",
                   help="moves of the margin (range [0, 1]), comma-separated")
    p.add_argument("--out", default="results/noise_floor")
    args = p.parse_args(argv)
    try:
        args.eps = [float(e) for e in args.eps.split(",") if e]
    except ValueError:
        p.error(f"--eps={args.eps!r}: must be comma-separated numbers")
    if not args.eps or not all(0.0 < e <= 0.5 for e in args.eps):
        p.error(f"--eps={args.eps}: each must lie in (0, 0.5], so the margin stays in [0, 1]")
    for flag in ("tasks", "seeds"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    check_draw_arguments(p, args)
    started = time.perf_counter()
    return publish("noise_floor", argv, args, started, run(args), render)


if __name__ == "__main__":
    main()
