"""Schedules of loss parameters: factories, composition, validation and the JSON round trip."""

import json
import math

import pytest

from lossgym.schedules import (
    Join,
    LossSchedule,
    Schedule,
    Step,
    constant,
    cosine,
    join,
    linear,
    schedule_from_dict,
    step,
)

EXAMPLES = [
    constant(1.5),
    step([0.8], [0.0, 1.0]),
    step([0.25, 0.5, 0.75], [1.0, 2.0, 3.0, 4.0]),
    linear(2.0, 0.0),
    cosine(0.0, 3.0),
    join([constant(2.0), linear(2.0, 0.0)], [0.5]),
    join([cosine(5.0, 1.0), join([constant(1.0), step([0.5], [1.0, 0.0])], [0.5])], [0.3]),
]
GRID = [i / 40 for i in range(41)]


def test_factories_compute_the_documented_values():
    assert constant(1.5)(0.3) == 1.5
    assert [step([0.8], [0.0, 1.0])(t) for t in (0.0, 0.79, 0.8, 1.0)] == [0.0, 0.0, 1.0, 1.0]
    assert linear(2.0, 0.0)(0.25) == pytest.approx(1.5)
    assert cosine(2.0, 0.0)(0.5) == pytest.approx(1.0)
    assert cosine(2.0, 0.0)(0.0) == 2.0 and cosine(2.0, 0.0)(1.0) == pytest.approx(0.0)


def test_join_feeds_each_piece_its_own_rescaled_progress():
    s = join([constant(2.0), linear(2.0, 0.0)], [0.5])
    assert s(0.25) == 2.0
    assert s(0.5) == 2.0 and s(0.75) == pytest.approx(1.0) and s(1.0) == pytest.approx(0.0)
    # Joining constants is a step function.
    as_join = join([constant(0.0), constant(1.0)], [0.8])
    assert [as_join(t) for t in GRID] == [step([0.8], [0.0, 1.0])(t) for t in GRID]


def test_progress_is_clipped_and_nan_raises():
    s = linear(0.0, 1.0)
    assert s(-3.0) == 0.0 and s(7.0) == 1.0
    with pytest.raises(ValueError, match="NaN"):
        s(math.nan)


@pytest.mark.parametrize("schedule", EXAMPLES, ids=lambda s: s.kind)
def test_json_round_trip(schedule):
    text = json.dumps(schedule.to_dict())
    back = schedule_from_dict(json.loads(text))
    assert back == schedule
    assert [back(t) for t in GRID] == [schedule(t) for t in GRID]


@pytest.mark.parametrize("schedule", EXAMPLES, ids=lambda s: s.kind)
def test_bounds_hold_every_value(schedule):
    lo, hi = schedule.bounds()
    assert all(lo - 1e-12 <= schedule(t) <= hi + 1e-12 for t in GRID)


@pytest.mark.parametrize("make, match", [
    (lambda: constant(math.inf), "finite"),
    (lambda: constant(True), "finite"),
    (lambda: step([0.5], [1.0]), "one more value"),
    (lambda: step([0.6, 0.4], [1.0, 2.0, 3.0]), "increasing"),
    (lambda: step([1.0], [1.0, 2.0]), "strictly between 0 and 1"),
    (lambda: step("0.5", [1.0, 2.0]), "list of numbers"),
    (lambda: linear(0.0, math.nan), "finite"),
    (lambda: join([constant(1.0)], [0.5]), "one more schedule"),
    (lambda: join([constant(1.0), 2.0], [0.5]), "not a Schedule"),
])
def test_factories_validate_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("values, match", [
    ({"kind": "eval", "value": 1.0}, "not known"),
    ({"kind": "__import__('os')"}, "not known"),
    ({"kind": "constant", "value": 1.0, "extra": 2}, "keys"),
    ({"kind": "constant"}, "keys"),
    ({"kind": "step", "boundaries": [0.5], "values": ["1", 2.0]}, "finite"),
    ({"kind": "join", "boundaries": [], "schedules": {"kind": "constant"}}, "list"),
    ([1, 2], "JSON object"),
])
def test_from_dict_refuses_what_the_factories_refuse(values, match):
    with pytest.raises(ValueError, match=match):
        schedule_from_dict(values)


def test_from_dict_limits_nesting():
    values = {"kind": "constant", "value": 0.0}
    for _ in range(40):
        values = {"kind": "join", "boundaries": [], "schedules": [values]}
    with pytest.raises(ValueError, match="deeper"):
        schedule_from_dict(values)


def test_loss_schedule_values_ranges_and_round_trip():
    s = LossSchedule({"alpha": step([0.8], [0.0, 1.0]), "gamma": cosine(2.0, 0.0), "tau": 1.0})
    assert s.parameters == ("gamma", "alpha", "tau")  # canonical order
    assert s(0.9) == {"gamma": pytest.approx(cosine(2.0, 0.0)(0.9)), "alpha": 1.0, "tau": 1.0}
    back = LossSchedule.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    with pytest.raises(ValueError, match="outside alpha's range"):
        LossSchedule({"alpha": linear(0.0, 1.5)})
    with pytest.raises(ValueError, match="not known"):
        LossSchedule({"beta": constant(0.0)})
    with pytest.raises(ValueError, match="at least one"):
        LossSchedule({})


def test_schedules_are_small_frozen_callables():
    s = step([0.5], [0.0, 1.0])
    assert isinstance(s, Schedule) and isinstance(s, Step)
    assert isinstance(join([s, s], [0.5]), Join)
    with pytest.raises(AttributeError):
        s.values = (2.0, 3.0)


def test_breaks_are_where_straight_pieces_meet():
    from lossgym.schedules import constant, cosine, join, linear, step

    assert constant(1.0).breaks() == () and linear(0.0, 1.0).breaks() == ()
    assert step([0.2, 0.7], [0.0, 1.0, 2.0]).breaks() == (0.2, 0.7)
    # A join breaks at its own boundaries and at its pieces', mapped into their segments.
    nested = join([constant(0.0), join([linear(0.0, 1.0), constant(1.0)], [0.5])], [0.5])
    assert nested.breaks() == (0.5, 0.75)
    assert join([step([0.5], [0.0, 1.0]), constant(1.0)], [0.4]).breaks() == (0.2, 0.4)
    with pytest.raises(ValueError, match="a cosine schedule is not piecewise linear"):
        join([constant(0.0), cosine(1.0, 0.0)], [0.5]).breaks()
