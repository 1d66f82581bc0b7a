"""From the outbox to the broker, for one output format over its own MQTT session.

Records enter the outbox first (`OutboxWriter.put`); once committed they come back here
(`on_stored`) and are published at once if the session is *live*. They leave the outbox
only when the broker acknowledged them: PUBACK for QoS 1, a fence for QoS 0 (see
`AckTracker`). Whatever was committed while the session was not live is the session's
*backlog*: the replay task sends it in id order (so in order per device), marked
historical, paced, and only while live messages leave room in paho's in-flight window.

The in-flight window is ours, not paho's (paho's promotion of queued messages scans every
in-flight message on each PUBACK): at most `window` QoS 1 messages are unacknowledged;
live records beyond it wait in order in `_waiting` (bounded by
`backbone.max_queued_messages` and by `MAX_WAITING_BYTES`; past either, live publishing
falls back to replay: the records are in the outbox already, nothing is lost), and
session events that must not overtake them (`in_order`) wait with them.

Going live is placed in the record stream with `OutboxWriter.after_put`, so the cut
between backlog and live is exact: every record put before the session came up is
backlog, every record after it is live. A Sparkplug node sends its births at that same
point (`go_live(before=...)`), so no DATA can overtake them.

Subclasses say what the format needs: its Will, what to do when the session comes up,
and how a stored message is sent as history (`UnsDelivery`, `SparkplugNode`).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Final, cast

import structlog

from cellctl.config.cell import Backbone
from cellctl.deliver.acks import AckTracker
from cellctl.deliver.mqtt import MAX_INFLIGHT, NO_PROPERTIES, Inbound, Message, MqttSession, PublishRefused
from cellctl.deliver.replay import Replay
from cellctl.outbox import Outbox, OutboxWriter, Record, Stored
from cellctl.outbox.writer import record_size

log = structlog.get_logger("cellctl.deliver")

REPLAY_BATCH: Final = 200
MAX_WAITING_BYTES: Final = 2 * 2**20  # live records waiting for the window, in bytes


def _pending(ob: Outbox, *, n: int, after: int, fmt: str) -> list[Stored]:
    return ob.pending(n, after_id=after, fmt=fmt)


class Delivery:
    """One format's session, ack tracking and replay. Implements `SessionEvents`."""

    fmt: str = "uns"

    def __init__(
        self,
        backbone: Backbone,
        *,
        client_id: str,
        writer: OutboxWriter,
        replay_rate: int,
        window: int = MAX_INFLIGHT,
    ) -> None:
        self.writer = writer
        self.window = window
        self.max_waiting = backbone.max_queued_messages
        self.max_waiting_bytes = MAX_WAITING_BYTES
        self.session = MqttSession(backbone, client_id=client_id, events=self, name=self.fmt)
        self.tracker = AckTracker(writer.ack, wake=self._wake_drain)
        self.replay = Replay(rate=replay_rate, burst=max(1, replay_rate // 4), fmt=self.fmt)
        self.log = log.bind(format=self.fmt)
        self.live = False
        self.force_qos: int | None = None  # publish live records at this QoS instead of theirs
        self.gen = 0  # +1 on every session up/down: stale callbacks compare it
        self.live_published = 0
        self.replay_published = 0
        self.replay_skipped = 0  # stored messages acked without sending (nothing left to send)
        self.possible_duplicates = 0  # in flight when a connection was lost (replayed again)
        self.catch_ups = 0
        self._replay_wake = asyncio.Event()
        self._room = asyncio.Event()
        self._fence_due = False
        self._drain_due = False
        # live records (and ordered session events) waiting for room in the window
        self._waiting: deque[tuple[Record, int] | Callable[[], None]] = deque()
        self._waiting_bytes = 0  # record_size() of the records in _waiting

    # -- SessionEvents --------------------------------------------------------------------

    def will(self) -> Message | None:
        return None

    def session_up(self) -> None:
        self.gen += 1
        self.on_session_up()

    def session_down(self) -> None:
        self.gen += 1
        was_live, self.live = self.live, False
        self._waiting.clear()  # committed, so replayed in the next session
        self._waiting_bytes = 0
        lost = self.tracker.connection_lost()
        self.possible_duplicates += lost
        self.on_session_down()
        if was_live or lost:
            self.log.info("delivery_paused", in_flight_lost=lost, backlog_replayed=self.replay.replayed)

    def message(self, topic: str, payload: bytes, retain: bool = False, props: Inbound = NO_PROPERTIES) -> None:
        """An incoming message on a subscribed topic (commands, Sparkplug STATE)."""

    def acked(self, mid: int) -> None:
        self.tracker.acked(mid)

    # -- hooks for the formats ------------------------------------------------------------------

    def on_session_up(self) -> None:
        self.go_live(fresh=True)

    def on_session_down(self) -> None:
        """The connection is gone (whatever was in flight is replayed later)."""

    def live_payload(self, rec: Record) -> bytes:
        return rec.payload

    def historical(self, m: Stored) -> tuple[bytes, int, bool] | None:
        """(payload, qos, retain) to replay a stored message with, or None to drop it
        from the outbox unsent (counted in `replay_skipped`)."""
        return m.payload, m.qos, False

    def fell_behind(self) -> None:
        """Live records could not be published in time (more than `max_waiting` waited,
        or paho refused one): go live again further on; those are replayed."""
        self.go_live(fresh=False)

    # -- going live, in stream order ----------------------------------------------------------

    def go_live(self, *, fresh: bool, before: Callable[[], None] | None = None) -> None:
        """Go live at this point of the record stream: once every record put so far was
        handed over (so it is backlog), run `before` (births), start (`fresh`, a new
        connection) or extend the backlog, and publish every later record live."""
        self.pause()
        gen = self.gen

        def fire() -> None:
            if gen != self.gen or not self.session.is_connected:
                return  # the connection this was for is gone
            if before is not None:
                before()
            if fresh:
                self.replay.start(self.writer.handed_id)
            else:
                self.replay.extend(self.writer.handed_id)
            self.live = True
            self._replay_wake.set()

        self.writer.after_put(fire)

    def pause(self) -> None:
        """Stop live publishing; what follows (and what waits for the window) stays in
        the outbox as backlog."""
        self.live = False
        self._waiting.clear()
        self._waiting_bytes = 0

    def in_order(self, fn: Callable[[], None]) -> None:
        """Run `fn` (a session message: birth, death) after the live records handed over
        before it have been published: now, or when they leave the waiting line."""
        if self._waiting:
            self._waiting.append(fn)
        else:
            fn()

    # -- committed records -----------------------------------------------------------------------

    def on_stored(self, records: Sequence[Record], ids: Sequence[int]) -> None:
        """Committed records of this format, in id order: publish them if live, as far
        as the window allows; the rest wait their turn."""
        if not self.live:
            return
        if self._waiting or self.tracker.in_flight >= self.window:
            size = sum(map(record_size, records))
            if (
                len(self._waiting) + len(records) > self.max_waiting
                or self._waiting_bytes + size > self.max_waiting_bytes
            ):
                self._behind()
                return
            self._waiting.extend(zip(records, ids, strict=True))
            self._waiting_bytes += size
            return
        self._send_live(zip(records, ids, strict=True))

    def _send_live(self, items: Iterator[tuple[Record, int]]) -> None:
        publish, tracker, live_payload, window, force = (
            self.session.publish,
            self.tracker,
            self.live_payload,
            self.window,
            self.force_qos,
        )
        unconfirmed = False
        for rec, oid in items:
            qos = rec.qos if force is None else force
            if tracker.in_flight >= window:
                rest = [(rec, oid), *items]  # in order
                self._waiting.extend(rest)
                self._waiting_bytes += sum(record_size(r) for r, _ in rest)
                break
            try:
                mid = publish(rec.topic, live_payload(rec), qos, rec.retain)
            except PublishRefused:
                self._behind()
                break
            if qos:
                tracker.sent_one(mid, oid)
            else:
                tracker.sent_unconfirmed(oid)
                unconfirmed = True
            self.live_published += 1
        if unconfirmed:
            self._want_fence()

    def _pump(self) -> None:
        """Acks made room: what waited goes out, in order (runs of records at once, as
        many as the window has room for, so none of them can overflow it)."""
        waiting = self._waiting
        while waiting and self.live:
            room = self.window - self.tracker.in_flight
            if room <= 0:
                return
            head = waiting[0]
            if callable(head):
                waiting.popleft()
                head()
                continue
            run: list[tuple[Record, int]] = []
            size = 0
            while waiting and len(run) < room and not callable(waiting[0]):
                item = cast("tuple[Record, int]", waiting.popleft())
                size += record_size(item[0])
                run.append(item)
            self._waiting_bytes -= size
            self._send_live(iter(run))

    def _behind(self) -> None:
        if not self.session.is_connected:
            self.pause()  # session_down follows
            return
        self.catch_ups += 1
        self.log.warning("delivery_fell_behind", in_flight=self.tracker.in_flight, waiting=len(self._waiting))
        self.fell_behind()

    # -- acks and fences ------------------------------------------------------------------------

    def _wake_drain(self) -> None:
        """From paho's callbacks, which run on the loop thread (the session drives paho
        from the loop): drain once per loop turn, not once per ack."""
        if self._drain_due:
            return
        self._drain_due = True
        asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_due = False
        self.tracker.drain()
        if self._waiting:
            self._pump()
        if not self._waiting and self.tracker.in_flight < self.window // 2:
            self._room.set()

    def _want_fence(self) -> None:
        if self._fence_due:
            return
        self._fence_due = True
        asyncio.get_running_loop().call_soon(self._send_fence)

    def _send_fence(self) -> None:
        """One fence confirms every QoS 0 message sent before it (coalesced per loop turn)."""
        self._fence_due = False
        if not self.tracker.unconfirmed:
            return
        try:
            mid = self.session.fence()
        except PublishRefused:
            return  # the connection is going away; those are replayed in the next session
        self.tracker.fence(mid)

    # -- the replay task ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Replay each session's backlog while live. Run as a named task; never returns."""
        while True:
            await self._replay_wake.wait()
            self._replay_wake.clear()
            await self._replay()

    async def _replay(self) -> None:
        """Bounded by the backlog: each pass moves the cursor forward or stops."""
        replay = self.replay
        while self.live and not replay.done:
            if self._waiting or self.tracker.in_flight >= self.window // 2:  # live data first
                self._room.clear()
                await self._room.wait()
                continue
            room = self.window // 2 - self.tracker.in_flight
            n = replay.quota(min(REPLAY_BATCH, room))
            if n <= 0:
                await asyncio.sleep(replay.delay())
                continue
            gen, after, fmt = self.gen, replay.after, self.fmt
            rows = await self.writer.call(functools.partial(_pending, n=n, after=after, fmt=fmt))
            if gen != self.gen or not self.live or replay.after != after:
                continue  # the session changed meanwhile; the cursor says where to go on
            self._send_history(replay.accept(rows))

    def _send_history(self, batch: list[Stored]) -> None:
        unconfirmed = False
        for m in batch:
            if self.tracker.is_out(m.id):
                continue  # published live and not acknowledged yet (after falling behind)
            out = self.historical(m)
            if out is None:
                self.writer.ack([m.id])
                self.replay_skipped += 1
                continue
            payload, qos, retain = out
            try:
                mid = self.session.publish(m.topic, payload, qos, retain)
            except PublishRefused:
                self.replay.rewind(m.id - 1)
                self._behind()
                break
            if qos:
                self.tracker.sent(mid, [m.id])
            else:
                self.tracker.sent_unconfirmed(m.id)
                unconfirmed = True
            self.replay_published += 1
        if unconfirmed:
            self._want_fence()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def settle(self) -> None:
        """Wait until nothing sent is unacknowledged (bound it with asyncio.timeout)."""
        while self.session.is_connected and (self.tracker.in_flight or self.tracker.unconfirmed):
            self._send_fence()
            await asyncio.sleep(0.01)

    def farewell(self) -> Message | None:
        return None

    async def close(self) -> None:
        self.live = False
        await self.session.close(self.farewell())

    def stats(self) -> dict[str, int]:
        return {
            "published_live": self.live_published,
            "published_replay": self.replay_published,
            "replay_skipped": self.replay_skipped,
            "possible_duplicates": self.possible_duplicates,
            "fell_behind": self.catch_ups,
            "not_sent_offline": self.session.refused,  # publishes tried while the connection was down
        }
