"""The ``opcua`` driver plugin: what cellctl loads from the ``cellctl.drivers`` entry point.

Importing this module does not import asyncua (about 0.4 s): `cellctl check` validates
OPC UA devices without it, and the daemon pays for it only when it opens a device.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from cellctl.driver import DeviceContext, DriverPlugin, PointSpec
from cellctl_opcua.config import MethodAddress, OpcUaAddress, OpcUaConnection, OpcUaOptions

if TYPE_CHECKING:
    from cellctl_opcua.device import OpcUaDevice


def _model(value: BaseModel, model: type[Any]) -> Any:
    if isinstance(value, model):
        return value
    return model.model_validate(value.model_dump())


class OpcUaPlugin:
    """The `cellctl.driver.DriverPlugin` for OPC UA (client, binary TCP)."""

    name = "opcua"
    connection_model: type[BaseModel] = OpcUaConnection
    options_model: type[BaseModel] = OpcUaOptions
    address_model: type[BaseModel] = OpcUaAddress
    method_model: type[BaseModel] = MethodAddress  # profile `commands:` (cellctl.driver.Caller)

    def check_point(self, point: PointSpec) -> str | None:
        """What can be told without the server: a server deadband needs a number."""
        addr: OpcUaAddress = _model(point.address, OpcUaAddress)
        if addr.deadband is not None and point.type not in ("int", "float"):
            return f"a server deadband needs a numeric point, but the point is type {point.type}"
        return None

    def plan_summary(self, ctx: DeviceContext) -> list[str]:
        """One line per subscription / polled group, no I/O."""
        conn: OpcUaConnection = _model(ctx.connection, OpcUaConnection)
        opts: OpcUaOptions = _model(ctx.options, OpcUaOptions)
        addrs = [_model(p.address, OpcUaAddress) for p in ctx.points]
        subscribed = [a for a in addrs if a.mode == "subscribe"]
        polled: dict[float, int] = {}
        for a in addrs:
            if a.mode == "poll":
                interval = a.poll_interval or opts.poll_interval
                polled[interval] = polled.get(interval, 0) + 1
        lines = [f"session {conn.describe()}"]
        if subscribed:
            lines.append(
                f"subscription every {opts.publishing_interval:g} s: {len(subscribed)} monitored item(s), "
                f"keep-alive {opts.keepalive:g} s"
            )
        lines += [f"read every {interval:g} s: {n} node(s)" for interval, n in sorted(polled.items())]
        return lines

    def open(self, ctx: DeviceContext) -> AbstractAsyncContextManager[OpcUaDevice]:
        return _open(ctx)


@asynccontextmanager
async def _open(ctx: DeviceContext) -> AsyncIterator[OpcUaDevice]:
    from cellctl_opcua.device import OpcUaDevice

    device = OpcUaDevice(ctx)
    await device.open()
    try:
        yield device
    finally:
        await device.close()


plugin: DriverPlugin = OpcUaPlugin()  # annotated: mypy checks the protocol is met

__all__ = ["OpcUaPlugin", "plugin"]
