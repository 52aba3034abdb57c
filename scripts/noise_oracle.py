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

With ``--switch-at AT`` it also runs a *hand* closed loop between the searched schedules,
``noise_switch``: it plays the first level's schedule until progress AT, there classifies
the run's ln(train loss) − ln(val loss) to the nearest level mean and plays that level's
schedule to the end. The level means are measured on the tuning tasks (the train split) at
each level, playing the first schedule: nothing of the held-out runs is used. It shows how
much of the oracle's room a simple detector reaches; it is a hand rule, not a learned loss.
An ``--out`` that already holds ``noise_oracle.json`` reuses its schedules (no search).

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/noise_oracle.py \\
        --evaluation results/es-noisy-linear --seeds 6 --out results/es-noisy-linear/noise_oracle \\
        --switch-at 0.3

``--detector learned`` or ``winner`` fit the detector on train-split runs instead
(:class:`LogisticDetector`); ``--export DIR`` then writes that switch as an adaptive loss
(:class:`lossgym.export.Switch`, ``kind="switch"``) for plain PyTorch loops.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from agents import baselines as bl
from agents.evaluate import (
    EvalArgs,
    action_terms,
    draw_of,
    evaluation_draw,
    read_evaluation,
    record_to_dict,
    replay_key,
    search_budget,
    task_replay_actions,
)
from agents.rollout import rollout_policy
from agents.stats import paired_contrast, run_key
from agents.train import AgentPolicy
from lossgym import _checks as checks
from lossgym import params as loss_params
from lossgym.export import Switch, write_export
from lossgym.features import feature_version
from lossgym.io import atomic_write_text, check_folder
from lossgym.schedules import LossSchedule
from lossgym.tasks import TaskDistribution, TaskSpec

#: The evaluation's methods the oracle is compared with, where they are there.
AGAINST = ("knot_search", "agent", "agent_task_replay", "base_rule")
#: The observation's log losses (lossgym.features.BASE_FEATURES).
TRAIN_LOSS, VAL_LOSS = 1, 2


def gap(seen: np.ndarray) -> float:
    """ln(train loss) − ln(val loss) of an observation: what the hand switch reads."""
    return float(seen[TRAIN_LOSS] - seen[VAL_LOSS])


class SwitchRule:
    """One run's closed loop between schedules: ``schedules[0]`` until progress ``at``; there
    ``detect`` reads the run's observation and names a level, whose schedule plays to the end.
    Without ``detect`` it only records the observation (``seen``)."""

    mode = "absolute"

    def __init__(self, schedules: Sequence[LossSchedule], detect: Detector | None,
                 at: float, parameters: Sequence[str]) -> None:
        self.schedules, self.at, self.parameters = list(schedules), float(at), tuple(parameters)
        self.detect = detect
        self.reset(1)

    def reset(self, num_envs: int) -> None:
        self.level, self.seen = -1, None

    @property
    def gap(self) -> float:
        """ln(train loss) − ln(val loss) at ``at`` (NaN before)."""
        return math.nan if self.seen is None else gap(self.seen)

    def params(self, obs: np.ndarray, progress: np.ndarray) -> np.ndarray:
        p = float(progress[0])
        if self.seen is None and p >= self.at - 1e-9:
            self.seen = np.asarray(obs[0], dtype=np.float64).copy()
            if self.detect is not None:
                self.level = int(self.detect(self.seen))
        row, neutral = self.schedules[max(self.level, 0)](p), loss_params.neutral()
        return np.array([[row.get(k, neutral[k]) for k in self.parameters]])


#: A detector: the observation at the switch → the index of a noise level.
Detector = Callable[[np.ndarray], int]
#: The switch's detectors: a hand rule, two learned ones (of the level, of the better
#: schedule), and the true level (the ceiling of a perfect level detector).
DETECTORS = ("gap", "learned", "winner", "truth")


def nearest_gap(means: Sequence[float]) -> Detector:
    """The level whose mean ln(train loss) − ln(val loss) is nearest the run's."""
    centres = np.asarray(means, dtype=np.float64)
    return lambda seen: int(np.abs(gap(seen) - centres).argmin())


