"""Batched classification metrics for a population of classifiers.

Every function takes tensors with arbitrary leading *member* dimensions ``[...]`` (for a
population usually ``[N]``) followed by a sample dimension ``V`` (and a class dimension ``C``
for logits), and returns one value per member with leading shape ``[...]``. Nothing loops
over members or samples in Python: per-member counts are taken with a single 1-D
``scatter_add_`` into a buffer that gives every member its own slots, so one member's values
(NaN logits of a diverged network included) can never leak into another member's result.
No function reads data back to the host.

Definitions follow scikit-learn, which the tests use as the reference:

* ``accuracy``: fraction of samples whose argmax prediction equals the target.
* ``balanced_accuracy``: mean recall over the classes present in the targets
  (``sklearn.metrics.balanced_accuracy_score``).
* ``macro_f1``: mean F1 over the classes that appear in the targets *or* the predictions,
  F1 being 0 where it is 0/0 (``f1_score(average="macro", zero_division=0)``).
* ``worst_class_recall``: minimum recall over the classes present in the targets.
* ``per_class_recall``: recall of every class 0..C-1, **0 for classes absent from the
  targets**; ``class_present`` marks which classes actually occur, so callers can tell a
  genuine 0 from an absent class.
* ``nll``: mean cross-entropy of the softmax of the logits (natural log).
* ``ece``: expected calibration error, see :func:`expected_calibration_error`.
* ``soft_balanced_accuracy`` (not in :func:`classification_metrics`; see
  :func:`soft_balanced_accuracy`): balanced accuracy's smooth counterpart, the mean over the
  classes present of the softmax probability of the true class after temperature scaling.

Predictions are ``logits.argmax(-1)``; ties go to the lowest class index, as in
``numpy.argmax``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lossgym import _checks as checks
from lossgym.losses._kernel import check_target_bounds

__all__ = [
    "calibration_bins",
    "classification_metrics",
    "confusion_matrix",
    "expected_calibration_error",
    "fit_temperature",
    "metrics_from_confusion",
    "soft_balanced_accuracy",
]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Floating dtype for counts and ratios: at least float32.

    Half precision represents integers exactly only up to 2048, so counting samples in it
    would be wrong for ordinary validation sets.
    """
    if not dtype.is_floating_point:
        return torch.float32
    return torch.promote_types(dtype, torch.float32)


def _broadcast_targets(targets: Tensor, batch_shape: torch.Size) -> Tensor:
    """Broadcast targets (``[V]`` shared, or ``[..., V]``) to ``batch_shape = [..., V]``."""
    if targets.dim() < 1 or targets.shape[-1] != batch_shape[-1]:
        raise ValueError(
            f"targets of shape {tuple(targets.shape)} do not match {batch_shape[-1]} samples; "
            f"expected [V] or [..., V] broadcastable to {tuple(batch_shape)}"
        )
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor, got {targets.dtype}")
    try:
        shape = torch.broadcast_shapes(targets.shape, batch_shape)
    except RuntimeError as err:
        raise ValueError(
            f"targets of shape {tuple(targets.shape)} do not broadcast to {tuple(batch_shape)}"
        ) from err
    if shape != batch_shape:
        raise ValueError(
            f"targets of shape {tuple(targets.shape)} have more members than {tuple(batch_shape)}"
        )
    return targets.broadcast_to(batch_shape)


def _tensors(**values: object) -> None:
    """A ``TypeError`` naming the first of ``values`` that is not a tensor."""
    for name, value in values.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")


