"""Durations as people write them in YAML ("500ms", "2s", "5m", "1h", "7d" or a number of
seconds). A leaf module: the cell config and every driver's option models share these
types, and drivers reach them through `cellctl.driver`."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Accept 0.5, "500ms", "2s", "5m", "1h", "7d" for durations; leave other types to pydantic."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"expected a duration such as 500ms, 2s or 5m, got {value!r}")
        return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
"""Seconds, zero allowed."""
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
"""Seconds, more than zero."""
