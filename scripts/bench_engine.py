"""Inner-training throughput: one batched population of N against N single-member engines.

For N in {1, 8, 32, 64} on the default task (MNIST-1D-LT, MLP 40-128-128-10, B = 128), it
prints the training samples per second of one population of N members, of N populations of
one stepped in a Python loop (what a DummyVecEnv of single envs gets), their ratio, and the
achieved GFLOP/s against a large matmul's GFLOP/s measured in the same run. Each figure is the
median of --repeats timings.

    python scripts/bench_engine.py [--repeats 5] [--minibatches 20] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lossgym.losses import parametric_loss
from lossgym.population import MinibatchContext, Population, resolve_device
from lossgym.tasks import TaskSpec


def ce_criterion(logits: torch.Tensor, targets: torch.Tensor, ctx: MinibatchContext
                 ) -> torch.Tensor:
    return parametric_loss(logits, targets, ctx.class_counts, reduction="none").mean(-1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_populations(pops: list[Population], minibatches: int, device: torch.device) -> float:
    for pop in pops:  # warm-up: allocations, first-call dispatch
        pop.train(ce_criterion, num_minibatches=2)
    sync(device)
    start = time.perf_counter()
    for pop in pops:
        pop.train(ce_criterion, num_minibatches=minibatches)
    sync(device)
    return time.perf_counter() - start


def matmul_gflops(device: torch.device, size: int = 2048, reps: int = 10) -> float:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--minibatches", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    base = TaskSpec()
    print(f"device={device} threads={torch.get_num_threads()} task: {base.dataset} "
          f"{base.arch} width={base.width} depth={base.depth} batch={base.batch_size} "
          f"rho={base.imbalance_ratio:g}; median of {args.repeats} runs")
    mm = statistics.median(matmul_gflops(device) for _ in range(args.repeats))
    print(f"large matmul (2048^3): {mm:.1f} GFLOP/s")
    header = (f"{'N':>4} {'batched samples/s':>18} {'loop samples/s':>15} {'ratio':>7} "
              f"{'batched GFLOP/s':>16} {'% of matmul':>12}")
    print(header)
    for n in args.sizes:
        tasks = [base.replace(seed=s) for s in range(n)]
        batched = [Population(tasks, device=device)]
        singles = [Population([t], device=device) for t in tasks]
        samples = n * args.minibatches * base.batch_size
        # Batched and loop timings alternate, so that both see the same machine load.
        t_batched, t_loop = [], []
        for _ in range(args.repeats):
            t_batched.append(time_populations(batched, args.minibatches, device))
            t_loop.append(time_populations(singles, args.minibatches, device))
        ratio = statistics.median(tl / tb for tl, tb in zip(t_loop, t_batched))
        t_batched, t_loop = statistics.median(t_batched), statistics.median(t_loop)
        # Training costs about three forward passes per sample (forward, two backward matmuls).
        flops = 3 * batched[0].net.flops_per_sample() * samples
        gflops = flops / t_batched / 1e9
        print(f"{n:>4} {samples / t_batched:>18,.0f} {samples / t_loop:>15,.0f} "
              f"{ratio:>6.2f}x {gflops:>16.1f} {100 * gflops / mm:>11.1f}%")


if __name__ == "__main__":
    main()
