"""Built-in loss methods: each trains a group of members by one rule, and serialises itself.

A method object is a :data:`lossgym.population.Criterion` (logits ``[n, B, C]``, targets
``[n, B]``, context → loss ``[n]``) for the ``n`` members it owns, with per-member state where
the method has some (AdaFocal's γ per bin, AdaLoss's running means). Methods that learn from
the validation split get it through :meth:`LossMethod.observe_validation`, called after each
evaluation. :class:`MethodMix` runs several methods side by side in one population, so a whole
comparison (every method × every seed) is one batched run.

The same object at one member is what :class:`~lossgym.export.AdaptiveLoss` runs in a plain
training loop: :meth:`LossMethod.to_dict` is an export's ``method`` entry and
:func:`method_from_dict` reads it back. :data:`METHODS` names every built-in method once.

Adding a method: a :class:`LossMethod` subclass with its hyperparameters in ``HYPER`` and a
:meth:`~LossMethod.per_sample` (or :meth:`~LossMethod.member_loss`), and a :data:`METHODS`
entry; the comparison, the evaluation and the export pick it up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lossgym import _checks as checks
from lossgym import losses
from lossgym import params as loss_params
from lossgym.losses._kernel import check_logits_targets
from lossgym.losses.parametric import CB_BETA
from lossgym.population import MinibatchContext, resolve_device
from lossgym.schedules import LossSchedule, constant, step


class LossMethod:
    """Base class: a loss rule for ``num_members`` members with ``num_classes`` classes.

    Args:
        num_members: members this object trains (1 in :class:`~lossgym.export.AdaptiveLoss`).
        num_classes: classes (None where the method needs no per-class state).
        device: where its state lives.
        **hyper: hyperparameters, names of ``HYPER`` (default: its defaults).
    """

    #: hyperparameter → (default, low, high), inclusive; ``num_bins`` is an integer.
    HYPER: dict[str, tuple[float, float, float]] = {}
    #: Whether it reads training progress (a deferred switch) or learns from validation.
    uses_progress = False
    uses_validation = False
    name = "method"

    def __init__(self, num_members: int = 1, num_classes: int | None = None,
                 device: torch.device | str = "cpu", **hyper: float) -> None:
        self.num_members = checks.integer("num_members", num_members, 1)
        self.num_classes = None if num_classes is None \
            else checks.integer("num_classes", num_classes, 1)
        self.device = resolve_device(device)
        unknown = sorted(set(hyper) - set(self.HYPER))
        if unknown:
            raise ValueError(f"method {self.name!r} has no hyperparameters {unknown}; it "
                             f"takes {sorted(self.HYPER)}")
        self.hyper: dict[str, float] = {}
        for key, (default, low, high) in self.HYPER.items():
            check = checks.integer if key == "num_bins" else checks.real
            try:
                self.hyper[key] = check(key, hyper.get(key, default), low, high)
            except ValueError as err:
                raise ValueError(f"method {self.name!r}: {err}") from None

    def per_sample(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        """The per-sample loss ``[n, B]``."""
        raise NotImplementedError

    def held_terms(self, ctx: MinibatchContext, like: Tensor
                   ) -> tuple[losses.Terms, float | None] | None:
        """The modulated cross-entropy's terms of this minibatch, if the loss is that and they
        hold while the progress stays below a bound (the second item; None: for good), or
        None (the default): what lets :class:`lossgym.AdaptiveLoss` keep one plan."""
        return None

    def member_loss(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext,
                    reduction: str = "mean") -> Tensor:
        """The loss reduced over each member's batch: ``[n]`` (``"none"``: ``[n, B]``); the
        mean of an empty batch is 0, as its sum."""
        loss = self.per_sample(logits, targets, ctx)
        if reduction == "none":
            return loss
        return loss.mean(-1) if reduction == "mean" and loss.shape[-1] else loss.sum(-1)

    def __call__(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        return self.member_loss(logits, targets, ctx)

    def observe_validation(self, logits: Tensor, targets: Tensor) -> None:
        """Learn from validation logits ``[n, V, C]`` and targets ``[V]`` (default: nothing)."""

    def state(self) -> dict[str, Tensor]:
        """Learned state (tensors), for checkpoints."""
        return {}

    def load_state(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state`."""

    def describe(self) -> dict[str, float]:
        """The hyperparameters and the learned state in use, as numbers."""
        return dict(self.hyper)

    def to_dict(self) -> dict[str, Any]:
        """The method as JSON: its name and every hyperparameter."""
        return {"name": self.name, "params": dict(self.hyper)}

    def schedule(self) -> LossSchedule | None:
        """The method as a schedule of the parametric loss where it is one (it can then be a
        base rule), else None (the default)."""
        return None


