"""Features version 3: a piecewise-linear basis of progress after the context features, in
the env (``progress_basis=True``) and in the exported loss alike."""

import numpy as np
import pytest
import torch

from lossgym import TaskSpec
from lossgym.actions import ActionMapping
from lossgym.envs import LossTuningEnv
from lossgym.export import AdaptiveLoss, Controller, read_export, write_export
from lossgym.features import BASIS_FEATURES, FeatureSpec, progress_basis

SMALL = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32,
                 minibatches_per_step=2, horizon=3)
PARAMS = ("margin", "scale", "cb")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_basis_is_the_hat_functions_of_the_knots():
    p = torch.tensor([0.0, 1 / 6, 1 / 3, 0.5, 0.9, 1.0, 1.5])
    expected = [[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 1, 0, 0], [0, 0.5, 0.5, 0],
                [0, 0, 0.3, 0.7], [0, 0, 0, 1], [0, 0, 0, 1]]
    np.testing.assert_allclose(progress_basis(p).numpy(), expected, atol=1e-6)
    assert FeatureSpec(PARAMS, 3).dim == FeatureSpec(PARAMS, 2).dim + len(BASIS_FEATURES)
    assert FeatureSpec(PARAMS, 3).names[-4:] == tuple(n for n, _, _ in BASIS_FEATURES)


def _episode(**options):
    env = LossTuningEnv(tasks=SMALL, action_params=PARAMS, action_mode="residual",
                        base_rule="ldam_drw", **options)
    obs, _ = env.reset(seed=5)
    out = [obs]
    for a in (0.3, -0.5, 0.1):
        obs, *_ = env.step(np.full(len(PARAMS), a, dtype=np.float32))
        out.append(obs)
    return env, np.stack(out)


def test_the_env_appends_the_basis_and_changes_nothing_else():
    env, with_basis = _episode(progress_basis=True)
    _, without = _episode()
    assert env.observation_space.shape == (FeatureSpec(PARAMS, 3).dim,)
    k = len(BASIS_FEATURES)
    np.testing.assert_array_equal(with_basis[:, :-k], without)
    np.testing.assert_allclose(with_basis[:, -k:],
                               progress_basis(torch.as_tensor(with_basis[:, 0])).numpy())
    np.testing.assert_allclose(with_basis[:, -k:].sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="progress_basis=True needs context_features=True"):
        LossTuningEnv(tasks=SMALL, action_params=PARAMS, progress_basis=True,
                      context_features=False)


def test_an_exported_version_3_controller_observes_the_basis(tmp_path):
    mapping = ActionMapping(PARAMS, "residual", 0.3)
    spec = FeatureSpec(PARAMS, 3)
    layers = [{"kind": "linear", "in_features": spec.dim, "out_features": len(PARAMS)}]
    weight = torch.zeros(len(PARAMS), spec.dim)
    weight[1, -4:] = torch.tensor([-1.0, 0.0, 1.0, 0.5])  # a schedule of the scale's residual
    tensors = {"0.weight": weight, "0.bias": torch.zeros(len(PARAMS))}
    from lossgym.schedules import LossSchedule, constant

    base = LossSchedule({"margin": constant(0.5), "scale": constant(10.0), "cb": constant(0.0)})
    folder = write_export(Controller(layers, tensors, mapping, features_version=3,
                                     base_rule=base), tmp_path / "v3", total_steps=3)
    rule, manifest = read_export(folder)
    assert manifest["features"]["version"] == 3 and rule.spec.dim == spec.dim
    loss = AdaptiveLoss.load(folder, class_counts=[30.0, 10.0, 3.0])
    loss.begin()
    np.testing.assert_allclose(loss.observation[-4:].numpy(), [1, 0, 0, 0])
    for _ in range(3):
        loss.step(grad_norm=1.0)
    np.testing.assert_allclose(loss.observation[-4:].numpy(), [0, 0, 0, 1])
    # The scale follows the hats' weights: below the base at the start, above it later.
    scales = [h["scale"] for h in loss.history]
    assert scales[0] < 10.0 < scales[2]


def test_a_trained_version_3_agent_runs_the_same_in_a_plain_loop(tmp_path):
    # A residual ES run with the basis, exported, in a plain PyTorch loop: the parameters and
    # observations the env episode had, the basis columns included.
    from test_export import PlainLoop, Recorder

    from agents.es import ESArgs, train_es
    from agents.export import export_run
    from agents.rollout import rollout_policy
    from agents.train import AgentPolicy

    task = SMALL.replace(seed=3, minibatches_per_step=3)
    run = train_es(ESArgs(run_dir=str(tmp_path / "run"), generations=2, pairs=2, progress=False,
                          overrides={"policy_kwargs": {"net_arch": []}},
                          env_kwargs={"action_mode": "residual", "max_step": 0.3,
                                      "reward_baseline": "base", "base_rule": "ldam_drw",
                                      "action_params": "margin,scale,cb",
                                      "progress_basis": True}), tasks=SMALL)
    agent = AgentPolicy(run)
    assert agent.progress_basis and agent.mode == "residual"
    recorder = Recorder(agent)
    [record] = rollout_policy(recorder, [task], device="cpu")
    export = export_run(run, "controller", tmp_path / "loss", tasks=[task])
    loop = PlainLoop(task)
    criterion = AdaptiveLoss.load(export, class_counts=torch.as_tensor(loop.pool.class_counts),
                                  total_steps=task.horizon,
                                  minibatches_per_step=task.minibatches_per_step,
                                  setup={"batch_size": task.batch_size, "lr": task.lr,
                                         "weight_decay": task.weight_decay, "width": task.width})
    criterion.watch(loop.model)
    logits = loop.val_logits()
    criterion.begin(logits, loop.y_val)
    observations = [criterion.observation]
    for _ in range(task.horizon):
        loop.train(criterion, task.minibatches_per_step)
        logits = loop.val_logits()
        criterion.step(val_logits=logits, val_targets=loop.y_val)
        observations.append(criterion.observation)
    params = np.array([[h[p] for p in record.parameters]
                       for h in criterion.history[:task.horizon]])
    np.testing.assert_allclose(params, record.params, atol=1e-5, rtol=0)
    obs = torch.stack(observations[:task.horizon]).numpy()
    assert obs.shape[1] == FeatureSpec(PARAMS, 3).dim
    np.testing.assert_allclose(obs, np.concatenate(recorder.obs), atol=1e-5, rtol=0)
