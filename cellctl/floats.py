"""Floats as devices mean them: a float32 register holds 123.456, not the
123.45600128173828 that widening it to a Python float (a double) prints."""

from __future__ import annotations

import math
import struct

_F32 = struct.Struct("<f")
_CACHE_MAX = 65536
_cache: dict[float, float] = {}


def float32_shortest(x: float) -> float:
    """The double with the shortest decimal form that is still the same float32 as `x`
    (`x` being a float32 widened to a double). Cached: a device's values repeat, and
    this runs once per float32 value read."""
    hit = _cache.get(x)
    if hit is not None:
        return hit
    if not math.isfinite(x) or x == 0.0:
        return x
    packed = _F32.pack(x)

    def same(digits: int) -> float | None:
        candidate = float(f"{x:.{digits}g}")
        return candidate if _F32.pack(candidate) == packed else None

    # Most float32 values need 6 to 9 significant digits (9 always suffice); start at 6
    # and walk down for round values, up for the rest.
    y = same(6)
    if y is not None:
        for digits in range(5, 0, -1):
            shorter = same(digits)
            if shorter is None:
                break
            y = shorter
    else:
        for digits in (7, 8, 9):
            y = same(digits)
            if y is not None:
                break
    if y is None:  # unreachable for a widened float32; keep the value as it came
        y = x
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[x] = y
    return y
