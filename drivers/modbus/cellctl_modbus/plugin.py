"""The ``modbus`` driver plugin: what cellctl loads from the ``cellctl.drivers`` entry point."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel

from cellctl.driver import DeviceContext, DriverPlugin, PointSpec, Reading, WriteRejected
from cellctl_modbus import transport
from cellctl_modbus.codec import Decoder, encode, make_decoder, merge_bit
from cellctl_modbus.config import ModbusAddress, ModbusConnection, ModbusOptions
from cellctl_modbus.planner import PlanPoint, ReadRequest, describe, plan

_VALUE_TYPES: Final[dict[str, tuple[str, ...]]] = {
    "bool": ("bool",),
    "bit": ("bool",),
    "int16": ("int", "float"),
    "uint16": ("int", "float"),
    "int32": ("int", "float"),
    "uint32": ("int", "float"),
    "int64": ("int", "float"),
    "uint64": ("int", "float"),
    "float32": ("float",),
    "float64": ("float",),
    "string": ("string",),
}


def _model(value: BaseModel, model: type[Any]) -> Any:
    """The value as `model`: the loader already validated it, but re-validate a foreign
    BaseModel rather than trust its shape."""
    if isinstance(value, model):
        return value
    return model.model_validate(value.model_dump())


def _addresses(points: Sequence[PointSpec]) -> list[ModbusAddress]:
    out: list[ModbusAddress] = [_model(p.address, ModbusAddress) for p in points]
    return out


def build_plan(ctx: DeviceContext) -> list[ReadRequest]:
    """The device's read requests; PlanError (a ValueError) if a point cannot fit."""
    options: ModbusOptions = _model(ctx.options, ModbusOptions)
    addrs = _addresses(ctx.points)
    return plan(
        (PlanPoint(k, a.table, a.start, a.count) for k, a in enumerate(addrs)),
        max_registers=options.max_registers,
        max_bits=options.max_bits,
        max_gap=options.max_gap,
        mode=options.request_mode,
    )


@dataclass(frozen=True, slots=True)
class _Step:
    """A planned read with each point's decoder bound: (position, offset, decoder)."""

    table: str
    start: int
    count: int
    items: tuple[tuple[int, int, Decoder], ...]


