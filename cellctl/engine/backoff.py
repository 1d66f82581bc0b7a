"""Capped exponential backoff with jitter, for reconnect loops: the first few retries come
quickly (a device or broker that blinked is back within about a second), then the delay
grows for a long outage.

A reconnect is a state in the poll loop rather than a retried function call, so the
decorator-style retry libraries do not fit; this is the few lines it takes. The random
source is injectable so tests are deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        minimum: float,
        maximum: float,
        *,
        factor: float = 2.0,
        fast_attempts: int = 3,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError("backoff needs 0 < minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self.factor = factor
        self.fast_attempts = fast_attempts
        self.rand = rand
        self.attempt = 0

    def next_delay(self) -> float:
        """Delay before the next attempt: between half and all of `minimum` for the first
        `fast_attempts`, then of minimum * factor**k (k = 1, 2, ...), capped at `maximum`."""
        k = max(0, self.attempt - self.fast_attempts + 1)
        ceiling = min(self.maximum, self.minimum * self.factor**k)
        self.attempt += 1
        return ceiling / 2 + ceiling / 2 * self.rand()

    def reset(self) -> None:
        self.attempt = 0


def worth_repeating(n: int) -> bool:
    """Log a failure that keeps repeating at the 1st, 10th, 100th, 1000th ... time: a long
    outage stays visible in the log without flooding it."""
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1
