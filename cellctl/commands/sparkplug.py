"""Sparkplug NCMD/DCMD: decoding and the protocol's own checks, before the router.

A command is decoded and validated against the BIRTH it addresses (`decode_command`:
known metric by alias or name, matching datatype, a value of that type, no nulls), then
against the profile: the metric must be a point declared writable (`access: w|rw`) and
a numeric value must lie within the point's `min`/`max`. Then `sparkplug.device_writes`
decides: `refuse` (the default) refuses every write; `allow` hands each validated write
to the command router (cellctl/commands/router.py), which applies the cell's policy.
One bad metric refuses the whole command. Every refusal is counted by reason and
audited (an event and a log line, once per burst); nothing here raises into the MQTT
callback.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from cellctl.encode.sparkplug import DeviceModel
from cellctl.sparkplug.codec import REBIRTH_METRIC, CommandError, MetricTable, decode_command

log = structlog.get_logger("cellctl.commands")

RefusalReason = Literal[
    "invalid", "not_birthed", "not_writable", "out_of_range", "policy", "retained", "too_large", "too_long"
]

# Bounds on what one command may ask (issue 16): beyond them it is refused whole, unread.
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_METRICS = 64
MAX_STRING_CHARS = 1024  # a string written to a point (a program name, a lot id)
LOG_INTERVAL = 5.0  # refusals of one reason: the first logged at once, then one summary per interval


@dataclass(frozen=True, slots=True)
class PointWrite:
    """A validated write of one point, in engineering units."""

    device_id: str
    point_id: str
    value: Any


class BurstLog:
    """Log the first event of a burst at once, then at most one line per `interval` per
    key, carrying how many were not logged: a flood of bad commands is visible in the log
    without becoming the log."""

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()

    def warning(self, key: str, event: str, **fields: Any) -> None:
        self._log(log.warning, key, event, fields)

    def info(self, key: str, event: str, **fields: Any) -> None:
        self._log(log.info, key, event, fields)

    def _log(self, emit: Callable[..., Any], key: str, event: str, fields: dict[str, Any]) -> None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._quiet[key] += 1
            return
        self._last[key] = now
        quiet = self._quiet.pop(key, 0)
        emit(event, **fields, **({"not_logged_since": quiet} if quiet else {}))


class Refused(Exception):
    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason: RefusalReason = reason


class SparkplugCommands:
    """Validates NCMD/DCMD payloads; counts refusals and reports each to `on_refused`
    (the audit), or logs it once per burst when there is none."""

    def __init__(
        self,
        node_table: MetricTable,
        devices: Mapping[str, DeviceModel],
        *,
        device_writes: Literal["refuse", "allow"] = "refuse",
        on_refused: Callable[[str, str, dict[str, str]], None] | None = None,
    ) -> None:
        self.node_table = node_table
        self.devices = devices
        self.device_writes = device_writes
        self.on_refused = on_refused  # (reason, message, where)
        self.refused: Counter[str] = Counter()
        self.accepted = 0
        self.burst = BurstLog()

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    def _refuse(self, reason: RefusalReason, message: str, **where: str) -> None:
        self.refused[reason] += 1
        if self.on_refused is not None:
            self.on_refused(reason, message, where)
        else:
            self.burst.warning(reason, "command_refused", reason=reason, error=message, **where)

    def refuse_retained(self, topic: str) -> None:
        """A command delivered with the retain flag: Sparkplug commands are never retained,
        and executing one at every subscribe would repeat an old order after each restart."""
        self._refuse("retained", "a retained command is never executed", topic=topic)

    def _too_large(self, payload: bytes, where: dict[str, str]) -> bool:
        if len(payload) > MAX_PAYLOAD_BYTES:
            self._refuse("too_large", f"{len(payload)} bytes (at most {MAX_PAYLOAD_BYTES})", **where)
            return True
        return False

    def node_command(self, payload: bytes) -> bool:
        """NCMD: True when it asks for a rebirth. Writes to other node metrics are refused."""
        if self._too_large(payload, {"target": "node"}):
            return False
        try:
            cmd = decode_command(payload, self.node_table)
        except CommandError as exc:
            self._refuse("invalid", str(exc), target="node")
            return False
        others = [w.name for w in cmd.writes if w.name != REBIRTH_METRIC]
        if others:
            self._refuse("not_writable", f"node metrics {others} are not writable", target="node")
            return False
        rebirth = cmd.value_of(REBIRTH_METRIC) is True
        if rebirth:
            self.accepted += 1
        return rebirth

    def device_command(self, device_id: str, payload: bytes, *, birthed: bool) -> list[PointWrite]:
        """DCMD: the validated point writes it asks for, or [] when refused (logged, counted)."""
        if self._too_large(payload, {"device": device_id}):
            return []
        try:
            return self._device_writes(device_id, payload, birthed)
        except Refused as exc:
            self._refuse(exc.reason, str(exc), device=device_id)
            return []

    def _device_writes(self, device_id: str, payload: bytes, birthed: bool) -> list[PointWrite]:
        model = self.devices.get(device_id)
        if model is None or not birthed:
            raise Refused("not_birthed", f"device {device_id!r} is not birthed in this session")
        try:
            cmd = decode_command(payload, model.table)
        except CommandError as exc:
            raise Refused("invalid", str(exc)) from None
        if len(cmd.writes) > MAX_METRICS:
            raise Refused("too_large", f"{len(cmd.writes)} metrics in one command (at most {MAX_METRICS})")
        writes: list[PointWrite] = []
        for w in cmd.writes:
            limits = model.writable.get(w.name)
            if limits is None:
                raise Refused("not_writable", f"metric {w.name!r} is not a writable point")
            low, high = limits
            value = w.value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if isinstance(value, float) and not math.isfinite(value):
                    raise Refused("out_of_range", f"metric {w.name!r}: {value} is not a finite number")
                if (low is not None and value < low) or (high is not None and value > high):
                    raise Refused("out_of_range", f"metric {w.name!r}: {value} is outside [{low}, {high}]")
            if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
                raise Refused("too_long", f"metric {w.name!r}: {len(value)} characters (at most {MAX_STRING_CHARS})")
            writes.append(PointWrite(device_id, w.name, value))
        if self.device_writes != "allow":
            names = [w.point_id for w in writes]
            raise Refused("policy", f"writes to {names} refused: sparkplug.device_writes is 'refuse'")
        self.accepted += 1
        return writes

