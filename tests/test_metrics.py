"""Tests for lossgym.metrics against scikit-learn and a plain numpy ECE reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from lossgym.metrics import (
    calibration_bins,
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    metrics_from_confusion,
)

TOL = 1e-6
SCALAR_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "ece", "nll", "worst_class_recall")


def reference_ece(confidences, correct, n_bins):
    """Textbook ECE: loop over equal-width bins (lo, hi], the first one also taking 0."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.arange(n_bins + 1) / n_bins
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        in_bin = (confidences > lo) & (confidences <= hi)
        if b == 0:
            in_bin |= confidences == 0
        if in_bin.any():
            gap = abs(correct[in_bin].mean() - confidences[in_bin].mean())
            total += in_bin.mean() * gap
    return total


def softmax(x):
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def random_case(seed, n, v, c, shared):
    """Logits [n, v, c] and targets with imbalance and absent classes in targets and preds."""
    rng = np.random.default_rng(seed)
    # Class frequencies from a sparse Dirichlet, with some classes zeroed: targets are
    # imbalanced and often miss classes.
    weights = rng.dirichlet(np.full(c, 0.5))
    weights[rng.random(c) < 0.3] = 0.0
    if weights.sum() == 0:
        weights[rng.integers(c)] = 1.0
    weights /= weights.sum()
    t_shape = (v,) if shared else (n, v)
    targets = rng.choice(c, size=t_shape, p=weights)
    # Logits partly informative, plus a per-member bias that suppresses some classes so they
    # are never predicted. Magnitudes stay far from sklearn's log_loss clipping (eps=2.2e-16).
    logits = rng.normal(size=(n, v, c)) * rng.uniform(0.1, 3.0)
    t_full = np.broadcast_to(targets, (n, v))
    logits += 1.5 * np.eye(c)[t_full] * (rng.random((n, v, 1)) < 0.6)
    logits -= 8.0 * (rng.random((n, 1, c)) < 0.25)
    return logits, targets


def sklearn_metrics(logits, targets, c, n_bins):
    """Member-by-member reference values, the dict layout of classification_metrics."""
    n = logits.shape[0]
    targets = np.broadcast_to(targets, logits.shape[:-1])
    out = {k: np.zeros(n) for k in SCALAR_KEYS}
    out["per_class_recall"] = np.zeros((n, c))
    out["class_present"] = np.zeros((n, c), dtype=bool)
    out["confusion"] = np.zeros((n, c, c), dtype=np.int64)
    labels = list(range(c))
    for i in range(n):
        y, p = targets[i], logits[i].argmax(-1)
        probs = softmax(logits[i])
        present = np.bincount(y, minlength=c) > 0
        with warnings.catch_warnings():
            # sklearn warns when y_pred has classes absent from y_true, and about 1x1 confusion
            # matrices when C = 1; both cases are intended here.
            warnings.simplefilter("ignore")
            recall = skm.recall_score(y, p, labels=labels, average=None, zero_division=0)
            out["accuracy"][i] = skm.accuracy_score(y, p)
            out["balanced_accuracy"][i] = skm.balanced_accuracy_score(y, p)
            out["macro_f1"][i] = skm.f1_score(y, p, average="macro", zero_division=0)
            out["confusion"][i] = skm.confusion_matrix(y, p, labels=labels)
        # log_loss refuses a single label; with one class every probability is 1 and NLL is 0.
        out["nll"][i] = skm.log_loss(y, probs, labels=labels) if c > 1 else 0.0
        out["per_class_recall"][i] = recall
        out["class_present"][i] = present
        out["worst_class_recall"][i] = recall[present].min()
        out["ece"][i] = reference_ece(probs.max(-1), p == y, n_bins)
    return out


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 5),
    v=st.integers(1, 60),
    c=st.integers(1, 9),
    shared=st.booleans(),
    n_bins=st.sampled_from([1, 2, 10, 15]),
)
def test_matches_sklearn(seed, n, v, c, shared, n_bins):
    logits, targets = random_case(seed, n, v, c, shared)
    got = classification_metrics(
        torch.from_numpy(logits), torch.from_numpy(targets), num_classes=c, n_bins=n_bins
    )
    ref = sklearn_metrics(logits, targets, c, n_bins)
    for key in (*SCALAR_KEYS, "per_class_recall"):
        assert got[key].dtype == torch.float64
        assert got[key].shape == ref[key].shape, key
        np.testing.assert_allclose(got[key].numpy(), ref[key], rtol=0, atol=TOL, err_msg=key)
    np.testing.assert_array_equal(got["class_present"].numpy(), ref["class_present"])
    preds = torch.from_numpy(logits).argmax(-1)
    cm = confusion_matrix(preds, torch.from_numpy(targets), c)
    assert cm.dtype == torch.int64
    np.testing.assert_array_equal(cm.numpy(), ref["confusion"])


