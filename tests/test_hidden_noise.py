"""scripts/hidden_noise.py: the noise draw, the hidden replay, the closed loop's latch and a
tiny end-to-end run."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.evaluate import task_replay_actions
from lossgym.features import FeatureSpec
from lossgym.methods import make_method

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hidden_noise():
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("hidden_noise",
                                                  ROOT / "scripts" / "hidden_noise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seeds_cycle_through_the_levels_and_the_replay_ignores_them(hidden_noise):
    args = hidden_noise.argparse.Namespace(distribution="default", tasks=2, seeds=4, seed=0,
                                           split="train", quick=True, levels=[0.0, 0.3])
    tasks, seeds, runs, levels = hidden_noise.hidden_runs(args)
    assert levels.tolist() == [0.0, 0.3, 0.0, 0.3] * 2
    assert [r.label_noise for r in runs] == levels.tolist()
    assert [r.seed for r in runs] == [s for ss in seeds for s in ss]
    assert all(r.replace(seed=0, label_noise=0.0) == tasks[i // 4].replace(seed=0)
               for i, r in enumerate(runs))

    class Rec:
        def __init__(self, run, a):
            self.task, self.actions = run, np.full((2, 1), float(a))

    records = [Rec(r, a) for r, a in zip(runs, (0, 1, 2, 3, 10, 20, 30, 40))]
    out = task_replay_actions(records, hidden_noise.hidden_noise_base_task)
    # Run 0 averages runs 1..3 of its task (other noise levels included), never task 2's.
    assert [float(o[0, 0]) for o in out] == [2.0, 5 / 3, 4 / 3, 1.0, 30.0, 80 / 3, 70 / 3,
                                             20.0]
    # The evaluation's own key (noise visible) averages over the same-noise seed only.
    assert [float(o[0, 0]) for o in task_replay_actions(records)][:2] == [2.0, 3.0]


def test_a_held_out_draw_takes_held_out_seeds(hidden_noise):
    from lossgym.tasks import TaskDistribution

    args = hidden_noise.argparse.Namespace(distribution="default", tasks=2, seeds=4, seed=0,
                                           split="held_out_id", quick=False, levels=[0.0, 0.4])
    _, seeds, runs, _ = hidden_noise.hidden_runs(args)
    held_out = TaskDistribution.default().held_out_id[0]
    assert all(held_out.seed_range[0] <= s < held_out.seed_range[1] for ss in seeds for s in ss)
    assert all(held_out.contains(r.replace(label_noise=0.0)) for r in runs)


def test_the_noise_detector_decides_once_at_its_step_and_latches(hidden_noise):
    base = make_method("ldam_drw").schedule()
    rule = hidden_noise.NoiseDetector(base, "gate", 0.0, 0.3, means=[0.0, 0.5],
                                      choices=[0.0, -5.0])
    assert rule.parameters[-1] == "gate" and "margin" in rule.parameters
    rule.reset(3)
    obs = np.zeros((3, FeatureSpec(rule.parameters).dim))
    col = rule.parameters.index("gate")
    seen = []
    # Row 0: a noisy gap throughout; row 1: clean at the decision, noisy after (latched clean);
    # row 2: nearer the noisy level's mean at the decision only.
    for t, gaps in zip((0.0, 0.2, 0.4, 0.6), [(0.5, 0.5, 0.0), (0.5, 0.5, 0.0),
                                               (0.5, 0.1, 0.3), (0.0, 0.5, 0.0)]):
        obs[:, hidden_noise.TRAIN_LOSS] = gaps
        seen.append(rule.params(obs, np.full(3, t))[:, col].tolist())
    assert seen == [[0, 0, 0], [0, 0, 0], [-5, 0, -5], [-5, 0, -5]]
    assert rule.level.tolist() == [1, 0, 1]
    # A new episode (progress 0) forgets the decision.
    assert rule.params(obs, np.zeros(3))[:, col].tolist() == [0, 0, 0]
    # The other parameters follow the base schedule.
    out = rule.params(obs, np.full(3, 0.9))
    assert out[0, rule.parameters.index("margin")] == base(0.9)["margin"]
    with pytest.raises(ValueError, match="expected"):
        rule.params(obs[:, :3], np.zeros(3))
    with pytest.raises(ValueError, match="one entry per noise level"):
        hidden_noise.NoiseDetector(base, "gate", 0.0, 0.3, means=[0.0], choices=[0.0, 1.0])


def test_quick_run_reports_the_oracle_room_and_the_closed_loop(hidden_noise, tmp_path,
                                                               capsys, one_thread):
    result = hidden_noise.main(["--quick", "--tasks", "2", "--seeds", "4", "--levels", "0",
                                "0.4", "--values", "0", "-5", "--out", str(tmp_path)])
    stored = json.loads((tmp_path / "hidden_noise.json").read_text(encoding="utf-8"))
    assert stored["contrasts"] == result["contrasts"]
    assert "oracle per level − best single constant" in result["contrasts"]
    assert "noise_detector − its task replay" in result["contrasts"]
    for c in result["contrasts"].values():
        assert c["ci"][0] <= c["mean"] <= c["ci"][1]
    assert len(result["gap_by_level"]["0.4"]) == 2  # one gap per step of the quick horizon
    assert set(result["mean_by_level"]) == {"gate=0", "gate=-5", "oracle per level",
                                            "noise_detector", "noise_detector_task_replay"}
    assert "| noise_detector − its task replay |" in (tmp_path / "report.md").read_text()
    with pytest.raises(SystemExit):
        hidden_noise.main(["--seeds", "3", "--out", str(tmp_path)])  # < 2 per level
    for at in ("0", "1.5"):
        with pytest.raises(SystemExit):
            hidden_noise.main(["--seeds", "6", "--at", at, "--out", str(tmp_path)])
        assert f"--at {float(at)}: the closed loop's decision point must be in (0, 1)" in \
            capsys.readouterr().err
    with pytest.raises(SystemExit):
        hidden_noise.main(["--seeds", "6", "--values", "9", "--out", str(tmp_path)])
    assert "--values=9.0 is out of range: gate must be a number in [-5, 5]" in \
        capsys.readouterr().err


def test_a_trained_agent_is_studied_against_its_hidden_task_replay(hidden_noise, tmp_path,
                                                                  one_thread):
    from agents.es import main as es_main

    run = tmp_path / "agent"
    assert es_main(["--run-dir", str(run), "--generations", "1", "--pairs", "1", "--quiet",
                    "--env-kwargs", json.dumps({
                        "tasks": {"dataset": "synthetic", "horizon": 2, "n_max": 200,
                                  "imbalance_ratio": 10.0},
                        "reward_baseline": "base", "action_mode": "residual",
                        "action_params": "tau,gate"})]) == 0
    result = hidden_noise.main(["--quick", "--tasks", "2", "--seeds", "4", "--levels", "0",
                                "0.4", "--policy", str(run), "--out", str(tmp_path / "out")])
    assert set(result["contrasts"]) == {"agent − agent_task_replay", "agent − base_rule"}
    assert set(result["mean_by_level"]) == {"agent", "agent_task_replay", "base_rule"}
    assert result["agent"] == {"parameters": ["tau", "gate"], "mode": "residual"}
    assert len(result["mean_params_by_level"]["0.4"][0]) == 2  # [steps, parameters]
    for c in result["contrasts"].values():
        assert c["ci"][0] <= c["mean"] <= c["ci"][1]
    report = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| agent − agent_task_replay |" in report and "mean loss parameters" in report
