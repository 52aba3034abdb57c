"""``lossgym compare``: every built-in loss on one task over paired seeds, in one population.

Seed s gives every method the same training pool, initialisation and data order, so the
differences between methods are paired. All methods × seeds train as one batched population.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from lossgym.methods import COMPARED, MethodMix, check_method_name, make_method
from lossgym.population import Population, resolve_device
from lossgym.tasks import TaskSpec

REPORTED = ("balanced_accuracy", "macro_f1", "ece", "accuracy")


@dataclass(frozen=True)
class CompareResult:
    """Test metrics per method and seed: ``metrics[method][metric]`` is an array over seeds."""

    task: TaskSpec
    seeds: tuple[int, ...]
    metrics: dict[str, dict[str, np.ndarray]]
    diverged: dict[str, int]

    def paired_difference(self, method: str, baseline: str = "ce",
                          metric: str = "balanced_accuracy", level: float = 0.95
                          ) -> tuple[float, float, float]:
        """Mean paired difference (method − baseline) and its Student-t confidence interval."""
        diff = self.metrics[method][metric] - self.metrics[baseline][metric]
        n = len(diff)
        mean = float(diff.mean())
        if n < 2:
            return mean, math.nan, math.nan
        half = float(stats.t.ppf(0.5 + level / 2, n - 1) * diff.std(ddof=1) / math.sqrt(n))
        return mean, mean - half, mean + half

    def to_dict(self) -> dict:
        return {
            "task": self.task.to_dict(),
            "seeds": list(self.seeds),
            "metrics": {m: {k: v.tolist() for k, v in d.items()} for m, d in self.metrics.items()},
            "diverged": self.diverged,
        }

    def table(self) -> str:
        """A Markdown table: mean ± std over seeds, in points for accuracies, and the paired
        95 % CI of the balanced-accuracy difference against cross-entropy."""
        has_ce = "ce" in self.metrics
        head = "| method | bal. acc (%) | macro-F1 (%) | ECE (%) |"
        rule = "|---|---|---|---|"
        if has_ce:
            head += " Δ bal. acc vs CE, 95 % CI |"
            rule += "---|"
        rows = [head, rule]
        for method, values in self.metrics.items():
            cells = [method]
            for metric in ("balanced_accuracy", "macro_f1", "ece"):
                v = 100 * values[metric]
                cells.append(f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}")
            if has_ce:
                if method == "ce":
                    cells.append("—")
                elif len(self.seeds) < 2:
                    mean = 100 * self.paired_difference(method)[0]
                    cells.append(f"{mean:+.2f} (a CI needs 2 seeds)")
                else:
                    mean, lo, hi = (100 * x for x in self.paired_difference(method))
                    cells.append(f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]")
            if self.diverged.get(method):
                cells[0] += f" ({self.diverged[method]} diverged)"
            rows.append("| " + " | ".join(cells) + " |")
        return "\n".join(rows)


def compare(
    task: TaskSpec | None = None,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] = tuple(range(10)),
    device: str | torch.device = "auto",
    progress: bool = True,
) -> CompareResult:
    """Train ``task`` with each method for each seed and report test metrics.

    Args:
        task: the task (default: :class:`TaskSpec`'s defaults, MNIST-1D at ρ = 100).
        methods: names from :data:`lossgym.methods.METHODS` (default: ``COMPARED``).
        seeds: task seeds; seed s is shared by all methods (paired comparison).
        device: where the population trains.
        progress: show a progress bar.
    """
    task = task or TaskSpec()
    methods = [check_method_name(m) for m in (methods or COMPARED)]
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods {methods} contain duplicates")
    dev = resolve_device(device)
    tasks = [task.replace(seed=s) for _ in methods for s in seeds]
    population = Population(tasks, device=dev)
    mix = MethodMix([make_method(m, len(seeds), population.num_classes, dev) for m in methods])
    steps = range(task.horizon)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"compare: {len(methods)} losses × {len(seeds)} seeds",
                     unit="step")
    for _ in steps:
        population.train(mix)
        mix.observe_validation(population.logits("val"), population.targets("val"))
    test = population.evaluate("test")
    diverged = population.diverged.cpu().view(len(methods), len(seeds)).sum(1).tolist()
    metrics = {
        m: {k: test[k].detach().cpu().double().view(len(methods), len(seeds))[j].numpy()
            for k in REPORTED}
        for j, m in enumerate(methods)
    }
    return CompareResult(task, seeds, metrics, dict(zip(methods, map(int, diverged))))
