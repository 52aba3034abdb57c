"""Bad and edge-case inputs (issue 14, "A user's first hour"): every loss checks its targets with
one message, treats an empty batch the same way, reads all-zero class counts as unknown (equal
counts) and refuses values outside their domain with a ValueError that names them."""

import hashlib
import math
import re
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_export import resign

from lossgym import AdaptiveLoss
from lossgym.actions import ActionMapping
from lossgym.export import Controller, write_export
from lossgym.features import FeatureSpec
from lossgym.losses import (
    AdaFocalLoss,
    AdaLoss,
    FocalLoss,
    LDAMLoss,
    ParametricCriterion,
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
    modulated_ce,
    parametric_loss,
    poly1_cross_entropy,
    power_class_weights,
    sigmoid_focal_loss,
    weighted_cross_entropy,
)
from lossgym.methods import METHODS, make_method
from lossgym.params import LOSS_PARAMS
from lossgym.population import MinibatchContext
from lossgym.schedules import LossSchedule, constant, join
from lossgym.tasks import TaskFactors, TaskSpec

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



def test_the_checks_read_no_values_off_the_cpu():
    """On CUDA a check that reads a value is a host sync; meta tensors have no values, so a
    loss that runs on them reads none (the CPU-only stand-in for a CUDA sync check)."""
    m = "meta"
    z = torch.randn(3, 6, C, device=m, requires_grad=True)
    y = torch.zeros(3, 6, dtype=torch.long, device=m)
    counts, g = torch.ones(C, device=m), torch.ones(3, device=m)
    outs = [
        focal_loss(z, y, gamma=g, alpha=torch.ones(C, device=m)),
        parametric_loss(z, y, counts, gamma=g, alpha=g, tau=1.0, margin=0.5, scale=5.0,
                        label_smoothing=0.1, poly_epsilon=g, gate=1.0),
        parametric_loss(z, y),
        weighted_cross_entropy(z, y, counts),
        logit_adjusted_cross_entropy(z, y, torch.zeros(3, C, device=m), tau=g),
        ldam_loss(z, y, counts, max_margin=g),
        gradient_gated_cross_entropy(z, y, g),
        flsd53_loss(z, y),
        AdaLoss(C, num_members=3).to(m)(z, y),
        class_balanced_weights(counts, torch.full((3,), 0.9, device=m)),
        focal_loss(z[:, :0], y[:, :0]),
    ]
    assert all(out.device.type == m for out in outs)


# ------------------------------------------------------------------------------- AdaptiveLoss
def _controller(lstm=False):
    """A small controller with random weights (feed-forward, or an LSTM first)."""
    mapping = ActionMapping()
    dim = FeatureSpec(mapping.parameters).dim
    first = {"kind": "lstm", "input_size": dim, "hidden_size": 8} if lstm else \
        {"kind": "linear", "in_features": dim, "out_features": 8}
    layers = [first, {"kind": "tanh"}, {"kind": "linear", "in_features": 8, "out_features": 2}]
    net = torch.nn.ModuleList([torch.nn.LSTM(dim, 8) if lstm else torch.nn.Linear(dim, 8),
                               torch.nn.Tanh(), torch.nn.Linear(8, 2)])
    return Controller(layers, dict(net.state_dict()), mapping)


EXPORTS = {
    "alpha": lambda: LossSchedule({"alpha": constant(0.5)}),
    "tau": lambda: LossSchedule({"tau": constant(1.0)}),
    "all": lambda: LossSchedule({"alpha": constant(1.0), "tau": constant(1.0),
                                 "margin": constant(0.5), "scale": constant(5.0)}),
    "controller": lambda: _controller(),
    "cb_effective": lambda: make_method("cb_effective"),
    "ldam_drw": lambda: make_method("ldam_drw"),
}


@pytest.mark.parametrize("name", sorted(EXPORTS))
@pytest.mark.parametrize("mode", ["no_grad", "eval"])
def test_a_forward_before_any_training_forward_is_finite(tmp_path, name, mode):
    """Issue 14's NaN: the counts are unknown (nothing counted yet), so they read as equal."""
    out = write_export(EXPORTS[name](), tmp_path / name, total_steps=4)
    criterion = AdaptiveLoss.load(out)
    logits, targets = torch.randn(8, 3, requires_grad=True), torch.arange(8) % 3
    with pytest.warns(UserWarning, match="no class counts"):
        if mode == "no_grad":
            with torch.no_grad():
                loss = criterion(logits, targets)
        else:
            loss = criterion.eval()(logits, targets)
    assert bool(torch.isfinite(loss))
    if name in ("alpha", "tau"):  # equal counts: uniform weights, no logit adjustment
        torch.testing.assert_close(loss.detach(), F.cross_entropy(logits.detach(), targets))


