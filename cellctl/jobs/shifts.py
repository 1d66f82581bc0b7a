"""Which OEE window a moment belongs to: the current hour, or the current shift of the
cell's calendar (wall-clock shift times in a time zone, a shift may cross midnight)."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cellctl.config.cell import Shift, minutes_of


class Windows(Protocol):
    def current(self, now: float) -> tuple[float, str] | None:
        """(start of the window holding `now`, epoch seconds; its name), or None."""
        ...


@dataclass(frozen=True, slots=True)
class Hourly:
    length_s: float = 3600.0

    def current(self, now: float) -> tuple[float, str]:
        return now - (now % self.length_s), "hour"


@dataclass(frozen=True, slots=True)
class ShiftCalendar:
    shifts: Sequence[Shift]
    tz: dt.tzinfo | None = None  # None: the machine's local time

    @classmethod
    def of(cls, shifts: Sequence[Shift], timezone: str | None) -> ShiftCalendar:
        return cls(tuple(shifts), zoneinfo.ZoneInfo(timezone) if timezone else None)

    def current(self, now: float) -> tuple[float, str] | None:
        """The shift `now` falls in and when it began; None between shifts."""
        local = dt.datetime.fromtimestamp(now, self.tz)
        minute = local.hour * 60 + local.minute
        today = local.date()
        for shift in self.shifts:
            s, e = minutes_of(shift.start), minutes_of(shift.end)
            if (s < e and s <= minute < e) or (s > e and minute >= s):
                day = today
            elif s > e and minute < e:
                day = today - dt.timedelta(days=1)
            else:
                continue
            start = dt.datetime.combine(day, dt.time(s // 60, s % 60), local.tzinfo if self.tz is None else self.tz)
            return start.timestamp(), shift.name
        return None
