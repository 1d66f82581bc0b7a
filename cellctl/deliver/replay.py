"""Which stored messages belong to the backlog of an MQTT session, handed out in id
order at a paced rate, so replay after a reconnect never starves live data."""

from __future__ import annotations

import time
from collections.abc import Callable

from cellctl.outbox.store import Outbox, Stored


class Replay:
    """The backlog of one MQTT session: messages with `after < id <= until` (of one
    format, when `fmt` is given), handed out in id order, at most `rate` per second
    (token bucket of `burst`).

    Call `start(until)` when the session is up (after Sparkplug births), before live
    publishing resumes: everything committed before then is backlog, everything after is
    live and published as it is committed. `extend(until)` adds to the backlog without
    starting over (a rebirth, or live publishing that fell behind). Call `take()`
    whenever the publisher has room (e.g. paho's in-flight window is not full of live
    messages); `quota()` + `accept()` are the same in two steps, for a caller that reads
    the outbox on another thread."""

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        fmt: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self.fmt: str | None = fmt
        self.clock = clock
        self.after = 0
        self.until = 0
        self.replayed = 0
        self._tokens = float(burst)
        self._at = clock()

    def start(self, until_id: int) -> None:
        self.after, self.until = 0, until_id
        self._tokens, self._at = float(self.burst), self.clock()

    def extend(self, until_id: int) -> None:
        """More backlog, same cursor: nothing already handed out is handed out again."""
        self.until = max(self.until, until_id)

    def rewind(self, after_id: int) -> None:
        """Hand out again what follows `after_id` (it could not be sent)."""
        self.after = min(self.after, after_id)

    @property
    def done(self) -> bool:
        return self.after >= self.until

    def quota(self, limit: int) -> int:
        """How many messages the pacing allows now (0 to `limit`)."""
        if self.done:
            return 0
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        return max(0, min(limit, int(self._tokens)))

    def delay(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1.0 - self._tokens) / self.rate)

    def accept(self, rows: list[Stored]) -> list[Stored]:
        """Take `rows` (read after `after`) as handed out; returns those in the backlog."""
        batch = [m for m in rows if self.after < m.id <= self.until]
        if not batch:
            self.after = self.until  # the rest was acked or dropped meanwhile
            return []
        self.after = batch[-1].id
        self._tokens -= len(batch)
        self.replayed += len(batch)
        return batch

    def take(self, outbox: Outbox, limit: int) -> list[Stored]:
        """Up to `limit` backlog messages the pacing allows now (possibly none)."""
        n = self.quota(limit)
        if n <= 0:
            return []
        return self.accept(outbox.pending(n, after_id=self.after, fmt=self.fmt))