def test_all_zero_bound_counts_are_refused(tmp_path):
    rule = LossSchedule({"alpha": constant(0.5)})
    with pytest.raises(ValueError, match=r"class_counts=\[0.0, 0.0, 0.0\] is invalid.*not all "
                                         "zero"):
        write_export(rule, tmp_path / "w", total_steps=4, class_counts=[0, 0, 0])
    out = write_export(rule, tmp_path / "r", total_steps=4, class_counts=[3, 2, 1])
    resign(out, lambda m: m.update(class_counts=[0, 0, 0]))
    with pytest.raises(ValueError, match=r"manifest.json: class_counts=\[0.0, 0.0, 0.0\]"):
        AdaptiveLoss.load(out)
    with pytest.raises(ValueError, match="not all zero"):
        AdaptiveLoss(rule, class_counts=torch.zeros(3), total_steps=4)


def test_class_counts_other_than_the_bound_ones_are_refused(tmp_path):
    out = write_export(LossSchedule({"alpha": constant(1.0)}), tmp_path / "bound",
                       total_steps=4, class_counts=[10, 5, 1])
    with pytest.raises(ValueError, match=r"bound to the class counts \[10.0, 5.0, 1.0\] but "
                                         r"class_counts is \[1.0, 2.0, 3.0\]"):
        AdaptiveLoss.load(out, class_counts=[1, 2, 3])
    loaded = AdaptiveLoss.load(out, class_counts=torch.tensor([10, 5, 1]))  # the same counts
    assert loaded.class_counts.tolist() == [10.0, 5.0, 1.0]


@pytest.mark.parametrize("path", [5, None, 1.5, ["a"]])
def test_loading_what_is_not_a_path_names_it(path):
    with pytest.raises(TypeError, match=rf"path={re.escape(repr(path))} must be an export folder "
                                        "or its manifest.json"):
        AdaptiveLoss.load(path)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_non_finite_number_in_a_manifest_names_the_file(tmp_path, token):
    out = write_export(LossSchedule({"alpha": constant(0.5)}), tmp_path / "e", total_steps=4)
    path = out / "manifest.json"
    path.write_text(path.read_text().replace('"total_steps": 4', f'"total_steps": {token}'))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: .*{re.escape(token)}.*finite "
                                         "numbers only"):
        AdaptiveLoss.load(out)


def test_layers_the_weights_lack_are_refused_before_anything_is_allocated(tmp_path,
                                                                          monkeypatch):
    out = write_export(_controller(), tmp_path / "c", total_steps=4)
    dim = FeatureSpec(ActionMapping().parameters).dim
    wide = [{"kind": "linear", "in_features": dim, "out_features": 20000}, {"kind": "tanh"},
            {"kind": "linear", "in_features": 20000, "out_features": 2}]
    resign(out, lambda m: m["controller"].update(layers=wide))
    small = _controller().tensors()
    built = []
    original = torch.nn.Linear.__init__
    monkeypatch.setattr(torch.nn.Linear, "__init__",
                        lambda self, *a, **k: built.append(a) or original(self, *a, **k))
    with pytest.raises(ValueError, match=r"manifest.json: weight 0.weight is float32 of shape "
                                         rf"\(8, {dim}\); the layers need float32 of shape "
                                         rf"\(20000, {dim}\)"):
        AdaptiveLoss.load(out)
    assert built == []
    with pytest.raises(ValueError, match="weight 0.weight"):
        Controller(wide, small, ActionMapping())
    assert built == []


def test_a_weights_file_whose_header_lies_is_refused(tmp_path):
    out = write_export(_controller(), tmp_path / "c", total_steps=4)
    data = b"\xff" * 8 + (out / "actor.safetensors").read_bytes()[8:]
    (out / "actor.safetensors").write_bytes(data)
    resign(out, lambda m: m["controller"]["weights"].update(
        sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(ValueError, match="actor.safetensors cannot be read: its header claims"):
        AdaptiveLoss.load(out)


VALIDATION_EXPORTS = {"schedule": EXPORTS["alpha"], "controller": EXPORTS["controller"],
                      "adafocal": lambda: make_method("adafocal")}


@pytest.mark.parametrize("name", sorted(VALIDATION_EXPORTS))
@pytest.mark.parametrize("logits, targets, error, match", [
    (torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 0]), IndexError,
     re.escape("val_targets: Target 3 is out of bounds [0, 3) (sample 3)")),
    (torch.randn(6, 3), torch.tensor([0, -1, 2, 0, 0, 0]), IndexError, "Target -1"),
    (torch.randn(6, 3), torch.zeros(6), ValueError, "val_targets must be int64"),
    (torch.randn(6, 3), torch.zeros(5, dtype=torch.long), ValueError,
     r"val_logits must be \[V, C\] and val_targets \[V\], got \(6, 3\) and \(5,\)"),
    (torch.randn(6, 4), torch.zeros(6, dtype=torch.long), ValueError,
     "val_logits have 4 classes but this loss has 3"),
    ([[0.0, 1.0, 2.0]], [0], TypeError, "val_logits and val_targets must be tensors"),
])
def test_bad_validation_inputs_to_step_raise_and_change_nothing(tmp_path, name, logits,
                                                                targets, error, match):
    out = write_export(VALIDATION_EXPORTS[name](), tmp_path / name, total_steps=4,
                       class_counts=[5, 3, 1])
    criterion = AdaptiveLoss.load(out)
    criterion(torch.randn(8, 3, requires_grad=True), torch.arange(8) % 3).backward()
    before = criterion.get_extra_state()
    with pytest.raises(error, match=match):
        criterion.step(logits, targets)
    assert criterion.get_extra_state() == before
    with pytest.raises(error, match=match):
        criterion.begin(logits, targets)


