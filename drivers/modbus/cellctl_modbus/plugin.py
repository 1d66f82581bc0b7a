"""The ``modbus`` driver plugin: what cellctl loads from the ``cellctl.drivers`` entry point."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import structlog
from pydantic import BaseModel

from cellctl.driver import DeviceContext, DriverPlugin, PointSpec, Reading, WriteRejected
from cellctl_modbus import transport
from cellctl_modbus.codec import Decoder, encode, make_decoder, merge_bit
from cellctl_modbus.config import ModbusAddress, ModbusConnection, ModbusOptions
from cellctl_modbus.holes import UNREADABLE_CODES, Learned, ranges
from cellctl_modbus.planner import TABLES, PlanPoint, ReadRequest, describe, plan

log = structlog.get_logger("cellctl.modbus")

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


def build_plan(
    ctx: DeviceContext,
    *,
    skip: Collection[int] = (),
    barriers: Mapping[str, Collection[int]] | None = None,
) -> list[ReadRequest]:
    """The device's read requests; PlanError (a ValueError) if a point cannot fit.
    `skip` (point positions) and `barriers` come from what a device refused."""
    options: ModbusOptions = _model(ctx.options, ModbusOptions)
    addrs = _addresses(ctx.points)
    return plan(
        (PlanPoint(k, a.table, a.start, a.count) for k, a in enumerate(addrs) if k not in skip),
        max_registers=options.max_registers,
        max_bits=options.max_bits,
        max_gap=options.max_gap,
        mode=options.request_mode,
        barriers=barriers,
    )


@dataclass(frozen=True, slots=True)
class _Item:
    """One point of a read: its position, absolute first address, width and decoder."""

    k: int
    start: int
    count: int
    decode: Decoder

    @property
    def end(self) -> int:
        return self.start + self.count


@dataclass(frozen=True, slots=True)
class _Step:
    """A planned read with each point's decoder bound."""

    table: str
    start: int
    count: int
    items: tuple[_Item, ...]


def _runs(items: Sequence[_Item]) -> list[list[_Item]]:
    """Items grouped into runs of overlapping points (a split never cuts a run)."""
    runs: list[list[_Item]] = []
    run_end = -1
    for it in sorted(items, key=lambda i: (i.start, i.end)):
        if runs and it.start < run_end:
            runs[-1].append(it)
            run_end = max(run_end, it.end)
        else:
            runs.append([it])
            run_end = it.end
    return runs


