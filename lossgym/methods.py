"""Built-in loss methods as population criteria: each trains a group of members by one rule.

A method object is a :data:`lossgym.population.Criterion` (logits ``[n, B, C]``, targets
``[n, B]``, context → loss ``[n]``) for the ``n`` members it owns, with per-member state where
the method has some (AdaFocal's γ per bin, AdaLoss's running means). Methods that learn from
the validation split get it through :meth:`LossMethod.observe_validation`, called after each
evaluation. :class:`MethodMix` runs several methods side by side in one population, so a whole
comparison (every method × every seed) is one batched run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lossgym import losses
from lossgym.population import MinibatchContext


class LossMethod:
    """Base class: a loss rule for ``num_members`` members with ``num_classes`` classes."""

    name = "method"

    def __init__(self, num_members: int, num_classes: int, device: torch.device):
        self.num_members = num_members
        self.num_classes = num_classes
        self.device = device

    def __call__(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        raise NotImplementedError

    def observe_validation(self, logits: Tensor, targets: Tensor) -> None:
        """Learn from validation logits ``[n, V, C]`` and targets ``[V]`` (default: nothing)."""


class Parametric(LossMethod):
    """The engine's parametric loss with fixed parameters (cross-entropy, focal, LA, Poly-1...)."""

    def __init__(self, num_members: int, num_classes: int, device: torch.device,
                 **params: float):
        super().__init__(num_members, num_classes, device)
        self.params = params

    def __call__(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        return losses.parametric_loss(
            logits, targets, ctx.class_counts, reduction="none", **self.params
        ).mean(-1)


class ClassBalanced(LossMethod):
    """Class-balanced weights from the effective number of samples (Cui et al. 2019), with
    optional focal γ; ``switch`` > 0 defers the weights to that fraction of training (DRW)."""

    def __init__(self, num_members: int, num_classes: int, device: torch.device,
                 gamma: float = 0.0, beta: float = 0.9999, switch: float = 0.0):
        super().__init__(num_members, num_classes, device)
        self.gamma, self.beta, self.switch = gamma, beta, switch

    def __call__(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        weights = losses.drw_weights(ctx.class_counts, ctx.progress, switch=self.switch,
                                     beta=self.beta)
        return losses.focal_loss(logits, targets, gamma=self.gamma, alpha=weights,
                                 reduction="none").mean(-1)


class LDAMDRW(LossMethod):
    """LDAM with deferred re-weighting (Cao et al. 2019): margins ∝ n^(−1/4), s = 30, class-
    balanced weights (β = 0.9999) from 80 % of training on, as in the paper's 160/200 epochs."""

    name = "ldam_drw"

    def __init__(self, num_members: int, num_classes: int, device: torch.device,
                 switch: float = 0.8, scale: float = 30.0):
        super().__init__(num_members, num_classes, device)
        self.switch, self.scale = switch, scale

    def __call__(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        weights = losses.drw_weights(ctx.class_counts, ctx.progress, switch=self.switch)
        return losses.ldam_loss(logits, targets, ctx.class_counts, scale=self.scale,
                                weight=weights, reduction="none").mean(-1)


class FLSD53(LossMethod):
    """Focal loss with sample-dependent γ (5 below p_t = 0.2, else 3; Mukhoti et al. 2020)."""

    def __call__(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        return losses.flsd53_loss(logits, targets, reduction="none").mean(-1)


class AdaFocal(LossMethod):
    """AdaFocal (Ghosh et al. 2022): one γ per confidence bin and member, initialised to 1 and
    updated from the validation calibration gap after every evaluation."""

    def __init__(self, num_members: int, num_classes: int, device: torch.device,
                 num_bins: int = 15, gamma0: float = 1.0, lam: float = 1.0):
        super().__init__(num_members, num_classes, device)
        self.module = losses.AdaFocalLoss(num_bins, gamma0, num_members=num_members, lam=lam,
                                          reduction="none").to(device)

    def __call__(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        return self.module(logits, targets).mean(-1)

    def observe_validation(self, logits: Tensor, targets: Tensor) -> None:
        self.module.update(logits, targets.expand(logits.shape[:-1]))


class AdaLossMethod(LossMethod):
    """AdaLoss (Hu et al. 2019) over per-class loss terms, each divided by a stop-gradient
    running mean of itself."""

    def __init__(self, num_members: int, num_classes: int, device: torch.device,
                 momentum: float = 0.9):
        super().__init__(num_members, num_classes, device)
        self.module = losses.AdaLoss(num_classes, momentum=momentum, num_members=num_members,
                                     reduction="none").to(device)

    def __call__(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        return self.module(logits, targets)


class GradientGate(LossMethod):
    """The design brief's per-sample gate 1/(1+e^(−a_i)) on the gradient size |p − y|."""

    def __init__(self, num_members: int, num_classes: int, device: torch.device,
                 strength: float = 4.0):
        super().__init__(num_members, num_classes, device)
        self.strength = strength

    def __call__(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        return losses.gradient_gated_cross_entropy(logits, targets, self.strength,
                                                   reduction="none").mean(-1)


def _named(name: str, cls: type[LossMethod], **kwargs: float) -> Callable[..., LossMethod]:
    def make(num_members: int, num_classes: int, device: torch.device) -> LossMethod:
        method = cls(num_members, num_classes, device, **kwargs)
        method.name = name
        return method

    return make


#: name → factory(num_members, num_classes, device); the methods of ``lossgym compare``.
BUILTIN_METHODS: dict[str, Callable[..., LossMethod]] = {
    "ce": _named("ce", Parametric),
    "focal_g1": _named("focal_g1", Parametric, gamma=1.0),
    "focal_g2": _named("focal_g2", Parametric, gamma=2.0),
    "focal_g3": _named("focal_g3", Parametric, gamma=3.0),
    "class_balanced": _named("class_balanced", ClassBalanced),
    "cb_focal": _named("cb_focal", ClassBalanced, gamma=1.0),
    "ce_drw": _named("ce_drw", ClassBalanced, switch=0.8),
    "ldam_drw": _named("ldam_drw", LDAMDRW),
    "logit_adjusted": _named("logit_adjusted", Parametric, tau=1.0),
    "poly1": _named("poly1", Parametric, poly_epsilon=1.0),
    "flsd53": _named("flsd53", FLSD53),
    "adafocal": _named("adafocal", AdaFocal),
    "adaloss": _named("adaloss", AdaLossMethod),
    "gradient_gate": _named("gradient_gate", GradientGate),
}


#: The class-balanced loss's β grid (Cui et al. 2019 searched β in {0.9, 0.99, 0.999, 0.9999}):
#: effective-number weights from the start, no focal term. ``class_balanced`` is β = 0.9999.
CLASS_BALANCED_BETAS = (0.9, 0.99, 0.999, 0.9999)
GRID_METHODS: dict[str, Callable[..., LossMethod]] = {
    f"cb_beta{beta:g}": _named(f"cb_beta{beta:g}", ClassBalanced, beta=beta)
    for beta in CLASS_BALANCED_BETAS
}


def make_method(name: str, num_members: int, num_classes: int, device: torch.device
                ) -> LossMethod:
    """Build a built-in method (:data:`BUILTIN_METHODS`, or the β grid :data:`GRID_METHODS`)
    by name; unknown names raise ``ValueError`` listing the known."""
    factory = BUILTIN_METHODS.get(name) or GRID_METHODS.get(name)
    if factory is None:
        raise ValueError(f"method {name!r} is not known; choose from "
                         f"{sorted(BUILTIN_METHODS) + sorted(GRID_METHODS)}")
    return factory(num_members, num_classes, device)


class MethodMix:
    """Several methods in one population: method k owns a contiguous block of members.

    Args:
        methods: the methods, in member order; method k owns ``methods[k].num_members``.
    """

    def __init__(self, methods: Sequence[LossMethod]):
        self.methods = list(methods)
        self.bounds: list[tuple[int, int]] = []
        start = 0
        for method in self.methods:
            self.bounds.append((start, start + method.num_members))
            start += method.num_members
        self.num_members = start

    def __call__(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        parts = [
            method(logits[a:b], targets[a:b],
                   MinibatchContext(ctx.progress[a:b], ctx.class_counts[a:b]))
            for method, (a, b) in zip(self.methods, self.bounds)
        ]
        return torch.cat(parts)

    def observe_validation(self, logits: Tensor, targets: Tensor) -> None:
        for method, (a, b) in zip(self.methods, self.bounds):
            method.observe_validation(logits[a:b], targets)