def test_out_of_range_targets_of_a_training_forward_that_counts_labels(tmp_path):
    criterion = AdaptiveLoss(LossSchedule({"alpha": constant(0.5)}), total_steps=4)
    with pytest.warns(UserWarning), pytest.raises(IndexError, match=re.escape(
            "Target 3 is out of bounds [0, 3) (sample 1)")):
        criterion(torch.randn(4, 3, requires_grad=True), torch.tensor([0, 3, 1, 2]))
    with pytest.raises(ValueError, match="targets must be int64"):
        criterion(torch.randn(4, 3, requires_grad=True), torch.tensor([0, 1, 1, 2]).int())


def _trained(export, **kw):
    criterion = AdaptiveLoss.load(export, **kw)
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(4, 3)
    criterion.watch(model)
    for _ in range(2):
        for _ in range(2):
            x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)
            criterion(model(x), y).backward()
        with torch.no_grad():
            criterion.step(model(torch.randn(12, 4, generator=gen)), torch.arange(12) % 3)
    return criterion


@pytest.mark.parametrize("edit, match", [
    ({"steps_done": -3}, r"state\['steps_done'\]=-3 is out of range: must be an integer >= 0"),
    ({"steps_done": 1.5}, r"state\['steps_done'\]=1.5"),
    ({"total_steps": 0}, r"state\['total_steps'\]=0"),
    ({"params": "abc"}, r"state\['params'\] must be a list of 2 numbers or None, got 'abc'"),
    ({"params": [1.0, 2.0, 3.0]}, r"state\['params'\] must be a list of 2 numbers"),
    ({"params": [1.0, float("nan")]}, r"state\['params'\]\[1\]=nan"),
    ({"last_change": None}, r"state\['last_change'\] must be a list of 2 numbers"),
    ({"class_counts": [1.0]}, r"state\['class_counts'\] must be a list of 3 numbers"),
    ({"class_counts": [1.0, -2.0, 3.0]}, r"state\['class_counts'\]\[1\]=-2.0"),
    ({"num_classes": "3"}, r"state\['num_classes'\]='3'"),
    ({"history": 5}, r"state\['history'\] must be a list"),
    ({"history": [{"gamma": "x"}]}, r"state\['history'\]\[0\]\['gamma'\]='x'"),
    ({"counts_inferred": 1}, r"state\['counts_inferred'\]=1 must be a bool"),
    ({"state": [[1.0]]}, r"state\['state'\] must be None for this controller"),
    ({"observation": [0.0] * 3}, r"state\['observation'\] must be a list of \d+ numbers"),
    ({"last_metrics": {"nll": [1.0]}}, r"state\['last_metrics'\] must be None or hold exactly"),
    ({"ce": [1.0, "x"]}, r"state\['ce'\]\[1\]='x'"),
    ({"grad_norms": [-1.0]}, r"state\['grad_norms'\]\[0\]=-1.0"),
    ({"minibatch": -1}, r"state\['minibatch'\]=-1"),
    ({"batch_size": 0}, r"state\['batch_size'\]=0"),
    ({"period_sizes": [2, 0]}, r"state\['period_sizes'\]\[1\]=0"),
    ({"model_setup": {"arch": "rnn"}}, r"state\['model_setup'\] must be"),
    ({"minibatches_per_step": None}, r"state\['minibatches_per_step'\]=None"),
    ({"module": {"x": [1.0]}}, r"state\['module'\] must be None for a controller"),
    ({"temperature": -1.0}, r"state\['temperature'\]=-1.0"),
    ({"bogus": 1}, r"unknown entries \['bogus'\]"),
])
def test_a_tampered_checkpoint_is_refused_and_changes_nothing(tmp_path, edit, match):
    out = write_export(_controller(), tmp_path / "c", total_steps=4)
    criterion = _trained(out, class_counts=[5, 3, 1])
    state = criterion.state_dict()
    state["_extra_state"] = {**state["_extra_state"], **edit}
    fresh = AdaptiveLoss.load(out, class_counts=[5, 3, 1])
    before = fresh.get_extra_state()
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(state)
    assert fresh.get_extra_state() == before


