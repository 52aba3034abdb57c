"""Tests for lossgym.losses.

Reference numbers in the hand-computed tests are worked out with plain ``math`` from the papers'
formulas, never by calling the function under test.
"""

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lossgym.losses import (
    AdaFocalLoss,
    AdaLoss,
    FocalLoss,
    LDAMLoss,
    ParametricLoss,
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
    parametric_loss,
    poly1_cross_entropy,
    power_class_weights,
    sigmoid_focal_loss,
    weighted_cross_entropy,
)

N, B, C = 3, 6, 4
COUNTS = torch.tensor([50, 20, 5, 1])
COUNTS_NC = torch.tensor([[50, 20, 5, 1], [10, 10, 10, 10], [0, 3, 30, 300]])


def _data(shape=(N, B), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, C, generator=g, dtype=dtype) * 2
    targets = torch.randint(0, C, shape, generator=g)
    return logits, targets


def _ce(logits, targets, **kw):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), **kw)


def _value_and_grad(fn, logits):
    z = logits.clone().requires_grad_(True)
    out = fn(z)
    (grad,) = torch.autograd.grad(out, z)
    return out.detach(), grad


def _close(a, b, tol=1e-6):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# Equivalence with cross-entropy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(B,), (N, B)])
@pytest.mark.parametrize(
    "alpha", [None, torch.ones(C), 1.0], ids=["alpha_none", "alpha_ones", "alpha_one"]
)
@pytest.mark.parametrize("gamma", [0.0, 0, "tensor"])
def test_focal_gamma0_equals_cross_entropy(shape, alpha, gamma):
    logits, targets = _data(shape)
    if gamma == "tensor":
        gamma = torch.zeros(shape[:1])
    ref_v, ref_g = _value_and_grad(lambda z: _ce(z, targets), logits)
    v, g = _value_and_grad(lambda z: focal_loss(z, targets, gamma=gamma, alpha=alpha), logits)
    _close(v, ref_v, 1e-7)
    _close(g, ref_g, 1e-7)
    none = focal_loss(logits, targets, gamma=gamma, alpha=alpha, reduction="none")
    _close(none, _ce(logits, targets, reduction="none").reshape(shape), 1e-7)


def test_focal_gamma0_float_is_bitwise_cross_entropy():
    logits, targets = _data((N, B))
    v, g = _value_and_grad(lambda z: focal_loss(z, targets, gamma=0.0), logits)
    ref_v, ref_g = _value_and_grad(lambda z: _ce(z, targets), logits)
    assert torch.equal(v, ref_v)
    assert torch.equal(g, ref_g)


@pytest.mark.parametrize("shape", [(B,), (N, B)])
@pytest.mark.parametrize("zeros_as_tensors", [False, True])
def test_parametric_all_zero_equals_cross_entropy(shape, zeros_as_tensors):
    logits, targets = _data(shape)
    counts = COUNTS if len(shape) == 1 else COUNTS_NC
    z = torch.zeros(shape[:1]) if zeros_as_tensors else 0.0
    kw = dict(gamma=z, alpha=z, tau=z, label_smoothing=z, poly_epsilon=z, gate=z)
    ref_v, ref_g = _value_and_grad(lambda x: _ce(x, targets), logits)
    v, g = _value_and_grad(lambda x: parametric_loss(x, targets, counts, **kw), logits)
    _close(v, ref_v, 1e-7)
    _close(g, ref_g, 1e-7)
    if not zeros_as_tensors:
        assert torch.equal(v, ref_v)
        assert torch.equal(g, ref_g)


def test_simple_variants_reduce_to_cross_entropy():
    logits, targets = _data()
    ref = _ce(logits, targets, reduction="none").reshape(N, B)
    _close(logit_adjusted_cross_entropy(logits, targets, COUNTS, tau=0.0, reduction="none"), ref)
    _close(poly1_cross_entropy(logits, targets, epsilon=0.0, reduction="none"), ref)
    _close(gradient_gated_cross_entropy(logits, targets, 0.0, reduction="none"), ref)
    _close(gradient_gated_cross_entropy(logits, targets, torch.zeros(N), reduction="none"), ref)
    _close(weighted_cross_entropy(logits, targets, reduction="none"), ref)


def test_weighted_cross_entropy_matches_torch_where_semantics_agree():
    logits, targets = _data()
    # Without weights, label smoothing agrees with PyTorch's definition.
    for ls in (0.1, 0.3):
        _close(
            weighted_cross_entropy(logits, targets, label_smoothing=ls),
            _ce(logits, targets, label_smoothing=ls),
        )
    # Without smoothing, reduction="none" agrees with PyTorch's w_y * CE ...
    w = torch.tensor([1.0, 2.0, 0.5, 4.0])
    ref_none = _ce(logits, targets, weight=w, reduction="none").reshape(N, B)
    ours_none = weighted_cross_entropy(logits, targets, weight=w, reduction="none")
    _close(ours_none, ref_none)
    # ... but "mean" is the plain mean, not PyTorch's division by the sum of weights.
    _close(weighted_cross_entropy(logits, targets, weight=w), ref_none.mean())


# ---------------------------------------------------------------------------------------------
# sigmoid focal loss vs torchvision's published formula
# ---------------------------------------------------------------------------------------------


def _torchvision_closed_form(x, t, alpha, gamma):
    p = 1.0 / (1.0 + torch.exp(-x))
    ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss


@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("gamma", [2.0, 0.0, 1.5])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_focal_matches_torchvision_formula(alpha, gamma, reduction):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3
    t = (torch.rand(5, 7, generator=g) > 0.6).to(torch.float64)
    ref = _torchvision_closed_form(x, t, alpha, gamma)
    ref = {"none": ref, "mean": ref.mean(), "sum": ref.sum()}[reduction]
    out = sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction=reduction)
    _close(out, ref, 1e-6)


