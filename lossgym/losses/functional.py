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

Checked inputs
--------------
Targets are int64 class indices in ``[0, C)`` (others raise ``ValueError``, out-of-range ones
``IndexError("Target 5 is out of bounds [0, 5) (sample 3)")``, the sample counted in the
flattened targets).  Class counts are finite and ``>= 0``; counts that are all zero (per row of
``[..., C]``) mean "unknown" and read as equal counts (uniform weights, no logit adjustment).
Parameters outside their domain (γ < 0, β outside [0, 1), NaN or infinite values) raise
``ValueError`` naming them.  Python numbers are always checked, CPU tensors with one reduction
each; CUDA tensors are not inspected, since that would be a host sync (torch's kernels assert
out-of-range targets on the device).

Reductions are ``"none"`` (per-sample loss, shape ``targets.shape``), ``"mean"`` (the arithmetic
mean of that) and ``"sum"``.  Note that for class-weighted losses ``"mean"`` is the *plain* mean
of the weighted per-sample terms, not ``F.cross_entropy``'s division by the sum of weights.  An
empty batch gives an empty ``"none"`` loss, and 0 with a zero gradient for ``"mean"`` and
``"sum"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lossgym import _checks as checks
from lossgym.losses._kernel import (
    Terms,
    align,
    align_class,
    check_logits_targets,
    check_range,
    check_reduction,
    check_targets,
    class_counts_values,
    gate_weights,
    modulated_ce,
    reduce,
)
from lossgym.losses.parametric import (
    effective_number_weights,
    log_power_weights,
    parametric_loss,
)


def _member_param(value: float | Tensor, counts: Tensor, name: str) -> float | Tensor:
    """Align a per-member parameter of a counts-only function to ``counts [..., C]``.

    Returns a float or a tensor with a trailing singleton class dim.  Shared counts ``[C]``
    accept any member shape ``M`` (the result then has shape ``M + [C]``).
    """
    ref: Sequence[int] = tuple(value.shape) if isinstance(value, Tensor) and counts.ndim == 1 \
        else tuple(counts.shape[:-1])
    aligned = align(value, ref, name, counts)
    return aligned.unsqueeze(-1) if isinstance(aligned, Tensor) else aligned


def _class_weight(weight: Tensor | float | None, targets: Tensor, logits: Tensor, name: str
                  ) -> tuple[Tensor | None, float | Tensor]:
    """Per-class weights as a class term, or a global scale for a number (or 0-d tensor)."""
    if isinstance(weight, Tensor) and weight.ndim > 0:
        return align_class(weight, targets.shape, logits.shape[-1], name, logits), 1.0
    if weight is not None:
        check_range(weight, name, 0.0)
    return None, 1.0 if weight is None else weight


# ------------------------------------------------------------------------------------- focal losses
def focal_loss(logits: Tensor, targets: Tensor, gamma: float | Tensor = 2.0,
               alpha: float | Tensor | None = None, reduction: str = "mean",
               eps: float = 1e-6) -> Tensor:
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
    check_reduction(reduction)
    check_logits_targets(logits, targets)
    weight, scale = _class_weight(alpha, targets, logits, "alpha")
    loss = modulated_ce(logits, targets, Terms(gamma=gamma, weight=weight, eps=eps), reduction)
    return loss if isinstance(scale, float) and scale == 1.0 else loss * scale


def sigmoid_focal_loss(inputs: Tensor, targets: Tensor, alpha: float = 0.25,
                       gamma: float | Tensor = 2.0, reduction: str = "none") -> Tensor:
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
    check_reduction(reduction)
    if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
        raise TypeError(f"inputs and targets must be tensors, got {type(inputs).__name__} and "
                        f"{type(targets).__name__}")
    if inputs.shape != targets.shape:
        raise ValueError(f"inputs and targets must have the same shape, got "
                         f"{tuple(inputs.shape)} and {tuple(targets.shape)}")
    check_range(gamma, "gamma", 0.0)
    check_range(alpha, "alpha")
    if isinstance(alpha, Tensor):
        if alpha.numel() != 1 or alpha.dtype is torch.bool:
            raise ValueError(f"alpha must be a float (or a one-element float tensor), got a "
                             f"{alpha.dtype} tensor of shape {tuple(alpha.shape)}")
        alpha = float(alpha)
    g = align(gamma, inputs.shape, "gamma", inputs)
    targets = targets.to(dtype=inputs.dtype)
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** g)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return reduce(loss, reduction)