def _logits_and_targets(logits: Tensor, targets: Tensor, what: str = "logits") -> None:
    """Floating logits ``[..., V, C]`` and integer targets in [0, C) (their bounds on the CPU
    only, as the losses check them: on CUDA that would be a host sync)."""
    _tensors(**{what: logits, "targets": targets})
    if logits.dim() < 2:
        raise ValueError(f"{what} must have shape [..., V, C], got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"{what} must be floating point, got {logits.dtype}")
    _broadcast_targets(targets, logits.shape[:-1])
    check_target_bounds(targets, logits.shape[-1])


def _member_offsets(n_members: int, stride: int, device: torch.device) -> Tensor:
    """``[M, 1]`` start index of each member's slots in a flat ``[M * stride]`` buffer."""
    return (torch.arange(n_members, device=device) * stride).unsqueeze(-1)


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Batched confusion matrices.

    Args:
        preds: integer predictions ``[..., V]``.
        targets: integer targets ``[V]`` (shared by all members) or ``[..., V]``.
        num_classes: number of classes C.

    Returns:
        int64 tensor ``[..., C, C]``; entry ``[..., i, j]`` counts samples with target ``i``
        predicted as ``j`` (rows are true classes, as in ``sklearn.metrics.confusion_matrix``).
        Pairs whose prediction or target lies outside ``[0, C)`` are not counted: checking
        would need a host sync, and dropping them keeps them out of other members' slots.
    """
    checks.integer("num_classes", num_classes, 1)
    _tensors(preds=preds, targets=targets)
    if preds.dim() < 1:
        raise ValueError("preds must have a sample dimension: expected shape [..., V]")
    if preds.is_floating_point() or preds.is_complex() or preds.dtype == torch.bool:
        # Most likely logits or probabilities passed by mistake; argmax them first.
        raise TypeError(f"preds must be an integer tensor of class indices, got {preds.dtype}")
    batch_shape = preds.shape[:-1]
    n_samples = preds.shape[-1]
    n_members = math.prod(batch_shape)
    targets = _broadcast_targets(targets, preds.shape)
    preds = preds.reshape(n_members, n_samples).long()
    targets = targets.reshape(n_members, n_samples).long()

    c = num_classes
    valid = (preds >= 0) & (preds < c) & (targets >= 0) & (targets < c)
    # Clamping keeps invalid pairs' indices inside their own member's block; their weight is 0.
    flat = (
        _member_offsets(n_members, c * c, preds.device)
        + targets.clamp(0, c - 1) * c
        + preds.clamp(0, c - 1)
    )
    counts = torch.zeros(n_members * c * c, dtype=torch.long, device=preds.device)
    # 1-D scatter_add_ has a deterministic CUDA path, unlike bincount (which also syncs).
    counts.scatter_add_(0, flat.reshape(-1), valid.reshape(-1).long())
    return counts.reshape(*batch_shape, c, c)


def metrics_from_confusion(
    confusion: Tensor, dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """Count-based metrics from confusion matrices ``[..., C, C]`` (rows true, columns predicted).

    Confusion matrices can be summed over evaluation batches before calling this, which gives
    exactly the metrics of the whole evaluation set.

    Args:
        confusion: counts ``[..., C, C]`` as returned by :func:`confusion_matrix`.
        dtype: floating dtype of the results.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``worst_class_recall`` (each
        ``[...]``), ``per_class_recall`` ``[..., C]`` (0 for classes absent from the targets)
        and ``class_present`` ``[..., C]`` (bool, class occurs in the targets). A member with
        no samples gets NaN for the scalar metrics.
    """
    if confusion.dim() < 2 or confusion.shape[-1] != confusion.shape[-2]:
        raise ValueError(f"confusion must have shape [..., C, C], got {tuple(confusion.shape)}")
    cm = confusion.to(dtype)
    tp = cm.diagonal(dim1=-2, dim2=-1)
    support = cm.sum(-1)  # samples per true class
    predicted = cm.sum(-2)  # samples per predicted class
    present = support > 0

    # Counts are integers, so clamp_min(1) only touches the 0/0 entries, whose tp is 0: they
    # become 0 without producing NaNs that would need masking.
    recall = tp / support.clamp_min(1)
    accuracy = tp.sum(-1) / support.sum(-1)
    balanced_accuracy = recall.sum(-1) / present.sum(-1).to(dtype)

    # F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted); sklearn averages it over the
    # union of labels seen in targets and predictions.
    f1_denominator = support + predicted
    f1 = 2 * tp / f1_denominator.clamp_min(1)
    labels = f1_denominator > 0
    macro_f1 = f1.sum(-1) / labels.sum(-1).to(dtype)

    worst = recall.masked_fill(~present, math.inf).amin(-1)
    worst = torch.where(present.any(-1), worst, torch.full_like(worst, math.nan))
    return {
        "accuracy": accuracy,
        "balanced_accuracy": balanced_accuracy,
        "macro_f1": macro_f1,
        "worst_class_recall": worst,
        "per_class_recall": recall,
        "class_present": present,
    }


def calibration_bins(
    confidences: Tensor, correct: Tensor, n_bins: int = 15
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin sums for reliability diagrams and ECE.

    Bins are equal-width over [0, 1] with edges ``b / n_bins`` and right-closed: bin ``b``
    holds confidences in ``(b / n_bins, (b + 1) / n_bins]``, except that the first bin also
    holds 0. Confidences below 0 fall in the first bin and above 1 in the last one.

    Args:
        confidences: ``[..., V]`` floating confidences of the predictions.
        correct: ``[..., V]`` (or broadcastable to it) whether each prediction is right
            (bool or 0/1).
        n_bins: number of bins.

    Returns:
        ``(count, confidence_sum, correct_sum)``, each ``[..., n_bins]`` in the floating
        dtype of the computation. They can be summed over evaluation batches.
    """
    checks.integer("n_bins", n_bins, 1)
    _tensors(confidences=confidences, correct=correct)
    if confidences.dim() < 1:
        raise ValueError("confidences must have a sample dimension: expected shape [..., V]")
    dtype = _work_dtype(confidences.dtype)
    confidences = confidences.to(dtype)
    try:
        correct = correct.to(dtype).broadcast_to(confidences.shape)
    except RuntimeError:
        raise ValueError(f"correct of shape {tuple(correct.shape)} does not broadcast to the "
                         f"confidences' {tuple(confidences.shape)}") from None
    batch_shape = confidences.shape[:-1]
    n_samples = confidences.shape[-1]
    n_members = math.prod(batch_shape)
    device = confidences.device

    # Inner edges b / n_bins; bucketize(right=False) returns b with edge[b-1] < x <= edge[b],
    # which is exactly the right-closed convention. Edges are computed by division rather
    # than linspace so that they are the correctly rounded b / n_bins.
    inner_edges = (torch.arange(1, n_bins, device=device, dtype=torch.float64) / n_bins).to(dtype)
    # NaN confidences bucket somewhere arbitrary; the clamp keeps them in their member's block.
    bins = torch.bucketize(confidences, inner_edges, right=False).clamp_(0, n_bins - 1)
    flat = _member_offsets(n_members, n_bins, device) + bins.reshape(n_members, n_samples)
    flat = flat.reshape(-1)

    def per_bin_sum(values: Tensor) -> Tensor:
        out = torch.zeros(n_members * n_bins, dtype=dtype, device=device)
        out.scatter_add_(0, flat, values.reshape(-1))
        return out.reshape(*batch_shape, n_bins)

    count = per_bin_sum(torch.ones_like(confidences))
    return count, per_bin_sum(confidences), per_bin_sum(correct)


def expected_calibration_error(confidences: Tensor, correct: Tensor, n_bins: int = 15) -> Tensor:
    """Expected calibration error ``sum_b (n_b / V) * |acc_b - conf_b|``.

    ``acc_b`` and ``conf_b`` are the accuracy and mean confidence of the samples in bin ``b``;
    binning is that of :func:`calibration_bins` (equal-width, right-closed ``(lo, hi]``, the
    first bin including 0). Since ``(n_b / V) * |acc_b - conf_b| = |sum(correct) -
    sum(conf)|_b / V``, empty bins contribute 0 without a division.

    Args:
        confidences: ``[..., V]`` confidences (usually the max softmax probability).
        correct: ``[..., V]`` whether each prediction is right (bool or 0/1).
        n_bins: number of bins.

    Returns:
        ``[...]`` ECE per member (NaN for a member with no samples or non-finite confidences).
    """
    count, confidence_sum, correct_sum = calibration_bins(confidences, correct, n_bins)
    return (correct_sum - confidence_sum).abs().sum(-1) / count.sum(-1)


def classification_metrics(
    logits: Tensor, targets: Tensor, num_classes: int | None = None, n_bins: int = 15
) -> dict[str, Tensor]:
    """All metrics of a population from its logits.

    Args:
        logits: ``[..., V, C]`` logits (e.g. ``[N, V, C]`` for N members); detached here, so
            the results never carry autograd history.
        targets: integer targets in ``[0, C)``, ``[V]`` (shared by all members) or
            ``[..., V]``. Out-of-range targets raise ``IndexError`` on the CPU (the losses'
            message) and trigger a device-side assert on CUDA (from the NLL gather);
            checking them there up front would need a host sync.
        num_classes: optional check that ``logits.shape[-1]`` is the expected C; the class
            count always comes from the logits, because NLL needs a logit for every class.
        n_bins: number of ECE confidence bins.

    Returns:
        Tensors with leading shape ``[...]``: ``accuracy``, ``balanced_accuracy``,
        ``macro_f1``, ``ece``, ``nll``, ``worst_class_recall``; and ``per_class_recall``
        ``[..., C]`` (0 where the class is absent from the targets) and ``class_present``
        ``[..., C]`` (bool). Floating results are float32, or float64 for float64 logits.
        A member with non-finite logits gets NaN (or otherwise meaningless) values without
        affecting other members.
    """
    _logits_and_targets(logits, targets)
    c = logits.shape[-1]
    if num_classes is not None and num_classes != c:
        raise ValueError(f"num_classes={num_classes} but logits have {c} classes")
    dtype = _work_dtype(logits.dtype)
    logits = logits.detach().to(dtype)
    targets = _broadcast_targets(targets, logits.shape[:-1]).long()

    log_probs = torch.log_softmax(logits, dim=-1)
    preds = logits.argmax(dim=-1)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).mean(-1)
    # The confidence of the predicted class is the max softmax probability; gathering it at
    # the argmax (rather than taking max of probs separately) keeps the two consistent on ties.
    confidences = log_probs.gather(-1, preds.unsqueeze(-1)).squeeze(-1).exp()
    ece = expected_calibration_error(confidences, preds == targets, n_bins)

    metrics = metrics_from_confusion(confusion_matrix(preds, targets, c), dtype)
    metrics["ece"] = ece
    metrics["nll"] = nll
    return metrics


