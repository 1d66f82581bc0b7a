"""Pairing MQTT acknowledgements with outbox ids, so a message leaves the outbox only
once the broker has it.

paho's `publish()` returns a message id (mid) and the PUBACK (or, for QoS 0, the answer
to a later *fence* packet) names that mid. `AckTracker` maps mids back to outbox ids."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class AckTracker:
    """Pairs paho message ids (mids) with outbox ids.

    `sent()` and `drain()` run on the event loop thread; `acked()` may run on another
    thread and only appends the mid to a queue (and asks the loop to drain). The session
    drives paho from the event loop (cellctl/deliver/mqtt.py), so a PUBACK is read on the
    loop thread and can never be handled before `sent()` registered its mid right after
    `publish()` returned. An ack for an unregistered mid is counted in `unknown` and
    ignored: guessing would risk acknowledging a later message that reuses the mid.

    QoS 0 messages get no acknowledgement of their own. They are registered with
    `sent_unconfirmed()` and confirmed by a *fence*: a later packet on the same
    connection that the broker answers (the session sends an UNSUBSCRIBE), registered
    with `fence(mid)`. The broker handles a connection's packets in order, so its answer
    to the fence proves it received every message sent before it."""

    __slots__ = ("_acked", "_ids", "_pending", "_unconfirmed", "_wake_pending", "acked_total", "on_acked", "unknown", "wake")

    def __init__(
        self, on_acked: Callable[[list[int]], None], *, wake: Callable[[], None] | None = None
    ) -> None:
        self.on_acked = on_acked  # e.g. OutboxWriter.ack
        self.wake = wake  # e.g. lambda: loop.call_soon_threadsafe(tracker.drain)
        self.unknown = 0  # acks for mids not tracked (births, QoS 0 status messages, ...)
        self.acked_total = 0  # outbox messages confirmed by the broker (metrics)
        self._pending: dict[int, list[int]] = {}  # mid -> outbox ids; loop thread only
        self._ids: set[int] = set()  # every outbox id sent and not yet acknowledged
        self._unconfirmed: list[int] = []  # QoS 0 ids sent since the last fence
        self._acked: deque[int] = deque()  # appended on paho's thread
        self._wake_pending = threading.Event()

    def sent(self, mid: int, outbox_ids: list[int]) -> None:
        """Loop thread, right after `client.publish()` returned `mid` for these ids."""
        self._pending[mid] = outbox_ids
        self._ids.update(outbox_ids)

    def sent_one(self, mid: int, outbox_id: int) -> None:
        """`sent(mid, [outbox_id])`, for the per-message hot path."""
        self._pending[mid] = [outbox_id]
        self._ids.add(outbox_id)

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
            self.acked_total += len(done)
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