@pytest.mark.parametrize("kind", ["lstm", "adafocal", "adaloss"])
def test_checkpoints_with_recurrent_or_method_state_still_round_trip(tmp_path, kind):
    rule = _controller(lstm=True) if kind == "lstm" else make_method(kind)
    out = write_export(rule, tmp_path / kind, total_steps=4)
    criterion = _trained(out, class_counts=[5, 3, 1])
    twin = AdaptiveLoss.load(out, class_counts=[5, 3, 1])
    twin.load_state_dict(criterion.state_dict())
    assert twin.state_dict()["_extra_state"] == criterion.state_dict()["_extra_state"]
    state = criterion.state_dict()
    if kind == "lstm":
        state["_extra_state"] = {**state["_extra_state"], "state": [[[[0.0] * 7]]] * 2}
        match = r"state\['state'\]\[0\] must be finite numbers of shape \(1, 1, 8\)"
    else:
        module = state["_extra_state"]["module"]
        key = sorted(module)[0]
        state["_extra_state"] = {**state["_extra_state"], "module": {**module, key: [1.0]}}
        match = r"state\['module'\] does not fit the method"
    with pytest.raises(ValueError, match=match):
        AdaptiveLoss.load(out, class_counts=[5, 3, 1]).load_state_dict(state)


# ------------------------------------------------------------------------------- probe 2
# A second probe of bad inputs on the public API: each case below failed before its fix with a
# traceback from inside torch or numpy, a message that did not name the argument, or a silent
# acceptance.
@pytest.mark.parametrize("call, needle", [
    (lambda z, t: parametric_loss(z, t, gamma="abc"), "gamma='abc' must be a float or a tensor"),
    (lambda z, t: parametric_loss(z, t, COUNTS, tau=None), "tau=None must be a float"),
    (lambda z, t: parametric_loss(z, t, COUNTS, alpha=[0.5]), r"alpha=\[0.5\] must be a float"),
    (lambda z, t: parametric_loss(z, t, gamma=True), "gamma=True must be a float"),
    (lambda z, t: focal_loss(z, t, gamma="2"), "gamma='2' must be a float"),
    (lambda z, t: focal_loss(z, t, eps="x"), "eps='x' must be a float"),
    (lambda z, t: focal_loss(z, t, alpha="x"), "alpha='x' must be a float"),
    (lambda z, t: FocalLoss(gamma="abc"), "gamma='abc' must be a float"),
    (lambda z, t: ParametricLoss(alpha=None)(z, t), "alpha=None must be a float"),
    (lambda z, t: LDAMLoss(COUNTS, scale="30"), "scale='30' must be a float"),
    (lambda z, t: sigmoid_focal_loss(z, torch.zeros_like(z), alpha="x"), "alpha='x' must be a"),
    (lambda z, t: sigmoid_focal_loss([0.0], [1.0]), "inputs and targets must be tensors"),
    (lambda z, t: gradient_gated_cross_entropy(z, t, "1"), "strength='1' must be a float"),
    (lambda z, t: parametric_loss(z, t, [40, 20, 10, 5, 1], alpha=0.5),
     "class_counts must be a tensor"),
    (lambda z, t: LDAMLoss(None), "class_counts must be a tensor"),
    (lambda z, t: LDAMLoss([40, 20, 10, 5, 1]), "class_counts must be a tensor"),
    (lambda z, t: ParametricLoss([40, 20, 10, 5, 1], alpha=0.5), "class_counts must be a tensor"),
    (lambda z, t: calibration_bin_stats(z, t, [0.0, 0.5, 1.0]), "bin_edges must be a tensor"),
    (lambda z, t: adafocal_loss(z, t, [1.0, 1.0], EDGES), "gamma_bins must be a tensor"),
    (lambda z, t: AdaFocalLoss(2).update([[0.0] * C], [0]), "logits and val_targets must be "
                                                           "tensors"),
    (lambda z, t: adaloss([1.0], [1.0]), "per_class_loss must be a tensor"),
    (lambda z, t: equal_mass_bin_edges([0.1, 0.5], 2), "confidences must be a tensor"),
    (lambda z, t: ParametricCriterion()(z, t, [1.0]), "values must be a mapping"),
    (lambda z, t: modulated_ce(z, t, "terms"), "terms must be a Terms"),
])
def test_loss_arguments_of_the_wrong_type_raise_type_error_naming_them(call, needle):
    """Before: float() or torch's own TypeError/ValueError ("could not convert string to
    float"), or an AttributeError, that named no argument."""
    with pytest.raises(TypeError, match=needle):
        call(_logits(), torch.arange(6) % C)


