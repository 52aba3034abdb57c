"""Is the learned policy more than a schedule search at the same budget?

The default agent turned out to play one schedule on every run (``scripts/schedule_ablation.py``),
so the baseline that decides whether training a policy was worth it is a black-box search of
open-loop schedules in the agent's own terms, at the agent's budget: CMA-ES over **residual
action trajectories** around the agent's base rule, with the agent's parameters, action mode,
base rule and step size. A candidate is ``knots`` actions in [−1, 1] per parameter at evenly
spaced steps, linearly interpolated over the horizon's steps; the all-zero candidate is the
base rule exactly, and CMA-ES starts there, as the agent's ES starts near a zero correction.
Each candidate is scored, as every tuned baseline of ``agents.evaluate`` is, by its mean final
*validation* balanced accuracy on the evaluation's tuning tasks (the train-split tasks that
``agents.evaluate`` draws with the same ``--seed``), with ``--budget`` inner runs in all (by
default the agent's training episodes). The best candidate then runs on the held-out tasks and
seeds of ``evaluation.json`` (paired); intervals are 95 % stratified bootstraps (seeds
resampled within base tasks).

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/schedule_search.py \
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

from agents import baselines as bl
from agents.evaluate import EvalArgs, agent_episodes, held_out_tasks, run_distribution
from agents.stats import paired_contrast, run_key
from agents.train import AgentPolicy
from lossgym.io import write_study
from lossgym.tasks import TaskSpec


def knots_to_actions(x: np.ndarray, parameters: int, horizon: int) -> np.ndarray:
    """Actions ``[horizon, parameters]`` from ``x`` (``parameters`` rows of knots, flattened):
    knot k of a row sits at step ``k · (horizon − 1) / (knots − 1)``, the steps between are
    linear in between, and everything is clipped to [−1, 1]."""
    rows = np.clip(np.asarray(x, dtype=np.float64).reshape(parameters, -1), -1.0, 1.0)
    at = np.linspace(0.0, horizon - 1.0, rows.shape[1]) if rows.shape[1] > 1 else np.zeros(1)
    steps = np.arange(horizon, dtype=np.float64)
    return np.stack([np.interp(steps, at, row) for row in rows], axis=1)


def replay(agent: AgentPolicy, actions: np.ndarray) -> bl.ReplayPolicy:
    """The open-loop policy that plays ``actions`` ``[H, d]`` in the agent's action terms."""
    return bl.ReplayPolicy(actions[None], parameters=agent.parameters, mode=agent.mode,
                           base_rule=agent.base_rule, max_step=agent.max_step)


