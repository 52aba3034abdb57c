"""Cost of AdaptiveLoss over F.cross_entropy per training step of the default MLP.

The default task's classifier (40-128-128-10 MLP, batch 128, AdamW) trains with each
criterion in turn; one training step is zero_grad, forward, loss, backward and the optimiser
update. Times are the thread's CPU time (``time.thread_time``), so other processes on a busy
machine count less. Contenders alternate in blocks of --steps steps; each block's time is
divided by the cross-entropy block of the same round, and the table shows the medians over
--repeats rounds of the time per step and of that paired ratio. Then one ``step()`` call (the
period's end: metrics and a decision) is timed and set against the default task's 40
minibatches per period.

    python scripts/bench_adaptive_loss.py [--repeats 100] [--steps 40] [--threads 1]

Contenders: plain cross-entropy; AdaptiveLoss schedules at the neutral point (plain
cross-entropy through the fused kernel), at γ = 2, α = 0.5 (class-balanced focal), with logit
adjustment τ = 1 added, and with every term of the parametric loss but the gate; closed-loop
controllers (γ, α), (γ, α, τ) and the default agent's (γ, α, τ, margin, scale), which also
record each minibatch's cross-entropy and its gradient norm, through ``watch(optimizer)`` (one
hook per update) or ``watch(model)`` (one hook per parameter); and one baseline exported as a
method (LDAM-DRW after its switch). Each row names the parameters the loss used. Two rows
repeat a contender with the C extension switched off (``lossgym._native``: the closed form
as torch kernels), for the extension's share.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lossgym import _native
from lossgym import params as loss_params
from lossgym.actions import ActionMapping
from lossgym.export import AdaptiveLoss, Controller
from lossgym.features import FeatureSpec
from lossgym.methods import make_method
from lossgym.schedules import LossSchedule, constant

FEATURES, CLASSES, WIDTH, BATCH, MINIBATCHES_PER_STEP = 40, 10, 128, 128, 40
COUNTS = torch.tensor([3000.0, 1800, 1080, 648, 389, 233, 140, 84, 50, 30])


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH),
                         nn.ReLU(), nn.Linear(WIDTH, CLASSES))


def controller_at(**params: float) -> Controller:
    """A 64-64 controller whose output is constant: its action sets ``params`` (absolute)."""
    mapping = ActionMapping(tuple(params), mode="absolute")
    dim = FeatureSpec(mapping.parameters).dim
    layers = [{"kind": "linear", "in_features": dim, "out_features": 64}, {"kind": "tanh"},
              {"kind": "linear", "in_features": 64, "out_features": 64}, {"kind": "tanh"},
              {"kind": "linear", "in_features": 64, "out_features": len(params)}]
    tensors = {f"{i}.{k}": torch.zeros((64 if i < 4 else len(params)),
                                       *(([dim] if i == 0 else [64]) if k == "weight" else []))
               for i in (0, 2, 4) for k in ("weight", "bias")}
    tensors["4.bias"] = torch.tensor([2.0 * (v - loss_params.param(p).low)
                                      / (loss_params.param(p).high - loss_params.param(p).low)
                                      - 1.0 for p, v in params.items()])
    return Controller(layers, tensors, mapping)


class Contender:
    """A model, an optimiser and a criterion, trained on one fixed minibatch."""

    def __init__(self, name: str, criterion: Callable[[Tensor, Tensor], Tensor],
                 watch: str = "optimizer", extension: bool = True):
        torch.manual_seed(0)
        self.name = name if extension else f"{name}, torch kernels (extension off)"
        self.extension = extension
        self.model = make_model()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=1e-2)
        self.criterion = criterion
        self.x = torch.randn(BATCH, FEATURES)
        self.y = torch.randint(0, CLASSES, (BATCH,))
        if isinstance(criterion, AdaptiveLoss) and criterion.kind == "controller":
            criterion.watch(self.model if watch == "model" else self.optimizer)
        self.times: list[float] = []

    def run(self, steps: int) -> float:
        kernels = _native.closedform
        if not self.extension:
            _native.closedform = None
        try:
            start = time.thread_time()
            for _ in range(steps):
                self.optimizer.zero_grad()
                self.criterion(self.model(self.x), self.y).backward()
                self.optimizer.step()
            return (time.thread_time() - start) / steps
        finally:
            _native.closedform = kernels


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
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    total = args.repeats * args.steps * 10

    def schedule(**params: float) -> AdaptiveLoss:
        return AdaptiveLoss(LossSchedule({k: constant(v) for k, v in params.items()}),
                            class_counts=COUNTS, total_steps=total)

    def controller(**params: float) -> AdaptiveLoss:
        return AdaptiveLoss(controller_at(**params), class_counts=COUNTS, total_steps=total)

    contenders = [
        Contender("F.cross_entropy", F.cross_entropy),
        Contender("schedule, neutral", schedule(gamma=0.0, alpha=0.0)),
        Contender("schedule", schedule(gamma=2.0, alpha=0.5)),
        Contender("schedule", schedule(gamma=2.0, alpha=0.5), extension=False),
        Contender("schedule", schedule(gamma=2.0, alpha=0.5, tau=1.0)),
        Contender("schedule, all terms", schedule(gamma=2.0, alpha=0.5, tau=1.0,
                                                  label_smoothing=0.1, poly_epsilon=1.0)),
        Contender("controller + watch(optimizer)", controller(gamma=2.0, alpha=0.5)),
        Contender("controller + watch(model)", controller(gamma=2.0, alpha=0.5), "model"),
        Contender("controller + watch(optimizer)", controller(gamma=2.0, alpha=0.5, tau=1.0)),
        # The default agent's action set: LDAM's margin and logit scale as well.
        Contender("controller + watch(optimizer)", controller(gamma=1.0, alpha=0.5, tau=1.0,
                                                              margin=0.5, scale=10.0)),
        Contender("controller + watch(optimizer)", controller(gamma=1.0, alpha=0.5, tau=1.0,
                                                              margin=0.5, scale=10.0),
                  extension=False),
        # Progress past DRW's switch from the first minibatch: the reweighted loss is timed.
        Contender("method ldam_drw", AdaptiveLoss(make_method("ldam_drw", switch=0.0),
                                                  class_counts=COUNTS, total_steps=total)),
    ]
    for c in contenders:  # warm-up: allocations, first-call dispatch
        c.run(20)
    for c in contenders:  # leave the warm-up's period: the timed ones record their own
        if isinstance(c.criterion, AdaptiveLoss) and c.criterion.kind == "controller":
            c.criterion.step()
        if isinstance(c.criterion, AdaptiveLoss) and c.criterion.kind != "method":
            used = ", ".join(f"{k}={v:.3g}" for k, v in c.criterion.params.items())
            c.name = f"{c.name} ({used})"
    controller_loss = contenders[6].criterion
    for _ in range(args.repeats):
        for c in contenders:
            c.times.append(c.run(args.steps))
    base = contenders[0].times
    print(f"default MLP {FEATURES}-{WIDTH}-{WIDTH}-{CLASSES}, batch {BATCH}, AdamW, "
          f"{torch.get_num_threads()} thread(s); medians of {args.repeats} rounds of "
          f"{args.steps} training steps (zero_grad, forward, loss, backward, update), CPU time; "
          f"C extension: {'built' if _native.closedform is not None else 'NOT BUILT'}\n")
    print("| criterion (AdaptiveLoss unless named) | µs per training step | "
          "× F.cross_entropy (paired) |")
    print("|---|---|---|")
    for c in contenders:
        ratio = statistics.median(t / b for t, b in zip(c.times, base))
        print(f"| {c.name} | {statistics.median(c.times) * 1e6:.0f} | {ratio:.3f}× |")
    assert isinstance(controller_loss, AdaptiveLoss)
    call = time_step_call(controller_loss, args.repeats)
    period = statistics.median(contenders[6].times) * MINIBATCHES_PER_STEP
    print(f"\none controller step() (1000 validation logits): {call * 1e6:.0f} µs, "
          f"{call / period * 100:.1f} % of a {MINIBATCHES_PER_STEP}-minibatch period")


if __name__ == "__main__":
    main()