@pytest.mark.parametrize("call, needle", [
    (lambda z, t: focal_loss(z, t, eps=math.nan), "eps=nan"),  # a NaN loss
    (lambda z, t: focal_loss(z, t, alpha=math.inf), "alpha=inf"),  # a NaN loss
    (lambda z, t: focal_loss(z, t, alpha=-1.0), "alpha=-1.0 is out of range"),
    (lambda z, t: sigmoid_focal_loss(z, torch.zeros_like(z), alpha=math.inf), "alpha=inf"),
    (lambda z, t: sigmoid_focal_loss(z, torch.zeros_like(z), alpha=torch.ones(3)),
     r"alpha must be a float \(or a one-element float tensor\)"),
    (lambda z, t: drw_weights(COUNTS, math.nan), "progress=nan"),  # read as "not yet"
    (lambda z, t: drw_weights(COUNTS, 0.9, switch=None), "switch=None is invalid"),
    (lambda z, t: drw_weights(COUNTS, 0.9, switch=torch.ones(3)), "switch="),
    (lambda z, t: adafocal_loss(z, t, torch.ones(2), EDGES, eps=math.nan), "eps=nan"),
    (lambda z, t: gradient_gate_weights(z, t, math.nan), "strength=nan"),  # NaN weights
    (lambda z, t: adaloss(torch.rand(C), torch.rand(C), eps=math.nan), "eps=nan"),
    (lambda z, t: adaloss(torch.rand(C), torch.rand(3)), r"per_class_loss \(5,\) and "
                                                         r"running_mean \(3,\)"),
    (lambda z, t: adafocal_update(torch.ones(2), torch.rand(3), torch.rand(2)),
     r"must have one shape, got \(2,\), \(3,\) and \(2,\)"),
    (lambda z, t: adafocal_update(torch.ones(2), torch.rand(2), torch.rand(2), lam=math.nan),
     "lam=nan"),
    (lambda z, t: adafocal_update(torch.ones(2), torch.rand(2), torch.rand(2),
                                  switch_threshold=None), "switch_threshold=None"),
    (lambda z, t: equal_mass_bin_edges(torch.rand(20), 2.5), "n_bins=2.5"),
    (lambda z, t: equal_mass_bin_edges(torch.zeros(0), 2), r"confidences has shape \(0,\)"),
    (lambda z, t: AdaFocalLoss(True), "n_bins=True"),
    (lambda z, t: AdaFocalLoss(2, lam="x"), "lam='x'"),
    (lambda z, t: AdaLoss("5"), "num_classes='5'"),
    (lambda z, t: AdaLoss(C, num_members=-1), "num_members=-1"),
    (lambda z, t: AdaLoss(C, eps=math.nan), "eps=nan"),
    (lambda z, t: parametric_loss(z, t, COUNTS.to(torch.complex64), alpha=0.5),
     "class_counts must hold real numbers"),
    (lambda z, t: class_balanced_weights(torch.tensor(3.0), 0.9), r"class_counts has shape \(\)"),
    (lambda z, t: ldam_margins(torch.ones(0)), r"class_counts has shape \(0,\)"),
    (lambda z, t: power_class_weights(torch.tensor(3.0), 0.5), r"class_counts has shape \(\)"),
    (lambda z, t: focal_loss(z, t.to("meta")), "logits and targets must be on one device, got "
                                               "cpu and meta"),
    (lambda z, t: parametric_loss(z, t, label_smoothing=np.int64(2)), "label_smoothing="),
])
def test_loss_values_outside_their_domain_raise_value_error_naming_them(call, needle):
    """Before: a silent NaN or garbage (eps, alpha, progress, strength), or a RuntimeError /
    IndexError / NotImplementedError from inside torch (shapes, devices, complex counts)."""
    with pytest.raises(ValueError, match=needle):
        call(_logits(), torch.arange(6) % C)


@pytest.mark.parametrize("name", [p.name for p in LOSS_PARAMS])
@pytest.mark.parametrize("value", [1e300, -1e300, 1e7])
def test_huge_loss_parameters_are_refused_naming_them(name, value):
    """Before: scale, tau, margin and poly_epsilon at ±1e300 gave an inf or NaN loss, and
    alpha or cb gave an error about a 'weight' the caller never passed."""
    with pytest.raises(ValueError, match=re.escape(f"{name}={value!r} is out of range")):
        parametric_loss(_logits(), torch.arange(6) % C, COUNTS, **{name: value})


@pytest.mark.parametrize("value", [-0.5, 1.5])
def test_cb_outside_its_mix_is_refused_naming_it(value):
    """Before: cb = 1.5 made a class weight negative and the error named 'weight'."""
    with pytest.raises(ValueError, match=r"cb=.* must be a finite number in \[0, 1\]"):
        parametric_loss(_logits(), torch.arange(6) % C, COUNTS, cb=value)


@pytest.mark.parametrize("name", ["scale", "tau", "margin", "alpha", "poly_epsilon", "gate"])
def test_the_largest_accepted_parameters_give_a_finite_loss(name):
    loss = parametric_loss(_logits(), torch.arange(6) % C, COUNTS, **{name: 1e6})
    assert torch.isfinite(loss)


