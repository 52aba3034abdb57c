"""Classification losses for batched populations of classifiers.

Every loss here works on logits of shape ``[..., B, C]`` with int64 targets of shape ``[..., B]``:
the leading dims are population members (``[N, B, C]`` trains N classifiers at once), but plain
``[B, C]`` / ``[B]`` works too.  The per-sample loss has shape ``targets.shape``.

Parameter broadcasting convention
---------------------------------
A loss parameter is aligned to the *leading* dims of the per-sample loss shape ``targets.shape``
and right-padded with singleton dims.  For targets ``[N, B]``: a Python float or 0-d tensor is
global, shape ``[N]`` is per member (used as ``[N, 1]``) and ``[N, B]`` is per sample.  Size-1
dims are allowed anywhere in the prefix.

Per-class parameters (class weights, class counts, margins) have shape ``[C]`` (shared) or
``[..., C]`` whose leading dims are a prefix of ``targets.shape`` (e.g. ``[N, C]``); the target
class's value is picked with a gather.

Functions that work on class counts alone (:func:`class_balanced_weights`,
:func:`power_class_weights`, :func:`ldam_margins`, :func:`drw_weights`) align their scalar
parameters to the member dims of ``class_counts`` (``[N]`` for counts ``[N, C]``); with shared
counts ``[C]`` a parameter of shape ``M`` yields weights of shape ``M + [C]``.

Anything that cannot be aligned raises ``ValueError`` naming the parameter, its shape and the
allowed shapes.

Reductions are ``"none"`` (per-sample loss, shape ``targets.shape``), ``"mean"`` (the arithmetic
mean of that) and ``"sum"``.  Note that for class-weighted losses ``"mean"`` is the *plain* mean
of the weighted per-sample terms, not ``F.cross_entropy``'s division by the sum of weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lossgym import _native

__all__ = [
    "focal_loss",
    "sigmoid_focal_loss",
    "class_balanced_weights",
    "power_class_weights",
    "weighted_cross_entropy",
    "logit_adjusted_cross_entropy",
    "poly1_cross_entropy",
    "ldam_margins",
    "ldam_loss",
    "drw_weights",
    "flsd53_gamma",
    "flsd53_loss",
    "adafocal_loss",
    "adafocal_update",
    "calibration_bin_stats",
    "equal_mass_bin_edges",
    "adaloss",
    "gradient_gate_weights",
    "gradient_gated_cross_entropy",
    "parametric_loss",
    "parametric_plan",
    "apply_plan",
    "FocalLoss",
    "ParametricLoss",
    "LDAMLoss",
    "AdaFocalLoss",
    "AdaLoss",
]

_REDUCTIONS = ("none", "mean", "sum")
# Floor for the focal base (1 - p_t); see focal_loss for why it exists.
_FOCAL_EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------------------------


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_logits_targets(logits: Tensor, targets: Tensor) -> None:
    if logits.ndim < 2 or logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits must have shape [..., B, C] and targets [..., B]; got logits "
            f"{tuple(logits.shape)} and targets {tuple(targets.shape)}"
        )


def _is_zero(value: float | Tensor | None) -> bool:
    """True only for a Python number equal to 0 (tensors are never inspected: no host sync)."""
    return isinstance(value, (int, float)) and value == 0


def _allowed_prefixes(ref_shape: Sequence[int]) -> str:
    shapes = [tuple(ref_shape[:k]) for k in range(len(ref_shape) + 1)]
    return ", ".join(str(s) for s in shapes)


def _align(
    value: float | Tensor, ref_shape: Sequence[int], name: str, like: Tensor
) -> float | Tensor:
    """Align ``value`` to the leading dims of ``ref_shape`` and right-pad with singleton dims.

    Python numbers pass through untouched so that callers can skip work for exact zeros and
    so that scalar parameters never allocate tensors.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    if not isinstance(value, Tensor):
        return float(value)
    ref = tuple(ref_shape)
    shape = tuple(value.shape)
    if len(shape) > len(ref) or any(s != r and s != 1 for s, r in zip(shape, ref, strict=False)):
        raise ValueError(
            f"{name} has shape {shape}, which cannot be aligned to the leading dims of {ref}; "
            f"allowed: a float or one of the shapes {_allowed_prefixes(ref)} "
            f"(size-1 dims allowed)"
        )
    value = value.to(dtype=like.dtype, device=like.device)
    return value.reshape(shape + (1,) * (len(ref) - len(shape)))


def _align_class(
    value: Tensor, lead_shape: Sequence[int], num_classes: int, name: str, like: Tensor
) -> Tensor:
    """Align a per-class tensor ``[C]`` or ``[*L, C]`` to ``lead_shape + [C]``.

    ``L`` must be a prefix of ``lead_shape`` (size-1 dims allowed); the result is a view of
    shape ``L + [1, ...] + [C]`` that broadcasts against ``lead_shape + [C]``.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    lead = tuple(lead_shape)
    shape = tuple(value.shape)
    allowed = ", ".join(str(tuple(lead[:k]) + (num_classes,)) for k in range(len(lead) + 1))
    if (
        value.ndim == 0
        or shape[-1] != num_classes
        or len(shape) - 1 > len(lead)
        or any(s != r and s != 1 for s, r in zip(shape[:-1], lead, strict=False))
    ):
        raise ValueError(
            f"{name} has shape {shape}, but per-class values must have one of the shapes {allowed}"
        )
    value = value.to(dtype=like.dtype, device=like.device)
    pad = (1,) * (len(lead) - (len(shape) - 1))
    return value.reshape(shape[:-1] + pad + (num_classes,))


def _gather_class(value: Tensor, targets: Tensor) -> Tensor:
    """Pick ``value[..., y]`` for an aligned per-class tensor; works for any leading dims."""
    full = value.expand(tuple(targets.shape) + (value.shape[-1],))
    return full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _float_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.get_default_dtype()


def _member_param(value: float | Tensor, counts: Tensor, name: str) -> float | Tensor:
    """Align a per-member parameter of a counts-only function to ``counts [..., C]``.

    Returns a float or a tensor with a trailing singleton class dim.  Shared counts ``[C]``
    accept any member shape ``M`` (the result then has shape ``M + [C]``).
    """
    if isinstance(value, Tensor) and counts.ndim == 1:
        ref: Sequence[int] = tuple(value.shape)
    else:
        ref = tuple(counts.shape[:-1])
    aligned = _align(value, ref, name, counts)
    return aligned.unsqueeze(-1) if isinstance(aligned, Tensor) else aligned


def _log_counts(class_counts: Tensor, like: Tensor) -> Tensor:
    # Zero counts are treated as one so that every derived quantity stays finite.
    return class_counts.to(dtype=like.dtype, device=like.device).clamp_min(1.0).log()


def _gate_from_hardness(hardness: Tensor, strength: float | Tensor) -> Tensor:
    g = hardness.detach()
    return torch.sigmoid(strength * (g - g.mean(dim=-1, keepdim=True)))


def _normalise_gate(w: Tensor) -> Tensor:
    # Scale so that the mean over the batch dim of w * loss is the w-weighted mean of the loss.
    return w * (w.shape[-1] / w.sum(dim=-1, keepdim=True))


class _FusedModulatedCE(torch.autograd.Function):
    r""":func:`_modulated_ce` without a gate, for host-number parameters, with a closed-form
    gradient computed in the forward pass (the backward pass is one multiplication). On small
    batches the cost is the number of kernels, and this launches about half of autograd's.

    With :math:`q = 1 - p_t`, :math:`s = \max(q, \epsilon)^{\gamma - 1}`,
    :math:`f = s \max(q, \epsilon)` (1 for :math:`\gamma = 0`), the smoothed base :math:`b`
    and the target's class weight :math:`w`, the loss is :math:`w\,[f b + \varepsilon_{poly} q]`
    and its gradient with respect to the logits is

    .. math:: w\,\big[(f - k)\,(p - e_y) + \varepsilon_{ls} f\,(e_y - \tfrac1C)\big],
              \qquad k = -p_t\,\big(b\,\gamma s + \varepsilon_{poly}\big).

    Autograd's derivative through ``clamp_min`` also zeroes the :math:`\gamma` term of
    :math:`k` where :math:`q < \epsilon`; that term is left in here (one kernel less), which
    changes the gradient there by at most :math:`2 w \gamma \epsilon^{\gamma + 1}`, since
    :math:`|p - e_y| \le 2q`. ``weight_t`` has the shape of ``targets``.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, weight_t: Tensor | None,
                gamma: float, label_smoothing: float, poly_epsilon: float, eps: float,
                reduction: str, ce_out: list[Tensor] | None) -> Tensor:
        # Per-sample values stay [..., B, 1] columns (no squeeze/unsqueeze kernels), and the
        # weight w / n of "mean" is folded in early, so the loss and its gradient share it.
        index = targets.unsqueeze(-1)
        logp = F.log_softmax(logits, dim=-1)
        logp_t = logp.gather(-1, index)
        p_t_minus_1 = torch.expm1(logp_t)  # −q, accurate where p_t is close to 1
        if ce_out is not None:
            ce_out.append(logp_t.mean().neg())
        ls = label_smoothing
        # The negated base: (1 − ε_ls) log p_t + ε_ls mean_c log p_c.
        neg_base = logp_t if ls == 0.0 else torch.lerp(logp_t, logp.mean(-1, keepdim=True), ls)
        scale: Tensor | float = 1.0 / max(targets.numel(), 1) if reduction == "mean" else 1.0
        if weight_t is not None:
            column = weight_t.unsqueeze(-1)
            scale = column if scale == 1.0 else column * scale
        slope = None  # w s / n
        modulation: Tensor | float = scale  # w f / n
        if gamma != 0.0:
            q_floor = p_t_minus_1.neg().clamp_min_(eps)
            slope = q_floor.pow(gamma - 1.0)
            slope = slope if isinstance(scale, float) and scale == 1.0 else slope * scale
            modulation = slope * q_floor
        if reduction != "none" and poly_epsilon == 0.0 and isinstance(modulation, Tensor):
            # Σ −w f b / n as one dot product: the most common case in one kernel fewer.
            loss = torch.vdot(neg_base.reshape(-1), modulation.reshape(-1)).neg()
        else:
            terms = neg_base * modulation  # −w f b / n
            if poly_epsilon != 0.0:
                terms = torch.addcmul(terms, p_t_minus_1, scale, value=poly_epsilon) \
                    if isinstance(scale, Tensor) \
                    else terms.add(p_t_minus_1, alpha=poly_epsilon * scale)
            loss = terms.squeeze(-1).neg() if reduction == "none" else terms.sum().neg()
        if ctx.needs_input_grad[0]:
            # coef = w (f − k) / n, the coefficient of p − e_y.
            coef: Tensor | float = modulation
            if slope is not None or poly_epsilon != 0.0:
                p_t = p_t_minus_1 + 1.0
                if slope is None:
                    coef = torch.addcmul(scale, scale, p_t, value=poly_epsilon) \
                        if isinstance(scale, Tensor) else (p_t * (poly_epsilon * scale)).add_(scale)
                elif poly_epsilon == 0.0:
                    coef = torch.addcmul(modulation, neg_base * slope, p_t, value=-gamma)
                else:
                    inner = (neg_base * slope).mul_(gamma).sub_(poly_epsilon * scale)
                    coef = torch.addcmul(modulation, inner, p_t, value=-1.0)
            grad = logp.exp_().scatter_(-1, index, p_t_minus_1)
            if isinstance(coef, Tensor) or coef != 1.0:
                grad.mul_(coef)
            if ls != 0.0:
                smooth = modulation * ls
                if not isinstance(smooth, Tensor):
                    smooth = torch.full_like(logp_t, smooth)
                grad.sub_(smooth / logits.shape[-1]).scatter_add_(-1, index, smooth)
            ctx.save_for_backward(grad)
        ctx.reduction = reduction
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        return (_stored_gradient(ctx, grad_out, ctx.reduction == "none"),) + (None,) * 8


