"""Classification losses for batched populations of classifiers.

Every loss works on logits ``[..., B, C]`` with int64 targets ``[..., B]``: the leading dims
are population members (``[N, B, C]`` trains N classifiers at once), but plain ``[B, C]`` /
``[B]`` works too (conventions: :mod:`lossgym.losses.functional`).

* :mod:`~lossgym.losses.functional`: the losses as functions, torchvision style (focal,
  class-balanced, LDAM, logit adjustment, Poly-1, FLSD-53, AdaFocal, AdaLoss, the gradient gate);
* :mod:`~lossgym.losses.parametric`: the engine's parametric loss (:func:`parametric_loss`) and
  the one criterion that the environment, the methods and ``AdaptiveLoss`` call
  (:class:`ParametricCriterion`);
* :mod:`~lossgym.losses.modules`: ``nn.Module`` wrappers and the stateful losses;
* ``_kernel``: the modulated cross-entropy that all of them compute, in torch with the C
  extension as its fast path.
"""

from lossgym.losses._kernel import NATIVE_MAX_NUMEL, Terms, modulated_ce
from lossgym.losses.functional import (
    adafocal_loss,
    adafocal_update,
    adaloss,
    calibration_bin_stats,
    class_balanced_weights,
    drw_weights,
    equal_mass_bin_edges,
    flsd53_gamma,
    flsd53_loss,
    focal_loss,
    gradient_gate_weights,
    gradient_gated_cross_entropy,
    ldam_loss,
    ldam_margins,
    logit_adjusted_cross_entropy,
    poly1_cross_entropy,
    power_class_weights,
    sigmoid_focal_loss,
    weighted_cross_entropy,
)
from lossgym.losses.modules import AdaFocalLoss, AdaLoss, FocalLoss, LDAMLoss, ParametricLoss
from lossgym.losses.parametric import ParametricCriterion, loss_terms, parametric_loss

__all__ = [
    "NATIVE_MAX_NUMEL", "Terms", "modulated_ce", "adafocal_loss", "adafocal_update", "adaloss",
    "calibration_bin_stats", "class_balanced_weights", "drw_weights", "equal_mass_bin_edges",
    "flsd53_gamma", "flsd53_loss", "focal_loss", "gradient_gate_weights",
    "gradient_gated_cross_entropy", "ldam_loss", "ldam_margins", "logit_adjusted_cross_entropy",
    "poly1_cross_entropy", "power_class_weights", "sigmoid_focal_loss", "weighted_cross_entropy",
    "AdaFocalLoss", "AdaLoss", "FocalLoss", "LDAMLoss", "ParametricLoss", "ParametricCriterion",
    "loss_terms", "parametric_loss",
]
