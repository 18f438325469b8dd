"""Range checks for numeric options at the edge: NaN, inf and out-of-range values become one
InputError line (torch-free: imported by semedge.runtime)."""

from __future__ import annotations

import math
from typing import Any

from semedge.errors import InputError

__all__ = ["check_number", "check_int"]


def check_number(
    value: Any, name: str, lo: float | None = None, hi: float | None = None,
    lo_open: bool = False, hi_open: bool = False, hint: str = "",
) -> float:  # fmt: skip
    """`value` as a float, provided it is a finite real number inside the given bounds.

    Raises:
        InputError: naming the option, the value and the accepted range.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (lo is None or (value > lo if lo_open else value >= lo)) and (
            hi is None or (value < hi if hi_open else value <= hi))  # fmt: skip
    if not ok:
        if hi is None:
            bounds = f"{'>' if lo_open else '>='} {lo}" if lo is not None else "a finite number"
        else:
            bounds = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        why = "" if finite or not isinstance(value, (int, float)) else " (not a finite number)"
        raise InputError(f"{name} must be {bounds}{hint}, got {value!r}{why}")
    return float(value)


def check_int(value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """`value` as an int within [lo, hi] (bools and floats refused).

    Raises:
        InputError: naming the option, the value and the accepted range.
    """
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise InputError(f"{name} must be an integer {bounds}, got {value!r}")
    return int(value)
