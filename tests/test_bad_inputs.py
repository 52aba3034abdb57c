"""Bad and edge-case inputs (issue 14, "A user's first hour"): every loss checks its targets with
one message, treats an empty batch the same way, reads all-zero class counts as unknown (equal
counts) and refuses values outside their domain with a ValueError that names them."""

import math
import re
from functools import partial

import pytest
import torch

from lossgym.losses import (
    AdaFocalLoss,
    AdaLoss,
    FocalLoss,
    LDAMLoss,
    ParametricLoss,
    adafocal_loss,
    calibration_bin_stats,
    class_balanced_weights,
    drw_weights,
    flsd53_gamma,
    flsd53_loss,
    focal_loss,
    gradient_gate_weights,
    gradient_gated_cross_entropy,
    ldam_loss,
    ldam_margins,
    logit_adjusted_cross_entropy,
    parametric_loss,
    poly1_cross_entropy,
    power_class_weights,
    sigmoid_focal_loss,
    weighted_cross_entropy,
)
from lossgym.methods import METHODS, make_method
from lossgym.population import MinibatchContext

C = 5
COUNTS = torch.tensor([40.0, 20.0, 10.0, 5.0, 1.0])
EDGES = torch.tensor([0.0, 0.5, 1.0])

#: Every public loss of logits and targets, with a reduction.
LOSSES = {
    "focal": lambda z, t, r: focal_loss(z, t, reduction=r),
    "focal_alpha": lambda z, t, r: focal_loss(z, t, alpha=torch.ones(C), reduction=r),
    "weighted_ce": lambda z, t, r: weighted_cross_entropy(z, t, reduction=r),
    "weighted_ce_w": lambda z, t, r: weighted_cross_entropy(z, t, COUNTS, reduction=r),
    "logit_adjusted": lambda z, t, r: logit_adjusted_cross_entropy(z, t, COUNTS, reduction=r),
    "poly1": lambda z, t, r: poly1_cross_entropy(z, t, reduction=r),
    "ldam": lambda z, t, r: ldam_loss(z, t, COUNTS, reduction=r),
    "flsd53": lambda z, t, r: flsd53_loss(z, t, reduction=r),
    "gradient_gated": lambda z, t, r: gradient_gated_cross_entropy(z, t, 1.0, reduction=r),
    "adafocal": lambda z, t, r: adafocal_loss(z, t, torch.ones(2), EDGES, reduction=r),
    "parametric_ce": lambda z, t, r: parametric_loss(z, t, reduction=r),
    "parametric": lambda z, t, r: parametric_loss(z, t, COUNTS, r, gamma=1.0, alpha=0.5),
    "parametric_gate": lambda z, t, r: parametric_loss(z, t, reduction=r, gate=1.0),
    "FocalLoss": lambda z, t, r: FocalLoss(reduction=r)(z, t),
    "ParametricLoss": lambda z, t, r: ParametricLoss(COUNTS, r, tau=1.0)(z, t),
    "LDAMLoss": lambda z, t, r: LDAMLoss(COUNTS, reduction=r)(z, t),
    "AdaFocalLoss": lambda z, t, r: AdaFocalLoss(2, reduction=r)(z, t),
}
#: Functions of logits and targets that are not losses but index with the targets.
TARGET_FUNCTIONS = {
    "flsd53_gamma": lambda z, t: flsd53_gamma(z, t),
    "gradient_gate_weights": lambda z, t: gradient_gate_weights(z, t, 1.0),
    "calibration_bin_stats": lambda z, t: calibration_bin_stats(z, t, EDGES),
    "AdaLoss": lambda z, t: AdaLoss(C)(z, t),
}
ALL = {**{k: partial(f, r="mean") for k, f in LOSSES.items()}, **TARGET_FUNCTIONS}


def _logits(shape=(6,)):
    return torch.randn(*shape, C, generator=torch.Generator().manual_seed(0))


@pytest.fixture(params=["compiled", "torch"])
def kernels(request, torch_kernels):
    """Each test runs with the C extension (where it takes the inputs) and without."""
    if request.param == "torch":
        with torch_kernels():
            yield
    else:
        yield


# ------------------------------------------------------------------------------- targets
@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("bad, sample", [(5, 3), (-1, 3), (-100, 2), (7, 0)])
def test_out_of_range_targets_raise_the_same_index_error(name, bad, sample, kernels):
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    targets[sample] = bad
    message = f"Target {bad} is out of bounds [0, {C}) (sample {sample})"
    with pytest.raises(IndexError, match=re.escape(message)):
        ALL[name](_logits(), targets)


