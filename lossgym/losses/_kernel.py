"""The modulated cross-entropy: the one loss every softmax loss of lossgym computes.

With the logit transform :math:`z' = s z + h - u_y e_y` (scale ``s``, class shift ``h``,
target margin ``u``, each optional), :math:`\\log p = \\mathrm{log\\_softmax}(z')`,
:math:`q = 1 - p_t` and the smoothed base
:math:`b = -[(1 - \\varepsilon_{ls}) \\log p_t + \\varepsilon_{ls} \\tfrac1C \\sum_c \\log p_c]`,

.. math:: \\ell_i = w_{y_i}\\,[\\max(q, \\epsilon)^{\\gamma}\\, b + \\varepsilon_{poly}\\, q]

optionally re-weighted by the gradient gate. :class:`Terms` names these inputs;
:func:`modulated_ce` computes the loss, written once here in torch (autograd), with one call of
the C extension (:mod:`lossgym._native`) as its fast path where the inputs allow: CPU float32 /
float64 logits, host numbers or per-member values that need no gradient, no gate. The fast
path's arguments (:class:`NativePlan`) are built once per :class:`Terms` object and kept on it,
so a caller that keeps its terms for a period (the parametric criterion) pays for them once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lossgym import _checks as checks
from lossgym import _native

REDUCTIONS = ("none", "mean", "sum")
#: Floor for the focal base 1 − p_t inside the power (see focal_loss for why it exists).
FOCAL_EPS = 1e-6
#: Inputs up to this many logits go to the C extension (one thread, about 15 ns a logit,
#: forward and backward). On two cores it is still 1.2× faster than autograd at 256 members ×
#: 128 × 10 logits (``scripts/bench_loss_kernel.py``); the bound stops below that, since
#: torch's kernels use every core and the extension one.
NATIVE_MAX_NUMEL = 1 << 18
_REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}


# ------------------------------------------------------------------------------- checks
def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce(loss: Tensor, reduction: str) -> Tensor:
    """``loss`` reduced; the mean of an empty batch is 0 (with a zero gradient), as its sum."""
    check_reduction(reduction)
    if reduction == "none":
        return loss
    return loss.mean() if reduction == "mean" and loss.numel() else loss.sum()


def check_logits_targets(logits: Tensor, targets: Tensor, what: str = "targets") -> None:
    """Floating logits ``[..., B, C]`` and int64 targets ``[..., B]``: shapes and dtypes only
    (no kernel); :func:`check_targets` adds the bounds."""
    if not isinstance(logits, Tensor) or not isinstance(targets, Tensor):
        raise TypeError(f"logits and {what} must be tensors, got {type(logits).__name__} and "
                        f"{type(targets).__name__}")
    if logits.device != targets.device:
        raise ValueError(f"logits and {what} must be on one device, got {logits.device} and "
                         f"{targets.device}")
    if logits.ndim < 2 or logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits must have shape [..., B, C] and {what} [..., B]; got logits "
            f"{tuple(logits.shape)} and {what} {tuple(targets.shape)}"
        )
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if targets.dtype is not torch.int64:
        raise ValueError(f"{what} must be int64 class indices in [0, {logits.shape[-1]}), got "
                         f"dtype {targets.dtype} (convert with .long())")


def check_target_bounds(targets: Tensor, num_classes: int, what: str = "targets") -> None:
    """Targets in [0, C), with the C extension's message. CPU tensors only: on CUDA the check
    would be a host sync, so there torch's kernels assert on the device instead."""
    if not targets.is_cpu or not targets.numel():
        return
    low, high = (int(v) for v in torch.aminmax(targets))
    if low < 0 or high >= num_classes:
        flat = targets.reshape(-1)
        k = int(((flat < 0) | (flat >= num_classes)).nonzero()[0, 0])
        prefix = "" if what == "targets" else f"{what}: "
        raise IndexError(f"{prefix}Target {int(flat[k])} is out of bounds [0, {num_classes}) "
                         f"(sample {k})")


def check_targets(logits: Tensor, targets: Tensor, what: str = "targets") -> None:
    """What every loss asks of its inputs: floating logits ``[..., B, C]``, int64 targets
    ``[..., B]`` in [0, C) (the bounds on the CPU only; samples count in the flattened
    targets)."""
    check_logits_targets(logits, targets, what)
    check_target_bounds(targets, logits.shape[-1], what)


