"""Where a held-out task's training set-up lies against what an agent trained on.

    python scripts/context_range.py --run-dir results/es-noisy-linear [--out FILE.md]

An agent with context features (:mod:`lossgym.features`, version 2) sees each of them
normalised by the statistics of its training observations (``policy.norm.json``: mean and
variance, clipped at ``clip_obs``). A feature far outside that range is extrapolation: a linear
policy multiplies it by a weight that training never tested at that value. For every distinct
base task of the run's ``evaluation.json`` this prints the z-score of each context feature
that varied in training (the env's own :func:`lossgym.features.context_values` of the task),
and the same for the plain-loop set-ups of ``scripts/transfer_check.py`` (as
:meth:`lossgym.AdaptiveLoss.context` computes them there). It reads files and computes features
only; nothing trains.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from agents.export import run_features
from lossgym.features import CONTEXT_FEATURES, context_values, task_context_values
from lossgym.io import atomic_write_text
from lossgym.tasks import TaskSpec

#: The plain loop of ``scripts/transfer_check.py``: its datasets' training-set sizes (seed 0,
#: from its report), batch 64, AdamW lr 1e-3 and weight decay 1e-2, 20 periods × 20 minibatches,
#: an MLP of width 128.
PLAIN_LOOPS = {"wine": (14, 32, 6), "breast_cancer": (13, 132),
               "gaussian_quantiles": (800, 16, 58, 217),
               "make_classification_6c": (20, 126, 318, 8, 50, 800)}


def plain_loop_context(counts: tuple[int, ...]) -> list[float]:
    size = float(sum(counts))
    return context_values(train_size=size, num_classes=len(counts), lr=1e-3, weight_decay=1e-2,
                          batch_size=64, epochs=20 * 20 * 64 / size, arch="mlp", width=128)


def task_context(task: TaskSpec) -> list[float]:
    """The env's context features of ``task`` (its training set is ``task.num_train``)."""
    return task_context_values(task, float(task.num_train))


def report(run_dir: Path) -> str:
    norm = json.loads((run_dir / "policy.norm.json").read_text())
    k = len(CONTEXT_FEATURES)
    columns = run_features(run_dir).context_columns
    mean, var = np.asarray(norm["mean"])[columns], np.asarray(norm["var"])[columns]
    held = np.asarray(norm.get("held", [False] * len(norm["mean"])), dtype=bool)[columns]
    sd = np.sqrt(var + norm["epsilon"])
    shown = [i for i in range(k) if not held[i]]
    names = [CONTEXT_FEATURES[i][0] for i in shown]
    lines = [f"# Context features against the training range of `{run_dir}`", "",
             "Training mean (sd) of the features that varied: " + ", ".join(
                 f"{names[j]} {mean[i]:.2f} ({sd[i]:.2f})" for j, i in enumerate(shown))
             + f"; the rest took one value in training and are fed as 0. Observations are "
             f"clipped at ±{norm['clip_obs']:g} sd. Cells: z-score (value); |z| > 3 in bold.", ""]
    lines += ["| set-up | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    def row(label: str, values: list[float]) -> str:
        z = (np.asarray(values) - mean) / sd
        cells = [(f"**{z[i]:+.1f}**" if abs(z[i]) > 3 else f"{z[i]:+.1f}") + f" ({values[i]:.2f})"
                 for i in shown]
        return f"| {label} | " + " | ".join(cells) + " |"

    records = json.loads((run_dir / "evaluation.json").read_text())["records"]
    bases = {TaskSpec.from_dict(r["task"]).replace(seed=0, label_noise=0.0): None
             for r in records}  # the distinct base tasks, in order
    labelled = sorted(((f"{t.dataset} ρ={t.imbalance_ratio:g} {t.arch}{t.width} "
                        f"wd={t.weight_decay:g} mb={t.minibatches_per_step}", t) for t in bases),
                      key=lambda item: item[0])
    lines += [row(label, task_context(task)) for label, task in labelled]
    lines += [row(f"plain loop: {name}", plain_loop_context(counts))
              for name, counts in PLAIN_LOOPS.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="an agent's run folder")
    parser.add_argument("--out", default=None, help="write the Markdown table here")
    args = parser.parse_args(argv)
    if args.out and Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a folder: must be the Markdown file to write")
    try:
        text = report(Path(args.run_dir))
    except (OSError, ValueError) as err:
        parser.error(f"--run-dir {args.run_dir}: not an agent's run folder ({err})")
    if args.out:
        atomic_write_text(Path(args.out), text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
