"""Drops are never silent: every outbox drop is logged by the writer (`outbox_dropped`),
counted by reason in the outbox's stats, and announced here.

- UNS: `<root>/events` gets one `outbox_dropped` event per reason, aggregated over what
  happened while it could not be sent (an outage can cause a drop at every commit);
  `<root>/outbox` (retained) carries the figures, on change at most every `interval`,
  at once after a drop.
- Sparkplug: the node metrics `Outbox/Messages`, `Outbox/Bytes`, `Outbox/Dropped`
  (NBIRTH, then NDATA on change).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from cellctl.outbox import DropEvent, OutboxStats, OutboxWriter
from cellctl.outbox.store import DropReason

if TYPE_CHECKING:
    from cellctl.contract.payloads import OutboxDroppedEvent
    from cellctl.deliver.sparkplug import SparkplugNode
    from cellctl.deliver.uns import UnsDelivery

log = structlog.get_logger("cellctl.outbox")

MAX_DEVICES_LISTED = 100


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Pending:
    """Drops of one reason not announced yet."""

    count: int = 0
    bytes: int = 0
    devices: Counter[str] = field(default_factory=Counter)
    from_ts: int | None = None
    to_ts: int | None = None

    def add(self, e: DropEvent) -> None:
        self.count += e.count
        self.bytes += e.bytes
        self.devices.update(e.by_stream)
        if e.oldest_created_ms is not None:
            self.from_ts = min(self.from_ts or e.oldest_created_ms, e.oldest_created_ms)
        if e.newest_created_ms is not None:
            self.to_ts = max(self.to_ts or e.newest_created_ms, e.newest_created_ms)


class OutboxReporter:
    def __init__(
        self,
        writer: OutboxWriter,
        *,
        uns: UnsDelivery | None,
        node: SparkplugNode | None,
        interval: float = 5.0,
        tick: float = 1.0,
    ) -> None:
        self.writer = writer
        self.uns = uns
        self.node = node
        self.interval = interval
        self.tick = tick
        self.events_published = 0
        self._pending: dict[DropReason, _Pending] = {}
        self._last: OutboxStats | None = None
        self._last_at = 0.0
        self._wake = asyncio.Event()

    def on_drop(self, event: DropEvent) -> None:
        """The writer's on_drop (loop thread)."""
        self._pending.setdefault(event.reason, _Pending()).add(event)
        self._wake.set()

    async def run(self) -> None:
        """Publish figures and events until cancelled."""
        while True:
            try:
                async with asyncio.timeout(self.tick):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if not self._pending and time.monotonic() - self._last_at < self.interval:
                continue  # nothing to announce, and the figures are not due: no thread hop
            stats = await self.writer.call(lambda ob: ob.stats())
            self._announce_drops()
            self._publish_figures(stats)

    def _announce_drops(self) -> None:
        if not self._pending or self.uns is None or not self.uns.session.is_connected:
            if self.uns is None:
                self._pending.clear()  # Sparkplug reports them as Outbox/Dropped
            return
        for reason, p in list(self._pending.items()):
            devices = dict(p.devices.most_common(MAX_DEVICES_LISTED))
            event: OutboxDroppedEvent = {
                "ts": now_ms(),
                "event": "outbox_dropped",
                "reason": reason,
                "count": p.count,
                "bytes": p.bytes,
                "devices": devices,
                "from_ts": p.from_ts,
                "to_ts": p.to_ts,
            }
            if not self.uns.publish_event(event):
                return
            self.events_published += 1
            del self._pending[reason]

    def _publish_figures(self, stats: OutboxStats) -> None:
        last = self._last
        dropped_more = last is None or stats.dropped_total != last.dropped_total
        changed = last is None or (stats.messages, stats.bytes) != (last.messages, last.bytes) or dropped_more
        now = time.monotonic()
        if not changed or (not dropped_more and now - self._last_at < self.interval):
            return
        sent = True
        if self.uns is not None:
            sent = self.uns.publish_outbox(stats, now_ms())
        if self.node is not None:
            self.node.update_outbox(stats)
        if sent:
            self._last, self._last_at = stats, now
