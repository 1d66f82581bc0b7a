"""Configuration models: a point's ``address:`` block, a device's ``connection:`` and
``options:``. Validated once at load time, frozen afterwards, so the poller never has to
re-check anything."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cellctl.driver import Duration
from cellctl_modbus.codec import MAX_STRING_REGISTERS, Order, WireType, register_count
from cellctl_modbus.planner import BIT_TABLES, MAX_BITS, MAX_REGISTERS, RequestMode, Table


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModbusAddress(_Frozen):
    """Where a point lives: table, zero-based protocol address and wire encoding.

    ``start`` is the address on the wire (holding register "40001" is ``start: 0``).
    ``type`` defaults to ``bool`` in the bit tables and is required in register tables.
    """

    table: Table
    start: Annotated[int, Field(ge=0, le=65535)]
    type: WireType
    order: Order = "ABCD"
    bit: Annotated[int, Field(ge=0, le=15)] | None = None
    length: Annotated[int, Field(ge=1, le=MAX_STRING_REGISTERS)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and "type" not in data:
            if data.get("table") in BIT_TABLES:
                return {**data, "type": "bool"}
            if data.get("table") in ("holding", "input"):
                raise ValueError(
                    f"a {data['table']} register point needs a 'type' "
                    "(bit, int16, uint16, int32, uint32, int64, uint64, float32, float64 or string)"
                )
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> ModbusAddress:
        bits = self.table in BIT_TABLES
        if bits and self.type != "bool":
            raise ValueError(f"the {self.table} table holds single bits: type must be bool, not {self.type}")
        if not bits and self.type == "bool":
            raise ValueError(
                f"type bool is for coil/discrete tables; use type: bit with 'bit' in {self.table}"
            )
        if (self.type == "bit") != (self.bit is not None):
            raise ValueError(
                "type bit needs 'bit' (0..15, 0 = least significant)"
                if self.type == "bit"
                else f"'bit' only applies to type bit, not {self.type}"
            )
        if (self.type == "string") != (self.length is not None):
            raise ValueError(
                "type string needs 'length' (registers, 2 characters each)"
                if self.type == "string"
                else f"'length' only applies to type string, not {self.type}"
            )
        if self.end > 65536:
            raise ValueError(
                f"{self.type} at {self.start} needs {self.count} registers and runs past address 65535"
            )
        return self

    @property
    def count(self) -> int:
        """Registers (bits, in bit tables) the point occupies."""
        return register_count(self.type, self.length)

    @property
    def end(self) -> int:
        return self.start + self.count


_TCP_FIELDS = ("host", "port", "pipelining")
_RTU_FIELDS = ("serial_port", "baudrate", "parity", "stopbits", "bytesize")


class ModbusConnection(_Frozen):
    """How to reach the device: Modbus TCP (``host``/``port``) or RTU on a serial line.

    Devices naming the same host and port, or the same serial port, share one physical
    connection (a gateway or an RS-485 bus), and are told apart by ``unit``.
    """

    transport: Literal["tcp", "rtu"]
    host: Annotated[str, Field(min_length=1)] | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    # Requests to different units in flight at once on one TCP connection (a gateway).
    pipelining: Literal["off", "on"] = "off"
    serial_port: Annotated[str, Field(min_length=1)] | None = None
    baudrate: Annotated[int, Field(gt=0)] = 19200
    parity: Literal["N", "E", "O"] = "E"  # the Modbus-over-serial default
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit: Annotated[int, Field(ge=0, le=247)] = 1

    @model_validator(mode="after")
    def _transport_fields(self) -> ModbusConnection:
        wrong = _RTU_FIELDS if self.transport == "tcp" else _TCP_FIELDS
        given = [f for f in wrong if f in self.model_fields_set]
        if given:
            other = "rtu" if self.transport == "tcp" else "tcp"
            raise ValueError(
                f"{', '.join(given)}: only for transport {other}, this is transport {self.transport}"
            )
        if self.transport == "tcp" and self.host is None:
            raise ValueError("transport tcp needs 'host'")
        if self.transport == "rtu":
            if self.serial_port is None:
                raise ValueError("transport rtu needs 'serial_port' (e.g. /dev/ttyUSB0)")
            if self.unit == 0:
                raise ValueError("unit 0 is the RTU broadcast address and never answers; use 1..247")
        return self

    def describe(self) -> str:
        if self.transport == "tcp":
            return f"tcp {self.host}:{self.port} unit {self.unit}"
        return f"rtu {self.serial_port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits} unit {self.unit}"


class ModbusOptions(_Frozen):
    """How to talk to the device: request sizes and merging, pacing."""

    max_registers: Annotated[int, Field(ge=1, le=MAX_REGISTERS)] = MAX_REGISTERS
    max_bits: Annotated[int, Field(ge=1, le=MAX_BITS)] = MAX_BITS
    max_gap: Annotated[int, Field(ge=0)] = 10
    request_mode: RequestMode = "merged"
    # Silence on the connection between the end of one transaction and the next frame.
    pause_between_requests: Duration = 0.0
    # After this many timeouts in a row the unit stops taking the link: it is reported
    # unavailable at once and probed at a slower rate (1 s, doubling to 30 s); 0 = never.
    breaker_after: Annotated[int, Field(ge=0)] = 3
