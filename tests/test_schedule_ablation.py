"""scripts/schedule_ablation.py: the global schedule replays a trajectory exactly."""

import json

import numpy as np
import pytest
from conftest import load_script

from agents.evaluate import record_to_dict
from agents.rollout import ScheduleRule, rollout_policy
from lossgym import TaskSpec
from lossgym.schedules import LossSchedule, linear, step

TASK = TaskSpec(imbalance_ratio=20.0, n_max=200, width=32, batch_size=32,
                minibatches_per_step=2, horizon=5)
PARAMS = ("gamma", "scale", "cb")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ablation():
    return load_script("schedule_ablation")


def _records(seeds):
    rule = ScheduleRule(LossSchedule({"gamma": linear(0.0, 2.0), "scale": linear(5.0, 12.0),
                                      "cb": step([0.6], [0.0, 1.0])}), PARAMS)
    return [record_to_dict(r) for r in rollout_policy(
        rule, [TASK.replace(seed=s) for s in seeds], "agent", device="cpu")]


def test_the_global_schedule_of_one_run_replays_it_exactly(ablation):
    [record] = _records([3])
    schedule = ablation.global_schedule([record])
    [again] = rollout_policy(ScheduleRule(schedule, PARAMS), [TASK.replace(seed=3)], "g",
                             device="cpu")
    np.testing.assert_allclose(again.params, record["params"], atol=1e-6)
    assert again.test["balanced_accuracy"] == pytest.approx(record["test"]["balanced_accuracy"],
                                                            abs=1e-6)


def test_the_global_schedule_is_the_mean_and_the_script_reports_it(ablation, tmp_path):
    records = _records([1, 2])
    records[1]["params"] = (np.array(records[1]["params"]) * 0.5).tolist()
    schedule = ablation.global_schedule(records)
    mean = (np.array(records[0]["params"]) + np.array(records[1]["params"])) / 2
    for h in range(TASK.horizon):
        got = schedule(h / TASK.horizon)
        np.testing.assert_allclose([got[p] for p in PARAMS], mean[h], rtol=1e-12)
    (tmp_path / "evaluation.json").write_text(json.dumps({"records": _records([1, 2])}))
    result = ablation.main(["--run-dir", str(tmp_path)])
    # The agent here is itself a schedule, the same on both seeds: its global schedule is it.
    c = result["contrasts"]["agent − agent_global_schedule"]
    assert c["n"] == 2 and c["mean"] == pytest.approx(0.0, abs=1e-4)
    assert "agent − agent_global_schedule" in (tmp_path / "schedule_ablation.md").read_text()


def test_mixed_horizons_are_refused(ablation):
    a, b = _records([1, 2])
    b["params"] = b["params"][:-1]
    with pytest.raises(ValueError, match=r"horizons \[4, 5\]"):
        ablation.global_schedule([a, b])
