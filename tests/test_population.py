import pytest
import torch
import torch.nn.functional as F

from lossgym.population import MinibatchContext, Population, resolve_device
from lossgym.tasks import TaskSpec

SMALL = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32,
                 minibatches_per_step=5, horizon=4)


def ce(logits, targets, ctx: MinibatchContext):
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(-1)


def run(pop: Population, criterion=ce):
    for _ in range(pop.tasks[0].horizon):
        pop.train(criterion)
    return pop


def test_member_of_population_equals_population_of_one():
    ratios = [20, 50, 10, 20, 5, 20, 20, 1]
    noises = [0, 0.1, 0, 0.2, 0, 0, 0, 0]
    tasks = [SMALL.replace(seed=s, imbalance_ratio=r, label_noise=nz)
             for s, r, nz in zip(range(8), ratios, noises)]
    big = run(Population(tasks, device="cpu"))
    val_big = big.logits("val")
    for i in (0, 3, 7):
        one = run(Population([tasks[i]], device="cpu"))
        torch.testing.assert_close(big.params[i], one.params[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(val_big[i], one.logits("val")[0], rtol=0, atol=1e-5)


def test_same_seed_same_run_and_seed_matters():
    a = run(Population([SMALL, SMALL.replace(seed=1)], device="cpu"))
    b = run(Population([SMALL], device="cpu"))
    assert torch.equal(a.params[0], b.params[0])
    assert not torch.allclose(a.params[0], a.params[1])


def test_members_have_their_own_pools():
    pop = Population([SMALL, SMALL.replace(imbalance_ratio=1.0), SMALL.replace(label_noise=0.3)],
                     device="cpu")
    counts = pop.class_counts
    assert counts[0, 0] == 300 and counts[0, -1] == 15  # floor(300 / 20)
    assert torch.all(counts[1] == 300)
    assert not torch.equal(counts[2], counts[0])  # noisy labels move the observed counts


def test_diverged_member_is_frozen_and_others_unharmed():
    tasks = [SMALL.replace(seed=s) for s in range(3)]

    def poisoned(logits, targets, ctx):
        loss = ce(logits, targets, ctx)
        if ctx.progress[1] >= 0.25:  # member 1 blows up after its first step
            loss = loss * torch.tensor([1.0, float("nan"), 1.0])
        return loss

    clean = run(Population(tasks, device="cpu"))
    pop = Population(tasks, device="cpu")
    pop.train(poisoned)
    before = pop.params[1].clone()
    stats = pop.train(poisoned)
    assert pop.diverged.tolist() == [False, True, False]
    assert stats.minibatches.tolist() == [5, 5, 5]
    for _ in range(2):
        pop.train(poisoned)
    assert torch.equal(pop.params[1], before)
    assert torch.isfinite(stats.loss).all()
    torch.testing.assert_close(pop.params[0], clean.params[0], rtol=0, atol=0)
    torch.testing.assert_close(pop.params[2], clean.params[2], rtol=0, atol=0)


def test_reset_member_leaves_others_untouched():
    tasks = [SMALL.replace(seed=s) for s in range(3)]
    ref = run(Population(tasks, device="cpu"))
    pop = Population(tasks, device="cpu")
    pop.train(ce)
    new_task = SMALL.replace(seed=42, imbalance_ratio=5.0)
    pop.reset_member(1, new_task)
    pop.train(ce, num_minibatches=[5, 15, 5])
    for _ in range(2):
        pop.train(ce)
    torch.testing.assert_close(pop.params[0], ref.params[0], rtol=0, atol=0)
    torch.testing.assert_close(pop.params[2], ref.params[2], rtol=0, atol=0)
    fresh = Population([new_task], device="cpu")
    for count in (15, 5, 5):
        fresh.train(ce, num_minibatches=count)
    torch.testing.assert_close(pop.params[1], fresh.params[0], rtol=0, atol=1e-5)
    assert pop.minibatches_done.tolist() == [20, 25, 20]


def test_inactive_members_do_not_train_and_progress_counts():
    pop = Population([SMALL, SMALL.replace(seed=1)], device="cpu")
    before = pop.params[1].clone()
    stats = pop.train(ce, active=[True, False])
    assert torch.equal(pop.params[1], before)
    assert stats.minibatches.tolist() == [5, 0]
    assert pop.progress().tolist() == [pytest.approx(0.25), 0.0]


def test_evaluation_is_batch_size_independent_and_complete():
    pop = run(Population([SMALL, SMALL.replace(seed=1)], device="cpu", eval_chunk=1024))
    small_chunks = Population([SMALL, SMALL.replace(seed=1)], device="cpu", eval_chunk=7)
    small_chunks.set_params(pop.params)
    torch.testing.assert_close(pop.logits("test"), small_chunks.logits("test"))
    metrics = pop.evaluate("val")
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "ece", "nll", "per_class_recall"):
        assert torch.isfinite(metrics[key]).all(), key
    assert metrics["balanced_accuracy"].shape == (2,)


def test_population_rejects_mixed_architectures_and_bad_input():
    with pytest.raises(ValueError, match="width"):
        Population([SMALL, SMALL.replace(width=64)], device="cpu")
    with pytest.raises(ValueError, match="at least one task"):
        Population([], device="cpu")
    pop = Population([SMALL], device="cpu")
    with pytest.raises(ValueError, match="'train'"):
        pop.logits("train")
    with pytest.raises(ValueError, match="out of range"):
        pop.reset_member(3, SMALL)
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu9")


def test_cnn_population_trains():
    task = SMALL.replace(arch="cnn", width=8, depth=2)
    pop = Population([task, task.replace(seed=1)], device="cpu")
    first = pop.evaluate("val")["nll"]
    run(pop)
    assert (pop.evaluate("val")["nll"] < first).all()


def test_auto_device_is_cpu_without_cuda():
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cpu = run(Population([SMALL], device="cpu"))
    gpu = run(Population([SMALL], device="cuda"))
    torch.testing.assert_close(gpu.params.cpu(), cpu.params, rtol=0, atol=1e-3)
