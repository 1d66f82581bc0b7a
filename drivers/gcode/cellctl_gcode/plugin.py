"""The ``gcode`` driver plugin: what cellctl loads from the ``cellctl.drivers`` entry point."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from pydantic import BaseModel

from cellctl.driver import DeviceContext, DriverPlugin, PointSpec
from cellctl_gcode.config import GcodeAddress, GcodeConnection, GcodeOptions
from cellctl_gcode.device import GcodeDevice, model, open_device, resolve_dialect
from cellctl_gcode.fields import COMPATIBLE, FIELDS


class GcodePlugin:
    """The `cellctl.driver.DriverPlugin` for GRBL and Marlin machines on a serial port."""

    name = "gcode"
    connection_model: type[BaseModel] = GcodeConnection
    options_model: type[BaseModel] = GcodeOptions
    address_model: type[BaseModel] = GcodeAddress

    def check_point(self, point: PointSpec) -> str | None:
        """Value type against the field's kind, access against writability."""
        addr: GcodeAddress = model(point.address, GcodeAddress)
        info = FIELDS[addr.field]
        if info.kind not in COMPATIBLE[point.type]:
            return f"field {addr.field} carries a {info.kind} value, but the point is type {point.type}"
        if point.access != "r" and not info.writable:
            return f"access {point.access} on field {addr.field}, which is read-only"
        if point.access == "r" and info.writable:
            return f"field {addr.field} is a control: give the point access w"
        return None

    def plan_summary(self, ctx: DeviceContext) -> list[str]:
        """What the device will do; ValueError if the fields and the dialect disagree."""
        options: GcodeOptions = model(ctx.options, GcodeOptions)
        conn: GcodeConnection = model(ctx.connection, GcodeConnection)
        fields = [model(p.address, GcodeAddress).field for p in ctx.points]
        dialect = resolve_dialect(options, fields)
        lines = [
            f"serial {conn.describe()}, dialect {dialect or 'detected at connect (M115)'}",
            f"status every {options.status_interval:g} s; {len(fields)} point(s)",
        ]
        if dialect in (None, "grbl"):
            g = options.grbl
            lines.append(f"grbl: {g.streaming.replace('_', ' ')}, rx buffer {g.rx_buffer}, on error {g.on_error}")
        if dialect in (None, "marlin"):
            m = options.marlin
            lines.append(f"marlin: {m.bufsize} lines in flight, autoreport {m.autoreport}")
        if options.job_dir is not None:
            lines.append(f"jobs from {options.job_dir} ({', '.join(options.job_suffixes)})")
        return lines

    def open(self, ctx: DeviceContext) -> AbstractAsyncContextManager[GcodeDevice]:
        return open_device(ctx)


plugin: DriverPlugin = GcodePlugin()  # annotated: mypy checks the protocol is met

__all__ = ["GcodePlugin", "plugin"]