@pytest.mark.parametrize("call, needle", [
    (lambda: constant(1.0)("abc"), "progress t='abc' is invalid: must be a number in"),
    (lambda: LossSchedule({"gamma": 1.0})(None), "progress t=None is invalid"),
    (lambda: LossSchedule({"gamma": 1.0})([0.5]), r"progress t=\[0.5\] is invalid"),
    (lambda: join(None, []), "schedules=None must be a list of Schedules"),
    (lambda: join(constant(1.0), []), "schedules=Constant"),
    (lambda: TaskSpec.from_json("{bad"), "TaskSpec JSON is malformed"),
    (lambda: TaskSpec.from_json("[" * 100_000 + "]" * 100_000), "TaskSpec JSON is malformed"),
    (lambda: TaskSpec().derive_seed(["data"]), r"stream=\['data'\] is unknown"),
    (lambda: TaskFactors().draw(5), "rng must be a numpy.random.Generator, got int"),
    (lambda: ActionMapping(max_step="0.1"), "max_step='0.1' is invalid"),
    (lambda: ActionMapping(max_step=True), "max_step=True is invalid"),
    (lambda: ActionMapping(parameters=None), "parameters=None must be a sequence"),
    (lambda: ActionMapping(parameters="gamma"), "parameters='gamma' must be a sequence"),
    (lambda: ActionMapping.from_dict(None), "an action mapping must be a JSON object"),
    (lambda: make_method(["ce"]), r"method name=\['ce'\] must be a string"),
    (lambda: make_method("ce", num_members=0), "num_members=0 is out of range"),
    (lambda: make_method("adaloss", num_classes=-1), "num_classes=-1 is out of range"),
    (lambda: make_method("adaloss", num_classes="3"), "num_classes='3' is invalid"),
    (lambda: make_method("ce", device="bogus"), "device='bogus' is invalid"),
    (lambda: make_method("ce", device=5), "device=5 is invalid"),
])
def test_schedule_task_mapping_and_method_arguments_raise_value_error_naming_them(call, needle):
    """Before: float()'s message, a TypeError ('NoneType' object is not iterable, unhashable
    type), an AttributeError, a JSONDecodeError or RecursionError without the spec's name, or
    a RuntimeError from torch.device or from allocating a negative dimension."""
    with pytest.raises(ValueError, match=needle):
        call()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_method_on_cuda_without_cuda_is_refused_naming_the_device():
    """Before: AssertionError("Torch not compiled with CUDA enabled") from inside torch."""
    with pytest.raises(ValueError, match="device='cuda': no CUDA device is available here"):
        make_method("adaloss", num_classes=3, device="cuda")


def test_zero_total_steps_or_minibatches_are_refused_not_replaced(tmp_path):
    """Before: ``total_steps=0`` in load() silently took the export's total steps and
    ``minibatches_per_step=0`` silently became 1 (``x or default``)."""
    out = write_export(LossSchedule({"alpha": constant(0.5)}), tmp_path / "s", total_steps=4)
    with pytest.raises(ValueError, match="total_steps=0 is out of range"):
        AdaptiveLoss.load(out, total_steps=0)
    with pytest.raises(ValueError, match="minibatches_per_step=0 is out of range"):
        AdaptiveLoss(LossSchedule({"alpha": constant(0.5)}), total_steps=4,
                     minibatches_per_step=0)
    method = write_export(make_method("ldam_drw"), tmp_path / "m", total_steps=4)
    with pytest.raises(ValueError, match="minibatches_per_step=0 is out of range"):
        AdaptiveLoss.load(method, minibatches_per_step=0)


@pytest.mark.parametrize("setup, needle", [
    ({"lr": "1e-3"}, r"setup\['lr'\]='1e-3' is invalid"),  # TypeError: '>' not supported
    ({"lr": math.nan}, r"setup\['lr'\]=nan is invalid"),  # silently read as 1e-12
    ({"lr": -1.0}, r"setup\['lr'\]=-1.0 is out of range"),
    ({"weight_decay": None}, r"setup\['weight_decay'\]=None is invalid"),
    ({"batch_size": 0}, r"setup\['batch_size'\]=0 is out of range"),
    ({"batch_size": 12.5}, r"setup\['batch_size'\]=12.5 is invalid"),
    ({"width": True}, r"setup\['width'\]=True is invalid"),
    ({"arch": "rnn"}, r"setup\['arch'\]='rnn' is invalid: must be 'mlp' or 'cnn'"),  # as mlp
    (5, "setup=5 must be a dict"),  # TypeError: 'int' object is not iterable
])
def test_bad_setup_values_are_refused_at_construction(setup, needle):
    with pytest.raises(ValueError, match=needle):
        AdaptiveLoss(_controller(), total_steps=4, setup=setup)


@pytest.mark.parametrize("kwargs, needle", [
    ({"train_loss": "abc"}, "train_loss='abc' is invalid"),  # torch: new(): invalid data type
    ({"train_loss": math.nan}, "train_loss=nan is invalid"),  # read as a train loss of 1
    ({"train_loss": -1.0}, "train_loss=-1.0 is out of range"),
    ({"train_loss": torch.ones(2)}, r"train_loss must be a number or a one-element real "
                                    r"tensor, got a torch.float32 tensor of shape \(2,\)"),
    ({"grad_norm": -2.0}, "grad_norm=-2.0 is out of range"),  # read as a zero gradient
    ({"grad_norm": [1.0]}, r"grad_norm=\[1.0\] is invalid"),
    ({"grad_norm": 1.0, "grad_norm_std": math.inf}, "grad_norm_std=inf is invalid"),
    ({"progress": "0.5"}, "progress='0.5' is invalid"),
])
def test_bad_step_values_are_refused_and_change_nothing(tmp_path, kwargs, needle):
    out = write_export(_controller(), tmp_path / "c", total_steps=4)
    criterion = AdaptiveLoss.load(out, class_counts=[5, 3, 1])
    criterion(torch.randn(8, 3, requires_grad=True), torch.arange(8) % 3).backward()
    before = criterion.get_extra_state()
    with pytest.raises(ValueError, match=needle):
        criterion.step(**kwargs)
    assert criterion.get_extra_state() == before


