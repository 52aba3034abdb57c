"""Measure the room first (issue 13, item 1): how much could choosing a loss per task, and
changing it during training, gain over fixed choices?

On ``--tasks`` base tasks of a distribution's TRAIN split, each with ``--seeds`` paired seeds
(seed s gives every candidate the same training pool, initialisation and data order), four
selections are compared, each with the same search budget per task: ``--budget`` candidate
configurations, each trained once on every seed of the task.

* **single best rule**: one registered rule (a built-in method of ``lossgym.methods`` or a hand
  rule of ``agents.baselines``: DRW, feedback) chosen to maximise the mean over ALL tasks;
* **per-task best rule**: the best of the same ``--budget`` rules, chosen per task;
* **per-task best constant**: the best of ``--budget`` constant losses (γ, α, τ) drawn by a
  Latin hypercube, chosen per task;
* **per-task best schedule**: the best of ``--budget`` open-loop schedules of (γ, α, τ) over
  training progress (steps, linear and cosine ramps, hold-then-ramp), chosen per task.

Selection never sees the number it is judged by: for each seed s the choice is made on the
VALIDATION balanced accuracy of the task's OTHER seeds (leave-one-seed-out cross-fitting), and
the chosen configuration is scored by its TEST balanced accuracy on seed s. The *selection
room* is per-task best rule − single best rule; the *dynamic room* is per-task best schedule −
per-task best constant. Intervals are 95 % percentile intervals of a stratified bootstrap: tasks
are resampled with replacement, and seeds with replacement within each resampled task.

Constants, schedules and the DRW/feedback rules run as members of batched populations through
``agents.baselines.rollout_members``; the built-in methods run side by side in one population
per task group (``lossgym.methods.MethodMix``), as ``lossgym compare`` does.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/headroom.py --distribution default \
        --tasks 20 --seeds 5 --budget 12 --out results/headroom
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import qmc

from agents.baselines import (
    FeedbackRule,
    drw_rule,
    final_test_score,
    final_val_score,
    rollout_members,
)
from agents.rollout import ScheduleRule, group_tasks
from lossgym import _checks as checks
from lossgym.io import atomic_write_text, check_folder, write_study
from lossgym.methods import RENAMED, LossMethod, MethodMix, make_method
from lossgym.population import Population, resolve_device
from lossgym.schedules import LossSchedule, constant, cosine, join, linear, step
from lossgym.tasks import DISTRIBUTIONS, TaskDistribution, TaskSpec

METRIC = "balanced_accuracy"
FAMILIES = ("rule", "constant", "schedule")
#: The loss parameters the constant and schedule families set (the rest stay neutral).
PARAMETERS = ("gamma", "alpha", "tau")
#: The box both families draw from. γ stops at 3: above it focal loss only loses here.
BOX = {"gamma": (0.0, 3.0), "alpha": (0.0, 1.0), "tau": (0.0, 2.0)}
SCHEDULE_SHAPES = ("step", "linear", "cosine", "hold_ramp")
#: Registered rules in the order a budget takes them: the first ``budget`` are the candidates.
RULES: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("ce", "method", {}),
    ("logit_adjusted", "method", {}),
    ("ldam_drw", "method", {}),
    ("ce_drw", "method", {}),
    ("cb_effective", "method", {}),
    ("drw_s0.7", "drw", {"switch": 0.7, "alpha": 1.0}),
    ("feedback_eta1", "feedback", {"eta": 1.0, "margin": 0.0}),
    ("focal_2", "method", {}),
    ("poly1", "method", {}),
    ("adafocal", "method", {}),
    ("gradient_gate", "method", {}),
    ("flsd53", "method", {}),
    ("drw_s0.5", "drw", {"switch": 0.5, "alpha": 1.0}),
    ("drw_s0.9", "drw", {"switch": 0.9, "alpha": 1.0}),
    ("feedback_eta5", "feedback", {"eta": 5.0, "margin": 0.0}),
    ("cb_focal", "method", {}),
    ("focal_g1", "method", {}),
    ("cb_beta0.99", "method", {}),
    ("drw_s0.7_a0.5", "drw", {"switch": 0.7, "alpha": 0.5}),
    ("focal_g3", "method", {}),
    ("cb_beta0.9", "method", {}),
    ("cb_beta0.999", "method", {}),
    ("drw_s0.8", "drw", {"switch": 0.8, "alpha": 1.0}),
    ("adaloss", "method", {}),
)
#: The task factors a report breaks the rooms down by (when they vary).
FACTORS = ("dataset", "imbalance_ratio", "label_noise", "width", "optimizer", "lr",
           "weight_decay", "minibatches_per_step")
MAX_MEMBERS = 128  # the compiled loss kernel serves populations up to 128 × 128 × 10 logits


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ candidates
def draw_tasks(distribution: TaskDistribution, n_tasks: int, n_seeds: int,
               rng: np.random.Generator, quick: bool = False, split: str = "train"
               ) -> tuple[list[TaskSpec], list[list[int]]]:
    """``n_tasks`` distinct base tasks of ``split`` and ``n_seeds`` distinct paired seeds each
    (from the split's seed range)."""
    tasks: list[TaskSpec] = []
    keys: set[str] = set()
    while len(tasks) < n_tasks:
        task = distribution.sample(rng, split)
        if quick:
            task = task.replace(horizon=2, minibatches_per_step=2)
        key = task.replace(seed=0).to_json()
        if key not in keys:
            keys.add(key)
            tasks.append(task)
    low, high = getattr(distribution, split)[0].seed_range
    seeds = [sorted(int(s) for s in rng.choice(np.arange(low, high), n_seeds, replace=False))
             for _ in tasks]
    return tasks, seeds


def add_draw_arguments(parser: argparse.ArgumentParser, tasks: int, seeds: int) -> None:
    """The draw of train-split runs that the studies beside this one share (``base_rules``,
    ``control_room``, ``noise_floor``), read back by :func:`draw_runs`."""
    parser.add_argument("--distribution", default="default", choices=DISTRIBUTIONS)
    parser.add_argument("--tasks", type=int, default=tasks, help="base tasks of --split")
    parser.add_argument("--split", default="train", choices=("train", "held_out_id"),
                        help="the split the base tasks and seeds come from (held_out_id for "
                             "a trained agent)")
    parser.add_argument("--seeds", type=int, default=seeds, help="paired seeds per task")
    parser.add_argument("--seed", type=int, default=0, help="draws the tasks and seeds")
    parser.add_argument("--quick", action="store_true", help="2-step episodes (tests)")


def distinct_tasks(distribution: TaskDistribution, split: str, quick: bool) -> int:
    """How many distinct base tasks :func:`draw_tasks` can draw from ``split`` (the valid ones
    only; with ``quick`` the horizon and the minibatches are fixed, so they do not count)."""
    return len({(task.replace(horizon=2, minibatches_per_step=2) if quick else task).to_json()
                for grid in getattr(distribution, split) for task in grid.base_tasks()})


def check_draw(distribution: TaskDistribution, split: str, tasks: int, seeds: int, seed: int,
               quick: bool) -> None:
    """A ``ValueError`` naming the option where :func:`draw_tasks` cannot make the draw (too
    many tasks or seeds would never finish or fail inside numpy), before any training."""
    checks.integer("--tasks", tasks, 1, distinct_tasks(distribution, split, quick))
    low, high = getattr(distribution, split)[0].seed_range
    checks.integer("--seeds", seeds, 1, high - low)
    checks.integer("--seed", seed, 0)


def check_draw_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (``parser.error``, exit 2) options of :func:`add_draw_arguments` whose draw
    cannot be made, a ``--device`` this machine lacks and an ``--out`` that is a file."""
    try:
        check_draw(TaskDistribution.named(args.distribution), args.split, args.tasks,
                   args.seeds, args.seed, args.quick)
        if "device" in args:
            resolve_device(args.device)
        check_folder("--out", args.out)
    except ValueError as err:
        parser.error(str(err))


def draw_runs(args: argparse.Namespace) -> tuple[list[TaskSpec], list[list[int]],
                                                 list[TaskSpec]]:
    """The base tasks, their seeds and the runs (every task at each of its seeds) of
    :func:`add_draw_arguments`' options."""
    tasks, seeds = draw_tasks(TaskDistribution.named(args.distribution), args.tasks,
                              args.seeds, np.random.default_rng(args.seed), args.quick,
                              args.split)
    return tasks, seeds, [t.replace(seed=s) for t, ss in zip(tasks, seeds) for s in ss]


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """How ``scripts/<script>`` was called, for a study's report."""
    return f"python scripts/{script} " + shlex.join(sys.argv[1:] if argv is None else list(argv))


def publish(script: str, argv: Sequence[str] | None, args: argparse.Namespace,
            started: float, result: dict[str, Any],
            render: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """A study's ``result`` with its command, options and wall time, written to
    ``<args.out>/<script>.json`` and ``report.md`` (atomically) and printed."""
    result = {"command": command_line(f"{script}.py", argv), "config": dict(vars(args)),
              **result, "wall_s": time.perf_counter() - started}
    out = Path(args.out)
    write_study(out / f"{script}.json", result, out / "report.md", render(result))
    print(render(result))
    return result


def _box_point(u: Sequence[float]) -> dict[str, float]:
    return {p: float(BOX[p][0] + x * (BOX[p][1] - BOX[p][0])) for p, x in zip(PARAMETERS, u)}


def constant_candidates(budget: int, seed: int) -> list[dict[str, Any]]:
    """``budget`` constant losses from a Latin hypercube over :data:`BOX`."""
    points = qmc.LatinHypercube(d=len(PARAMETERS), seed=seed).random(budget)
    return [{"kind": "constant", **_box_point(u)} for u in points]


def schedule_candidates(budget: int, seed: int) -> list[dict[str, Any]]:
    """``budget`` open-loop schedules: shapes in turn, start and end points and the switch
    point from a Latin hypercube (start, end ∈ :data:`BOX`, switch ∈ [0.2, 0.9])."""
    points = qmc.LatinHypercube(d=2 * len(PARAMETERS) + 1, seed=seed).random(budget)
    out = []
    for k, u in enumerate(points):
        out.append({"kind": "schedule", "shape": SCHEDULE_SHAPES[k % len(SCHEDULE_SHAPES)],
                    "start": _box_point(u[:3]), "end": _box_point(u[3:6]),
                    "switch": float(0.2 + 0.7 * u[6])})
    return out


def loss_schedule(config: dict[str, Any]) -> LossSchedule:
    """The :class:`LossSchedule` of a constant or schedule candidate."""
    if config["kind"] == "constant":
        return LossSchedule({p: constant(config[p]) for p in PARAMETERS})
    shape, u = config["shape"], config["switch"]
    parts = {}
    for p in PARAMETERS:
        a, b = config["start"][p], config["end"][p]
        if shape == "step":
            parts[p] = step([u], [a, b])
        elif shape == "linear":
            parts[p] = linear(a, b)
        elif shape == "cosine":
            parts[p] = cosine(a, b)
        else:
            parts[p] = join([constant(a), linear(a, b)], [u])
    return LossSchedule(parts)


def candidate_label(family: str, config: dict[str, Any]) -> str:
    if family == "rule":
        return config["name"]
    if config["kind"] == "constant":
        return "const(" + ", ".join(f"{p}={config[p]:.2f}" for p in PARAMETERS) + ")"
    start = ",".join(f"{config['start'][p]:.2f}" for p in PARAMETERS)
    end = ",".join(f"{config['end'][p]:.2f}" for p in PARAMETERS)
    at = f"@{config['switch']:.2f}" if config["shape"] in ("step", "hold_ramp") else ""
    return f"{config['shape']}{at}(γατ {start} → {end})"


def make_policy(family: str, config: dict[str, Any]) -> Any:
    if family == "rule":
        factory = drw_rule if config["kind"] == "drw" else FeedbackRule
        return factory(**config["config"], parameters=PARAMETERS)
    return ScheduleRule(loss_schedule(config), PARAMETERS)


# ------------------------------------------------------------------------------ training
def _has_observer(method: LossMethod) -> bool:
    return type(method).observe_validation is not LossMethod.observe_validation


def run_methods(names: Sequence[str], runs: Sequence[TaskSpec], device: torch.device
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Final validation and test balanced accuracy of every built-in method on every run,
    all methods × runs of a task group in populations of at most :data:`MAX_MEMBERS`
    (a diverged run scores 0, as in ``agents.baselines.final_val_score``)."""
    pairs = [(m, i) for m in names for i in range(len(runs))]
    val = {m: np.full(len(runs), np.nan) for m in names}
    test = {m: np.full(len(runs), np.nan) for m in names}
    for group in group_tasks([runs[i] for _, i in pairs]):
        for start in range(0, len(group), MAX_MEMBERS):
            chunk = [pairs[j] for j in group[start : start + MAX_MEMBERS]]
            pop = Population([runs[i] for _, i in chunk], device=device)
            blocks: list[tuple[str, int]] = []
            for m, _ in chunk:
                if blocks and blocks[-1][0] == m:
                    blocks[-1] = (m, blocks[-1][1] + 1)
                else:
                    blocks.append((m, 1))
            mix = MethodMix([make_method(m, n, pop.num_classes, device) for m, n in blocks])
            observers = [(method, a, b) for method, (a, b) in zip(mix.methods, mix.bounds)
                         if _has_observer(method)]
            for _ in range(pop.reference.horizon):
                pop.train(mix)
                for method, a, b in observers:
                    method.observe_validation(pop.logits("val", range(a, b)),
                                              pop.targets("val"))
            v = pop.evaluate("val")[METRIC].double().cpu().numpy()
            t = pop.evaluate("test")[METRIC].double().cpu().numpy()
            bad = pop.diverged.cpu().numpy() | ~np.isfinite(v) | ~np.isfinite(t)
            v, t = np.where(bad, 0.0, v), np.where(bad, 0.0, t)
            for k, (m, i) in enumerate(chunk):
                val[m][i], test[m][i] = v[k], t[k]
    return {m: (val[m], test[m]) for m in names}


def train_all(candidates: dict[str, list[dict[str, Any]]], runs: list[TaskSpec],
              device: torch.device) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                             dict[str, float]]:
    """Validation and test scores ``[K, R]`` per family (R = tasks × seeds, task-major)."""
    val = {f: np.zeros((len(c), len(runs))) for f, c in candidates.items()}
    test = {f: np.zeros((len(c), len(runs))) for f, c in candidates.items()}
    seconds: dict[str, float] = {}
    methods = [(k, c["name"]) for k, c in enumerate(candidates["rule"]) if c["kind"] == "method"]
    t0 = time.perf_counter()
    if methods:
        scores = run_methods([name for _, name in methods], runs, device)
        for k, name in methods:
            val["rule"][k], test["rule"][k] = scores[name]
    seconds["rule_methods"] = time.perf_counter() - t0
    log(f"  built-in methods: {len(methods) * len(runs)} runs in {seconds['rule_methods']:.0f} s")
    # Every policy candidate (DRW, feedback, constants, schedules) in one batched rollout.
    slots = [(f, k) for f in FAMILIES for k, c in enumerate(candidates[f])
             if f != "rule" or c["kind"] != "method"]
    t0 = time.perf_counter()
    policies = [make_policy(f, candidates[f][k]) for f, k in slots for _ in runs]
    records = rollout_members(policies, runs * len(slots), "headroom", METRIC, device,
                              MAX_MEMBERS)
    for j, (f, k) in enumerate(slots):
        recs = records[j * len(runs) : (j + 1) * len(runs)]
        val[f][k] = [final_val_score(r, METRIC) for r in recs]
        test[f][k] = [final_test_score(r, METRIC) for r in recs]
    seconds["policies"] = time.perf_counter() - t0
    log(f"  policies: {len(slots) * len(runs)} runs in {seconds['policies']:.0f} s")
    return val, test, seconds


# ------------------------------------------------------------------------------ analysis
def loso_per_task(val: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-task best, cross-fitted over seeds. ``val``/``test``: ``[K, T, S]``. For each task
    and seed s the candidate with the best mean validation score over the task's other seeds
    is chosen; returns its test score on seed s and its index, both ``[T, S]``."""
    _, n_tasks, n_seeds = val.shape
    scores, choice = np.zeros((n_tasks, n_seeds)), np.zeros((n_tasks, n_seeds), dtype=int)
    for s in range(n_seeds):
        others = [j for j in range(n_seeds) if j != s]
        k = val[:, :, others].mean(2).argmax(0)
        choice[:, s] = k
        scores[:, s] = test[k, np.arange(n_tasks), s]
    return scores, choice


def loso_single(val: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The single best candidate over all tasks, cross-fitted over seeds (as
    :func:`loso_per_task` but one choice for every task)."""
    _, n_tasks, n_seeds = val.shape
    scores, choice = np.zeros((n_tasks, n_seeds)), np.zeros((n_tasks, n_seeds), dtype=int)
    for s in range(n_seeds):
        others = [j for j in range(n_seeds) if j != s]
        k = int(val[:, :, others].mean((1, 2)).argmax())
        choice[:, s] = k
        scores[:, s] = test[k, :, s]
    return scores, choice


def stratified_bootstrap(values: np.ndarray, rng: np.random.Generator, n_boot: int = 5000,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` ``[T, S]``: resample tasks with
    replacement, then seeds with replacement within each resampled task."""
    values = np.asarray(values, dtype=np.float64)
    n_tasks, n_seeds = values.shape
    rows = rng.integers(0, n_tasks, (n_boot, n_tasks))
    cols = rng.integers(0, n_seeds, (n_boot, n_tasks, n_seeds))
    means = values[rows[..., None], cols].mean((1, 2))
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _summary(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> dict[str, Any]:
    low, high = stratified_bootstrap(values, rng, n_boot)
    return {"mean": float(np.mean(values)), "ci": [low, high]}


def verdict(ci: Sequence[float]) -> str:
    if ci[0] > 0:
        return "room (CI above 0)"
    if ci[1] < 0:
        return "negative (CI below 0)"
    return "within noise (CI contains 0)"


def _order(value: Any) -> tuple[bool, Any]:
    """Numbers in numeric order, then strings."""
    return (isinstance(value, str), value if isinstance(value, str) else float(value))


def analyse(tasks: list[TaskSpec], val: dict[str, np.ndarray], test: dict[str, np.ndarray],
            candidates: dict[str, list[dict[str, Any]]], boot_seed: int, n_boot: int
            ) -> dict[str, Any]:
    """Selections, rooms and their intervals from the score arrays ``[K, T, S]``."""
    rng = np.random.default_rng(boot_seed)
    picks = {
        "single_best_rule": loso_single(val["rule"], test["rule"]),
        "per_task_best_rule": loso_per_task(val["rule"], test["rule"]),
        "per_task_best_constant": loso_per_task(val["constant"], test["constant"]),
        "per_task_best_schedule": loso_per_task(val["schedule"], test["schedule"]),
    }
    union_val = np.concatenate([val[f] for f in FAMILIES])
    union_test = np.concatenate([test[f] for f in FAMILIES])
    picks["per_task_best_of_all"] = loso_per_task(union_val, union_test)
    scores = {name: s for name, (s, _) in picks.items()}
    rooms = {
        "selection": scores["per_task_best_rule"] - scores["single_best_rule"],
        "dynamic": scores["per_task_best_schedule"] - scores["per_task_best_constant"],
        "constant_vs_rule": scores["per_task_best_constant"] - scores["per_task_best_rule"],
        "schedule_vs_rule": scores["per_task_best_schedule"] - scores["per_task_best_rule"],
        "all_vs_single_rule": scores["per_task_best_of_all"] - scores["single_best_rule"],
    }
    summary = {
        "methods": {name: _summary(s, rng, n_boot) for name, s in scores.items()},
        "rooms": {name: {**_summary(d, rng, n_boot)} for name, d in rooms.items()},
    }
    for entry in summary["rooms"].values():
        entry["verdict"] = verdict(entry["ci"])
    # In-sample, on the selection split (validation, all seeds): an optimistic upper bound.
    means = {f: val[f].mean(2) for f in FAMILIES}  # [K, T]
    summary["in_sample_val"] = {
        "single_best_rule": float(means["rule"].mean(1).max()),
        "per_task_best_rule": float(means["rule"].max(0).mean()),
        "per_task_best_constant": float(means["constant"].max(0).mean()),
        "per_task_best_schedule": float(means["schedule"].max(0).mean()),
    }
    iv = summary["in_sample_val"]
    iv["selection_room"] = iv["per_task_best_rule"] - iv["single_best_rule"]
    iv["dynamic_room"] = iv["per_task_best_schedule"] - iv["per_task_best_constant"]
    # Per task: the rooms with an interval over its seeds, and what each selection chose.
    per_task = []
    family_of = {"per_task_best_rule": "rule", "per_task_best_constant": "constant",
                 "per_task_best_schedule": "schedule", "single_best_rule": "rule"}
    for t, task in enumerate(tasks):
        row: dict[str, Any] = {"task": task.to_dict()}
        for name, (s, choice) in picks.items():
            if name == "per_task_best_of_all":
                continue
            fam = family_of[name]
            labels = [candidate_label(fam, candidates[fam][k]) for k in choice[t]]
            row[name] = {"test": float(s[t].mean()),
                         "chosen": max(set(labels), key=labels.count), "chosen_per_seed": labels}
        for name in ("selection", "dynamic"):
            d = rooms[name][t : t + 1]
            row[f"{name}_room"] = {**_summary(d, rng, n_boot)}
        per_task.append(row)
    summary["per_task"] = per_task
    # By factor: the rooms over the tasks that share one factor value.
    by_factor: dict[str, list[dict[str, Any]]] = {}
    for factor in FACTORS:
        values = sorted({getattr(t, factor) for t in tasks}, key=_order)
        if len(values) < 2:
            continue
        by_factor[factor] = []
        for value in values:
            idx = [t for t, task in enumerate(tasks) if getattr(task, factor) == value]
            by_factor[factor].append({
                "value": value, "tasks": len(idx),
                **{f"{name}_room": _summary(rooms[name][idx], rng, n_boot)
                   for name in ("selection", "dynamic")}})
    summary["by_factor"] = by_factor
    summary["rule_choice_counts"] = {
        candidate_label("rule", candidates["rule"][k]): int(n)
        for k, n in zip(*np.unique(picks["per_task_best_rule"][1], return_counts=True))}
    single = picks["single_best_rule"][1][0]
    summary["single_best_rule_per_fold"] = [
        candidate_label("rule", candidates["rule"][k]) for k in single]
    return summary


#: Fixed pairs of rules (no selection, so no selection bias): the value of deferring the same
#: re-weighting (a schedule) over applying it from the start (a constant).
CONTRASTS = (("ce_drw", "cb_effective"),)


def add_contrasts(result: dict[str, Any]) -> dict[str, Any]:
    """Paired test differences of the rule pairs of :data:`CONTRASTS` that both ran, with the
    stratified bootstrap (its own generator, so stored runs re-render to the same numbers)."""
    # Runs stored before issue 12's renames name the rules as they were then.
    names = [RENAMED.get(c["name"], c["name"]) for c in result["candidates"]["rule"]]
    test = np.asarray(result["scores"]["test"]["rule"])
    rng = np.random.default_rng(result["config"]["seed"] + 3)
    out = {}
    for a, b in CONTRASTS:
        if a in names and b in names:
            d = test[names.index(a)] - test[names.index(b)]
            entry = _summary(d, rng, result["config"]["n_boot"])
            out[f"{a} - {b}"] = {**entry, "verdict": verdict(entry["ci"])}
    result["summary"]["contrasts"] = out
    return result


# ------------------------------------------------------------------------------ report
def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def _ci(entry: dict[str, Any]) -> str:
    lo, hi = entry["ci"]
    return f"{_pts(entry['mean'])} [{_pts(lo)}, {_pts(hi)}]"


def room_table(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        "| quantity (test balanced accuracy, points) | mean [95 % CI] | verdict |",
        "|---|---|---|",
    ]
    names = {
        "selection": "**selection room**: per-task best rule − single best rule",
        "dynamic": "**dynamic room**: per-task best schedule − per-task best constant",
        "constant_vs_rule": "per-task best constant − per-task best rule",
        "schedule_vs_rule": "per-task best schedule − per-task best rule",
        "all_vs_single_rule": "per-task best of all 3 families (3× budget) − single best rule",
    }
    for key, label in names.items():
        entry = s["rooms"][key]
        lines.append(f"| {label} | {_ci(entry)} | {entry['verdict']} |")
    return "\n".join(lines)


def method_table(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = ["| selection | test bal. acc (%) [95 % CI] | in-sample val (%) |", "|---|---|---|"]
    for name, entry in s["methods"].items():
        lo, hi = entry["ci"]
        iv = s["in_sample_val"].get(name)
        ivs = f"{100 * iv:.2f}" if iv is not None else "—"
        lines.append(f"| {name.replace('_', ' ')} | {100 * entry['mean']:.2f} "
                     f"[{100 * lo:.2f}, {100 * hi:.2f}] | {ivs} |")
    return "\n".join(lines)


def _task_name(task: dict[str, Any]) -> str:
    return (f"{task['dataset']} ρ={task['imbalance_ratio']:g} noise={task['label_noise']:g} "
            f"{task['optimizer']} lr={task['lr']:g} w{task['width']} wd={task['weight_decay']:g} "
            f"mb={task['minibatches_per_step']}×{task['horizon']}")


def render_report(result: dict[str, Any]) -> str:
    s, cfg = result["summary"], result["config"]
    sel, dyn = s["rooms"]["selection"], s["rooms"]["dynamic"]
    out = [
        f"# Headroom: `{cfg['distribution']}` distribution",
        "",
        "Produced by:",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"{cfg['tasks']} train-split base tasks × {cfg['seeds']} paired seeds; budget "
        f"{cfg['budget']} candidates per family and task, each trained on every seed "
        f"({result['inner_runs']} inner runs in {result['seconds']['total'] / 60:.1f} min on "
        f"{result['threads']} thread(s), device {result['device']}"
        + (f"; {result['seconds']['cpu'] / 60:.1f} CPU-min" if "cpu" in result["seconds"]
           else "") + ").",
        "Selection: leave-one-seed-out cross-fitting. For each task and seed s the candidate with "
        "the best mean VALIDATION balanced accuracy over the task's other seeds is chosen (over "
        "all tasks for the single best rule), and its TEST balanced accuracy on seed s is "
        "reported, so no choice sees the run it is scored on. Intervals: 95 % stratified "
        f"bootstrap ({cfg['n_boot']} resamples of tasks, and of seeds within each task); the "
        "choices are held fixed in the resamples.",
        "",
        "## The rooms",
        "",
        room_table(result),
        "",
        method_table(result),
        "",
        *[f"Fixed rule pair (no selection), test: {name} {_ci(entry)} points, "
          f"{entry['verdict']}." for name, entry in s.get("contrasts", {}).items()],
        "",
        "In-sample (selection split, validation, all seeds; optimistic): selection room "
        f"{_pts(s['in_sample_val']['selection_room'])}, dynamic room "
        f"{_pts(s['in_sample_val']['dynamic_room'])} points.",
        "",
        "## What this says",
        "",
    ]
    out.append(
        f"- Selection room {_ci(sel)} points: "
        + ("choosing the rule per task beats the single best rule beyond noise; a policy that "
           "reads the task can win here." if sel["ci"][0] > 0 else
           "within noise: choosing the rule per task does not beat the single best rule at this "
           "budget." if sel["ci"][1] >= 0 else
           "negative: per-task selection is worse than the single best rule (selection noise).")
    )
    out.append(
        f"- Dynamic room {_ci(dyn)} points: "
        + ("open-loop schedules beat the best constant per task beyond noise: there is room for "
           "changing the loss during training." if dyn["ci"][0] > 0 else
           "within noise: at equal budget the best schedule per task is no better than the best "
           "constant per task, so no controller of (γ, α, τ) can be expected to win by "
           "scheduling on these tasks." if dyn["ci"][1] >= 0 else
           "negative: at equal budget the best schedule found per task is worse than the best "
           "constant found (the schedule space is larger, so the same budget covers it "
           "thinner).")
    )
    single = s["single_best_rule_per_fold"]
    out += [
        f"- Single best rule (per fold): {', '.join(sorted(set(single)))}. Per-task best rule "
        "choices over (task, seed) folds: "
        + ", ".join(f"{k} ×{v}" for k, v in sorted(s["rule_choice_counts"].items(),
                                                   key=lambda kv: -kv[1])) + ".",
        "",
        "## By task factor",
        "",
        "| factor | value | tasks | selection room | dynamic room |",
        "|---|---|---|---|---|",
    ]
    for factor, rows in s["by_factor"].items():
        for row in sorted(rows, key=lambda r: _order(r["value"])):
            out.append(f"| {factor} | {row['value']} | {row['tasks']} | "
                       f"{_ci(row['selection_room'])} | {_ci(row['dynamic_room'])} |")
    out += [
        "",
        "## Per task",
        "",
        "Test balanced accuracy (%) of each selection (mean over seeds), the rooms with a 95 % "
        "bootstrap interval over the task's seeds, and the most frequent choice over its folds.",
        "",
        "| task | single rule | best rule | best const | best sched | selection room | "
        "dynamic room | chosen rule / constant / schedule |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in s["per_task"]:
        out.append(
            f"| {_task_name(row['task'])} | {100 * row['single_best_rule']['test']:.2f} | "
            f"{100 * row['per_task_best_rule']['test']:.2f} | "
            f"{100 * row['per_task_best_constant']['test']:.2f} | "
            f"{100 * row['per_task_best_schedule']['test']:.2f} | "
            f"{_ci(row['selection_room'])} | {_ci(row['dynamic_room'])} | "
            f"{row['per_task_best_rule']['chosen']} / {row['per_task_best_constant']['chosen']}"
            f" / {row['per_task_best_schedule']['chosen']} |")
    out += [
        "",
        "## Candidates",
        "",
        f"- rules ({cfg['budget']}): " + ", ".join(c["name"] for c in result["candidates"]["rule"])
        + ". DRW and feedback are the hand rules of `agents.baselines` (power-law weights "
        "w_c ∝ n_c^(−α)); the others are `lossgym.methods` built-ins.",
        f"- constants ({cfg['budget']}): a Latin hypercube over γ ∈ [0, 3], α ∈ [0, 1], "
        "τ ∈ [0, 2] (the parametric loss; other parameters neutral).",
        f"- schedules ({cfg['budget']}): shapes step / linear / cosine / hold-then-ramp in turn, "
        "start and end points in the same box and the switch point in [0.2, 0.9] from a Latin "
        "hypercube; parameters change at environment steps (the schedule is read at the "
        "progress j/H of step j), as every policy's do.",
        "",
    ]
    return "\n".join(out)


def render_index(out_dir: Path) -> str:
    """``report.md`` of the output folder: the room table of every distribution run there."""
    parts = ["# Headroom (issue 13, item 1)", "",
             "Each section is one run of `scripts/headroom.py`; details in `<distribution>/`.", ""]
    for path in sorted(out_dir.glob("*/headroom.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        cfg = result["config"]
        parts += [f"## `{cfg['distribution']}` ({path.parent.name}/report.md)", "", "```",
                  result["command"], "```", "",
                  f"{cfg['tasks']} tasks × {cfg['seeds']} seeds, budget {cfg['budget']}, "
                  f"{result['inner_runs']} inner runs, "
                  f"{result['seconds']['total'] / 60:.1f} min wall"
                  + (f", {result['seconds']['cpu'] / 60:.1f} CPU-min" if "cpu" in result["seconds"]
                     else "") + ".", "",
                  room_table(result), ""]
    return "\n".join(parts)


def render_only(out_dir: Path) -> dict[str, Any]:
    """Rewrite every ``<distribution>/report.md`` and the index from the stored JSON (the
    numbers and the command are the stored run's; only the rendering is new)."""
    results = {}
    for path in sorted(out_dir.glob("*/headroom.json")):
        result = add_contrasts(json.loads(path.read_text(encoding="utf-8")))
        atomic_write_text(path, json.dumps(result, indent=1) + "\n")
        atomic_write_text(path.parent / "report.md", render_report(result))
        results[path.parent.name] = result
    atomic_write_text(out_dir / "report.md", render_index(out_dir))
    return results


# ------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20, help="train-split base tasks")
    parser.add_argument("--seeds", type=int, default=5, help="paired seeds per task (>= 2)")
    parser.add_argument("--budget", type=int, default=None,
                        help=f"candidates per family and task (rules: at most {len(RULES)}); "
                             "default 12, or 2 with --quick")
    parser.add_argument("--distribution", choices=DISTRIBUTIONS, default="default")
    parser.add_argument("--out", default="results/headroom")
    parser.add_argument("--seed", type=int, default=0, help="seed of tasks, seeds, candidates")
    parser.add_argument("--n-boot", type=int, default=5000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the reports from the headroom.json files under --out")
    parser.add_argument("--quick", action="store_true",
                        help="tiny: 2 tasks × 2 seeds, 2 steps of 2 minibatches (for tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.seeds, args.n_boot = 2, 2, 200
    if args.budget is None:
        args.budget = 2 if args.quick else 12
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (selection is cross-fitted over seeds)")
    if not 1 <= args.budget <= len(RULES):
        parser.error(f"--budget must be in [1, {len(RULES)}]")
    try:
        check_draw(TaskDistribution.named(args.distribution), "train", args.tasks,
                   args.seeds, args.seed, args.quick)
        checks.integer("--n-boot", args.n_boot, 1)
        resolve_device(args.device)
        check_folder("--out", args.out)
    except ValueError as err:
        parser.error(str(err))
    if args.render_only and not any(Path(args.out).glob("*/headroom.json")):
        parser.error(f"--out {args.out}: no <distribution>/headroom.json to render (run the "
                     "study first); nothing written")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render_only:
        return render_only(Path(args.out))
    started, cpu_started = time.perf_counter(), time.process_time()
    distribution = getattr(TaskDistribution, args.distribution)()
    rng = np.random.default_rng(args.seed)
    tasks, seeds = draw_tasks(distribution, args.tasks, args.seeds, rng, args.quick)
    candidates = {
        "rule": [{"name": n, "kind": k, "config": c} for n, k, c in RULES[: args.budget]],
        "constant": constant_candidates(args.budget, args.seed),
        "schedule": schedule_candidates(args.budget, args.seed + 1),
    }
    runs = [task.replace(seed=s) for task, task_seeds in zip(tasks, seeds) for s in task_seeds]
    device = resolve_device(args.device)
    log(f"headroom: {args.distribution}, {len(tasks)} tasks × {args.seeds} seeds, budget "
        f"{args.budget}: {3 * args.budget * len(runs)} inner runs")
    val, test, seconds = train_all(candidates, runs, device)
    shape = (args.tasks, args.seeds)
    val = {f: v.reshape(len(v), *shape) for f, v in val.items()}
    test = {f: v.reshape(len(v), *shape) for f, v in test.items()}
    summary = analyse(tasks, val, test, candidates, args.seed + 2, args.n_boot)
    seconds["total"] = time.perf_counter() - started
    seconds["cpu"] = time.process_time() - cpu_started
    result = {
        "command": "OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/headroom.py "
                   + shlex.join(argv),
        "config": {"tasks": args.tasks, "seeds": args.seeds, "budget": args.budget,
                   "distribution": args.distribution, "seed": args.seed, "n_boot": args.n_boot,
                   "quick": args.quick, "metric": METRIC, "parameters": list(PARAMETERS),
                   "box": {p: list(b) for p, b in BOX.items()},
                   "selection": "leave-one-seed-out on validation, scored on test"},
        "device": str(device),
        "threads": torch.get_num_threads(),
        "inner_runs": 3 * args.budget * len(runs),
        "seconds": seconds,
        "tasks": [t.to_dict() for t in tasks],
        "seeds": seeds,
        "candidates": candidates,
        "scores": {"val": {f: v.tolist() for f, v in val.items()},
                   "test": {f: v.tolist() for f, v in test.items()}},
        "summary": summary,
    }
    add_contrasts(result)
    out_dir = Path(args.out)
    target = out_dir / args.distribution
    atomic_write_text(target / "headroom.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(target / "report.md", render_report(result))
    atomic_write_text(out_dir / "report.md", render_index(out_dir))
    print(f"{args.distribution}: {len(tasks)} tasks × {args.seeds} seeds, budget {args.budget}, "
          f"{result['inner_runs']} inner runs, {seconds['total'] / 60:.1f} min")
    print(room_table(result))
    print(method_table(result))
    for name, entry in result["summary"]["contrasts"].items():
        print(f"{name}: {_ci(entry)} points, {entry['verdict']}")
    return result


if __name__ == "__main__":
    main()
