"""The engine's parametric loss: loss parameters (:mod:`lossgym.params`) and class counts
become the :class:`~lossgym.losses._kernel.Terms` of the modulated cross-entropy.

:data:`TERMS` says, for each parameter, what it does to the terms; it is the only place that
does. :class:`ParametricCriterion` is the one criterion that the environment, the built-in
methods and :class:`~lossgym.export.AdaptiveLoss` call: parameters and class counts in, a loss
out, with the terms (and the C extension's plan on them) kept while the parameters and counts
stay the same objects, unmodified.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lossgym import params as loss_params
from lossgym.losses._kernel import (
    LIMIT,
    Terms,
    align,
    align_class,
    check_logits_targets,
    check_range,
    check_reduction,
    class_counts_values,
    is_zero,
    modulated_ce,
)


@dataclass
class ClassStats:
    """What the class terms are made of: ``log m`` and ``log n`` (``m = max(n, 1)``; ``-inf``
    for empty classes), aligned to the values' leading dims, ``[..., C]``."""

    log_m: Tensor
    log_n: Tensor

    def unit_margins(self) -> Tensor:
        """u_c = m_c^(−1/4) / max_k m_k^(−1/4): the rarest class gets the whole margin."""
        return (-0.25 * (self.log_m - self.log_m.amin(dim=-1, keepdim=True))).exp()


def log_power_weights(log_m: Tensor, log_n: Tensor, alpha: float | Tensor) -> Tensor:
    """log w_c = −α log m_c + log Σ_c n_c − logsumexp_c(log n_c − α log m_c): power weights
    normalised over samples, in log space so that large α does not underflow."""
    log_total = torch.logsumexp(log_n, dim=-1, keepdim=True)
    return -alpha * log_m + log_total - torch.logsumexp(log_n - alpha * log_m, dim=-1,
                                                        keepdim=True)


def effective_number_weights(m: Tensor, log_beta: float | Tensor) -> Tensor:
    """w_c ∝ 1/(1 − β^m_c) with Σ_c w_c = C (Cui et al. 2019), for counts ``m`` >= 1 and
    ``log_beta`` = log β (1/(1 − β^m) through expm1, so that β close to 1 keeps its precision;
    the constant 1 − β cancels in the normalisation)."""
    w = -1.0 / torch.expm1(m * log_beta)
    return w * (w.shape[-1] / w.sum(dim=-1, keepdim=True))


#: A parameter's effect on the terms: (terms so far, the raw values, the values as columns
#: against the class dim, the class stats) → None. Effects that read the class stats set
#: ``needs_counts``.
TermFn = Callable[[dict, Mapping, Mapping, "ClassStats | None"], None]


def _set(name: str) -> TermFn:
    def apply(terms: dict, raw: Mapping, cols: Mapping, classes: ClassStats | None) -> None:
        terms[name] = raw[name]
    return apply


def _counts(fn: TermFn) -> TermFn:
    fn.needs_counts = True  # type: ignore[attr-defined]
    return fn


@_counts
def _tau(terms: dict, raw: Mapping, cols: Mapping, classes: ClassStats) -> None:
    # τ log π and τ log m differ by a per-row constant, which the softmax ignores.
    terms["shift"] = cols["tau"] * classes.log_m


def _weigh(terms: dict, weight: Tensor) -> None:
    # Class weights from several parameters multiply.
    terms["weight"] = weight if "weight" not in terms else terms["weight"] * weight


@_counts
def _alpha(terms: dict, raw: Mapping, cols: Mapping, classes: ClassStats) -> None:
    _weigh(terms, log_power_weights(classes.log_m, classes.log_n, cols["alpha"]).exp())


#: β of the effective number of samples that ``cb`` mixes in (the value of LDAM-DRW's paper).
CB_BETA = 0.9999


@_counts
def _cb(terms: dict, raw: Mapping, cols: Mapping, classes: ClassStats) -> None:
    # Class-normalised, as LDAM-DRW's deferred weights: at cb = 1 they are exactly
    # class_balanced_weights(counts, 0.9999), so the mean sample weight drops below 1.
    w = effective_number_weights(classes.log_m.exp(), math.log(CB_BETA))
    _weigh(terms, 1.0 + cols["cb"] * (w - 1.0))


