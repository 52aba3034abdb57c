"""Which base rule? The same fixed rules in lossgym's engine and in a plain PyTorch loop.

A residual agent corrects a base rule, so the rule it starts from bounds both what it scores
in the engine (targets 1 and 2 of issue 13) and what its export scores in a user's plain loop
(target 5). This script runs candidate rules of the parametric loss, each a
:class:`~lossgym.schedules.LossSchedule`, in both settings:

* **engine**: ``--tasks`` base tasks of a distribution's TRAIN split × ``--seeds`` paired seeds
  (the tasks and seeds of ``scripts/headroom.py`` and ``scripts/control_room.py`` at the same
  ``--seed``), test balanced accuracy, each rule's paired difference against LDAM-DRW at the
  paper's s = 30 with a 95 % stratified-bootstrap interval (seeds resampled within tasks);
* **plain loop**: the loop and datasets of ``scripts/transfer_check.py`` (an MLP trained by
  AdamW, the rule as an :class:`~lossgym.AdaptiveLoss`), ``--plain-seeds`` paired seeds, each
  rule's paired difference against logit adjustment with a 95 % percentile-bootstrap interval.

The candidates are LDAM-DRW (margin 0.5 for the rarest class, the effective-number weights
``cb`` from 80 % on) at logit scales s from 3 to 30, variants of its margin, switch and
weights, logit adjustment (τ = 1) and mixes of the two.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/base_rules.py --out results/base_rules
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

from agents.rollout import ScheduleRule, rollout_policy
from agents.stats import paired_difference, stratified_bootstrap_ci
from lossgym import AdaptiveLoss
from lossgym.schedules import LossSchedule, constant, step

sys.path.insert(0, str(Path(__file__).resolve().parent))
import transfer_check as plain  # noqa: E402
from headroom import add_draw_arguments, check_draw_arguments, draw_runs, publish  # noqa: E402

PARAMETERS = ("gamma", "alpha", "tau", "margin", "scale", "cb")
ENGINE_REFERENCE = "ldam_drw_s30"
PLAIN_REFERENCE = "logit_adjusted"


def _ldam_drw(scale: float, margin: float = 0.5, switch: float = 0.8, cb: float = 1.0,
              tau: float = 0.0) -> LossSchedule:
    parts = {"margin": constant(margin), "scale": constant(scale)}
    if tau:
        parts["tau"] = constant(tau)
    if cb:
        parts["cb"] = step([switch], [0.0, cb])
    return LossSchedule(parts)


#: name → (rule, what it is).
CANDIDATES: dict[str, tuple[LossSchedule, str]] = {
    "logit_adjusted": (LossSchedule({"tau": constant(1.0)}), "logit adjustment, τ = 1"),
    **{f"ldam_drw_s{s:g}": (_ldam_drw(s), f"LDAM-DRW, s = {s:g}") for s in (3, 5, 7, 10, 15, 30)},
    "ldam_s10": (_ldam_drw(10.0, cb=0.0), "LDAM, s = 10, no re-weighting"),
    "ldam_drw_s10_m1": (_ldam_drw(10.0, margin=1.0), "LDAM-DRW, s = 10, margin 1.0"),
    "ldam_drw_s10_switch0.6": (_ldam_drw(10.0, switch=0.6), "LDAM-DRW, s = 10, switch at 0.6"),
    "ldam_drw_s10_cb0.5": (_ldam_drw(10.0, cb=0.5), "LDAM-DRW, s = 10, cb 0 → 0.5"),
    "la_drw": (LossSchedule({"tau": constant(1.0), "cb": step([0.8], [0.0, 1.0])}),
               "logit adjustment with DRW's cb from 0.8"),
    "la_ldam_s1": (LossSchedule({"tau": constant(1.0), "margin": constant(0.5)}),
                   "logit adjustment with LDAM's margins, s = 1"),
    "la_ldam_drw_s10": (_ldam_drw(10.0, tau=1.0), "LDAM-DRW, s = 10, with τ = 1"),
}


def engine(names: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    """Test balanced accuracy of each rule on every train-split run, ``[tasks · seeds]``."""
    tasks, seeds, runs = draw_runs(args)
    scores = {}
    for name in names:
        records = rollout_policy(ScheduleRule(CANDIDATES[name][0], PARAMETERS), runs, name,
                                 device="cpu")
        scores[name] = [r.test["balanced_accuracy"] for r in records]
        print(f"engine {name}: {100 * np.mean(scores[name]):.2f}", file=sys.stderr, flush=True)
    return {"tasks": [json.loads(t.replace(seed=0).to_json()) for t in tasks], "seeds": seeds,
            "test_balanced_accuracy": scores}


def plain_loop(names: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    """Test balanced accuracy of each rule (and cross-entropy) per dataset and seed."""
    out: dict[str, Any] = {}
    for dataset in args.datasets:
        spec = plain.DATASETS[dataset]
        x, y = spec.load()
        x = np.asarray(x, dtype=np.float64)
        data = [plain.split(spec, x, y, s) for s in range(args.plain_seeds)]
        scores: dict[str, list[float]] = {}
        for name in ("ce", *names):
            def make(counts: Any, name: str = name) -> AdaptiveLoss | None:
                return None if name == "ce" else AdaptiveLoss(
                    CANDIDATES[name][0], class_counts=counts, total_steps=args.steps,
                    minibatches_per_step=args.minibatches)
            scores[name] = [plain.train_run(make, d, s, args.steps, args.minibatches)[1]
                            for s, d in enumerate(data)]
        out[dataset] = scores
        print(f"plain {dataset}: done", file=sys.stderr, flush=True)
    return out


def _pts(x: float) -> str:
    return f"{round(100 * x, 2) + 0.0:+.2f}"


def _ci(mean: float, low: float, high: float) -> str:
    return f"{_pts(mean)} [{_pts(low)}, {_pts(high)}]"


def render(result: dict[str, Any]) -> str:
    """The Markdown report of :func:`main`'s result."""
    eng, loop, cfg = result["engine"], result["plain"], result["config"]
    scores = {k: np.asarray(v) for k, v in eng["test_balanced_accuracy"].items()}
    n_tasks = len(eng["tasks"])
    ref = scores.get(ENGINE_REFERENCE)
    header = ["rule", "what", "engine: mean", f"engine: − {ENGINE_REFERENCE}"] + [
        f"plain {d}: − {PLAIN_REFERENCE}" for d in loop]
    lines = ["# Base rules in the engine and in a plain loop", "",
             f"Command: `{result['command']}`. Wall time {result['wall_s'] / 60:.1f} min.", "",
             f"Engine: {n_tasks} train-split base tasks of `TaskDistribution."
             f"{cfg['distribution']}()` × {cfg['seeds']} paired seeds, test balanced accuracy "
             "(%), differences in points with 95 % stratified-bootstrap intervals. Plain loop: "
             f"`scripts/transfer_check.py`'s loop and datasets, {cfg['plain_seeds']} paired "
             "seeds, differences against logit adjustment with 95 % percentile-bootstrap "
             "intervals over seeds. Cross-entropy in the plain loop: "
             + ", ".join(f"{d} {100 * np.mean(s['ce']):.2f} %" for d, s in loop.items()) + ".",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, values in scores.items():
        row = [f"`{name}`", CANDIDATES[name][1] if name in CANDIDATES else "",
               f"{100 * values.mean():.2f}"]
        if ref is not None:
            d = (values - ref).reshape(n_tasks, -1)
            row.append(_ci(float(d.mean()), *stratified_bootstrap_ci(list(d), rng=1)))
        else:
            row.append("")
        for per in loop.values():
            if name in per and PLAIN_REFERENCE in per:
                p = paired_difference(per[name], per[PLAIN_REFERENCE], np.random.default_rng(0))
                row.append(_ci(p["mean"], p["ci_low"], p["ci_high"]))
            else:
                row.append("")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_draw_arguments(p, tasks=20, seeds=5)
    p.add_argument("--plain-seeds", type=int, default=10)
    p.add_argument("--datasets", default=",".join(plain.DATASETS))
    p.add_argument("--steps", type=int, default=20, help="plain loop: loss steps per run")
    p.add_argument("--minibatches", type=int, default=20, help="plain loop: per step")
    p.add_argument("--rules", default=",".join(CANDIDATES))
    p.add_argument("--out", default="results/base_rules")
    args = p.parse_args(argv)
    names = [n for n in args.rules.split(",") if n]
    args.datasets = [d for d in args.datasets.split(",") if d]
    bad = [n for n in names if n not in CANDIDATES]
    if bad or not names:
        p.error(f"--rules: unknown {bad or 'none given'}; known: {list(CANDIDATES)}")
    bad = [d for d in args.datasets if d not in plain.DATASETS]
    if bad or not args.datasets:
        p.error(f"--datasets: unknown {bad or 'none given'}; known: {list(plain.DATASETS)}")
    for flag in ("tasks", "seeds", "plain_seeds", "steps", "minibatches"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    check_draw_arguments(p, args)
    started = time.perf_counter()
    return publish("base_rules", argv, args, started,
                   {"engine": engine(names, args), "plain": plain_loop(names, args)}, render)


if __name__ == "__main__":
    main()
