"""lossgym.params is the one definition of the loss parameters: a parameter added through the
documented path (a LossParam and its effect in losses.parametric.TERMS) reaches the action
space, schedules, the criterion and the export; the docs tables are generated from it."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossgym import params as loss_params
from lossgym.envs import LossTuningEnv
from lossgym.export import AdaptiveLoss, read_export, write_export
from lossgym.losses import ParametricCriterion, parametric
from lossgym.schedules import LossSchedule, constant
from lossgym.tasks import TaskSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bias_param(monkeypatch):
    """A throwaway parameter: a logit bias toward class 0, added as the docstring says."""
    monkeypatch.setattr(loss_params, "LOSS_PARAMS", loss_params.LOSS_PARAMS + [
        loss_params.LossParam("bias0", -2.0, 2.0, 0.0, "b", "logit bias of class 0", "test")])

    def effect(terms, raw, cols, classes):
        shift = torch.zeros_like(classes.log_m)
        shift[..., 0] = 1.0
        terms["shift"] = shift * cols["bias0"] + (terms.get("shift", 0.0))

    effect.needs_counts = True
    monkeypatch.setitem(parametric.TERMS, "bias0", effect)
    return "bias0"


def test_a_new_parameter_reaches_every_consumer(bias_param, tmp_path):
    task = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32,
                    minibatches_per_step=2, horizon=2)
    # The action space and the mapping: one more dimension, with the parameter's range.
    env = LossTuningEnv(tasks=task, action_params=("gamma", bias_param))
    assert env.action_space.shape == (2,)
    assert f"param_{bias_param}" in env.unwrapped.batch.features.names
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([-1.0, 1.0], dtype=np.float32))
    assert info["params"][bias_param] == pytest.approx(2.0)
    # Schedules check it against its range.
    schedule = LossSchedule({bias_param: constant(1.5)})
    with pytest.raises(ValueError, match="outside bias0's range"):
        LossSchedule({bias_param: constant(3.0)})
    # The criterion: a bias of b on class 0 is cross-entropy of the shifted logits.
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(16, 3, generator=g), torch.randint(0, 3, (16,), generator=g)
    counts = torch.tensor([10.0, 5.0, 2.0])
    shifted = logits.clone()
    shifted[:, 0] += 1.5
    got = ParametricCriterion(counts)(logits, targets, {bias_param: 1.5})
    assert float(got) == pytest.approx(float(F.cross_entropy(shifted, targets)), rel=1e-6)
    neutral = ParametricCriterion(counts)(logits, targets, {bias_param: 0.0})
    assert float(neutral) == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-6)
    # The export: a schedule of it round-trips and its loss applies it.
    folder = write_export(schedule, tmp_path / "bias", total_steps=2)
    rule, _ = read_export(folder)
    loss = AdaptiveLoss(rule, class_counts=counts, total_steps=2)
    assert float(loss(logits, targets)) == pytest.approx(float(got), rel=1e-6)
    assert loss.params == {bias_param: 1.5}


def _tables(text: str) -> list[str]:
    return re.findall(r"((?:^ *\| `?name`? \| range \| neutral \| meaning \|\n)(?:^ *\|.*\|\n)+)",
                      text, flags=re.M)


@pytest.mark.parametrize("where", ["README.md", "lossgym/envs/loss_tuning.py"])
def test_the_docs_parameter_tables_are_generated_from_loss_params(where):
    text = (ROOT / where).read_text()
    tables = _tables(text)
    assert tables, f"{where} shows no parameter table"
    expected = loss_params.markdown_table()
    for table in tables:
        assert "\n".join(line.strip() for line in table.strip().splitlines()) == expected


def test_lossgym_never_imports_agents():
    code = "import lossgym, sys; import lossgym.cli; assert 'agents' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    for path in (ROOT / "lossgym").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from agents|import agents)", text, flags=re.M), path


def test_loss_params_are_well_formed():
    names = loss_params.names()
    assert len(set(names)) == len(names)
    assert set(parametric.TERMS) == set(names)
    for p in loss_params.LOSS_PARAMS:
        assert p.low <= p.neutral <= p.high and p.meaning and p.paper
    with pytest.raises(ValueError, match="parameter 'gama' is not known"):
        loss_params.param("gama")
    with pytest.raises(ValueError, match=r"gamma=7 is out of range: gamma must be a number in "
                                         r"\[0, 5\]"):
        loss_params.param("gamma").check(7)


@pytest.mark.parametrize("name", ["ldam_drw", "ce_drw", "cb_effective", "cb_focal",
                                  "logit_adjusted", "focal_2", "ce"])
def test_a_method_that_is_a_schedule_gives_its_own_losses(name):
    """LDAM-DRW and the effective-number rules are schedules of the parametric loss (``cb``
    mixes in their class-normalised weights), so they can be base rules; each schedule's loss
    and gradient equal the method's before and after the switch."""
    from lossgym.methods import MinibatchContext, make_method

    method = make_method(name)
    schedule = method.schedule()
    assert schedule is not None
    g = torch.Generator().manual_seed(1)
    counts = torch.tensor([400.0, 120.0, 30.0, 8.0, 2.0], dtype=torch.float64)
    logits = torch.randn(1, 32, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 5, (1, 32), generator=g)
    for t in (0.0, 0.5, 0.79, 0.8, 0.95):
        x = logits.clone().requires_grad_(True)
        y = logits.clone().requires_grad_(True)
        ctx = MinibatchContext(torch.tensor([t], dtype=torch.float64), counts[None])
        want = method(x, targets, ctx)
        got = ParametricCriterion(counts)(y[0], targets[0], schedule(t))
        assert float(got.detach()) == pytest.approx(float(want[0].detach()), rel=1e-12,
                                                 abs=1e-12), (name, t)
        want.sum().backward()
        got.backward()
        torch.testing.assert_close(y.grad, x.grad, rtol=1e-10, atol=1e-12)


def test_cb_mixes_effective_number_weights_and_multiplies_alpha():
    from lossgym import losses

    counts = torch.tensor([300.0, 40.0, 0.0, 5.0])
    w_cb = losses.class_balanced_weights(counts, 0.9999)
    terms = parametric.loss_terms({"cb": 0.25}, counts, (8,), torch.zeros(8, 4))
    torch.testing.assert_close(terms.weight, 0.75 + 0.25 * w_cb)
    both = parametric.loss_terms({"cb": 1.0, "alpha": 0.5}, counts, (8,), torch.zeros(8, 4))
    alpha = parametric.loss_terms({"alpha": 0.5}, counts, (8,), torch.zeros(8, 4))
    torch.testing.assert_close(both.weight, w_cb * alpha.weight)
    with pytest.raises(ValueError, match="is not a rule of the parametric loss"):
        LossTuningEnv(tasks=TaskSpec(horizon=2), action_mode="residual",
                      base_rule="adafocal")
