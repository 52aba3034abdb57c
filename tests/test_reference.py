"""The consolidation of issue 12 keeps behaviour: outputs recorded on main before it
(tests/reference/make_reference.py) are reproduced to 1e-5 (float32) / 1e-6 (float64)."""

import json
import math
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "reference"
sys.path.insert(0, str(HERE))

import make_reference  # noqa: E402

REFERENCE = json.loads((HERE / "reference.json").read_text())


def _close(got, want, tol, path="") -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            _close(got[k], want[k], tol, f"{path}/{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, tol, f"{path}[{i}]")
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got), path
    else:
        assert got == pytest.approx(want, rel=tol, abs=tol), path


@pytest.mark.parametrize("name", ["single_2", "single_5", "vector_2", "vector_5"])
def test_episodes_match_reference(name):
    params = make_reference.FIVE if name.endswith("5") else ("gamma", "alpha")
    run = make_reference.single_episode if name.startswith("single") \
        else make_reference.vector_episode
    _close(run(params), REFERENCE[name], 1e-5)


def test_compare_matches_reference():
    _close(make_reference.compare_small(), REFERENCE["compare"], 1e-5)


def test_exports_in_a_plain_loop_match_reference():
    _close(make_reference.exports_in_plain_loop(), REFERENCE["plain_loop"], 1e-5)


def test_method_losses_and_gradients_match_reference():
    _close(make_reference.method_losses(), REFERENCE["methods"], 1e-6)
