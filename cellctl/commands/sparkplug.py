"""Sparkplug NCMD/DCMD: the one path every command takes, and where it is refused.

A command is decoded and validated against the BIRTH it addresses (`decode_command`:
known metric by alias or name, matching datatype, a value of that type, no nulls), then
against the profile: the metric must be a point declared writable (`access: w|rw`) and
a numeric value must lie within the point's `min`/`max`. Only then does the cell's
policy decide: `sparkplug.device_writes: refuse` (the default until the full command
and safety policy exists) refuses every write; `allow` passes the validated writes on.
One bad metric refuses the whole command. Every refusal is logged (`command_refused`)
and counted by reason; nothing here raises into the MQTT callback.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Literal

import structlog

from cellctl.commands.executor import PointWrite
from cellctl.encode.sparkplug import DeviceModel
from cellctl.sparkplug.codec import REBIRTH_METRIC, CommandError, MetricTable, decode_command

log = structlog.get_logger("cellctl.commands")

RefusalReason = Literal["invalid", "not_birthed", "not_writable", "out_of_range", "policy"]


class Refused(Exception):
    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason: RefusalReason = reason


class CommandRouter:
    """Validates NCMD/DCMD payloads; counts and logs refusals."""

    def __init__(
        self,
        node_table: MetricTable,
        devices: Mapping[str, DeviceModel],
        *,
        device_writes: Literal["refuse", "allow"] = "refuse",
    ) -> None:
        self.node_table = node_table
        self.devices = devices
        self.device_writes = device_writes
        self.refused: Counter[str] = Counter()
        self.accepted = 0

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    def _refuse(self, reason: RefusalReason, message: str, **where: str) -> None:
        self.refused[reason] += 1
        log.warning("command_refused", reason=reason, error=message, **where)

    def node_command(self, payload: bytes) -> bool:
        """NCMD: True when it asks for a rebirth. Writes to other node metrics are refused."""
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
            writes.append(PointWrite(device_id, w.name, value))
        if self.device_writes != "allow":
            names = [w.point_id for w in writes]
            raise Refused("policy", f"writes to {names} refused: sparkplug.device_writes is 'refuse'")
        self.accepted += 1
        return writes
