"""The check of a number a user passes, written once for the library and ``agents/``.

An argument, a file field or a checkpoint entry that must be a number goes through
:func:`real` or :func:`integer`. The error names the argument and the bad value, and says
what is allowed: ``name=value is invalid: must be ...`` when it is not a finite number (or
not an integer), ``name=value is out of range: must be ...`` when it lies outside the bounds.
``bool`` is never a number here, although Python counts it as one.
"""

from __future__ import annotations

import math
import numbers


def is_real(value: object) -> bool:
    """A real number that is not a ``bool`` (NaN and infinities included)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value: object) -> bool:
    """An integer that is not a ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(x: float) -> str:
    """``x`` as the docs write it: whole numbers in full (``10000000``), others by ``:g``."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def interval(low: float = -math.inf, high: float = math.inf, *, open_low: bool = False,
             open_high: bool = False, kind: str = "a finite number") -> str:
    """What is allowed, in words: ``a finite number in [0, 1)``, ``an integer >= 1``."""
    if high == math.inf:
        if low == -math.inf:
            return kind
        return f"{kind} {'>' if open_low else '>='} {_number(low)}"
    if low == -math.inf:
        return f"{kind} {'<' if open_high else '<='} {_number(high)}"
    return (f"{kind} in {'(' if open_low else '['}{_number(low)}, {_number(high)}"
            f"{')' if open_high else ']'}")


def inside(value: float, low: float = -math.inf, high: float = math.inf, *,
           open_low: bool = False, open_high: bool = False) -> bool:
    """Whether ``value`` is finite and within the bounds."""
    return math.isfinite(value) and (value > low if open_low else value >= low) \
        and (value < high if open_high else value <= high)


def real(name: str, value: object, low: float = -math.inf, high: float = math.inf, *,
         open_low: bool = False, open_high: bool = False, meaning: str = "") -> float:
    """``value`` as a float, finite and within the bounds; else a ``ValueError`` (that ends
    with ``meaning``, what the number is, when one is given)."""
    allowed = interval(low, high, open_low=open_low, open_high=open_high) + (
        f", {meaning}" if meaning else "")
    if not is_real(value) or not math.isfinite(float(value)):  # type: ignore[arg-type]
        raise ValueError(f"{name}={value!r} is invalid: must be {allowed}")
    if not inside(float(value), low, high, open_low=open_low,  # type: ignore[arg-type]
                  open_high=open_high):
        raise ValueError(f"{name}={value!r} is out of range: must be {allowed}")
    return float(value)  # type: ignore[arg-type]


def integer(name: str, value: object, low: int = 0, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (``high=None``: no upper bound); else a
    ``ValueError``."""
    allowed = interval(low, math.inf if high is None else high, kind="an integer")
    if not is_integer(value):
        raise ValueError(f"{name}={value!r} is invalid: must be {allowed}")
    if value < low or (high is not None and value > high):  # type: ignore[operator]
        raise ValueError(f"{name}={value!r} is out of range: must be {allowed}")
    return int(value)  # type: ignore[call-overload]


def is_seed(value: object) -> bool:
    """An integer >= 0 (a seed for ``numpy.random.default_rng`` or ``torch.Generator``)."""
    return is_integer(value) and value >= 0  # type: ignore[operator]
