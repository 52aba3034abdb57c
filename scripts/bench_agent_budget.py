"""Where an agent's training time goes, and how many episodes an hour buys on this machine.

    python scripts/bench_agent_budget.py [--pairs 16] [--generations 4] [--no-ray]
        [--distribution default|wide]

Runs ES generations as `make reproduce` trains them (:func:`agents.es.run_populations`: P
antithetic pairs on train tasks of ``--distribution``, residual actions around logit
adjustment, the base-rule twin, context features) in three set-ups, each generation starting
from the same first task (the draw that fixes dataset, architecture and width):

- **before** (the trainer as it was): the pairs' minibatches per step drawn freely, so the
  population trains every member for the largest count; a twin beside every member (4P runs);
  one population, one thread;
- **one budget, shared twins**: every pair on the first draw's minibatches per step
  (:func:`agents.es.pair_tasks`), one zero-action twin per task (3P runs); one population;
- **the same on 2 populations** on a local Ray with 2 CPUs (one thread each): both cores.

It prints each generation's wall time and split (inner training ``Population.train``,
validation ``Population.evaluate``, the rest of the env, the policy: a batched forward of PPO's
actor network; ES's update is negligible beside it), and the episodes per hour over all the
generations (their budgets vary, so an hour's rate is the total, not a median).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch

from agents import distributed
from agents.es import FrozenNormalizer, PopulationActor, pair_tasks, run_populations
from lossgym.envs.core import TaskSource
from lossgym.features import FeatureSpec
from lossgym.population import Population
from lossgym.tasks import DISTRIBUTIONS, TaskDistribution

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


def mixed_budget_tasks(source: TaskSource, rng: np.random.Generator, first, pairs: int):
    """The trainer's draws before one budget per population: any minibatches per step."""
    tasks = [first] + [source.draw(rng, like=first) for _ in range(pairs - 1)]
    return [t for t in tasks for _ in range(2)]


def measure(tasks: list, thetas: torch.Tensor, pop_actor: PopulationActor, share: bool,
            populations: int, seed: int) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    train, evaluate = Population.train, Population.evaluate
    Population.train = timed(totals, "inner training", train)  # type: ignore[method-assign]
    Population.evaluate = timed(totals, "validation", evaluate)  # type: ignore[method-assign]
    normalise = FrozenNormalizer(FeatureSpec(PARAMS).dim, 10.0, enabled=False)
    try:
        start = time.perf_counter()
        gen = run_populations(pop_actor, thetas, tasks, normalise, ENV, "cpu", seed,
                              populations, share_twins=share)
        totals["wall"] = time.perf_counter() - start
    finally:
        Population.train, Population.evaluate = train, evaluate  # type: ignore[method-assign]
    totals["policy"] = gen.policy_seconds
    totals["twins"] = gen.twins
    totals["max_minibatches"] = max(t.minibatches_per_step for t in tasks)
    return totals


def split(totals: dict[str, float]) -> str:
    if "inner training" not in totals:  # on Ray: the workers' time is not seen here
        return "split not seen (Ray workers)"
    wall = totals["wall"]
    rest = wall - totals["inner training"] - totals["validation"] - totals["policy"]
    parts = {"inner training": totals["inner training"], "validation": totals["validation"],
             "env rest": rest, "policy": totals["policy"]}
    return ", ".join(f"{k} {100 * v / wall:.1f} %" for k, v in parts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ray", action="store_true", help="skip the 2-population set-up")
    parser.add_argument("--distribution", default="default", choices=DISTRIBUTIONS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = TaskSource(TaskDistribution.named(args.distribution), "train")
    rng = np.random.default_rng(args.seed)
    pop_actor = actor(args.seed)
    members = 2 * args.pairs
    ray = None if args.no_ray else distributed.RayExecutor("local", num_cpus=2)
    print(f"{members} episodes per generation, {args.generations} generations per set-up, "
          f"{args.distribution} train split, one intra-op thread per population")
    rates: dict[str, list[float]] = defaultdict(list)
    try:
        for g in range(args.generations):
            thetas = pop_actor.theta + 0.05 * torch.randn(members, pop_actor.theta.numel())
            state = rng.bit_generator.state
            grouped = pair_tasks(source, rng, args.pairs)
            rng.bit_generator.state = state
            first = source.draw(rng)
            mixed = mixed_budget_tasks(source, rng, first, args.pairs)
            seed = int(rng.integers(0, 2**31 - 1))
            if g == 0:  # warm up (data generation, first calls, Ray's workers) off the clock
                measure(grouped[:4], thetas[:4], pop_actor, True, 1, seed)
                if ray is not None:
                    with distributed.using(ray):
                        for _ in range(2):
                            measure(grouped, thetas, pop_actor, True, 2, seed)
            setups = [("before", mixed, False, 1, None),
                      ("one budget, shared twins", grouped, True, 1, None)]
            if ray is not None:
                setups.append(("the same on 2 populations", grouped, True, 2, ray))
            for name, tasks, share, populations, executor in setups:
                with distributed.using(executor or distributed.LocalExecutor()):
                    t = measure(tasks, thetas, pop_actor, share, populations, seed)
                rate = members / t["wall"] * 3600
                rates[name].append(rate)
                print(f"gen {g} {first.dataset} {first.arch}{first.width}: {name:26s} "
                      f"{t['wall']:6.1f} s, {int(t['twins'])} twins, max "
                      f"{int(t['max_minibatches'])} minibatches/step, {rate:6.0f} "
                      f"episodes/h; {split(t)}", flush=True)
    finally:
        if ray is not None:
            ray.close()
    # An hour of training is many generations: their budgets vary, so the rate is the total.
    print(f"\nover all {args.generations} generations (episodes per hour = episodes / seconds):")
    hours = {name: sum(members / rate for rate in values) for name, values in rates.items()}
    for name, values in rates.items():
        total = members * len(values) / hours[name]
        print(f"  {name:26s} {total:7.0f}  ({hours['before'] / hours[name]:.2f}x before; per "
              f"generation: {', '.join(f'{v:.0f}' for v in values)})")

if __name__ == "__main__":
    main()
