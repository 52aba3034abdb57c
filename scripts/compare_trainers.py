"""ES, PPO and RecurrentPPO at an equal number of training episodes (issue 13, item 6).

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/compare_trainers.py --episodes 768 \
        --out results/trainers [--algos es ppo recurrentppo] [--id-tasks 6 --ood-tasks 1 --seeds 3]

Each algorithm trains one policy (residual actions around logit adjustment, rewarded against
the logit-adjustment twin, context features: the Makefile's ``AGENT_ENV`` before the default
moved to ES around LDAM-DRW at s = 10) on the train split of ``TaskDistribution.default()``
for ``--episodes`` episodes:

- **es**: :mod:`agents.es`, 16 antithetic pairs per generation, one shared twin per task;
- **ppo** and **recurrentppo**: :mod:`agents.train` with 32 batched envs and one episode of
  each per rollout (``n_steps`` = the horizon), so that an update sees 32 episodes.

Then each trained policy runs closed loop on the same held-out tasks and seeds, beside its base
rule (logit adjustment) and beside the constant at its own mean action. The table gives the
paired difference in test balanced accuracy (points) with 95 % stratified bootstrap intervals
(seeds resampled within tasks), and the wall time of training. ``report.md`` and
``trainers.json`` are written to ``--out`` (atomically); each run's folder stays beside them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agents.baselines import ConstantActionPolicy
from agents.es import ESArgs, train_es
from agents.evaluate import held_out_tasks
from agents.rollout import rollout_method, rollout_policy
from agents.stats import paired_difference
from agents.train import AgentPolicy, TrainArgs, train
from lossgym.io import atomic_write_text, check_folder
from lossgym.tasks import TaskDistribution

AGENT_ENV = {"action_mode": "residual", "max_step": 0.2, "reward_baseline": "base",
             "base_rule": "logit_adjusted", "context_features": True,
             "action_params": "gamma,alpha,tau,margin,scale"}
ALGOS = ("es", "ppo", "recurrentppo")
HORIZON = 20  # every task of TaskDistribution.default()
ENVS = 32


def train_one(algo: str, episodes: int, run_dir: Path, seed: int) -> float:
    """Train ``algo`` for ``episodes`` episodes into ``run_dir``; the wall seconds."""
    start = time.time()
    if algo == "es":
        pairs = 16
        train_es(ESArgs(run_dir=str(run_dir), generations=max(episodes // (2 * pairs), 1),
                        pairs=pairs, seed=seed, env_kwargs=dict(AGENT_ENV), progress=False))
    else:
        overrides = {"env_kwargs": dict(AGENT_ENV), "n_steps": HORIZON, "batch_size": 320}
        train(TrainArgs(algo=algo, run_dir=str(run_dir), timesteps=episodes * HORIZON,
                        num_envs=ENVS, seed=seed, progress=False, overrides=overrides))
    return time.time() - start


def balanced(records: list) -> np.ndarray:
    return np.array([100 * r.test["balanced_accuracy"] for r in records])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=768)
    parser.add_argument("--out", default="results/trainers")
    parser.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS))
    parser.add_argument("--id-tasks", type=int, default=6)
    parser.add_argument("--ood-tasks", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.episodes < 2 * 16 or args.episodes % ENVS:
        parser.error(f"--episodes {args.episodes} must be a positive multiple of {ENVS}")
    for flag, low in (("id_tasks", 0), ("ood_tasks", 0), ("seeds", 1), ("seed", 0)):
        if getattr(args, flag) < low:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least "
                         f"{low}")
    if args.id_tasks + args.ood_tasks < 1:
        parser.error("--id-tasks and --ood-tasks are both 0: need at least one held-out task")
    out = Path(args.out)
    try:
        check_folder("--out", out)
    except ValueError as err:
        parser.error(str(err))
    out.mkdir(parents=True, exist_ok=True)
    dist = TaskDistribution.default()
    tasks = held_out_tasks(dist, np.random.default_rng([args.seed, 7]), args.id_tasks,
                           args.seeds, args.ood_tasks)
    strata = [t.replace(seed=0) for t in tasks]
    base = balanced(rollout_method("logit_adjusted", tasks, device="cpu"))
    ce = balanced(rollout_method("ce", tasks, device="cpu"))
    print(f"{len(tasks)} held-out runs; logit adjustment {base.mean():.2f}, CE {ce.mean():.2f}",
          flush=True)
    rows = []
    for algo in args.algos:
        run_dir = out / algo
        seconds = train_one(algo, args.episodes, run_dir, args.seed)
        agent = AgentPolicy(run_dir)
        records = rollout_policy(agent, tasks, algo, device="cpu")
        score = balanced(records)
        mean_action = np.stack([r.actions for r in records]).mean(axis=(0, 1))
        constant = balanced(rollout_policy(
            ConstantActionPolicy(mean_action, parameters=agent.parameters, mode=agent.mode,
                                 base_rule=agent.base_rule, max_step=agent.max_step),
            tasks, f"{algo}_mean_action", device="cpu"))
        spread = float(np.stack([r.actions for r in records]).std(axis=(0, 1)).mean())
        row = {"algo": algo, "episodes": args.episodes, "train_seconds": round(seconds, 1),
               "balanced_accuracy": float(score.mean()),
               "vs_base": paired_difference(score, base, rng=0, strata=strata),
               "vs_ce": paired_difference(score, ce, rng=0, strata=strata),
               "vs_mean_action": paired_difference(score, constant, rng=0, strata=strata),
               "action_std": spread}
        rows.append(row)
        print(f"{algo}: {seconds:.0f} s; vs LA {row['vs_base']['mean']:+.2f} "
              f"[{row['vs_base']['ci_low']:+.2f}, {row['vs_base']['ci_high']:+.2f}]; vs its mean "
              f"action {row['vs_mean_action']['mean']:+.2f}", flush=True)

    def ci(d: dict) -> str:
        return f"{d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"

    lines = [
        "# ES, PPO and RecurrentPPO at equal training episodes",
        "",
        f"Command: `OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/compare_trainers.py --episodes "
        f"{args.episodes} --out {args.out} --algos {' '.join(args.algos)} --id-tasks "
        f"{args.id_tasks} --ood-tasks {args.ood_tasks} --seeds {args.seeds} --seed {args.seed}`",
        "",
        f"Held-out: {len(tasks) // args.seeds} base tasks of `TaskDistribution.default()` × "
        f"{args.seeds} seeds. Logit adjustment (the base rule) scores {base.mean():.2f} %, "
        f"cross-entropy {ce.mean():.2f} % test balanced accuracy. Differences are points of "
        "test balanced accuracy, paired, with 95 % stratified bootstrap intervals.",
        "",
        "| trainer | episodes | training (s) | balanced accuracy (%) | − logit adjustment "
        "| − cross-entropy | − its own mean action | action std |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['algo']} | {r['episodes']} | {r['train_seconds']:.0f} | "
                     f"{r['balanced_accuracy']:.2f} | {ci(r['vs_base'])} | {ci(r['vs_ce'])} | "
                     f"{ci(r['vs_mean_action'])} | {r['action_std']:.3f} |")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "trainers.json", json.dumps(
        {"args": vars(args), "base_mean": float(base.mean()), "ce_mean": float(ce.mean()),
         "rows": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
