"""Tests for the compiled kernels (lossgym._closedform through lossgym._native) against the
torch computations they replace."""

import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossgym import TaskSpec, _native
from lossgym.envs import LossTuningEnv
from lossgym.export import AdaptiveLoss
from lossgym.losses import (
    COMPILED_MAX_NUMEL,
    KernelPlan,
    _CompiledModulatedCE,
    _FusedModulatedCE,
    compiled_kernel_usable,
    parametric_loss,
    parametric_plan,
)
from lossgym.schedules import LossSchedule, constant

needs_extension = pytest.mark.skipif(_native.closedform is None,
                                     reason="the C extension is not built")
COUNTS = torch.tensor([500.0, 120, 40, 9, 2])


def test_the_extension_is_built_where_a_compiler_is():
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None or os.environ.get("LOSSGYM_NO_EXTENSION"):
        pytest.skip("no C compiler here, or the extension is switched off")
    assert _native.closedform is not None, "pip install -e . should have built it"


def test_the_switch_turns_the_extension_off():
    code = ("from lossgym import _native, losses; import torch; "
            "assert _native.closedform is None; "
            "assert not losses.compiled_kernel_usable(torch.zeros(4, 3), torch.zeros(4).long()); "
            "print(float(losses.focal_loss(torch.zeros(4, 3), torch.zeros(4).long(), 2.0)))")
    env = dict(os.environ, LOSSGYM_NO_EXTENSION="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert abs(float(out.stdout) - (2 / 3) ** 2 * torch.log(torch.tensor(3.0)).item()) < 1e-6


def _reference(logits, targets, plan_kw, weight):
    """The torch kernels: the logit transform, then the closed form of the modulated CE."""
    scale = plan_kw.get("scale", 1.0)
    shift, margins = plan_kw.get("shift"), plan_kw.get("margins")
    z = logits * scale
    if shift is not None:
        z = z + shift
    if margins is not None:
        index = targets.unsqueeze(-1)
        z = z.scatter_add(-1, index, -margins.take(index))
    return _FusedModulatedCE.apply(
        z, targets, None if weight is None else weight.take(targets),
        plan_kw.get("gamma", 0.0), plan_kw.get("label_smoothing", 0.0),
        plan_kw.get("poly_epsilon", 0.0), 1e-6, plan_kw.get("reduction", "mean"), None)


TERMS = {
    "focal": {"gamma": 2.0},
    "focal_fractional": {"gamma": 0.4},
    "smoothing_poly": {"gamma": 1.5, "label_smoothing": 0.1, "poly_epsilon": -0.5},
    "shift": {"gamma": 1.0, "shift": torch.tensor([0.0, 0.5, -1.0, 2.0, 0.3])},
    "ldam": {"scale": 12.0, "margins": torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]) * 12},
    "everything": {"gamma": 2.6, "scale": 15.7, "label_smoothing": 0.05, "poly_epsilon": 1.0,
                   "shift": torch.tensor([0.0, 0.5, -1.0, 2.0, 0.3]),
                   "margins": torch.tensor([0.0, 0.1, 0.2, 0.3, 0.5]) * 15.7},
}


@needs_extension
@pytest.mark.parametrize("terms", sorted(TERMS))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(64,), (3, 16)])
def test_compiled_loss_equals_the_torch_kernels(terms, weighted, reduction, dtype, shape):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(*shape, 5, generator=g, dtype=dtype) * 3).requires_grad_()
    targets = torch.randint(0, 5, shape, generator=g)
    weight = torch.rand(5, generator=g, dtype=dtype) + 0.5 if weighted else None
    kw = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in TERMS[terms].items()}
    plan = KernelPlan(dtype, 5, weight=weight, reduction=reduction, **kw)
    recorded: list[float] = []
    ours = _CompiledModulatedCE.apply(logits, targets, plan, recorded)
    ref = _reference(logits, targets, dict(kw, reduction=reduction), weight)
    upstream = torch.rand_like(ref) + 0.5
    (g_ours,) = torch.autograd.grad(ours, logits, upstream)
    (g_ref,) = torch.autograd.grad(ref, logits, upstream)
    tol = 1e-12 if dtype is torch.float64 else 3e-6
    assert ours.shape == ref.shape and ours.dtype is dtype
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(g_ours, g_ref, rtol=tol, atol=tol)
    # The plain cross-entropy of the untransformed logits, recorded on the way.
    ce = F.cross_entropy(logits.detach().reshape(-1, 5).double(), targets.reshape(-1))
    assert recorded == [pytest.approx(ce.item(), rel=1e-6)]