def test_sigmoid_focal_default_reduction_is_none():
    x = torch.randn(4, 3)
    t = torch.zeros(4, 3)
    assert sigmoid_focal_loss(x, t).shape == (4, 3)


# ---------------------------------------------------------------------------------------------
# gradcheck (float64)
# ---------------------------------------------------------------------------------------------


def _gradcheck(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("gamma", [0.5, 2.0, "per_member"])
def test_gradcheck_focal(gamma):
    logits, targets = _data(dtype=torch.float64)
    if gamma == "per_member":
        gamma = torch.tensor([0.5, 1.0, 2.5], dtype=torch.float64)
    alpha = torch.tensor([0.3, 1.0, 2.0, 0.7], dtype=torch.float64)
    _gradcheck(lambda z: focal_loss(z, targets, gamma=gamma, alpha=alpha), logits.requires_grad_())


def test_gradcheck_focal_wrt_gamma():
    logits, targets = _data(dtype=torch.float64)
    gamma = torch.tensor([0.5, 1.0, 2.5], dtype=torch.float64, requires_grad=True)
    _gradcheck(lambda g: focal_loss(logits, targets, gamma=g, reduction="none"), gamma)


def _param_tensors():
    d = torch.float64
    return dict(
        gamma=torch.tensor([0.5, 2.0, 1.0], dtype=d),
        alpha=torch.tensor([0.5, 1.0, 0.3], dtype=d),
        tau=torch.tensor([1.0, 0.5, -0.5], dtype=d),
        label_smoothing=torch.tensor([0.1, 0.05, 0.2], dtype=d),
        poly_epsilon=torch.tensor([1.0, -0.5, 2.0], dtype=d),
    )


def test_gradcheck_parametric_all_nonzero_wrt_logits():
    logits, targets = _data(dtype=torch.float64)
    p = _param_tensors()
    _gradcheck(lambda z: parametric_loss(z, targets, COUNTS_NC, **p), logits.requires_grad_())
    # Scalar (Python float) parameters take the same code path per branch.
    _gradcheck(
        lambda z: parametric_loss(
            z,
            targets,
            COUNTS,
            gamma=0.7,
            alpha=0.5,
            tau=1.0,
            label_smoothing=0.1,
            poly_epsilon=1.0,
            reduction="none",
        ),
        logits.requires_grad_(),
    )


def test_gradcheck_parametric_wrt_parameters_with_gate():
    logits, targets = _data(dtype=torch.float64)
    p = _param_tensors()
    # tau moves p_t and hence the (detached) gate weights, so it is held fixed here; its
    # gradient is checked without the gate below.
    tau = p.pop("tau")
    p = {k: v.requires_grad_() for k, v in p.items()}
    gate = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    names = list(p)

    def fn(*args):
        kw = dict(zip(names, args[:-1], strict=True))
        return parametric_loss(
            logits, targets, COUNTS_NC, tau=tau, gate=args[-1], reduction="none", **kw
        )

    _gradcheck(fn, *p.values(), gate)
    # Without the gate every parameter, tau included, is differentiable.
    p = {k: v.detach().requires_grad_() for k, v in _param_tensors().items()}

    def fn_no_gate(*args):
        kw = dict(zip(p, args, strict=True))
        return parametric_loss(logits, targets, COUNTS_NC, reduction="none", **kw)

    _gradcheck(fn_no_gate, *p.values())


def test_parametric_gate_gradient_treats_weights_as_constants():
    """The gate's weights use detached p_t, so the logits gradient is that of the frozen-weight
    weighted mean; gradcheck can't be applied to the gated loss directly (by design)."""
    logits, targets = _data(dtype=torch.float64)
    p = _param_tensors()
    gate = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    z = logits.clone().requires_grad_()
    gated = parametric_loss(z, targets, COUNTS_NC, gate=gate, reduction="sum", **p)
    (g_gated,) = torch.autograd.grad(gated, z)

    z2 = logits.clone().requires_grad_()
    ungated = parametric_loss(z2, targets, COUNTS_NC, reduction="none", **p)
    # Gate weights from the adjusted logits' p_t, recomputed independently here.
    tau = p["tau"].view(N, 1, 1)
    adj = logits + tau * COUNTS_NC.to(torch.float64).clamp_min(1).log().unsqueeze(1)
    w = gradient_gate_weights(adj, targets, gate.view(N, 1)).detach()
    surrogate = (ungated * w * B / w.sum(-1, keepdim=True)).sum()
    (g_ref,) = torch.autograd.grad(surrogate, z2)
    _close(gated.detach(), surrogate.detach(), 1e-10)
    _close(g_gated, g_ref, 1e-10)


def test_gradcheck_ldam_poly_la_ls():
    logits, targets = _data(dtype=torch.float64)
    z = logits.requires_grad_()
    w = torch.tensor([1.0, 0.5, 2.0, 3.0], dtype=torch.float64)
    _gradcheck(lambda x: ldam_loss(x, targets, COUNTS, scale=5.0, weight=w), z)
    margins = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    _gradcheck(lambda x: ldam_loss(x, targets, COUNTS_NC, max_margin=margins, scale=3.0), z)
    _gradcheck(lambda x: poly1_cross_entropy(x, targets, epsilon=torch.tensor([1.0, 2, -1])), z)
    _gradcheck(lambda x: logit_adjusted_cross_entropy(x, targets, COUNTS_NC, tau=1.5), z)
    _gradcheck(lambda x: weighted_cross_entropy(x, targets, w, label_smoothing=0.2), z)


def test_gradcheck_gradient_gated_ce():
    logits, targets = _data(dtype=torch.float64)
    strength = torch.tensor([2.0, -3.0, 0.5], dtype=torch.float64, requires_grad=True)
    # Differentiable in the strength (logits fixed) ...
    _gradcheck(lambda s: gradient_gated_cross_entropy(logits, targets, s, "none"), strength)
    # ... and w.r.t. the logits with the (detached) gate weights held fixed.
    w = gradient_gate_weights(logits, targets, strength.detach().view(N, 1))

    def frozen(z):
        ce = weighted_cross_entropy(z, targets, reduction="none")
        return (w * ce).sum(-1) / w.sum(-1)

    z = logits.clone().requires_grad_()
    _gradcheck(frozen, z)
    (g_ours,) = torch.autograd.grad(gradient_gated_cross_entropy(z, targets, strength, "sum"), z)
    (g_ref,) = torch.autograd.grad(frozen(z).sum() * B, z)
    _close(g_ours, g_ref, 1e-10)


# ---------------------------------------------------------------------------------------------
# Numerical robustness
# ---------------------------------------------------------------------------------------------


def _all_losses(logits, targets, gamma):
    counts = COUNTS_NC[: logits.shape[0]] if logits.ndim == 3 else COUNTS
    edges = torch.tensor([0.0, 0.3, 0.7, 1.0])
    return [
        focal_loss(logits, targets, gamma=gamma),
        focal_loss(logits, targets, gamma=gamma, alpha=torch.tensor([1.0, 2, 3, 4])),
        parametric_loss(
            logits,
            targets,
            counts,
            gamma=gamma,
            alpha=0.7,
            tau=1.0,
            label_smoothing=0.1,
            poly_epsilon=1.0,
            gate=2.0,
        ),
        ldam_loss(logits, targets, counts),
        poly1_cross_entropy(logits, targets),
        logit_adjusted_cross_entropy(logits, targets, counts, tau=2.0),
        weighted_cross_entropy(logits, targets, label_smoothing=0.1),
        flsd53_loss(logits, targets),
        adafocal_loss(logits, targets, torch.tensor([gamma, -1.5, 3.0]), edges),
        gradient_gated_cross_entropy(logits, targets, -3.0),
        sigmoid_focal_loss(logits, (targets.unsqueeze(-1) == torch.arange(C)).float()).sum(),
    ]


logit_values = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(logit_values, min_size=2 * 3 * C, max_size=2 * 3 * C),
    target_seed=st.integers(0, 2**16),
    gamma=st.sampled_from([0.3, 0.5, 0.99, 2.0]),
    batched=st.booleans(),
)
def test_finite_values_and_grads_for_extreme_logits(values, target_seed, gamma, batched):
    shape = (2, 3) if batched else (6,)
    logits = torch.tensor(values).reshape(*shape, C).requires_grad_()
    targets = torch.randint(0, C, shape, generator=torch.Generator().manual_seed(target_seed))
    for loss in _all_losses(logits, targets, gamma):
        assert torch.isfinite(loss).all()
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("gamma", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_focal_finite_gradient_at_pt_one(gamma, dtype):
    logits = torch.tensor([[100.0, 0.0, 0.0], [1e4, -1e4, 0.0]], dtype=dtype, requires_grad=True)
    targets = torch.tensor([0, 0])
    for loss in (
        focal_loss(logits, targets, gamma=gamma),
        parametric_loss(logits, targets, torch.tensor([1, 2, 3]), gamma=gamma),
        adafocal_loss(logits, targets, torch.tensor([gamma]), torch.tensor([0.0, 1.0])),
    ):
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


@settings(max_examples=30, deadline=None)
@given(
    counts=st.lists(st.integers(0, 10**6), min_size=C, max_size=C).filter(lambda c: sum(c) > 0),
    alpha=st.floats(-2.0, 8.0),
)
def test_power_class_weights_finite_and_sample_normalised(counts, alpha):
    n = torch.tensor(counts, dtype=torch.float64)
    w = power_class_weights(n, alpha)
    assert torch.isfinite(w).all() and (w > 0).all()
    assert math.isclose(float((n * w).sum() / n.sum()), 1.0, rel_tol=1e-9)


# ---------------------------------------------------------------------------------------------
# Per-member parameters
# ---------------------------------------------------------------------------------------------


def test_per_member_focal_matches_scalar_calls():
    logits, targets = _data()
    gammas = torch.tensor([0.0, 0.5, 2.0])
    alphas = torch.tensor([[1.0, 2, 3, 4], [0.5, 0.5, 1, 1], [2.0, 1, 1, 0.1]])
    batched = focal_loss(logits, targets, gamma=gammas, alpha=alphas, reduction="none")
    for i in range(N):
        single = focal_loss(
            logits[i], targets[i], gamma=float(gammas[i]), alpha=alphas[i], reduction="none"
        )
        _close(batched[i], single)


def test_per_sample_gamma():
    logits, targets = _data()
    gamma = torch.rand(N, B) * 3
    batched = focal_loss(logits, targets, gamma=gamma, reduction="none")
    for i in range(N):
        for j in range(B):
            single = focal_loss(logits[i, j : j + 1], targets[i, j : j + 1], float(gamma[i, j]))
            _close(batched[i, j], single)


def test_per_member_parametric_matches_scalar_calls():
    logits, targets = _data()
    p = {k: v.float() for k, v in _param_tensors().items()}
    gate = torch.tensor([1.0, -2.0, 0.5])
    batched = parametric_loss(logits, targets, COUNTS_NC, gate=gate, reduction="none", **p)
    for i in range(N):
        scalars = {k: float(v[i]) for k, v in p.items()}
        single = parametric_loss(
            logits[i], targets[i], COUNTS_NC[i], gate=float(gate[i]), reduction="none", **scalars
        )
        _close(batched[i], single, 1e-5)
    # Shared counts [C] with per-member parameters works too.
    shared = parametric_loss(logits, targets, COUNTS, gate=gate, reduction="none", **p)
    single0 = parametric_loss(
        logits[0],
        targets[0],
        COUNTS,
        gate=float(gate[0]),
        reduction="none",
        **{k: float(v[0]) for k, v in p.items()},
    )
    _close(shared[0], single0, 1e-5)


def test_per_member_class_weight_functions():
    betas = torch.tensor([0.9, 0.99, 0.0])
    alphas = torch.tensor([0.0, 0.5, 1.0])
    cb = class_balanced_weights(COUNTS_NC, betas)
    pw = power_class_weights(COUNTS_NC, alphas)
    lm = ldam_margins(COUNTS_NC, torch.tensor([0.5, 0.2, 1.0]))
    for i in range(N):
        _close(cb[i], class_balanced_weights(COUNTS_NC[i], float(betas[i])))
        _close(pw[i], power_class_weights(COUNTS_NC[i], float(alphas[i])))
        _close(lm[i], ldam_margins(COUNTS_NC[i], [0.5, 0.2, 1.0][i]))
    # Shared counts with per-member parameters broadcast to [N, C].
    assert power_class_weights(COUNTS, alphas).shape == (N, C)
    assert class_balanced_weights(COUNTS, betas).shape == (N, C)


def test_per_member_other_losses():
    logits, targets = _data()
    tau = torch.tensor([0.0, 1.0, 2.0])
    eps = torch.tensor([0.0, 1.0, -1.0])
    s = torch.tensor([0.0, 2.0, -2.0])
    la = logit_adjusted_cross_entropy(logits, targets, COUNTS_NC, tau=tau, reduction="none")
    pl = poly1_cross_entropy(logits, targets, epsilon=eps, reduction="none")
    gg = gradient_gated_cross_entropy(logits, targets, s, reduction="none")
    ld = ldam_loss(logits, targets, COUNTS_NC, max_margin=tau / 4, scale=10.0, reduction="none")
    for i in range(N):
        li, ti = logits[i], targets[i]
        _close(la[i], logit_adjusted_cross_entropy(li, ti, COUNTS_NC[i], float(tau[i]), "none"))
        _close(pl[i], poly1_cross_entropy(li, ti, float(eps[i]), "none"))
        _close(gg[i], gradient_gated_cross_entropy(li, ti, float(s[i]), "none"))
        _close(ld[i], ldam_loss(li, ti, COUNTS_NC[i], float(tau[i]) / 4, 10.0, reduction="none"))


# ---------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------


def test_class_balanced_weights_hand_computed():
    beta = 0.9
    raw = [(1 - beta) / (1 - beta**10), (1 - beta) / (1 - beta**1)]  # 0.15353..., 1.0
    expected = [r * 2 / sum(raw) for r in raw]
    w = class_balanced_weights(torch.tensor([10, 1]), beta)
    _close(w, torch.tensor(expected), 1e-5)
    assert math.isclose(float(w.sum()), 2.0, rel_tol=1e-6)
    # beta = 0 is uniform; zero counts stay finite.
    _close(class_balanced_weights(torch.tensor([7, 3, 1]), 0.0), torch.ones(3))
    assert torch.isfinite(class_balanced_weights(torch.tensor([0, 5]), 0.999)).all()


def test_power_class_weights_hand_computed():
    # counts [3, 1], alpha 1: w ~ [1/3, 1]; sum_c n_c w_c = 2 over 4 samples -> scale by 2.
    _close(power_class_weights(torch.tensor([3, 1]), 1.0), torch.tensor([2 / 3, 2.0]))
    # alpha 0.5: w ~ [3^-0.5, 1]; sum_c n_c w_c = sqrt(3) + 1.
    k = 4 / (math.sqrt(3) + 1)
    _close(power_class_weights(torch.tensor([3, 1]), 0.5), torch.tensor([k / math.sqrt(3), k]))
    # Empty class: power uses max(n, 1) = 1, normalisation only counts real samples.
    _close(power_class_weights(torch.tensor([4, 0]), 1.0), torch.tensor([1.0, 4.0]))
    _close(power_class_weights(torch.tensor([3, 1]), 0.0), torch.ones(2))


def test_ldam_hand_computed():
    counts = torch.tensor([16, 1, 81])
    # n^-1/4 = [1/2, 1, 1/3], rescaled so the largest is 0.5.
    _close(ldam_margins(counts), torch.tensor([0.25, 0.5, 0.5 / 3]))
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    targets = torch.tensor([0])
    # s * (z - Delta_0 e_0) = 2 * [0.75, 2, 0] = [1.5, 4, 0]
    expected = -1.5 + math.log(math.exp(1.5) + math.exp(4.0) + math.exp(0.0))
    _close(ldam_loss(logits, targets, counts, scale=2.0), torch.tensor(expected))
    weighted = ldam_loss(logits, targets, counts, scale=2.0, weight=torch.tensor([3.0, 1, 1]))
    _close(weighted, torch.tensor(3 * expected))


def test_drw_weights():
    counts = torch.tensor([100, 10, 1])
    _close(drw_weights(counts, 0.5), torch.ones(3))
    cb = class_balanced_weights(counts, 0.9999)
    _close(drw_weights(counts, 0.8), cb)
    both = drw_weights(counts, torch.tensor([0.79, 0.81]))
    _close(both[0], torch.ones(3))
    _close(both[1], cb)


def test_poly1_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # p = [1/4, 3/4]
    targets = torch.tensor([0, 1])
    expected = torch.tensor([math.log(4) + 2 * 0.75, math.log(4 / 3) + 2 * 0.25])
    _close(poly1_cross_entropy(logits, targets, epsilon=2.0, reduction="none"), expected)
    _close(poly1_cross_entropy(logits, targets, epsilon=2.0, reduction="sum"), expected.sum())


def test_logit_adjustment_hand_computed():
    logits = torch.zeros(1, 2)
    targets = torch.tensor([1])
    counts = torch.tensor([3, 1])  # pi = [0.75, 0.25]
    # tau = 1: softmax(log pi) = pi, so loss = -log 0.25.
    _close(logit_adjusted_cross_entropy(logits, targets, counts, 1.0), torch.tensor(math.log(4)))
    # tau = 2: p_1 = 0.25^2 / (0.75^2 + 0.25^2) = 0.1.
    _close(logit_adjusted_cross_entropy(logits, targets, counts, 2.0), torch.tensor(math.log(10)))


def test_flsd53_hand_computed():
    logits = torch.tensor(
        [[0.0, math.log(9.0)], [0.0, math.log(9.0)], [0.0, math.log(3.0)], [0.0, math.log(4.2)]]
    )
    targets = torch.tensor([0, 1, 0, 0])  # p_t = 0.1, 0.9, 0.25, 1/5.2 (< 0.2)
    _close(flsd53_gamma(logits, targets), torch.tensor([5.0, 3.0, 3.0, 5.0]))
    p4 = 1 / 5.2
    expected = torch.tensor(
        [
            -(0.9**5) * math.log(0.1),
            -(0.1**3) * math.log(0.9),
            -(0.75**3) * math.log(0.25),
            -((1 - p4) ** 5) * math.log(p4),
        ]
    )
    _close(flsd53_loss(logits, targets, reduction="none"), expected, 1e-5)


def test_adafocal_loss_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # p = [1/4, 3/4]
    targets = torch.tensor([0, 1])  # p_t = 0.25 -> bin 0, 0.75 -> bin 1
    gamma_bins = torch.tensor([2.0, -1.0])
    edges = torch.tensor([0.0, 0.5, 1.0])
    expected = torch.tensor([-(0.75**2) * math.log(0.25), -(1.75**1) * math.log(0.75)])
    _close(adafocal_loss(logits, targets, gamma_bins, edges, reduction="none"), expected)
    # Per-member bins: member 1 uses other gammas and edges.
    gb = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    eb = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.2, 1.0]])
    both = adafocal_loss(logits.expand(2, 2, 2), targets.expand(2, 2), gb, eb, reduction="none")
    _close(both[0], expected)
    _close(both[1], torch.tensor([-(0.75**3) * math.log(0.25), -(0.25**3) * math.log(0.75)]))


