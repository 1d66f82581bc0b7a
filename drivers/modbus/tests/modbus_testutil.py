"""Test helpers: server-side instrumentation for in-process pymodbus servers and builders
for device contexts (the pty null modem and `wait_until` come from cellctl.testing).
(A unique module name, not conftest, so it cannot collide with other test directories of the monorepo.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from cellctl_modbus.config import ModbusAddress, ModbusConnection, ModbusOptions
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from cellctl.driver import DeviceContext, PointSpec
from cellctl.testing import PtyBridge
from cellctl.testing import async_wait_until as wait_until

__all__ = ["PtyBridge", "wait_until"]


@dataclass
class Trace:
    """Server-side view of the wire: requests in flight, connections, arrivals."""

    in_flight: int = 0
    max_in_flight: int = 0
    requests: int = 0
    connects: int = 0
    arrivals: list[tuple[float, int, int]] = field(default_factory=list)  # (time, unit, fc)
    mangle: Callable[[ModbusPDU], ModbusPDU] | None = None

    def pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending:
            self.in_flight -= 1
            if self.mangle is not None:
                return self.mangle(pdu)
        else:
            self.in_flight += 1
            self.requests += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.arrivals.append((time.monotonic(), pdu.dev_id, pdu.function_code))
        return pdu

    def connect(self, up: bool) -> None:
        if up:
            self.connects += 1


@dataclass
class Behaviour:
    """Knobs on the simulated devices, applied through pymodbus's SimDevice action."""

    hang: set[int] = field(default_factory=set)  # units that stop answering
    release: asyncio.Event = field(default_factory=asyncio.Event)
    delay: float = 0.0  # simulated processing time per request
    fail_once: dict[tuple[int, int], ExcCodes] = field(default_factory=dict)  # (unit, address)

    async def action(  # noqa: PLR0917 - the signature pymodbus calls
        self,
        unit: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if unit in self.hang:
            await self.release.wait()
            return ExcCodes.DEVICE_BUSY
        if self.delay:
            await asyncio.sleep(self.delay)  # device latency, widens any overlap window
        return self.fail_once.pop((unit, address), None)


def sim_device(
    unit: int,
    behaviour: Behaviour,
    *,
    holding: Sequence[int] = (),
    input_regs: Sequence[int] = (),
    coils: Sequence[bool] = (),
    discrete: Sequence[bool] = (),
    size: int = 200,
) -> SimDevice:
    """A device with `size` addresses in every table (0..size-1), preloaded from 0."""

    def regs(values: Sequence[int]) -> list[int]:
        return list(values) + [0] * (size - len(values))

    def bits(values: Sequence[bool]) -> list[bool]:
        return list(values) + [False] * (size - len(values))

    return SimDevice(
        unit,
        simdata=(
            [SimData(0, values=bits(coils), datatype=DataType.BITS)],
            [SimData(0, values=bits(discrete), datatype=DataType.BITS)],
            [SimData(0, values=regs(holding), datatype=DataType.REGISTERS)],
            [SimData(0, values=regs(input_regs), datatype=DataType.REGISTERS)],
        ),
        action=partial(behaviour.action, unit),
    )


@dataclass
class Sim:
    server: ModbusTcpServer | ModbusSerialServer
    trace: Trace
    behaviour: Behaviour
    host: str = "127.0.0.1"
    port: int = 0
    serial_port: str = ""

    def connection(self, unit: int = 1, **kw: Any) -> ModbusConnection:
        if self.serial_port:
            return ModbusConnection(
                transport="rtu", serial_port=self.serial_port, parity="N", baudrate=115200, unit=unit, **kw
            )
        return ModbusConnection(transport="tcp", host=self.host, port=self.port, unit=unit, **kw)

    async def holding(self, unit: int, address: int, count: int) -> list[int]:
        values: list[int] = await self.server.async_getValues(unit, 3, address, count)
        return values

    async def coils(self, unit: int, address: int, count: int) -> list[bool]:
        values: list[bool] = await self.server.async_getValues(unit, 1, address, count)
        return values[:count]

    async def set_holding(self, unit: int, address: int, values: list[int]) -> None:
        await self.server.async_setValues(unit, 16, address, values)


SimFactory = Callable[..., Awaitable[Sim]]


def spec(index: int, value_type: str, access: str = "r", **address: Any) -> PointSpec:
    return PointSpec(
        index=index,
        id=f"p{index}",
        type=value_type,  # type: ignore[arg-type]
        access=access,  # type: ignore[arg-type]
        address=ModbusAddress.model_validate(address),
    )


def device_ctx(
    conn: ModbusConnection,
    points: list[PointSpec],
    timeout: float = 0.5,
    device_id: str = "dev",
    **options: Any,
) -> DeviceContext:
    return DeviceContext(
        device_id=device_id,
        connection=conn,
        options=ModbusOptions.model_validate(options),
        points=points,
        timeout=timeout,
    )


# -- a device image shared by the TCP and RTU tests ----------------------------------

DT = ModbusClientMixin.DATATYPE
conv = ModbusClientMixin.convert_to_registers

# Holding registers of unit 1, built with pymodbus's converter or by hand (not our codec).
HOLDING = (
    conv(-1234, DT.INT16)  # 0
    + conv(54321, DT.UINT16)  # 1
    + conv(-123456789, DT.INT32)  # 2..3 ABCD
    + conv(3_000_000_000, DT.UINT32, word_order="little")  # 4..5 CDAB
    + [0x4841, 0x0000]  # 6..7 float32 12.5 BADC (0x41480000, bytes swapped per word)
    + [0x0000, 0x0000, 0x0000, 0xC0BF]  # 8..11 float64 -0.125 DCBA (0xBFC0000000000000)
    + conv(-9_000_000_000_000_000_000, DT.INT64)  # 12..15
    + conv(18_000_000_000_000_000_000, DT.UINT64, word_order="little")  # 16..19 CDAB
    + conv("PUMP-7", DT.STRING)
    + [0]  # 20..23 string, NUL padded
    + [0b1000_0000_0000_0101]  # 24 bits 0, 2, 15
)
INPUT = [777, *conv(-3.5, DT.FLOAT32)]
COILS = [True, False, True, True]
DISCRETE = [False, True]


def reg(i: int, t: str, table: str = "holding", start: int = 0, **kw: Any) -> PointSpec:
    value_type = {"bit": "bool", "bool": "bool", "string": "string"}.get(
        t, "float" if "float" in t else "int"
    )
    return spec(i, value_type, table=table, start=start, type=t, **kw)


ALL_POINTS = [
    reg(0, "int16", start=0),
    reg(1, "uint16", start=1),
    reg(2, "int32", start=2),
    reg(3, "uint32", start=4, order="CDAB"),
    reg(4, "float32", start=6, order="BADC"),
    reg(5, "float64", start=8, order="DCBA"),
    reg(6, "int64", start=12),
    reg(7, "uint64", start=16, order="CDAB"),
    reg(8, "string", start=20, length=4),
    reg(9, "bit", start=24, bit=0),
    reg(10, "bit", start=24, bit=1),
    reg(11, "bit", start=24, bit=15),
    reg(12, "uint16", table="input", start=0),
    reg(13, "float32", table="input", start=1),
    spec(14, "bool", table="coil", start=0),
    spec(15, "bool", table="coil", start=1),
    spec(16, "bool", table="coil", start=3),
    spec(17, "bool", table="discrete", start=1),
    reg(18, "uint16", start=2),  # shares registers with point 2
]
EXPECTED = [
    -1234,
    54321,
    -123456789,
    3_000_000_000,
    12.5,
    -0.125,
    -9_000_000_000_000_000_000,
    18_000_000_000_000_000_000,
    "PUMP-7",
    True,
    False,
    True,
    777,
    -3.5,
    True,
    False,
    True,
    True,
    0xF8A4,  # high word of -123456789
]