@_counts
def _margin(terms: dict, raw: Mapping, cols: Mapping, classes: ClassStats) -> None:
    terms["margins"] = classes.unit_margins() * (cols["margin"] * cols.get("scale", 1.0))


#: Where the class-count parameters are defined besides ``[-LIMIT, LIMIT]``: ``cb`` is a mix
#: (outside [0, 1] it makes class weights negative).
COUNT_DOMAINS: dict[str, tuple[float, float]] = {"cb": (0.0, 1.0)}

#: What each parameter of :data:`lossgym.params.LOSS_PARAMS` does to the terms.
TERMS: dict[str, TermFn] = {
    "gamma": _set("gamma"),
    "alpha": _alpha,
    "tau": _tau,
    "label_smoothing": _set("label_smoothing"),
    "poly_epsilon": _set("poly_epsilon"),
    "gate": _set("gate"),
    "margin": _margin,
    "scale": _set("scale"),
    "cb": _cb,
}


def _lead(values: Mapping[str, float | Tensor], counts: Tensor, shape: Sequence[int]
          ) -> tuple[int, ...]:
    """The leading dims of the class terms: none for host numbers and shared counts, the
    member dim for per-member values or counts (the fast path's shapes), else the targets'."""
    members = shape[0] if len(shape) == 2 else 1
    per_member = counts.dim() == 2
    for v in values.values():
        if isinstance(v, Tensor) and v.numel() > 1:
            if len(shape) == 2 and v.numel() == members and v.shape[0] == members:
                per_member = True
            else:
                return tuple(shape)
    return (members,) if per_member else ()


def loss_terms(values: Mapping[str, float | Tensor], class_counts: Tensor | None,
               targets_shape: Sequence[int], like: Tensor) -> Terms:
    """The terms of the parametric loss for parameter ``values`` (name → float or tensor;
    missing names are neutral) and counts ``[C]`` or ``[N, C]`` (finite, >= 0; a row of
    zeros, unknown counts, reads as equal counts)."""
    if not isinstance(values, Mapping):
        raise TypeError(f"values must be a mapping of loss parameter names to values, got "
                        f"{type(values).__name__}")
    known = {p.name: p for p in loss_params.LOSS_PARAMS}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown loss parameters {unknown}; choose from {list(known)}")
    for k, v in values.items():
        # Anything but a float, an int or a tensor is named here (Terms checks the domain of
        # the active ones); the common case costs a type lookup.
        if type(v) not in (float, int) and not isinstance(v, Tensor):
            check_range(v, k)
    active = {k: v for k, v in values.items()
              if isinstance(v, Tensor) or float(v) != known[k].neutral}
    needs = sorted(k for k in active if getattr(TERMS[k], "needs_counts", False))
    classes, cols = None, active
    if needs:
        if class_counts is None:
            raise ValueError(f"class_counts is needed for the parameters {needs}")
        counts = class_counts_values(class_counts)
        lead = _lead(active, counts, targets_shape)
        counts = align_class(counts, lead, like.shape[-1], "class_counts", like)
        counts = counts.to(like.dtype if like.is_floating_point() else torch.float32)
        classes = ClassStats(counts.clamp_min(1.0).log(), counts.log())
        cols = {}
        for k, v in active.items():
            if k in needs:
                check_range(v, k, *COUNT_DOMAINS.get(k, (-LIMIT, LIMIT)))
            if isinstance(v, Tensor):
                v = align(v.reshape(()) if v.numel() == 1 else v,
                          lead if v.numel() > 1 else (), k, like)
                v = v.unsqueeze(-1) if isinstance(v, Tensor) else v
            cols[k] = v
    terms: dict = {}
    for name in active:
        TERMS[name](terms, active, cols, classes)
    return Terms(**terms)


def _key(value: object) -> object:
    return (id(value), value._version, value.device) if isinstance(value, Tensor) else value


