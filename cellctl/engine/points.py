"""Raw readings into engineering values, with report-by-exception.

This is the hot path: one pass over a reading, plain lists indexed by point, no
per-value objects, validation or logging. Scaling lives here (once, centrally), never
in drivers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cellctl.config.profile import PointDef
from cellctl.driver import Reading

GOOD = "good"
UNCERTAIN = "uncertain"
BAD = "bad"
NOT_YET_READ = "not yet read"

_PASS, _SCALE_FLOAT, _SCALE_INT = 0, 1, 2


class PointTable:
    """Current value and quality of every point of one device, plus the last value
    reported, so only changes beyond the deadband are published."""

    __slots__ = (
        "abs_db",
        "defs",
        "high",
        "ids",
        "is_float",
        "last",
        "low",
        "mode",
        "offset",
        "pct_db",
        "pct_range",
        "quality",
        "reason",
        "scale",
        "src_ts",
        "units",
        "value",
    )

    def __init__(self, points: Sequence[PointDef]) -> None:
        n = len(points)
        self.defs = list(points)
        self.ids = [p.id for p in points]
        self.units = [p.unit for p in points]
        self.scale = [p.scale if p.scale is not None else 1.0 for p in points]
        self.offset = [p.offset if p.offset is not None else 0.0 for p in points]
        self.mode = [
            _PASS
            if p.scale in (None, 1.0) and p.offset in (None, 0.0)
            else (_SCALE_INT if p.type == "int" else _SCALE_FLOAT)
            for p in points
        ]
        self.is_float = [p.type == "float" for p in points]
        self.low = [p.min for p in points]
        self.high = [p.max for p in points]
        self.abs_db: list[float | None] = [p.deadband.absolute if p.deadband else None for p in points]
        self.pct_db: list[float | None] = [p.deadband.percent if p.deadband else None for p in points]
        self.pct_range: list[float | None] = [
            (p.max - p.min) if p.min is not None and p.max is not None else None for p in points
        ]
        self.value: list[Any] = [None] * n  # current engineering value
        self.last: list[Any] = [None] * n  # last value reported (deadband reference)
        self.quality = [BAD] * n
        self.reason: list[str | None] = [NOT_YET_READ] * n
        self.src_ts: list[float | None] = [None] * n

    def index_of(self, point_id: str) -> int:
        return self.ids.index(point_id)

    def apply(self, reading: Reading) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
        """Take a reading; return (changed values, quality changes) keyed by point id."""
        changed: dict[str, Any] = {}
        qchanged: dict[str, dict[str, str]] = {}
        values = reading.values
        errors = reading.errors
        indexes = reading.indexes if reading.indexes is not None else range(len(values))
        each_ts = reading.source_ts_each
        ts = reading.source_ts
        quality, reason, last, mode = self.quality, self.reason, self.last, self.mode
        for k, i in enumerate(indexes):
            if errors is not None and i in errors:
                why = errors[i]
                if quality[i] != BAD or reason[i] != why:
                    quality[i], reason[i] = BAD, why
                    qchanged[self.ids[i]] = {"q": BAD, "reason": why}
                continue
            v = values[k]
            m = mode[i]
            if m == _SCALE_FLOAT:
                v = v * self.scale[i] + self.offset[i]
            elif m == _SCALE_INT:
                v = int(v * self.scale[i] + self.offset[i])
            q, why = GOOD, None
            if self.is_float[i] and not math.isfinite(v):
                q, why = BAD, f"not a finite number ({v})"
            elif self.low[i] is not None and v < self.low[i]:  # type: ignore[operator]
                q, why = UNCERTAIN, f"below min {self.low[i]}"
            elif self.high[i] is not None and v > self.high[i]:  # type: ignore[operator]
                q, why = UNCERTAIN, f"above max {self.high[i]}"
            self.value[i] = v
            self.src_ts[i] = each_ts[k] if each_ts is not None else ts
            force = False
            if quality[i] != q or reason[i] != why:
                quality[i], reason[i] = q, why
                qchanged[self.ids[i]] = {"q": q, "reason": why} if why else {"q": q}
                force = True
            if q == BAD:
                continue
            prev = last[i]
            if force or prev is None:
                pass
            elif self.abs_db[i] is not None:
                if abs(v - prev) <= self.abs_db[i]:  # type: ignore[operator]
                    continue
            elif self.pct_db[i] is not None:
                span = self.pct_range[i]
                base = span if span is not None else abs(prev)
                if abs(v - prev) <= base * self.pct_db[i] / 100.0:  # type: ignore[operator]
                    continue
            elif v == prev:
                continue
            last[i] = v
            changed[self.ids[i]] = v
        return changed, qchanged

    def mark_all_bad(self, why: str) -> dict[str, dict[str, str]]:
        """The device is gone: every point becomes bad (once); return the quality changes."""
        qchanged: dict[str, dict[str, str]] = {}
        for i, point_id in enumerate(self.ids):
            if self.quality[i] != BAD or self.reason[i] != why:
                self.quality[i], self.reason[i] = BAD, why
                qchanged[point_id] = {"q": BAD, "reason": why}
        return qchanged

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Full per-point state for the retained state message."""
        out: dict[str, dict[str, Any]] = {}
        for i, point_id in enumerate(self.ids):
            entry: dict[str, Any] = {"v": self.value[i], "q": self.quality[i]}
            if self.reason[i]:
                entry["reason"] = self.reason[i]
            if self.units[i]:
                entry["unit"] = self.units[i]
            if self.src_ts[i] is not None:
                entry["src_ts"] = int(self.src_ts[i] * 1000)  # type: ignore[operator]
            out[point_id] = entry
        return out
