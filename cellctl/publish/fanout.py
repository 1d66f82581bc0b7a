"""One sample stream to every output format (`publish.formats: [uns, sparkplug]`)."""

from __future__ import annotations

from typing import Any

from cellctl.engine.runner import DeviceSink


class FanOut:
    """A DeviceSink that hands every call to each of `sinks`, in order."""

    def __init__(self, sinks: list[DeviceSink] | None = None) -> None:
        self.sinks: list[DeviceSink] = sinks or []

    def device_data(
        self,
        device_id: str,
        ts_ms: int,
        values: dict[str, Any],
        quality: dict[str, dict[str, str]],
        machine: dict[str, Any] | None,
    ) -> None:
        for s in self.sinks:
            s.device_data(device_id, ts_ms, values, quality, machine)

    def device_state(self, device_id: str, state: dict[str, Any]) -> None:
        for s in self.sinks:
            s.device_state(device_id, state)

    def device_available(self, device_id: str, available: bool) -> None:
        for s in self.sinks:
            s.device_available(device_id, available)
