"""scripts/schedule_search.py: knot trajectories, and the search end to end on a tiny run."""

import json

import numpy as np
import pytest
from conftest import load_script

from agents.es import ESArgs, train_es
from agents.evaluate import held_out_tasks, record_to_dict, run_distribution
from agents.rollout import ScheduleRule, rollout_policy
from agents.train import AgentPolicy
from lossgym import TaskSpec

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = TaskSpec(imbalance_ratio=20.0, n_max=200, width=32, batch_size=32,
                 minibatches_per_step=2, horizon=4)


@pytest.fixture(scope="module")
def search():
    return load_script("schedule_search")


def test_knots_are_interpolated_over_the_steps_and_clipped(search):
    x = np.array([[0.0, 1.0, -0.5], [2.0, 2.0, -3.0]])  # 2 parameters x 3 knots
    a = search.knots_to_actions(x.ravel(), parameters=2, horizon=5)
    assert a.shape == (5, 2)
    np.testing.assert_allclose(a[:, 0], [0.0, 0.5, 1.0, 0.25, -0.5])
    np.testing.assert_allclose(a[:, 1], [1.0, 1.0, 1.0, 0.0, -1.0])  # clipped to [-1, 1]
    np.testing.assert_array_equal(search.knots_to_actions(np.zeros(8), 2, 20), np.zeros((20, 2)))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, one_thread):
    """A tiny residual ES run, and an evaluation.json of its agent on the held-out tasks that
    ``agents.evaluate --seed 0 --id-tasks 1 --ood-tasks 0 --seeds 2`` draws."""
    run = train_es(ESArgs(run_dir=str(tmp_path_factory.mktemp("ss") / "run"), generations=1,
                          pairs=1, progress=False,
                          env_kwargs={"reward_baseline": "base", "action_mode": "residual"}),
                   tasks=SMALL)
    rng = np.random.default_rng(0)
    tasks = held_out_tasks(run_distribution(run), rng, 1, 2, 0)
    records = rollout_policy(AgentPolicy(run), tasks, "agent", device="cpu")
    (run / "evaluation.json").write_text(json.dumps(
        {"records": [record_to_dict(r) for r in records]}))
    return run


def test_the_zero_trajectory_is_the_base_rule(search, evaluated):
    agent = AgentPolicy(evaluated)
    tasks = [SMALL.replace(seed=s) for s in (1, 2)]
    zero = [search.replay(agent, np.zeros((SMALL.horizon, len(agent.parameters))))
            for _ in tasks]
    from agents import baselines as bl

    replayed = bl.rollout_members(zero, tasks, "zero", device="cpu")
    base = rollout_policy(ScheduleRule(agent.base_rule, agent.parameters), tasks, "base",
                          device="cpu")
    for r, b in zip(replayed, base):
        np.testing.assert_allclose(r.params, b.params, atol=1e-6)
        assert r.test["balanced_accuracy"] == b.test["balanced_accuracy"]


ARGS = ["--id-tasks", "1", "--ood-tasks", "0", "--seeds", "2", "--tune-tasks", "1",
        "--budget", "4", "--popsize", "2", "--knots", "2"]


def test_the_search_runs_and_reports_the_paired_contrast(search, evaluated, tmp_path):
    out = tmp_path / "ss.md"
    result = search.main(["--run-dir", str(evaluated), *ARGS, "--out", str(out)])
    history = result["history"]
    assert [row["generation"] for row in history] == [0, 0, 1, 1]
    assert result["best"]["score"] == max(row["score"] for row in history)
    c = result["contrasts"]["agent − schedule_search"]
    assert c["n"] == 2 and np.isfinite(c["mean"])
    assert json.loads(out.with_suffix(".json").read_text())["best"] == result["best"]
    assert "agent − schedule_search" in out.read_text()


def test_the_search_refuses_held_out_tasks_it_did_not_draw(search, evaluated, tmp_path):
    data = json.loads((evaluated / "evaluation.json").read_text())
    data["records"][0]["task"]["seed"] += 1000
    (tmp_path / "evaluation.json").write_text(json.dumps(data))
    for name in ("config.json", "monitor.csv", "policy.pt", "policy.norm.json"):
        (tmp_path / name).write_bytes((evaluated / name).read_bytes())
    with pytest.raises(SystemExit):
        search.main(["--run-dir", str(tmp_path), *ARGS])