def check_range(value: float | Tensor, name: str, low: float = -math.inf,
                high: float = math.inf, *, open_low: bool = False, open_high: bool = False
                ) -> tuple[float, float] | None:
    """A ``ValueError`` naming ``name`` and the value unless ``value`` is finite and within
    the bounds. Python numbers are always checked, CPU tensors with one reduction (whose
    extremes, min and max, are returned); CUDA tensors are not inspected (that would be a
    host sync). Anything else (a string, None, a list, a bool) raises ``TypeError`` naming
    ``name``."""
    bounds = {"low": low, "high": high, "open_low": open_low, "open_high": open_high}
    if isinstance(value, Tensor):
        if value.is_complex():
            raise ValueError(f"{name} must hold real numbers, got a tensor of dtype "
                             f"{value.dtype}")
        if not value.is_cpu or not value.numel() or value.dtype is torch.bool:
            return None
        v = value.detach()
        # One kernel: NaN propagates into both extremes.
        extremes = tuple(float(x) for x in torch.aminmax(v.reshape(-1)))
        if all(checks.inside(x, **bounds) for x in extremes):
            return extremes  # type: ignore[return-value]
        bad = next(x for x in v.reshape(-1).tolist() if not checks.inside(float(x), **bounds))
        raise ValueError(f"{name} holds {bad!r}; every value of {name} must be "
                         f"{checks.interval(**bounds)}")
    if not checks.is_real(value):
        raise TypeError(f"{name}={value!r:.80} must be a float or a tensor, got "
                        f"{type(value).__name__}")
    checks.real(name, value, **bounds)
    return None


def class_counts_values(counts: Tensor, name: str = "class_counts") -> Tensor:
    """Class counts ``[..., C]`` as floats: finite and >= 0 (checked as :func:`check_range`),
    and a row of all zeros, counts that are unknown, read as equal counts."""
    if not isinstance(counts, Tensor):
        raise TypeError(f"{name} must be a tensor of per-class counts, got "
                        f"{type(counts).__name__}")
    if counts.ndim == 0 or not counts.shape[-1]:
        raise ValueError(f"{name} has shape {tuple(counts.shape)}; it must be [C] or [..., C] "
                         "with C >= 1 per-class counts")
    extremes = check_range(counts, name, 0.0)
    c = counts if counts.is_floating_point() else counts.to(torch.get_default_dtype())
    if extremes is not None and extremes[0] > 0:
        return c  # (align_class names a shape that does not fit)
    if extremes is not None and c.ndim == 1:
        return c if extremes[1] > 0 else torch.ones_like(c)
    return c + (c.amax(dim=-1, keepdim=True) <= 0)  # counts are >= 0: a row of zeros gets 1s


def is_zero(value: float | Tensor | None) -> bool:
    """True only for a Python number equal to 0 (tensors are never inspected: no host sync)."""
    return isinstance(value, (int, float)) and value == 0


def is_one(value: float | Tensor) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 1


def align(value: float | Tensor, ref_shape: Sequence[int], name: str, like: Tensor
          ) -> float | Tensor:
    """Align ``value`` to the leading dims of ``ref_shape`` and right-pad with singleton dims.

    Python numbers pass through untouched so that callers can skip work for exact zeros and
    so that scalar parameters never allocate tensors.
    """
    if not isinstance(value, Tensor) and not checks.is_real(value):
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    if not isinstance(value, Tensor):
        return float(value)  # type: ignore[arg-type]
    ref = tuple(ref_shape)
    shape = tuple(value.shape)
    if len(shape) > len(ref) or any(s != r and s != 1 for s, r in zip(shape, ref, strict=False)):
        allowed = ", ".join(str(tuple(ref[:k])) for k in range(len(ref) + 1))
        raise ValueError(
            f"{name} has shape {shape}, which cannot be aligned to the leading dims of {ref}; "
            f"allowed: a float or one of the shapes {allowed} (size-1 dims allowed)"
        )
    value = value.to(dtype=like.dtype, device=like.device)
    return value.reshape(shape + (1,) * (len(ref) - len(shape)))


