"""Environment throughput on the default task: the batched SB3 adapter against SB3's vector envs
of single envs, the env's overhead over the bare engine, and single-env step and episode times.

    python scripts/bench_env.py [--sizes 1 8 32 64] [--repeats 3] [--device auto] [--threads T]

What is measured (task: ``TaskSpec()``, the fixed default task, a new inner seed per episode;
actions: uniform in [-1, 1] from a generator seeded with --seed, the same for every contender):

(a) Env steps per second (N x vector steps / wall time) at each N of --sizes, for
    * ``adapter``: :class:`agents.vec_env.LossTuningSB3VecEnv` with ``num_envs=N``, one
      population of N trained as one batched torch program, in this process;
    * ``dummy``: SB3 ``DummyVecEnv`` of N single ``LossTuningEnv``s, in this process;
    * ``subproc``: SB3 ``SubprocVecEnv`` with 2 worker processes (start method forkserver,
      ``torch.set_num_threads(1)`` in each worker), holding the N single envs split across
      them. SubprocVecEnv runs one env per process, so each worker's env is a chunk that steps
      its N/2 single envs one after the other (a ``DummyVecEnv`` inside the worker, with its
      autoreset) and returns their stacked arrays: "N single envs on 2 processes", pipe
      transfers included. With N = 1 there is a single worker.
    Each repeat times --steps vector steps (default max(2, 16 // N)), after one untimed
    warm-up step; within a repeat the contenders take turns step by step (the order rotating),
    so that all see the same machine load. Rates are medians over --repeats; a ratio is the
    median of the per-repeat ratios of the adapter's rate to the other's. Episode ends (and
    their resets, test evaluations) fall inside the timings alike for every contender.
(b) The overhead of the env over the bare engine doing the same training: one adapter step
    against ``Population(the adapter's tasks).train(parametric loss with the parameters the
    actions map to)`` plus ``evaluate("val")``, at each N of --overhead-sizes; the ratio of
    their step times (median of the per-repeat ratios; the two take turns step by step;
    target <= 1.10x). The timed steps stay inside the first episode
    (at most (horizon - 2) // repeats per timing), so the env's time holds no reset and no
    end-of-episode test evaluation, which the engine does not do.
(c) For one single ``LossTuningEnv``: the median time of one step and of one full episode
    (``reset()`` + ``horizon`` = 20 steps, including the final test evaluation).
(d) On the CPU, one single env with the C extension (``lossgym._native``: the loss is one
    compiled call per minibatch) against one with it switched off, stepping in turns.

Targets: adapter >= 6x DummyVecEnv at N = 64; overhead <= 1.10x; step <= 100 ms; episode <= 5 s.
The host's load average is printed before and after: other processes on the machine distort
every figure (with several intra-op threads, a busy core stalls torch badly).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from agents.vec_env import LossTuningSB3VecEnv, single_env_fn
from lossgym import _native
from lossgym.actions import ActionMapping
from lossgym.envs import LossTuningEnv
from lossgym.losses import parametric_loss
from lossgym.population import MinibatchContext, Population, resolve_device
from lossgym.tasks import TaskSpec


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class ChunkEnv(gym.Env):
    """Several single envs stepped in sequence, presented to SubprocVecEnv as one env.

    Observations ``[k, D]`` and rewards ``[k]``; episode ends are handled inside (the inner
    DummyVecEnv autoresets), so the chunk itself never terminates."""

    def __init__(self, env_fns: list[Callable[[], gym.Env]]):
        self.inner = DummyVecEnv(env_fns)
        k = self.inner.num_envs
        single_obs, single_act = self.inner.observation_space, self.inner.action_space
        self.observation_space = spaces.Box(np.tile(single_obs.low, (k, 1)),
                                            np.tile(single_obs.high, (k, 1)), dtype=np.float32)
        self.action_space = spaces.Box(np.tile(single_act.low, (k, 1)),
                                       np.tile(single_act.high, (k, 1)), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None
              ) -> tuple[np.ndarray, dict]:
        if seed is not None:
            self.inner.seed(seed)
        return self.inner.reset(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, bool, dict]:
        obs, rewards, dones, infos = self.inner.step(action)
        return obs, rewards, False, False, {"dones": dones, "infos": infos}


def _chunk_env(size: int, device: str) -> ChunkEnv:
    return ChunkEnv([single_env_fn(1, tasks=TaskSpec(), device=device) for _ in range(size)])


def make_subproc(n: int, device: str) -> tuple[SubprocVecEnv, int]:
    """SubprocVecEnv of min(2, n) workers, each stepping n / workers single envs."""
    workers = min(2, n)
    if n % workers:
        raise ValueError(f"N={n}: the subproc contender needs N = 1 or an even N")
    fns = [functools.partial(_chunk_env, n // workers, device) for _ in range(workers)]
    return SubprocVecEnv(fns, start_method="forkserver"), workers


def time_interleaved(contenders: dict[str, Callable[[np.ndarray], Any]],
                     actions: list[np.ndarray], device: torch.device) -> dict[str, float]:
    """Total seconds each contender takes for the action sequence, stepping them in turns
    (one step each, the order rotating from step to step) so that all see the same load."""
    names = list(contenders)
    total = dict.fromkeys(names, 0.0)
    for k, a in enumerate(actions):
        for name in names[k % len(names):] + names[:k % len(names)]:
            sync(device)
            start = time.perf_counter()
            contenders[name](a)
            sync(device)
            total[name] += time.perf_counter() - start
    return total


def bench_throughput(n: int, args: argparse.Namespace, device: torch.device,
                     rng: np.random.Generator) -> dict[str, Any]:
    steps = args.steps or max(2, 16 // n)
    adapter = LossTuningSB3VecEnv(num_envs=n, tasks=TaskSpec(), device=args.device)
    dummy = DummyVecEnv([single_env_fn(None, tasks=TaskSpec(), device=args.device)
                         for _ in range(n)])
    subproc, workers = make_subproc(n, args.device)
    contenders: dict[str, Callable[[np.ndarray], Any]] = {
        "adapter": adapter.step,
        "dummy": dummy.step,
        "subproc": lambda a: subproc.step(a.reshape(workers, n // workers, -1)),
    }
    for venv in (adapter, dummy, subproc):
        venv.seed(args.seed)
        venv.reset()
    warm = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    for step in contenders.values():
        step(warm)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        actions = [rng.uniform(-1, 1, (n, 2)).astype(np.float32) for _ in range(steps)]
        for name, seconds in time_interleaved(contenders, actions, device).items():
            times[name].append(seconds)
    subproc.close()
    dummy.close()
    adapter.close()
    rate = {k: statistics.median(n * steps / t for t in v) for k, v in times.items()}
    ratio = {k: statistics.median(o / a for a, o in zip(times["adapter"], times[k]))
             for k in ("dummy", "subproc")}
    return {"steps": steps, "rate": rate, "ratio": ratio, "workers": [n // workers] * workers}


def bench_overhead(n: int, args: argparse.Namespace, device: torch.device,
                   rng: np.random.Generator) -> tuple[float, float, float]:
    """Median seconds per step of the adapter and of the bare engine (same tasks and params),
    and the median of the per-repeat ratios."""
    adapter = LossTuningSB3VecEnv(num_envs=n, tasks=TaskSpec(), device=args.device)
    adapter.seed(args.seed)
    adapter.reset()
    pop = Population(adapter.tasks, device=device)
    mapping = ActionMapping()
    params: dict[str, torch.Tensor] = {}

    def criterion(logits: torch.Tensor, targets: torch.Tensor, ctx: MinibatchContext
                  ) -> torch.Tensor:
        return parametric_loss(logits, targets, ctx.class_counts, reduction="none",
                               **params).mean(-1)

    def engine_step(a: np.ndarray) -> None:
        action = torch.as_tensor(a, device=device)
        params.update(mapping.as_kwargs(mapping.apply(action, action)))
        pop.train(criterion)
        pop.evaluate("val")

    def adapter_step(a: np.ndarray) -> None:
        adapter.step(a)

    # All timed steps inside the first episode: no reset or test evaluation in the env's time.
    steps = max(1, min(args.steps or max(2, 16 // n), (TaskSpec().horizon - 2) // args.repeats))
    warm = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    engine_step(warm)
    adapter_step(warm)
    t_env, t_engine = [], []
    for _ in range(args.repeats):
        actions = [rng.uniform(-1, 1, (n, 2)).astype(np.float32) for _ in range(steps)]
        seconds = time_interleaved({"env": adapter_step, "engine": engine_step}, actions, device)
        t_env.append(seconds["env"] / steps)
        t_engine.append(seconds["engine"] / steps)
    adapter.close()
    ratio = statistics.median(e / g for e, g in zip(t_env, t_engine))
    return statistics.median(t_env), statistics.median(t_engine), ratio


def bench_single(args: argparse.Namespace, device: torch.device, rng: np.random.Generator
                 ) -> tuple[float, float, int]:
    env = LossTuningEnv(tasks=TaskSpec(), device=args.device)
    env.reset(seed=args.seed)
    env.step(rng.uniform(-1, 1, 2).astype(np.float32))  # warm-up
    step_times, episode_times = [], []
    horizon = TaskSpec().horizon
    for r in range(args.repeats):
        sync(device)
        start = time.perf_counter()
        env.reset(seed=args.seed + 1 + r)
        terminated = False
        steps = 0
        while not terminated:
            t0 = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
            sync(device)
            step_times.append(time.perf_counter() - t0)
            steps += 1
            terminated = terminated or truncated
        episode_times.append(time.perf_counter() - start)
        assert steps == horizon, f"episode ended after {steps} steps (diverged?)"
    env.close()
    return statistics.median(step_times), statistics.median(episode_times), horizon


def bench_extension(args: argparse.Namespace, device: torch.device, rng: np.random.Generator
                    ) -> tuple[float, float, float]:
    """(d): two single envs on the default task, one with the C extension (the loss is one
    compiled call per minibatch), one with it switched off (autograd through the torch
    kernels), stepping in turns with the same actions; their median step times and the median
    of the per-step ratios."""
    kernels = _native.closedform
    envs = {"on": LossTuningEnv(tasks=TaskSpec(), device=args.device),
            "off": LossTuningEnv(tasks=TaskSpec(), device=args.device)}
    times: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for env in envs.values():
            env.reset(seed=args.seed)
        for k in range(1 + 4 * args.repeats):
            action = rng.uniform(-1, 1, 2).astype(np.float32)
            for name, env in envs.items():
                _native.closedform = kernels if name == "on" else None
                sync(device)
                t0 = time.perf_counter()
                env.step(action)
                sync(device)
                if k:  # the first step warms up
                    times[name].append(time.perf_counter() - t0)
    finally:
        _native.closedform = kernels
    ratio = statistics.median(off / on for on, off in zip(times["on"], times["off"]))
    return statistics.median(times["on"]), statistics.median(times["off"]), ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1, 8, 32, 64])
    parser.add_argument("--overhead-sizes", type=int, nargs="*", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0,
                        help="vector steps per timing (default: max(2, 16 // N))")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads in this process (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rng = np.random.default_rng(args.seed)
    task = TaskSpec()
    t_start = time.perf_counter()
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"(subproc workers: 1 each) cpus={os.cpu_count()} "
          f"load average={os.getloadavg()[0]:.2f}")
    print(f"task: {task.dataset} rho={task.imbalance_ratio:g} {task.arch} width={task.width} "
          f"depth={task.depth} batch={task.batch_size} minibatches/step="
          f"{task.minibatches_per_step} horizon={task.horizon}; median of {args.repeats} repeats")
    print()
    print("(a) env steps per second")
    print(f"{'N':>4} {'steps':>5} {'adapter':>9} {'dummy':>9} {'subproc':>9} "
          f"{'adapter/dummy':>14} {'adapter/subproc':>16}  subproc workers")
    results = {}
    for n in args.sizes:
        res = bench_throughput(n, args, device, rng)
        results[n] = res
        r, q = res["rate"], res["ratio"]
        print(f"{n:>4} {res['steps']:>5} {r['adapter']:>9.1f} {r['dummy']:>9.1f} "
              f"{r['subproc']:>9.1f} {q['dummy']:>13.2f}x {q['subproc']:>15.2f}x  "
              f"{' + '.join(map(str, res['workers']))} envs", flush=True)
    print()
    print("(b) env overhead over the bare engine (Population.train + evaluate('val'))")
    print(f"{'N':>4} {'env step':>10} {'engine step':>12} {'ratio':>7}")
    overheads = {}
    for n in args.overhead_sizes:
        t_env, t_engine, overheads[n] = bench_overhead(n, args, device, rng)
        print(f"{n:>4} {1e3 * t_env:>8.1f}ms {1e3 * t_engine:>10.1f}ms {overheads[n]:>6.2f}x",
              flush=True)
    print()
    step_time, episode_time, horizon = bench_single(args, device, rng)
    print(f"(c) single env: one step {1e3 * step_time:.1f} ms, one episode ({horizon} steps, "
          f"with reset) {episode_time:.2f} s")
    print()
    if _native.closedform is not None and device.type == "cpu":
        on, off, gain = bench_extension(args, device, rng)
        print(f"(d) single env with the C extension: one step {1e3 * on:.1f} ms, with it off "
              f"{1e3 * off:.1f} ms: {gain:.2f}x faster")
    else:
        print("(d) skipped: the C extension is not built, or the device is not the CPU")
    print()
    print("targets")
    checks = []
    if 64 in results:
        ratio64 = results[64]["ratio"]["dummy"]
        checks.append((f"adapter >= 6x DummyVecEnv at N=64: {ratio64:.2f}x", ratio64 >= 6))
    for n, ratio in overheads.items():
        checks.append((f"env overhead <= 1.10x at N={n}: {ratio:.2f}x", ratio <= 1.10))
    checks.append((f"single-env step <= 100 ms: {1e3 * step_time:.1f} ms", step_time <= 0.1))
    checks.append((f"single-env episode <= 5 s: {episode_time:.2f} s", episode_time <= 5.0))
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    print(f"total {time.perf_counter() - t_start:.0f} s; load average now "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
