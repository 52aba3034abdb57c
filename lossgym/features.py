"""Observation features of a training run, the same code for the env and for exported losses.

Every feature is independent of the dataset (no raw sizes or class counts), so one policy can
move between tasks. Each is clipped to its documented bounds and non-finite values become the
bound's nearest finite value, so an observation always lies in its space.

| # | name                   | definition                                              | bounds    |
|---|------------------------|---------------------------------------------------------|-----------|
| 0 | progress               | fraction of the training budget done                    | [0, 1]    |
| 1 | log_train_loss         | ln(mean plain cross-entropy of the step's minibatches)  | [−14, 5]  |
| 2 | log_val_loss           | ln(validation NLL)                                      | [−14, 5]  |
| 3 | val_accuracy           | validation accuracy                                     | [0, 1]    |
| 4 | val_balanced_accuracy  | validation balanced accuracy                            | [0, 1]    |
| 5 | val_worst_recall       | lowest per-class validation recall                      | [0, 1]    |
| 6 | val_macro_f1           | validation macro-F1                                     | [0, 1]    |
| 7 | val_ece                | validation expected calibration error (15 bins)         | [0, 1]    |
| 8 | log_grad_norm          | ln(mean gradient L2 norm over the step's minibatches)   | [−14, 8]  |
| 9 | grad_norm_cv           | std / mean of those gradient norms                      | [0, 10]   |
|10 | log_imbalance          | ln(max_c n_c / min_c n_c) / ln 1000, observed labels    | [0, 2]    |
|11…| param_<name>           | current loss parameters, rescaled to [−1, 1]            | [−1, 1]   |
|  …| change_<name>          | their change at the last step, in the same units        | [−2, 2]   |
|  …| context features       | the training set-up (version 2, below)                  |           |

Logarithms are of x + 1e-6. Before the first training step (at reset) the train loss is the
validation loss and the gradient features are those of a zero gradient.

Version 2 adds the training set-up (:data:`CONTEXT_FEATURES`, :func:`context_values`), so
that a policy can tell regimes apart without reading them off the training curves: what a
user of an exported loss knows before training (see :class:`lossgym.export.AdaptiveLoss`).

| name             | definition                                                 | bounds     |
|------------------|------------------------------------------------------------|------------|
| ctx_log_train_size | ln(training samples)                                     | [0, 16]    |
| ctx_log_classes  | ln(number of classes)                                      | [0, 8]     |
| ctx_log_lr       | log10(learning rate)                                       | [−8, 1]    |
| ctx_weight_decay | weight decay                                               | [0, 1]     |
| ctx_log_batch    | log2(batch size)                                           | [0, 16]    |
| ctx_log_epochs   | ln(budget in epochs: minibatches × batch size / samples)   | [−4, 8]    |
| ctx_cnn          | 1 for a convolutional network, 0 for an MLP                | [0, 1]     |
| ctx_log_width    | log2(width: hidden units or channels of the first layer)   | [0, 16]    |

Version 1 (exports made before it) has no context features. Version 3 (the env's
``progress_basis=True``) appends :data:`BASIS_FEATURES` to version 2: ``progress_hat_0`` …
``progress_hat_3``, the hat functions of progress at the knots 0, ⅓, ⅔ and 1
(:func:`progress_basis`), each in [0, 1], summing to 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lossgym.tasks import TaskSpec

FEATURE_VERSION = 2
_EPS = 1e-6

BASE_FEATURES: tuple[tuple[str, float, float], ...] = (
    ("progress", 0.0, 1.0),
    ("log_train_loss", -14.0, 5.0),
    ("log_val_loss", -14.0, 5.0),
    ("val_accuracy", 0.0, 1.0),
    ("val_balanced_accuracy", 0.0, 1.0),
    ("val_worst_recall", 0.0, 1.0),
    ("val_macro_f1", 0.0, 1.0),
    ("val_ece", 0.0, 1.0),
    ("log_grad_norm", -14.0, 8.0),
    ("grad_norm_cv", 0.0, 10.0),
    ("log_imbalance", 0.0, 2.0),
)


CONTEXT_FEATURES: tuple[tuple[str, float, float], ...] = (
    ("ctx_log_train_size", 0.0, 16.0),
    ("ctx_log_classes", 0.0, 8.0),
    ("ctx_log_lr", -8.0, 1.0),
    ("ctx_weight_decay", 0.0, 1.0),
    ("ctx_log_batch", 0.0, 16.0),
    ("ctx_log_epochs", -4.0, 8.0),
    ("ctx_cnn", 0.0, 1.0),
    ("ctx_log_width", 0.0, 16.0),
)


#: Version 3 adds a piecewise-linear basis of progress: one hat function per knot, 1 at its
#: knot and 0 from the next knot on. A linear policy then plays any piecewise-linear schedule
#: with these knots (those of ``agents.baselines.KnotPolicy`` with 4 knots) besides its
#: reactions to the other features.
PROGRESS_KNOTS: tuple[float, ...] = (0.0, 1 / 3, 2 / 3, 1.0)
BASIS_FEATURES: tuple[tuple[str, float, float], ...] = tuple(
    (f"progress_hat_{i}", 0.0, 1.0) for i in range(len(PROGRESS_KNOTS)))
#: The feature versions this lossgym computes.
FEATURE_VERSIONS = (1, 2, 3)


def progress_basis(progress: Tensor) -> Tensor:
    """The hat functions of :data:`PROGRESS_KNOTS` at ``progress [N]``: ``[N, 4]``, each row
    summing to 1 on [0, 1]."""
    knots = torch.tensor(PROGRESS_KNOTS, dtype=torch.float64, device=progress.device)
    width = 1.0 / (len(PROGRESS_KNOTS) - 1)
    p = progress.double().clamp(0.0, 1.0).unsqueeze(-1)
    return (1.0 - (p - knots).abs() / width).clamp_min(0.0).float()


@dataclass(frozen=True)
class FeatureSpec:
    """Names and bounds of the observation for a set of controlled parameters; ``version``
    2 (the default) has the context features, 1 has not, 3 has them and the progress
    basis (:func:`progress_basis`)."""

    parameters: tuple[str, ...]
    version: int = FEATURE_VERSION

    def __post_init__(self) -> None:
        if self.version not in FEATURE_VERSIONS:
            raise ValueError(f"features version {self.version!r} is not supported; this "
                             f"lossgym computes versions {list(FEATURE_VERSIONS)}")

    @property
    def context(self) -> bool:
        return self.version >= 2

    def _table(self) -> list[tuple[str, float, float]]:
        d = self.parameters
        return (list(BASE_FEATURES) + [(f"param_{p}", -1.0, 1.0) for p in d]
                + [(f"change_{p}", -2.0, 2.0) for p in d]
                + (list(CONTEXT_FEATURES) if self.context else [])
                + (list(BASIS_FEATURES) if self.version >= 3 else []))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self._table())

    @property
    def dim(self) -> int:
        return len(self._table())

    @property
    def context_columns(self) -> list[int]:
        """The observation's columns of the context features, in :data:`CONTEXT_FEATURES`
        order (none in version 1; in version 3 the progress basis follows them)."""
        names = self.names
        return [names.index(n) for n, _, _ in CONTEXT_FEATURES] if self.context else []

    def bounds(self) -> tuple[list[float], list[float]]:
        """Lower and upper bounds, one per feature."""
        table = self._table()
        return [lo for _, lo, _ in table], [hi for _, _, hi in table]

    def to_dict(self) -> dict:
        return {"version": self.version, "names": list(self.names)}


def feature_version(context: bool, basis: bool = False) -> int:
    """The features version of an env's ``context_features`` and ``progress_basis``."""
    return 3 if basis else 2 if context else 1