def align_class(value: Tensor, lead_shape: Sequence[int], num_classes: int, name: str,
                like: Tensor) -> Tensor:
    """Align a per-class tensor ``[C]`` or ``[*L, C]`` to ``lead_shape + [C]``.

    ``L`` must be a prefix of ``lead_shape`` (size-1 dims allowed); the result is a view of
    shape ``L + [1, ...] + [C]`` that broadcasts against ``lead_shape + [C]``.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    lead = tuple(lead_shape)
    shape = tuple(value.shape)
    if (value.ndim == 0 or shape[-1] != num_classes or len(shape) - 1 > len(lead)
            or any(s != r and s != 1 for s, r in zip(shape[:-1], lead, strict=False))):
        allowed = ", ".join(str(tuple(lead[:k]) + (num_classes,)) for k in range(len(lead) + 1))
        raise ValueError(
            f"{name} has shape {shape}, but per-class values must have one of the shapes {allowed}"
        )
    value = value.to(dtype=like.dtype, device=like.device)
    pad = (1,) * (len(lead) - (len(shape) - 1))
    return value.reshape(shape[:-1] + pad + (num_classes,))


def gather_class(value: Tensor, targets: Tensor) -> Tensor:
    """Pick ``value[..., y]`` for an aligned per-class tensor; works for any leading dims."""
    full = value.expand(tuple(targets.shape) + (value.shape[-1],))
    return full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def gate_weights(hardness: Tensor, strength: float | Tensor) -> Tensor:
    """σ(s (g − ḡ)) of the detached hardness g = 1 − p_t, ḡ its mean over the batch."""
    g = hardness.detach()
    return torch.sigmoid(strength * (g - g.mean(dim=-1, keepdim=True)))


# ------------------------------------------------------------------------------- terms
_SCALARS = ("scale", "gamma", "label_smoothing", "poly_epsilon")
_CLASS_TERMS = ("weight", "shift", "margins")
#: The largest magnitude a loss parameter may take: beyond it the float32 arithmetic of the
#: terms overflows to inf or NaN (a scale of 1e300 times a logit, say). Every action range
#: (:mod:`lossgym.params`) lies far inside it.
LIMIT = 1e6
#: Where each scalar term is defined: (low, high, low excluded).
DOMAINS: dict[str, tuple[float, float, bool]] = {
    "scale": (0.0, LIMIT, True),
    "gamma": (0.0, LIMIT, False),
    "label_smoothing": (0.0, 1.0, False),
    "poly_epsilon": (-LIMIT, LIMIT, False),
    "gate": (-LIMIT, LIMIT, False),
}


@dataclass(eq=False)
class Terms:
    """The inputs of :func:`modulated_ce` besides the logits and targets.

    Scalars are Python numbers or tensors aligned to the targets' leading dims (per member
    ``[M]``, per sample ``[M, B]``); class terms are ``[C]`` or ``[..., C]`` with leading dims
    a prefix of the targets' shape. ``margins`` are in the units of the scaled logits (LDAM's
    s Δ u_c).

    The scalars must lie in :data:`DOMAINS` (s > 0, γ >= 0, ε_ls in [0, 1], none beyond
    :data:`LIMIT` in magnitude)
    and the weights be finite and >= 0; a ``ValueError`` names the term otherwise (checked as
    :func:`check_range`: Python numbers always, CPU tensors once per terms object, CUDA
    tensors not).
    """

    scale: float | Tensor = 1.0
    shift: Tensor | None = None      # h_c, added to the scaled logits
    weight: Tensor | None = None     # w_c, the target class's weight
    margins: Tensor | None = None    # u_c, subtracted from the target's scaled logit
    gamma: float | Tensor = 0.0
    label_smoothing: float | Tensor = 0.0
    poly_epsilon: float | Tensor = 0.0
    gate: float | Tensor = 0.0
    eps: float = FOCAL_EPS
    # The fast path's arguments by (dtype, reduction, members): see native_plan.
    _plans: dict[tuple[Any, ...], NativePlan | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name, (low, high, open_low) in DOMAINS.items():
            check_range(getattr(self, name), name, low, high, open_low=open_low)
        if self.weight is not None:
            check_range(self.weight, "weight", 0.0)
        check_range(self.eps, "eps", 0.0)

    def is_plain(self) -> bool:
        """Plain cross-entropy: torch's fused kernel is exact and as fast."""
        return (is_one(self.scale) and self.shift is None and self.weight is None
                and self.margins is None and is_zero(self.gamma) and is_zero(self.poly_epsilon)
                and is_zero(self.gate) and not isinstance(self.label_smoothing, Tensor))


class NativePlan(NamedTuple):
    """The C extension's plan argument, with named fields; every buffer is an
    ``(address, number of values)`` pair, ``(0, 0)`` for none, which the extension checks
    against the sizes of the call."""

    is_double: bool
    num_classes: int
    weight: tuple[int, int]
    shift: tuple[int, int]
    margins: tuple[int, int]
    scale: float
    gamma: float
    label_smoothing: float
    poly_epsilon: float
    eps: float
    reduction: int
    members: int
    class_stride: int
    member_params: tuple[int, int]


