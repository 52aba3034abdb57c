"""Where an agent's training time goes, and how many episodes an hour buys.

    python scripts/bench_agent_budget.py [--pairs 16] [--generations 3] [--pairs-per-task 1 2]

Runs ES generations as `make reproduce` trains them (:func:`agents.es.run_generation`: P
antithetic pairs on default train tasks, residual actions around logit adjustment, the
base-rule twin, context features) and times each generation's tasks twice, side by side:

- **own twins**: the env trains a twin beside every member (2 × 2P runs);
- **shared twins**: one zero-action member per task is the twin (2P + P/k runs for k pairs per
  task), which gives every member the same return (``tests/test_es.py``).

It splits the wall time into the inner training (``Population.train``), the validation
evaluations (``Population.evaluate``), the rest of the env (features, bookkeeping) and the
policy (a batched forward of PPO's actor network per step; ES's update is negligible beside
it), and prints episodes per hour with the median over generations of each ratio.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch

from agents.es import FrozenNormalizer, PopulationActor, pair_tasks, run_generation
from lossgym.envs.core import TaskSource
from lossgym.features import FeatureSpec
from lossgym.population import Population
from lossgym.tasks import TaskDistribution

PARAMS = ("gamma", "alpha", "tau", "margin", "scale")
ENV = {"action_mode": "residual", "reward_baseline": "base", "base_rule": "logit_adjusted",
       "action_params": ",".join(PARAMS), "max_step": 0.2}


def timed(totals: dict[str, float], name: str, fn):  # noqa: ANN001, ANN202
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - start
    return wrapper


def actor(seed: int) -> PopulationActor:
    torch.manual_seed(seed)
    dim = FeatureSpec(PARAMS).dim
    return PopulationActor(torch.nn.Sequential(
        torch.nn.Linear(dim, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
        torch.nn.Linear(64, len(PARAMS))))


def measure(tasks: list, thetas: torch.Tensor, pop_actor: PopulationActor, share: bool,
            seed: int) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    train, evaluate = Population.train, Population.evaluate
    Population.train = timed(totals, "inner training", train)  # type: ignore[method-assign]
    Population.evaluate = timed(totals, "validation", evaluate)  # type: ignore[method-assign]
    normalise = FrozenNormalizer(FeatureSpec(PARAMS).dim, 10.0, enabled=False)
    try:
        start = time.perf_counter()
        gen = run_generation(pop_actor, thetas, tasks, normalise, ENV, "cpu", seed,
                             share_twins=share)
        totals["wall"] = time.perf_counter() - start
    finally:
        Population.train, Population.evaluate = train, evaluate  # type: ignore[method-assign]
    totals["policy"] = gen.policy_seconds
    totals["twins"] = gen.twins
    return totals


def split(totals: dict[str, float]) -> str:
    wall = totals["wall"]
    rest = wall - totals["inner training"] - totals["validation"] - totals["policy"]
    parts = {"inner training": totals["inner training"], "validation": totals["validation"],
             "env rest": rest, "policy": totals["policy"]}
    return ", ".join(f"{k} {100 * v / wall:.1f} %" for k, v in parts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--pairs-per-task", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = TaskSource(TaskDistribution.default(), "train")
    rng = np.random.default_rng(args.seed)
    pop_actor = actor(args.seed)
    members = 2 * args.pairs
    print(f"torch threads {torch.get_num_threads()}; {members} episodes per generation, "
          f"{args.generations} generations per setting, default train split")
    rates: dict[str, list[float]] = defaultdict(list)
    ratios: dict[str, list[float]] = defaultdict(list)
    for g in range(args.generations):
        thetas = pop_actor.theta + 0.05 * torch.randn(members, pop_actor.theta.numel())
        for k in args.pairs_per_task:
            tasks = pair_tasks(source, rng, args.pairs, k)
            seed = int(rng.integers(0, 2**31 - 1))
            if not rates:  # warm up (data generation, first calls) off the clock
                measure(tasks, thetas, pop_actor, True, seed)
            # Alternate which goes first, so that neither always meets a cold cache.
            first, second = (False, True) if (g + k) % 2 == 0 else (True, False)
            results = {first: measure(tasks, thetas, pop_actor, first, seed)}
            results[second] = measure(tasks, thetas, pop_actor, second, seed)
            own, shared = results[False], results[True]
            for name, t in (("own twins", own), (f"shared twins, k={k}", shared)):
                rate = members / t["wall"] * 3600
                rates[f"{name}" + ("" if "shared" in name else f", k={k}")].append(rate)
                print(f"gen {g} k={k} {tasks[0].dataset} {tasks[0].arch}{tasks[0].width}: "
                      f"{name:18s} {t['wall']:6.1f} s, {int(t['twins'])} twins, "
                      f"{rate:6.0f} episodes/h; {split(t)}", flush=True)
            ratios[f"k={k}"].append(own["wall"] / shared["wall"])
    print("\nmedian over generations:")
    for name, values in rates.items():
        print(f"  {name:22s} {np.median(values):7.0f} episodes/hour "
              f"(runs: {', '.join(f'{v:.0f}' for v in values)})")
    for name, values in ratios.items():
        print(f"  speed-up of shared twins, {name}: {np.median(values):.2f}x "
              f"(runs: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
