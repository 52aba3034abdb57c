import pytest
import torch

from lossgym.optim import BatchedOptimizer


def reference_run(kind, lr, wd, mom, grads):
    p = torch.nn.Parameter(torch.linspace(-1, 1, grads.shape[-1]))
    if kind == "adamw":
        opt = torch.optim.AdamW([p], lr=lr, weight_decay=wd)
    elif kind == "adam":
        opt = torch.optim.Adam([p], lr=lr, weight_decay=wd)
    else:
        opt = torch.optim.SGD([p], lr=lr, weight_decay=wd, momentum=mom)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


@pytest.mark.parametrize("kind", ["adamw", "adam", "sgd"])
def test_each_member_matches_torch_optimizer(kind):
    torch.manual_seed(0)
    n, p, steps = 3, 7, 6
    lrs, wds, moms = [1e-2, 3e-2, 1e-3], [0.0, 1e-2, 1e-1], [0.9, 0.5, 0.0]
    params = torch.linspace(-1, 1, p).repeat(n, 1).contiguous()
    opt = BatchedOptimizer(kind, [params], lrs, wds, moms)
    grads = torch.randn(steps, n, p)
    for g in grads:
        opt.step([g], range(n))
    for i in range(n):
        ref = reference_run(kind, lrs[i], wds[i], moms[i], grads[:, i])
        torch.testing.assert_close(params[i], ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_reset_and_freeze_leave_other_members_alone(kind):
    torch.manual_seed(1)
    n, p = 3, 5
    params = torch.zeros(n, p)
    opt = BatchedOptimizer(kind, [params], [1e-2] * n, [1e-2] * n, [0.9] * n)
    grads = torch.randn(8, n, p)
    for g in grads[:4]:
        opt.step([g], range(n))
    params[1] = torch.linspace(-1, 1, p)
    opt.reset_member(1, lr=1e-2, weight_decay=1e-2, momentum=0.9)
    frozen = params[2].clone()
    for g in grads[4:]:
        opt.step([g], [0, 1])  # member 2 frozen
    ref0 = torch.zeros(p, requires_grad=True)
    ref_opt = (torch.optim.AdamW([ref0], lr=1e-2, weight_decay=1e-2) if kind == "adamw"
               else torch.optim.SGD([ref0], lr=1e-2, weight_decay=1e-2, momentum=0.9))
    for g in grads[:, 0]:
        ref0.grad = g.clone()
        ref_opt.step()
    torch.testing.assert_close(params[0], ref0.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(params[1], reference_run(kind, 1e-2, 1e-2, 0.9, grads[4:, 1]))
    assert torch.equal(params[2], frozen)


def test_members_at_different_steps_keep_their_own_bias_correction():
    torch.manual_seed(2)
    params = [torch.zeros(4, 3), torch.zeros(4, 2, 2)]
    opt = BatchedOptimizer("adamw", params, [1e-2] * 4, [1e-2] * 4, [0.0] * 4)
    grads = [(torch.randn(4, 3), torch.randn(4, 2, 2)) for _ in range(5)]
    opt.step(grads[0], [1, 3])  # members 1 and 3 run one step ahead
    for g in grads[1:]:
        opt.step(g, range(4))
    assert opt.step_count == [4, 5, 4, 5]
    for i in range(4):
        ref = [torch.zeros(3, requires_grad=True), torch.zeros(2, 2, requires_grad=True)]
        ref_opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=1e-2)
        for k, g in enumerate(grads):
            if k == 0 and i in (0, 2):
                continue
            ref[0].grad, ref[1].grad = g[0][i].clone(), g[1][i].clone()
            ref_opt.step()
        torch.testing.assert_close(params[0][i], ref[0].detach(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(params[1][i], ref[1].detach(), rtol=1e-6, atol=1e-6)


def test_bad_kind_and_lengths():
    with pytest.raises(ValueError, match="rmsprop"):
        BatchedOptimizer("rmsprop", [torch.zeros(2, 3)], [1.0] * 2, [0.0] * 2, [0.0] * 2)
    with pytest.raises(ValueError, match="lr has 1 values for 2 members"):
        BatchedOptimizer("adamw", [torch.zeros(2, 3)], [1.0], [0.0] * 2, [0.0] * 2)
    with pytest.raises(ValueError, match="contiguous"):
        BatchedOptimizer("adamw", [torch.zeros(3, 2).T], [1.0] * 2, [0.0] * 2, [0.0] * 2)