class ModbusDevice:
    """An open device: a Poller and a Writer over a lease on a shared link."""

    def __init__(self, ctx: DeviceContext) -> None:
        self.ctx = ctx
        self.connection: ModbusConnection = _model(ctx.connection, ModbusConnection)
        self.options: ModbusOptions = _model(ctx.options, ModbusOptions)
        self.addresses = _addresses(ctx.points)
        self.timeout = ctx.timeout
        decoders = [make_decoder(a.type, a.order, bit=a.bit, length=a.length) for a in self.addresses]
        self.requests = build_plan(ctx)
        self._steps = tuple(
            _Step(r.table, r.start, r.count, tuple((k, off, decoders[k]) for k, off in r.points))
            for r in self.requests
        )
        self._n = len(ctx.points)
        self._by_index = {p.index: k for k, p in enumerate(ctx.points)}
        self._indexes = (
            None if all(p.index == k for k, p in enumerate(ctx.points)) else [p.index for p in ctx.points]
        )
        self._error_keys = [p.index for p in ctx.points]
        self._lease: transport.Lease | None = None

    async def start(self) -> None:
        self._lease = await transport.acquire(
            self.connection, timeout=self.timeout, pause=self.options.pause_between_requests
        )

    def close(self) -> None:
        if self._lease is not None:
            transport.release(self._lease)
            self._lease = None

    def _need_lease(self) -> transport.Lease:
        if self._lease is None:
            raise RuntimeError("device is not open")
        return self._lease

    async def poll(self) -> Reading:
        """Read every point once; per-point problems go to `errors`, a lost device raises
        DeviceUnavailable."""
        lease = self._need_lease()
        values: list[Any] = [None] * self._n
        errors: dict[int, str] = {}
        keys = self._error_keys
        for step in self._steps:
            try:
                block = await lease.read(step.table, step.start, step.count, self.timeout)
            except transport.RequestError as exc:
                for k, _, _ in step.items:
                    errors[keys[k]] = exc.reason
                continue
            for k, off, dec in step.items:
                try:
                    values[k] = dec(block, off)
                except Exception as exc:  # garbage from the device: this point only
                    errors[keys[k]] = f"undecodable value: {exc}"
        return Reading(values=values, indexes=self._indexes, errors=errors or None)

    async def write(self, index: int, raw_value: Any) -> None:
        """Write one raw value. ValueError for a read-only point or a value the wire type
        cannot hold; WriteRejected when the device refuses it (an exception response or an
        unusable answer), DeviceUnavailable when it is gone."""
        try:
            await self._write(index, raw_value)
        except transport.RequestError as exc:
            raise WriteRejected(exc.reason) from exc

    async def _write(self, index: int, raw_value: Any) -> None:
        lease = self._need_lease()
        k = self._by_index.get(index)
        if k is None:
            raise ValueError(f"no point with index {index}")
        spec, addr = self.ctx.points[k], self.addresses[k]
        if spec.access == "r":
            raise ValueError(f"point {spec.id!r} is read-only")
        if addr.table in ("input", "discrete"):
            raise ValueError(f"point {spec.id!r} is in the read-only {addr.table} table")
        if addr.table == "coil":
            (bit,) = encode(raw_value, "bool")
            await lease.write_coil(addr.start, bool(bit), self.timeout)
            return
        if addr.type == "bit" and addr.bit is not None:
            encode(raw_value, "bit", addr.order, bit=addr.bit)  # validate before touching the bus
            async with lease.exclusive() as link:  # read-modify-write, nobody in between
                (current,) = await link.read_locked(lease.unit, "holding", addr.start, 1, self.timeout)
                new = merge_bit(current, addr.bit, bool(raw_value), addr.order)
                if new != current:
                    await link.write_registers_locked(lease.unit, addr.start, [new], self.timeout)
            return
        words = encode(raw_value, addr.type, addr.order, length=addr.length)
        await lease.write_registers(addr.start, words, self.timeout)


class ModbusPlugin:
    """The `cellctl.driver.DriverPlugin` for Modbus TCP and RTU."""

    name = "modbus"
    connection_model: type[BaseModel] = ModbusConnection
    options_model: type[BaseModel] = ModbusOptions
    address_model: type[BaseModel] = ModbusAddress

    def check_point(self, point: PointSpec) -> str | None:
        """Value type against wire type, access against table."""
        addr: ModbusAddress = _model(point.address, ModbusAddress)
        allowed = _VALUE_TYPES[addr.type]
        if point.type not in allowed:
            want = " or ".join(allowed)
            article = "an" if want.startswith("int") else "a"
            return f"wire type {addr.type} carries {article} {want} value, but the point is type {point.type}"
        if point.access != "r" and addr.table in ("input", "discrete"):
            return f"access {point.access} on the {addr.table} table, which cannot be written"
        return None

    def plan_summary(self, ctx: DeviceContext) -> list[str]:
        """One line per read request of a poll; raises PlanError (ValueError) when a
        point cannot fit one request under the device's options."""
        return describe(build_plan(ctx))

    def open(self, ctx: DeviceContext) -> AbstractAsyncContextManager[ModbusDevice]:
        return _open(ctx)


@asynccontextmanager
async def _open(ctx: DeviceContext) -> AsyncIterator[ModbusDevice]:
    device = ModbusDevice(ctx)
    await device.start()
    try:
        yield device
    finally:
        device.close()


plugin: DriverPlugin = ModbusPlugin()  # annotated: mypy checks the protocol is met

__all__ = ["ModbusDevice", "ModbusPlugin", "build_plan", "plugin"]