def test_adafocal_update_hand_computed():
    gamma = torch.tensor([1.0, 0.25, -0.5, 10.0, -1.9, -0.25, 0.0], dtype=torch.float64)
    conf = torch.tensor([0.9, 0.5, 0.5, 0.9, 0.3, 0.8, 0.5], dtype=torch.float64)
    acc = torch.tensor([0.7, 0.9, 0.2, 0.1, 0.9, 0.3, 0.5], dtype=torch.float64)
    expected = torch.tensor(
        [
            1.0 * math.exp(0.2),  # focal, over-confident: gamma grows
            -0.2,  # 0.25 e^-0.4 = 0.168 < 0.2: switch to inverse focal
            -0.5 * math.exp(-0.3),  # inverse focal, over-confident: |gamma| shrinks
            20.0,  # 10 e^0.8 = 22.3 clipped to gamma_max
            -2.0,  # -1.9 e^0.6 = -3.46 clipped to gamma_min
            0.2,  # -0.25 e^-0.5 = -0.152: switch back to focal
            0.2,  # exactly 0 goes to +S_th
        ],
        dtype=torch.float64,
    )
    _close(adafocal_update(gamma, conf, acc), expected, 1e-12)
    batched = adafocal_update(gamma.expand(2, 7), conf.expand(2, 7), acc.expand(2, 7))
    _close(batched, expected.expand(2, 7), 1e-12)


