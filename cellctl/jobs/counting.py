"""Counter deltas that survive reality: a device counter that is reset (to 0 at a shift
change, after a power cycle) or wraps around (a uint16 at 65,535) must not make a job's
count jump backwards or lose what was counted before."""

from __future__ import annotations

from dataclasses import dataclass


def counter_delta(previous: int, current: int, modulus: int | None) -> int:
    """How much a monotonic counter advanced from `previous` to `current`.

    A decrease is a wrap-around when the counter has a `modulus` (2**16 for a uint16
    register) and the fall is more than half of it (a counter counts up, and the next
    reading comes long before half a wrap); otherwise it is a reset, and everything
    counted since the reset (`current`) is the advance."""
    if current >= previous:
        return current - previous
    if modulus is not None and previous - current > modulus // 2:
        return current + modulus - previous
    return current


@dataclass(slots=True)
class RunningCount:
    """A counter's total advance since a start point, across resets and wraps."""

    modulus: int | None = None
    last: int | None = None
    total: int = 0
    resets: int = 0

    def update(self, raw: int) -> int:
        """Take the counter's current raw value; return the total advance so far."""
        if self.last is not None:
            if raw < self.last and not (self.modulus is not None and self.last - raw > self.modulus // 2):
                self.resets += 1
            self.total += counter_delta(self.last, raw, self.modulus)
        self.last = raw
        return self.total


@dataclass(slots=True)
class MaterialCount:
    """A material counter's advance (float amounts: kg, m, l) with the same reset and
    wrap rules as `counter_delta`."""

    modulus: int | None = None
    last: float | None = None
    total: float = 0.0

    def update(self, raw: float) -> float:
        if self.last is not None:
            if raw >= self.last:
                self.total += raw - self.last
            elif self.modulus is not None and self.last - raw > self.modulus / 2:
                self.total += raw + self.modulus - self.last
            else:
                self.total += raw
        self.last = raw
        return self.total
