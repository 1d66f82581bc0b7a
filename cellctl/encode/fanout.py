"""One sample stream to every output format (`publish.formats: [uns, sparkplug]`)."""

from __future__ import annotations

from cellctl.engine.runner import DeviceSink
from cellctl.model import DeviceSnapshot, DeviceUpdate


class FanOut:
    """A DeviceSink that hands every call to each of `sinks`, in order."""

    def __init__(self, sinks: list[DeviceSink] | None = None) -> None:
        self.sinks: list[DeviceSink] = sinks or []

    def device_update(self, update: DeviceUpdate) -> None:
        for s in self.sinks:
            s.device_update(update)

    def device_state(self, snapshot: DeviceSnapshot) -> None:
        for s in self.sinks:
            s.device_state(snapshot)

    def device_available(self, snapshot: DeviceSnapshot) -> None:
        for s in self.sinks:
            s.device_available(snapshot)