def _stored_gradient(ctx: Any, grad_out: Tensor, per_sample: bool) -> Tensor:
    """The closed forms' backward: the gradient the forward pass stored, times the upstream
    gradient (one per sample where ``per_sample``)."""
    if torch.is_grad_enabled():
        raise RuntimeError("this loss has a closed-form first derivative only; for "
                           "higher derivatives pass its parameters as tensors")
    (grad,) = ctx.saved_tensors
    return grad * (grad_out.unsqueeze(-1) if per_sample else grad_out)


#: Inputs up to this many logits go to the compiled kernel (one thread, about 15 ns a logit,
#: forward and backward); larger ones to the closed form in torch kernels, which use all of
#: torch's threads and overtake it near 12,000 logits on two cores.
COMPILED_MAX_NUMEL = 1 << 14


#: The same bound for :func:`parametric_plan`, whose alternative is autograd through a dozen
#: kernels rather than the closed form: on two cores the compiled loss is still 1.2× faster at
#: 256 members × 128 × 10 logits, forward and backward (``scripts/bench_loss_kernel.py``);
#: the bound stops below that, since torch's kernels use every core and the extension one.
PLAN_MAX_NUMEL = 1 << 18


def compiled_kernel_usable(logits: Tensor, targets: Tensor,
                           max_numel: int = COMPILED_MAX_NUMEL) -> bool:
    """Whether :class:`_CompiledModulatedCE` takes these inputs: the extension is built, and
    the logits are CPU float32 / float64 with at most ``max_numel`` elements and int64
    targets."""
    return (
        _native.closedform is not None
        and logits.device.type == "cpu"
        and (logits.dtype is torch.float32 or logits.dtype is torch.float64)
        and targets.dtype is torch.int64
        and 0 < logits.numel() <= max_numel
    )


_REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}


class KernelPlan:
    """The arguments of :class:`_CompiledModulatedCE` that stay fixed while the parameters do:
    made once a period by :class:`~lossgym.export.AdaptiveLoss`, once a call by
    :func:`parametric_loss` and :func:`_modulated_ce`.

    The logits are transformed as :func:`parametric_loss` does before the modulated
    cross-entropy: :math:`z' = s z + h - u_y e_y` (``scale``, the class ``shift`` and the
    target's ``margins``, each optional). ``weight`` is per class or, with
    ``per_sample_weight``, one per sample (flattened targets order). The scalars (``scale``,
    ``gamma``, ``label_smoothing``, ``poly_epsilon``) are floats or one value per member
    ``[M]``, and the class terms ``[C]`` or one row per member ``[M, C]``: then the logits are
    ``[M, B, C]``. The tensors are kept here (the kernel reads them by address), converted to
    the logits' ``dtype`` (the member scalars to float64), contiguous, on the CPU.
    """

    __slots__ = ("args", "dtype", "num_classes", "reduction", "samples", "members", "_tensors")

    def __init__(self, dtype: torch.dtype, num_classes: int, *, weight: Tensor | None = None,
                 per_sample_weight: bool = False, shift: Tensor | None = None,
                 margins: Tensor | None = None, scale: float | Tensor = 1.0,
                 gamma: float | Tensor = 0.0, label_smoothing: float | Tensor = 0.0,
                 poly_epsilon: float | Tensor = 0.0, eps: float = _FOCAL_EPS,
                 reduction: str = "mean") -> None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"the compiled loss takes float32 or float64 logits, got {dtype}")
        _check_reduction(reduction)
        scalars = {"scale": scale, "gamma": gamma, "label_smoothing": label_smoothing,
                   "poly_epsilon": poly_epsilon}
        members = {v.numel() for v in scalars.values() if isinstance(v, Tensor)}
        classes = {"weight": weight, "shift": shift, "margins": margins}
        for name, t in classes.items():
            if t is not None and not (name == "weight" and per_sample_weight):
                if t.shape[-1:] != (num_classes,) or t.dim() > 2:
                    raise ValueError(f"{name} must have one value per class ({num_classes}), "
                                     f"as [C] or [M, C], got shape {tuple(t.shape)}")
                if t.dim() == 2:
                    members.add(t.shape[0])
        if len(members) > 1:
            raise ValueError(f"the member parameters disagree on the number of members: "
                             f"{sorted(members)}")
        m = members.pop() if members else 1
        per_member = m > 1 and any(t is not None and t.dim() == 2 for name, t in classes.items()
                                   if not (name == "weight" and per_sample_weight))
        tensors: list[Tensor | None] = []
        for name, t in classes.items():
            if t is not None:
                t = t.detach().to("cpu", dtype)
                if per_member and not (name == "weight" and per_sample_weight):
                    t = t.expand(m, num_classes)
                t = t.contiguous()
            tensors.append(t)
        member_params = None
        if any(isinstance(v, Tensor) for v in scalars.values()):
            member_params = torch.stack([
                v.detach().to("cpu", torch.float64).reshape(m) if isinstance(v, Tensor)
                else torch.full((m,), float(v), dtype=torch.float64)
                for v in scalars.values()], dim=1).contiguous()
        tensors.append(member_params)
        self.dtype, self.num_classes, self.reduction, self.members = \
            dtype, num_classes, reduction, m
        # The number of samples that per-sample weights fix (None: any).
        self.samples = None if tensors[0] is None or not per_sample_weight \
            else tensors[0].numel()
        self._tensors = tensors
        address = [0 if t is None else t.data_ptr() for t in tensors]
        host = {k: 0.0 if isinstance(v, Tensor) else float(v) for k, v in scalars.items()}
        self.args = (dtype is torch.float64, num_classes, address[0], per_sample_weight,
                     address[1], address[2], host["scale"], host["gamma"],
                     host["label_smoothing"], host["poly_epsilon"], float(eps),
                     _REDUCTION_CODES[reduction], m, num_classes if per_member else 0,
                     address[3])


