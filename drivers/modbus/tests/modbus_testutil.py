"""Test helpers: the cellctl_sim Modbus simulator served for a test (TCP on 127.0.0.1 or
RTU on a pty), with blank units loaded with a known image, and builders for points and
device contexts (`wait_until` comes from cellctl.testing).
(A unique module name, not conftest, so it cannot collide with other test directories of the monorepo.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cellctl_modbus.config import ModbusAddress, ModbusConnection, ModbusOptions
from cellctl_sim.modbus import SimModbusServer, Table
from pymodbus.client.mixin import ModbusClientMixin

from cellctl.driver import DeviceContext, PointSpec
from cellctl.testing import async_wait_until as wait_until

__all__ = ["wait_until"]

Image = Mapping[Table, Sequence[int] | Sequence[bool]]  # table -> values from address 0


@dataclass
class Served:
    """A simulator of blank units, listening where the driver under test connects."""

    sim: SimModbusServer
    port: int = 0  # TCP
    serial_port: str = ""  # RTU: the pty path clients open

    def connection(self, unit: int = 1, **kw: Any) -> ModbusConnection:
        if self.serial_port:
            return ModbusConnection(
                transport="rtu", serial_port=self.serial_port, parity="N", baudrate=115200, unit=unit, **kw
            )
        return ModbusConnection(transport="tcp", host="127.0.0.1", port=self.port, unit=unit, **kw)

    def read(self, unit: int, table: Table, address: int, count: int) -> list[int] | list[bool]:
        """What the device holds now (a test's view, not over the wire)."""
        values = self.sim.unit(unit).read(table, address, count)
        assert not isinstance(values, int), f"unit {unit}: {table} {address}+{count} is outside the image"
        return values


ServeFactory = Callable[[Mapping[int, Image]], Awaitable[Served]]


def blank_sim(units: Mapping[int, Image]) -> SimModbusServer:
    """A simulator of `blank` units (nothing changes by itself), each loaded with its image."""
    sim = SimModbusServer(dict.fromkeys(units, "blank"), auto_tick=False)
    for uid, image in units.items():
        for table, values in image.items():
            if values:
                sim.unit(uid).load(table, 0, values)
    return sim


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
UNIT1: Image = {Table.HOLDING: HOLDING, Table.INPUT: INPUT, Table.COIL: COILS, Table.DISCRETE: DISCRETE}
UNIT2: Image = {Table.HOLDING: [7, 8, 9], Table.COIL: [True]}


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
