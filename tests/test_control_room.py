"""scripts/control_room.py: the plateau rule's switch, and a tiny end-to-end run."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from lossgym.features import FeatureSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def control_room():
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("control_room",
                                                  ROOT / "scripts" / "control_room.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plateau_rule_switches_after_patience_and_restarts_at_progress_zero(control_room):
    rule = control_room.PlateauRule({"margin": 0.5}, patience=2, delta=0.01, latest=0.9)
    assert rule.parameters == ("margin", "cb")
    rule.reset(2)
    obs = np.zeros((2, FeatureSpec(rule.parameters).dim))
    col = control_room.BALANCED_ACCURACY
    # Row 0 improves, then stalls for 2 evaluations; row 1 keeps improving.
    curve = [(0.10, 0.10), (0.30, 0.30), (0.305, 0.50), (0.31, 0.70), (0.31, 0.80)]
    switched = []
    for t, (a, b) in enumerate(curve):
        obs[:, col] = (a, b)
        out = rule.params(obs, np.full(2, t / 10))
        assert out[:, 0].tolist() == [0.5, 0.5]
        switched.append(out[:, 1].tolist())
    assert switched == [[0, 0], [0, 0], [0, 0], [1, 0], [1, 0]]
    obs[:, col] = (0.9, 0.9)
    assert rule.params(obs, np.array([0.0, 0.9]))[:, 1].tolist() == [0, 1]  # restart; latest
    with pytest.raises(ValueError, match="expected"):
        rule.params(obs[:, :3], np.zeros(2))


def test_quick_run_compares_each_closed_loop_with_its_task_replay(control_room, tmp_path,
                                                                  one_thread):
    result = control_room.main(["--quick", "--tasks", "2", "--seeds", "2", "--etas", "5",
                                "--out", str(tmp_path)])
    stored = json.loads((tmp_path / "control_room.json").read_text(encoding="utf-8"))
    assert stored["contrasts"] == result["contrasts"]
    assert set(result["contrasts"]) == {
        "feedback_eta5 − its task replay", "plateau_ce_drw − its task replay",
        "plateau_ce_drw − ce_drw (switch at 0.8)", "plateau_ldam_drw − its task replay",
        "plateau_ldam_drw − ldam_drw (switch at 0.8)"}
    for c in result["contrasts"].values():
        assert c["ci"][0] <= c["mean"] <= c["ci"][1]
    assert "| plateau_ldam_drw − its task replay |" in (tmp_path / "report.md").read_text()
    with pytest.raises(SystemExit):
        control_room.main(["--seeds", "1", "--out", str(tmp_path)])
