"""Evaluate a trained agent against every baseline on held-out tasks, and write the report.

    python -m agents.evaluate --run-dir runs/ppo-default [--seeds 10] [--search-budget N]

Reads top to bottom:

1. **Held-out tasks.** In-distribution base tasks (``held_out_id``: train factors, unseen
   seeds) and one base task per out-of-distribution grid (unseen ratios, the CNN, the digits
   dataset), each with ``--seeds`` paired seeds: seed s gives every method the same pool,
   initialisation and data order.
2. **Tuning on the train split.** DRW (switch time and strength), the feedback rule (η,
   margin) and the best static (γ, α) are chosen on validation metrics of train tasks.
3. **Search at equal budget.** Random search and CMA-ES, each over constants and parametric
   schedules together (the schedule family contains the constants), each get as many inner
   training runs as the agent's training used (its episodes). The best constant among random
   search's draws (half of them) is reported as a static loss too.
4. **Everything on the held-out tasks**: the agent, its open-loop replay and its mean-action
   constant (ablations), the fixed and hand-scheduled baselines, the tuned and searched ones,
   the built-in loss methods (LDAM-DRW, FLSD-53, AdaFocal, ...), and the test-set oracle.
5. **The report**: ``report.md`` and plots in the run folder (atomically), plus
   ``evaluation.json`` with every record.

Progress (``--progress``) counts the inner training runs of the plan (every rollout, tuning
and search above: each population's runs as it finishes, wherever it ran) and shows a bar with
an ETA on a terminal, or a timestamped line at each tenth of the plan for logs. PBT's trials
run on Ray Tune, outside the count.

With Ray (``pip install 'lossgym[ray]'``), ``--ray auto|local|ADDRESS`` runs every population
as a Ray task (:mod:`agents.distributed`), with the same records as a local run, and a
Population Based Training baseline (:mod:`agents.pbt`, ``pbt``) gets the searches' budget.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from agents import baselines as bl
from agents import distributed
from agents.arguments import add_dataclass_arguments, build, check_fields, run_command
from agents.report import write_report
from agents.rollout import EpisodeRecord, Policy, ScheduleRule, rollout_method, rollout_policy
from agents.train import AgentPolicy
from lossgym.envs.config import DEFAULT_BASE_RULE
from lossgym.io import atomic_write_text
from lossgym.methods import METHODS
from lossgym.tasks import TaskDistribution, TaskSpec

STATIC_METHODS = ("ce", "focal_0.5", "focal_1", "focal_2", "focal_3", "focal_5", "cb_power",
                  "cb_power_focal", "tuned_constant", "random_search_constant", "logit_adjusted",
                  "poly1", *(m for m in METHODS if m.startswith("cb_beta")))
#: The fewest paired seeds per base task the report's claims are documented for.
MIN_SEEDS = 5
NOT_BASELINES = ("agent", "agent_replay", "agent_task_replay", "agent_mean_action",
                 "oracle_constant")
#: The oracle's grid of constants (it picks the best on the held-out tasks' test split).
ORACLE_GRID = {"gamma": (0.0, 1.0, 2.0), "alpha": (0.0, 0.5, 1.0)}
PROGRESS_MODES = ("auto", "bar", "lines")


def task_replay_actions(records: Sequence[EpisodeRecord],
                        base_task: Callable[[TaskSpec], Any] = lambda t: t.replace(seed=0)
                        ) -> np.ndarray:
    """For each run, the mean action trajectory the agent played on the OTHER seeds of the
    same base task (leave one seed out), ``[N, H, d]``: replayed open loop on the run's own
    seed, it separates reacting to the run from playing a task-conditioned schedule (replaying
    the run's own actions reproduces it exactly on a deterministic engine, whatever the
    policy does). ``base_task`` maps a run's task to its base task (by default: the task
    without its seed)."""
    keys = [base_task(r.task) for r in records]
    actions = np.stack([r.actions for r in records])
    out = []
    for i, key in enumerate(keys):
        others = [j for j, k in enumerate(keys) if k == key and j != i]
        if not others:
            raise ValueError(f"the base task of run {i} has one seed; leaving it out needs "
                             "at least two seeds per base task (--seeds >= 2)")
        out.append(actions[others].mean(axis=0))
    return np.stack(out)


@dataclass
class EvalArgs:
    """Arguments of an evaluation."""

    run_dir: str = "runs/ppo-default"
    """the trained run; the report is written there."""
    seeds: int = field(default=5, metadata={"minimum": 2})
    """paired seeds per held-out base task (at least 5 for the report's claims; CIs resample
    seeds within tasks, and leaving one seed out needs 2)."""
    id_tasks: int = field(default=12, metadata={"minimum": 0})
    """in-distribution held-out base tasks."""
    ood_tasks: int = field(default=4, metadata={"minimum": 0})
    """held-out base tasks per out-of-distribution grid (the default distribution has 3)."""
    tune_tasks: int = field(default=6, metadata={"minimum": 1})
    """train-split tasks (one seed each) used to tune and search the baselines."""
    search_budget: int | None = field(default=None, metadata={
        "minimum": 1, "meaning": "a positive number of inner training runs"})
    """inner training runs for each search (default: the agent's training episodes)."""
    seed: int = field(default=0, metadata={"minimum": 0})
    """seed of task draws and searches."""
    device: str = "auto"
    """where inner classifiers train."""
    ray: str | None = field(default=None, metadata={"metavar": "auto|local|ADDRESS"})
    """run the populations as Ray tasks: "local" starts a Ray here, "auto" joins the cluster
    of `ray start`, or a cluster ADDRESS (needs Ray)."""
    pbt: bool | None = None
    """add the Population Based Training baseline (needs Ray); default: when Ray is
    installed."""
    pbt_budget: int | None = field(default=None, metadata={
        "minimum": 1, "meaning": "a positive number of inner training runs"})
    """inner training runs for PBT (default: the search budget, i.e. the agent's episodes)."""
    hidden_noise: tuple[float, ...] = field(default=(), metadata={
        "minimum": 0.0, "maximum": 0.5, "metavar": "LEVEL",
        "meaning": "label-noise rates in [0, 0.5)"})
    """label-noise rates cycled over each held-out base task's seeds (e.g. 0 0.4; the i-th
    seed gets the (i mod levels)-th), in place of the tasks' own: the noise is hidden, as a
    user who does not know the noise rate of their data would face it. agent_task_replay then
    averages over a base task's other seeds whatever their noise, so the closed loop beats it
    only by reading the noise off its own run. Empty: each task's own noise, visible to the
    task replay."""
    small: bool = False
    """the small version (make demo): only cross-entropy, logit adjustment, tuned DRW,
    LDAM-DRW and tuned LDAM-DRW besides the agent and its ablations; no searches, PBT or
    oracle."""
    progress: str = field(default="auto", metadata={"choices": PROGRESS_MODES})
    """"bar": a progress bar with an ETA; "lines": a timestamped line at each tenth of the
    inner training runs, for logs; "auto": the bar when stdout is a terminal, else lines."""

    def __post_init__(self) -> None:
        check_fields(self)


def held_out_tasks(dist: TaskDistribution, rng: np.random.Generator, id_tasks: int,
                   seeds: int, ood_tasks: int = 1, hidden_noise: Sequence[float] = ()
                   ) -> list[TaskSpec]:
    """``id_tasks`` in-distribution base tasks and ``ood_tasks`` per out-of-distribution grid,
    each repeated over ``seeds`` consecutive (held-out) seeds; with ``hidden_noise``, the
    i-th seed of each base task at label noise ``hidden_noise[i % len(hidden_noise)]``."""
    bases = [dist.sample(rng, "held_out_id") for _ in range(id_tasks)]
    bases += [grid.draw(rng) for grid in dist.held_out_ood for _ in range(ood_tasks)]
    levels = [{} if not hidden_noise else
              {"label_noise": float(hidden_noise[s % len(hidden_noise)])} for s in range(seeds)]
    return [base.replace(seed=base.seed + s, **levels[s]) for base in bases
            for s in range(seeds)]


def hidden_noise_base_task(task: TaskSpec) -> TaskSpec:
    """A run's base task with its noise hidden (``--hidden-noise``): the task replay averages
    over all of a base task's other seeds, whatever their noise."""
    return task.replace(seed=0, label_noise=0.0)


def hidden_split_of(dist: TaskDistribution) -> Callable[[TaskSpec], str | None]:
    """``dist.split_of`` for runs whose label noise ``--hidden-noise`` replaced: the split of
    the task at any noise rate that ``dist``'s grids hold."""
    noises = sorted({noise for split in ("train", "held_out_id", "held_out_ood")
                     for grid in getattr(dist, split) for noise in grid.label_noises})

    def split_of(task: TaskSpec) -> str | None:
        return next((split for noise in noises
                     if (split := dist.split_of(task.replace(label_noise=noise)))), None)
    return split_of


def replay_key(hidden_noise: Sequence[float]) -> Callable[[TaskSpec], TaskSpec]:
    """What ``agent_task_replay`` groups runs by: the task without its seed, and without its
    noise too when the noise is hidden."""
    return hidden_noise_base_task if hidden_noise else (lambda t: t.replace(seed=0))


def run_distribution(run_dir: str | Path) -> TaskDistribution:
    """The task distribution the run in ``run_dir`` trained on (its config's
    ``args.distribution``; runs that name none trained on the default one)."""
    try:
        name = json.loads((Path(run_dir) / "config.json").read_text())["args"].get(
            "distribution", "default")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        name = "default"
    return TaskDistribution.named(name)


def agent_episodes(run_dir: Path) -> int:
    """Episodes the agent trained on, from its VecMonitor log."""
    lines = (run_dir / "monitor.csv").read_text().splitlines()
    return max(len(lines) - 2, 1)  # a JSON comment line and the header


def learning_curve(run_dir: Path, points: int = 50) -> np.ndarray:
    """[K, 2]: cumulative env steps and mean episode return over windows of the training."""
    rows = (run_dir / "monitor.csv").read_text().splitlines()[2:]
    data = np.array([[float(v) for v in row.split(",")[:2]] for row in rows if row])
    if len(data) == 0:
        return np.zeros((0, 2))
    steps = np.cumsum(data[:, 1])
    window = max(len(data) // points, 1)
    k = len(data) // window
    returns = data[: k * window, 0].reshape(k, window).mean(1)
    return np.stack([steps[window - 1 :: window][:k], returns], axis=1)


def record_to_dict(r: EpisodeRecord) -> dict:
    return {"method": r.method, "task": r.task.to_dict(), "test": r.test,
            "diverged": r.diverged, "val_curve": r.val_curve.tolist(),
            "params": r.params.tolist(), "parameters": list(r.parameters)}


class Progress:
    """Finished inner training runs against the planned total, shown as ``mode`` says:
    ``"bar"`` (a tqdm bar with an ETA on ``out``), ``"lines"`` (a timestamped line with the
    ETA at each tenth of the total) or ``"none"``. :meth:`add` may be called from any thread.
    """

    def __init__(self, mode: str, out: object = None) -> None:
        if mode not in ("bar", "lines", "none"):
            raise ValueError(f"mode={mode!r} must be 'bar', 'lines' or 'none'")
        self.total, self.done, self.mode = 0, 0, mode
        self.start = time.time()
        self.out = sys.stdout if out is None else out
        self._lock = threading.Lock()
        self._tenths = 0  # tenths of the total already reported as lines
        self._bar = None

    def say(self, message: str) -> None:
        """A timestamped line (above the bar, when there is one)."""
        line = f"[{time.time() - self.start:7.1f}s] {message}"
        if self._bar is not None:
            self._bar.write(line, file=self.out)
        elif self.mode != "none":
            print(line, file=self.out, flush=True)

    def add(self, runs: int) -> None:
        """Count ``runs`` more finished inner training runs."""
        with self._lock:
            self.done += runs
            if self._bar is not None:
                self._bar.update(runs)
            self._line_at_tenths()

    def set_total(self, total: int) -> None:
        """Plan ``total`` inner training runs, or correct the plan once what it depends on is
        known; the bar appears at the first call."""
        with self._lock:
            self.total = total
            self._line_at_tenths()
            if self.mode != "bar":
                return
            if self._bar is None:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, unit="run", desc="inner training runs",
                                 file=self.out, dynamic_ncols=True)
            else:
                self._bar.total = total
                self._bar.refresh()

    def _line_at_tenths(self) -> None:
        """In ``"lines"`` mode, a line when the count passes another tenth of the total."""
        tenths = min(10 * self.done // max(self.total, 1), 10)
        if self.mode != "lines" or tenths <= self._tenths:
            return
        self._tenths = tenths
        elapsed = time.time() - self.start
        left = elapsed * (self.total - self.done) / self.done
        self.say(f"{self.done}/{self.total} inner training runs "
                 f"({100 * self.done / max(self.total, 1):.0f} %)"
                 + (f", ETA {_duration(left)}" if left > 0 else ""))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _runs_in(result: object) -> int:
    """The inner training runs a unit's result holds: its records (in nested lists)."""
    if isinstance(result, EpisodeRecord):
        return 1
    if isinstance(result, (list, tuple)):
        return sum(_runs_in(item) for item in result)
    return 0


class Counting(distributed.Executor):
    """``inner``, calling ``count(runs)`` with the inner training runs (records) of each unit
    as it finishes; results and where units run are ``inner``'s."""

    def __init__(self, inner: distributed.Executor, count: Callable[[int], None]) -> None:
        self.inner, self.count = inner, count

    def map(self, fn: Callable[..., object], units: Sequence[tuple],
            on_result: Callable[[object], None] | None = None) -> list[object]:
        def finished(result: object) -> None:
            self.count(_runs_in(result))
            if on_result is not None:
                on_result(result)

        return self.inner.map(fn, units, on_result=finished)

    def gather(self, calls: Sequence[Callable[[], object]]) -> list[object]:
        return self.inner.gather(calls)


def grid_runs(space: str, tasks: Sequence[TaskSpec], **grid: Sequence[object]) -> int:
    """Inner training runs of ``bl.grid_search(space, tasks, **grid)``: candidates × tasks."""
    return math.prod(len(v) for v in {**bl.GRIDS.get(space, {}), **grid}.values()) * len(tasks)


def evaluate(args: EvalArgs, distribution: TaskDistribution | None = None,
             log: bool = True) -> Path:
    """Run the whole evaluation (on ``distribution``, by default the one the agent trained on,
    :func:`run_distribution`), on Ray with ``args.ray``; returns the report's path.
    With ``log``, progress as ``args.progress`` says; without, nothing is printed."""
    executor = distributed.executor_from(args.ray)
    if not log:
        mode = "none"
    elif args.progress == "auto":
        mode = "bar" if sys.stdout.isatty() else "lines"
    else:
        mode = args.progress
    progress = Progress(mode)
    try:
        with distributed.using(Counting(executor, progress.add)):
            return _evaluate(args, distribution, progress)
    finally:
        progress.close()
        executor.close()


def action_terms(agent: AgentPolicy) -> dict[str, Any]:
    """The agent's action terms (parameters, mode, base rule, step), for a policy that acts
    as the agent does."""
    return {"parameters": agent.parameters, "mode": agent.mode, "base_rule": agent.base_rule,
            "max_step": agent.max_step}


def search_parameters(agent: AgentPolicy) -> tuple[str, ...]:
    """What random search and CMA-ES search: γ and α (their spaces schedule these two) and
    every other parameter the agent controls, even when the agent controls neither."""
    return ("gamma", "alpha") + tuple(p for p in agent.parameters if p not in ("gamma", "alpha"))


def search_budget(args: EvalArgs, run_dir: Path, tune_tasks: int) -> int:
    """The searches' budget in inner runs (candidate × task): ``--search-budget``, else the
    agent's training episodes, rounded up to a whole number (at least 2) of candidates."""
    budget = args.search_budget or agent_episodes(run_dir)
    return max(-(-budget // tune_tasks), 2) * tune_tasks


def random_search_policies(result: tuple[bl.Config, bl.Table], parameters: Sequence[str]
                           ) -> dict[str, Policy]:
    """``random_search`` (its best draw) and, when it drew constants, ``random_search_constant``
    (the best of them) from a ``"mixed"`` random search's result."""
    policies: dict[str, Policy] = {"random_search": bl.policy_from_config("mixed", result[0])}
    constant = bl.best_constant(result[1], parameters)
    if constant is not None:
        policies["random_search_constant"] = bl.constant_rule(**constant)
    return policies


def _pbt(args: EvalArgs, tune: list[TaskSpec], budget: int, run_dir: Path,
         parameters: Sequence[str]) -> tuple[bl.Policy | None, str]:
    """The PBT baseline's replay policy and its budget note (None and why, when skipped);
    PBT searches the agent's ``parameters``."""
    if args.pbt_budget is not None:
        budget = max(-(-args.pbt_budget // len(tune)), 2) * len(tune)
    if args.pbt is False:
        return None, "PBT: skipped (disabled)."
    try:
        from agents.pbt import pbt_search

        distributed.require_ray()
    except ImportError:
        if args.pbt:
            raise
        return None, f"PBT: skipped (Ray is not installed: {distributed.MISSING_RAY})."
    result = pbt_search(tune, budget, args.seed, parameters=parameters, device=args.device)
    schedule = result.schedule()
    atomic_write_text(run_dir / "pbt_schedule.json", json.dumps(schedule.to_dict(), indent=1))
    episodes = agent_episodes(run_dir)
    relation = ("equal to the agent's training episodes" if budget >= episodes else
                f"FEWER than the agent's {episodes} training episodes (--pbt-budget)")
    note = f"{result.budget_note()} PBT's budget is {relation}."
    return ScheduleRule(schedule, parameters), note


def base_method(agent: AgentPolicy) -> str | None:
    """The method whose records are the agent's base rule (for the trajectories): None without
    one; ``logit_adjusted`` for the default base rule, a method every evaluation runs; else
    ``base_rule``, the evaluation running the rule itself as a fixed rule."""
    if agent.base_rule is None:
        return None
    return "logit_adjusted" if agent.base_rule == DEFAULT_BASE_RULE else "base_rule"


def _knot_policy(run_dir: Path, config: dict[str, Any], agent: AgentPolicy) -> bl.KnotPolicy:
    """knot_search's policy; the loss schedule it plays goes to ``knot_schedule.json``, where
    it can serve as another agent's ``base_rule``."""
    policy = bl.KnotPolicy(**config, **action_terms(agent))
    atomic_write_text(run_dir / "knot_schedule.json",
                      json.dumps(policy.schedule().to_dict(), indent=1))
    return policy


def _ablations(agent: AgentPolicy, agent_records: list[EpisodeRecord], tasks: list[TaskSpec],
               kw: dict[str, Any], hidden_noise: Sequence[float] = ()
               ) -> list[Callable[[], list[EpisodeRecord]]]:
    """The agent's three open-loop ablations, to run once its records are in: each run's own
    actions replayed (``agent_replay``), its mean action held (``agent_mean_action``) and each
    base task's mean trajectory replayed on its seeds (``agent_task_replay``; the base task
    without its noise with ``hidden_noise``)."""
    terms = {"parameters": agent.parameters, "mode": agent.mode, "base_rule": agent.base_rule,
             "max_step": agent.max_step}
    actions = np.stack([r.actions for r in agent_records])
    return [
        # Replay needs one policy row per member: run each compatible group separately.
        partial(bl.rollout_members, [bl.ReplayPolicy(a[None], **terms) for a in actions],
                tasks, "agent_replay", **kw),
        partial(rollout_policy, bl.ConstantActionPolicy(actions.mean(axis=(0, 1)), **terms),
                tasks, "agent_mean_action", **kw),
        partial(bl.rollout_members,
                [bl.ReplayPolicy(a[None], **terms)
                 for a in task_replay_actions(agent_records, replay_key(hidden_noise))],
                tasks, "agent_task_replay", **kw),
    ]


def _evaluate(args: EvalArgs, distribution: TaskDistribution | None, progress: Progress
              ) -> Path:
    start = progress.start
    run_dir = Path(args.run_dir)
    rng = np.random.default_rng(args.seed)
    dist = distribution or run_distribution(run_dir)
    kw = {"device": args.device}

    hidden = tuple(args.hidden_noise)
    tasks = held_out_tasks(dist, rng, args.id_tasks, args.seeds, args.ood_tasks, hidden)
    tune = [dist.sample(rng, "train") for _ in range(args.tune_tasks)]
    budget = search_budget(args, run_dir, len(tune))
    agent = AgentPolicy(run_dir)

    # Random search and CMA-ES cover every loss parameter the agent controls, and γ and α
    # (their schedules are of these two; the others are constants), constants and schedules
    # at once: each gets the agent's whole budget.
    search_rng = np.random.default_rng([args.seed, 1])
    random_search = partial(bl.random_search, tune, budget, search_rng, "mixed",
                            parameters=search_parameters(agent), **kw)
    cma_search = partial(bl.cma_search, tune, budget, args.seed, "schedule",
                         parameters=search_parameters(agent), **kw)
    # A residual agent also meets CMA-ES over open-loop schedules in its own action terms,
    # from its base rule: the search that a learned schedule has to beat.
    knot_searches = [partial(bl.knot_search, tune, budget, args.seed, **action_terms(agent),
                             **kw)] if agent.mode == "residual" and not args.small else []

    hand = {"ce": bl.HAND_BASELINES["ce"]} if args.small else bl.HAND_BASELINES
    methods = ("logit_adjusted", "ldam_drw") if args.small else bl.METHOD_BASELINES
    spaces = ("drw", "ldam_drw") if args.small else ("drw", "ldam_drw", "feedback", "constant")
    searches = [] if args.small else [
        random_search, cma_search,
        partial(bl.grid_search, "constant", tasks, select="test", **ORACLE_GRID, **kw),
        partial(_pbt, args, tune, budget, run_dir, agent.parameters), *knot_searches]
    # The inner training runs of each wave, for the progress. The second wave runs the three
    # ablations, the tuned policies and the oracle on the held-out tasks; until the first wave
    # is done, the plan counts every tuned policy there can be: one per tuned space, and
    # random search, its best constant, CMA-ES and PBT (the constant and PBT may drop out).
    # An agent around a base rule other than logit adjustment (a method here) also meets the
    # base rule itself, run as a fixed rule: what the agent's corrections add is against it.
    base_runs = []
    if base_method(agent) == "base_rule":
        base_runs = [partial(rollout_policy, ScheduleRule(agent.base_rule, agent.parameters),
                             tasks, "base_rule", **kw)]
    first_runs = (len(tasks) * (1 + len(hand) + len(methods) + len(base_runs))
                  + sum(grid_runs(space, tune) for space in spaces)
                  + (0 if args.small else (2 + len(knot_searches)) * budget
                     + grid_runs("constant", tasks, **ORACLE_GRID)))

    def second_runs(tuned: int, oracle: int) -> int:
        return len(tasks) * (3 + tuned + oracle)

    progress.set_total(first_runs + (second_runs(len(spaces), 0) if args.small else
                                     second_runs(len(spaces) + 4 + len(knot_searches), 1)))
    say = progress.say
    say(f"{len(tasks)} held-out runs per method; tuning on {len(tune)} train tasks; "
        f"search budget {budget} inner runs; {progress.total} inner training runs planned"
        + ("" if args.small else " (PBT's, on Ray Tune, are not counted)"))
    # Independent calls go to the executor together (in threads with Ray), in two waves: the
    # agent, the fixed baselines and every tuning and search; then what depends on them.
    run = distributed.current().gather
    first = run([
        partial(rollout_policy, agent, tasks, "agent", **kw),
        *[partial(rollout_policy, make(), tasks, name, **kw) for name, make in hand.items()],
        *[partial(rollout_method, name, tasks, device=args.device) for name in methods],
        *[partial(bl.grid_search, space, tune, **kw) for space in spaces],
        *searches,
        *base_runs,
    ])
    if base_runs:
        base_records = first.pop()
    agent_records, fixed = first[0], first[1 : 1 + len(hand) + len(methods)]
    tuned_configs = dict(zip(spaces, first[1 + len(fixed) : 1 + len(fixed) + len(spaces)]))
    say("agent, fixed baselines, tuning and searches done")

    tuned: dict[str, Policy] = {
        "tuned_drw": bl.drw_rule(**tuned_configs["drw"][0]),
        "tuned_ldam_drw": bl.ldam_drw_rule(**tuned_configs["ldam_drw"][0])}
    extra = []
    if not args.small:
        randoms, cmas, oracle, (pbt, pbt_note), *knots = first[1 + len(fixed) + len(spaces):]
        tuned["tuned_feedback"] = bl.FeedbackRule(**tuned_configs["feedback"][0])
        tuned["tuned_constant"] = bl.constant_rule(**tuned_configs["constant"][0])
        tuned.update(random_search_policies(randoms, search_parameters(agent)))
        tuned["cma_es"] = bl.policy_from_config("schedule", cmas[0])
        if knots:
            tuned["knot_search"] = _knot_policy(run_dir, knots[0][0], agent)
        if pbt is not None:
            tuned["pbt"] = pbt
        extra = [partial(rollout_policy, bl.constant_rule(**oracle[0]), tasks,
                         "oracle_constant", **kw)]
    else:
        pbt_note = SMALL_SKIPS
    progress.set_total(first_runs + second_runs(len(tuned), len(extra)))
    second = run([
        *_ablations(agent, agent_records, tasks, kw, hidden),
        *[partial(rollout_policy, policy, tasks, name, **kw) for name, policy in tuned.items()],
        *extra,
    ])
    records: list[EpisodeRecord] = list(agent_records) + second[0] + second[1] + second[2]
    if base_runs:
        records += base_records
    for recs in fixed + second[3:]:
        records += recs
    say("held-out evaluation done")

    episodes = agent_episodes(run_dir)
    equal = ("equal to the agent's training episodes" if budget >= episodes else
             f"FEWER than the agent's {episodes} training episodes (--search-budget), so the "
             "searches are handicapped")
    note = (SMALL_NOTE if args.small else "") + (
        f"FEWER SEEDS ({args.seeds}) than the documented minimum of {MIN_SEEDS} per base "
        f"task: the CIs are wide. " if args.seeds < MIN_SEEDS else "") + (
        f"Agent: {run_dir.name}, trained on {episodes} episodes. "
        f"Held-out: {len(tasks) // args.seeds} base tasks × {args.seeds} paired seeds. "
        f"Tuning: {len(tune)} train tasks. ") + (
        f"HIDDEN NOISE (--hidden-noise): each base task's seeds cycle through label-noise rates "
        f"{', '.join(f'{v:g}' for v in hidden)} in place of the tasks' own, and "
        "agent_task_replay averages over a base task's other seeds whatever their noise, so "
        "the closed loop beats it only by reading the noise off its own run. " if hidden
        else "") + (
        f"base_rule: the agent's base rule {json.dumps(agent.base_rule.to_dict())}, run as a "
        "fixed rule (the agent's zero action). " if base_runs else "") + (
        "" if args.small else (
            f"Searches (random, CMA-ES, over the parameters "
            f"{', '.join(search_parameters(agent))}, constants and schedules of γ and α "
            f"together; "
            f"random_search_constant is the best constant among random search's draws"
            + ("; knot_search: CMA-ES over open-loop schedules of the agent's residual "
               "actions, 4 knots per parameter, from its base rule" if knot_searches else "")
            + "): "
            f"{budget} inner runs each, {equal} (the agent's reward also trained one twin per "
            f"episode, not counted). ")) + f"{pbt_note} Wall time of the evaluation: " \
        f"{time.time() - start:.0f} s."
    atomic_write_text(run_dir / "evaluation.json",
                      json.dumps({"note": note, "tuned": {k: str(v) for k, v in tuned.items()},
                                  "base_rule": base_method(agent),
                                  "hidden_noise": list(hidden), "draw": draw_of(args),
                                  "records": [record_to_dict(r) for r in records]}))
    path = report_from_json(run_dir, dist)
    say(f"report written: {path}")
    return path


#: The options that draw an evaluation's held-out and tuning tasks (``--hidden-noise`` aside):
#: ``evaluation.json`` records them as ``draw``, and ``--add-methods`` draws with them again.
DRAW_FIELDS = ("seed", "id_tasks", "seeds", "ood_tasks", "tune_tasks")


def draw_of(args: EvalArgs) -> dict[str, int]:
    """The ``draw`` entry of ``evaluation.json``: ``args``' values of :data:`DRAW_FIELDS`."""
    return {name: getattr(args, name) for name in DRAW_FIELDS}


def recorded_draw(args: EvalArgs, data: dict[str, Any], path: Path) -> EvalArgs:
    """``args`` with the draw that made the evaluation ``data`` (read from ``path``), so that
    ``--add-methods`` needs no draw options; ``args`` as they are for an evaluation that
    predates the record. A draw option given with a value other than its default and the
    recorded one is refused: it would draw other tasks."""
    draw = data.get("draw")
    if draw is None:
        return args
    if not isinstance(draw, dict) or sorted(draw) != sorted(DRAW_FIELDS):
        raise ValueError(f"{path}: its 'draw' must hold exactly {list(DRAW_FIELDS)}, got "
                         f"{draw!r:.80}")
    defaults = {f.name: f.default for f in fields(EvalArgs)}
    for name in DRAW_FIELDS:
        given = getattr(args, name)
        if given not in (draw[name], defaults[name]):
            option = "--" + name.replace("_", "-")
            raise ValueError(f"{option} {given}: {path} was drawn with {option} {draw[name]}; "
                             f"with {given} its held-out tasks differ. Leave {option} out: "
                             "--add-methods draws as the evaluation recorded")
    try:
        return replace(args, **draw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: its 'draw' {draw} is not a valid draw: {err}") from err


#: What the note of a ``--small`` evaluation says, until ``--add-methods`` completes it.
SMALL_NOTE = ("SMALL VERSION (--small, as in make demo): the agent against cross-entropy, logit "
              "adjustment, tuned DRW, LDAM-DRW and tuned LDAM-DRW (its scale and switch) only; "
              "the full evaluation (make reproduce) runs every baseline. ")
SMALL_SKIPS = "No searches, PBT or oracle (--small)."
COMPLETED_NOTE = ("Made as the small version (--small), then completed by --add-methods to "
                  "every baseline of the full evaluation. ")
ADDED_NOTE = " Added afterwards by --add-methods on the same held-out tasks and seeds: "


def added_note(note: str, added: Sequence[str], methods: set[str], residual: bool) -> str:
    """``note`` with the methods ``--add-methods`` added named once, in one closing sentence,
    and without the SMALL VERSION label once ``methods`` (those with records) hold every
    baseline of the full evaluation (``knot_search`` too for a ``residual`` agent)."""
    names: list[str] = []

    def take(match: re.Match[str]) -> str:
        names.extend(match.group(1).split(", "))
        return ""

    # A method's name may hold a dot (focal_0.5), never a dot followed by a space.
    note = re.sub(re.escape(ADDED_NOTE) + r"(.+?)\.(?= |$)", take, note)
    names += [n for n in added if n not in names]
    full = (set(bl.HAND_BASELINES) | set(bl.METHOD_BASELINES) | set(TUNED_FAMILIES)
            | {"random_search", "random_search_constant", "cma_es", "oracle_constant", "pbt"}
            | ({"knot_search"} if residual else set()))
    if full <= methods and note.startswith(SMALL_NOTE):
        note = (COMPLETED_NOTE + note[len(SMALL_NOTE):]).replace(" " + SMALL_SKIPS, "")
    return note + ADDED_NOTE + ", ".join(names) + "."


def rerun_note(note: str, name: str, budget: int, run_dir: Path, again: bool = True) -> str:
    """``note`` saying the budget that search ``name`` was run at by ``--add-methods`` (in
    place of what an earlier run of it by ``--add-methods`` said): the note's first budgets
    are those of the evaluation's first agent, and a retrained agent's search gets its own.
    ``again``: whether the evaluation held records of the search (a ``--small`` one does not)."""
    said = f" {name} was run{' again' if again else ''} by --add-methods at "
    note = re.sub(f" {re.escape(name)} was run (again )?by --add-methods at "
                  r"\d+ inner runs \(.*? training episodes\)\.", "", note)
    return (note + f"{said}{budget} inner runs ({run_dir.name}: "
            f"{agent_episodes(run_dir)} training episodes).")


#: Tuned baselines that ``--add-methods`` can add: name → (grid space, rule factory).
TUNED_FAMILIES: dict[str, tuple[str, Callable[..., Policy]]] = {
    "tuned_drw": ("drw", bl.drw_rule), "tuned_ldam_drw": ("ldam_drw", bl.ldam_drw_rule),
    "tuned_feedback": ("feedback", bl.FeedbackRule), "tuned_constant": ("constant",
                                                                        bl.constant_rule)}
#: The searches that ``--add-methods`` can add, over the agent's parameters at the budget of
#: :func:`search_budget` (PBT's: ``--pbt-budget``), drawn as :func:`evaluate` draws them
#: (``random_search`` also adds ``random_search_constant``), and the test-set oracle.
SEARCH_FAMILIES = ("random_search", "cma_es", "knot_search", "pbt", "oracle_constant")


def evaluation_draw(args: EvalArgs, distribution: TaskDistribution | None = None
                    ) -> tuple[dict[str, Any], EvalArgs, TaskDistribution, list[TaskSpec],
                               list[TaskSpec]]:
    """The evaluation in ``args.run_dir``'s ``evaluation.json``, ``args`` with its draw
    (:func:`recorded_draw`), its distribution (default: the run's), and its held-out and
    tuning tasks drawn again as :func:`evaluate` drew them. Raises ``ValueError`` when the
    held-out tasks differ from those of its records."""
    run_dir = Path(args.run_dir)
    path = run_dir / "evaluation.json"
    data = read_evaluation(run_dir)
    args = recorded_draw(args, data, path)
    dist = distribution or run_distribution(run_dir)
    rng = np.random.default_rng(args.seed)
    hidden = tuple(data.get("hidden_noise", ()))  # as the evaluation drew its tasks
    tasks = held_out_tasks(dist, rng, args.id_tasks, args.seeds, args.ood_tasks, hidden)
    tune = [dist.sample(rng, "train") for _ in range(args.tune_tasks)]  # as evaluate() draws
    reference = [r["task"] for r in data["records"] if r["method"] == "ce"]
    if reference != [t.to_dict() for t in tasks]:
        raise ValueError(f"{path} was not made with " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in draw_of(args).items())
            + ": its held-out tasks differ (an evaluation made before lossgym recorded its "
            "draw needs the options it was made with)")
    return data, args, dist, tasks, tune


def add_methods(args: EvalArgs, methods: Sequence[str],
                distribution: TaskDistribution | None = None) -> Path:
    """Run built-in ``methods``, hand baselines, tuned families of :data:`TUNED_FAMILIES`
    (tuned again on the evaluation's tuning tasks) or the searches of :data:`SEARCH_FAMILIES`
    (run again at the agent's budget) on the held-out tasks of an evaluation already in
    ``evaluation.json`` (the same draws: :func:`recorded_draw`), add their records and
    rewrite the report; nothing else runs again.
    Methods already there are replaced. ``"agent"`` reruns the agent family
    (:func:`_rerun_agent`): a retrained agent meets the same baselines on the same runs."""
    run_dir = Path(args.run_dir)
    path = run_dir / "evaluation.json"
    data, args, dist, tasks, tune = evaluation_draw(args, distribution)
    data["draw"] = draw_of(args)  # the held-out tasks match: recorded for the next time
    executor = distributed.executor_from(args.ray)
    kw = {"device": args.device}
    residual = AgentPolicy(run_dir).mode == "residual"
    try:
        with distributed.using(executor):
            for name in methods:  # each written when done: a later failure keeps it
                added = _run_added(name, args, run_dir, tasks, tune, data, kw)
                replaced = {r.method for r in added}
                data["records"] = ([r for r in data["records"] if r["method"] not in replaced]
                                   + [record_to_dict(r) for r in added])
                data["note"] = added_note(data["note"], [name],
                                          {r["method"] for r in data["records"]}, residual)
                atomic_write_text(path, json.dumps(data))
    finally:
        executor.close()
    return report_from_json(run_dir, dist)


def _rerun_agent(run_dir: Path, tasks: list[TaskSpec], data: dict[str, Any],
                 kw: dict[str, Any]) -> list[EpisodeRecord]:
    """``--add-methods agent``: the records of the agent now in ``run_dir`` (retrained there,
    say), of its ablations and of its base rule, in place of the evaluation's; the baselines'
    records stay, so a new agent meets them on the same runs."""
    agent = AgentPolicy(run_dir)
    records = rollout_policy(agent, tasks, "agent", **kw)
    added = list(records)
    for job in _ablations(agent, records, tasks, kw, data.get("hidden_noise", ())):
        added += job()
    data["records"] = [r for r in data["records"] if r["method"] != "base_rule"]
    data["base_rule"] = base_method(agent)
    if data["base_rule"] == "base_rule":
        added += rollout_policy(ScheduleRule(agent.base_rule, agent.parameters), tasks,
                                "base_rule", **kw)
    data["note"] += (
        f" The agent's records (agent, its ablations and base_rule) were replaced by "
        f"--add-methods agent with those of the agent in {run_dir.name}, trained on "
        f"{agent_episodes(run_dir)} episodes" + (
            f", around the base rule {json.dumps(agent.base_rule.to_dict())}"
            if agent.base_rule is not None else "") + "; the budgets above are the first "
        "agent's.")
    return added


def _run_added(name: str, args: EvalArgs, run_dir: Path, tasks: list[TaskSpec],
               tune: list[TaskSpec], data: dict[str, Any], kw: dict[str, Any]
               ) -> list[EpisodeRecord]:
    """The held-out records of one ``--add-methods`` name (tuned or searched first, with
    what it chose put in ``data["tuned"]``)."""
    if name == "agent":
        return _rerun_agent(run_dir, tasks, data, kw)
    if name in bl.HAND_BASELINES or name in bl.METHOD_BASELINES:
        return bl.rollout_baseline(name, tasks, device=args.device)
    if name not in TUNED_FAMILIES and name not in SEARCH_FAMILIES:
        return rollout_method(name, tasks, device=args.device)
    policies: dict[str, Policy] = {}
    if name == "oracle_constant":  # picked on the held-out tasks' test split, as evaluate()
        oracle = bl.grid_search("constant", tasks, select="test", **ORACLE_GRID, **kw)[0]
        return rollout_policy(bl.constant_rule(**oracle), tasks, name, **kw)
    if name == "pbt":
        agent = AgentPolicy(run_dir)
        pbt, pbt_note = _pbt(args, tune, search_budget(args, run_dir, len(tune)), run_dir,
                             agent.parameters)
        if pbt is None:
            raise ValueError(f"--add-methods pbt: {pbt_note}")
        data["note"] += f" {pbt_note}"
        policies[name] = pbt
    elif name in TUNED_FAMILIES:
        space, factory = TUNED_FAMILIES[name]
        policies[name] = factory(**bl.grid_search(space, tune, **kw)[0])
    else:
        agent = AgentPolicy(run_dir)
        budget = search_budget(args, run_dir, len(tune))
        if name == "knot_search":
            if agent.mode != "residual":
                raise ValueError("knot_search searches residual actions around a base rule; "
                                 f"this agent's are {agent.mode!r}")
            config = bl.knot_search(tune, budget, args.seed, **action_terms(agent), **kw)[0]
            policies[name] = _knot_policy(run_dir, config, agent)
        elif name == "random_search":
            policies = random_search_policies(bl.random_search(
                tune, budget, np.random.default_rng([args.seed, 1]), "mixed",
                parameters=search_parameters(agent), **kw), search_parameters(agent))
        else:
            policies[name] = bl.policy_from_config("schedule", bl.cma_search(
                tune, budget, args.seed, "schedule", parameters=search_parameters(agent),
                **kw)[0])
        data["note"] = rerun_note(data["note"], name, budget, run_dir,
                                  again=any(r["method"] == name for r in data["records"]))
    added: list[EpisodeRecord] = []
    for label, policy in policies.items():
        data.setdefault("tuned", {})[label] = str(policy)
        added += rollout_policy(policy, tasks, label, **kw)
    return added


def report_from_json(run_dir: str | Path, dist: TaskDistribution | None = None) -> Path:
    """(Re)write the report from ``evaluation.json``, without running anything again."""
    run_dir = Path(run_dir)
    data = read_evaluation(run_dir)
    records = [
        EpisodeRecord(task=TaskSpec.from_dict(r["task"]), method=r["method"],
                      params=np.asarray(r["params"]), actions=np.zeros((0, 0)),
                      val_curve=np.asarray(r["val_curve"]), test=r["test"],
                      diverged=r["diverged"], parameters=tuple(r["parameters"]))
        for r in data["records"]
    ]
    baselines = sorted({r.method for r in records} - set(NOT_BASELINES))
    mean_bacc = {m: np.mean([r.test["balanced_accuracy"] for r in records if r.method == m])
                 for m in baselines}
    best = max(mean_bacc, key=mean_bacc.get)
    note = (f"{data['note']} Best baseline = highest mean held-out balanced accuracy among "
            f"baselines (the oracle excluded): {best}.")
    dist = dist or run_distribution(run_dir)
    return write_report(run_dir, records, reference="ce", best_baseline=best, agent="agent",
                        budget_note=note, learning_curve=learning_curve(run_dir),
                        split_of=hidden_split_of(dist) if data.get("hidden_noise") else
                        dist.split_of,
                        static_methods=STATIC_METHODS, base_rule=data.get("base_rule"),
                        hidden_noise=bool(data.get("hidden_noise")))


def build_parser() -> argparse.ArgumentParser:
    """The command line: the fields of :class:`EvalArgs` (each option's help its docstring),
    and ``--report-only`` and ``--add-methods``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_arguments(parser, EvalArgs)
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite report.md from evaluation.json without running anything")
    parser.add_argument("--add-methods", default=None, metavar="NAME,...",
                        help="run these built-in methods, hand baselines, tuned families "
                             "(tuned_drw, tuned_ldam_drw, tuned_feedback, tuned_constant) or "
                             "searches (random_search, cma_es, knot_search, pbt, at the "
                             "agent's budget) or oracle_constant on the "
                             "held-out tasks of the evaluation in evaluation.json (drawn with "
                             "the options it records), add them "
                             "and rewrite the report; 'agent' reruns the agent in the run "
                             "folder (retrained, say), its ablations and base rule against "
                             "the baselines already there")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see :func:`build_parser`); a bad value exits with status 2."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    build(parser, EvalArgs, ns)
    if ns.add_methods is not None:
        names = [n for n in ns.add_methods.split(",") if n]
        known = (set(METHODS) | set(bl.HAND_BASELINES) | set(TUNED_FAMILIES)
                 | set(SEARCH_FAMILIES) | {"agent"})
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            parser.error(f"--add-methods={ns.add_methods!r}: unknown {unknown or 'none given'};"
                         f" built-in methods and tuned families are {sorted(known)}")
        ns.add_methods = names
    if ns.ray is not None:
        try:
            distributed.require_ray()
        except ImportError:
            parser.error(distributed.MISSING_RAY)
    return ns


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.evaluate`` and ``lossgym evaluate``: evaluate, print the report's
    path. Errors in the user's input (options, a missing or damaged run folder, checkpoint or
    evaluation.json) exit with status 2 and a message."""
    ns = parse_args(argv)
    fields = {k: v for k, v in vars(ns).items() if k not in ("report_only", "add_methods")}
    if ns.report_only:
        return run_command(lambda: report_from_json(ns.run_dir))
    if ns.add_methods:
        return run_command(lambda: add_methods(EvalArgs(**fields), ns.add_methods))
    return run_command(lambda: evaluate(EvalArgs(**fields)))


def read_evaluation(run_dir: Path) -> dict:
    """``evaluation.json`` of a run; ``ValueError`` says why it cannot be used."""
    path = Path(run_dir) / "evaluation.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ValueError(f"{path} does not exist: evaluate the run first (without "
                         "--report-only or --add-methods)") from err
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} cannot be read: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("records"), list) \
            or not isinstance(data.get("note"), str):
        raise ValueError(f"{path} is not an evaluation (it needs 'note' and 'records')")
    return data


if __name__ == "__main__":
    sys.exit(main())
