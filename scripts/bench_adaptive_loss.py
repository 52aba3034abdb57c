"""Cost of AdaptiveLoss over F.cross_entropy per training step of the default MLP.

The default task's classifier (40-128-128-10 MLP, batch 128, AdamW) trains with each
criterion in turn; one training step is zero_grad, forward, loss, backward and the optimiser
update. Times are the thread's CPU time (``time.thread_time``), so other processes on a busy
machine do not count. Contenders alternate in blocks of --steps steps; each block's time is
divided by the cross-entropy block of the same round, and the table shows the medians over
--repeats rounds of the time per step and of that paired ratio. Then one ``step()`` call (the
period's end: metrics and a decision) is timed and set against the default task's 40
minibatches per period.

    python scripts/bench_adaptive_loss.py [--repeats 60] [--steps 25] [--threads 1]

Contenders: plain cross-entropy; an AdaptiveLoss schedule at its neutral point (plain
cross-entropy through the fused path); the same at γ = 2, α = 0.5 (class-balanced focal);
closed-loop controllers at the neutral point and at γ = 2, α = 0.5, which also record each
minibatch's cross-entropy and, through ``watch(model)``, its gradient norm.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lossgym.actions import ActionMapping
from lossgym.export import AdaptiveLoss, Controller
from lossgym.features import FeatureSpec
from lossgym.schedules import LossSchedule, constant

FEATURES, CLASSES, WIDTH, BATCH, MINIBATCHES_PER_STEP = 40, 10, 128, 128, 40
COUNTS = torch.tensor([3000.0, 1800, 1080, 648, 389, 233, 140, 84, 50, 30])


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH),
                         nn.ReLU(), nn.Linear(WIDTH, CLASSES))


def controller_at(gamma: float, alpha: float) -> Controller:
    """A 64-64 controller whose output is constant: its action sets (gamma, alpha)."""
    mapping = ActionMapping(("gamma", "alpha"))
    dim = FeatureSpec(mapping.parameters).dim
    layers = [{"kind": "linear", "in_features": dim, "out_features": 64}, {"kind": "tanh"},
              {"kind": "linear", "in_features": 64, "out_features": 64}, {"kind": "tanh"},
              {"kind": "linear", "in_features": 64, "out_features": 2}]
    tensors = {f"{i}.{k}": torch.zeros(64 if i < 4 else 2, *(([dim] if i == 0 else [64])
                                                             if k == "weight" else []))
               for i in (0, 2, 4) for k in ("weight", "bias")}
    tensors["4.bias"] = torch.tensor([gamma / 2.5 - 1.0, alpha * 2.0 - 1.0])
    return Controller(layers, tensors, mapping)


class Contender:
    """A model, an optimiser and a criterion, trained on one fixed minibatch."""

    def __init__(self, name: str, criterion: Callable[[Tensor, Tensor], Tensor]):
        torch.manual_seed(0)
        self.name = name
        self.model = make_model()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=1e-2)
        self.criterion = criterion
        self.x = torch.randn(BATCH, FEATURES)
        self.y = torch.randint(0, CLASSES, (BATCH,))
        if isinstance(criterion, AdaptiveLoss) and criterion.kind == "controller":
            criterion.watch(self.model)
        self.times: list[float] = []

    def run(self, steps: int) -> float:
        start = time.thread_time()
        for _ in range(steps):
            self.optimizer.zero_grad()
            self.criterion(self.model(self.x), self.y).backward()
            self.optimizer.step()
        return (time.thread_time() - start) / steps


def time_step_call(criterion: AdaptiveLoss, repeats: int) -> float:
    """Median seconds of one ``step()`` with 1000 validation logits."""
    val_logits, val_targets = torch.randn(1000, CLASSES), torch.arange(1000) % CLASSES
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        criterion.step(val_logits, val_targets, grad_norm=1.0)
        times.append(time.thread_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    total = args.repeats * args.steps * 10
    contenders = [
        Contender("F.cross_entropy", F.cross_entropy),
        Contender("AdaptiveLoss, schedule, neutral (CE)",
                  AdaptiveLoss(LossSchedule({"gamma": constant(0.0), "alpha": constant(0.0)}),
                               class_counts=COUNTS, total_steps=total)),
        Contender("AdaptiveLoss, schedule, γ=2 α=0.5",
                  AdaptiveLoss(LossSchedule({"gamma": constant(2.0), "alpha": constant(0.5)}),
                               class_counts=COUNTS, total_steps=total)),
        Contender("AdaptiveLoss, controller, neutral + watch",
                  AdaptiveLoss(controller_at(0.0, 0.0), class_counts=COUNTS,
                               total_steps=total)),
        Contender("AdaptiveLoss, controller, γ=2 α=0.5 + watch",
                  AdaptiveLoss(controller_at(2.0, 0.5), class_counts=COUNTS,
                               total_steps=total)),
    ]
    for c in contenders:  # warm-up: allocations, first-call dispatch
        c.run(20)
    for c in contenders[-2:]:  # leave the warm-up's period: the timed ones record their own
        assert isinstance(c.criterion, AdaptiveLoss)
        c.criterion.step()
    controller = contenders[-1].criterion
    for _ in range(args.repeats):
        for c in contenders:
            c.times.append(c.run(args.steps))
    base = contenders[0].times
    print(f"default MLP {FEATURES}-{WIDTH}-{WIDTH}-{CLASSES}, batch {BATCH}, AdamW, "
          f"{torch.get_num_threads()} thread(s); medians of {args.repeats} rounds of "
          f"{args.steps} training steps (zero_grad, forward, loss, backward, update), CPU time\n")
    print("| criterion | µs per training step | × F.cross_entropy (paired) |")
    print("|---|---|---|")
    for c in contenders:
        ratio = statistics.median(t / b for t, b in zip(c.times, base))
        print(f"| {c.name} | {statistics.median(c.times) * 1e6:.0f} | {ratio:.3f}× |")
    call = time_step_call(controller, args.repeats)
    period = statistics.median(contenders[-1].times) * MINIBATCHES_PER_STEP
    print(f"\none controller step() (1000 validation logits): {call * 1e6:.0f} µs, "
          f"{call / period * 100:.1f} % of a {MINIBATCHES_PER_STEP}-minibatch period")


if __name__ == "__main__":
    main()