def test_matches_sklearn_float32():
    # float32 logits give float32 results that still agree with sklearn to float32 precision.
    for seed in range(10):
        logits, targets = random_case(seed, 4, 200, 6, shared=seed % 2 == 0)
        got = classification_metrics(torch.from_numpy(logits).float(), torch.from_numpy(targets))
        ref = sklearn_metrics(logits.astype(np.float32).astype(np.float64), targets, 6, 15)
        for key in (*SCALAR_KEYS, "per_class_recall"):
            assert got[key].dtype == torch.float32
            np.testing.assert_allclose(got[key].numpy(), ref[key], atol=1e-5, err_msg=key)


def test_ece_hand_checked():
    # Two bins (0, 0.5] and (0.5, 1]. Bin 0: {0.3 wrong} -> 1/4 * |0 - 0.3| = 0.075.
    # Bin 1: {0.9 right, 0.8 wrong, 0.6 right} -> 3/4 * |2/3 - 2.3/3| = 0.075. Total 0.15.
    conf = torch.tensor([0.9, 0.8, 0.3, 0.6], dtype=torch.float64)
    correct = torch.tensor([True, False, False, True])
    assert expected_calibration_error(conf, correct, n_bins=2).item() == pytest.approx(0.15)
    assert reference_ece(conf.numpy(), correct.numpy(), 2) == pytest.approx(0.15)


def test_ece_hand_checked_from_logits():
    # Softmax probabilities chosen by hand; five bins with edges 0.2, 0.4, 0.6, 0.8.
    probs = torch.tensor(
        [[0.75, 0.25], [0.25, 0.75], [0.65, 0.35], [0.9, 0.1]], dtype=torch.float64
    )
    targets = torch.tensor([0, 0, 0, 1])
    m = classification_metrics(probs.log(), targets, n_bins=5)
    # Bin (0.6, 0.8]: 0.75 right, 0.75 wrong, 0.65 right -> |2 - 2.15| / 4.
    # Bin (0.8, 1.0]: 0.9 wrong -> |0 - 0.9| / 4.
    assert m["ece"].item() == pytest.approx((0.15 + 0.9) / 4)
    assert m["accuracy"].item() == pytest.approx(0.5)
    assert m["nll"].item() == pytest.approx(-(math.log(0.75 * 0.25 * 0.65 * 0.1)) / 4)
    # Class 0: 2 of 3 right; class 1: 0 of 1.
    assert m["per_class_recall"].tolist() == pytest.approx([2 / 3, 0.0])
    assert m["worst_class_recall"].item() == 0.0
    assert m["balanced_accuracy"].item() == pytest.approx(1 / 3)


def test_bin_edges_are_right_closed():
    conf = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    count, conf_sum, correct_sum = calibration_bins(conf, torch.ones(5), n_bins=4)
    # 0 and 0.25 in the first bin, 0.5 in (0.25, 0.5], 0.75 in (0.5, 0.75], 1 in the last.
    assert count.tolist() == [2.0, 1.0, 1.0, 1.0]
    assert conf_sum.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert correct_sum.tolist() == [2.0, 1.0, 1.0, 1.0]
    count, _, _ = calibration_bins(torch.tensor([0.5, 0.5000001]), torch.ones(2), n_bins=2)
    assert count.tolist() == [1.0, 1.0]
    # Out-of-range confidences go to the end bins rather than being dropped.
    count, _, _ = calibration_bins(torch.tensor([-0.5, 1.5]), torch.ones(2), n_bins=3)
    assert count.tolist() == [1.0, 0.0, 1.0]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    v=st.integers(1, 80),
    n_bins=st.integers(1, 20),
)
def test_ece_matches_reference(seed, v, n_bins):
    rng = np.random.default_rng(seed)
    conf = rng.random((3, v))
    # Put some confidences exactly on bin edges to exercise the boundary convention.
    on_edge = rng.random((3, v)) < 0.2
    conf[on_edge] = rng.integers(0, n_bins + 1, size=on_edge.sum()) / n_bins
    correct = rng.random((3, v)) < conf
    got = expected_calibration_error(torch.from_numpy(conf), torch.from_numpy(correct), n_bins)
    ref = [reference_ece(conf[i], correct[i], n_bins) for i in range(3)]
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=TOL)


