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

Logarithms are of x + 1e-6. Before the first training step (at reset) the train loss is the
validation loss and the gradient features are those of a zero gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

FEATURE_VERSION = 1
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


@dataclass(frozen=True)
class FeatureSpec:
    """Names and bounds of the observation for a set of controlled parameters."""

    parameters: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return (
            tuple(name for name, _, _ in BASE_FEATURES)
            + tuple(f"param_{p}" for p in self.parameters)
            + tuple(f"change_{p}" for p in self.parameters)
        )

    @property
    def dim(self) -> int:
        return len(BASE_FEATURES) + 2 * len(self.parameters)

    def bounds(self) -> tuple[list[float], list[float]]:
        """Lower and upper bounds, one per feature."""
        d = len(self.parameters)
        low = [lo for _, lo, _ in BASE_FEATURES] + [-1.0] * d + [-2.0] * d
        high = [hi for _, _, hi in BASE_FEATURES] + [1.0] * d + [2.0] * d
        return low, high

    def to_dict(self) -> dict:
        return {"version": FEATURE_VERSION, "names": list(self.names)}


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
) -> Tensor:
    """The observation ``[N, D]`` (float32), clipped into ``spec.bounds()``.

    Args:
        spec: which parameters are controlled.
        progress, train_loss, grad_norm, grad_norm_std, imbalance: ``[N]``.
        val_metrics: :func:`lossgym.metrics.classification_metrics` output on validation.
        params: current loss parameters rescaled to [−1, 1], ``[N, d]``.
        last_change: their change at the last step, ``[N, d]``.
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
    obs = torch.cat([torch.stack([c.float() for c in columns], dim=-1), params.float(),
                     last_change.float()], dim=-1)
    low, high = spec.bounds()
    low_t = torch.tensor(low, device=obs.device)
    high_t = torch.tensor(high, device=obs.device)
    obs = torch.nan_to_num(obs, nan=0.0, posinf=float(max(high)), neginf=float(min(low)))
    return torch.minimum(torch.maximum(obs, low_t), high_t)