@needs_extension
@pytest.mark.parametrize("num_classes", [5, 100])  # 100: past the kernel's stack buffer
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_loss_per_sample_weights_and_the_parametric_loss(num_classes, dtype):
    # parametric_loss with host numbers on small CPU inputs runs the compiled kernel; tensor
    # parameters take autograd: they agree.
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 32, num_classes, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, num_classes, (4, 32), generator=g)
    counts = torch.randint(1, 500, (num_classes,), generator=g).to(dtype)
    params = {"gamma": 1.7, "alpha": 0.6, "tau": 0.4, "margin": 0.3, "scale": 8.0,
              "label_smoothing": 0.1}
    ours = parametric_loss(logits, targets, counts, **params)
    assert ours.grad_fn.name().startswith("_CompiledModulatedCE")
    ref = parametric_loss(logits, targets, counts,
                          **{k: torch.tensor(v, dtype=dtype) for k, v in params.items()})
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    tol = 1e-10 if dtype is torch.float64 else 2e-6
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(g_ours, g_ref, rtol=tol, atol=tol)


@needs_extension
def test_compiled_loss_inputs_it_refuses_or_copes_with():
    logits, targets = torch.randn(8, 5), torch.randint(0, 5, (8,))
    plan = KernelPlan(torch.float32, 5, gamma=2.0)
    bad = targets.clone()
    bad[3] = 5
    with pytest.raises(IndexError, match=r"Target 5 is out of bounds \[0, 5\) \(sample 3\)"):
        _CompiledModulatedCE.apply(logits, bad, plan, None)
    bad[3] = -1
    with pytest.raises(IndexError, match="Target -1"):
        _CompiledModulatedCE.apply(logits, bad, plan, None)
    with pytest.raises(ValueError, match="do not fit the plan"):
        _CompiledModulatedCE.apply(logits.double(), targets, plan, None)
    with pytest.raises(ValueError, match="do not fit the plan"):
        _CompiledModulatedCE.apply(torch.randn(8, 4), targets, plan, None)
    with pytest.raises(ValueError, match="int64 targets"):
        _CompiledModulatedCE.apply(logits, targets.int(), plan, None)
    members = KernelPlan(torch.float32, 5, gamma=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"as \[2, B, 5\]"):
        _CompiledModulatedCE.apply(logits, targets, members, None)
    per_sample = KernelPlan(torch.float32, 5, weight=torch.ones(7), per_sample_weight=True)
    with pytest.raises(ValueError, match="with 7 samples in all"):
        _CompiledModulatedCE.apply(logits, targets, per_sample, None)
    with pytest.raises(ValueError, match=r"shift must have one value per class \(5\)"):
        KernelPlan(torch.float32, 5, shift=torch.zeros(4))
    with pytest.raises(ValueError, match="float32 or float64"):
        KernelPlan(torch.float16, 5)
    with pytest.raises(ValueError, match="reduction"):
        KernelPlan(torch.float32, 5, reduction="avg")
    # Non-contiguous logits are copied; NaN logits give NaN, as torch's kernels do.
    wide = torch.randn(5, 8).t()
    assert not wide.is_contiguous()
    torch.testing.assert_close(_CompiledModulatedCE.apply(wide, targets, plan, None),
                               _CompiledModulatedCE.apply(wide.contiguous(), targets, plan,
                                                          None))
    nan = logits.clone()
    nan[2, 1] = float("nan")
    assert torch.isnan(_CompiledModulatedCE.apply(nan, targets, plan, None))
    # What the kernel does not take goes to torch.
    assert compiled_kernel_usable(logits, targets)
    assert not compiled_kernel_usable(logits.half(), targets)
    assert not compiled_kernel_usable(logits, targets.int())
    assert not compiled_kernel_usable(torch.randn(COMPILED_MAX_NUMEL // 5 + 1, 5),
                                      torch.zeros(COMPILED_MAX_NUMEL // 5 + 1).long())
    assert not compiled_kernel_usable(torch.randn(0, 5), torch.zeros(0).long())


@needs_extension
def test_squared_norm_is_the_norm_torch_computes():
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(128, 40, generator=g), torch.randn(128, generator=g),
             torch.randn(10, 7, generator=g), torch.randn(3, generator=g)]
    expected = torch.linalg.vector_norm(torch.cat([x.double().flatten() for x in grads]))
    assert _native.squared_norm(grads) ** 0.5 == pytest.approx(expected.item(), rel=1e-7)
    doubles = [x.double() for x in grads]
    assert _native.squared_norm(doubles) ** 0.5 == pytest.approx(expected.item(), rel=1e-12)
    # Mixed dtypes, other dtypes, non-contiguous tensors: left to torch.
    assert _native.squared_norm([grads[0], doubles[1]]) is None
    assert _native.squared_norm([grads[0].half()]) is None
    assert _native.squared_norm([grads[0].t()]) is None
    assert _native.squared_norm([]) is None


def _plain_run(monkeypatch, extension):
    """A few periods of training with an adaptive loss (controller-free: a schedule with every
    term, and one of the engine's built-in methods), with or without the extension."""
    if not extension:
        monkeypatch.setattr(_native, "closedform", None)
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(96, 6, generator=g), torch.randint(0, 5, (96,), generator=g)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = LossSchedule({"gamma": constant(2.0), "alpha": constant(0.5),
                             "tau": constant(0.7), "margin": constant(0.3),
                             "scale": constant(4.0)})
    criterion = AdaptiveLoss(schedule, class_counts=COUNTS, total_steps=3)
    criterion.watch(optimizer)
    losses, norms = [], []
    for _ in range(3):
        for i in range(0, 96, 32):
            optimizer.zero_grad()
            loss = criterion(model(x[i:i + 32]), y[i:i + 32])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        norms.append(criterion._total_grad_norms().tolist())
        criterion.step()
    return losses, norms


def test_training_with_and_without_the_extension_agrees(monkeypatch):
    with_ext = _plain_run(monkeypatch, True)
    without = _plain_run(monkeypatch, False)
    assert with_ext[0] == pytest.approx(without[0], rel=1e-5)
    for a, b in zip(with_ext[1], without[1]):
        assert a == pytest.approx(b, rel=1e-5)


@needs_extension
def test_the_kernels_exponential_is_within_an_ulp():
    # The kernel's own float32 e^x for x <= 0 (inline, vectorised), against float64 exp.
    x = torch.cat([torch.linspace(-87.0, 0.0, 1_000_001), -torch.rand(10_000) * 1e-3,
                   torch.tensor([0.0, -0.0, -1e-30, -87.0])])
    y = x.clone()
    _native.closedform.exp_nonpositive(y.data_ptr(), y.numel())
    exact = torch.exp(x.double())
    ulp = (torch.nextafter(exact.float(), torch.tensor(float("inf"))).double()
           - exact.float().double())
    assert ((y.double() - exact).abs() / ulp).max() <= 1.0
    assert y[-4].item() == 1.0 and y[-3].item() == 1.0
    # Below the range: 0 (e^-87 ~ 1.6e-38 is nothing beside a softmax term of at least 1).
    below = torch.tensor([-87.01, -100.0, -1e30, -float("inf")])
    _native.closedform.exp_nonpositive(below.data_ptr(), below.numel())
    assert below.eq(0).all()


@needs_extension
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_give_what_torch_gives(bad):
    logits = torch.randn(6, 5, dtype=torch.float32)
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    logits[2, 3] = bad
    plan = KernelPlan(torch.float32, 5, gamma=2.0, reduction="none")
    recorded: list[float] = []
    ours = _CompiledModulatedCE.apply(logits, targets, plan, recorded)
    ref = _FusedModulatedCE.apply(logits, targets, None, 2.0, 0.0, 0.0, 1e-6, "none", None)
    torch.testing.assert_close(ours, ref, equal_nan=True)


def test_parametric_plan_takes_numbers_and_per_member_tensors_only():
    logits, targets = torch.randn(3, 8, 5), torch.randint(0, 5, (3, 8))
    counts = COUNTS.expand(3, 5)
    plan = parametric_plan(logits, targets, counts, "none", gamma=torch.tensor([0.0, 1.0, 2.0]),
                           alpha=0.5, tau=torch.tensor([0.0, 1.0, 0.5]))
    assert (plan is not None) == (_native.closedform is not None)
    if plan is not None:
        assert plan.members == 3
    # Neutral, gated, per-sample or learnable parameters, or an unknown name: not the kernel's.
    assert parametric_plan(logits, targets, counts, "none") is None
    assert parametric_plan(logits, targets, counts, "none", gamma=1.0, gate=0.5) is None
    assert parametric_plan(logits, targets, counts, "none", gamma=torch.rand(3, 8)) is None
    assert parametric_plan(logits, targets, counts, "none",
                           gamma=torch.ones(3, requires_grad=True)) is None
    with pytest.raises(TypeError, match="unknown parameters"):
        parametric_plan(logits, targets, counts, "none", gama=1.0)


@pytest.mark.parametrize("params", [("gamma", "alpha"), ("gamma", "alpha", "tau", "margin",
                                                            "scale")])
def test_the_environment_runs_the_same_episode_with_and_without_the_extension(
        params, torch_kernels):
    task = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32,
                    minibatches_per_step=3, horizon=4)
    actions = np.random.default_rng(0).uniform(-1, 1, (4, len(params))).astype(np.float32)

    def episode():
        env = LossTuningEnv(tasks=task, action_params=params)
        obs, _ = env.reset(seed=3)
        trace, rewards = [obs], []
        for a in actions:
            obs, reward, *_ = env.step(a)
            trace.append(obs)
            rewards.append(reward)
        return env, np.array(trace), np.array(rewards)

    env, obs, rewards = episode()
    # The loss's plan is made once a step, and it is the extension's where it is built.
    assert (env.batch._loss_args[2] is not None) == (_native.closedform is not None)
    with torch_kernels():
        env_ref, obs_ref, rewards_ref = episode()
    assert env_ref.batch._loss_args[2] is None
    np.testing.assert_allclose(obs, obs_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rewards, rewards_ref, atol=1e-5)
