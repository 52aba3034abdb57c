"""Ray: distributed evaluation equals the local one, killed units are retried, PBT, RLlib."""

import json
import os

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from test_evaluate import DIST, run_dir  # noqa: E402, F401

from agents import distributed  # noqa: E402
from agents.baselines import RandomPolicy  # noqa: E402
from agents.baselines import constant_rule as ConstantPolicy  # noqa: E402
from agents.evaluate import EvalArgs, evaluate  # noqa: E402
from agents.pbt import pbt_search  # noqa: E402
from agents.rollout import ScheduleRule as LossSchedulePolicy  # noqa: E402
from agents.rollout import _policy_unit, rollout_policy  # noqa: E402
from agents.train import AgentPolicy  # noqa: E402
from lossgym.tasks import TaskSpec  # noqa: E402

TINY = TaskSpec(imbalance_ratio=20.0, n_max=300, width=16, batch_size=32,
                minibatches_per_step=1, horizon=4)


@pytest.fixture(scope="module")
def executor(one_thread):
    """One local Ray with 2 CPUs for the whole module."""
    ex = distributed.RayExecutor("local", num_cpus=2)
    yield ex
    ex.close()


def records_of(path):
    return json.loads((path.parent / "evaluation.json").read_text())["records"]


def test_evaluation_on_ray_equals_the_local_one(executor, run_dir):  # noqa: F811
    small = dict(seeds=2, id_tasks=1, ood_tasks=1, tune_tasks=2, search_budget=4, device="cpu")
    local = records_of(evaluate(EvalArgs(run_dir=str(run_dir), pbt=False, **small),
                                distribution=DIST, log=False))
    text = (run_dir / "report.md").read_text()
    assert "PBT: skipped (disabled)" in text
    # The same evaluation with every population a Ray task, and the PBT baseline on top.
    path = evaluate(EvalArgs(run_dir=str(run_dir), ray="local", pbt=True, **small),
                    distribution=DIST, log=False)
    remote = records_of(path)
    assert [r for r in remote if r["method"] != "pbt"] == local
    pbt = [r for r in remote if r["method"] == "pbt"]
    assert len(pbt) == 4 and all(r["task"] in [x["task"] for x in local] for r in pbt)
    text = path.read_text()
    assert "| `pbt` |" in text
    assert "PBT (Ray Tune, synchronous): 2 trials × 2 train tasks = 4 inner runs" in text
    schedule = json.loads((run_dir / "pbt_schedule.json").read_text())
    # PBT searches every parameter the agent controls.
    assert set(schedule) == set(AgentPolicy(run_dir).parameters)


def test_a_policy_that_carries_state_gives_the_local_records_on_ray(executor):
    tasks = [TINY.replace(seed=1), TINY.replace(width=24, seed=1), TINY.replace(seed=2)]
    local = rollout_policy(RandomPolicy(3), tasks, "random", device="cpu")
    with distributed.using(executor):
        remote = rollout_policy(RandomPolicy(3), tasks, "random", device="cpu")
    for a, b in zip(local, remote):
        np.testing.assert_array_equal(a.actions, b.actions)
        assert a.test == b.test


def test_a_killed_unit_is_retried_and_no_result_is_lost(executor, tmp_path):
    marker = str(tmp_path / "attempted")

    def dies_once(index, *args):
        if index == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies mid-unit
        return os.getpid(), _policy_unit(*args)

    tasks = [[TINY.replace(seed=s)] for s in range(3)]
    units = [(i, ConstantPolicy(1.0, 0.5), tasks[i], "c", "balanced_accuracy", "cpu")
             for i in range(3)]
    out = executor.map(dies_once, units)
    assert os.path.exists(marker)
    expected = [_policy_unit(*u[1:]) for u in units]
    for (_, got), want in zip(out, expected):
        assert got[0].test == want[0].test
        np.testing.assert_array_equal(got[0].val_curve, want[0].val_curve)


def test_a_unit_that_raises_once_is_retried(executor, tmp_path):
    marker = str(tmp_path / "raised")

    def flaky(x):
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("transient")
        return x + 1

    assert executor.map(flaky, [(1,)]) == [2]


def test_a_unit_that_always_fails_reports_the_finished_ones(executor):
    def fails_on_two(x):
        if x == 2:
            raise ValueError("unit 2 cannot run")
        return x * 10

    ex = distributed.RayExecutor("local", max_retries=1)
    with pytest.raises(distributed.UnitsFailed) as info:
        ex.map(fails_on_two, [(0,), (1,), (2,)])
    assert info.value.results[:2] == [0, 10] and list(info.value.errors) == [2]


def test_pbt_with_a_tiny_budget_gives_a_replayable_schedule(executor):
    tasks = [TINY.replace(seed=1), TINY.replace(seed=2)]
    parameters = ("gamma", "alpha", "tau")  # an agent's action set: PBT searches all of it
    result = pbt_search(tasks, budget=6, seed=0, perturbation_interval=2, device="cpu",
                        parameters=parameters)
    assert result.trials == 3 and result.inner_runs == 6 and result.steps == 24
    assert len(result.trajectory) == TINY.horizon
    assert all(0 <= g <= 5 and 0 <= a <= 1 and 0 <= t <= 2 for g, a, t in result.trajectory)
    assert 0.0 <= result.score <= 1.0
    assert set(result.schedule().parameters) == set(parameters)
    held_out = [TINY.replace(seed=500, horizon=8)]
    record = rollout_policy(LossSchedulePolicy(result.schedule(), parameters), held_out, "pbt",
                            device="cpu")[0]
    # Step k of the 4 governs progress [k/4, (k+1)/4): twice on a horizon of 8.
    want = np.repeat(np.asarray(result.trajectory), 2, axis=0)
    np.testing.assert_allclose(record.params, want, atol=1e-5)


def test_rllib_ppo_steps_the_env_on_a_remote_worker(executor):
    from ray.rllib.algorithms.ppo import PPOConfig

    from agents.rllib_env import ENV_NAME, env_config, register

    register()
    config = (PPOConfig()
              .environment(ENV_NAME, env_config=env_config(TINY, device="cpu"))
              .env_runners(num_env_runners=1, rollout_fragment_length=8)
              .training(train_batch_size_per_learner=8, minibatch_size=4, num_epochs=1))
    algo = config.build_algo()
    try:
        result = algo.train()
    finally:
        algo.stop()
    assert result["env_runners"]["num_env_steps_sampled_lifetime"] >= 8


def test_pbt_run_clips_perturbed_parameters_into_their_ranges():
    from agents.pbt import _Run

    run = _Run([TINY.to_dict()], "balanced_accuracy", "cpu", ("gamma", "alpha", "scale"))
    run.step([6.0, -0.2, 33.7])  # what PBT's ×1.2 / ×0.8 perturbations can produce
    assert run.trajectory == [[5.0, 0.0, 30.0]]


def test_es_populations_on_ray_give_the_local_returns(executor):
    from test_es import es_setup

    from agents.es import run_populations

    actor, thetas, tasks, normalise, env_kwargs = es_setup(2)
    local = run_populations(actor, thetas, tasks, normalise, env_kwargs, "cpu", 3,
                            populations=2)
    with distributed.using(executor):
        remote = run_populations(actor, thetas, tasks, normalise, env_kwargs, "cpu", 3,
                                 populations=2)
    np.testing.assert_allclose(remote.returns, local.returns, atol=1e-6)
    assert remote.tasks == local.tasks