def _buffer(t: Tensor | None) -> tuple[int, int]:
    return (0, 0) if t is None else (t.data_ptr(), t.numel())


def native_plan(terms: Terms, logits: Tensor, targets: Tensor, reduction: str
                ) -> tuple[NativePlan, list[Tensor]] | None:
    """The fast path's plan for these terms and inputs (kept on ``terms``), or None where the
    extension does not take them."""
    if (_native.closedform is None or not logits.is_cpu or targets.dtype is not torch.int64
            or logits.dtype not in (torch.float32, torch.float64) or logits.dim() not in (2, 3)
            or not 0 < logits.numel() <= NATIVE_MAX_NUMEL):
        return None
    members = logits.shape[0] if logits.dim() == 3 else 1
    key = (logits.dtype, reduction, members)
    if key in terms._plans:
        return terms._plans[key]
    plan = _build_native(terms, logits.dtype, logits.shape[-1], reduction, members)
    terms._plans[key] = plan
    return plan


def _build_native(terms: Terms, dtype: torch.dtype, num_classes: int, reduction: str,
                  members: int) -> tuple[NativePlan, list[Tensor]] | None:
    if not is_zero(terms.gate):
        return None
    scalars: dict[str, float | Tensor] = {}
    per_member = False
    for name in _SCALARS:
        v = getattr(terms, name)
        if isinstance(v, Tensor):
            if v.requires_grad:
                return None
            if v.numel() == 1:
                v = float(v)
            elif v.numel() == members and v.shape[0] == members:
                v, per_member = v.detach().reshape(members), True
            else:
                return None  # per sample
        scalars[name] = v
    classes: dict[str, Tensor | None] = {}
    for name in _CLASS_TERMS:
        t = getattr(terms, name)
        if t is not None:
            if t.requires_grad:
                return None
            t = t.detach()
            if t.numel() == num_classes:
                t = t.reshape(num_classes)
            elif t.numel() == members * num_classes and t.shape[0] == members:
                t, per_member = t.reshape(members, num_classes), True
            else:
                return None
        classes[name] = t
    m = members if per_member else 1
    stride = num_classes if any(t is not None and t.dim() == 2 for t in classes.values()) else 0
    keep: list[Tensor] = []

    def held(t: Tensor | None, dt: torch.dtype) -> Tensor | None:
        if t is None:
            return None
        t = t.to("cpu", dt)
        if stride and t.dim() == 1 and t.numel() == num_classes:
            t = t.expand(m, num_classes)
        t = t.contiguous()
        keep.append(t)
        return t

    member_params = None
    if any(isinstance(v, Tensor) for v in scalars.values()):
        member_params = held(torch.stack([
            v.to("cpu", torch.float64) if isinstance(v, Tensor)
            else torch.full((m,), float(v), dtype=torch.float64) for v in scalars.values()],
            dim=1), torch.float64)
    host = {k: 0.0 if isinstance(v, Tensor) else float(v) for k, v in scalars.items()}
    plan = NativePlan(
        dtype is torch.float64, num_classes, _buffer(held(classes["weight"], dtype)),
        _buffer(held(classes["shift"], dtype)), _buffer(held(classes["margins"], dtype)),
        host["scale"], host["gamma"], host["label_smoothing"], host["poly_epsilon"],
        float(terms.eps), _REDUCTION_CODES[reduction], m, stride, _buffer(member_params))
    return plan, keep


