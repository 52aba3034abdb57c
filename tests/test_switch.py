"""The switch export (lossgym.export.Switch): schedules and a linear detector, decided in a
plain PyTorch loop exactly as the environment decides it (scripts/noise_oracle.py's rule)."""

import numpy as np
import pytest
import torch
from conftest import load_script
from test_export import SMALL, PlainLoop

from agents.baselines import rollout_members
from lossgym import AdaptiveLoss
from lossgym.export import Switch, read_export, write_export
from lossgym.features import FeatureSpec
from lossgym.schedules import LossSchedule, constant, linear, step

pytestmark = pytest.mark.usefixtures("one_thread")

PARAMS = ("margin", "scale", "cb")
SCHEDULES = [LossSchedule({"scale": constant(10.0), "cb": step([0.8], [0.0, 1.0])}),
             LossSchedule({"scale": linear(10.0, 3.0), "margin": constant(0.5)})]


def detector(seed=0):
    """Schedule 1 where the imbalance feature is above 0.4 (ratio ~16), with small weights on
    every other feature so that the whole observation enters the decision."""
    spec = FeatureSpec(PARAMS)
    k = spec.names.index("log_imbalance")
    weight = np.random.default_rng(seed).normal(scale=1e-3, size=(spec.dim, 2))
    weight[k] = [-5.0, 5.0]
    mean = np.zeros(spec.dim)
    mean[k] = 0.4
    return {"mean": mean.tolist(), "scale": [1.0] * spec.dim, "keep": [True] * spec.dim,
            "weight": weight.tolist(), "bias": [0.0, 0.0]}


@pytest.mark.parametrize("ratio, chosen", [(3.0, 0), (50.0, 1)])
def test_a_plain_loop_with_a_switch_export_decides_and_plays_as_the_env(tmp_path, ratio, chosen):
    script = load_script("noise_oracle")
    task = SMALL.replace(imbalance_ratio=ratio, seed=5, horizon=5, minibatches_per_step=2)
    switch = Switch(SCHEDULES, 0.4, PARAMS, detector())
    rule = script.SwitchRule(SCHEDULES, lambda seen: switch.choose(torch.from_numpy(seen)),
                             0.4, PARAMS)
    [record] = rollout_members([rule], [task], device="cpu")

    export = write_export(switch, tmp_path / "switch", total_steps=task.horizon)
    loop = PlainLoop(task)
    criterion = AdaptiveLoss.load(export, class_counts=torch.as_tensor(loop.pool.class_counts),
                                  minibatches_per_step=task.minibatches_per_step,
                                  setup={"batch_size": task.batch_size})
    criterion.watch(loop.model)
    criterion.begin(loop.val_logits(), loop.y_val)
    seen = None
    for _ in range(task.horizon):
        loop.train(criterion, task.minibatches_per_step)
        before = criterion.choice
        criterion.step(val_logits=loop.val_logits(), val_targets=loop.y_val)
        if before < 0 <= criterion.choice:
            seen = criterion.observation
    assert rule.level == criterion.choice == chosen
    np.testing.assert_allclose(seen.numpy(), rule.seen, atol=1e-5, rtol=0)
    params = np.array([[h[p] for p in PARAMS] for h in criterion.history[:task.horizon]])
    np.testing.assert_allclose(params, record.params, atol=1e-6, rtol=0)
    test = loop.test_metrics()
    assert float(test["balanced_accuracy"]) == pytest.approx(
        record.test["balanced_accuracy"], abs=1e-5)


