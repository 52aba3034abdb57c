"""Residual control around a base rule, the base-rule twin and the context features
(issue 13): zero action is the base rule exactly, the twin is a separate run of the base rule,
and an exported loss computes the env's context features in a plain loop."""

import numpy as np
import pytest
import torch

from agents.baselines import drw_rule
from agents.rollout import ScheduleRule, rollout_policy
from lossgym import TaskSpec
from lossgym.actions import ActionMapping
from lossgym.envs import LossTuningEnv, LossTuningVectorEnv
from lossgym.export import AdaptiveLoss, Controller
from lossgym.features import CONTEXT_FEATURES, FeatureSpec
from lossgym.schedules import LossSchedule, constant, step

SMALL = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32,
                 minibatches_per_step=3, horizon=4)
BASE = LossSchedule({"alpha": step([0.5], [0.0, 1.0]), "tau": constant(0.5)})
PARAMS = ("gamma", "alpha", "tau")

pytestmark = pytest.mark.usefixtures("one_thread")


def _episode(env, actions):
    obs, _ = env.reset(seed=7)
    out = [obs]
    rewards, infos = [], []
    for a in actions:
        obs, reward, _, _, info = env.step(a)
        out.append(obs)
        rewards.append(reward)
        infos.append(info)
    return np.array(out), np.array(rewards), infos


def test_zero_residual_action_is_the_base_rule_exactly():
    env = LossTuningEnv(tasks=SMALL, action_params=PARAMS, action_mode="residual",
                        base_rule=BASE, max_step=0.2)
    zeros = np.zeros((SMALL.horizon, len(PARAMS)), dtype=np.float32)
    _, _, infos = _episode(env, zeros)
    used = [[info["params"][p] for p in PARAMS] for info in infos]
    expected = [[0.0, BASE(h / SMALL.horizon).get("alpha", 0.0), 0.5]
                for h in range(SMALL.horizon)]
    np.testing.assert_array_equal(np.float32(used), np.float32(expected))
    # The same run as the base rule played as a rule (parameters set directly).
    [record] = rollout_policy(ScheduleRule(BASE, PARAMS), [env.unwrapped.task], device="cpu")
    np.testing.assert_array_equal(record.params, np.float32(used))
    # A non-zero action moves at most max_step of each range away from the base rule.
    _, _, moved = _episode(env, np.ones_like(zeros))
    gamma = [info["params"]["gamma"] for info in moved]
    assert gamma == pytest.approx([0.2 * 5.0] * SMALL.horizon)


def test_the_base_twin_is_a_separate_run_of_the_base_rule():
    env = LossTuningEnv(tasks=SMALL, action_params=PARAMS, action_mode="residual",
                        base_rule=BASE, reward_baseline="base")
    zeros = np.zeros((SMALL.horizon, len(PARAMS)), dtype=np.float32)
    _, rewards, infos = _episode(env, zeros)
    # Zero action: the member is its twin, so it earns nothing, exactly.
    np.testing.assert_array_equal(rewards, np.zeros(SMALL.horizon))
    test = infos[-1]["test"]
    [alone] = rollout_policy(ScheduleRule(BASE, PARAMS), [env.unwrapped.task], device="cpu")
    assert test["reference_balanced_accuracy"] == pytest.approx(
        alone.test["balanced_accuracy"], abs=1e-6)
    # A policy that differs from the base rule is rewarded by the difference to the twin.
    _, rewards, infos = _episode(env, np.full_like(zeros, 0.5))
    final = infos[-1]["test"]
    assert final["reference_balanced_accuracy"] == pytest.approx(
        alone.test["balanced_accuracy"], abs=1e-6)
    assert np.abs(rewards).sum() > 0


def test_base_rule_and_twin_validation():
    with pytest.raises(ValueError, match="control every parameter the base rule sets"):
        LossTuningEnv(tasks=SMALL, action_params=("gamma",), action_mode="residual",
                      base_rule=BASE)
    with pytest.raises(ValueError, match="not a rule of the parametric loss"):
        LossTuningEnv(tasks=SMALL, base_rule="adafocal")
    env = LossTuningEnv(tasks=SMALL, action_params=("gamma", "tau"), action_mode="residual",
                        base_rule="logit_adjusted")
    assert env.unwrapped.batch.base_rule.to_dict() == {"tau": {"kind": "constant",
                                                               "value": 1.0}}
    vec = LossTuningVectorEnv(num_envs=2, tasks=SMALL, action_params=PARAMS,
                              reward_baseline="base", base_rule=BASE)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (2, FeatureSpec(PARAMS).dim)


