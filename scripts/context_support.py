"""Clip an agent's context features to the range they took in training (its support).

A linear policy extrapolates: a held-out task or a plain loop whose set-up lies outside the
training distribution (digits' small training set, a plain loop's long budget) gets context
features many standard deviations out (`scripts/context_range.py`), and the policy's weight on
them drives its actions to their bounds. This script writes a copy of a run whose observation
statistics hold a support for each context feature, the smallest and largest value it takes
on ``--tasks`` tasks drawn from the train split of the run's distribution; the agent
(`agents.train.AgentPolicy`) and its export (`lossgym.export.Controller`) clip each raw
context feature to that support before normalising it. On tasks inside the training
distribution nothing changes: their context lies in the support. The dynamic features
(losses, accuracies, gradients) are left unbounded. The weights are the run's own; nothing is
trained.

    python scripts/context_support.py --run-dir results/es-noisy-linear --out runs/support
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from agents.evaluate import run_distribution
from agents.export import run_features
from lossgym.features import CONTEXT_FEATURES, task_context_values
from lossgym.io import atomic_write_text
from lossgym.tasks import TaskDistribution

#: The files of a run that the evaluation and the export read, besides the statistics.
RUN_FILES = ("config.json", "policy.pt", "monitor.csv")


def context_support(dist: TaskDistribution, tasks: int = 4000, seed: int = 0
                    ) -> tuple[list[float], list[float]]:
    """The smallest and largest value of each context feature (:data:`CONTEXT_FEATURES`
    order) over ``tasks`` tasks drawn from ``dist``'s train split, as the float32 values the
    observation holds (so that clipping leaves a training task's observation as it is)."""
    rng = np.random.default_rng(seed)
    values = np.array([task_context_values(t, float(t.num_train))
                       for t in (dist.sample(rng, "train") for _ in range(tasks))],
                      dtype=np.float32)
    return (values.min(axis=0).astype(np.float64).tolist(),
            values.max(axis=0).astype(np.float64).tolist())


def with_support(norm: dict, columns: list[int], low: list[float], high: list[float]) -> dict:
    """Observation statistics ``norm`` with the support ``low``/``high`` on the features
    ``columns`` (the context features) and none on the others."""
    bounds = {"low": [None] * len(norm["mean"]), "high": [None] * len(norm["mean"])}
    for column, lo, hi in zip(columns, low, high, strict=True):
        bounds["low"][column], bounds["high"][column] = lo, hi
    return {**norm, **bounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="the agent's run folder")
    parser.add_argument("--out", required=True, help="the new run folder (created)")
    parser.add_argument("--tasks", type=int, default=4000,
                        help="train-split tasks drawn to measure the support")
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error(f"--tasks={args.tasks} must be at least 1")
    run, out = Path(args.run_dir), Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"--out {out} exists: must be a new (or empty) folder, so that no run's "
                     "files are overwritten")
    try:
        norm = json.loads((run / "policy.norm.json").read_text())
        columns = run_features(run).context_columns
    except (OSError, ValueError) as err:
        parser.error(f"--run-dir {run}: not an agent's run folder ({err})")
    if not columns:
        parser.error(f"{run} trained without context features; there is nothing to clip")
    low, high = context_support(run_distribution(run), args.tasks)
    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        shutil.copyfile(run / name, out / name)
    atomic_write_text(out / "policy.norm.json",
                      json.dumps(with_support(norm, columns, low, high)))
    for (name, _, _), lo, hi in zip(CONTEXT_FEATURES, low, high):
        print(f"{name}: [{lo:.3f}, {hi:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
