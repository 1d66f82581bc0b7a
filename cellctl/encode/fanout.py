"""One sample stream to every output format (`publish.formats: [uns, sparkplug]`), and
the error boundary between the engine and the encoders: an encoder bug loses that one
message (logged once per sink and device), never the device task or the daemon."""

from __future__ import annotations

import structlog

from cellctl.engine.runner import DeviceSink
from cellctl.model import DeviceSnapshot, DeviceUpdate

log = structlog.get_logger("cellctl.encode")


class FanOut:
    """A DeviceSink that hands every call to each of `sinks`, in order."""

    def __init__(self, sinks: list[DeviceSink] | None = None) -> None:
        self.sinks: list[DeviceSink] = sinks or []
        self.failures = 0
        self._failing: set[tuple[int, str]] = set()  # (sink index, device) logged already

    def _failed(self, i: int, device_id: str, what: str, exc: Exception) -> None:
        self.failures += 1
        if (i, device_id) not in self._failing:
            self._failing.add((i, device_id))
            log.error(
                "encoder_failed",
                device=device_id,
                sink=type(self.sinks[i]).__name__,
                call=what,
                error=repr(exc),
                exc_info=exc,
            )

    def device_update(self, update: DeviceUpdate) -> None:
        for i, s in enumerate(self.sinks):
            try:
                s.device_update(update)
            except Exception as exc:
                self._failed(i, update.device_id, "device_update", exc)

    def device_state(self, snapshot: DeviceSnapshot) -> None:
        for i, s in enumerate(self.sinks):
            try:
                s.device_state(snapshot)
            except Exception as exc:
                self._failed(i, snapshot.device_id, "device_state", exc)

    def device_available(self, snapshot: DeviceSnapshot) -> None:
        for i, s in enumerate(self.sinks):
            try:
                s.device_available(snapshot)
            except Exception as exc:
                self._failed(i, snapshot.device_id, "device_available", exc)

    def device_removed(self, device_id: str) -> None:
        for i, s in enumerate(self.sinks):
            try:
                s.device_removed(device_id)
            except Exception as exc:
                self._failed(i, device_id, "device_removed", exc)
