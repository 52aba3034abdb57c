"""The parametric loss of a population, forward and backward, in one call of the C extension
against autograd through the torch kernels, per minibatch of the default task's shape.

For M members × 128 samples × 10 classes with per-member γ, α, τ, margin and scale (the
default agent's action set; random values, the default task's long-tailed class counts), it
times a ``ParametricCriterion`` that keeps its terms and plan (as the environment does each
step) and ``parametric_loss`` with the extension switched off, alternating the two, and prints
the medians of --repeats timings and their ratio, beside plain cross-entropy. This is what sets
``lossgym.losses.NATIVE_MAX_NUMEL``.

    python scripts/bench_loss_kernel.py [--members 1 16 64 128 256] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lossgym import _native
from lossgym.losses import ParametricCriterion, _kernel, parametric_loss

CLASSES, BATCH = 10, 128
COUNTS = torch.tensor([3000.0, 1800, 1080, 648, 389, 233, 140, 84, 50, 30])


def timed(fn: Callable[[], None], calls: int = 20) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def bench(m: int, repeats: int, g: torch.Generator) -> tuple[dict[str, float], float]:
    """Median ms per minibatch of each contender at M = ``m``, and autograd / compiled."""
    kernels = _native.closedform
    params = {"gamma": torch.rand(m, generator=g) * 3, "alpha": torch.rand(m, generator=g),
              "tau": torch.rand(m, generator=g), "margin": torch.rand(m, generator=g) * 0.5,
              "scale": 1 + torch.rand(m, generator=g) * 15}
    counts = COUNTS.expand(m, CLASSES)
    logits = torch.randn(m, BATCH, CLASSES, generator=g, requires_grad=True)
    targets = torch.randint(0, CLASSES, (m, BATCH), generator=g)
    # The criterion as the environment keeps it, whatever the size (the bound is measured).
    criterion = ParametricCriterion(counts, reduction="none")
    _kernel.NATIVE_MAX_NUMEL = 1 << 62

    def compiled() -> None:
        criterion(logits, targets, params).mean(-1).sum().backward()

    def autograd() -> None:
        _native.closedform = None
        try:
            parametric_loss(logits, targets, counts, reduction="none", **params
                            ).mean(-1).sum().backward()
        finally:
            _native.closedform = kernels

    def plain() -> None:
        parametric_loss(logits, targets, counts, reduction="none").mean(-1).sum().backward()

    times: dict[str, list[float]] = {"compiled": [], "autograd": [], "plain": []}
    for _ in range(repeats):
        for name, fn in (("compiled", compiled), ("autograd", autograd), ("plain", plain)):
            times[name].append(timed(fn))
    ratio = statistics.median(a / c for c, a in zip(times["compiled"], times["autograd"]))
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[1, 16, 64, 128, 256])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if _native.closedform is None:
        raise SystemExit("the C extension is not built (pip install -e . with a C compiler)")
    print(f"{torch.get_num_threads()} torch threads; forward + backward per minibatch of "
          f"M x {BATCH} x {CLASSES} logits, medians of {args.repeats}")
    print(f"{'M':>4} {'logits':>8} {'compiled ms':>12} {'autograd ms':>12} {'ratio':>7} "
          f"{'plain CE ms':>12}")
    g = torch.Generator().manual_seed(0)
    for m in args.members:
        med, ratio = bench(m, args.repeats, g)
        print(f"{m:>4} {m * BATCH * CLASSES:>8} {med['compiled']:>12.3f} "
              f"{med['autograd']:>12.3f} {ratio:>6.2f}x {med['plain']:>12.3f}", flush=True)


if __name__ == "__main__":
    main()
