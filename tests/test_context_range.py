"""scripts/context_range.py: its context features are the env's and the exported loss's, and
its z-scores are against the run's training statistics."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script

from lossgym import TaskSpec
from lossgym.actions import ActionMapping
from lossgym.envs import LossTuningEnv
from lossgym.export import AdaptiveLoss, Controller
from lossgym.features import CONTEXT_FEATURES, FeatureSpec

SMALL = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32,
                 minibatches_per_step=3, horizon=4)
PARAMS = ("gamma", "alpha")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def script():
    return load_script("context_range")


def test_task_context_is_what_the_env_observes(script):
    env = LossTuningEnv(tasks=SMALL, action_params=PARAMS)
    obs, _ = env.reset(seed=3)
    names = env.unwrapped.batch.features.names
    columns = [names.index(n) for n, _, _ in CONTEXT_FEATURES]
    np.testing.assert_allclose(script.task_context(env.unwrapped.task), obs[columns],
                               rtol=1e-5, atol=1e-5)


def test_plain_loop_context_is_what_the_exported_loss_computes(script):
    counts = script.PLAIN_LOOPS["wine"]
    dim = FeatureSpec(PARAMS).dim
    controller = Controller([{"kind": "linear", "in_features": dim, "out_features": 2}],
                            {"0.weight": torch.zeros(2, dim), "0.bias": torch.zeros(2)},
                            ActionMapping(PARAMS))
    loss = AdaptiveLoss(controller, class_counts=counts, total_steps=20, minibatches_per_step=20,
                        setup={"lr": 1e-3, "weight_decay": 1e-2, "batch_size": 64,
                               "arch": "mlp", "width": 128})
    np.testing.assert_allclose(script.plain_loop_context(counts), loss.context().numpy(),
                               rtol=1e-5, atol=1e-5)


def test_report_gives_z_scores_against_the_training_statistics(script, tmp_path):
    k = len(CONTEXT_FEATURES)
    values = script.task_context(SMALL)
    mean = [0.0] * 17 + list(values)
    mean[17] = values[0] - 4.0  # train size: 4 sd above the training mean (sd 1)
    held = [False] * (17 + k)
    held[17 + 1] = True  # ctx_log_classes took one value in training
    (tmp_path / "config.json").write_text(json.dumps({"hyperparams": {"env_kwargs": {
        "action_params": "gamma,alpha,tau", "context_features": True}}}))  # 17 = 11 + 2 × 3
    (tmp_path / "policy.norm.json").write_text(json.dumps(
        {"mean": mean, "var": [1.0] * (17 + k), "epsilon": 0.0, "clip_obs": 10.0,
         "held": held}))
    (tmp_path / "evaluation.json").write_text(json.dumps(
        {"records": [{"task": SMALL.to_dict()}]}))
    text = script.report(tmp_path)
    assert "ctx_log_classes" not in text.split("| set-up |")[1].splitlines()[0]
    row = next(line for line in text.splitlines() if line.startswith("| mnist1d"))
    cells = row.strip("|").split("|")
    assert cells[1].strip() == f"**+4.0** ({values[0]:.2f})"
    assert cells[2].strip().startswith("+0.0")


def test_the_report_finds_the_context_features_before_a_progress_basis(script):
    # Features version 3 puts the progress basis after the context features: the training
    # statistics are read from the context columns, not from the last ones.
    run = Path(__file__).resolve().parents[1] / "results" / "es-noisy-linear" / "basis"
    norm = json.loads((run / "policy.norm.json").read_text())
    column = FeatureSpec(("margin", "scale", "cb"), 3).names.index("ctx_log_train_size")
    mean, sd = norm["mean"][column], (norm["var"][column] + norm["epsilon"]) ** 0.5
    assert f"ctx_log_train_size {mean:.2f} ({sd:.2f})" in script.report(run)