def test_an_exported_loss_computes_the_envs_context_features():
    env = LossTuningEnv(tasks=SMALL, action_params=PARAMS)
    obs, _ = env.reset(seed=3)
    names = env.unwrapped.batch.features.names
    columns = [names.index(n) for n, _, _ in CONTEXT_FEATURES]
    task = env.unwrapped.task
    counts = env.unwrapped.batch.population.class_counts[0]
    mapping = ActionMapping(PARAMS)
    dim = FeatureSpec(PARAMS).dim
    layers = [{"kind": "linear", "in_features": dim, "out_features": len(PARAMS)}]
    tensors = {"0.weight": torch.zeros(len(PARAMS), dim), "0.bias": torch.zeros(len(PARAMS))}
    loss = AdaptiveLoss(Controller(layers, tensors, mapping), class_counts=counts,
                        total_steps=task.horizon,
                        minibatches_per_step=task.minibatches_per_step)
    # What a plain loop tells it: the optimizer (lr, weight decay), the model (MLP, width),
    # the minibatches (batch size).
    model = torch.nn.Sequential(torch.nn.Linear(40, task.width), torch.nn.ReLU(),
                                torch.nn.Linear(task.width, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=task.lr,
                                  weight_decay=task.weight_decay)
    loss.watch(optimizer)
    loss.watch(model)
    x = torch.randn(task.batch_size, 40)
    loss(model(x), torch.randint(0, 10, (task.batch_size,))).backward()
    np.testing.assert_allclose(loss.context().numpy(), obs[columns], rtol=1e-5, atol=1e-5)
    # The documented defaults where the loop says nothing.
    bare = AdaptiveLoss(Controller(layers, tensors, mapping), class_counts=counts,
                        total_steps=task.horizon)
    ctx = bare.context().numpy()
    assert ctx[names.index("ctx_log_lr") - columns[0]] == pytest.approx(-3.0)
    assert ctx[names.index("ctx_cnn") - columns[0]] == 0.0


def test_old_exports_and_runs_keep_features_version_1(tmp_path):
    # A version-1 controller (no context features) still loads and decides.
    mapping = ActionMapping(("gamma", "alpha"))
    dim = FeatureSpec(mapping.parameters, 1).dim
    layers = [{"kind": "linear", "in_features": dim, "out_features": 2}]
    tensors = {"0.weight": torch.zeros(2, dim), "0.bias": torch.zeros(2)}
    loss = AdaptiveLoss(Controller(layers, tensors, mapping, features_version=1),
                        class_counts=[10.0, 5.0, 1.0], total_steps=3)
    loss.begin()
    assert loss.observation.shape == (dim,)
    with pytest.raises(ValueError, match="features version 4"):
        FeatureSpec(("gamma",), 4)
    assert drw_rule().schedule.parameters == ("gamma", "alpha")


def test_task_replay_leaves_the_run_out():
    from agents.evaluate import task_replay_actions
    from agents.rollout import EpisodeRecord

    def record(seed, value, base=SMALL):
        return EpisodeRecord(task=base.replace(seed=seed), method="agent", params=np.zeros(0),
                             actions=np.full((2, 1), value), val_curve=np.zeros(3), test={})

    other = SMALL.replace(width=64)
    records = [record(1, 1.0), record(2, 2.0), record(3, 6.0), record(1, 5.0, other),
               record(9, 7.0, other)]
    replay = task_replay_actions(records)
    np.testing.assert_allclose(replay[:, 0, 0], [4.0, 3.5, 1.5, 7.0, 5.0])
    with pytest.raises(ValueError, match="at least two seeds"):
        task_replay_actions(records[:1])


def test_residual_replays_reproduce_the_agents_run():
    # Replaying a residual run's own actions around its base rule gives the same run.
    from agents.baselines import ReplayPolicy

    class Residual:  # max_step 0.2, not the mapping's default 0.1: replays must carry it
        parameters, mode, base_rule, max_step = PARAMS, "residual", BASE, 0.2

        def reset(self, n):
            self.t = 0

        def act(self, obs):
            self.t += 1
            return np.full((len(obs), len(PARAMS)), 0.3 * (-1) ** self.t, dtype=np.float32)

    [run] = rollout_policy(Residual(), [SMALL.replace(seed=2)], device="cpu")
    [again] = rollout_policy(ReplayPolicy(run.actions[None], PARAMS, "residual", BASE,
                                          max_step=0.2), [SMALL.replace(seed=2)], device="cpu")
    np.testing.assert_array_equal(run.params, again.params)
    assert run.test == again.test


def test_ldam_drw_is_a_base_rule_whose_twin_is_the_method():
    """``base_rule="ldam_drw"`` is LDAM-DRW's schedule (margins, s = 30, effective-number
    weights from 80 % on through ``cb``): its twin scores what the LDAM-DRW method scores on
    the same task and seed, trained on its own by ``lossgym compare``."""
    from lossgym.compare import compare

    # A task that learns (LDAM-DRW 76 %, CE 57 %, CE-DRW 59 %); the switch at 0.8 falls on
    # a step boundary.
    task = TaskSpec(dataset="digits", imbalance_ratio=10.0, n_max=90, width=32, batch_size=32,
                    minibatches_per_step=6, horizon=5, lr=0.005)
    params = ("gamma", "margin", "scale", "cb")
    env = LossTuningEnv(tasks=task, action_params=params, action_mode="residual",
                        reward_baseline="base", base_rule="ldam_drw")
    _, rewards, infos = _episode(env, np.zeros((task.horizon, len(params)), np.float32))
    np.testing.assert_array_equal(rewards, np.zeros(task.horizon))
    alone = compare(env.unwrapped.task, ["ldam_drw"], seeds=[env.unwrapped.task.seed],
                    device="cpu", progress=False)
    assert infos[-1]["test"]["reference_balanced_accuracy"] == pytest.approx(
        float(alone.metrics["ldam_drw"]["balanced_accuracy"][0]), abs=1e-6)
