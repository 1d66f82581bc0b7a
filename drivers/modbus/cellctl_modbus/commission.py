"""Commissioning without a config: read a block of registers once, decode it every way
a device might mean it, and find which units answer and what they can read.

Everything goes through the driver's own transport (`transport.acquire`, the same
timeouts, exception texts and reconnects as the daemon) and codec (`codec.decode`);
there is no second Modbus implementation here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cellctl.driver import DeviceUnavailable, implausible
from cellctl_modbus import transport
from cellctl_modbus.codec import ORDERS, decode, register_count
from cellctl_modbus.config import ModbusConnection
from cellctl_modbus.planner import BIT_TABLES, MAX_BITS, MAX_REGISTERS, TABLES

DECODE_TYPES: Final = ("int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64")
STRING_ORDERS: Final = ("ABCD", "BADC")  # strings have a byte order only (see codec)
# Exception codes that mean "no such unit behind this gateway", not "the unit refused".
GATEWAY_CODES: Final = frozenset({10, 11})
UNREADABLE: Final = frozenset({2, 3})


# -- read ---------------------------------------------------------------------------------


async def read_block(conn: ModbusConnection, table: str, start: int, count: int, timeout: float) -> list[Any]:
    """`count` registers (or bits) from `table` at `start`, once. DeviceUnavailable when
    the device cannot be reached or does not answer, transport.RequestError (with the
    device's exception) when it refuses."""
    lease = await transport.acquire(conn, timeout=timeout)
    try:
        return list(await lease.read(table, start, count, timeout))
    finally:
        transport.release(lease)


@dataclass(frozen=True, slots=True)
class Decoded:
    """One type in one order at one offset: the value, or why it cannot be one."""

    value: Any
    error: str | None = None

    @property
    def suspect(self) -> str | None:
        return self.error or implausible(self.value)


def decode_table(registers: Sequence[int], offset: int = 0) -> dict[str, dict[str, Decoded]]:
    """Every numeric type in the four orders, and the string in its two byte orders, of
    the registers from `offset`: `{type: {order: Decoded}}`; types that do not fit in
    what is left are left out."""
    left = len(registers) - offset
    out: dict[str, dict[str, Decoded]] = {}
    for wire_type in DECODE_TYPES:
        if register_count(wire_type) > left:
            continue
        out[wire_type] = {
            order: Decoded(decode(registers, wire_type, order, offset=offset)) for order in ORDERS
        }
    if left > 0:
        strings: dict[str, Decoded] = {}
        for order in STRING_ORDERS:
            try:
                strings[order] = Decoded(decode(registers, "string", order, length=left, offset=offset))
            except UnicodeDecodeError as exc:
                strings[order] = Decoded(None, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
        out["string"] = strings
    return out


# -- scan ---------------------------------------------------------------------------------


@dataclass(slots=True)
class TableRanges:
    """What one table of one unit lets us read."""

    table: str
    supported: bool = True
    ranges: list[tuple[int, int]] = field(default_factory=list)  # inclusive first..last
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "supported": self.supported,
            "ranges": [{"first": a, "last": b, "count": b - a + 1} for a, b in self.ranges],
            "note": self.note,
        }


@dataclass(slots=True)
class UnitFound:
    unit: int
    answer: str  # what the first probe got back ("data", or the device's exception)
    tables: list[TableRanges] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "answer": self.answer, "tables": [t.as_dict() for t in self.tables]}


class Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Scanner:
    """Probes on one connection, one request at a time, within an overall deadline.

    A timeout on one unit closes the link only when the transport decides so; the next
    probe reconnects, so a silent unit on an RTU line costs one timeout, no more."""

    def __init__(
        self,
        conn: ModbusConnection,
        *,
        timeout: float,
        deadline: float,
        max_requests_per_table: int = 200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conn = conn
        self.timeout = timeout
        self.deadline = deadline
        self.max_requests = max_requests_per_table
        self.clock = clock
        self.requests = 0
        self.out_of_time = False
        self._lease: transport.Lease | None = None

    async def __aenter__(self) -> Scanner:
        self._lease = await transport.acquire(self.conn, timeout=self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._lease is not None:
            transport.release(self._lease)
            self._lease = None

    def time_left(self) -> bool:
        if self.clock() >= self.deadline:
            self.out_of_time = True
        return not self.out_of_time

    async def read(self, unit: int, table: str, start: int, count: int) -> Sequence[Any]:
        """One read for `unit`. Refused for an exception response, DeviceUnavailable for
        silence or a lost link (the next call reconnects)."""
        assert self._lease is not None
        link = self._lease.link
        self.requests += 1
        async with link.lock:
            await link.connect_locked(self.timeout)
            try:
                return await link.read_locked(unit, table, start, count, self.timeout)
            except transport.ModbusExceptionResponse as exc:
                raise Refused(exc.code, exc.reason) from None
            except transport.RequestError as exc:
                raise Refused(-1, exc.reason) from None

    async def probe_unit(self, unit: int) -> UnitFound | None:
        """Does `unit` answer? Any answer but a gateway's "no such unit" counts."""
        try:
            await self.read(unit, "holding", 0, 1)
        except DeviceUnavailable:
            return None
        except Refused as exc:
            if exc.code in GATEWAY_CODES:
                return None
            return UnitFound(unit, exc.reason)
        return UnitFound(unit, "data")

    async def ok(self, unit: int, table: str, start: int, count: int = 1) -> bool:
        """Readable? False on illegal address/value; Refused for any other refusal."""
        try:
            await self.read(unit, table, start, count)
        except Refused as exc:
            if exc.code in UNREADABLE:
                return False
            raise
        return True

    async def table_ranges(self, unit: int, table: str, starts: Iterable[int] = (0, 1)) -> TableRanges:
        """The readable ranges of `table`: from each candidate start, the end of the
        readable block by exponential then binary search on illegal-address answers, then
        the block read in the largest requests, bisecting any refused one to find holes."""
        result = TableRanges(table)
        budget_at = self.requests + self.max_requests
        try:
            for start in sorted(set(starts)):
                if any(a <= start <= b for a, b in result.ranges) or not self.time_left():
                    continue
                if not await self.ok(unit, table, start):
                    continue
                end = await self._block_end(unit, table, start, budget_at)
                result.ranges.extend(await self._holes(unit, table, start, end, budget_at))
        except Refused as exc:
            if exc.code == 1:  # illegal function: the device has no such table
                result.supported = False
            result.note = exc.reason
        except DeviceUnavailable as exc:
            result.note = f"stopped: {exc.reason}"
        except _OutOfBudget as exc:
            result.note = str(exc)
        result.ranges.sort()
        return result

    def _spend(self, budget_at: int) -> None:
        if self.requests >= budget_at:
            raise _OutOfBudget(f"stopped after {self.max_requests} requests; ranges may be incomplete")
        if not self.time_left():
            raise _OutOfBudget("stopped at the scan's time limit; ranges may be incomplete")

    async def _block_end(self, unit: int, table: str, start: int, budget_at: int) -> int:
        """The first address after `start` that is not readable (one past the block)."""
        good, step = start, 1
        bad = 65536
        while good + step < 65536:  # exponential: find an unreadable address above
            self._spend(budget_at)
            if await self.ok(unit, table, good + step):
                good += step
                step *= 2
            else:
                bad = good + step
                break
        while bad - good > 1:  # binary: the edge between them
            self._spend(budget_at)
            mid = (good + bad) // 2
            if await self.ok(unit, table, mid):
                good = mid
            else:
                bad = mid
        return good + 1

    async def _holes(
        self, unit: int, table: str, start: int, end: int, budget_at: int
    ) -> list[tuple[int, int]]:
        """Readable runs of [start, end): read in the largest requests the table allows;
        a refused request is split in halves until its unreadable addresses are found."""
        size = MAX_BITS if table in BIT_TABLES else MAX_REGISTERS
        readable: list[int] = []

        async def walk(a: int, b: int) -> None:
            self._spend(budget_at)
            if await self.ok(unit, table, a, b - a):
                readable.extend(range(a, b))
            elif b - a > 1:
                mid = (a + b) // 2
                await walk(a, mid)
                await walk(mid, b)

        for a in range(start, end, size):
            await walk(a, min(a + size, end))
        return _runs(readable)


class _OutOfBudget(Exception):
    pass


def _runs(addresses: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a in sorted(addresses):
        if out and a == out[-1][1] + 1:
            out[-1] = (out[-1][0], a)
        else:
            out.append((a, a))
    return out


__all__ = [
    "DECODE_TYPES",
    "TABLES",
    "Decoded",
    "Scanner",
    "TableRanges",
    "UnitFound",
    "decode_table",
    "read_block",
]