# ------------------------------------------------------------------------------------ class weights
def class_balanced_weights(class_counts: Tensor, beta: float | Tensor = 0.9999) -> Tensor:
    r"""Class-balanced weights from the effective number of samples (Cui et al.,
    "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019).

    .. math:: w_c \propto \frac{1 - \beta}{1 - \beta^{n_c}}, \qquad \sum_c w_c = C

    (the paper's normalisation).  ``beta`` in ``[0, 1)``: 0 gives uniform weights, ``beta -> 1``
    approaches inverse frequency; other values raise ``ValueError``.  Zero counts are treated as
    1 so weights stay finite (all zero: uniform weights); negative counts raise ``ValueError``.

    Args:
        class_counts: ``[C]`` or ``[N, C]`` (any leading dims) per-class sample counts.
        beta: float or per-member tensor (``[N]`` for counts ``[N, C]``).

    Returns:
        Float tensor of the broadcast shape of counts and beta (``[..., C]``).
    """
    counts = class_counts_values(class_counts).clamp_min(1.0)
    check_range(beta, "beta", 0.0, 1.0, open_high=True)
    b = _member_param(beta, counts, "beta")
    log_beta = torch.log(torch.as_tensor(b, dtype=counts.dtype, device=counts.device))
    return effective_number_weights(counts, log_beta)


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
        class_counts: ``[C]`` or ``[N, C]`` counts, finite and >= 0 (zeros allowed: the power
            uses max(n, 1); all zero, unknown counts, give uniform weights).
        alpha: finite float or per-member tensor (``[N]``).
    """
    counts = class_counts_values(class_counts)
    check_range(alpha, "alpha")
    a = _member_param(alpha, counts, "alpha")
    log_w = log_power_weights(counts.clamp_min(1.0).log(), counts.log(), a)
    return log_w.exp()


def drw_weights(class_counts: Tensor, progress: float | Tensor, switch: float = 0.8,
                beta: float = 0.9999) -> Tensor:
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
    checks.real("switch", switch)
    check_range(progress, "progress")
    cb = class_balanced_weights(class_counts, beta)
    p = _member_param(progress, cb, "progress")
    if isinstance(p, float):
        return cb if p >= switch else torch.ones_like(cb)
    return torch.where(p >= switch, cb, torch.ones_like(cb))


# --------------------------------------------------------------------------- cross-entropy variants
def weighted_cross_entropy(logits: Tensor, targets: Tensor, weight: Tensor | None = None,
                           label_smoothing: float | Tensor = 0.0,
                           reduction: str = "mean") -> Tensor:
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
    check_reduction(reduction)
    check_logits_targets(logits, targets)
    w, _ = _class_weight(weight, targets, logits, "weight")
    return modulated_ce(logits, targets, Terms(weight=w, label_smoothing=label_smoothing),
                        reduction)


def logit_adjusted_cross_entropy(logits: Tensor, targets: Tensor, class_counts: Tensor,
                                 tau: float | Tensor = 1.0, reduction: str = "mean") -> Tensor:
    r"""Logit-adjusted cross-entropy (Menon et al., "Long-tail learning via logit adjustment",
    ICLR 2021).

    .. math:: \ell_i = -\log \mathrm{softmax}(z_i + \tau \log \pi)_{y_i},
              \qquad \pi_c = n_c / \textstyle\sum_k n_k

    Zero counts are treated as 1 (smallest finite prior).  ``tau``: float or per-member /
    per-sample tensor; ``class_counts``: ``[C]`` or ``[..., C]``.
    """
    return parametric_loss(logits, targets, class_counts, reduction, tau=tau)


def poly1_cross_entropy(logits: Tensor, targets: Tensor, epsilon: float | Tensor = 1.0,
                        reduction: str = "mean") -> Tensor:
    r"""Poly-1 cross-entropy (Leng et al., "PolyLoss: A Polynomial Expansion Perspective of
    Classification Loss Functions", ICLR 2022).

    .. math:: \ell_i = -\log p_{t,i} + \varepsilon\,(1 - p_{t,i})

    ``epsilon``: float or per-member / per-sample tensor.
    """
    check_reduction(reduction)
    check_logits_targets(logits, targets)
    return modulated_ce(logits, targets, Terms(poly_epsilon=epsilon), reduction)


# --------------------------------------------------------------------------------------------- LDAM
def ldam_margins(class_counts: Tensor, max_margin: float | Tensor = 0.5) -> Tensor:
    r"""Label-distribution-aware margins (Cao et al., NeurIPS 2019):

    .. math:: \Delta_c = \Delta_{\max}\,\frac{m_c^{-1/4}}{\max_k m_k^{-1/4}},
              \qquad m_c = \max(n_c, 1)

    i.e. :math:`\Delta_c \propto n_c^{-1/4}` with the rarest class getting ``max_margin``.

    Args:
        class_counts: ``[C]`` or ``[N, C]``, finite and >= 0 (all zero: equal margins).
        max_margin: finite float or per-member tensor.
    """
    counts = class_counts_values(class_counts).clamp_min(1.0)
    check_range(max_margin, "max_margin")
    inv = counts.pow(-0.25)
    unit = inv / inv.amax(dim=-1, keepdim=True)
    return unit * _member_param(max_margin, counts, "max_margin")


def ldam_loss(logits: Tensor, targets: Tensor, class_counts: Tensor,
              max_margin: float | Tensor = 0.5, scale: float | Tensor = 30.0,
              weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
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
    check_reduction(reduction)
    check_logits_targets(logits, targets)
    num_classes = logits.shape[-1]
    unit = align_class(ldam_margins(class_counts, 1.0), targets.shape, num_classes,
                       "class_counts", logits)
    check_range(max_margin, "max_margin")
    s = align(scale, targets.shape, "scale", logits)
    d = align(max_margin, targets.shape, "max_margin", logits)
    column = (s * d).unsqueeze(-1) if isinstance(s * d, Tensor) else s * d
    w, _ = _class_weight(weight, targets, logits, "weight")
    return modulated_ce(logits, targets, Terms(scale=scale, margins=unit * column, weight=w),
                        reduction)


# -------------------------------------------------------------- calibration-oriented focal variants
def flsd53_gamma(logits: Tensor, targets: Tensor) -> Tensor:
    r"""Sample-dependent gamma of FLSD-53 (Mukhoti et al., "Calibrating Deep Neural Networks
    using Focal Loss", NeurIPS 2020): :math:`\gamma = 5` if :math:`p_t < 0.2` else 3, from the
    detached :math:`p_t`.  Returns a ``targets``-shaped float tensor.
    """
    check_targets(logits, targets)
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
    if not isinstance(bin_edges, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(bin_edges).__name__}")
    if bin_edges.ndim == 0 or bin_edges.shape[-1] < 2:
        raise ValueError(f"{name} must have shape [K+1] or [..., K+1] with K >= 1, got "
                         f"{tuple(bin_edges.shape)}")
    edges = align_class(bin_edges, values.shape[:-1], bin_edges.shape[-1], name, values)
    interior = edges[..., 1:-1]
    if bin_edges.ndim == 1:
        return torch.bucketize(values, interior.reshape(-1), right=True)
    interior = interior.expand(tuple(values.shape[:-1]) + (interior.shape[-1],))
    return torch.searchsorted(interior.contiguous(), values.contiguous(), right=True)


def adafocal_loss(logits: Tensor, targets: Tensor, gamma_bins: Tensor, bin_edges: Tensor,
                  reduction: str = "mean", eps: float = 1e-6) -> Tensor:
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
    check_reduction(reduction)
    check_targets(logits, targets)
    if not isinstance(gamma_bins, Tensor):
        raise TypeError(f"gamma_bins must be a tensor, got {type(gamma_bins).__name__}")
    check_range(gamma_bins, "gamma_bins")
    check_range(eps, "eps", 0.0)
    logp = F.log_softmax(logits, dim=-1)
    logp_t = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    p_t = logp_t.exp()
    idx = _bin_index(p_t.detach(), bin_edges)
    gb = align_class(gamma_bins, targets.shape, gamma_bins.shape[-1], "gamma_bins", logits)
    if bin_edges.shape[-1] != gamma_bins.shape[-1] + 1:
        raise ValueError(f"bin_edges must have K+1 = {gamma_bins.shape[-1] + 1} entries in its "
                         f"last dim for gamma_bins with K = {gamma_bins.shape[-1]}, got shape "
                         f"{tuple(bin_edges.shape)}")
    gamma = gb.expand(tuple(targets.shape) + (gb.shape[-1],)).gather(-1, idx.unsqueeze(-1))
    gamma = gamma.squeeze(-1)
    # One pow for both regimes; the floor keeps the focal branch's gradient finite at p_t = 1.
    base = torch.where(gamma >= 0, (-torch.expm1(logp_t)).clamp_min(eps), 1.0 + p_t)
    loss = -base.pow(gamma.abs()) * logp_t
    return reduce(loss, reduction)


def adafocal_update(gamma_bins: Tensor, val_confidence_per_bin: Tensor,
                    val_accuracy_per_bin: Tensor, lam: float = 1.0, switch_threshold: float = 0.2,
                    gamma_min: float = -2.0, gamma_max: float = 20.0) -> Tensor:
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
    named = {"gamma_bins": gamma_bins, "val_confidence_per_bin": val_confidence_per_bin,
             "val_accuracy_per_bin": val_accuracy_per_bin}
    for name, value in named.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if not gamma_bins.shape == val_confidence_per_bin.shape == val_accuracy_per_bin.shape:
        raise ValueError("gamma_bins, val_confidence_per_bin and val_accuracy_per_bin must have "
                         f"one shape, got {tuple(gamma_bins.shape)}, "
                         f"{tuple(val_confidence_per_bin.shape)} and "
                         f"{tuple(val_accuracy_per_bin.shape)}")
    checks.real("lam", lam)
    checks.real("switch_threshold", switch_threshold, 0.0)
    checks.real("gamma_min", gamma_min)
    checks.real("gamma_max", gamma_max, gamma_min)
    gap = val_confidence_per_bin.to(gamma_bins) - val_accuracy_per_bin.to(gamma_bins)
    step = torch.where(gamma_bins > 0, lam * gap, -lam * gap)
    new = gamma_bins * torch.exp(step)
    s_th = torch.full_like(new, switch_threshold)
    flipped = torch.where(new > 0, -s_th, s_th)
    new = torch.where(new.abs() < switch_threshold, flipped, new)
    return new.clamp(gamma_min, gamma_max)


def calibration_bin_stats(logits: Tensor, targets: Tensor,
                          bin_edges: Tensor) -> tuple[Tensor, Tensor, Tensor]:
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
    check_targets(logits, targets)
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
    checks.integer("n_bins", n_bins, 1)
    if not isinstance(confidences, Tensor):
        raise TypeError(f"confidences must be a tensor, got {type(confidences).__name__}")
    if confidences.ndim == 0 or not confidences.shape[-1]:
        raise ValueError(f"confidences has shape {tuple(confidences.shape)}; it must be "
                         "[..., V] with V >= 1 values")
    c = confidences.detach()
    c = c.to(torch.promote_types(c.dtype, torch.float32))
    q = torch.linspace(0.0, 1.0, n_bins + 1, dtype=c.dtype, device=c.device)[1:-1]
    inner = torch.quantile(c, q, dim=-1).movedim(0, -1) if n_bins > 1 else c[..., :0]
    lo = c.new_zeros(tuple(c.shape[:-1]) + (1,))
    return torch.cat([lo, inner, lo + 1.0], dim=-1)


# ------------------------------------------------------------------------------------------ AdaLoss
def adaloss(per_class_loss: Tensor, running_mean: Tensor, eps: float = 1e-8,
            present: Tensor | None = None) -> Tensor:
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
    for name, value in (("per_class_loss", per_class_loss), ("running_mean", running_mean)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if per_class_loss.shape[-1:] != running_mean.shape[-1:]:
        raise ValueError(f"per_class_loss {tuple(per_class_loss.shape)} and running_mean "
                         f"{tuple(running_mean.shape)} must have the same classes (last dim)")
    checks.real("eps", eps, 0.0)
    ratio = per_class_loss / (running_mean.detach() + eps)
    if present is None:
        return ratio.mean(dim=-1)
    ratio = torch.where(present, ratio, torch.zeros_like(ratio))
    return ratio.sum(dim=-1) / present.sum(dim=-1).clamp_min(1).to(ratio.dtype)


# ------------------------------------------------------------------------------------ gradient gate
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
    check_targets(logits, targets)
    check_range(strength, "strength")
    s = align(strength, targets.shape, "strength", logits)
    logp_t = F.log_softmax(logits.detach(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return gate_weights(-torch.expm1(logp_t), s)


def gradient_gated_cross_entropy(logits: Tensor, targets: Tensor, strength: float | Tensor,
                                 reduction: str = "mean") -> Tensor:
    r"""Cross-entropy reweighted by :func:`gradient_gate_weights`, normalised per member:

    .. math:: L = \frac{\sum_i w_i \ell_i}{\sum_i w_i}

    (sums over the batch dim).  ``"none"`` returns :math:`w_i \ell_i B / \sum_j w_j` so that
    its mean over the batch is ``L``; ``"mean"`` averages that over everything (i.e. the mean of
    ``L`` over members).  ``strength = 0`` equals plain cross-entropy.  The weights carry no
    gradient w.r.t. the logits (they are built from detached :math:`p_t`).
    """
    check_reduction(reduction)
    check_logits_targets(logits, targets)
    check_range(strength, "strength")
    gate = strength if isinstance(strength, Tensor) else float(strength)
    return modulated_ce(logits, targets, Terms(gate=gate), reduction)