def test_calibration_bin_stats_and_edges():
    logits = torch.tensor(
        [
            [math.log(4.0), math.log(3.0), math.log(3.0)],  # conf 0.4, pred 0
            [math.log(6.0), math.log(3.0), math.log(1.0)],  # conf 0.6, pred 0
            [math.log(0.9), math.log(0.05), math.log(0.05)],  # conf 0.9, pred 0
        ]
    )
    targets = torch.tensor([0, 1, 0])
    conf, acc, count = calibration_bin_stats(logits, targets, torch.tensor([0.0, 0.5, 1.0]))
    _close(conf, torch.tensor([0.4, 0.75]))
    _close(acc, torch.tensor([1.0, 0.5]))
    _close(count, torch.tensor([1.0, 2.0]))
    # Batched over members with per-member edges.
    c2, a2, n2 = calibration_bin_stats(
        logits.expand(2, 3, 3), targets.expand(2, 3), torch.tensor([[0, 0.5, 1], [0, 0.7, 1]])
    )
    _close(c2[1], torch.tensor([0.5, 0.9]))
    _close(a2[1], torch.tensor([0.5, 1.0]))
    _close(n2[1], torch.tensor([2.0, 1.0]))
    # Equal-mass edges are quantiles between fixed outer edges 0 and 1.
    edges = equal_mass_bin_edges(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]), 2)
    _close(edges, torch.tensor([0.0, 0.3, 1.0]))
    assert equal_mass_bin_edges(torch.rand(3, 50), 15).shape == (3, 16)


