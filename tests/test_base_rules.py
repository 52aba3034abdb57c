"""scripts/base_rules.py: its reference is the real LDAM-DRW, and a tiny end-to-end run."""

import json

import pytest
from conftest import load_script

from lossgym.methods import make_method


@pytest.fixture(scope="module")
def base_rules():
    return load_script("base_rules")


def test_the_references_are_ldam_drw_and_logit_adjustment(base_rules):
    rules = base_rules.CANDIDATES
    assert rules["ldam_drw_s30"][0].to_dict() == make_method("ldam_drw").schedule().to_dict()
    assert rules["logit_adjusted"][0].to_dict() == \
        make_method("logit_adjusted").schedule().to_dict()
    assert rules["ldam_drw_s10"][0](0.5) == {"margin": 0.5, "scale": 10.0, "cb": 0.0}
    assert rules["ldam_drw_s10"][0](0.8) == {"margin": 0.5, "scale": 10.0, "cb": 1.0}


@pytest.mark.usefixtures("one_thread")
def test_a_tiny_run_writes_both_settings(base_rules, tmp_path):
    result = base_rules.main([
        "--quick", "--tasks", "2", "--seeds", "2", "--plain-seeds", "2", "--datasets", "wine",
        "--steps", "2", "--minibatches", "2", "--rules", "logit_adjusted,ldam_drw_s30",
        "--out", str(tmp_path)])
    engine = result["engine"]["test_balanced_accuracy"]
    assert set(engine) == {"logit_adjusted", "ldam_drw_s30"}
    assert all(len(v) == 4 and all(0 <= x <= 1 for x in v) for v in engine.values())
    assert set(result["plain"]["wine"]) == {"ce", "logit_adjusted", "ldam_drw_s30"}
    report = (tmp_path / "report.md").read_text()
    assert "| `ldam_drw_s30` | LDAM-DRW, s = 30 |" in report and "+0.00 [+0.00, +0.00]" in report
    assert json.loads((tmp_path / "base_rules.json").read_text())["command"].startswith(
        "python scripts/base_rules.py --quick")


def test_unknown_rules_are_named(base_rules, capsys):
    with pytest.raises(SystemExit):
        base_rules.main(["--rules", "ldam_drw_s99"])
    assert "ldam_drw_s99" in capsys.readouterr().err
