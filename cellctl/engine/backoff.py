"""Capped exponential backoff with full jitter, for reconnect loops.

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
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError("backoff needs 0 < minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self.factor = factor
        self.rand = rand
        self.attempt = 0

    def next_delay(self) -> float:
        """Delay before the next attempt: between half and all of min * factor**attempt, capped."""
        ceiling = min(self.maximum, self.minimum * self.factor**self.attempt)
        self.attempt += 1
        return ceiling / 2 + ceiling / 2 * self.rand()

    def reset(self) -> None:
        self.attempt = 0