class ModbusDevice:
    """An open device: a Poller and a Writer over a lease on a shared link."""

    def __init__(self, ctx: DeviceContext) -> None:
        self.ctx = ctx
        self.connection: ModbusConnection = _model(ctx.connection, ModbusConnection)
        self.options: ModbusOptions = _model(ctx.options, ModbusOptions)
        self.addresses = _addresses(ctx.points)
        self.timeout = ctx.timeout
        self._decoders = [make_decoder(a.type, a.order, bit=a.bit, length=a.length) for a in self.addresses]
        self.requests = build_plan(ctx)
        self._base_steps = self._steps = self._make_steps(self.requests)
        self._n = len(ctx.points)
        self._by_index = {p.index: k for k, p in enumerate(ctx.points)}
        self._indexes = (
            None if all(p.index == k for k, p in enumerate(ctx.points)) else [p.index for p in ctx.points]
        )
        self._error_keys = [p.index for p in ctx.points]
        self._lease: transport.Lease | None = None
        self.learned = Learned()
        self._logged: dict[str, tuple[str, str]] = {}  # table -> what was last logged

    def _make_steps(self, requests: Sequence[ReadRequest]) -> tuple[_Step, ...]:
        addrs, decs = self.addresses, self._decoders
        return tuple(
            _Step(
                r.table,
                r.start,
                r.count,
                tuple(_Item(k, r.start + off, addrs[k].count, decs[k]) for k, off in r.points),
            )
            for r in requests
        )

    async def start(self) -> None:
        self._lease = await transport.acquire(
            self.connection,
            timeout=self.timeout,
            pause=self.options.pause_between_requests,
            breaker_after=self.options.breaker_after,
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
        if self.learned.session != lease.link.connects:  # a new connection: probe afresh
            self.learned.clear(lease.link.connects)
            self._steps = self._base_steps
        values: list[Any] = [None] * self._n
        errors: dict[int, str] = {}
        keys = self._error_keys
        learned_before = (len(self.learned.unreadable), sum(map(len, self.learned.barriers.values())))
        for step in self._steps:
            try:
                block = await lease.read(step.table, step.start, step.count, self.timeout)
            except transport.ModbusExceptionResponse as exc:
                if exc.code not in UNREADABLE_CODES:
                    for it in step.items:
                        errors[keys[it.k]] = exc.reason
                    continue
                await self._isolate(lease, step.table, _runs(step.items), exc, values=values, errors=errors)
                continue
            except transport.RequestError as exc:
                for it in step.items:
                    errors[keys[it.k]] = exc.reason
                continue
            self._decode(step.items, block, step.start, values, errors)
        for k, reason in self.learned.unreadable.items():
            errors[keys[k]] = reason
        learned_now = (len(self.learned.unreadable), sum(map(len, self.learned.barriers.values())))
        if learned_now != learned_before:
            self._replan()
        return Reading(values=values, indexes=self._indexes, errors=errors or None)

    def _decode(
        self, items: Sequence[_Item], block: Sequence[Any], base: int, values: list[Any], errors: dict[int, str]
    ) -> None:
        keys = self._error_keys
        for it in items:
            try:
                values[it.k] = it.decode(block, it.start - base)
            except Exception as exc:  # garbage from the device: this point only
                errors[keys[it.k]] = f"undecodable value: {exc}"

    async def _isolate(
        self,
        lease: transport.Lease,
        table: str,
        runs: list[list[_Item]],
        refused: transport.ModbusExceptionResponse,
        *,
        values: list[Any],
        errors: dict[int, str],
    ) -> None:
        """`runs` were refused together: read the halves separately (recursively, so at
        most about twice as many reads as runs), learning unreadable points and barriers."""
        if len(runs) == 1:
            for it in runs[0]:
                self.learned.unreadable[it.k] = refused.reason
            return
        mid = len(runs) // 2
        whole = [
            await self._read_runs(lease, table, half, values=values, errors=errors)
            for half in (runs[:mid], runs[mid:])
        ]
        if all(whole):  # each half reads fine on its own: a hole (or a size limit) between them
            self.learned.add_barrier(table, runs[mid][0].start)

    async def _read_runs(
        self,
        lease: transport.Lease,
        table: str,
        runs: list[list[_Item]],
        *,
        values: list[Any],
        errors: dict[int, str],
    ) -> bool:
        """Read `runs` in one request; True if that worked without splitting."""
        items = [it for run in runs for it in run]
        start, end = items[0].start, max(it.end for it in items)
        try:
            block = await lease.read(table, start, end - start, self.timeout)
        except transport.ModbusExceptionResponse as exc:
            if exc.code in UNREADABLE_CODES:
                await self._isolate(lease, table, runs, exc, values=values, errors=errors)
            else:
                for it in items:
                    errors[self._error_keys[it.k]] = exc.reason
            return False
        except transport.RequestError as exc:
            for it in items:
                errors[self._error_keys[it.k]] = exc.reason
            return False
        self._decode(items, block, start, values, errors)
        return True

    def _replan(self) -> None:
        """Plan around what was learned, and say once what it was."""
        learned = self.learned
        barriers = {t: set(b) for t, b in learned.barriers.items()}
        for k in learned.unreadable:  # never read across an unreadable point either
            a = self.addresses[k]
            barriers.setdefault(a.table, set()).update((a.start, a.end))
        requests = build_plan(self.ctx, skip=learned.unreadable, barriers=barriers)
        self._steps = self._make_steps(requests)
        for table in TABLES:
            bad = [k for k in learned.unreadable if self.addresses[k].table == table]
            bars = learned.barriers.get(table, set())
            if not bad and not bars:
                continue
            unreadable = ranges(a for k in bad for a in range(self.addresses[k].start, self.addresses[k].end))
            split_at = ranges(bars)
            if self._logged.get(table) == (unreadable, split_at):
                continue
            self._logged[table] = (unreadable, split_at)
            log.warning(
                "modbus_unreadable_addresses",
                device=self.ctx.device_id,
                table=table,
                unreadable=unreadable,
                points=sorted(self.ctx.points[k].id for k in bad),
                reason=sorted({learned.unreadable[k] for k in bad}),
                split_before=split_at,
                reads=describe(r for r in requests if r.table == table),
            )

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