@pytest.mark.parametrize("call, needle", [
    (lambda c: c.watch(5), "watch.. takes a model, an optimizer or an iterable of tensors, "
                           "got int"),
    (lambda c: c.watch("model"), "got str"),  # AttributeError: no attribute 'requires_grad'
    (lambda c: c.watch(["w"]), "it holds a str"),
    (lambda c: c.record_gradients("abc"), "record_gradients.. takes"),  # AttributeError
    (lambda c: c.record_gradients([1.0]), "it holds a float"),
    (lambda c: (c.fit_temperature(torch.randn(6, 3), torch.arange(6) % 3),
                c.calibrate([1.0, 2.0, 3.0])), "logits must be a tensor, got list"),
])
def test_watch_record_gradients_and_calibrate_name_what_they_take(call, needle):
    criterion = AdaptiveLoss(LossSchedule({"alpha": constant(0.5)}), total_steps=4,
                             class_counts=[5, 3, 1])
    with pytest.raises(TypeError, match=needle):
        call(criterion)


def test_reset_options_that_are_not_a_dict_are_refused():
    """Before: TypeError("cannot convert dictionary update sequence element #0 ...")."""
    from lossgym.envs import LossTuningEnv, LossTuningVectorEnv

    task = TaskSpec(dataset="synthetic", imbalance_ratio=10.0, n_max=100, width=8,
                    batch_size=16, minibatches_per_step=1, horizon=2)
    with pytest.raises(ValueError, match=r"options=\[\('task', 'digits'\)\] must be a dict"):
        LossTuningEnv(tasks=task).reset(seed=0, options=[("task", "digits")])
    with pytest.raises(ValueError, match="options='abc' must be a dict"):
        LossTuningVectorEnv(num_envs=2, tasks=task).reset(seed=0, options="abc")


@pytest.mark.parametrize("call, needle", [
    (lambda s: s.iqm("abc"), "values='abc' is invalid: must be real numbers"),
    (lambda s: s.iqm(None), "values=None is invalid"),  # silently NaN
    (lambda s: s.summarise({"a": 1.0}), r"values=\{'a': 1.0\} is invalid"),
    (lambda s: s.bootstrap_ci([1.0, 2j]), "values=.* is invalid"),
    (lambda s: s.stratified_mean([[1.0, "x"], [2.0]]), r"values_by_task\[0\]=.* is invalid"),
    (lambda s: s.bootstrap_ci([1.0, 2.0], level="0.9"), "level='0.9' is invalid"),
    (lambda s: s.bootstrap_ci([1.0, 2.0], n_boot=2.5), "n_boot=2.5 is invalid"),
    (lambda s: s.stratified_bootstrap_ci([[1.0, 2.0]], n_boot=None), "n_boot=None is invalid"),
    (lambda s: s.run_key({"dataset": "mnist1d"}), "must be a TaskSpec's dict with an integer seed"),
    # Before: numpy's MemoryError from allocating 10^12 rows of resampled indices.
    (lambda s: s.bootstrap_ci([1.0, 2.0], n_boot=10**12),
     r"n_boot=1000000000000 is out of range: must be an integer in \[1, 10000000\]"),
    (lambda s: s.stratified_bootstrap_ci([[1.0, 2.0]], n_boot=10**12), "n_boot=1000000000000"),
    (lambda s: s.paired_difference([1.0, 2.0], [0.0, 1.0], n_boot=10**8), "n_boot=100000000"),
])
def test_report_statistics_name_bad_values(call, needle):
    """Before: numpy's "could not convert string to float", float()'s TypeError, '<' not
    supported, a KeyError, or a silent NaN for None."""
    from agents import stats

    with pytest.raises(ValueError, match=needle):
        call(stats)


