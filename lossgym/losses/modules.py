"""Module wrappers of the loss functions, and the stateful losses (AdaFocal, AdaLoss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lossgym import _checks as checks
from lossgym import params as loss_params
from lossgym.losses._kernel import (
    check_range,
    check_reduction,
    check_targets,
    class_counts_values,
    reduce,
)
from lossgym.losses.functional import (
    adafocal_loss,
    adafocal_update,
    adaloss,
    calibration_bin_stats,
    equal_mass_bin_edges,
    focal_loss,
    ldam_loss,
)
from lossgym.losses.parametric import parametric_loss


def _store(module: nn.Module, name: str, value: float | Tensor | None) -> None:
    """Tensors become buffers (so ``.to(device)`` moves them); numbers stay plain floats."""
    if isinstance(value, Tensor):
        module.register_buffer(name, value.detach().clone())
    else:
        if value is not None:
            check_range(value, name)  # a finite number (its domain: the loss, when called)
        setattr(module, name, None if value is None else float(value))


def _fmt(value: object) -> str:
    if isinstance(value, Tensor):
        if value.numel() <= 8:
            return str([round(v, 4) for v in value.flatten().tolist()]) + (
                f" (shape {tuple(value.shape)})" if value.ndim != 1 else "")
        return f"tensor(shape={tuple(value.shape)})"
    return repr(value) if isinstance(value, str) else str(value)


class _Loss(nn.Module):
    """A loss module whose ``repr`` shows the attributes named in ``_shown``."""

    _shown: tuple[str, ...] = ()

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={_fmt(getattr(self, name))}" for name in self._shown)


class FocalLoss(_Loss):
    """Module wrapper of :func:`focal_loss`."""

    _shown = ("gamma", "alpha", "reduction", "eps")

    def __init__(self, gamma: float | Tensor = 2.0, alpha: float | Tensor | None = None,
                 reduction: str = "mean", eps: float = 1e-6) -> None:
        super().__init__()
        check_reduction(reduction)
        _store(self, "gamma", gamma)
        _store(self, "alpha", alpha)
        self.reduction = reduction
        self.eps = eps

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return focal_loss(logits, targets, self.gamma, self.alpha, self.reduction, self.eps)


class ParametricLoss(_Loss):
    """Module wrapper of :func:`parametric_loss`; parameters (the keywords of
    :mod:`lossgym.params`) can be reassigned between steps (``loss.gamma = 2.0``)."""

    _shown = (*loss_params.names(), "class_counts", "reduction")

    def __init__(self, class_counts: Tensor | None = None, reduction: str = "mean",
                 **values: float | Tensor) -> None:
        super().__init__()
        check_reduction(reduction)
        if class_counts is not None:
            class_counts_values(class_counts)  # a tensor of finite counts >= 0
        _store(self, "class_counts", class_counts)
        for p in loss_params.LOSS_PARAMS:
            _store(self, p.name, values.pop(p.name, p.neutral))
        if values:
            raise ValueError(f"unknown loss parameters {sorted(values)}; choose from "
                             f"{loss_params.names()}")
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return parametric_loss(logits, targets, self.class_counts, self.reduction,
                               **{p.name: getattr(self, p.name) for p in loss_params.LOSS_PARAMS})


class LDAMLoss(_Loss):
    """Module wrapper of :func:`ldam_loss`; ``weight`` can be set per epoch (e.g. from
    :func:`drw_weights`)."""

    _shown = ("max_margin", "scale", "weight", "class_counts", "reduction")

    def __init__(self, class_counts: Tensor, max_margin: float | Tensor = 0.5,
                 scale: float | Tensor = 30.0, weight: Tensor | None = None,
                 reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        class_counts_values(class_counts)  # a tensor of finite counts >= 0, [C] or [..., C]
        self.register_buffer("class_counts", class_counts.detach().clone())
        _store(self, "max_margin", max_margin)
        _store(self, "scale", scale)
        _store(self, "weight", weight)
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return ldam_loss(logits, targets, self.class_counts, self.max_margin, self.scale,
                         self.weight, self.reduction)


class AdaFocalLoss(_Loss):
    """Stateful AdaFocal (Ghosh et al., NeurIPS 2022): per-bin gammas and bin edges as buffers.

    Call :meth:`update` with validation logits/targets (the paper: once per epoch) to apply
    :func:`adafocal_update`; with ``equal_mass_bins=True`` (the paper's choice) the bin edges are
    first recomputed as equal-mass bins of the validation confidences, and those edges are
    then also used to bin training samples.  Initial edges are uniform on [0, 1].
    """

    _shown = ("n_bins", "gamma_bins", "lam", "switch_threshold", "gamma_min", "gamma_max",
              "equal_mass_bins", "reduction")

    def __init__(self, n_bins: int = 15, gamma_init: float = 1.0, num_members: int | None = None,
                 lam: float = 1.0, switch_threshold: float = 0.2, gamma_min: float = -2.0,
                 gamma_max: float = 20.0, equal_mass_bins: bool = True,
                 reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        n_bins = checks.integer("n_bins", n_bins, 1)
        gamma_init = checks.real("gamma_init", gamma_init)
        if num_members is not None:
            num_members = checks.integer("num_members", num_members, 1)
        lam = checks.real("lam", lam)
        switch_threshold = checks.real("switch_threshold", switch_threshold, 0.0)
        gamma_min = checks.real("gamma_min", gamma_min)
        gamma_max = checks.real("gamma_max", gamma_max, gamma_min)
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
        check_targets(val_logits, val_targets, "val_targets")
        if tuple(val_targets.shape[:-1]) != tuple(self.gamma_bins.shape[:-1]):
            raise ValueError(f"val_targets has shape {tuple(val_targets.shape)}, but the gamma "
                             f"state {tuple(self.gamma_bins.shape)} needs leading dims "
                             f"{tuple(self.gamma_bins.shape[:-1])}")
        if self.equal_mass_bins:
            conf = F.softmax(val_logits.float(), dim=-1).amax(dim=-1)
            edges = equal_mass_bin_edges(conf, self.n_bins)
            self.bin_edges.copy_(edges.to(self.bin_edges).expand_as(self.bin_edges))
        confidence, accuracy, _ = calibration_bin_stats(val_logits, val_targets, self.bin_edges)
        new = adafocal_update(self.gamma_bins, confidence, accuracy, self.lam,
                              self.switch_threshold, self.gamma_min, self.gamma_max)
        self.gamma_bins.copy_(new.expand_as(self.gamma_bins))


class AdaLoss(_Loss):
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

    _shown = ("num_classes", "num_members", "momentum", "eps", "reduction")

    def __init__(self, num_classes: int, momentum: float = 0.9, num_members: int | None = None,
                 eps: float = 1e-8, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        num_classes = checks.integer("num_classes", num_classes, 1)
        if num_members is not None:
            num_members = checks.integer("num_members", num_members, 1)
        momentum = checks.real("momentum", momentum, 0.0, 1.0, open_high=True)
        eps = checks.real("eps", eps, 0.0)
        shape = (num_classes,) if num_members is None else (num_members, num_classes)
        self.register_buffer("running_mean", torch.ones(shape))
        self.register_buffer("initialized", torch.zeros(shape, dtype=torch.bool))
        self.num_classes = num_classes
        self.num_members = num_members
        self.momentum = momentum
        self.eps = eps
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_targets(logits, targets)
        expected = tuple(targets.shape[:-1]) + (self.num_classes,)
        if tuple(self.running_mean.shape) != expected or logits.shape[-1] != self.num_classes:
            raise ValueError(f"AdaLoss state has shape {tuple(self.running_mean.shape)} but "
                             f"logits {tuple(logits.shape)} need {expected}")
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
        return reduce(adaloss(per_class, m, self.eps, present), self.reduction)