def test_batched_equals_per_member():
    logits, targets = random_case(3, 6, 50, 5, shared=False)
    logits = torch.from_numpy(logits).reshape(2, 3, 50, 5)
    targets = torch.from_numpy(targets).reshape(2, 3, 50)
    batched = classification_metrics(logits, targets, n_bins=10)
    for key, value in batched.items():
        assert value.shape[:2] == (2, 3), key
    for a in range(2):
        for b in range(3):
            single = classification_metrics(logits[a, b], targets[a, b], n_bins=10)
            for key, value in single.items():
                assert value.shape == batched[key].shape[2:], key
                torch.testing.assert_close(value, batched[key][a, b], rtol=0, atol=1e-12)


def test_shared_targets_equal_expanded():
    logits, targets = random_case(4, 5, 40, 4, shared=True)
    logits, targets = torch.from_numpy(logits), torch.from_numpy(targets)
    shared = classification_metrics(logits, targets)
    expanded = classification_metrics(logits, targets.expand(5, 40).clone())
    for key in shared:
        torch.testing.assert_close(shared[key], expanded[key], rtol=0, atol=0)
    cm_shared = confusion_matrix(logits.argmax(-1), targets, 4)
    cm_expanded = confusion_matrix(logits.argmax(-1), targets.expand(5, 40), 4)
    assert torch.equal(cm_shared, cm_expanded)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "mixed"])
def test_non_finite_member_does_not_affect_others(bad):
    logits, targets = random_case(5, 4, 30, 3, shared=True)
    logits, targets = torch.from_numpy(logits), torch.from_numpy(targets)
    clean = classification_metrics(logits, targets)
    broken = logits.clone()
    if bad == "mixed":
        broken[1, ::2] = math.nan
        broken[1, 1::3, 0] = math.inf
        broken[1, 2::5] = -math.inf
    else:
        broken[1] = bad
    got = classification_metrics(broken, targets)
    keep = [0, 2, 3]
    for key in clean:
        assert torch.equal(got[key][keep], clean[key][keep]), key
    if bad is math.nan or bad == "mixed":
        assert torch.isnan(got["nll"][1])
        assert torch.isnan(got["ece"][1])
    # Counts stay valid for the broken member too: argmax still yields a class index.
    assert got["class_present"][1].tolist() == clean["class_present"][1].tolist()


def test_confusion_matrix_drops_out_of_range_without_leaking():
    preds = torch.tensor([[0, 1, 5, -1], [1, 1, 0, 2]])
    targets = torch.tensor([[0, 3, 1, 1], [1, 0, 0, 2]])
    cm = confusion_matrix(preds, targets, 3)
    # Member 0: only (0, 0) is valid; (3, 1), (1, 5), (1, -1) are dropped.
    assert cm[0].tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert cm[1].tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_metrics_from_confusion_accumulates_over_batches():
    logits, targets = random_case(6, 3, 90, 5, shared=True)
    logits, targets = torch.from_numpy(logits), torch.from_numpy(targets)
    preds = logits.argmax(-1)
    total = confusion_matrix(preds[:, :40], targets[:40], 5) + confusion_matrix(
        preds[:, 40:], targets[40:], 5
    )
    streamed = metrics_from_confusion(total, torch.float64)
    full = classification_metrics(logits, targets)
    for key in streamed:
        torch.testing.assert_close(streamed[key], full[key], rtol=0, atol=1e-12)


def test_half_precision_logits_count_in_float32():
    # 5000 samples: more than float16 can count exactly.
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5000, 3, generator=gen)
    targets = torch.randint(0, 3, (5000,), generator=gen)
    for dtype in (torch.float16, torch.bfloat16):
        low = logits.to(dtype)
        got = classification_metrics(low, targets)
        ref = classification_metrics(low.float(), targets)
        for key in got:
            if key != "class_present":
                assert got[key].dtype == torch.float32, key
            torch.testing.assert_close(got[key], ref[key], rtol=0, atol=0)