class _CompiledModulatedCE(torch.autograd.Function):
    r""":class:`_FusedModulatedCE` with logit adjustments (see :class:`KernelPlan`), in one
    call of the C extension (:mod:`lossgym._native`): the loss, its gradient and the plain
    cross-entropy in one pass per row, in double precision, so a loss of a dozen small
    kernels costs one. Inputs must pass :func:`compiled_kernel_usable` and have the plan's
    dtype and class count. Where ``ce_out`` is a list, the mean plain cross-entropy of the
    untransformed logits is appended to it (a Python float).
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, plan: KernelPlan,
                ce_out: list[float] | None) -> Tensor:
        # (Inside forward autograd is off: the logits need no detach.)
        if not logits.is_contiguous():
            logits = logits.contiguous()
        if not targets.is_contiguous():
            targets = targets.contiguous()
        n = targets.numel()
        # The kernel reads n × C values by address: the sizes and dtype are checked here.
        if not (logits.is_cpu and targets.is_cpu) or targets.dtype is not torch.int64:
            raise ValueError(f"the compiled loss takes CPU logits and int64 targets, got "
                             f"{logits.device} logits and {targets.dtype} targets on "
                             f"{targets.device}")
        if n * plan.num_classes != logits.numel() or logits.dtype is not plan.dtype \
                or (plan.samples is not None and plan.samples != n) \
                or (plan.members > 1 and (logits.dim() != 3 or len(logits) != plan.members)):
            raise ValueError(f"logits {tuple(logits.shape)} {logits.dtype} and targets "
                             f"{tuple(targets.shape)} do not fit the plan: expected "
                             f"{plan.dtype} logits [..., B, {plan.num_classes}] and targets "
                             f"[..., B]" + ("" if plan.samples is None
                                           else f" with {plan.samples} samples in all")
                             + ("" if plan.members == 1
                                else f", as [{plan.members}, B, {plan.num_classes}]"))
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        out = logits.new_empty(targets.shape if plan.reduction == "none" else ())
        ce = _native.closedform.modulated_ce(
            plan.args, n, logits.data_ptr(), targets.data_ptr(),
            0 if grad is None else grad.data_ptr(), out.data_ptr(), ce_out is not None)
        if ce_out is not None:
            ce_out.append(ce)
        if grad is not None:
            ctx.save_for_backward(grad)
            ctx.per_sample = plan.reduction == "none"
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        return _stored_gradient(ctx, grad_out, ctx.per_sample), None, None, None


def _modulated_ce(
    logits: Tensor,
    targets: Tensor,
    *,
    gamma: float | Tensor = 0.0,
    label_smoothing: float | Tensor = 0.0,
    poly_epsilon: float | Tensor = 0.0,
    class_weight_t: Tensor | None = None,
    gate: float | Tensor = 0.0,
    eps: float = _FOCAL_EPS,
    reduction: str = "none",
    ce_out: list[Tensor] | None = None,
) -> Tensor:
    """Loss shared by all softmax losses; parameters must already be aligned.

    Where the closed form runs, it appends the (detached) mean cross-entropy of ``logits`` to
    ``ce_out``, which it computes on the way.

    loss_i = w_i * [(1 - p_t)^gamma * base_i + poly_epsilon * (1 - p_t)], optionally gated.
    Python-float zeros skip their branch entirely (the hot path is plain cross-entropy).
    """
    plain = _is_zero(gamma) and _is_zero(poly_epsilon) and _is_zero(gate)
    if plain and class_weight_t is None and not isinstance(label_smoothing, Tensor):
        # Fused kernel: bit-identical to F.cross_entropy (value and gradient) and cheapest.
        out = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            reduction=reduction,
            label_smoothing=float(label_smoothing),
        )
        return out.reshape(targets.shape) if reduction == "none" else out
    hosted = not any(isinstance(v, Tensor) for v in (gamma, label_smoothing, poly_epsilon))
    if hosted and _is_zero(gate) and (class_weight_t is None or not class_weight_t.requires_grad):
        # Host-number parameters: the closed-form gradient, in one compiled call on small CPU
        # inputs, else in a third of autograd's kernels.
        if compiled_kernel_usable(logits, targets) and (
                class_weight_t is None or class_weight_t.shape == targets.shape):
            plan = KernelPlan(logits.dtype, logits.shape[-1], weight=class_weight_t,
                              per_sample_weight=True, gamma=float(gamma),
                              label_smoothing=float(label_smoothing),
                              poly_epsilon=float(poly_epsilon), eps=eps, reduction=reduction)
            return _CompiledModulatedCE.apply(logits, targets, plan, ce_out)
        return _FusedModulatedCE.apply(
            logits, targets, class_weight_t, float(gamma), float(label_smoothing),
            float(poly_epsilon), eps, reduction, ce_out,
        )
    logp = F.log_softmax(logits, dim=-1)
    logp_t = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if _is_zero(label_smoothing):
        loss = -logp_t
    else:
        loss = -((1.0 - label_smoothing) * logp_t + label_smoothing * logp.mean(dim=-1))
    one_minus_pt = logp_t  # placeholder, replaced below whenever a branch needs it
    if not plain:
        # expm1 keeps 1 - p_t accurate when p_t is close to 1 (where 1 - exp(x) cancels).
        one_minus_pt = -torch.expm1(logp_t)
    if not _is_zero(gamma):
        loss = loss * one_minus_pt.clamp_min(eps).pow(gamma)
    if not _is_zero(poly_epsilon):
        loss = loss + poly_epsilon * one_minus_pt
    if class_weight_t is not None:
        loss = loss * class_weight_t
    if not _is_zero(gate):
        loss = loss * _normalise_gate(_gate_from_hardness(one_minus_pt, gate))
    return _reduce(loss, reduction)


def _store(module: nn.Module, name: str, value: float | Tensor | None) -> None:
    """Tensors become buffers (so ``.to(device)`` moves them); numbers stay plain floats."""
    if isinstance(value, Tensor):
        module.register_buffer(name, value.detach().clone())
    else:
        setattr(module, name, None if value is None else float(value))


def _fmt(value: object) -> str:
    if isinstance(value, Tensor):
        if value.numel() <= 8:
            return str([round(v, 4) for v in value.flatten().tolist()]) + (
                f" (shape {tuple(value.shape)})" if value.ndim != 1 else ""
            )
        return f"tensor(shape={tuple(value.shape)})"
    return repr(value)


# ---------------------------------------------------------------------------------------------
# Focal losses
# ---------------------------------------------------------------------------------------------


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    gamma: float | Tensor = 2.0,
    alpha: float | Tensor | None = None,
    reduction: str = "mean",
    eps: float = 1e-6,
) -> Tensor:
    r"""Softmax multi-class focal loss (Lin et al., "Focal Loss for Dense Object Detection",
    ICCV 2017, arXiv:1708.02002).

    .. math:: \ell_i = -\alpha_{y_i} (1 - p_{t,i})^{\gamma} \log p_{t,i},
              \quad p_{t,i} = \mathrm{softmax}(z_i)_{y_i}

    Computed as ``log_softmax`` -> gather -> ``(-expm1(log p_t)).clamp_min(eps) ** gamma``.
    The clamp matters for ``0 < gamma < 1``: ``d/dp (1 - p)^gamma = -gamma (1 - p)^(gamma - 1)``
    is infinite at ``p_t = 1`` and autograd would multiply it by ``log p_t = 0``, giving NaN.
    Flooring the base at ``eps`` keeps the gradient finite; below the floor only the factor's
    own derivative is dropped, which is what the product's true limit (0 at ``p_t = 1``) needs.
    For ``gamma = 0`` the factor is exactly 1, so with ``alpha=None`` the result equals
    ``F.cross_entropy`` in value and gradient (bit-identical when gamma is the float 0).

    Args:
        logits: ``[..., B, C]`` unnormalised scores.
        targets: ``[..., B]`` int64 class indices.
        gamma: focusing parameter; float, or a per-member / per-sample tensor (module
            docstring convention).
        alpha: optional class weights ``alpha_c``: per-class ``[C]`` or ``[..., C]``, or a float
            (global scale).  ``None`` means 1.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        eps: floor for ``1 - p_t`` inside the power.
    """
    _check_reduction(reduction)
    _check_logits_targets(logits, targets)
    g = _align(gamma, targets.shape, "gamma", logits)
    weight_t: Tensor | None = None
    scale = 1.0
    if isinstance(alpha, Tensor) and alpha.ndim > 0:
        weight_t = _gather_class(
            _align_class(alpha, targets.shape, logits.shape[-1], "alpha", logits), targets
        )
    elif alpha is not None:
        scale = alpha if isinstance(alpha, Tensor) else float(alpha)
    loss = _modulated_ce(
        logits, targets, gamma=g, class_weight_t=weight_t, eps=eps, reduction=reduction
    )
    if not (isinstance(scale, float) and scale == 1.0):
        loss = loss * scale
    return loss


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float | Tensor = 2.0,
    reduction: str = "none",
) -> Tensor:
    r"""Binary / multi-label sigmoid focal loss with ``torchvision.ops.sigmoid_focal_loss``
    semantics (Lin et al., ICCV 2017, arXiv:1708.02002).

    Unlike the other losses here this is *elementwise*: ``inputs`` are arbitrary-shaped logits
    and ``targets`` are floats (0/1 or soft) of the same shape, not ``[..., B, C]`` class logits.

    .. math::
        p = \sigma(x),\quad ce = \mathrm{BCEWithLogits}(x, t),\quad
        p_t = p t + (1 - p)(1 - t),\quad \ell = ce\,(1 - p_t)^{\gamma}

    and, if ``alpha >= 0``, :math:`\ell \mathrel{*}= \alpha t + (1 - \alpha)(1 - t)`;
    ``alpha = -1`` (any negative value) disables the weighting.  The default reduction is
    ``"none"`` as in torchvision.  ``gamma`` may be a tensor aligned to the leading dims of
    ``inputs`` (module convention).
    """
    _check_reduction(reduction)
    if inputs.shape != targets.shape:
        raise ValueError(
            f"inputs and targets must have the same shape, got {tuple(inputs.shape)} and "
            f"{tuple(targets.shape)}"
        )
    g = _align(gamma, inputs.shape, "gamma", inputs)
    targets = targets.to(dtype=inputs.dtype)
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** g)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


# ---------------------------------------------------------------------------------------------
# Class weights
# ---------------------------------------------------------------------------------------------


def class_balanced_weights(class_counts: Tensor, beta: float | Tensor = 0.9999) -> Tensor:
    r"""Class-balanced weights from the effective number of samples (Cui et al.,
    "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019).

    .. math:: w_c \propto \frac{1 - \beta}{1 - \beta^{n_c}}, \qquad \sum_c w_c = C

    (the paper's normalisation).  ``beta`` in ``[0, 1)``: 0 gives uniform weights, ``beta -> 1``
    approaches inverse frequency.  Zero counts are treated as 1 so weights stay finite.

    Args:
        class_counts: ``[C]`` or ``[N, C]`` (any leading dims) per-class sample counts.
        beta: float or per-member tensor (``[N]`` for counts ``[N, C]``).

    Returns:
        Float tensor of the broadcast shape of counts and beta (``[..., C]``).
    """
    counts = class_counts.to(_float_dtype(class_counts)).clamp_min(1.0)
    b = _member_param(beta, counts, "beta")
    log_beta = torch.log(torch.as_tensor(b, dtype=counts.dtype, device=counts.device))
    # 1/(1 - beta^n) via expm1 so that beta close to 1 keeps its precision; the constant
    # (1 - beta) cancels in the normalisation.
    w = -1.0 / torch.expm1(counts * log_beta)
    return w * (w.shape[-1] / w.sum(dim=-1, keepdim=True))


def _log_power_weights(log_m: Tensor, log_n: Tensor, alpha: float | Tensor) -> Tensor:
    """log w_c = -alpha log m_c + log sum_c n_c - logsumexp_c(log n_c - alpha log m_c).

    ``log_m`` is log max(n, 1) and ``log_n`` is log n (``-inf`` for empty classes, which
    correctly carry no mass in the sample normalisation).  Working in log space keeps large
    alpha from underflowing n^-alpha.
    """
    log_total = torch.logsumexp(log_n, dim=-1, keepdim=True)
    return -alpha * log_m + log_total - torch.logsumexp(log_n - alpha * log_m, dim=-1, keepdim=True)


def power_class_weights(class_counts: Tensor, alpha: float | Tensor) -> Tensor:
    r"""Power-law class weights normalised over the training pool's *samples*.

    .. math:: w_c = \frac{m_c^{-\alpha}\,\sum_k n_k}{\sum_k n_k\, m_k^{-\alpha}},
              \qquad m_c = \max(n_c, 1)

    so :math:`\sum_c n_c w_c / \sum_c n_c = 1`: the average weight of a training sample is 1
    whatever ``alpha`` is.  ``alpha = 0`` is uniform, ``alpha = 1`` inverse frequency,
    ``alpha = 0.5`` square-root reweighting.

    Why sample normalisation: with the usual class normalisation (mean over classes = 1) the
    weight of the head classes, which hold most samples, drops as ``alpha`` grows, so the
    total loss - and hence the effective learning rate relative to weight decay - shrinks with
    ``alpha``; an agent tuning ``alpha`` would then partly be tuning regularisation strength.
    Normalising the expected per-sample weight to 1 keeps the loss scale fixed and isolates the
    rebalancing effect.

    Args:
        class_counts: ``[C]`` or ``[N, C]`` counts (zeros allowed: the power uses max(n, 1)).
        alpha: float or per-member tensor (``[N]``).
    """
    counts = class_counts.to(_float_dtype(class_counts))
    a = _member_param(alpha, counts, "alpha")
    log_w = _log_power_weights(counts.clamp_min(1.0).log(), counts.log(), a)
    return log_w.exp()


def drw_weights(
    class_counts: Tensor, progress: float | Tensor, switch: float = 0.8, beta: float = 0.9999
) -> Tensor:
    r"""Deferred re-weighting (DRW) schedule of Cao et al., "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss", NeurIPS 2019.

    Uniform weights (all ones) while ``progress < switch``, then the class-balanced weights of
    :func:`class_balanced_weights` with ``beta`` (0.9999 in the paper, which switches at 80%
    of training: epoch 160 of 200).

    Args:
        class_counts: ``[C]`` or ``[N, C]``.
        progress: training progress in ``[0, 1]``; float or per-member tensor ``[N]``
            (tensors are handled with ``torch.where``, no host sync).
    """
    cb = class_balanced_weights(class_counts, beta)
    p = _member_param(progress, cb, "progress")
    if isinstance(p, float):
        return cb if p >= switch else torch.ones_like(cb)
    return torch.where(p >= switch, cb, torch.ones_like(cb))


# ---------------------------------------------------------------------------------------------
# Cross-entropy variants
# ---------------------------------------------------------------------------------------------


def weighted_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    weight: Tensor | None = None,
    label_smoothing: float | Tensor = 0.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Class-weighted, label-smoothed cross-entropy.

    .. math:: \ell_i = -w_{y_i}\Big[(1 - \varepsilon)\log p_{y_i}
              + \varepsilon\,\tfrac{1}{C}\sum_c \log p_c\Big]

    Label smoothing as in Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016.
    Differences from ``F.cross_entropy(weight=w, label_smoothing=eps)``: the whole per-sample
    term is scaled by the *target* class weight :math:`w_{y_i}` (PyTorch weights each smoothing
    term by its own class), and ``"mean"`` is the plain mean of :math:`\ell_i` (PyTorch divides
    by :math:`\sum_i w_{y_i}`).  The plain mean keeps the loss scale comparable across members
    with different weights.  With ``weight=None`` both agree.

    Args:
        weight: per-class ``[C]`` / ``[..., C]`` or ``None``.
        label_smoothing: float or per-member / per-sample tensor.
    """
    _check_reduction(reduction)
    _check_logits_targets(logits, targets)
    ls = _align(label_smoothing, targets.shape, "label_smoothing", logits)
    weight_t = None
    if weight is not None:
        weight_t = _gather_class(
            _align_class(weight, targets.shape, logits.shape[-1], "weight", logits), targets
        )
    return _modulated_ce(
        logits, targets, label_smoothing=ls, class_weight_t=weight_t, reduction=reduction
    )


def logit_adjusted_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    class_counts: Tensor,
    tau: float | Tensor = 1.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Logit-adjusted cross-entropy (Menon et al., "Long-tail learning via logit adjustment",
    ICLR 2021).

    .. math:: \ell_i = -\log \mathrm{softmax}(z_i + \tau \log \pi)_{y_i},
              \qquad \pi_c = n_c / \textstyle\sum_k n_k

    Zero counts are treated as 1 (smallest finite prior).  ``tau``: float or per-member /
    per-sample tensor; ``class_counts``: ``[C]`` or ``[..., C]``.
    """
    return parametric_loss(logits, targets, class_counts, tau=tau, reduction=reduction)


def poly1_cross_entropy(
    logits: Tensor, targets: Tensor, epsilon: float | Tensor = 1.0, reduction: str = "mean"
) -> Tensor:
    r"""Poly-1 cross-entropy (Leng et al., "PolyLoss: A Polynomial Expansion Perspective of
    Classification Loss Functions", ICLR 2022).

    .. math:: \ell_i = -\log p_{t,i} + \varepsilon\,(1 - p_{t,i})

    ``epsilon``: float or per-member / per-sample tensor.
    """
    _check_reduction(reduction)
    _check_logits_targets(logits, targets)
    e = _align(epsilon, targets.shape, "epsilon", logits)
    return _modulated_ce(logits, targets, poly_epsilon=e, reduction=reduction)


# ---------------------------------------------------------------------------------------------
# LDAM
# ---------------------------------------------------------------------------------------------


def ldam_margins(class_counts: Tensor, max_margin: float | Tensor = 0.5) -> Tensor:
    r"""Label-distribution-aware margins (Cao et al., NeurIPS 2019):

    .. math:: \Delta_c = \Delta_{\max}\,\frac{m_c^{-1/4}}{\max_k m_k^{-1/4}},
              \qquad m_c = \max(n_c, 1)

    i.e. :math:`\Delta_c \propto n_c^{-1/4}` with the rarest class getting ``max_margin``.

    Args:
        class_counts: ``[C]`` or ``[N, C]``.
        max_margin: float or per-member tensor.
    """
    counts = class_counts.to(_float_dtype(class_counts)).clamp_min(1.0)
    inv = counts.pow(-0.25)
    unit = inv / inv.amax(dim=-1, keepdim=True)
    return unit * _member_param(max_margin, counts, "max_margin")


def ldam_loss(
    logits: Tensor,
    targets: Tensor,
    class_counts: Tensor,
    max_margin: float | Tensor = 0.5,
    scale: float | Tensor = 30.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""LDAM loss (Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware
    Margin Loss", NeurIPS 2019).

    .. math:: \ell_i = -w_{y_i} \log \mathrm{softmax}\big(s\,(z_i - \Delta_{y_i} e_{y_i})
              \big)_{y_i}

    with margins from :func:`ldam_margins` and scale ``s``.  The paper applies it to logits of a
    normalised (cosine) classifier; with raw logits ``s`` simply sharpens the softmax.  The
    optional per-class ``weight`` (e.g. :func:`drw_weights`) uses the plain-mean semantics of
    :func:`weighted_cross_entropy` (the reference code divides by the sum of weights).

    Args:
        max_margin, scale: float or per-member / per-sample tensors (aligned to targets).
        weight: per-class ``[C]`` / ``[..., C]`` or ``None``.
    """
    _check_reduction(reduction)
    _check_logits_targets(logits, targets)
    num_classes = logits.shape[-1]
    unit = _align_class(
        ldam_margins(class_counts, 1.0), targets.shape, num_classes, "class_counts", logits
    )
    margin_t = _gather_class(unit, targets) * _align(
        max_margin, targets.shape, "max_margin", logits
    )
    s = _align(scale, targets.shape, "scale", logits)
    onehot = torch.zeros_like(logits).scatter_(-1, targets.unsqueeze(-1), 1.0)
    adjusted = logits - onehot * margin_t.unsqueeze(-1)
    if isinstance(s, Tensor):
        s = s.unsqueeze(-1)
    weight_t = None
    if weight is not None:
        weight_t = _gather_class(
            _align_class(weight, targets.shape, num_classes, "weight", logits), targets
        )
    return _modulated_ce(s * adjusted, targets, class_weight_t=weight_t, reduction=reduction)


# ---------------------------------------------------------------------------------------------
# Calibration-oriented focal variants
# ---------------------------------------------------------------------------------------------


def flsd53_gamma(logits: Tensor, targets: Tensor) -> Tensor:
    r"""Sample-dependent gamma of FLSD-53 (Mukhoti et al., "Calibrating Deep Neural Networks
    using Focal Loss", NeurIPS 2020): :math:`\gamma = 5` if :math:`p_t < 0.2` else 3, from the
    detached :math:`p_t`.  Returns a ``targets``-shaped float tensor.
    """
    _check_logits_targets(logits, targets)
    with torch.no_grad():
        logp_t = F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        low = logp_t.exp() < 0.2
        return torch.where(low, 5.0, 3.0).to(logits.dtype)


def flsd53_loss(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """FLSD-53 (Mukhoti et al., NeurIPS 2020): :func:`focal_loss` with the per-sample gamma of
    :func:`flsd53_gamma` (5 for ``p_t < 0.2``, else 3)."""
    return focal_loss(logits, targets, gamma=flsd53_gamma(logits, targets), reduction=reduction)


def _bin_index(values: Tensor, bin_edges: Tensor, name: str = "bin_edges") -> Tensor:
    """Bin ``values [..., V]`` into ``bin_edges [K+1]`` / ``[..., K+1]``; bins are [lo, hi).

    Values outside the edges go to the first / last bin, as in the reference implementation.
    """
    if bin_edges.ndim == 0 or bin_edges.shape[-1] < 2:
        raise ValueError(
            f"{name} must have shape [K+1] or [..., K+1] with K >= 1, got {tuple(bin_edges.shape)}"
        )
    edges = _align_class(bin_edges, values.shape[:-1], bin_edges.shape[-1], name, values)
    interior = edges[..., 1:-1]
    if bin_edges.ndim == 1:
        return torch.bucketize(values, interior.reshape(-1), right=True)
    interior = interior.expand(tuple(values.shape[:-1]) + (interior.shape[-1],))
    return torch.searchsorted(interior.contiguous(), values.contiguous(), right=True)


def adafocal_loss(
    logits: Tensor,
    targets: Tensor,
    gamma_bins: Tensor,
    bin_edges: Tensor,
    reduction: str = "mean",
    eps: float = 1e-6,
) -> Tensor:
    r"""AdaFocal loss (Ghosh, Schaaf & Gormley, "AdaFocal: Calibration-aware Adaptive Focal
    Loss", NeurIPS 2022).

    Each training sample takes the gamma :math:`\gamma_b` of the confidence bin ``b`` that its
    *detached* true-class probability :math:`p_t` falls in (bins ``[lo, hi)``, out-of-range
    values clamp to the end bins).  We bin by :math:`p_t` because that is what the paper's
    released implementation does for training samples (the validation statistics that drive the
    update are binned by top-1 confidence, see :func:`calibration_bin_stats`); for a
    well-fitted training set :math:`p_t` and confidence mostly coincide.

    .. math::
        \ell_i = \begin{cases} -(1 - p_t)^{\gamma_b}\log p_t & \gamma_b \ge 0
        \text{ (focal)}\\ -(1 + p_t)^{|\gamma_b|}\log p_t & \gamma_b < 0
        \text{ (inverse focal)}\end{cases}

    Inverse focal loss up-weights confident samples and so increases confidence; the update
    rule (:func:`adafocal_update`) moves a bin into that regime when it is under-confident.

    Args:
        gamma_bins: ``[K]`` or ``[N, K]`` per-bin gammas.
        bin_edges: ``[K+1]`` or ``[N, K+1]`` increasing edges (usually from 0 to 1).
    """
    _check_reduction(reduction)
    _check_logits_targets(logits, targets)
    logp = F.log_softmax(logits, dim=-1)
    logp_t = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    p_t = logp_t.exp()
    idx = _bin_index(p_t.detach(), bin_edges)
    gb = _align_class(gamma_bins, targets.shape, gamma_bins.shape[-1], "gamma_bins", logits)
    if bin_edges.shape[-1] != gamma_bins.shape[-1] + 1:
        raise ValueError(
            f"bin_edges must have K+1 = {gamma_bins.shape[-1] + 1} entries in its last dim for "
            f"gamma_bins with K = {gamma_bins.shape[-1]}, got shape {tuple(bin_edges.shape)}"
        )
    gamma = gb.expand(tuple(targets.shape) + (gb.shape[-1],)).gather(-1, idx.unsqueeze(-1))
    gamma = gamma.squeeze(-1)
    # One pow for both regimes; the floor keeps the focal branch's gradient finite at p_t = 1.
    base = torch.where(gamma >= 0, (-torch.expm1(logp_t)).clamp_min(eps), 1.0 + p_t)
    loss = -base.pow(gamma.abs()) * logp_t
    return _reduce(loss, reduction)


def adafocal_update(
    gamma_bins: Tensor,
    val_confidence_per_bin: Tensor,
    val_accuracy_per_bin: Tensor,
    lam: float = 1.0,
    switch_threshold: float = 0.2,
    gamma_min: float = -2.0,
    gamma_max: float = 20.0,
) -> Tensor:
    r"""One AdaFocal gamma update (Ghosh et al., NeurIPS 2022), applied per bin.

    With the validation calibration gap :math:`E_b = C_b - A_b` (mean confidence minus accuracy
    of validation samples in bin b):

    * focal regime (:math:`\gamma_b > 0`): :math:`\gamma_b \leftarrow \gamma_b \exp(\lambda E_b)`
      - over-confidence raises gamma (more entropy regularisation), under-confidence lowers it;
    * inverse-focal regime (:math:`\gamma_b \le 0`):
      :math:`\gamma_b \leftarrow \gamma_b \exp(-\lambda E_b)` - under-confidence makes gamma
      more negative (stronger confidence boost), over-confidence shrinks it towards 0;
    * switching: if the new :math:`|\gamma_b| <` ``switch_threshold`` (:math:`S_{th} = 0.2`)
      the bin changes regime, :math:`\gamma_b \leftarrow -S_{th}` from focal and
      :math:`+S_{th}` from inverse focal (a gamma of exactly 0 goes to :math:`+S_{th}`, as in
      the authors' code);
    * clipping to ``[gamma_min, gamma_max]`` = ``[-2, 20]``.

    The paper applies this once per epoch with :math:`\lambda = 1`, 15 equal-mass bins and
    initial gamma 1.  Bins with no validation samples have :math:`C_b = A_b = 0`, so their gamma
    only goes through the switch and clip.

    Args:
        gamma_bins, val_confidence_per_bin, val_accuracy_per_bin: ``[K]`` or ``[N, K]``.

    Returns:
        New gammas, same shape as ``gamma_bins``.
    """
    gap = val_confidence_per_bin.to(gamma_bins) - val_accuracy_per_bin.to(gamma_bins)
    step = torch.where(gamma_bins > 0, lam * gap, -lam * gap)
    new = gamma_bins * torch.exp(step)
    s_th = torch.full_like(new, switch_threshold)
    flipped = torch.where(new > 0, -s_th, s_th)
    new = torch.where(new.abs() < switch_threshold, flipped, new)
    return new.clamp(gamma_min, gamma_max)


def calibration_bin_stats(
    logits: Tensor, targets: Tensor, bin_edges: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin mean confidence, accuracy and count of (validation) predictions.

    Confidence is the top-1 softmax probability and accuracy whether the top-1 class equals the
    target (the binning used for ECE and by AdaFocal's update).  Bins are ``[lo, hi)``.

    Args:
        logits: ``[..., V, C]``; targets ``[..., V]``.
        bin_edges: ``[K+1]`` or ``[..., K+1]`` (leading dims a prefix of ``targets.shape[:-1]``).

    Returns:
        ``(confidence, accuracy, count)``, each ``[..., K]``; empty bins report 0 confidence
        and accuracy.
    """
    _check_logits_targets(logits, targets)
    with torch.no_grad():
        probs = F.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        conf, pred = probs.max(dim=-1)
        correct = (pred == targets).to(conf.dtype)
        idx = _bin_index(conf, bin_edges)
        k = bin_edges.shape[-1] - 1
        zeros = conf.new_zeros(tuple(targets.shape[:-1]) + (k,))
        count = zeros.scatter_add(-1, idx, torch.ones_like(conf))
        denom = count.clamp_min(1.0)
        confidence = zeros.scatter_add(-1, idx, conf) / denom
        accuracy = zeros.scatter_add(-1, idx, correct) / denom
    return confidence, accuracy, count


def equal_mass_bin_edges(confidences: Tensor, n_bins: int) -> Tensor:
    """Equal-mass (adaptive) bin edges, as used by AdaFocal and AdaECE.

    Interior edges are the ``b / n_bins`` quantiles of ``confidences [..., V]`` along the last
    dim; the outer edges are fixed to 0 and 1 so every probability falls in a bin.
    Returns ``[..., n_bins + 1]``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    c = confidences.detach()
    c = c.to(torch.promote_types(c.dtype, torch.float32))
    q = torch.linspace(0.0, 1.0, n_bins + 1, dtype=c.dtype, device=c.device)[1:-1]
    inner = torch.quantile(c, q, dim=-1).movedim(0, -1) if n_bins > 1 else c[..., :0]
    lo = c.new_zeros(tuple(c.shape[:-1]) + (1,))
    return torch.cat([lo, inner, lo + 1.0], dim=-1)


# ---------------------------------------------------------------------------------------------
# AdaLoss
# ---------------------------------------------------------------------------------------------


def adaloss(
    per_class_loss: Tensor,
    running_mean: Tensor,
    eps: float = 1e-8,
    present: Tensor | None = None,
) -> Tensor:
    r"""AdaLoss balancing (Hu, Dey, Hebert & Bagnell, "Learning Anytime Predictions in Neural
    Networks via Adaptive Loss Balancing", AAAI 2019), adapted to class balancing.

    Hu et al. weight each of several loss terms by the inverse of a running average of that
    term (gradient-equivalent to minimising :math:`\sum_j \log \ell_j`), so every term
    contributes a comparable *relative* improvement.  Our adaptation (not in the paper): the
    terms are the per-class mean losses of the batch,

    .. math:: L = \frac{1}{|P|}\sum_{c \in P} \frac{\ell_c}{\mathrm{sg}(m_c) + \epsilon}

    where ``P`` is the set of classes present (``present`` mask, default all) and ``sg`` is
    stop-gradient.  Shapes: ``per_class_loss``, ``running_mean`` and ``present`` are
    ``[..., C]``; the result is ``[...]``.
    """
    ratio = per_class_loss / (running_mean.detach() + eps)
    if present is None:
        return ratio.mean(dim=-1)
    ratio = torch.where(present, ratio, torch.zeros_like(ratio))
    return ratio.sum(dim=-1) / present.sum(dim=-1).clamp_min(1).to(ratio.dtype)


# ---------------------------------------------------------------------------------------------
# Gradient gate
# ---------------------------------------------------------------------------------------------


def gradient_gate_weights(logits: Tensor, targets: Tensor, strength: float | Tensor) -> Tensor:
    r"""Per-sample gate weights from the cross-entropy gradient size (GHM-C-like; the
    gradient-norm signal is from Li, Liu & Wang, "Gradient Harmonized Single-stage Detector",
    AAAI 2019, but the gate itself is ours, not GHM's density harmonisation).

    .. math::
        g_i = \tfrac12\lVert \mathrm{softmax}(z_i) - e_{y_i}\rVert_1 = 1 - p_{t,i}
        \ (\text{detached}),\quad a_i = s\,(g_i - \bar g),\quad w_i = \sigma(a_i)

    where :math:`\bar g` is the mean over the batch (last dim of ``targets``).  ``s > 0``
    emphasises hard samples, ``s < 0`` suppresses them (robustness to label noise), ``s = 0``
    gives 1/2 everywhere.  ``strength``: float or per-member tensor.  Returns ``targets``-shaped
    weights (not normalised).
    """
    _check_logits_targets(logits, targets)
    s = _align(strength, targets.shape, "strength", logits)
    logp_t = F.log_softmax(logits.detach(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return _gate_from_hardness(-torch.expm1(logp_t), s)


def gradient_gated_cross_entropy(
    logits: Tensor, targets: Tensor, strength: float | Tensor, reduction: str = "mean"
) -> Tensor:
    r"""Cross-entropy reweighted by :func:`gradient_gate_weights`, normalised per member:

    .. math:: L = \frac{\sum_i w_i \ell_i}{\sum_i w_i}

    (sums over the batch dim).  ``"none"`` returns :math:`w_i \ell_i B / \sum_j w_j` so that
    its mean over the batch is ``L``; ``"mean"`` averages that over everything (i.e. the mean of
    ``L`` over members).  ``strength = 0`` equals plain cross-entropy.  The weights carry no
    gradient w.r.t. the logits (they are built from detached :math:`p_t`).
    """
    _check_reduction(reduction)
    _check_logits_targets(logits, targets)
    s = _align(strength, targets.shape, "strength", logits)
    return _modulated_ce(logits, targets, gate=s, reduction=reduction)


# ---------------------------------------------------------------------------------------------
# The engine's parametric loss
# ---------------------------------------------------------------------------------------------


def parametric_loss(
    logits: Tensor,
    targets: Tensor,
    class_counts: Tensor,
    gamma: float | Tensor = 0.0,
    alpha: float | Tensor = 0.0,
    tau: float | Tensor = 0.0,
    label_smoothing: float | Tensor = 0.0,
    poly_epsilon: float | Tensor = 0.0,
    gate: float | Tensor = 0.0,
    reduction: str = "mean",
    *,
    margin: float | Tensor = 0.0,
    scale: float | Tensor = 1.0,
) -> Tensor:
    r"""The single parametric family the lossgym engine trains with every minibatch.

    .. math::
        \tilde z &= s\,(z - \Delta\,u_{y}\,e_{y}), \qquad u_c = m_c^{-1/4} / \max_k m_k^{-1/4}
        \quad\text{(LDAM margin and scale, Cao et al. NeurIPS 2019)}\\
        z' &= \tilde z + \tau \log \pi, \qquad \pi_c = m_c / \textstyle\sum_k m_k,\
        m_c = \max(n_c,1)
        \quad\text{(logit adjustment, Menon et al. ICLR 2021)}\\
        \log p &= \mathrm{log\_softmax}(z'), \qquad p_t = \exp(\log p_{y})\\
        \mathrm{base}_i &= -\big[(1 - \varepsilon_{ls})\log p_{t} + \varepsilon_{ls}\,
        \tfrac1C\textstyle\sum_c \log p_c\big] \quad\text{(label smoothing)}\\
        \ell_i &= w_{y_i}\big[(1 - p_t)^{\gamma}\,\mathrm{base}_i + \varepsilon_{poly}(1 - p_t)
        \big] \quad\text{(focal, Lin et al. 2017; Poly-1, Leng et al. 2022)}

    with :math:`\Delta =` ``margin`` (the rarest class's margin, as :func:`ldam_margins`),
    :math:`s =` ``scale`` (LDAM's s; a plain scale of the raw logits, which sharpens the
    softmax) and :math:`w =` :func:`power_class_weights` ``(class_counts, alpha)`` (mean weight
    over the member's training-pool samples is 1).  If ``gate != 0`` the terms are then
    reweighted by the normalised gradient gate of :func:`gradient_gated_cross_entropy`,
    computed from the :math:`p_t` of the adjusted logits ``z'``:
    :math:`\ell_i \leftarrow \ell_i\, w^g_i B / \sum_j w^g_j`.  The focal base :math:`1 - p_t`
    is floored at 1e-6 inside the power (see :func:`focal_loss`).  With every parameter at its
    neutral value (0; ``scale`` 1) this is exactly ``F.cross_entropy``.

    Every parameter is a float or a tensor aligned per the module convention (per member
    ``[N]`` or per sample ``[N, B]``); ``class_counts`` is ``[C]`` or ``[N, C]``.  Parameters
    that are exactly ``0`` (``scale``: ``1``) as Python numbers cost nothing; tensors never
    trigger host syncs.  On the CPU, numbers and per-member tensors that need no gradient
    make the loss and its closed-form gradient one call of the C extension
    (:func:`parametric_plan`); the rest runs autograd through torch kernels.
    """
    _check_reduction(reduction)
    _check_logits_targets(logits, targets)
    plan = parametric_plan(logits, targets, class_counts, reduction, gamma=gamma, alpha=alpha,
                           tau=tau, label_smoothing=label_smoothing, poly_epsilon=poly_epsilon,
                           gate=gate, margin=margin, scale=scale)
    if plan is not None:  # one call of the C extension: the loss and its closed-form gradient
        return _CompiledModulatedCE.apply(logits, targets, plan, None)
    shape = targets.shape
    num_classes = logits.shape[-1]
    need_counts = not (_is_zero(alpha) and _is_zero(tau) and _is_zero(margin))
    log_m = log_n = None
    if need_counts:
        counts = _align_class(class_counts, shape, num_classes, "class_counts", logits)
        log_m = counts.clamp_min(1.0).log()
        log_n = counts.log()
    z = logits
    if not _is_zero(margin):
        # u_c = m_c^(-1/4) / max_k m_k^(-1/4), so the rarest class gets the whole margin.
        unit = (-0.25 * (log_m - log_m.amin(dim=-1, keepdim=True))).exp()
        d = _align(margin, shape, "margin", logits)
        d = d * _gather_class(unit, targets)
        onehot = torch.zeros_like(z).scatter_(-1, targets.unsqueeze(-1), 1.0)
        z = z - onehot * d.unsqueeze(-1)
    if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale == 1):
        s_ = _align(scale, shape, "scale", logits)
        z = z * (s_.unsqueeze(-1) if isinstance(s_, Tensor) else s_)
    if not _is_zero(tau):
        t = _align(tau, shape, "tau", logits)
        # log pi and log m differ by a per-row constant, which log_softmax ignores.
        z = z + (t.unsqueeze(-1) if isinstance(t, Tensor) else t) * log_m
    weight_t = None
    if not _is_zero(alpha):
        a = _align(alpha, shape, "alpha", logits)
        a = a.unsqueeze(-1) if isinstance(a, Tensor) else a
        log_w = _log_power_weights(log_m, log_n, a)
        weight_t = _gather_class(log_w, targets).exp()
    return _modulated_ce(
        z,
        targets,
        gamma=_align(gamma, shape, "gamma", logits),
        label_smoothing=_align(label_smoothing, shape, "label_smoothing", logits),
        poly_epsilon=_align(poly_epsilon, shape, "poly_epsilon", logits),
        class_weight_t=weight_t,
        gate=_align(gate, shape, "gate", logits),
        reduction=reduction,
    )


def parametric_plan(logits: Tensor, targets: Tensor, class_counts: Tensor,
                    reduction: str = "mean", *, max_numel: int = PLAN_MAX_NUMEL,
                    **params: float | Tensor) -> KernelPlan | None:
    """:func:`parametric_loss`'s arguments (``params``: its keyword parameters) as the plan
    of one call of the C extension (:func:`apply_plan`), or None where that call does not take
    them: no extension, logits it does not take (:func:`compiled_kernel_usable`), all
    parameters neutral (``F.cross_entropy`` is exact and as fast), a gate, a parameter that
    requires grad or varies per sample, more than ``max_numel`` logits. It takes
    numbers and per-member tensors ``[M]`` with logits ``[B, C]`` or ``[M, B, C]`` and counts
    ``[C]`` or ``[M, C]``.

    A caller that applies the same parameters to many minibatches (the environment: one
    plan per step) builds it once; the logits and targets only need the same shape, dtype and
    device as these.
    """
    unknown = set(params) - set(_PLAN_DEFAULTS) - {"gate"}
    if unknown:
        raise TypeError(f"parametric_plan() got unknown parameters {sorted(unknown)}")
    gate = params.pop("gate", 0.0)
    params = dict(_PLAN_DEFAULTS, **params)
    neutral = all(_is_zero(v) for k, v in params.items() if k != "scale") and not (
        isinstance(params["scale"], Tensor) or params["scale"] != 1)
    if neutral or not _is_zero(gate) or not compiled_kernel_usable(logits, targets,
                                                                    max_numel) \
            or logits.dim() not in (2, 3):
        return None
    members = logits.shape[0] if logits.dim() == 3 else 1
    values: dict[str, float | Tensor] = {}
    for name, v in params.items():
        if isinstance(v, Tensor):
            if v.requires_grad:
                return None
            if v.numel() == 1:
                v = float(v)
            elif logits.dim() == 3 and v.numel() == members and v.shape[0] == members:
                v = v.reshape(members)
            else:
                return None  # per sample
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        values[name] = v
    num_classes = logits.shape[-1]
    dtype = logits.dtype

    def column(v: float | Tensor) -> float | Tensor:  # [M] → [M, 1] against [M, C]
        return v.to("cpu", dtype).unsqueeze(-1) if isinstance(v, Tensor) else v

    alpha, tau, margin, scale = (values[k] for k in ("alpha", "tau", "margin", "scale"))
    shift = weights = margins = None
    if not (_is_zero(alpha) and _is_zero(tau) and _is_zero(margin)):
        counts = class_counts
        if not isinstance(counts, Tensor) or counts.shape not in (
                (num_classes,), (members, num_classes)):
            return None
        counts = counts.detach().to("cpu", dtype)
        log_m = counts.clamp_min(1.0).log()
        if not _is_zero(tau):
            shift = column(tau) * log_m
        if not _is_zero(alpha):
            weights = _log_power_weights(log_m, counts.log(), column(alpha)).exp()
        if not _is_zero(margin):  # s Δ u_c, u_c = m_c^(-1/4) / max_k m_k^(-1/4)
            unit = (-0.25 * (log_m - log_m.amin(dim=-1, keepdim=True))).exp()
            margins = unit * (column(margin) * column(scale))
    return KernelPlan(dtype, num_classes, weight=weights, shift=shift, margins=margins,
                      scale=scale, gamma=values["gamma"],
                      label_smoothing=values["label_smoothing"],
                      poly_epsilon=values["poly_epsilon"], reduction=reduction)


_PLAN_DEFAULTS: dict[str, float | Tensor] = {
    "gamma": 0.0, "alpha": 0.0, "tau": 0.0, "label_smoothing": 0.0, "poly_epsilon": 0.0,
    "margin": 0.0, "scale": 1.0}


def apply_plan(logits: Tensor, targets: Tensor, plan: KernelPlan) -> Tensor:
    """The loss of a :func:`parametric_plan` (its reduction) on logits and targets of the
    shape, dtype and device it was made for."""
    return _CompiledModulatedCE.apply(logits, targets, plan, None)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class FocalLoss(nn.Module):
    """Module wrapper of :func:`focal_loss`."""

    def __init__(
        self,
        gamma: float | Tensor = 2.0,
        alpha: float | Tensor | None = None,
        reduction: str = "mean",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        _store(self, "gamma", gamma)
        _store(self, "alpha", alpha)
        self.reduction = reduction
        self.eps = eps

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return focal_loss(logits, targets, self.gamma, self.alpha, self.reduction, self.eps)

    def extra_repr(self) -> str:
        return (
            f"gamma={_fmt(self.gamma)}, alpha={_fmt(self.alpha)}, "
            f"reduction={self.reduction!r}, eps={self.eps}"
        )


class ParametricLoss(nn.Module):
    """Module wrapper of :func:`parametric_loss`; parameters can be reassigned between steps
    (``loss.gamma = torch.tensor([...])``) by the engine."""

    def __init__(
        self,
        class_counts: Tensor,
        gamma: float | Tensor = 0.0,
        alpha: float | Tensor = 0.0,
        tau: float | Tensor = 0.0,
        label_smoothing: float | Tensor = 0.0,
        poly_epsilon: float | Tensor = 0.0,
        gate: float | Tensor = 0.0,
        reduction: str = "mean",
        *,
        margin: float | Tensor = 0.0,
        scale: float | Tensor = 1.0,
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.register_buffer("class_counts", class_counts.detach().clone())
        for name, value in (
            ("gamma", gamma),
            ("alpha", alpha),
            ("tau", tau),
            ("label_smoothing", label_smoothing),
            ("poly_epsilon", poly_epsilon),
            ("gate", gate),
            ("margin", margin),
            ("scale", scale),
        ):
            _store(self, name, value)
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return parametric_loss(
            logits,
            targets,
            self.class_counts,
            gamma=self.gamma,
            alpha=self.alpha,
            tau=self.tau,
            label_smoothing=self.label_smoothing,
            poly_epsilon=self.poly_epsilon,
            gate=self.gate,
            margin=self.margin,
            scale=self.scale,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        names = ("gamma", "alpha", "tau", "label_smoothing", "poly_epsilon", "gate", "margin",
                 "scale")
        parts = [f"{n}={_fmt(getattr(self, n))}" for n in names]
        parts.append(f"class_counts={_fmt(self.class_counts)}")
        parts.append(f"reduction={self.reduction!r}")
        return ", ".join(parts)


class LDAMLoss(nn.Module):
    """Module wrapper of :func:`ldam_loss`; ``weight`` can be set per epoch (e.g. from
    :func:`drw_weights`)."""

    def __init__(
        self,
        class_counts: Tensor,
        max_margin: float | Tensor = 0.5,
        scale: float | Tensor = 30.0,
        weight: Tensor | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.register_buffer("class_counts", class_counts.detach().clone())
        _store(self, "max_margin", max_margin)
        _store(self, "scale", scale)
        _store(self, "weight", weight)
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return ldam_loss(
            logits,
            targets,
            self.class_counts,
            self.max_margin,
            self.scale,
            self.weight,
            self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"max_margin={_fmt(self.max_margin)}, scale={_fmt(self.scale)}, "
            f"weight={_fmt(self.weight)}, class_counts={_fmt(self.class_counts)}, "
            f"reduction={self.reduction!r}"
        )


class AdaFocalLoss(nn.Module):
    """Stateful AdaFocal (Ghosh et al., NeurIPS 2022): per-bin gammas and bin edges as buffers.

    Call :meth:`update` with validation logits/targets (the paper: once per epoch) to apply
    :func:`adafocal_update`; with ``equal_mass_bins=True`` (the paper's choice) the bin edges are
    first recomputed as equal-mass bins of the validation confidences, and those edges are
    then also used to bin training samples.  Initial edges are uniform on [0, 1].
    """

    def __init__(
        self,
        n_bins: int = 15,
        gamma_init: float = 1.0,
        num_members: int | None = None,
        lam: float = 1.0,
        switch_threshold: float = 0.2,
        gamma_min: float = -2.0,
        gamma_max: float = 20.0,
        equal_mass_bins: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        lead = () if num_members is None else (num_members,)
        self.register_buffer("gamma_bins", torch.full(lead + (n_bins,), float(gamma_init)))
        edges = torch.linspace(0.0, 1.0, n_bins + 1)
        self.register_buffer("bin_edges", edges.expand(lead + (n_bins + 1,)).clone())
        self.n_bins = n_bins
        self.lam = lam
        self.switch_threshold = switch_threshold
        self.gamma_min = gamma_min
        self.gamma_max = gamma_max
        self.equal_mass_bins = equal_mass_bins
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return adafocal_loss(logits, targets, self.gamma_bins, self.bin_edges, self.reduction)

    @torch.no_grad()
    def update(self, val_logits: Tensor, val_targets: Tensor) -> None:
        """One gamma update from validation predictions ``[..., V, C]`` / ``[..., V]``."""
        if tuple(val_targets.shape[:-1]) != tuple(self.gamma_bins.shape[:-1]):
            raise ValueError(
                f"val_targets has shape {tuple(val_targets.shape)}, but the gamma state "
                f"{tuple(self.gamma_bins.shape)} needs leading dims "
                f"{tuple(self.gamma_bins.shape[:-1])}"
            )
        if self.equal_mass_bins:
            conf = F.softmax(val_logits.float(), dim=-1).amax(dim=-1)
            edges = equal_mass_bin_edges(conf, self.n_bins)
            self.bin_edges.copy_(edges.to(self.bin_edges).expand_as(self.bin_edges))
        confidence, accuracy, _ = calibration_bin_stats(val_logits, val_targets, self.bin_edges)
        new = adafocal_update(
            self.gamma_bins,
            confidence,
            accuracy,
            self.lam,
            self.switch_threshold,
            self.gamma_min,
            self.gamma_max,
        )
        self.gamma_bins.copy_(new.expand_as(self.gamma_bins))

    def extra_repr(self) -> str:
        return (
            f"n_bins={self.n_bins}, gamma_bins={_fmt(self.gamma_bins)}, lam={self.lam}, "
            f"switch_threshold={self.switch_threshold}, gamma_min={self.gamma_min}, "
            f"gamma_max={self.gamma_max}, equal_mass_bins={self.equal_mass_bins}, "
            f"reduction={self.reduction!r}"
        )


class AdaLoss(nn.Module):
    """Stateful class-balanced AdaLoss (our adaptation of Hu et al., AAAI 2019; see
    :func:`adaloss`).

    Keeps a running mean ``m`` ([C], or [N, C] with ``num_members``) of each class's mean
    cross-entropy.  ``forward(logits, targets)`` computes per member the per-class mean CE of
    the batch, and in training mode first updates ``m_c <- momentum * m_c + (1 - momentum) *
    l_c`` for the classes present (the first observation of a class initialises ``m_c = l_c``;
    absent classes are untouched), then returns ``sum_{c present} l_c / sg(m_c) / |present|``.
    Classes never observed use the current detached ``l_c`` (ratio 1).  Reduction over members:
    ``"mean"`` (default), ``"sum"``, or ``"none"`` (shape ``[N]``, or ``[]`` without members).
    """

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.9,
        num_members: int | None = None,
        eps: float = 1e-8,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        shape = (num_classes,) if num_members is None else (num_members, num_classes)
        self.register_buffer("running_mean", torch.ones(shape))
        self.register_buffer("initialized", torch.zeros(shape, dtype=torch.bool))
        self.num_classes = num_classes
        self.num_members = num_members
        self.momentum = momentum
        self.eps = eps
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        _check_logits_targets(logits, targets)
        expected = tuple(targets.shape[:-1]) + (self.num_classes,)
        if tuple(self.running_mean.shape) != expected or logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"AdaLoss state has shape {tuple(self.running_mean.shape)} but logits "
                f"{tuple(logits.shape)} need {expected}"
            )
        ce = -F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        zeros = ce.new_zeros(expected)
        sums = zeros.scatter_add(-1, targets, ce)
        counts = zeros.detach().scatter_add(-1, targets, torch.ones_like(ce.detach()))
        present = counts > 0
        per_class = sums / counts.clamp_min(1.0)
        if self.training:
            with torch.no_grad():
                obs = per_class.detach().to(self.running_mean)
                ema = self.momentum * self.running_mean + (1.0 - self.momentum) * obs
                new = torch.where(self.initialized, ema, obs)
                self.running_mean.copy_(torch.where(present, new, self.running_mean))
                self.initialized |= present
        m = torch.where(self.initialized, self.running_mean.to(per_class), per_class.detach())
        return _reduce(adaloss(per_class, m, self.eps, present), self.reduction)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_members={self.num_members}, "
            f"momentum={self.momentum}, eps={self.eps}, reduction={self.reduction!r}"
        )