def test_the_choice_round_trips_in_a_checkpoint_and_a_new_run_decides_again(tmp_path):
    export = write_export(Switch(SCHEDULES, 0.4, PARAMS, detector()), tmp_path / "s",
                          total_steps=5)
    criterion = AdaptiveLoss.load(export, class_counts=[100.0, 10.0, 1.0])
    z, y = torch.randn(8, 3, requires_grad=True), torch.arange(8) % 3
    for _ in range(3):
        criterion(z, y).backward()
        criterion.step(val_logits=z.detach(), val_targets=y, grad_norm=1.0)
    assert criterion.choice == 1 and "(schedule 1)" in repr(criterion)
    assert criterion.params == pytest.approx({"margin": 0.5, "scale": 10.0 - 7.0 * 0.6,
                                              "cb": 0.0})
    state = criterion.state_dict()
    again = AdaptiveLoss.load(export, class_counts=[100.0, 10.0, 1.0])
    again.load_state_dict(state)
    assert again.choice == 1 and again.params == criterion.params
    again.begin()
    assert again.choice == -1 and again.params == {"margin": 0.0, "scale": 10.0, "cb": 0.0}
    state["_extra_state"]["choice"] = 2
    with pytest.raises(ValueError, match=r"state\['choice'\]=2 is out of range"):
        again.load_state_dict(state)


def test_the_detector_of_the_noise_oracle_exports_with_the_same_decisions():
    script = load_script("noise_oracle")
    rng = np.random.default_rng(1)
    dim = FeatureSpec(PARAMS).dim
    x = rng.normal(size=(60, dim))
    x[:, 3] = 2.0  # constant in training: left out
    y = (x[:, 1] + 0.3 * x[:, 5] > 0).astype(int)
    fitted = script.LogisticDetector(x, y, 2)
    switch = Switch(SCHEDULES, 0.3, PARAMS, fitted.to_dict())
    rows = rng.normal(size=(40, dim)).astype(np.float32)
    assert [switch.choose(torch.from_numpy(r)) for r in rows] == \
        fitted.predict(rows.astype(np.float64)).tolist()


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["detector"].update(weight=[[1.0, 2.0]]),
     r"switch.detector.weight must be finite numbers of shape \(25, 2\)"),
    (lambda d: d["detector"].update(keep=[True] * 3), "keep must be 25 booleans"),
    (lambda d: d["detector"]["scale"].__setitem__(0, 0.0), "scale must be > 0"),
    (lambda d: d["detector"]["bias"].__setitem__(0, "x"), "bias must be a .*list of numbers"),
    (lambda d: d.update(at=0.0), r"switch.at=0.0 is out of range"),
    (lambda d: d.update(schedules=d["schedules"][:1]), "two or more loss schedules"),
    (lambda d: d["schedules"][0].update(gamma={"kind": "constant", "value": 1.0}),
     r"switch.schedules set \['gamma'\], which switch.parameters"),
    (lambda d: d.update(features={"version": 9, "names": []}), "features version 9"),
    (lambda d: d.pop("detector"), r"switch lacks \['detector'\]"),
])
def test_bad_switch_manifests_are_refused_naming_the_entry(tmp_path, edit, match):
    from test_export import resign

    export = write_export(Switch(SCHEDULES, 0.4, PARAMS, detector()), tmp_path / "s",
                          total_steps=5)
    resign(export, lambda manifest: edit(manifest["switch"]))
    with pytest.raises(ValueError, match=match):
        read_export(export)


def test_the_committed_selector_export_loads_and_decides_in_a_plain_loop():
    """``results/es-noisy-linear/noise_oracle/equal_budget/seed3/switch`` from a clone: it loads,
    trains, decides once at 30 % of training and then plays the schedule it chose."""
    import os

    path = os.path.join(os.path.dirname(__file__), os.pardir, "results", "es-noisy-linear",
                        "noise_oracle", "equal_budget", "seed3", "switch")
    criterion = AdaptiveLoss.load(path, total_steps=10, class_counts=torch.tensor([50, 10, 5]))
    switch = criterion.switch
    assert criterion.kind == "switch" and switch.at == pytest.approx(0.3)
    assert switch.parameters == PARAMS and len(switch.schedules) == 2
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    criterion.watch(optimizer)
    x, y = torch.randn(65, 4), torch.tensor([0] * 50 + [1] * 10 + [2] * 5)
    choices = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            criterion.step(val_logits=model(x), val_targets=y)
        choices.append(criterion.choice)
    assert choices[:2] == [-1, -1] and len(set(choices[2:])) == 1 and choices[2] in (0, 1)
    for t, h in enumerate(criterion.history[3:], start=3):
        expected = switch.schedules[choices[2]](t / 10)
        assert h == pytest.approx({p: expected.get(p, 0.0) for p in PARAMS})