class LogisticDetector:
    """Multinomial logistic regression (L2-penalised, fitted to convergence by L-BFGS in
    float64) on the standardised observation; features constant in training are left out."""

    def __init__(self, x: np.ndarray, y: np.ndarray, levels: int, l2: float = 1e-2) -> None:
        x = np.asarray(x, dtype=np.float64)
        self.mean, std = x.mean(0), x.std(0)
        self.keep = std > 1e-9
        self.scale = np.where(self.keep, std, 1.0)
        z = torch.from_numpy(self._standard(x))
        target = torch.as_tensor(np.asarray(y), dtype=torch.int64)
        self.weight = torch.zeros(z.shape[1], levels, dtype=torch.float64, requires_grad=True)
        self.bias = torch.zeros(levels, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([self.weight, self.bias], max_iter=500, tolerance_grad=1e-10,
                                line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            opt.zero_grad()
            value = torch.nn.functional.cross_entropy(z @ self.weight + self.bias, target) \
                + l2 * self.weight.pow(2).sum()
            value.backward()
            return value

        opt.step(loss)
        self.train_accuracy = float(np.mean(self.predict(x) == np.asarray(y)))

    def _standard(self, x: np.ndarray) -> np.ndarray:
        return ((np.atleast_2d(x) - self.mean) / self.scale)[:, self.keep]

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            z = torch.from_numpy(self._standard(x))
            return (z @ self.weight + self.bias).argmax(1).numpy()

    def __call__(self, seen: np.ndarray) -> int:
        return int(self.predict(seen)[0])

    def to_dict(self) -> dict[str, list]:
        """The fitted detector as JSON lists (what a switch export holds)."""
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "keep": self.keep.tolist(), "weight": self.weight.detach().tolist(),
                "bias": self.bias.detach().tolist()}


def observe(schedules: Sequence[LossSchedule], tasks: Sequence[TaskSpec], at: float,
            parameters: Sequence[str], device: str, arm: int | None = None
            ) -> tuple[list[np.ndarray], list[Any]]:
    """Each task's run playing ``schedules[0]`` until ``at`` and ``schedules[arm]`` after
    (without ``arm``, the first throughout): its observation at ``at`` (what a detector is
    calibrated on) and its record."""
    rules = [SwitchRule(schedules, None if arm is None else partial(lambda k, _: k, arm), at,
                        parameters) for _ in tasks]
    records = bl.rollout_members(rules, tasks, device=device)
    return [r.seen for r in rules], records


def switch_study(run_dir: Path, args: EvalArgs, result: dict[str, Any], at: float,
                 distribution: TaskDistribution | None = None, detector: str = "gap",
                 detector_tasks: int = 48) -> dict[str, Any]:
    """:class:`SwitchRule` between ``result``'s schedules on the evaluation's held-out runs.

    ``detector``: ``"gap"``, the level means of the gap measured on the tuning tasks at each
    level; ``"learned"``, :class:`LogisticDetector` fitted on ``detector_tasks`` further
    train-split tasks at each level (drawn after the tuning tasks, from the evaluation's
    seed); ``"winner"``, the same regression fitted to name the schedule that ends with the
    better validation score on each of those runs (each run played with every schedule
    after ``at``); ``"truth"``, each run's own level (what a perfect detector at ``at`` would earn).
    """
    if detector not in DETECTORS:
        raise ValueError(f"detector={detector!r} is not one of {DETECTORS}")
    data, args, dist, tasks, tune = evaluation_draw(args, distribution)
    levels = tuple(result["hidden_noise"])
    if draw_of(args) != result["draw"] or list(levels) != data.get("hidden_noise"):
        raise ValueError(f"the schedules were searched for the draw {result['draw']}, not "
                         f"for --evaluation {run_dir} ({draw_of(args)})")
    schedules = [LossSchedule.from_dict(result["schedules"][str(v)]) for v in levels]
    parameters = AgentPolicy(run_dir).parameters
    out: dict[str, Any] = {"at": at, "detector": detector}
    if detector == "gap":
        seen, _ = observe(schedules, [t.replace(label_noise=v) for v in levels for t in tune],
                          at, parameters, args.device)
        gaps = np.array([gap(s) for s in seen]).reshape(len(levels), -1)
        out["means"] = gaps.mean(1).tolist()
        detects = [nearest_gap(out["means"])] * len(tasks)
    elif detector in ("learned", "winner"):
        rng = np.random.default_rng([args.seed, 13])
        train = [dist.sample(rng, "train") for _ in range(checks.integer(
            "detector_tasks", detector_tasks, 1))]
        runs = [t.replace(label_noise=v) for v in levels for t in train]
        if detector == "learned":  # the label: the run's noise level
            seen, _ = observe(schedules, runs, at, parameters, args.device)
            labels = np.repeat(np.arange(len(levels)), len(train))
        else:  # the label: the schedule after the switch with the best final val score
            arms = [observe(schedules, runs, at, parameters, args.device, k)
                    for k in range(len(levels))]
            seen = arms[0][0]
            labels = np.array([[bl.final_val_score(r) for r in records]
                               for _, records in arms]).argmax(0)
            out["arm_shares"] = (np.bincount(labels, minlength=len(levels))
                                 / len(labels)).tolist()
        fitted = LogisticDetector(np.stack(seen), labels, len(levels))
        out["detector_tasks"], out["train_accuracy"] = len(train), fitted.train_accuracy
        out["detector_fit"] = fitted.to_dict()
        detects = [fitted] * len(tasks)
    else:
        detects = [partial(lambda k, _seen: k, levels.index(t.label_noise)) for t in tasks]
    rules = [SwitchRule(schedules, d, at, parameters) for d in detects]
    name = "noise_switch" if detector == "gap" else f"noise_switch_{detector}"
    records = [record_to_dict(r) for r in
               bl.rollout_members(rules, tasks, name, device=args.device)]
    switch = scores(records, name)
    detected = {str(v): float(np.mean([levels[r.level] == v for t, r in zip(tasks, rules)
                                       if t.label_noise == v])) for v in levels}
    contrasts = level_contrasts(switch, records, {
        "noise_oracle": scores(result["records"], "noise_oracle"),
        **{m: scores(data["records"], m) for m in AGAINST}})
    return out | {"method": name, "detected": detected,
                  "mean": 100 * float(np.mean(list(switch.values()))), "contrasts": contrasts,
                  "records": records}


class ParamsReplay:
    """Open-loop replay of a parameter trajectory ``[H, d]``: row t at the t-th step."""

    mode = "absolute"

    def __init__(self, params: np.ndarray, parameters: Sequence[str]) -> None:
        self.rows, self.parameters = np.asarray(params, dtype=np.float64), tuple(parameters)
        self.reset(1)

    def reset(self, num_envs: int) -> None:
        self.t = 0

    def params(self, obs: np.ndarray, progress: np.ndarray) -> np.ndarray:
        row = self.rows[min(self.t, len(self.rows) - 1)]
        self.t += 1
        return row[None]


def task_replay(study: dict[str, Any], hidden_noise: Sequence[float], device: str
                ) -> dict[str, Any]:
    """The switch's task replay, as ``agent_task_replay`` is the agent's: each held-out run
    replays, open loop, the mean parameter trajectory the switch played on the *other* seeds
    of its base task, whatever their hidden noise. The switch beats it only by reading the
    run. Returns its records and the switch's paired difference against it."""
    records = study["records"]
    tasks = [TaskSpec.from_dict(r["task"]) for r in records]
    # The agent's leave-one-seed-out mean, here over the parameters the switch played.
    means = task_replay_actions([SimpleNamespace(task=t, actions=np.asarray(
        r["params"], dtype=np.float64)) for t, r in zip(tasks, records)], replay_key(hidden_noise))
    parameters = tuple(records[0]["parameters"])
    name = f"{study['method']}_task_replay"
    replayed = [record_to_dict(r) for r in bl.rollout_members(
        [ParamsReplay(m, parameters) for m in means], tasks, name, device=device)]
    contrast = level_contrasts(scores(records, study["method"]), records,
                               {"task_replay": scores(replayed, name)})["task_replay"]
    return {"method": name, "records": replayed, "contrast": contrast}


def export_switch(result: dict[str, Any], key: str, parameters: Sequence[str], out: Path,
                  total_steps: int) -> Path:
    """Write the learned switch of ``result``'s study ``key`` (``winner@0.3``, say: its
    searched schedules in level order and its fitted detector) as a ``kind="switch"`` export
    that :meth:`lossgym.AdaptiveLoss.load` reads."""
    study = switches(result).get(key)
    if study is None or "detector_fit" not in study:
        raise ValueError(f"{key!r} is not a learned switch of this folder with its detector "
                         f"kept (it holds {sorted(switches(result))}); run it with "
                         "--detector learned or winner first")
    schedules = [LossSchedule.from_dict(result["schedules"][str(v)])
                 for v in result["hidden_noise"]]
    switch = Switch(schedules, study["at"], parameters, study["detector_fit"],
                    feature_version(context=True))
    return write_export(switch, out, total_steps=total_steps, source={
        "script": "scripts/noise_oracle.py", "study": key, "evaluation": result["evaluation"],
        "draw": result["draw"], "hidden_noise": result["hidden_noise"],
        "budget_per_level": result["budget_per_level"],
        "detector_tasks": study.get("detector_tasks"), "mean": study.get("mean")})


def scores(records: Sequence[dict[str, Any]], method: str) -> dict[tuple[str, int], float]:
    """Test balanced accuracy of ``method``'s records, by run."""
    return {run_key(r["task"]): r["test"]["balanced_accuracy"] for r in records
            if r["method"] == method}


def level_contrasts(values: dict[tuple[str, int], float], records: Sequence[dict[str, Any]],
                    others: dict[str, dict[tuple[str, int], float]]) -> dict[str, Any]:
    """``values`` (by run, of ``records``) minus each of ``others`` that has records: on all
    runs (``"all"``) and on each noise level's (``"0.0"``, ...)."""
    by_level: dict[str, set] = {}
    for r in records:
        by_level.setdefault(str(r["task"]["label_noise"]), set()).add(run_key(r["task"]))
    return {name: {"all": paired_contrast(values, other)} | {
        level: paired_contrast({k: values[k] for k in keys}, other)
        for level, keys in sorted(by_level.items())} for name, other in others.items() if other}


def noise_oracle(run_dir: Path, args: EvalArgs, distribution: TaskDistribution | None = None
                 ) -> dict[str, Any]:
    """Search a schedule per noise level and play it on that level's held-out runs (the
    tasks drawn from ``distribution``, default the run's, as the evaluation drew them)."""
    data = read_evaluation(run_dir)
    levels = tuple(data.get("hidden_noise", ()))
    if len(levels) < 2:
        raise ValueError(f"--evaluation {run_dir}: its evaluation has hidden_noise "
                         f"{list(levels)}; the oracle needs a --hidden-noise evaluation")
    data, args, _, tasks, tune = evaluation_draw(args, distribution)
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
    contrasts = level_contrasts(oracle, records,
                                {m: scores(data["records"], m) for m in AGAINST})
    means = {m: 100 * float(np.mean(list(scores(records + data["records"], m).values())))
             for m in ("noise_oracle", *contrasts)}
    return {"evaluation": str(run_dir), "draw": draw_of(args), "hidden_noise": list(levels),
            "budget_per_level": budget, "schedules": schedules, "means": means,
            "contrasts": contrasts, "records": records}


def _table(contrasts: dict[str, Any], levels: Sequence[str],
           means: dict[str, float] | None = None) -> list[str]:
    """A markdown table of :func:`level_contrasts` (with each method's mean, if given)."""
    def cell(c: dict[str, float]) -> str:
        return f"{c['mean']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"

    mean = ["its mean, %"] if means else []
    lines = [" | ".join(["| method", *mean, "all runs", *(f"noise {v}" for v in levels)])
             + " |", "|---" * (2 + len(mean) + len(levels)) + "|"]
    return lines + [" | ".join([f"| `{m}`", *([f"{means[m]:.2f}"] if means else []),
                                *(cell(c[k]) for k in ("all", *levels))]) + " |"
                    for m, c in contrasts.items()]


def report(result: dict[str, Any], command: str) -> str:
    """The markdown report."""
    levels = [str(v) for v in result["hidden_noise"]]
    lines = [
        "# What knowing the hidden noise is worth on top of the schedule search",
        "", "Commands (in turn, into this folder): " + "; ".join(
            f"`{c}`" for c in result.get("commands", [command])), "",
        f"`knot_search` at {result['budget_per_level']} inner runs per noise level, on the "
        "evaluation's tuning tasks with their noise set to the level; each level's schedule "
        f"played on the held-out runs of that level (`{result['evaluation']}`, draw "
        f"{json.dumps(result['draw'])}). Test balanced accuracy: `noise_oracle` "
        f"{result['means']['noise_oracle']:.2f} %. Paired differences `noise_oracle` − method, "
        "points, 95 % stratified-bootstrap CIs:", "",
        *_table(result["contrasts"], levels, result["means"])]
    for switch in switches(result).values():
        lines += ["", *_switch_section(switch, levels)]
    lines += ["", "Schedules (the base rule plus each level's searched residual schedule):", ""]
    lines += [f"- noise {v}: `{json.dumps(s)}`" for v, s in result["schedules"].items()]
    return "\n".join(lines) + "\n"


def switches(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The switch studies in ``result``, keyed ``detector@at`` (a file written before the
    detectors existed holds one, under ``"switch"``: the gap's)."""
    found = list(result.get("switches", {}).values())
    if "switch" in result:
        found.insert(0, {"detector": "gap", "method": "noise_switch", **result["switch"]})
    return {f"{s['detector']}@{s['at']:g}": s for s in found}


_DETECTOR_TEXT = {
    "gap": "the level whose mean ln(train loss) − ln(val loss) on the tuning tasks ({means}) "
           "is nearest the run's. A hand rule, not a learned loss",
    "learned": "the level a multinomial logistic regression on the whole observation names; "
               "it was fitted on {detector_tasks} further train-split tasks at each level "
               "(training accuracy {train_accuracy:.0%}), playing the first schedule to the "
               "switch. A learned detector between searched schedules",
    "winner": "the level a multinomial logistic regression on the whole observation names, "
              "fitted to name the schedule that ended with the better validation score on "
              "{detector_tasks} further train-split tasks at each level, each played with "
              "every schedule after the switch (training accuracy {train_accuracy:.0%}). A "
              "learned selector between searched schedules",
    "truth": "the run's own level, known: what a perfect detector at the switch would earn. "
             "An oracle, not a loss"}


def _switch_section(switch: dict[str, Any], levels: Sequence[str]) -> list[str]:
    """The report's section on one switch study."""
    text = _DETECTOR_TEXT[switch["detector"]].format(
        detector_tasks=switch.get("detector_tasks"), train_accuracy=switch.get(
            "train_accuracy", 0.0), means=", ".join(f"{v}: {m:+.3f}" for v, m in zip(
                levels, switch.get("means", ()))))
    name = switch["method"]
    return [f"## A closed loop between them: `{name}` (at progress {switch['at']:g})", "",
            f"It plays the noise-{levels[0]} schedule until progress {switch['at']:g}, then "
            f"the schedule of {text}. Runs it sent to their own level: " + ", ".join(
                f"noise {v}: {100 * d:.0f} %" for v, d in switch["detected"].items())
            + f". Its mean: {switch['mean']:.2f} %. Paired differences `{name}` − method:",
            "", *_table(switch["contrasts"] | ({f"{name}_task_replay": switch["task_replay"][
                "contrast"]} if "task_replay" in switch else {}), levels)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluation", required=True, type=Path,
                        help="a run folder holding a --hidden-noise evaluation.json")
    parser.add_argument("--out", required=True, type=Path)
    for name in ("seed", "id_tasks", "seeds", "ood_tasks", "tune_tasks", "search_budget"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                            help="as agents.evaluate's (default: the evaluation's draw)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--switch-at", type=float, default=None, metavar="AT",
                        help="also run a switch between the schedules at progress AT")
    parser.add_argument("--detector", choices=DETECTORS, default="gap",
                        help="the switch's detector (default: gap, the hand rule)")
    parser.add_argument("--detector-tasks", type=int, default=48, metavar="N",
                        help="train-split tasks per level the learned detector is fitted on")
    parser.add_argument("--replay", action="store_true",
                        help="also run the task replay of the switch at --switch-at (the mean "
                             "parameters it played on a base task's other seeds, open loop)")
    parser.add_argument("--export", type=Path, default=None, metavar="DIR",
                        help="write the learned switch of --detector at --switch-at (run "
                             "first if the folder lacks it) as an adaptive-loss export")
    ns = parser.parse_args(argv)
    given = {k: v for k, v in vars(ns).items() if v is not None and k not in
             ("evaluation", "out", "switch_at", "detector", "detector_tasks", "export",
              "replay")}
    done = ns.out / "noise_oracle.json"
    key = f"{ns.detector}@{ns.switch_at:g}" if ns.switch_at is not None else None
    try:
        if ns.switch_at is not None:
            checks.real("--switch-at", ns.switch_at, 0.0, 1.0, open_low=True, open_high=True,
                        meaning="the progress of the switch")
        checks.integer("--detector-tasks", ns.detector_tasks, 1)
        for flag, path in (("--out", ns.out), ("--export", ns.export)):
            if path is not None:
                check_folder(flag, path)
        if ns.export is not None and (key is None or ns.detector not in ("learned", "winner")):
            raise ValueError("--export needs --switch-at and --detector learned or winner")
        if ns.replay and key is None:
            raise ValueError("--replay needs --switch-at (and the --detector of the switch)")
        args = EvalArgs(run_dir=str(ns.evaluation), **given)
        result = json.loads(done.read_text()) if done.exists() else \
            noise_oracle(ns.evaluation, args)
        if ns.export is not None and "detector_fit" in switches(result).get(key, {}):
            path = export_switch(result, key, AgentPolicy(ns.evaluation).parameters, ns.export,
                                 TaskSpec().horizon)
            print(f"wrote {path}: the switch {key} of {done}")
            return 0
        if ns.replay:
            if key not in switches(result):
                raise ValueError(f"--replay needs the switch {key} run first (this folder "
                                 f"holds {sorted(switches(result))})")
            study = switches(result)[key]
            study["task_replay"] = task_replay(study, result["hidden_noise"], args.device)
            result["switches"] = switches(result) | {key: study}
            result.pop("switch", None)
        elif ns.switch_at is not None:
            study = switch_study(ns.evaluation, args, result, ns.switch_at,
                                 detector=ns.detector, detector_tasks=ns.detector_tasks)
            result["switches"] = switches(result) | {f"{ns.detector}@{ns.switch_at:g}": study}
            result.pop("switch", None)
    except ValueError as err:
        print(f"noise_oracle: {err}", file=sys.stderr)
        return 2
    ns.out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/noise_oracle.py " + " ".join(argv or sys.argv[1:])
    result["commands"] = [*result.get("commands", []), command]
    atomic_write_text(ns.out / "noise_oracle.json", json.dumps(result))
    atomic_write_text(ns.out / "report.md", report(result, command))
    print(report(result, command))
    if ns.export is not None:
        path = export_switch(result, key, AgentPolicy(ns.evaluation).parameters, ns.export,
                             TaskSpec().horizon)
        print(f"wrote {path}: the switch {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
