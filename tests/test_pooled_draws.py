"""scripts/pooled_draws.py: contrasts per draw, pooled over the draws' runs, and over draws."""

import json

import numpy as np
import pytest
from conftest import load_script
from scipy import stats as sps

TASK = {"dataset": "mnist1d", "label_noise": 0.0}


def record(method, seed, score, task=TASK):
    return {"method": method, "task": task | {"seed": seed}, "test": {"balanced_accuracy": score}}


def write(path, records, switches=None):
    data = {"records": records} | ({"switches": switches} if switches else {})
    path.write_text(json.dumps(data))
    return str(path)


def test_pooling_tagging_and_the_interval_over_draws(tmp_path):
    script = load_script("pooled_draws")
    # Draw 1: A − B = +0.01 on both seeds; draw 2: +0.03 on both (the same base task and
    # seeds: the draw keeps the runs apart). Draw 2's B comes from a tagged file.
    one = write(tmp_path / "one.json", [record("A", s, 0.50 + 0.01) for s in (1, 2)]
                + [record("B", s, 0.50) for s in (1, 2)])
    two = write(tmp_path / "two.json", [record("A", s, 0.60 + 0.03) for s in (1, 2)]
                + [record("B", s, 0.0) for s in (1, 2)])
    two_b = write(tmp_path / "two_b.json", [record("B", s, 0.60) for s in (1, 2)])
    out = tmp_path / "out"
    assert script.main(["--draw", "d1", one, f"{one}#_x", "--draw", "d2", two, f"{two_b}#_x",
                        "--contrast", "A", "B_x", "--out", str(out)]) == 0
    result = json.loads((out / "pooled.json").read_text())["contrasts"][0]
    assert result["draws"]["d1"]["mean"] == pytest.approx(1.0)
    assert result["draws"]["d2"]["mean"] == pytest.approx(3.0)
    assert result["pooled"]["mean"] == pytest.approx(2.0) and result["pooled"]["n"] == 4
    half = sps.t.ppf(0.975, 1) * np.std([1.0, 3.0], ddof=1) / np.sqrt(2)
    assert result["over_draws"]["ci_low"] == pytest.approx(2.0 - half)
    assert result["over_draws"]["ci_high"] == pytest.approx(2.0 + half)
    assert "| `A` − `B_x` | +1.00" in (out / "report.md").read_text()


def test_switch_studies_are_named_by_their_progress(tmp_path):
    script = load_script("pooled_draws")
    study = {"method": "noise_switch_winner", "records": [record("noise_switch_winner", 1, 0.7)],
             "task_replay": {"records": [record("noise_switch_winner_task_replay", 1, 0.6)]}}
    path = write(tmp_path / "oracle.json", [record("noise_oracle", 1, 0.6)],
                 {"winner@0.3": study})
    names = {r["method"] for r in script.read_records(path)}
    assert names == {"noise_oracle", "noise_switch_winner@0.3",
                     "noise_switch_winner@0.3_task_replay"}


def test_a_contrast_no_draw_holds_and_bad_files_are_named(tmp_path, capsys):
    script = load_script("pooled_draws")
    one = write(tmp_path / "one.json", [record("A", 1, 0.5)])
    assert script.main(["--draw", "d1", one, "--contrast", "A", "B"]) == 2
    assert "no draw holds records of both 'A' and 'B'" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[]")
    assert script.main(["--draw", "d1", str(tmp_path / "bad.json"), "--contrast", "A", "B"]) == 2
    assert "holds no records" in capsys.readouterr().err
    assert script.main(["--draw", "d1", one, "--draw", "d1", one, "--contrast", "A", "B"]) == 2
    assert "--draw d1 is given twice" in capsys.readouterr().err