def context_values(*, train_size: float, num_classes: int, lr: float, weight_decay: float,
                   batch_size: int, epochs: float, arch: str, width: int) -> list[float]:
    """The context features of a training set-up (the table above), unclipped."""
    return [math.log(max(train_size, 1.0)), math.log(max(num_classes, 1)),
            math.log10(max(lr, 1e-12)), float(weight_decay), math.log2(max(batch_size, 1)),
            math.log(max(epochs, 1e-6)), float(arch == "cnn"), math.log2(max(width, 1))]


def task_context_values(task: TaskSpec, train_size: float) -> list[float]:
    """The context features of the env's run of ``task`` on ``train_size`` samples: its
    set-up, and a budget of ``horizon × minibatches_per_step × batch_size / train_size``
    epochs."""
    return context_values(
        train_size=train_size, num_classes=task.num_classes, lr=task.lr,
        weight_decay=task.weight_decay, batch_size=task.batch_size,
        epochs=task.horizon * task.minibatches_per_step * task.batch_size / max(train_size, 1.0),
        arch=task.arch, width=task.width)


def _log(x: Tensor) -> Tensor:
    return torch.log(x.clamp_min(0.0) + _EPS)


def log_imbalance(class_counts: Tensor) -> Tensor:
    """ln(max n_c / min n_c) / ln 1000 per member from counts ``[N, C]`` (empty classes as 1)."""
    counts = class_counts.clamp_min(1.0)
    return torch.log(counts.amax(-1) / counts.amin(-1)) / math.log(1000.0)


def compute_features(
    spec: FeatureSpec,
    *,
    progress: Tensor,
    train_loss: Tensor,
    grad_norm: Tensor,
    grad_norm_std: Tensor,
    val_metrics: dict[str, Tensor],
    params: Tensor,
    last_change: Tensor,
    imbalance: Tensor,
    context: Tensor | None = None,
) -> Tensor:
    """The observation ``[N, D]`` (float32), clipped into ``spec.bounds()``.

    Args:
        spec: which parameters are controlled.
        progress, train_loss, grad_norm, grad_norm_std, imbalance: ``[N]``.
        val_metrics: :func:`lossgym.metrics.classification_metrics` output on validation.
        params: current loss parameters rescaled to [−1, 1], ``[N, d]``.
        last_change: their change at the last step, ``[N, d]``.
        context: the context features ``[N, 8]`` (:func:`context_values`), for version 2.
    """
    cv = grad_norm_std / (grad_norm + _EPS)
    columns: Sequence[Tensor] = (
        progress,
        _log(train_loss),
        _log(val_metrics["nll"]),
        val_metrics["accuracy"],
        val_metrics["balanced_accuracy"],
        val_metrics["worst_class_recall"],
        val_metrics["macro_f1"],
        val_metrics["ece"],
        _log(grad_norm),
        cv,
        imbalance,
    )
    parts = [torch.stack([c.float() for c in columns], dim=-1), params.float(),
             last_change.float()]
    if spec.context:
        if context is None:
            raise ValueError("features version 2 needs the context features")
        parts.append(context.float().to(parts[0].device))
    if spec.version >= 3:
        parts.append(progress_basis(progress).to(parts[0].device))
    obs = torch.cat(parts, dim=-1)
    low, high = spec.bounds()
    low_t = torch.tensor(low, device=obs.device)
    high_t = torch.tensor(high, device=obs.device)
    obs = torch.nan_to_num(obs, nan=0.0, posinf=float(max(high)), neginf=float(min(low)))
    return torch.minimum(torch.maximum(obs, low_t), high_t)