class Parametric(LossMethod):
    """The engine's parametric loss with fixed parameters (cross-entropy, focal, LA, Poly-1...)."""

    def __init__(self, num_members: int = 1, num_classes: int | None = None,
                 device: torch.device | str = "cpu", **hyper: float) -> None:
        self.HYPER = {p.name: (p.neutral, p.low, p.high) for p in loss_params.LOSS_PARAMS}
        super().__init__(num_members, num_classes, device, **hyper)
        self.values = {k: v for k, v in self.hyper.items()
                       if v != loss_params.param(k).neutral}
        self._loss = losses.ParametricCriterion(reduction="none")

    def per_sample(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        return self._loss(logits, targets, self.values, ctx.class_counts)

    def schedule(self) -> LossSchedule | None:
        return LossSchedule({k: constant(v) for k, v in self.values.items()}
                            or {"gamma": constant(0.0)})


class _DeferredReweighting(LossMethod):
    """Class-balanced weights (effective number, Cui et al. 2019) that switch on at ``switch``
    of training (DRW, Cao et al. 2019), with the terms of the modulated cross-entropy kept
    while the counts and each member's side of the switch stay the same (on the CPU, where
    reading the switch costs no device sync): a period of one plan for AdaptiveLoss."""

    def _extra_terms(self, counts: Tensor) -> dict[str, Any]:
        return {}

    def _schedule(self, **extra: float) -> LossSchedule | None:
        # The weights are the parametric loss's cb = 1 where β is that parameter's.
        switch = self.hyper["switch"]
        if self.hyper.get("beta", CB_BETA) != CB_BETA or not 0.0 <= switch < 1.0:
            return None
        cb = constant(1.0) if switch == 0.0 else step([switch], [0.0, 1.0])
        return LossSchedule({**{k: constant(v) for k, v in extra.items() if v}, "cb": cb})

    def _terms(self, ctx: MinibatchContext, like: Tensor) -> losses.Terms:
        counts, h = ctx.class_counts, self.hyper
        key = None
        if not counts.is_cuda:
            on = tuple((ctx.progress >= h["switch"]).reshape(-1).tolist())
            key = (id(counts), counts._version, like.dtype, on)
            cached = getattr(self, "_cached", None)
            if cached is not None and cached[0] == key:
                return cached[1]
        weights = losses.drw_weights(counts, ctx.progress, switch=h["switch"],
                                     beta=h.get("beta", 0.9999)).to(like.dtype)
        terms = losses.Terms(weight=weights, **self._extra_terms(counts))
        if key is not None:
            self._cached = (key, terms)
        return terms

    def per_sample(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        check_logits_targets(logits, targets)
        return losses.modulated_ce(logits, targets, self._terms(ctx, logits), "none")

    def held_terms(self, ctx: MinibatchContext, like: Tensor
                   ) -> tuple[losses.Terms, float | None] | None:
        on = ctx.progress >= self.hyper["switch"]
        if not bool(on.all()) and bool(on.any()):
            return None  # members on both sides of the switch
        return self._terms(ctx, like), None if bool(on.all()) else self.hyper["switch"]


class ClassBalanced(_DeferredReweighting):
    """Class-balanced weights from the effective number of samples (Cui et al. 2019), with
    optional focal γ; ``switch`` > 0 defers the weights to that fraction of training (DRW)."""

    HYPER = {"gamma": (0.0, 0.0, 20.0), "beta": (0.9999, 0.0, 1.0 - 1e-12),
             "switch": (0.0, 0.0, 1.0)}

    @property
    def uses_progress(self) -> bool:
        return self.hyper["switch"] > 0

    def _extra_terms(self, counts: Tensor) -> dict[str, Any]:
        return {"gamma": self.hyper["gamma"]}

    def schedule(self) -> LossSchedule | None:
        gamma = self.hyper["gamma"]
        return None if gamma > loss_params.param("gamma").high else self._schedule(gamma=gamma)


class LDAMDRW(_DeferredReweighting):
    """LDAM with deferred re-weighting (Cao et al. 2019): margins ∝ n^(−1/4), s = 30, class-
    balanced weights (β = 0.9999) from 80 % of training on, as in the paper's 160/200 epochs."""

    HYPER = {"switch": (0.8, 0.0, 1.0), "scale": (30.0, 1e-6, 1e4)}
    uses_progress = True

    def _extra_terms(self, counts: Tensor) -> dict[str, Any]:
        # s (z − Δ_y e_y): the margins in the units of the scaled logits (LDAM's max 0.5).
        s = self.hyper["scale"]
        return {"scale": s, "margins": losses.ldam_margins(counts, 0.5) * s}

    def schedule(self) -> LossSchedule | None:
        scale = self.hyper["scale"]
        if not loss_params.param("scale").low <= scale <= loss_params.param("scale").high:
            return None
        return self._schedule(margin=0.5, scale=scale)


class FLSD53(LossMethod):
    """Focal loss with sample-dependent γ (5 below p_t = 0.2, else 3; Mukhoti et al. 2020)."""

    def per_sample(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        return losses.flsd53_loss(logits, targets, reduction="none")


class AdaFocal(LossMethod):
    """AdaFocal (Ghosh et al. 2022): one γ per confidence bin and member, initialised to γ0
    and updated from the validation calibration gap after every evaluation."""

    HYPER = {"num_bins": (15, 1, 1000), "gamma0": (1.0, -2.0, 20.0), "lam": (1.0, 0.0, 100.0)}
    uses_validation = True

    def __init__(self, num_members: int = 1, num_classes: int | None = None,
                 device: torch.device | str = "cpu", **hyper: float) -> None:
        super().__init__(num_members, num_classes, device, **hyper)
        self.module = losses.AdaFocalLoss(
            int(self.hyper["num_bins"]), self.hyper["gamma0"], num_members=num_members,
            lam=self.hyper["lam"], reduction="none").to(self.device)

    def per_sample(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        return self.module(logits, targets)

    def observe_validation(self, logits: Tensor, targets: Tensor) -> None:
        self.module.update(logits, targets.expand(logits.shape[:-1]))

    def state(self) -> dict[str, Tensor]:
        return dict(self.module.state_dict())

    def load_state(self, state: Mapping[str, Tensor]) -> None:
        self.module.load_state_dict(dict(state))

    def describe(self) -> dict[str, float]:
        gammas = self.module.gamma_bins.flatten().tolist()
        return {**self.hyper, **{f"gamma_bin{i}": float(g) for i, g in enumerate(gammas)}}


class AdaLossMethod(LossMethod):
    """AdaLoss (Hu et al. 2019) over per-class loss terms, each divided by a stop-gradient
    running mean of itself."""

    HYPER = {"momentum": (0.9, 0.0, 1.0 - 1e-12)}

    def __init__(self, num_members: int = 1, num_classes: int | None = None,
                 device: torch.device | str = "cpu", **hyper: float) -> None:
        super().__init__(num_members, num_classes, device, **hyper)
        self.module = None if num_classes is None else losses.AdaLoss(
            num_classes, momentum=self.hyper["momentum"], num_members=num_members,
            reduction="none").to(self.device)

    def member_loss(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext,
                    reduction: str = "mean") -> Tensor:
        if self.module is None:
            raise ValueError("adaloss needs the number of classes (num_classes)")
        return self.module(logits, targets)

    def state(self) -> dict[str, Tensor]:
        return {} if self.module is None else dict(self.module.state_dict())

    def load_state(self, state: Mapping[str, Tensor]) -> None:
        if self.module is not None and state:
            self.module.load_state_dict(dict(state))


class GradientGate(LossMethod):
    """The design brief's per-sample gate 1/(1+e^(−a_i)) on the gradient size |p − y|."""

    HYPER = {"strength": (4.0, -100.0, 100.0)}

    def per_sample(self, logits: Tensor, targets: Tensor, ctx: MinibatchContext) -> Tensor:
        return losses.gradient_gated_cross_entropy(logits, targets, self.hyper["strength"],
                                                   reduction="none")


#: The class-balanced loss's β grid (Cui et al. 2019 searched β in {0.9, 0.99, 0.999, 0.9999}):
#: effective-number weights from the start, no focal term. ``cb_effective`` is β = 0.9999.
CLASS_BALANCED_BETAS = (0.9, 0.99, 0.999, 0.9999)

#: Every built-in method: name → (class, hyperparameters that differ from its defaults).
METHODS: dict[str, tuple[type[LossMethod], dict[str, float]]] = {
    "ce": (Parametric, {}),
    "focal_1": (Parametric, {"gamma": 1.0}),
    "focal_2": (Parametric, {"gamma": 2.0}),
    "focal_3": (Parametric, {"gamma": 3.0}),
    "cb_effective": (ClassBalanced, {}),
    "cb_focal": (ClassBalanced, {"gamma": 1.0}),
    "ce_drw": (ClassBalanced, {"switch": 0.8}),
    "ldam_drw": (LDAMDRW, {}),
    "logit_adjusted": (Parametric, {"tau": 1.0}),
    "poly1": (Parametric, {"poly_epsilon": 1.0}),
    "flsd53": (FLSD53, {}),
    "adafocal": (AdaFocal, {}),
    "adaloss": (AdaLossMethod, {}),
    "gradient_gate": (GradientGate, {}),
    **{f"cb_beta{beta:g}": (ClassBalanced, {"beta": beta}) for beta in CLASS_BALANCED_BETAS},
}
#: What ``lossgym compare`` runs by default (the β grid is left to the evaluation).
COMPARED = tuple(name for name in METHODS if not name.startswith("cb_beta"))
#: Names used before issue 12 → today's name (exports keep loading; commands say the new one).
RENAMED = {"class_balanced": "cb_effective", "focal_g1": "focal_1", "focal_g2": "focal_2",
           "focal_g3": "focal_3"}


def check_method_name(name: str) -> str:
    """``name`` if it is a built-in method, else a ``ValueError`` naming the known ones (and
    the new name of a renamed one)."""
    if not isinstance(name, str):
        raise ValueError(f"method name={name!r} must be a string; choose from {sorted(METHODS)}")
    if name in METHODS:
        return name
    if name in RENAMED:
        raise ValueError(f"method {name!r} is now called {RENAMED[name]!r}")
    raise ValueError(f"method {name!r} is not known; choose from {sorted(METHODS)}")


def make_method(name: str, num_members: int = 1, num_classes: int | None = None,
                device: torch.device | str = "cpu", **hyper: float) -> LossMethod:
    """The built-in method ``name`` of :data:`METHODS` (``hyper`` overrides its defaults)."""
    cls, defaults = METHODS[check_method_name(name)]
    method = cls.__new__(cls)
    method.name = name
    method.__init__(num_members, num_classes, device, **{**defaults, **hyper})
    return method


def method_from_dict(values: object, num_members: int = 1, num_classes: int | None = None,
                     device: torch.device | str = "cpu") -> LossMethod:
    """The method of :meth:`LossMethod.to_dict` (names from before issue 12 load too)."""
    if not isinstance(values, dict) or set(values) - {"name", "params"} \
            or not isinstance(values.get("params", {}), dict):
        raise ValueError(f"a method must be a JSON object with 'name' and 'params', got "
                         f"{values!r}")
    name = RENAMED.get(values.get("name"), values.get("name"))
    if not isinstance(name, str):
        raise ValueError(f"method name must be a string, got {name!r}")
    return make_method(name, num_members, num_classes, device, **values.get("params", {}))


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
