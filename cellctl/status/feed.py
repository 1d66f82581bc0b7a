"""What the status page knows besides the devices' snapshots: a change counter (so it
pushes only when something changed) and the last events, newest first."""

from __future__ import annotations

import collections
import time
from typing import Any

from cellctl.model import DeviceSnapshot, DeviceUpdate


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class StatusFeed:
    """A DeviceSink beside the encoders (behind the FanOut's error boundary): it only
    counts and remembers transitions, nothing per value."""

    def __init__(self, max_events: int) -> None:
        self.version = 0
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_events)

    def note(self, event: str, **fields: Any) -> None:
        self.events.appendleft({"ts": now_ms(), "event": event, **fields})
        self.version += 1

    # -- DeviceSink ---------------------------------------------------------------------

    def device_update(self, update: DeviceUpdate) -> None:
        self.version += 1

    def device_state(self, snapshot: DeviceSnapshot) -> None:
        pass  # the page takes snapshots itself when it pushes

    def device_available(self, snapshot: DeviceSnapshot) -> None:
        if snapshot.available:
            self.note("device_online", device=snapshot.device_id)
        else:
            self.note("device_offline", device=snapshot.device_id, reason=snapshot.reason)

    def device_removed(self, device_id: str) -> None:
        self.note("device_removed", device=device_id)