@torch.no_grad()
def fit_temperature(val_logits: Tensor, val_targets: Tensor, steps: int = 48) -> Tensor:
    """Temperature scaling (Guo et al., ICML 2017): per member, the T > 0 that minimises the
    validation NLL of ``logits / T``.

    A log-spaced grid over [0.05, 20] is refined twice around its best point (the NLL is
    unimodal in log T), batched over the leading member dims.

    Args:
        val_logits: ``[..., V, C]``.
        val_targets: ``[V]`` or ``[..., V]``.
        steps: grid points per refinement.

    Returns:
        ``[...]`` temperatures.
    """
    _logits_and_targets(val_logits, val_targets, "val_logits")
    checks.integer("steps", steps, 2)
    logits = val_logits.detach().float()
    targets = _broadcast_targets(val_targets, logits.shape[:-1]).long()
    lead = logits.shape[:-2]
    lo = torch.full(lead, math.log(0.05), device=logits.device)
    hi = torch.full(lead, math.log(20.0), device=logits.device)
    for _ in range(3):
        frac = torch.linspace(0.0, 1.0, steps, device=logits.device)
        grid = lo.unsqueeze(-1) + (hi - lo).unsqueeze(-1) * frac  # [..., G]
        temps = grid.exp()
        scaled = logits.unsqueeze(-3) / temps[..., None, None]  # [..., G, V, C]
        logp = torch.log_softmax(scaled, dim=-1)
        nll = -logp.gather(-1, targets.unsqueeze(-2).unsqueeze(-1).expand(
            *scaled.shape[:-1], 1)).squeeze(-1).mean(-1)  # [..., G]
        nll = torch.nan_to_num(nll, nan=float("inf"))
        best = nll.argmin(-1, keepdim=True)
        width = (hi - lo) / (steps - 1)
        centre = grid.gather(-1, best).squeeze(-1)
        lo, hi = centre - width, centre + width
    return centre.exp()