@pytest.mark.parametrize("name", sorted(ALL))
def test_the_sample_counts_in_the_flattened_targets_of_a_population(name, kernels):
    if name in ("AdaLoss",):  # its state is per member: one member's worth
        pytest.skip("AdaLoss without members takes [B] targets")
    targets = torch.zeros(2, 6, dtype=torch.long)
    targets[1, 2] = C
    with pytest.raises(IndexError, match=re.escape(f"Target {C} is out of bounds [0, {C}) "
                                                   "(sample 8)")):
        ALL[name](_logits((2, 6)), targets)


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.uint8])
def test_targets_of_another_dtype_raise_naming_it(name, dtype, kernels):
    targets = torch.tensor([0, 1, 2, 3, 4, 0]).to(dtype)
    with pytest.raises(ValueError, match=rf"targets must be int64 class indices in \[0, 5\), "
                                         rf"got dtype {re.escape(str(dtype))}"):
        ALL[name](_logits(), targets)


def test_integer_logits_raise_naming_them():
    with pytest.raises(ValueError, match="logits must be floating point, got torch.int64"):
        focal_loss(torch.zeros(4, C, dtype=torch.long), torch.zeros(4, dtype=torch.long))


# ------------------------------------------------------------------------------- empty batch
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("shape", [(0,), (3, 0)])
def test_an_empty_batch_is_zero_with_a_zero_gradient(name, shape, kernels):
    if name == "AdaFocalLoss" and len(shape) > 1:
        pytest.skip("its γ state has no member dim")
    for reduction in ("mean", "sum"):
        logits = torch.randn(*shape, C, requires_grad=True)
        out = LOSSES[name](logits, torch.zeros(shape, dtype=torch.long), reduction)
        assert out.shape == () and out.item() == 0.0
        (grad,) = torch.autograd.grad(out, logits, allow_unused=True)
        assert grad is None or (grad.shape == logits.shape and not grad.any())
    out = LOSSES[name](torch.randn(*shape, C), torch.zeros(shape, dtype=torch.long), "none")
    assert out.shape == shape


def test_sigmoid_focal_and_adaloss_of_an_empty_batch_are_zero():
    assert sigmoid_focal_loss(torch.zeros(0), torch.zeros(0), reduction="mean").item() == 0.0
    assert AdaLoss(C)(torch.zeros(0, C), torch.zeros(0, dtype=torch.long)).item() == 0.0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_gives_zero_for_a_member_with_an_empty_batch(name):
    method = make_method(name, num_members=2, num_classes=C)
    ctx = MinibatchContext(torch.full((2,), 0.9), COUNTS.expand(2, C))
    out = method(torch.randn(2, 0, C), torch.zeros(2, 0, dtype=torch.long), ctx)
    assert out.tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------------- class counts
COUNT_FUNCTIONS = {
    "parametric_alpha": lambda n: parametric_loss(_logits(), torch.arange(6) % C, n, alpha=0.5),
    "parametric_tau": lambda n: parametric_loss(_logits(), torch.arange(6) % C, n, tau=1.0),
    "parametric_margin": lambda n: parametric_loss(_logits(), torch.arange(6) % C, n,
                                                   margin=0.5, scale=10.0),
    "parametric_all": lambda n: parametric_loss(_logits(), torch.arange(6) % C, n, gamma=1.0,
                                                alpha=1.0, tau=1.0, margin=0.5),
    "logit_adjusted": lambda n: logit_adjusted_cross_entropy(_logits(), torch.arange(6) % C, n),
    "ldam": lambda n: ldam_loss(_logits(), torch.arange(6) % C, n),
    "power_class_weights": lambda n: power_class_weights(n, 0.5),
    "class_balanced_weights": lambda n: class_balanced_weights(n, 0.99),
    "drw_weights": lambda n: drw_weights(n, 1.0),
    "ldam_margins": lambda n: ldam_margins(n),
}


@pytest.mark.parametrize("name", sorted(COUNT_FUNCTIONS))
def test_all_zero_counts_read_as_equal_counts(name, kernels):
    zero = COUNT_FUNCTIONS[name](torch.zeros(C))
    assert bool(torch.isfinite(zero).all())
    torch.testing.assert_close(zero, COUNT_FUNCTIONS[name](torch.ones(C)))