def test_unbatched_and_empty_cases():
    m = classification_metrics(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]))
    assert m["accuracy"].shape == ()
    assert m["accuracy"].item() == 0.5
    assert m["macro_f1"].item() == pytest.approx(skm.f1_score([0, 0], [0, 1], average="macro"))
    # A member with no samples gets NaN rather than crashing.
    empty = classification_metrics(torch.zeros(3, 0, 4), torch.zeros(0, dtype=torch.long))
    for key in SCALAR_KEYS:
        assert empty[key].shape == (3,)
        assert torch.isnan(empty[key]).all(), key
    assert not empty["class_present"].any()


def test_results_are_detached():
    logits = torch.randn(2, 10, 3, requires_grad=True)
    m = classification_metrics(logits, torch.randint(0, 3, (10,)))
    assert not any(v.requires_grad for v in m.values())


def test_input_validation():
    logits = torch.randn(2, 10, 3)
    with pytest.raises(ValueError, match="num_classes"):
        classification_metrics(logits, torch.zeros(10, dtype=torch.long), num_classes=4)
    with pytest.raises(ValueError, match="do not match"):
        classification_metrics(logits, torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="more members"):
        classification_metrics(logits, torch.zeros(5, 2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="broadcast"):
        classification_metrics(logits, torch.zeros(3, 10, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        classification_metrics(logits, torch.zeros(10))
    with pytest.raises(TypeError, match="floating"):
        classification_metrics(torch.zeros(2, 10, 3, dtype=torch.long), torch.zeros(10).long())
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(torch.randn(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="class indices"):
        confusion_matrix(logits, torch.zeros(10, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(torch.rand(10), torch.ones(10), n_bins=0)
    # Out-of-range targets are an error rather than silently wrong: on the CPU the losses'
    # IndexError, naming the target and the sample (it was a RuntimeError from the NLL gather).
    with pytest.raises(IndexError, match=r"Target 3 is out of bounds \[0, 3\) \(sample 0\)"):
        classification_metrics(logits, torch.full((10,), 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    logits, targets = random_case(7, 8, 500, 7, shared=False)
    logits, targets = torch.from_numpy(logits), torch.from_numpy(targets)
    logits[2] = math.nan
    cpu = classification_metrics(logits, targets)
    gpu = classification_metrics(logits.cuda(), targets.cuda())
    for key in cpu:
        assert gpu[key].device.type == "cuda"
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], rtol=0, atol=1e-12, equal_nan=True)


def test_fit_temperature_recovers_a_known_temperature():
    from lossgym.metrics import fit_temperature

    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4000, 5, generator=g) * 2
    y = torch.distributions.Categorical(logits=z).sample()
    t = fit_temperature(torch.stack([3 * z[0], 0.5 * z[1]]), y)
    assert t[0].item() == pytest.approx(3.0, rel=0.1)
    assert t[1].item() == pytest.approx(0.5, rel=0.1)


def test_soft_balanced_accuracy_by_hand_and_independent_of_the_logit_scale():
    from lossgym.metrics import fit_temperature, soft_balanced_accuracy

    # Two classes, temperature 1: class 0 has samples with p(0) = 0.5 and 0.9, class 1 one
    # sample with p(1) = 0.2, so the value is ((0.5 + 0.9) / 2 + 0.2) / 2 = 0.45.
    logit = math.log(0.9 / 0.1)
    z = torch.tensor([[0.0, 0.0], [logit, 0.0], [math.log(0.8 / 0.2), 0.0]],
                     dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    got = soft_balanced_accuracy(z, y, torch.tensor(1.0, dtype=torch.float64))
    assert got.item() == pytest.approx(0.45, abs=1e-12)
    # With the fitted temperature, logits 10 times smaller score the same: the scale of the
    # logits (a loss's logit scale s) does not count, only their calibrated probabilities.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 400, 5, generator=g) * 2
    torch.manual_seed(0)
    y = torch.distributions.Categorical(logits=z[0]).sample()
    big, small = soft_balanced_accuracy(z, y), soft_balanced_accuracy(z / 10, y)
    torch.testing.assert_close(big, small, atol=2e-3, rtol=0)
    assert big.shape == (2,) and bool(((big > 0) & (big < 1)).all())
    # An explicit temperature is used as given: T = fit_temperature's gives the same value.
    torch.testing.assert_close(soft_balanced_accuracy(z, y, fit_temperature(z, y)), big)
    # A class absent from the targets does not count (as in balanced accuracy).
    only = soft_balanced_accuracy(z, torch.zeros(400, dtype=torch.long), torch.ones(2))
    torch.testing.assert_close(only, torch.softmax(z, -1)[..., 0].mean(-1))
