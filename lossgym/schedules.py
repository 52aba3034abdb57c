"""Schedules of loss parameters over training progress t ∈ [0, 1], composable as in optax.

A :class:`Schedule` is a small frozen callable ``t -> value``. The factories check their
arguments when they are called, so a bad schedule fails where it is written, not halfway
through training:

| factory                         | value at progress t                                        |
|---------------------------------|------------------------------------------------------------|
| ``constant(v)``                 | ``v``                                                      |
| ``step(boundaries, values)``    | ``values[i]`` for ``boundaries[i-1] <= t < boundaries[i]`` |
| ``linear(start, end)``          | ``start + (end − start) · t``                              |
| ``cosine(start, end)``          | ``start + (end − start) · (1 − cos πt) / 2``               |
| ``join(schedules, boundaries)`` | ``schedules[i]`` on ``[boundaries[i-1], boundaries[i])``,  |
|                                 | fed the progress within that segment, rescaled to [0, 1]   |

Progress is clipped to [0, 1]. :class:`LossSchedule` gives each loss parameter of
:func:`lossgym.losses.parametric_loss` its own schedule (parameters it leaves out stay at their
neutral values) and checks that every value the schedule can take lies in the parameter's
range. Everything round-trips through plain JSON (``to_dict`` / ``from_dict``): no ``eval``,
no pickle.

Deferred re-weighting from 80 % of training with a focal γ that anneals from 2 to 0::

    LossSchedule({"alpha": step([0.8], [0.0, 1.0]), "gamma": cosine(2.0, 0.0)})
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from lossgym import _checks as checks
from lossgym import params as loss_params

__all__ = [
    "Constant",
    "Cosine",
    "Join",
    "Linear",
    "LossSchedule",
    "Schedule",
    "Step",
    "constant",
    "cosine",
    "join",
    "linear",
    "schedule_from_dict",
    "step",
]

#: Deepest nesting of ``join`` that :func:`schedule_from_dict` accepts.
MAX_DEPTH = 16


def _boundaries(values: object) -> tuple[float, ...]:
    """Strictly increasing progress points inside (0, 1)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"boundaries={values!r} must be a list of numbers in (0, 1)")
    out = tuple(checks.real(f"boundaries[{i}]", v) for i, v in enumerate(values))
    for i, b in enumerate(out):
        if not 0.0 < b < 1.0:
            raise ValueError(f"boundaries[{i}]={b!r} must lie strictly between 0 and 1")
        if i and b <= out[i - 1]:
            raise ValueError(f"boundaries {list(out)} must be strictly increasing")
    return out


def _progress(t: float) -> float:
    """``t`` as a float clipped to [0, 1] (a one-element tensor reads as its number)."""
    try:
        if isinstance(t, (str, bytes, bool)):
            raise TypeError
        t = float(t)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"progress t={t!r:.80} is invalid: must be a number in [0, 1]") \
            from None
    if math.isnan(t):
        raise ValueError("progress is NaN; it must be a number in [0, 1]")
    return min(max(t, 0.0), 1.0)


