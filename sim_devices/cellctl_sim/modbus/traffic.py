"""What the simulator saw on the wire, for tests that assert how a client behaves:
requests in flight at once (never more than one per bus?), connections opened, and
when each request arrived (pauses between requests)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

MAX_ARRIVALS = 10_000  # a long-running simulator keeps only the latest


@dataclass
class Traffic:
    """Counters over every listener of one simulator; a test may reset any of them."""

    requests: int = 0
    in_flight: int = 0  # arrived, neither answered nor dropped yet
    max_in_flight: int = 0
    connects: int = 0  # TCP connections accepted
    arrivals: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=MAX_ARRIVALS))
    """(time.monotonic(), unit id, function code) of each request, oldest first."""

    def arrived(self, unit: int, function_code: int) -> None:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.arrivals.append((time.monotonic(), unit, function_code))

    def finished(self) -> None:
        self.in_flight -= 1