def test_adafocal_module_update():
    torch.manual_seed(0)
    loss = AdaFocalLoss(n_bins=3, num_members=2)
    val_logits = torch.randn(2, 30, C) * 4
    val_targets = torch.randint(0, C, (2, 30))
    loss.update(val_logits, val_targets)
    conf = F.softmax(val_logits, -1).amax(-1)
    edges = equal_mass_bin_edges(conf, 3)
    c, a, _ = calibration_bin_stats(val_logits, val_targets, edges)
    _close(loss.bin_edges, edges)
    _close(loss.gamma_bins, adafocal_update(torch.ones(2, 3), c, a))
    logits, targets = _data((2, B))
    assert loss(logits, targets).shape == ()
    assert "gamma_bins" in repr(loss)
    with pytest.raises(ValueError, match=r"\(30,\)"):
        loss.update(val_logits[0], val_targets[0])


def test_adaloss_running_mean_hand_computed():
    ln2, ln3 = math.log(2), math.log(3)
    mod = AdaLoss(num_classes=3, momentum=0.5)
    # Batch 1: uniform logits, CE = ln 3 for every sample; classes 0 and 1 present.
    out1 = mod(torch.zeros(3, 3), torch.tensor([0, 0, 1]))
    _close(mod.running_mean, torch.tensor([ln3, ln3, 1.0]))  # class 2 untouched (initial 1)
    assert mod.initialized.tolist() == [True, True, False]
    _close(out1, torch.tensor(1.0))  # first observation: ratio 1 per class
    # Batch 2: class 0 sample with p = 1/2 (CE ln 2), class 2 sample with CE ln 3.
    logits = torch.tensor([[ln2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    out2 = mod(logits, torch.tensor([0, 2]))
    m0 = 0.5 * ln3 + 0.5 * ln2
    _close(mod.running_mean, torch.tensor([m0, ln3, ln3]))
    _close(out2, torch.tensor((ln2 / m0 + ln3 / ln3) / 2))
    # Gradient flows through l_c only (the running mean is a constant).
    z = logits.clone().requires_grad_()
    mod.eval()
    out3 = mod(z, torch.tensor([0, 2]))
    _close(mod.running_mean, torch.tensor([m0, ln3, ln3]))  # no update in eval
    (g,) = torch.autograd.grad(out3, z)
    ce0 = F.cross_entropy(z[:1], torch.tensor([0]))
    (g0,) = torch.autograd.grad(ce0 / m0 / 2, z)
    _close(g[0], g0[0])


def test_adaloss_members_are_independent():
    mod = AdaLoss(num_classes=2, momentum=0.9, num_members=2)
    logits = torch.zeros(2, 2, 2)
    targets = torch.tensor([[0, 0], [0, 1]])
    out = mod(logits, targets)
    assert out.shape == ()
    assert mod.initialized.tolist() == [[True, False], [True, True]]
    _close(mod.running_mean[0, 1], torch.tensor(1.0))
    none = AdaLoss(2, num_members=2, reduction="none")(logits, targets)
    assert none.shape == (2,)
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        AdaLoss(num_classes=2)(logits, targets)


def test_adaloss_functional():
    per_class = torch.tensor([[2.0, 4.0, 9.0]])
    m = torch.tensor([[1.0, 2.0, 3.0]])
    _close(adaloss(per_class, m, eps=0.0), torch.tensor([(2 + 2 + 3) / 3]))
    present = torch.tensor([[True, False, True]])
    _close(adaloss(per_class, m, eps=0.0, present=present), torch.tensor([(2 + 3) / 2]))


def test_gradient_gate_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    targets = torch.tensor([0, 0])  # p_t = 0.5, 0.25 -> g = 0.5, 0.75, mean 0.625
    w0 = 1 / (1 + math.exp(0.25))  # a = 2 * (0.5 - 0.625) = -0.25
    w1 = 1 / (1 + math.exp(-0.25))
    _close(gradient_gate_weights(logits, targets, 2.0), torch.tensor([w0, w1]))
    ce = [math.log(2), math.log(4)]
    gated = (w0 * ce[0] + w1 * ce[1]) / (w0 + w1)
    _close(gradient_gated_cross_entropy(logits, targets, 2.0), torch.tensor(gated))
    none = gradient_gated_cross_entropy(logits, targets, 2.0, reduction="none")
    _close(none, torch.tensor([w0 * ce[0], w1 * ce[1]]) * 2 / (w0 + w1))
    # Negative strength suppresses the hard sample.
    w_neg = gradient_gate_weights(logits, targets, -2.0)
    assert w_neg[1] < w_neg[0]


def test_parametric_hand_computed_combination():
    # logits [0, ln 3] (p = [1/4, 3/4]), target 0, counts [1, 1] so tau has no effect and
    # alpha-weights are 1; gamma 1, poly 1, label smoothing 0.5.
    logits = torch.tensor([[0.0, math.log(3.0)]])
    targets = torch.tensor([0])
    base = -(0.5 * math.log(0.25) + 0.5 * 0.5 * (math.log(0.25) + math.log(0.75)))
    expected = 0.75 * base + 1.0 * 0.75
    out = parametric_loss(
        logits,
        targets,
        torch.tensor([1, 1]),
        gamma=1.0,
        alpha=0.7,
        tau=3.0,
        label_smoothing=0.5,
        poly_epsilon=1.0,
    )
    _close(out, torch.tensor(expected))
    # alpha weighting: counts [3, 1], alpha 1 -> w = [2/3, 2] (see power weights test).
    out = parametric_loss(logits, targets, torch.tensor([3, 1]), alpha=1.0)
    _close(out, torch.tensor(2 / 3 * math.log(4)))


# ---------------------------------------------------------------------------------------------
# Errors, shapes and modules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda z, t: focal_loss(z, t, reduction="avg"),
        lambda z, t: parametric_loss(z, t, COUNTS, reduction="avg"),
        lambda z, t: weighted_cross_entropy(z, t, reduction="avg"),
        lambda z, t: ldam_loss(z, t, COUNTS, reduction="avg"),
        lambda z, t: flsd53_loss(z, t, reduction="avg"),
        lambda z, t: gradient_gated_cross_entropy(z, t, 1.0, reduction="avg"),
        lambda z, t: sigmoid_focal_loss(z, z, reduction="avg"),
        lambda z, t: FocalLoss(reduction="avg"),
    ],
)
def test_bad_reduction_raises(call):
    logits, targets = _data()
    with pytest.raises(ValueError, match="'avg'"):
        call(logits, targets)


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda z, t: focal_loss(z, t, gamma=torch.ones(5)), r"gamma has shape \(5,\)"),
        (lambda z, t: focal_loss(z, t, gamma=torch.ones(N, B + 1)), r"\(3, 7\)"),
        (lambda z, t: focal_loss(z, t, alpha=torch.ones(C + 1)), r"alpha has shape \(5,\)"),
        (lambda z, t: parametric_loss(z, t, torch.ones(C), tau=torch.ones(2)), r"tau.*\(2,\)"),
        (
            lambda z, t: parametric_loss(z, t, torch.ones(2, C), alpha=1.0),
            r"class_counts has shape \(2, 4\)",
        ),
        (
            lambda z, t: adafocal_loss(z, t, torch.ones(3), torch.linspace(0, 1, 3)),
            r"bin_edges.*\(3,\)",
        ),
        (lambda z, t: weighted_cross_entropy(z, t, weight=torch.ones(2, C)), r"weight.*\(2, 4\)"),
        (lambda z, t: power_class_weights(COUNTS_NC, torch.ones(2)), r"alpha has shape \(2,\)"),
        (lambda z, t: focal_loss(z, t[:, :-1]), r"targets \(3, 5\)"),
    ],
)
def test_bad_shapes_raise(call, needle):
    logits, targets = _data()
    with pytest.raises(ValueError, match=needle):
        call(logits, targets)