@torch.no_grad()
def soft_balanced_accuracy(logits: Tensor, targets: Tensor, temperature: Tensor | None = None
                           ) -> Tensor:
    """The class-balanced mean softmax probability of the true class: balanced accuracy with
    each sample's 0/1 hit replaced by the probability the calibrated model gives its label.

    A sample near the decision boundary counts about 1/2 whichever side it falls, so the
    value moves little when training's chaos flips such samples, which moves balanced
    accuracy by whole samples (``scripts/noise_floor.py``). The softmax is taken after
    temperature scaling, which makes the value independent of the logits' scale (a loss with
    a logit scale s trains logits s times smaller): ``temperature`` per member, or, when
    None, the one :func:`fit_temperature` fits on these logits.

    Args:
        logits: ``[..., V, C]``.
        targets: ``[V]`` or ``[..., V]`` integer targets in ``[0, C)``.
        temperature: ``[...]`` temperatures, or None.

    Returns:
        ``[...]`` values in [0, 1], float32 (float64 for float64 logits).
    """
    _logits_and_targets(logits, targets)
    if temperature is not None:
        _tensors(temperature=temperature)
    dtype = _work_dtype(logits.dtype)
    logits = logits.detach().to(dtype)
    targets = _broadcast_targets(targets, logits.shape[:-1]).long()
    if temperature is None:
        temperature = fit_temperature(logits, targets)
    scaled = logits / temperature.to(dtype)[..., None, None]
    hit = torch.softmax(scaled, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    c = logits.shape[-1]
    onehot = torch.nn.functional.one_hot(targets, c).to(dtype)  # [..., V, C]
    support = onehot.sum(-2)
    per_class = (hit.unsqueeze(-1) * onehot).sum(-2) / support.clamp_min(1)
    return per_class.sum(-1) / (support > 0).sum(-1).to(dtype)
