"""Wall time of an evaluation sweep run locally and on Ray, with the ratio.

    python scripts/bench_ray.py [--workers 2] [--repeats 3] [--address ADDRESS]

What is measured: :func:`agents.evaluate.evaluate` (PBT off, since it has no local
counterpart) of a tiny PPO agent trained first, on a small task distribution with two
architectures (so its populations are several independent units), in one process
(``LocalExecutor``, one intra-op thread, like each Ray worker) and with every population a Ray
task (a local Ray with ``--workers`` CPUs, started once before the timings, or the cluster at
``--address``). The two take turns, for ``--repeats`` rounds; the figures are medians, the ratio
is the median of the per-round ratios local / Ray. Every round also checks that both wrote the
same records. The load average is printed before and after: other processes on the machine
distort every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import agents.train as train_mod
from agents.evaluate import EvalArgs, evaluate
from agents.train import TrainArgs, train
from lossgym.tasks import TaskDistribution, TaskFactors, TaskSpec

AGENT_TASK = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32,
                      minibatches_per_step=2, horizon=4)
TRAIN = TaskFactors(imbalance_ratios=(10.0, 30.0), widths=(32, 64), minibatches_per_step=(4,),
                    horizons=(8,), seed_range=(0, 1000))
HELD_OUT = dataclasses.replace(TRAIN, seed_range=(10_000, 20_000))
DIST = TaskDistribution(
    train=(TRAIN,), held_out_id=(HELD_OUT,),
    held_out_ood=(dataclasses.replace(HELD_OUT, imbalance_ratios=(50.0,), widths=(48,)),))


def tiny_agent(root: Path) -> Path:
    """A PPO agent trained for a few steps on a small fixed task (its quality is irrelevant)."""
    original = train_mod.make_env

    def small_env(n, seed, run_dir, kw, tasks=None):
        return original(n, seed, run_dir, kw, tasks=AGENT_TASK)

    train_mod.make_env = small_env
    try:
        return Path(train(TrainArgs(algo="ppo", run_dir=str(root / "ppo"), timesteps=32,
                                    num_envs=4, progress=False,
                                    overrides={"n_steps": 8, "batch_size": 32})))
    finally:
        train_mod.make_env = original


def timed(run_dir: Path, ray: str | None, seeds: int) -> tuple[float, list]:
    args = EvalArgs(run_dir=str(run_dir), seeds=seeds, id_tasks=2, tune_tasks=4,
                    search_budget=8, device="cpu", ray=ray, pbt=False)
    start = time.perf_counter()
    evaluate(args, distribution=DIST, log=False)
    elapsed = time.perf_counter() - start
    return elapsed, json.loads((run_dir / "evaluation.json").read_text())["records"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--address", default=None,
                        help="a running cluster (ray start --head) instead of a local Ray")
    args = parser.parse_args()
    import ray

    torch.set_num_threads(1)
    print(f"load average before: {os.getloadavg()}")
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    print(f"Ray CPUs: {ray.cluster_resources().get('CPU')}")
    with tempfile.TemporaryDirectory() as root:
        run_dir = tiny_agent(Path(root))
        timed(run_dir, "auto", 1)  # warm-up: worker processes, imports, datasets
        local, remote, ratios = [], [], []
        for k in range(args.repeats):
            order = ("local", "ray") if k % 2 == 0 else ("ray", "local")
            times, records = {}, {}
            for mode in order:
                times[mode], records[mode] = timed(run_dir, None if mode == "local" else "auto",
                                                   args.seeds)
            assert records["local"] == records["ray"], "Ray and local records differ"
            local.append(times["local"])
            remote.append(times["ray"])
            ratios.append(times["local"] / times["ray"])
            print(f"round {k}: local {times['local']:.1f} s, Ray {times['ray']:.1f} s, "
                  f"ratio {ratios[-1]:.2f}x (records identical)")
    ray.shutdown()
    print(f"evaluation sweep ({len(records['local'])} episodes): local "
          f"{statistics.median(local):.1f} s, Ray with {args.workers} workers "
          f"{statistics.median(remote):.1f} s, speed-up {statistics.median(ratios):.2f}x "
          f"(median of {args.repeats} rounds)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