@pytest.mark.parametrize("shape", [(B,), (N, B), (2, N, B)])
def test_none_reduction_shapes(shape):
    logits, targets = _data(shape)
    counts = torch.ones(C)
    for out in (
        focal_loss(logits, targets, reduction="none"),
        parametric_loss(logits, targets, counts, "none", gamma=1.0, alpha=0.5, tau=1.0,
                        label_smoothing=0.1, poly_epsilon=1.0, gate=1.0),
        ldam_loss(logits, targets, counts, reduction="none"),
        flsd53_loss(logits, targets, reduction="none"),
        gradient_gated_cross_entropy(logits, targets, 1.0, reduction="none"),
        adafocal_loss(logits, targets, torch.ones(2), torch.tensor([0, 0.5, 1]), "none"),
    ):
        assert out.shape == shape


def test_modules_wrap_functions():
    logits, targets = _data()
    gamma = torch.tensor([0.0, 1.0, 2.0])
    fl = FocalLoss(gamma=gamma, alpha=torch.ones(C))
    _close(fl(logits, targets), focal_loss(logits, targets, gamma, torch.ones(C)))
    assert "gamma=[0.0, 1.0, 2.0]" in repr(fl)
    pl = ParametricLoss(COUNTS_NC, gamma=gamma, alpha=0.5, tau=1.0, gate=1.0)
    ref = parametric_loss(logits, targets, COUNTS_NC, gamma=gamma, alpha=0.5, tau=1.0, gate=1.0)
    _close(pl(logits, targets), ref)
    assert "tau=1.0" in repr(pl) and "class_counts" in repr(pl)
    assert "gamma" in dict(pl.named_buffers())
    ld = LDAMLoss(COUNTS, max_margin=0.3, scale=10.0)
    _close(ld(logits, targets), ldam_loss(logits, targets, COUNTS, 0.3, 10.0))
    assert "max_margin=0.3" in repr(ld)
    assert "momentum=0.9" in repr(AdaLoss(C))


