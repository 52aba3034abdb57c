"""Where an agent's training time goes, and how many episodes an hour buys.

    python scripts/bench_agent_budget.py [--members 32] [--generations 2] [--distribution default]

Runs ES-style generations (one vector env of ``--members`` episodes with the base-rule twin,
residual actions and context features, as `make reproduce` trains) on train tasks and splits
the wall time into the inner training (``Population.train``), the validation evaluations
(``Population.evaluate``), the rest of the env (features, bookkeeping) and the policy (a
forward of PPO's actor network per step; ES's update is negligible beside it). The twin is
half of every population, so it costs half of the inner training and evaluation. It prints
the split and the episodes per hour that rate gives on the default train split.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch

from lossgym.envs.loss_tuning import LossTuningVectorEnv
from lossgym.population import Population
from lossgym.tasks import TaskDistribution

ENV = {"action_mode": "residual", "reward_baseline": "base", "base_rule": "logit_adjusted",
       "action_params": "gamma,alpha,tau,margin,scale", "device": "cpu"}


def timed(totals: dict[str, float], name: str, fn):  # noqa: ANN001, ANN202
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - start
    return wrapper


def measure(dist: TaskDistribution, members: int, generations: int, seed: int
            ) -> tuple[dict[str, float], int]:
    totals: dict[str, float] = defaultdict(float)
    train, evaluate = Population.train, Population.evaluate
    Population.train = timed(totals, "inner training", train)  # type: ignore[method-assign]
    Population.evaluate = timed(totals, "validation", evaluate)  # type: ignore[method-assign]
    policy = torch.nn.Sequential(torch.nn.Linear(29, 64), torch.nn.Tanh(),
                                 torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 5))
    episodes = 0
    rng = np.random.default_rng(seed)
    try:
        for g in range(generations):
            task = dist.sample(rng, "train")
            env = LossTuningVectorEnv(num_envs=members, tasks=task, **ENV)
            start = time.perf_counter()
            obs, _ = env.reset(seed=g)
            done = np.zeros(members, dtype=bool)
            while not done.all():
                t = time.perf_counter()
                with torch.no_grad():
                    actions = policy(torch.as_tensor(obs)).clamp(-1, 1).numpy()
                totals["policy"] += time.perf_counter() - t
                obs, _, terminated, truncated, _ = env.step(actions)
                done |= terminated | truncated
            totals["wall"] += time.perf_counter() - start
            episodes += members
    finally:
        Population.train, Population.evaluate = train, evaluate  # type: ignore[method-assign]
    return totals, episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    grids = {"default": TaskDistribution.default()}
    print(f"torch threads {torch.get_num_threads()}; {args.members} episodes (+ as many twins) "
          f"per population, {args.generations} populations per distribution")
    for name, dist in grids.items():
        totals, episodes = measure(dist, args.members, args.generations, args.seed)
        wall = totals["wall"]
        rest = wall - totals["inner training"] - totals["validation"] - totals["policy"]
        parts = {"inner training": totals["inner training"], "validation": totals["validation"],
                 "env rest": rest, "policy": totals["policy"]}
        split = ", ".join(f"{k} {100 * v / wall:.1f} %" for k, v in parts.items())
        print(f"{name}: {wall:.1f} s for {episodes} episodes ({episodes / wall * 3600:.0f} "
              f"episodes/hour); {split}; the twin is half of training and validation")


if __name__ == "__main__":
    main()
