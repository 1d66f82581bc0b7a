"""Raw readings into engineering values, with report-by-exception.

This is the hot path: one pass over a reading, plain lists indexed by point, no
per-value objects, validation or logging. Scaling lives here (once, centrally), never
in drivers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from cellctl.config.profile import PointDef
from cellctl.driver import Reading
from cellctl.model import PointState, Quality, QualityChange

GOOD = Quality.GOOD
UNCERTAIN = Quality.UNCERTAIN
BAD = Quality.BAD
NOT_YET_READ = "not yet read"

_PASS, _SCALE_FLOAT, _SCALE_INT = 0, 1, 2


def _decimals_of(x: float | None) -> int:
    """Decimal places of a scale or offset as written (0.1 -> 1, 2.5e-3 -> 4)."""
    if x is None:
        return 0
    exponent = Decimal(repr(x)).as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def _rounding(p: PointDef) -> int | None:
    """Decimals to round a float point to after scaling: the point's `decimals`, else
    those of its scale and offset, so an integer register x 0.1 gives 40.9 and not
    40.900000000000006 (the float arithmetic's noise, not the device's value)."""
    if p.type != "float":
        return None
    if p.decimals is not None:
        return p.decimals
    if p.scale in (None, 1.0) and p.offset in (None, 0.0):
        return None
    return max(_decimals_of(p.scale), _decimals_of(p.offset))
_DB_NONE, _DB_ABS, _DB_REL = 0, 1, 2


class PointTable:
    """Current value and quality of every point of one device, plus the last value
    reported, so only changes beyond the deadband are published."""

    __slots__ = (
        "all_good",
        "db_kind",
        "db_value",
        "decimals",
        "defs",
        "has_limits",
        "high",
        "ids",
        "is_float",
        "last",
        "low",
        "mode",
        "offset",
        "quality",
        "reason",
        "round_always",
        "scale",
        "simple",
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
            if p.scale in (None, 1.0) and p.offset in (None, 0.0) and p.decimals is None
            else (_SCALE_INT if p.type == "int" else _SCALE_FLOAT)
            for p in points
        ]
        self.decimals = [_rounding(p) for p in points]
        self.round_always = [p.decimals is not None for p in points]
        self.is_float = [p.type == "float" for p in points]
        self.has_limits = [p.min is not None or p.max is not None for p in points]
        self.low = [p.min if p.min is not None else -math.inf for p in points]
        self.high = [p.max if p.max is not None else math.inf for p in points]
        # Deadband per point: kind and a precomputed threshold (see `apply`).
        self.db_kind = [_DB_NONE] * n
        self.db_value = [0.0] * n
        for i, p in enumerate(points):
            db = p.deadband
            if db is None:
                continue
            if db.absolute is not None:
                self.db_kind[i], self.db_value[i] = _DB_ABS, db.absolute
            elif p.min is not None and p.max is not None:
                self.db_kind[i], self.db_value[i] = _DB_ABS, (p.max - p.min) * (db.percent or 0.0) / 100.0
            else:
                self.db_kind[i], self.db_value[i] = _DB_REL, (db.percent or 0.0) / 100.0
        # Points the fast path may take: no scaling, limits, deadband or float check.
        self.simple = all(
            m == _PASS and not lim and kind == _DB_NONE and not f
            for m, lim, kind, f in zip(self.mode, self.has_limits, self.db_kind, self.is_float, strict=True)
        )
        self.all_good = False  # every point's quality is good (kept by apply/mark_all_bad)
        self.value: list[Any] = [None] * n  # current engineering value
        self.last: list[Any] = [None] * n  # last value reported (deadband reference)
        self.quality: list[Quality] = [BAD] * n
        self.reason: list[str | None] = [NOT_YET_READ] * n
        self.src_ts: list[float | None] = [None] * n

    def index_of(self, point_id: str) -> int:
        return self.ids.index(point_id)

    def apply(self, reading: Reading) -> tuple[dict[str, Any], dict[str, QualityChange]]:
        """Take a reading; return (changed values, quality changes) keyed by point id."""
        if (
            self.simple
            and self.all_good
            and reading.errors is None
            and reading.indexes is None
            and reading.source_ts_each is None
            and reading.uncertain is None
            and len(reading.values) == len(self.ids)
        ):
            return self._apply_simple(reading), {}
        changed, qchanged = self._apply_general(reading)
        if qchanged:
            self.all_good = all(q == GOOD for q in self.quality)
        return changed, qchanged

    def _apply_simple(self, reading: Reading) -> dict[str, Any]:
        """The common case in one tight loop: a full, error-free reading of plain points."""
        values = reading.values
        last, ids = self.last, self.ids
        changed: dict[str, Any] = {}
        for i, v in enumerate(values):
            if v != last[i]:
                last[i] = v
                changed[ids[i]] = v
        self.value[:] = values
        if reading.source_ts is not None:
            self.src_ts[:] = [reading.source_ts] * len(values)
        return changed

    def _apply_general(self, reading: Reading) -> tuple[dict[str, Any], dict[str, QualityChange]]:
        changed: dict[str, Any] = {}
        qchanged: dict[str, QualityChange] = {}
        values = reading.values
        errors = reading.errors
        indexes = reading.indexes if reading.indexes is not None else range(len(values))
        each_ts = reading.source_ts_each
        ts = reading.source_ts
        uncertain = reading.uncertain
        ids, quality, reason, last, mode = self.ids, self.quality, self.reason, self.last, self.mode
        current, src_ts, is_float, has_limits = self.value, self.src_ts, self.is_float, self.has_limits
        db_kind, db_value = self.db_kind, self.db_value
        for k, i in enumerate(indexes):
            if errors is not None and i in errors:
                problem = errors[i]
                if quality[i] != BAD or reason[i] != problem:
                    quality[i], reason[i] = BAD, problem
                    qchanged[ids[i]] = QualityChange(BAD, problem)
                continue
            v = values[k]
            m = mode[i]
            if m == _SCALE_FLOAT:
                nd = self.decimals[i]
                if nd is None:
                    v = v * self.scale[i] + self.offset[i]
                elif type(v) is int or self.round_always[i]:
                    v = round(v * self.scale[i] + self.offset[i], nd)
                else:
                    v = v * self.scale[i] + self.offset[i]
            elif m == _SCALE_INT:
                v = int(v * self.scale[i] + self.offset[i])
            q: Quality = GOOD
            why: str | None = None
            if is_float[i] and not math.isfinite(v):
                q, why = BAD, f"not a finite number ({v})"
            elif uncertain is not None and i in uncertain:
                q, why = UNCERTAIN, uncertain[i]
            elif has_limits[i]:
                if v < self.low[i]:
                    q, why = UNCERTAIN, f"below min {self.low[i]}"
                elif v > self.high[i]:
                    q, why = UNCERTAIN, f"above max {self.high[i]}"
            current[i] = v
            src_ts[i] = each_ts[k] if each_ts is not None else ts
            if quality[i] != q or reason[i] != why:
                quality[i], reason[i] = q, why
                qchanged[ids[i]] = QualityChange(q, why)
                if q != BAD:
                    last[i] = v
                    changed[ids[i]] = v
                continue
            if q == BAD:
                continue
            prev = last[i]
            kind = db_kind[i]
            if prev is None:
                pass
            elif kind == _DB_NONE:
                if v == prev:
                    continue
            elif kind == _DB_ABS:
                if abs(v - prev) <= db_value[i]:
                    continue
            elif abs(v - prev) <= abs(prev) * db_value[i]:
                continue
            last[i] = v
            changed[ids[i]] = v
        return changed, qchanged

    def mark_all_bad(self, why: str) -> dict[str, QualityChange]:
        """The device is gone: every point becomes bad (once); return the quality changes."""
        qchanged: dict[str, QualityChange] = {}
        self.all_good = False
        for i, point_id in enumerate(self.ids):
            if self.quality[i] != BAD or self.reason[i] != why:
                self.quality[i], self.reason[i] = BAD, why
                qchanged[point_id] = QualityChange(BAD, why)
        return qchanged

    def states(self) -> tuple[PointState, ...]:
        """Every point as it stands now, for births and retained state messages."""
        return tuple(
            PointState(
                self.ids[i], self.value[i], self.quality[i], self.reason[i], self.units[i], self.src_ts[i]
            )
            for i in range(len(self.ids))
        )