# ---------------------------------------------------------------------------------------------
# The closed-form gradient of host-number parameters
# ---------------------------------------------------------------------------------------------

TERMS = ("gamma", "alpha", "tau", "label_smoothing", "poly_epsilon")
NONZERO = {"gamma": 1.5, "alpha": 0.7, "tau": 0.8, "label_smoothing": 0.1, "poly_epsilon": -0.5}


def _as_tensors(params, dtype):
    # Tensor parameters take the autograd path: the reference.
    return {k: torch.tensor(v, dtype=dtype) for k, v in params.items()}


@pytest.mark.parametrize("on", [(), *[(t,) for t in TERMS], ("gamma", "alpha"),
                                ("gamma", "poly_epsilon", "label_smoothing"), TERMS])
@pytest.mark.parametrize("shape, counts", [((B,), COUNTS), ((N, B), COUNTS_NC)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_closed_form_gradient_matches_autograd(on, shape, counts, reduction, torch_kernels):
    params = {t: NONZERO[t] if t in on else 0.0 for t in TERMS}
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
        logits, targets = _data(shape, dtype)
        logits.requires_grad_()
        ours = parametric_loss(logits, targets, counts, reduction=reduction, **params)
        with torch_kernels():  # the tensor parameters' autograd
            ref = parametric_loss(logits, targets, counts, reduction=reduction,
                                  **_as_tensors(params, dtype))
        weight = torch.randn_like(ours)
        (g_ours,) = torch.autograd.grad(ours, logits, weight)
        (g_ref,) = torch.autograd.grad(ref, logits, weight)
        _close(ours, ref, tol)
        _close(g_ours, g_ref, tol)
    if reduction == "none":
        logits64 = logits.detach().double().requires_grad_()
        _gradcheck(lambda z: parametric_loss(z, targets, counts, reduction="none", **params),
                   logits64)


@pytest.mark.parametrize("gamma", [0.3, 1.0, 2.0])
def test_closed_form_gradient_where_p_t_is_one(gamma):
    # Confident samples (1 − p_t below the 1e-6 floor) next to ordinary ones.
    logits, targets = _data((B,), torch.float64)
    logits[:4] = 0.0
    logits[torch.arange(4), targets[:4]] = 40.0
    logits.requires_grad_()
    ours = focal_loss(logits, targets, gamma, alpha=COUNTS.double() / 10, reduction="sum")
    ref = focal_loss(logits, targets, torch.tensor(gamma, dtype=torch.float64),
                     alpha=COUNTS.double() / 10, reduction="sum")
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert torch.isfinite(g_ours).all()
    _close(ours, ref, 1e-12)
    _close(g_ours, g_ref, 1e-9)


@pytest.mark.parametrize("kernels", ["compiled", "torch"])
def test_per_member_tensor_parameters_match_per_member_host_numbers(kernels, torch_kernels):
    # Per-member tensors (the engine: one compiled call on small CPU populations, else
    # autograd) against one host-number call per member (AdaptiveLoss), values and gradients.
    logits, targets = _data()
    p = {k: v.float() for k, v in _param_tensors().items()}
    p.update(margin=torch.tensor([0.3, 0.0, 0.6]), scale=torch.tensor([2.0, 1.0, 8.0]))
    logits.requires_grad_()
    with torch_kernels() if kernels == "torch" else contextlib.nullcontext():
        batched = parametric_loss(logits, targets, COUNTS_NC, reduction="none", **p)
    assert (batched.grad_fn.name() == "_NativeBackward") == (kernels == "compiled")
    weight = torch.randn_like(batched)
    (g_batched,) = torch.autograd.grad(batched, logits, weight)
    for i in range(N):
        member = logits[i].detach().requires_grad_()
        single = parametric_loss(member, targets[i], COUNTS_NC[i], reduction="none",
                                 **{k: float(v[i]) for k, v in p.items()})
        (g_single,) = torch.autograd.grad(single, member, weight[i])
        # float32: the torch kernels round s·z (s up to 8) where the extension works in double
        tol = 1e-6 if kernels == "compiled" else 1e-5
        _close(batched[i], single, tol)
        _close(g_batched[i], g_single, tol)


def test_closed_form_gradient_refuses_double_backward_and_learnable_weights():
    logits, targets = _data((B,), torch.float64)
    logits.requires_grad_()
    loss = focal_loss(logits, targets, 2.0)
    with pytest.raises(RuntimeError, match="closed-form first derivative"):
        torch.autograd.grad(loss, logits, create_graph=True)
    # Class weights that require grad keep autograd, so they get their gradient.
    weights = torch.ones(C, dtype=torch.float64, requires_grad=True)
    focal_loss(logits, targets, 2.0, alpha=weights).backward()
    assert weights.grad is not None and weights.grad.abs().sum() > 0


def test_parametric_margin_and_scale_equal_ldam():
    """margin and scale make parametric_loss LDAM (Cao et al.) on the raw logits, and combine
    with logit adjustment and focal terms per member exactly as host numbers do."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 5, (3, 6), generator=g)
    counts = torch.tensor([[100.0, 40, 10, 3, 1]] * 3)
    _close(parametric_loss(logits, targets, counts, reduction="none", margin=0.5, scale=30.0),
           ldam_loss(logits, targets, counts, max_margin=0.5, scale=30.0, reduction="none"))
    # Hand computed: the rarest class (count 1) gets the whole margin; scale 2.
    z = torch.tensor([[1.0, 2.0, 0.0]])
    expected = -2 * (0.0 - 0.5) + math.log(math.exp(2.0) + math.exp(4.0) + math.exp(-1.0))
    _close(parametric_loss(z, torch.tensor([2]), torch.tensor([16.0, 16.0, 1.0]), margin=0.5,
                           scale=2.0), torch.tensor(expected))
    # Neutral values are plain cross-entropy, as tensors too.
    _close(parametric_loss(logits, targets, counts, reduction="none",
                           margin=torch.zeros(3, dtype=torch.float64),
                           scale=torch.ones(3, dtype=torch.float64)),
           F.cross_entropy(logits.transpose(1, 2), targets, reduction="none"))
    margin = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    scale = torch.tensor([1.0, 10.0, 30.0], dtype=torch.float64)
    gamma = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    batched = parametric_loss(logits, targets, counts, gamma=gamma, tau=1.0, reduction="none",
                              margin=margin, scale=scale)
    for i in range(3):
        alone = parametric_loss(logits[i], targets[i], counts[i], gamma=float(gamma[i]),
                                tau=1.0, reduction="none", margin=float(margin[i]),
                                scale=float(scale[i]))
        _close(batched[i], alone)
    assert torch.autograd.gradcheck(
        lambda x: parametric_loss(x, targets, counts, gamma=gamma, alpha=0.5, tau=1.0,
                                  margin=margin, scale=scale), (logits,))