class Schedule:
    """Base of the schedules: a value for every training progress ``t`` in [0, 1]."""

    kind: ClassVar[str] = ""

    def __call__(self, t: float) -> float:
        return self.at(_progress(t))

    def at(self, t: float) -> float:
        """The value at progress ``t``, which the caller has clipped to [0, 1]."""
        raise NotImplementedError

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest value the schedule takes on [0, 1]."""
        raise NotImplementedError

    def breaks(self) -> tuple[float, ...]:
        """The progress points in (0, 1) where the straight pieces of a piecewise-linear
        schedule meet (a step's jumps included); ``ValueError`` for a curved one (cosine)."""
        raise ValueError(f"a {self.kind} schedule is not piecewise linear")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible description, read back by :func:`schedule_from_dict`."""
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Schedule):
    """The same value throughout (made by :func:`constant`)."""

    kind: ClassVar[str] = "constant"
    value: float

    def at(self, t: float) -> float:
        return self.value

    def bounds(self) -> tuple[float, float]:
        return self.value, self.value

    def breaks(self) -> tuple[float, ...]:
        return ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}


@dataclass(frozen=True)
class Step(Schedule):
    """Piecewise constant (made by :func:`step`): right-continuous, so the value changes *at*
    each boundary."""

    kind: ClassVar[str] = "step"
    boundaries: tuple[float, ...]
    values: tuple[float, ...]

    def at(self, t: float) -> float:
        return self.values[bisect.bisect_right(self.boundaries, t)]

    def bounds(self) -> tuple[float, float]:
        return min(self.values), max(self.values)

    def breaks(self) -> tuple[float, ...]:
        return self.boundaries

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "boundaries": list(self.boundaries),
                "values": list(self.values)}


@dataclass(frozen=True)
class _Ramp(Schedule):
    """From ``start`` at t = 0 to ``end`` at t = 1 along ``_shape`` (0 at 0, 1 at 1)."""

    start: float
    end: float

    @staticmethod
    def _shape(t: float) -> float:
        raise NotImplementedError

    def at(self, t: float) -> float:
        return self.start + (self.end - self.start) * self._shape(t)

    def bounds(self) -> tuple[float, float]:
        return min(self.start, self.end), max(self.start, self.end)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": self.start, "end": self.end}


class Linear(_Ramp):
    """A straight line from ``start`` to ``end`` (made by :func:`linear`)."""

    kind: ClassVar[str] = "linear"

    @staticmethod
    def _shape(t: float) -> float:
        return t

    def breaks(self) -> tuple[float, ...]:
        return ()


class Cosine(_Ramp):
    """Half a cosine from ``start`` to ``end`` (made by :func:`cosine`)."""

    kind: ClassVar[str] = "cosine"

    @staticmethod
    def _shape(t: float) -> float:
        return (1.0 - math.cos(math.pi * t)) / 2.0


@dataclass(frozen=True)
class Join(Schedule):
    """Schedules one after the other (made by :func:`join`)."""

    kind: ClassVar[str] = "join"
    schedules: tuple[Schedule, ...]
    boundaries: tuple[float, ...]

    def at(self, t: float) -> float:
        i = bisect.bisect_right(self.boundaries, t)
        lo = self.boundaries[i - 1] if i else 0.0
        hi = self.boundaries[i] if i < len(self.boundaries) else 1.0
        return self.schedules[i].at(min(max((t - lo) / (hi - lo), 0.0), 1.0))

    def bounds(self) -> tuple[float, float]:
        parts = [s.bounds() for s in self.schedules]
        return min(lo for lo, _ in parts), max(hi for _, hi in parts)

    def breaks(self) -> tuple[float, ...]:
        ends = (0.0, *self.boundaries, 1.0)
        inner = [a + x * (b - a) for part, a, b in zip(self.schedules, ends, ends[1:])
                 for x in part.breaks()]
        return tuple(sorted({*self.boundaries, *inner}))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "boundaries": list(self.boundaries),
                "schedules": [s.to_dict() for s in self.schedules]}


def constant(value: float) -> Constant:
    """``value`` for the whole of training."""
    return Constant(checks.real("value", value))


def step(boundaries: Sequence[float], values: Sequence[float]) -> Step:
    """Piecewise constant: ``values[0]`` before ``boundaries[0]``, ``values[i]`` from
    ``boundaries[i-1]`` on.

    Args:
        boundaries: strictly increasing progress points in (0, 1).
        values: one more value than boundaries.
    """
    bounds = _boundaries(boundaries)
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"values={values!r} must be a list of numbers")
    vals = tuple(checks.real(f"values[{i}]", v) for i, v in enumerate(values))
    if len(vals) != len(bounds) + 1:
        raise ValueError(f"step needs one more value than boundaries; got {len(vals)} values "
                         f"for {len(bounds)} boundaries")
    return Step(bounds, vals)


def linear(start: float, end: float) -> Linear:
    """From ``start`` at progress 0 to ``end`` at progress 1 in a straight line."""
    return Linear(checks.real("start", start), checks.real("end", end))


def cosine(start: float, end: float) -> Cosine:
    """From ``start`` at progress 0 to ``end`` at progress 1 along half a cosine."""
    return Cosine(checks.real("start", start), checks.real("end", end))


def join(schedules: Sequence[Schedule], boundaries: Sequence[float]) -> Join:
    """``schedules[i]`` runs on ``[boundaries[i-1], boundaries[i])`` and sees the progress
    within its own segment rescaled to [0, 1], so ``join([constant(2), linear(2, 0)], [0.5])``
    holds 2 for the first half and then ramps down to 0 at the end.

    Args:
        schedules: the pieces, one more than boundaries.
        boundaries: strictly increasing progress points in (0, 1).
    """
    bounds = _boundaries(boundaries)
    if isinstance(schedules, (str, bytes, Schedule)) or not isinstance(schedules, Iterable):
        raise ValueError(f"schedules={schedules!r} must be a list of Schedules")
    parts = tuple(schedules)
    for i, s in enumerate(parts):
        if not isinstance(s, Schedule):
            raise ValueError(f"schedules[{i}] is a {type(s).__name__}, not a Schedule")
    if len(parts) != len(bounds) + 1:
        raise ValueError(f"join needs one more schedule than boundaries; got {len(parts)} "
                         f"schedules for {len(bounds)} boundaries")
    return Join(parts, bounds)


def _check_keys(values: Mapping[str, Any], kind: str, keys: tuple[str, ...]) -> None:
    if set(values) != {"kind", *keys}:
        raise ValueError(f"a {kind!r} schedule has the keys {sorted(('kind',) + keys)}; "
                         f"got {sorted(values)}")


def schedule_from_dict(values: Mapping[str, Any], depth: int = 0) -> Schedule:
    """A schedule from its :meth:`Schedule.to_dict` form, checked like the factories check
    their arguments (unknown kinds or keys raise ``ValueError``)."""
    if not isinstance(values, Mapping):
        raise ValueError(f"a schedule must be a JSON object, got {type(values).__name__}")
    if depth > MAX_DEPTH:
        raise ValueError(f"schedules nest deeper than {MAX_DEPTH} joins")
    kind = values.get("kind")
    if kind == "constant":
        _check_keys(values, kind, ("value",))
        return constant(values["value"])
    if kind == "step":
        _check_keys(values, kind, ("boundaries", "values"))
        return step(values["boundaries"], values["values"])
    if kind in ("linear", "cosine"):
        _check_keys(values, kind, ("start", "end"))
        return (linear if kind == "linear" else cosine)(values["start"], values["end"])
    if kind == "join":
        _check_keys(values, kind, ("boundaries", "schedules"))
        parts = values["schedules"]
        if not isinstance(parts, list):
            raise ValueError("a 'join' schedule's 'schedules' must be a list")
        return join([schedule_from_dict(p, depth + 1) for p in parts], values["boundaries"])
    raise ValueError(f"schedule kind {kind!r} is not known; choose one of "
                     "['constant', 'step', 'linear', 'cosine', 'join']")


@dataclass(frozen=True)
class LossSchedule:
    """One schedule per loss parameter of :func:`lossgym.losses.parametric_loss`.

    Args:
        schedules: parameter name (of :data:`lossgym.params.LOSS_PARAMS`) →
            schedule, or a number for a constant. Every value a schedule can take must lie in
            its parameter's range; parameters left out stay at their neutral values.
    """

    schedules: Mapping[str, Schedule]

    def __post_init__(self) -> None:
        if not isinstance(self.schedules, Mapping) or not self.schedules:
            raise ValueError("a LossSchedule needs at least one parameter schedule, e.g. "
                             "{'gamma': constant(2.0)}")
        checked: dict[str, Schedule] = {}
        for name, schedule in self.schedules.items():
            spec = loss_params.param(name)
            if not isinstance(schedule, Schedule):
                schedule = constant(checks.real(name, schedule))
            low, high = spec.low, spec.high
            lo, hi = schedule.bounds()
            if lo < low or hi > high:
                raise ValueError(f"the {name} schedule takes values in [{lo:g}, {hi:g}], "
                                 f"outside {name}'s range [{low:g}, {high:g}]")
            checked[name] = schedule
        # In the canonical order, so equal schedules compare and serialise equally.
        ordered = {name: checked[name] for name in loss_params.names() if name in checked}
        object.__setattr__(self, "schedules", ordered)

    @property
    def parameters(self) -> tuple[str, ...]:
        """The scheduled parameters."""
        return tuple(self.schedules)

    def __call__(self, t: float) -> dict[str, float]:
        """Every scheduled parameter's value at progress ``t`` (clipped to [0, 1])."""
        return {name: s(t) for name, s in self.schedules.items()}

    def to_dict(self) -> dict[str, Any]:
        return {name: s.to_dict() for name, s in self.schedules.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LossSchedule:
        """Read :meth:`to_dict` output."""
        if not isinstance(values, Mapping):
            raise ValueError(f"a loss schedule must be a JSON object, got "
                             f"{type(values).__name__}")
        return cls({name: schedule_from_dict(s) for name, s in values.items()})
