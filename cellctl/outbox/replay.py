"""Pieces the publisher needs to drain the outbox after a (re)connect without starving
live data, and to map MQTT acknowledgements back to outbox ids.

- `AckTracker`: paho's `publish()` returns a message id (mid) and `on_publish(mid)` may
  fire on paho's thread before `publish()` has even returned. The tracker pairs them
  either way without a lock held across paho calls (paho calls `on_publish` under its
  own lock, so one held across `publish()` would deadlock against it).
- `Replay`: which stored messages belong to the backlog of this session (everything
  committed before it started), handed out in id order at a paced rate.
- `uns_historical`: marks a stored UNS JSON payload `"historical": true` without
  parsing it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from cellctl.outbox.store import Format, Outbox, Stored

_HISTORICAL: Final = b'{"historical":true,'


def uns_historical(payload: bytes) -> bytes:
    """`{"ts":..}` -> `{"historical":true,"ts":..}`: a splice, since replay may resend
    hundreds of thousands of messages. Payloads that are not a non-empty JSON object
    are returned unchanged."""
    if len(payload) > 2 and payload[:1] == b"{" and payload[1:].lstrip()[:1] != b"}":
        return _HISTORICAL + payload[1:]
    return payload


class AckTracker:
    """Pairs paho message ids (mids) with outbox ids.

    `sent()` and `drain()` run on the event loop thread; `acked()` may run on another
    thread and only appends the mid to a queue (and asks the loop to drain). The session
    drives paho from the event loop (cellctl/publish/mqtt.py), so a PUBACK is read on the
    loop thread and can never be handled before `sent()` registered its mid right after
    `publish()` returned. An ack for an unregistered mid is counted in `unknown` and
    ignored: guessing would risk acknowledging a later message that reuses the mid.

    QoS 0 messages get no acknowledgement of their own. They are registered with
    `sent_unconfirmed()` and confirmed by a *fence*: a later packet on the same
    connection that the broker answers (the session sends an UNSUBSCRIBE), registered
    with `fence(mid)`. The broker handles a connection's packets in order, so its answer
    to the fence proves it received every message sent before it."""

    __slots__ = ("_acked", "_ids", "_pending", "_unconfirmed", "_wake_pending", "on_acked", "unknown", "wake")

    def __init__(
        self, on_acked: Callable[[list[int]], None], *, wake: Callable[[], None] | None = None
    ) -> None:
        self.on_acked = on_acked  # e.g. OutboxWriter.ack
        self.wake = wake  # e.g. lambda: loop.call_soon_threadsafe(tracker.drain)
        self.unknown = 0  # acks for mids not tracked (births, QoS 0 status messages, ...)
        self._pending: dict[int, list[int]] = {}  # mid -> outbox ids; loop thread only
        self._ids: set[int] = set()  # every outbox id sent and not yet acknowledged
        self._unconfirmed: list[int] = []  # QoS 0 ids sent since the last fence
        self._acked: deque[int] = deque()  # appended on paho's thread
        self._wake_pending = threading.Event()

    def sent(self, mid: int, outbox_ids: list[int]) -> None:
        """Loop thread, right after `client.publish()` returned `mid` for these ids."""
        self._pending[mid] = outbox_ids
        self._ids.update(outbox_ids)

    def sent_unconfirmed(self, outbox_id: int) -> None:
        """Loop thread: a QoS 0 message was handed to the session; `fence()` confirms it."""
        self._unconfirmed.append(outbox_id)
        self._ids.add(outbox_id)

    @property
    def unconfirmed(self) -> int:
        return len(self._unconfirmed)

    def fence(self, mid: int) -> None:
        """Loop thread: the session sent a fence packet with `mid`; its answer confirms
        every QoS 0 message registered before it."""
        self._pending[mid] = self._unconfirmed
        self._unconfirmed = []

    def acked(self, mid: int) -> None:
        """paho's `on_publish` (PUBACK for QoS 1) or `on_unsubscribe` (a fence)."""
        self._acked.append(mid)
        if self.wake is not None and not self._wake_pending.is_set():
            self._wake_pending.set()
            self.wake()

    def drain(self) -> int:
        """Loop thread: resolve queued acks and pass their outbox ids on. Returns how many."""
        self._wake_pending.clear()
        done: list[int] = []
        pending, acked = self._pending, self._acked
        for _ in range(len(acked)):  # bounded by what is queued now
            ids = pending.pop(acked.popleft(), None)
            if ids is None:
                self.unknown += 1
            else:
                done.extend(ids)
        if done:
            self._ids.difference_update(done)
            self.on_acked(done)
        return len(done)

    def connection_lost(self) -> int:
        """Loop thread, on disconnect: acks that arrived before it still count; whatever
        is still in flight stays in the outbox and is replayed in the next session.
        Returns how many messages were in flight."""
        self.drain()
        n = sum(len(v) for v in self._pending.values()) + len(self._unconfirmed)
        self._pending.clear()
        self._unconfirmed = []
        self._ids.clear()
        return n

    def is_out(self, outbox_id: int) -> bool:
        """Whether this message was sent in this session and is not acknowledged yet."""
        return outbox_id in self._ids

    @property
    def in_flight(self) -> int:
        """Packets awaiting an answer (QoS 1 messages and fences)."""
        return len(self._pending)


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
        fmt: Format | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self.fmt: Format | None = fmt
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
