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
from lossgym.losses import NATIVE_MAX_NUMEL, ParametricCriterion, Terms, parametric_loss
from lossgym.losses._kernel import _reference, modulated_ce, native_plan, reduce
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
            "t = losses.Terms(gamma=2.0); "
            "assert losses._kernel.native_plan(t, torch.zeros(4, 3), torch.zeros(4).long(), "
            "'mean') is None; "
            "print(float(losses.focal_loss(torch.zeros(4, 3), torch.zeros(4).long(), 2.0)))")
    env = dict(os.environ, LOSSGYM_NO_EXTENSION="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert abs(float(out.stdout) - (2 / 3) ** 2 * torch.log(torch.tensor(3.0)).item()) < 1e-6


def _torch(logits, targets, terms, reduction):
    """The torch kernels (autograd) of the same terms."""
    return reduce(_reference(logits, targets, terms), reduction)


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
    t = Terms(weight=weight, **kw)
    recorded: list[float] = []
    ours = modulated_ce(logits, targets, t, reduction, recorded)
    assert ours.grad_fn.name().startswith("_Native")
    # The reference is torch's autograd in float64: in float32 it is itself off by up to
    # ~1e-4 on the "everything" terms (s = 15.7), 30× more than the kernel, so a float32
    # reference made this test fail at random (it drew its upstream from the global RNG).
    exact = logits.detach().double().requires_grad_()
    t64 = Terms(**{k: v.double() if isinstance(v, torch.Tensor) else v
                   for k, v in vars(t).items()})
    ref = _torch(exact, targets, t64, reduction)
    upstream = torch.rand(ref.shape, generator=g, dtype=torch.float64) + 0.5
    (g_ours,) = torch.autograd.grad(ours, logits, upstream.to(dtype))
    (g_ref,) = torch.autograd.grad(ref, exact, upstream)
    tol = 1e-12 if dtype is torch.float64 else 3e-6
    assert ours.shape == ref.shape and ours.dtype is dtype
    torch.testing.assert_close(ours, ref.to(dtype), rtol=tol, atol=tol)
    torch.testing.assert_close(g_ours, g_ref.to(dtype), rtol=tol, atol=tol)
    # The plain cross-entropy of the untransformed logits, recorded on the way.
    ce = F.cross_entropy(logits.detach().reshape(-1, 5).double(), targets.reshape(-1))
    assert recorded == [pytest.approx(ce.item(), rel=1e-6)]


@needs_extension
@pytest.mark.parametrize("num_classes", [5, 100])  # 100: past the kernel's stack buffer
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_parametric_loss_equals_autograd_with_tensor_parameters(num_classes, dtype):
    # parametric_loss with host numbers on small CPU inputs runs the compiled kernel; tensor
    # parameters take autograd: they agree.
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 32, num_classes, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, num_classes, (4, 32), generator=g)
    counts = torch.randint(1, 500, (num_classes,), generator=g).to(dtype)
    params = {"gamma": 1.7, "alpha": 0.6, "tau": 0.4, "margin": 0.3, "scale": 8.0,
              "label_smoothing": 0.1}
    ours = parametric_loss(logits, targets, counts, **params)
    assert ours.grad_fn.name().startswith("_Native")
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
    terms = Terms(gamma=2.0)
    bad = targets.clone()
    bad[3] = 5
    with pytest.raises(IndexError, match=r"Target 5 is out of bounds \[0, 5\) \(sample 3\)"):
        modulated_ce(logits, bad, terms)
    bad[3] = -1
    with pytest.raises(IndexError, match="Target -1"):
        modulated_ce(logits, bad, terms)
    members = Terms(gamma=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="cannot be aligned"):
        modulated_ce(logits, targets, members)
    # Non-contiguous logits are copied; NaN logits give NaN, as torch's kernels do.
    wide = torch.randn(5, 8).t()
    assert not wide.is_contiguous()
    torch.testing.assert_close(modulated_ce(wide, targets, terms),
                               modulated_ce(wide.contiguous(), targets, terms))
    nan = logits.clone()
    nan[2, 1] = float("nan")
    assert torch.isnan(modulated_ce(nan, targets, terms))
    # What the extension does not take goes to torch.
    assert native_plan(terms, logits, targets, "mean") is not None
    assert native_plan(terms, logits.half(), targets, "mean") is None
    assert native_plan(terms, logits, targets.int(), "mean") is None
    big = NATIVE_MAX_NUMEL // 5 + 1
    assert native_plan(terms, torch.randn(big, 5), torch.zeros(big).long(), "mean") is None
    assert native_plan(terms, torch.randn(0, 5), torch.zeros(0).long(), "mean") is None
    assert native_plan(Terms(gamma=1.0, gate=0.5), logits, targets, "mean") is None
    assert native_plan(Terms(gamma=torch.ones(8)), logits, targets, "mean") is None  # per sample
    assert native_plan(Terms(gamma=torch.ones(1, requires_grad=True)), logits, targets,
                       "mean") is None


@needs_extension
def test_the_extension_checks_every_buffer_size():
    logits, targets = torch.randn(8, 5), torch.randint(0, 5, (8,))
    plan, _ = native_plan(Terms(gamma=2.0, weight=torch.ones(5)), logits, targets, "mean")
    assert plan.weight[1] == 5 and plan.members == 1  # named fields
    out = torch.empty(())

    def call(plan, lg=logits, tg=targets, out=out):
        return _native.closedform.modulated_ce(
            plan, tg.numel(), (lg.data_ptr(), lg.numel()), (tg.data_ptr(), tg.numel()), (0, 0),
            (out.data_ptr(), out.numel()), False)

    call(plan)
    short = torch.ones(4)
    with pytest.raises(ValueError, match="the weights buffer holds 4 values"):
        call(plan._replace(weight=(short.data_ptr(), 4)))
    with pytest.raises(ValueError, match="the logits buffer holds 35 values"):
        call(plan, lg=logits.flatten()[:35])
    with pytest.raises(ValueError, match="the out buffer"):
        call(plan._replace(reduction=0))
    with pytest.raises(ValueError, match="the member_params buffer"):
        call(plan._replace(member_params=(short.data_ptr(), 3)))


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
    terms = Terms(gamma=2.0)
    ours = modulated_ce(logits, targets, terms, "none")
    ref = _torch(logits, targets, terms, "none")
    torch.testing.assert_close(ours, ref, equal_nan=True)


def test_the_criterion_keeps_its_terms_while_the_values_stay():
    logits, targets = torch.randn(3, 8, 5), torch.randint(0, 5, (3, 8))
    counts = COUNTS.expand(3, 5)
    criterion = ParametricCriterion(counts, reduction="none")
    values = {"gamma": torch.tensor([0.0, 1.0, 2.0]), "alpha": 0.5,
              "tau": torch.tensor([0.0, 1.0, 0.5])}
    first = criterion.terms(values, logits, targets)
    assert criterion.terms(values, logits, targets) is first
    plan = native_plan(first, logits, targets, "none")
    assert (plan is not None) == (_native.closedform is not None)
    if plan is not None:
        assert plan[0].members == 3 and plan[0].class_stride == 5
    values["gamma"].add_(0.5)  # an in-place change bumps the version: new terms
    assert criterion.terms(values, logits, targets) is not first
    with pytest.raises(ValueError, match="unknown loss parameters"):
        criterion(logits, targets, {"gama": 1.0})


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
    with torch_kernels():
        env_ref, obs_ref, rewards_ref = episode()
    np.testing.assert_allclose(obs, obs_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rewards, rewards_ref, atol=1e-5)