class _Native(torch.autograd.Function):
    """One call of the C extension: the loss, its closed-form gradient (kept for the
    backward pass, which multiplies it) and, where ``ce_out`` is a list, the mean plain
    cross-entropy of the untransformed logits appended to it (a Python float)."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, plan: NativePlan,
                ce_out: list | None) -> Tensor:
        logits, targets = logits.contiguous(), targets.contiguous()
        n = targets.numel()
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        out = logits.new_empty(targets.shape if plan.reduction == 0 else ())
        ce = _native.closedform.modulated_ce(
            plan, n, _buffer(logits), _buffer(targets), _buffer(grad), _buffer(out),
            ce_out is not None)
        if ce_out is not None:
            ce_out.append(ce)
        if grad is not None:
            ctx.save_for_backward(grad)
            ctx.per_sample = plan.reduction == 0
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError("this loss has a closed-form first derivative only; for "
                               "higher derivatives pass its parameters as tensors that "
                               "require grad")
        (grad,) = ctx.saved_tensors
        return grad * (grad_out.unsqueeze(-1) if ctx.per_sample else grad_out), None, None, None


def modulated_ce(logits: Tensor, targets: Tensor, terms: Terms, reduction: str = "mean",
                 ce_out: list | None = None) -> Tensor:
    """The modulated cross-entropy of logits ``[..., B, C]`` and int64 targets ``[..., B]``
    (module docstring). Where ``ce_out`` is a list, the (detached) mean plain cross-entropy of
    the untransformed logits is appended to it (nothing for an empty batch).

    The targets are checked (:func:`check_targets`): the C extension checks their bounds as
    it goes, the torch paths first. An empty batch gives the empty loss (``"none"``) or 0 with
    a zero gradient (``"mean"``, ``"sum"``)."""
    check_reduction(reduction)
    check_logits_targets(logits, targets)
    if not isinstance(terms, Terms):
        raise TypeError(f"terms must be a Terms, got {type(terms).__name__}")
    if not targets.numel():
        return reduce(logits.sum(dim=-1), reduction)
    if terms.is_plain():
        check_target_bounds(targets, logits.shape[-1])
        # Torch's fused kernel: F.cross_entropy's exact value and gradient, and the cheapest.
        out = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                              reduction=reduction, label_smoothing=float(terms.label_smoothing))
        if ce_out is not None:  # plain mean cross-entropy: the loss itself, else computed
            plain_mean = terms.label_smoothing == 0 and reduction == "mean"
            ce_out.append(out.detach() if plain_mean else F.cross_entropy(
                logits.detach().reshape(-1, logits.shape[-1]), targets.reshape(-1)))
        return out.reshape(targets.shape) if reduction == "none" else out
    native = native_plan(terms, logits, targets, reduction)
    if native is not None:
        if native[0].members > 1 and (logits.dim() != 3 or len(logits) != native[0].members):
            raise ValueError(f"logits {tuple(logits.shape)} do not fit the terms' "
                             f"{native[0].members} members")
        return _Native.apply(logits, targets, native[0], ce_out)
    check_target_bounds(targets, logits.shape[-1])
    if ce_out is not None:
        ce_out.append(F.cross_entropy(logits.detach().reshape(-1, logits.shape[-1]),
                                      targets.reshape(-1)))
    return reduce(_reference(logits, targets, terms), reduction)


def _reference(logits: Tensor, targets: Tensor, terms: Terms) -> Tensor:
    """The per-sample loss in torch kernels, differentiable in every tensor term."""
    shape, num_classes = targets.shape, logits.shape[-1]

    def scalar(name: str) -> float | Tensor:
        v = align(getattr(terms, name), shape, name, logits)
        return v.unsqueeze(-1) if isinstance(v, Tensor) and name == "scale" else v

    def per_class(name: str) -> Tensor | None:
        t = getattr(terms, name)
        return None if t is None else align_class(t, shape, num_classes, name, logits)

    z = logits
    scale = scalar("scale")
    if not is_one(scale):
        z = z * scale
    shift, margins, weight = per_class("shift"), per_class("margins"), per_class("weight")
    if shift is not None:
        z = z + shift
    if margins is not None:
        onehot = torch.zeros_like(z).scatter_(-1, targets.unsqueeze(-1), 1.0)
        z = z - onehot * gather_class(margins, targets).unsqueeze(-1)
    logp = F.log_softmax(z, dim=-1)
    logp_t = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ls = scalar("label_smoothing")
    loss = -logp_t if is_zero(ls) else -((1.0 - ls) * logp_t + ls * logp.mean(dim=-1))
    gamma, poly, gate = scalar("gamma"), scalar("poly_epsilon"), scalar("gate")
    if is_zero(gamma) and is_zero(poly) and is_zero(gate):
        q = None
    else:
        q = -torch.expm1(logp_t)  # accurate where p_t is close to 1
    if not is_zero(gamma):
        loss = loss * q.clamp_min(terms.eps).pow(gamma)
    if not is_zero(poly):
        loss = loss + poly * q
    if weight is not None:
        loss = loss * gather_class(weight, targets)
    if not is_zero(gate):
        w = gate_weights(q, gate)
        # Scaled so that the mean over the batch of w·ℓ is the w-weighted mean of ℓ.
        loss = loss * (w * (w.shape[-1] / w.sum(dim=-1, keepdim=True)))
    return loss