def search(agent: AgentPolicy, tune: Sequence[TaskSpec], budget: int, knots: int,
           popsize: int, sigma0: float, seed: int, device: str) -> list[dict[str, Any]]:
    """CMA-ES (pycma, ask/tell, bounds [−1, 1], start at 0) over knot vectors; each candidate
    is scored by its mean final validation balanced accuracy on ``tune``. Returns one row per
    candidate: ``generation``, ``x`` and ``score``."""
    import cma

    horizon = tune[0].horizon
    if any(t.horizon != horizon for t in tune):
        raise ValueError("the tuning tasks have different horizons; one trajectory needs one")
    d = len(agent.parameters)
    candidates = budget // len(tune)
    if candidates < popsize or candidates % popsize:
        raise ValueError(f"--budget {budget} buys {candidates} candidates on {len(tune)} "
                         f"tasks: a positive multiple of --popsize {popsize} is needed")
    state = np.random.get_state()
    history: list[dict[str, Any]] = []
    try:
        es = cma.CMAEvolutionStrategy([0.0] * (d * knots), sigma0, {
            "popsize": popsize, "bounds": [-1.0, 1.0], "seed": seed + 1, "verbose": -9,
            "verb_log": 0, "verb_disp": 0})
        for generation in range(candidates // popsize):
            points = es.ask()
            trajectories = [knots_to_actions(x, d, horizon) for x in points]
            policies = [replay(agent, a) for a in trajectories for _ in tune]
            records = bl.rollout_members(policies, [t for _ in trajectories for t in tune],
                                         "schedule_search", device=device)
            scores = np.array([bl.final_val_score(r) for r in records]).reshape(
                len(points), len(tune)).mean(axis=1)
            es.tell(points, [-float(s) for s in scores])
            history += [{"generation": generation, "x": [float(v) for v in x],
                         "score": float(s)} for x, s in zip(points, scores)]
            print(f"generation {generation}: best {100 * scores.max():.2f} %, "
                  f"mean {100 * scores.mean():.2f} %", flush=True)
    finally:
        np.random.set_state(state)
    return history


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True, help="an evaluated run (evaluation.json)")
    p.add_argument("--budget", type=int, default=None,
                   help="inner training runs of the search (default: the agent's episodes)")
    p.add_argument("--knots", type=int, default=4, help="knots per parameter (default 4)")
    p.add_argument("--popsize", type=int, default=16, help="CMA-ES generation (default 16)")
    p.add_argument("--sigma0", type=float, default=0.3, help="CMA-ES step (default 0.3)")
    defaults = EvalArgs()
    p.add_argument("--seed", type=int, default=defaults.seed,
                   help="the evaluation's --seed (its task draws); CMA-ES gets seed + 1")
    p.add_argument("--id-tasks", type=int, default=defaults.id_tasks)
    p.add_argument("--ood-tasks", type=int, default=defaults.ood_tasks)
    p.add_argument("--seeds", type=int, default=defaults.seeds)
    p.add_argument("--tune-tasks", type=int, default=defaults.tune_tasks)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="default: RUN_DIR/schedule_search.md")
    args = p.parse_args(argv)
    for flag in ("knots", "popsize", "tune_tasks", "seeds", "id_tasks"):
        if getattr(args, flag) < (2 if flag in ("knots", "popsize") else 1):
            p.error(f"--{flag.replace('_', '-')}={getattr(args, flag)} is too small")
    if not 0.0 < args.sigma0 <= 1.0:
        p.error(f"--sigma0={args.sigma0} must be in (0, 1]")
    run_dir = Path(args.run_dir)
    path = run_dir / "evaluation.json"
    if not path.is_file():
        p.error(f"--run-dir {run_dir}: no evaluation.json (run agents.evaluate first)")
    agent = AgentPolicy(run_dir)
    if agent.mode != "residual":
        p.error(f"--run-dir {run_dir}: the agent's actions are {agent.mode!r}; this search "
                "is of residual trajectories around a base rule")
    started = time.perf_counter()
    records = json.loads(path.read_text())["records"]
    rng = np.random.default_rng(args.seed)  # the draws of agents.evaluate, in its order
    tasks = held_out_tasks(run_distribution(run_dir), rng, args.id_tasks, args.seeds,
                           args.ood_tasks)
    tune = [run_distribution(run_dir).sample(rng, "train") for _ in range(args.tune_tasks)]
    if [r["task"] for r in records if r["method"] == "agent"] != [t.to_dict() for t in tasks]:
        p.error(f"{path} was not made with these --seed/--id-tasks/--ood-tasks/--seeds")
    budget = args.budget or agent_episodes(run_dir)
    history = search(agent, tune, budget, args.knots, args.popsize, args.sigma0, args.seed,
                     args.device)
    best = max(history, key=lambda row: row["score"])
    actions = knots_to_actions(np.array(best["x"]), len(agent.parameters), tasks[0].horizon)
    held = bl.rollout_members([replay(agent, actions) for _ in tasks], tasks,
                              "schedule_search", device=args.device)
    score: dict[str, dict[tuple[str, int], float]] = {}
    for r in records:
        score.setdefault(r["method"], {})[run_key(r["task"])] = r["test"]["balanced_accuracy"]
    score["schedule_search"] = {run_key(r.task.to_dict()): r.test["balanced_accuracy"]
                                for r in held}
    pairs = [(a, b) for a, b in (
        ("agent", "schedule_search"), ("schedule_search", "tuned_ldam_drw"),
        ("schedule_search", "base_rule"), ("schedule_search", "logit_adjusted"))
        if a in score and b in score]
    result = {"command": "python scripts/schedule_search.py " + shlex.join(
                  sys.argv[1:] if argv is None else list(argv)),
              "config": dict(vars(args), budget=budget),
              "parameters": list(agent.parameters),
              "best": {"score": best["score"], "generation": best["generation"],
                       "actions": actions.tolist(),
                       "params_mean": np.mean([r.params for r in held], axis=0).tolist()},
              "mean_balanced_accuracy": {m: 100 * float(np.mean(list(v.values())))
                                         for m, v in score.items()},
              "contrasts": {f"{a} − {b}": paired_contrast(score[a], score[b])
                            for a, b in pairs},
              "history": history, "wall_s": time.perf_counter() - started}
    text = render(result)
    out = Path(args.out) if args.out else run_dir / "schedule_search.md"
    write_study(out.with_suffix(".json"), result, out, text)
    print(text)
    return result


def render(result: dict[str, Any]) -> str:
    """The Markdown report of :func:`main`'s result."""
    cfg, best = result["config"], result["best"]
    params = result["parameters"]
    mean = np.asarray(best["params_mean"])
    at = [0, len(mean) // 2, len(mean) - 1]
    played = ", ".join(f"{p} " + " → ".join(f"{mean[h, i]:.2f}" for h in at)
                       for i, p in enumerate(params))
    lines = [f"# Schedule search against `{cfg['run_dir']}`", "",
             f"Command: `{result['command']}` ({result['wall_s']:.0f} s). CMA-ES over residual "
             f"action trajectories around the agent's base rule ({cfg['knots']} knots per "
             f"parameter of {', '.join(params)}; {cfg['budget']} inner runs on "
             f"{cfg['tune_tasks']} tuning tasks, generations of {cfg['popsize']}), scored by "
             "mean final validation balanced accuracy; the best candidate (generation "
             f"{best['generation']}, validation {100 * best['score']:.2f} %) replayed on the "
             "held-out runs. Test balanced accuracy, points, 95 % stratified-bootstrap "
             "intervals, paired runs.", "",
             f"What the best candidate plays (mean over held-out runs, steps {at}): {played}.",
             "", "| contrast | mean [95 % CI] | runs |", "|---|---|---|"]
    for name, c in result["contrasts"].items():
        lines.append(f"| {name} | {c['mean']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] "
                     f"| {c['n']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
