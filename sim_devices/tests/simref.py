"""Reference encoding/decoding for the tests, built on pymodbus's convert_* helpers plus
a byte swap: deliberately a different implementation from the simulator's struct codec,
so a bug in either shows up as a mismatch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pymodbus.client.mixin import ModbusClientMixin

from cellctl.testing import async_wait_until as wait_until

__all__ = ["wait_until"]

DT = ModbusClientMixin.DATATYPE
_TYPES = {
    "int16": DT.INT16, "uint16": DT.UINT16, "int32": DT.INT32, "uint32": DT.UINT32,
    "int64": DT.INT64, "uint64": DT.UINT64, "float32": DT.FLOAT32, "float64": DT.FLOAT64,
}
MAX_REGS = 125
MAX_BITS = 2000


def swapped(regs: Sequence[int]) -> list[int]:
    return [((r & 0xFF) << 8) | (r >> 8) for r in regs]


def _byte_swapped(order: str) -> bool:
    return order in ("BADC", "DCBA")


def ref_decode(regs: Sequence[int], wire_type: str, order: str = "ABCD", bit: int | None = None) -> Any:
    """What a correct client makes of a point's registers."""
    regs = list(regs)
    if _byte_swapped(order):
        regs = swapped(regs)
    if wire_type == "bit":
        assert bit is not None
        return bool(regs[0] >> bit & 1)
    if wire_type == "string":
        return ModbusClientMixin.convert_from_registers(regs, DT.STRING, string_encoding="ascii")
    word_order: Literal["big", "little"] = "little" if order in ("CDAB", "DCBA") else "big"
    return ModbusClientMixin.convert_from_registers(regs, _TYPES[wire_type], word_order=word_order)


def ref_encode(value: Any, wire_type: str, order: str = "ABCD", length: int | None = None) -> list[int]:
    """The registers a correct client writes for a value."""
    if wire_type == "string":
        assert length is not None
        raw = value.encode("ascii").ljust(2 * length, b"\0")
        regs = ModbusClientMixin.convert_to_registers(raw.decode("ascii"), DT.STRING)
    else:
        word_order: Literal["big", "little"] = "little" if order in ("CDAB", "DCBA") else "big"
        regs = ModbusClientMixin.convert_to_registers(value, _TYPES[wire_type], word_order=word_order)
    return swapped(regs) if _byte_swapped(order) else regs


async def read_table(client: Any, unit: int, table: str, size: int) -> list[Any]:
    """A whole table in as few requests as the protocol allows."""
    out: list[Any] = []
    step = MAX_BITS if table in ("coil", "discrete") else MAX_REGS
    call = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }[table]
    for start in range(0, size, step):
        n = min(step, size - start)
        rr = await call(start, count=n, device_id=unit)
        assert not rr.isError(), rr
        out += (rr.bits[:n] if table in ("coil", "discrete") else rr.registers)
    return out


def decode_point(tables: dict[str, list[Any]], point: Any) -> Any:
    """Decode one sim map point from tables read over the wire."""
    data = tables[point.table.value]
    if point.type.value == "bool":
        return bool(data[point.start])
    regs = data[point.start : point.end]
    return ref_decode(regs, point.type.value, point.order.value, point.bit)


async def read_unit(client: Any, sim_unit: Any) -> dict[str, Any]:
    """Every point of a unit, read over the wire and decoded by the reference."""
    reg_map = sim_unit.register_map
    tables: dict[str, list[Any]] = {}
    for table in ("holding", "input", "coil", "discrete"):
        size = max((p.end for p in reg_map.points if p.table.value == table), default=0)
        if size:
            tables[table] = await read_table(client, sim_unit.unit_id, table, size)
    return {p.name: decode_point(tables, p) for p in reg_map.points}


def exc_code(rr: Any) -> int | None:
    """The exception code of an error response, None for a normal one."""
    return int(rr.exception_code) if rr.isError() else None