@pytest.fixture
def no_compare(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the comparison started")

    monkeypatch.setattr("lossgym.compare.compare", refuse)


@pytest.mark.parametrize("argv, shown", [
    (["compare", "--device", "meta"], "--device='meta' is invalid"),  # NotImplementedError
    (["compare", "--output", "{tmp}"], "is a folder; it must be the path of the JSON file"),
])
def test_compare_refuses_a_meta_device_and_a_folder_as_output(no_compare, tmp_path, capsys,
                                                             argv, shown):
    """Before: NotImplementedError from a meta tensor, or IsADirectoryError after the whole
    comparison had run."""
    from lossgym import cli

    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert shown in err and "Traceback" not in err


def test_export_to_a_file_as_out_folder_exits_2(tmp_path, capsys):
    """Before: FileExistsError's traceback (only FileNotFoundError was caught)."""
    from agents import export

    (tmp_path / "taken").write_text("x")
    assert export.main(["--baseline", "ce", "--out", str(tmp_path / "taken")]) == 2
    assert "File exists" in capsys.readouterr().err


@pytest.mark.parametrize("argv, shown", [
    (["--generations", "0"], "generations=0 is out of range: must be an integer >= 1"),
    (["--pairs", "-1"], "pairs=-1 is out of range"),
    (["--sigma", "inf"], "sigma=inf is invalid"),  # ran, then failed on NaN actions
    (["--learning-rate", "inf"], "learning_rate=inf is invalid"),  # trained into garbage
    (["--weight-decay", "nan"], "weight_decay=nan is invalid"),
    (["--seed", "-1"], "seed=-1 is out of range"),
    (["--env-kwargs", '{"bogus": 1}'], "env_kwargs: unknown LossTuning-v0 argument"),
    (["--env-kwargs", '{"max_step": 5}'], "max_step=5 is out of range"),
    (["--device", "bogus"], "device='bogus' is invalid"),
])
def test_es_refuses_bad_options_with_rc_2_and_writes_nothing(tmp_path, capsys, argv, shown):
    """Before: every one of these was a traceback (agents.es.main caught nothing), after
    config.json had been written for some."""
    from agents import es

    run = tmp_path / "run"
    assert es.main(["--run-dir", str(run), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert shown in err and "Traceback" not in err
    assert not (run / "config.json").exists()


@pytest.mark.parametrize("call, error, needle", [
    (lambda m, z, y: m.classification_metrics(z.unsqueeze(0), y + 3), IndexError,
     re.escape("Target 3 is out of bounds [0, 3) (sample 0)")),  # RuntimeError from gather
    (lambda m, z, y: m.fit_temperature(z, y + 3), IndexError, "Target 3 is out of bounds"),
    (lambda m, z, y: m.soft_balanced_accuracy(z, y - 1), IndexError, "Target -1 is out of"),
    (lambda m, z, y: m.classification_metrics([[[0.0, 1.0]]], [0]), TypeError,
     "logits must be a tensor, got list"),  # AttributeError: no attribute 'dim'
    (lambda m, z, y: m.fit_temperature(z.tolist(), y), TypeError,
     "val_logits must be a tensor, got list"),
    (lambda m, z, y: m.fit_temperature(z, y[:5]), ValueError,
     r"targets of shape \(5,\) do not match 20 samples"),  # RuntimeError from expand
    (lambda m, z, y: m.fit_temperature(z, y, steps=0), ValueError, "steps=0 is out of range"),
    (lambda m, z, y: m.soft_balanced_accuracy(z, y, 2.0), TypeError,
     "temperature must be a tensor, got float"),  # AttributeError: no attribute 'to'
    (lambda m, z, y: m.confusion_matrix([0, 1], [0, 1], 3), TypeError,
     "preds must be a tensor, got list"),
    (lambda m, z, y: m.confusion_matrix(y, y, "3"), ValueError, "num_classes='3' is invalid"),
    (lambda m, z, y: m.expected_calibration_error(torch.rand(20), torch.ones(20) > 0, 2.5),
     ValueError, "n_bins=2.5 is invalid"),  # RuntimeError: can't cast Float to long
    (lambda m, z, y: m.expected_calibration_error(torch.rand(20), torch.ones(5) > 0),
     ValueError, r"correct of shape \(5,\) does not broadcast"),
])
def test_metrics_name_bad_inputs(call, error, needle):
    """Before: RuntimeErrors from torch's gather, expand and scatter, or AttributeErrors for
    lists and floats."""
    from lossgym import metrics

    logits = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(error, match=needle):
        call(metrics, logits, torch.arange(20) % 3)


@pytest.mark.parametrize("name", ["gradient_gated", "gradient_gate_weights", "sigmoid_focal",
                                  "focal"])
def test_numpy_scalars_are_numbers_everywhere(name):
    """Before: the gradient gate refused np.float32 / np.int64 with "gate must be a float or
    a tensor, got float32" (naming gate, not strength), and sigmoid_focal_loss its γ, although
    the other losses take them."""
    z, t = _logits(), torch.arange(6) % C
    calls = {
        "gradient_gated": lambda s: gradient_gated_cross_entropy(z, t, s),
        "gradient_gate_weights": lambda s: gradient_gate_weights(z, t, s),
        "sigmoid_focal": lambda s: sigmoid_focal_loss(z, torch.zeros_like(z), gamma=s),
        "focal": lambda s: focal_loss(z, t, gamma=s),
    }
    for value in (np.float32(2.0), np.int64(2)):
        torch.testing.assert_close(calls[name](value), calls[name](2.0))
