"""scripts/noise_floor.py: its rule is the default agent's base rule, a run repeats exactly,
and bad arguments are named."""

import json
import re
from pathlib import Path

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def noise_floor():
    return load_script("noise_floor")


def test_its_rule_is_the_default_agents_base_rule(noise_floor):
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    agent_env = re.search(r"^AGENT_ENV = (.*?)\n\n", makefile, re.S | re.M).group(1)
    base = json.loads(agent_env.replace("\\\n", ""))["base_rule"]
    assert noise_floor.ldam_drw().to_dict() == base


@pytest.mark.usefixtures("one_thread")
def test_a_tiny_run_repeats_exactly_and_reports_every_move(noise_floor, tmp_path):
    result = noise_floor.main(["--quick", "--tasks", "2", "--seeds", "2", "--eps", "1e-4,0.3",
                               "--out", str(tmp_path)])
    assert list(result["scores"]) == ["balanced_accuracy", "soft_balanced_accuracy"]
    for scores in result["scores"].values():
        assert list(scores) == ["rule", "rule again", "margin + 0.0001", "margin + 0.3",
                                "scale 30 (a real effect)"]
        assert scores["rule again"] == scores["rule"]  # the same seed, the same runs
        assert all(len(v) == 4 and all(0 <= x <= 1 for x in v) for v in scores.values())
    report = (tmp_path / "report.md").read_text()
    assert "| rule again | " in report and "| 0.00 | 0.00 | 100% |" in report
    assert "## Test `soft_balanced_accuracy`" in report and "## Signal to noise" in report
    assert json.loads((tmp_path / "noise_floor.json").read_text())["runs"] == 4


@pytest.mark.parametrize("argv", [["--eps", "0.7"], ["--eps", "x"], ["--tasks", "0"]])
def test_bad_arguments_are_named(noise_floor, capsys, argv):
    with pytest.raises(SystemExit):
        noise_floor.main(argv)
    assert argv[0] in capsys.readouterr().err


def test_signal_to_noise_by_hand(noise_floor):
    import numpy as np

    scores = {"rule": np.array([50.0, 60.0, 70.0, 80.0]),
              "margin + 1e-06": np.array([51.0, 59.0, 70.0, 80.0]),  # sd of (1, -1, 0, 0)
              "scale 30 (a real effect)": np.array([49.0, 58.0, 70.5, 78.5])}
    ratio, right, unchanged = noise_floor.signal_to_noise(scores)
    assert ratio == pytest.approx(1.0 / np.std([1.0, -1.0, 0.0, 0.0], ddof=1))
    assert right == 0.75 and unchanged == 0.5
