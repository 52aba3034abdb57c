"""The one check of a user's number (lossgym._checks) that every argument goes through."""

import math
import re

import numpy as np
import pytest

from lossgym import _checks as checks
from lossgym.data import class_counts
from lossgym.methods import make_method
from lossgym.tasks import TaskSpec


@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.25), np.int64(0)])
def test_real_accepts_numbers_in_range_and_returns_a_float(value):
    out = checks.real("x", value, 0.0, 1.0)
    assert type(out) is float and out == float(value)


@pytest.mark.parametrize("value, kind", [
    (True, "invalid"), ("0.5", "invalid"), (None, "invalid"), (math.nan, "invalid"),
    (math.inf, "invalid"), (1.5, "out of range"), (-0.1, "out of range"),
])
def test_real_names_the_argument_the_value_and_what_is_allowed(value, kind):
    with pytest.raises(ValueError, match=re.escape(f"x={value!r} is {kind}: must be a finite "
                                                   "number in [0, 1]") + "$"):
        checks.real("x", value, 0.0, 1.0)


def test_open_bounds_refuse_the_bound_and_say_so():
    with pytest.raises(ValueError, match=r"^lr=0\.0 is out of range: must be a finite number in "
                                         r"\(0, 10\]$"):
        checks.real("lr", 0.0, 0.0, 10.0, open_low=True)
    assert checks.real("lr", 10.0, 0.0, 10.0, open_low=True) == 10.0
    with pytest.raises(ValueError, match=r"must be a finite number < 1$"):
        checks.real("m", 1.0, high=1.0, open_high=True)


@pytest.mark.parametrize("value, message", [
    (2.0, "is invalid: must be an integer >= 1"), (False, "is invalid"),
    (0, "is out of range: must be an integer >= 1"),
])
def test_integer_refuses_floats_bools_and_values_below_the_bound(value, message):
    with pytest.raises(ValueError, match="^" + re.escape(f"n={value!r} {message}")):
        checks.integer("n", value, 1)
    assert checks.integer("n", np.int64(3), 1, 3) == 3
    with pytest.raises(ValueError, match=r"n=4 is out of range: must be an integer in \[1, 3\]"):
        checks.integer("n", 4, 1, 3)


def test_the_library_reports_bad_numbers_through_it():
    """Three modules that each had their own copy of the check now give its message."""
    with pytest.raises(ValueError, match=r"TaskSpec\.width=True is invalid: must be an integer "
                                         r"in \[4, 2048\]"):
        TaskSpec(width=True)
    with pytest.raises(ValueError, match=r"ratio=0\.5 is out of range: must be a finite number "
                                         r">= 1"):
        class_counts(10, 100, 0.5, "exp")
    with pytest.raises(ValueError, match=r"method 'ldam_drw': scale=nan is invalid"):
        make_method("ldam_drw", scale=math.nan)


def test_a_number_with_a_meaning_says_what_it_is():
    """max_step's message lost what max_step is when it moved here; it says it again."""
    from lossgym.envs.loss_tuning import LossTuningEnv

    with pytest.raises(ValueError, match=r"^max_step=2\.0 is out of range: must be a finite "
                                         r"number in \(0, 1\], the largest move as a fraction "
                                         r"of a parameter's range$"):
        LossTuningEnv(action_mode="delta", max_step=2.0)
    with pytest.raises(ValueError, match=r"^x='a' is invalid: must be a finite number, what x "
                                         r"is$"):
        checks.real("x", "a", meaning="what x is")
