"""OEE at the edge: time in each OPC 40001 item state and the three OEE factors over a
window, from the machine's state timeline and its part counts.

- availability = executing time / planned time, where planned time is the window's time
  minus the time the machine was out of service on purpose (maintenance is not counted
  against it) — here: minus the time `not_available` (switched off, not planned).
- performance = ideal cycle time x parts produced / executing time (capped at 1).
- quality = good parts / parts produced.
- oee = availability x performance x quality.
A factor whose denominator is zero is None (not known), never 0 or 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from cellctl.jobs.counting import RunningCount
from cellctl.jobs.shifts import Hourly, Windows
from cellctl.model import ItemState, Oee


@dataclass(slots=True)
class StateClock:
    """Seconds spent in each item state since `start`, fed with transitions."""

    start: float
    state: ItemState = ItemState.NOT_AVAILABLE
    since: float = 0.0
    seconds: dict[ItemState, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.since = self.start

    def enter(self, state: ItemState, at: float) -> None:
        if state == self.state:
            return
        self._add(at)
        self.state = state

    def _add(self, at: float) -> None:
        if at > self.since:
            self.seconds[self.state] = self.seconds.get(self.state, 0.0) + (at - self.since)
            self.since = at

    def totals(self, at: float) -> dict[ItemState, float]:
        """Time per state up to `at` (the current state counted up to now)."""
        out = dict(self.seconds)
        if at > self.since:
            out[self.state] = out.get(self.state, 0.0) + (at - self.since)
        return out


def _ratio(a: float, b: float) -> float | None:
    return None if b <= 0 else a / b


def oee(seconds: Mapping[ItemState, float], produced: int, good: int, ideal_cycle_s: float | None) -> Oee:
    total = sum(seconds.values())
    executing = seconds.get(ItemState.EXECUTING, 0.0)
    planned = total - seconds.get(ItemState.NOT_AVAILABLE, 0.0)
    availability = _ratio(executing, planned)
    performance = None
    if ideal_cycle_s is not None:
        p = _ratio(ideal_cycle_s * produced, executing)
        performance = None if p is None else min(1.0, p)
    quality = _ratio(good, produced)
    factors = (availability, performance, quality)
    value = None
    if all(f is not None for f in factors):
        value = 1.0
        for f in factors:
            assert f is not None
            value *= f
    return Oee(
        availability,
        performance,
        quality,
        value,
        {s.value: round(v, 3) for s, v in seconds.items()},
        produced,
        good,
    )


@dataclass(slots=True)
class OeeWindow:
    """OEE over a wall-clock window — the current hour by default, or the current shift
    (shifts.py): the machine's state timeline and part counts since the window began; a
    new window starts at its boundary. Between shifts there is no window (figures None),
    but the counters are followed, so the next window counts from their last value."""

    windows: Windows = field(default_factory=Hourly)
    ideal_cycle_s: float | None = None
    modulus: int | None = None
    start: float = -1.0
    name: str | None = None
    clock: StateClock | None = None
    good: RunningCount | None = None
    bad: RunningCount | None = None

    def _roll(self, now: float, state: ItemState) -> None:
        current = self.windows.current(now)
        if current is None:
            if self.clock is not None:
                self.clock, self.start, self.name = None, -1.0, None
            return
        start, name = current
        if start != self.start or name != self.name:
            # Time before the first reading (cellctl started mid-window) is not known and
            # is not counted; after that, a new window begins in the state last seen.
            first = self.good is None
            self.start, self.name = start, name
            self.clock = StateClock(start=max(start, now) if first else start, state=state)
            self.good = _count(self.modulus, self.good)
            self.bad = _count(self.modulus, self.bad)

    def observe(self, now: float, state: ItemState, good: int | None, bad: int | None) -> None:
        self._roll(now, state)
        if self.good is None:
            self.good, self.bad = RunningCount(self.modulus), RunningCount(self.modulus)
        assert self.bad is not None
        if self.clock is not None:
            self.clock.enter(state, now)
        if good is not None:
            self.good.update(good)
        if bad is not None:
            self.bad.update(bad)

    def figures(self, now: float) -> Oee | None:
        """The window's OEE up to `now`; None outside any window (or before a reading).
        A window that ended with no reading since is closed here too."""
        current = self.windows.current(now)
        if current is None or self.clock is None or self.good is None or self.bad is None:
            return None
        if current != (self.start, self.name):
            # the window holding `now` has had no reading yet: the state since its start
            # is the last one seen, and no parts
            seconds = {self.clock.state: now - current[0]} if now > current[0] else {}
            return replace(oee(seconds, 0, 0, self.ideal_cycle_s), window=current[1], start_ms=int(current[0] * 1000))
        good, bad = self.good.total, self.bad.total
        return replace(
            oee(self.clock.totals(now), good + bad, good, self.ideal_cycle_s),
            window=self.name,
            start_ms=int(self.start * 1000),
        )


def _count(modulus: int | None, previous: RunningCount | None) -> RunningCount:
    """A fresh count for the new window that continues from the counter's last raw value."""
    fresh = RunningCount(modulus)
    if previous is not None:
        fresh.last = previous.last
    return fresh