def test_all_zero_counts_mean_uniform_weights_and_no_adjustment():
    assert power_class_weights(torch.zeros(C), 0.5).tolist() == [1.0] * C
    z, y = _logits(), torch.arange(6) % C
    plain = torch.nn.functional.cross_entropy(z, y)
    torch.testing.assert_close(parametric_loss(z, y, torch.zeros(C), alpha=0.7, tau=1.5), plain)
    # Per member: only the member whose counts are all zero reads them as equal.
    counts = torch.stack([torch.zeros(C), COUNTS])
    w = power_class_weights(counts, 1.0)
    assert w[0].tolist() == [1.0] * C
    torch.testing.assert_close(w[1], power_class_weights(COUNTS, 1.0))


@pytest.mark.parametrize("name", sorted(COUNT_FUNCTIONS))
@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_negative_or_non_finite_counts_raise_naming_them(name, bad, kernels):
    counts = COUNTS.clone()
    counts[2] = bad
    with pytest.raises(ValueError, match=rf"class_counts holds {bad!r}.*>= 0"):
        COUNT_FUNCTIONS[name](counts)


def test_per_member_counts_are_checked_for_every_member():
    counts = torch.stack([COUNTS, COUNTS])
    counts[1, 0] = -3
    with pytest.raises(ValueError, match="class_counts holds -3.0"):
        parametric_loss(_logits((2, 6)), torch.zeros(2, 6, dtype=torch.long), counts, alpha=1.0)


# ------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("call, needle", [
    (lambda z, t: focal_loss(z, t, gamma=math.nan), "gamma=nan"),
    (lambda z, t: focal_loss(z, t, gamma=-0.5), "gamma=-0.5"),
    (lambda z, t: focal_loss(z, t, gamma=torch.tensor([1.0, -2.0])), "gamma holds -2.0"),
    (lambda z, t: FocalLoss(gamma=math.inf)(z, t), "gamma=inf"),
    (lambda z, t: parametric_loss(z, t, gamma=math.nan), "gamma=nan"),
    (lambda z, t: parametric_loss(z, t, gamma=-1.0), "gamma=-1.0"),
    (lambda z, t: parametric_loss(z, t, COUNTS, alpha=math.nan), "alpha=nan"),
    (lambda z, t: parametric_loss(z, t, COUNTS, tau=math.inf), "tau=inf"),
    (lambda z, t: parametric_loss(z, t, COUNTS, margin=torch.tensor(math.nan)), "margin holds"),
    (lambda z, t: parametric_loss(z, t, label_smoothing=1.5), "label_smoothing=1.5"),
    (lambda z, t: parametric_loss(z, t, scale=0.0), "scale=0.0"),
    (lambda z, t: parametric_loss(z, t, poly_epsilon=math.nan), "poly_epsilon=nan"),
    (lambda z, t: parametric_loss(z, t, gate=math.inf), "gate=inf"),
    (lambda z, t: ParametricLoss(gamma=-1.0)(z, t), "gamma=-1.0"),
    (lambda z, t: weighted_cross_entropy(z, t, -COUNTS), "weight holds -40.0"),
    (lambda z, t: ldam_loss(z, t, COUNTS, scale=-30.0), "scale=-30.0"),
    (lambda z, t: ldam_loss(z, t, COUNTS, max_margin=math.nan), "max_margin=nan"),
    (lambda z, t: poly1_cross_entropy(z, t, epsilon=math.nan), "poly_epsilon=nan"),
    (lambda z, t: sigmoid_focal_loss(z, torch.zeros_like(z), gamma=-1.0), "gamma=-1.0"),
    (lambda z, t: adafocal_loss(z, t, torch.tensor([1.0, math.nan]), EDGES), "gamma_bins"),
    (lambda z, t: class_balanced_weights(COUNTS, 1.0), r"beta=1.0 .* in \[0, 1\)"),
    (lambda z, t: class_balanced_weights(COUNTS, -0.1), "beta=-0.1"),
    (lambda z, t: class_balanced_weights(COUNTS, math.nan), "beta=nan"),
    (lambda z, t: class_balanced_weights(COUNTS, torch.tensor([0.9, 1.0])), "beta holds 1.0"),
    (lambda z, t: power_class_weights(COUNTS, math.nan), "alpha=nan"),
])
def test_values_outside_their_domain_raise_naming_them(call, needle, kernels):
    with pytest.raises(ValueError, match=needle):
        call(_logits(), torch.arange(6) % C)