class ParametricCriterion:
    """The parametric loss with its terms cached: ``criterion(logits, targets, values)``.

    Args:
        class_counts: ``[C]`` or ``[N, C]`` (may be given per call instead).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    The terms, and on them the C extension's plan, are rebuilt only when the parameter
    values, the counts or the logits' dtype and device change: a tensor counts as the same
    while it is the same object with the same version (in-place writes bump it).
    """

    def __init__(self, class_counts: Tensor | None = None, reduction: str = "mean") -> None:
        check_reduction(reduction)
        self.class_counts = class_counts
        self.reduction = reduction
        self._cached: tuple[tuple, Terms] | None = None

    def terms(self, values: Mapping[str, float | Tensor], logits: Tensor, targets: Tensor,
              class_counts: Tensor | None = None) -> Terms:
        if not isinstance(values, Mapping):
            raise TypeError(f"values must be a mapping of loss parameter names to values, got "
                            f"{type(values).__name__}")
        counts = self.class_counts if class_counts is None else class_counts
        key = (tuple((k, _key(v)) for k, v in values.items()), _key(counts), logits.dtype,
               logits.device, tuple(targets.shape[:-1]))
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, loss_terms(values, counts, targets.shape, logits))
        return self._cached[1]

    @property
    def cached_terms(self) -> Terms | None:
        """The terms of the last call (None before it)."""
        return None if self._cached is None else self._cached[1]

    def __call__(self, logits: Tensor, targets: Tensor, values: Mapping[str, float | Tensor],
                 class_counts: Tensor | None = None, ce_out: list | None = None) -> Tensor:
        return modulated_ce(logits, targets, self.terms(values, logits, targets, class_counts),
                            self.reduction, ce_out)


def parametric_loss(
    logits: Tensor,
    targets: Tensor,
    class_counts: Tensor | None = None,
    reduction: str = "mean",
    **values: float | Tensor,
) -> Tensor:
    r"""The single parametric family the lossgym engine trains with every minibatch.

    .. math::
        z' &= s\,(z - \Delta\,u_{y}\,e_{y}) + \tau \log \pi, \qquad
        u_c = m_c^{-1/4} / \max_k m_k^{-1/4},\ \pi_c = m_c / \textstyle\sum_k m_k,\
        m_c = \max(n_c,1)\\
        \ell_i &= w_{y_i}\big[(1 - p_t)^{\gamma}\,\mathrm{base}_i + \varepsilon_{poly}(1 - p_t)
        \big],\qquad w = \texttt{power\_class\_weights}(n, \alpha)

    with the label-smoothed base, and the gradient gate where ``gate != 0`` (the parameters,
    their ranges and papers: :mod:`lossgym.params`). With every parameter at its neutral value
    this is exactly ``F.cross_entropy``.

    Every parameter is a keyword: a float or a tensor aligned per the module convention (per
    member ``[N]`` or per sample ``[N, B]``); ``class_counts`` is ``[C]`` or ``[N, C]``
    (needed for α, τ and the margin). Host numbers equal to the neutral value cost nothing,
    tensors never trigger host syncs, and on the CPU numbers and per-member tensors that need
    no gradient run as one call of the C extension.

    Values: γ >= 0, ε_ls and λ_cb in [0, 1], s > 0, the others finite, and none beyond
    ``LIMIT`` (1e6) in magnitude, where float32 arithmetic would overflow (the action
    ranges lie far inside); counts finite and >= 0. Counts
    that are all zero (in a row of ``[N, C]``) mean "unknown" and read as equal counts:
    uniform weights, no logit adjustment, the full margin Δ for every class. Anything else
    raises ``ValueError`` naming the value (tensors: on the CPU; CUDA tensors are not
    inspected, which would be a host sync).
    """
    check_reduction(reduction)
    check_logits_targets(logits, targets)
    for name, v in values.items():
        if not isinstance(v, Tensor) and not is_zero(v) and name != "scale":
            loss_params.param(name)
    return modulated_ce(logits, targets, loss_terms(values, class_counts, targets.shape, logits),
                        reduction)
