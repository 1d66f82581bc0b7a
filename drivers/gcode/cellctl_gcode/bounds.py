"""What a number from the wire may be before it becomes a point value.

A machine (or line noise) can send any digits: `Bf:15,99999999999999999999999` parses as a
Python int no encoder downstream can carry, and `T:1e999` as an infinite float. Parsers
read numbers through `wire_int` / `wire_float`, which refuse values outside int64 or not
finite with `OutOfRange`; the parser turns that into a `Bad` value for the fields the
number feeds, so the points go bad with the reason and the rest of the report is used.
`check` is the last line: the field cache runs every value through it before a Reading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
_SHOWN = 32  # characters of an offending value quoted in a reason


@dataclass(frozen=True, slots=True)
class Bad:
    """A field the machine sent but that cannot be published; `reason` says why."""

    reason: str


class OutOfRange(ValueError):
    """A well-formed number that no point type can carry (wider than int64, not finite)."""


def shown(text: str) -> str:
    """`text` quoted for a reason, cut short (a line may be kilobytes of digits)."""
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def wire_int(text: str) -> int:
    """An ASCII integer within int64; ValueError if malformed, OutOfRange if too wide."""
    t = text.strip()
    if not t or not t.lstrip("+-").isascii() or not t.lstrip("+-").isdigit():
        raise ValueError(f"not an integer: {shown(text)}")
    if len(t.lstrip("+-").lstrip("0")) > 19:  # int() of a huge digit string is slow; too wide anyway
        raise OutOfRange(f"value {shown(text)} out of range for int64")
    value = int(t)
    if not INT64_MIN <= value <= INT64_MAX:
        raise OutOfRange(f"value {shown(text)} out of range for int64")
    return value


def wire_float(text: str) -> float:
    """A finite float; ValueError if malformed, OutOfRange if infinite or NaN."""
    t = text.strip()
    if not t.isascii():
        raise ValueError(f"not a number: {shown(text)}")
    value = float(t)  # ValueError when malformed
    if not math.isfinite(value):
        raise OutOfRange(f"value {shown(text)} is not a finite number")
    return value


def small_int(text: str, default: int) -> int:
    """An error or alarm number: `default` unless it is plain digits within int64."""
    try:
        return wire_int(text)
    except ValueError:
        return default


def check(value: Any, kind: str) -> str | None:
    """Why `value` cannot be published as a point of `kind`, or None if it can."""
    if isinstance(value, Bad):
        return value.reason
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                value = int(value)
            else:
                return f"value {shown(str(value))} is not an integer"
        if not INT64_MIN <= value <= INT64_MAX:
            return f"value {shown(str(value))} out of range for int64"
    elif kind == "float":
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT64_MIN <= value <= INT64_MAX:
                return f"value {shown(str(value))} out of range for a float point"
        elif not isinstance(value, float):
            return f"value {shown(str(value))} is not a number"
        elif not math.isfinite(value):
            return f"value {shown(str(value))} is not a finite number"
    return None
