"""Physical connections, shared by every device on them.

A Modbus gateway (one TCP host:port) or an RS-485 bus (one serial port) carries several
units, and allows one transaction at a time. So every configured device on the same
physical connection holds a `Lease` on one shared `Link`: one client (ours for TCP,
`tcpmux`; pymodbus's for serial lines) and one asyncio.Lock, opened by the first user
and closed by the last (reference counted, one registry per event loop).

Failure policy:

* A Modbus exception response is about the request, not the link: `RequestError`
  naming the code; the link stays.
* A response that does not fit the request (wrong count, wrong function) is garbage
  for those points only: `RequestError`; the link stays.
* A timeout raises `DeviceUnavailable`. The link is closed only when every unit using it
  has timed out since the last answer: a direct connection closes at once (so the next
  `open` reconnects), while on a gateway or bus one silent unit leaves the others alone.
* A refused or lost connection raises `DeviceUnavailable` for every user and closes the
  link; the next `open` reconnects.

We apply the per-request timeout ourselves (`asyncio.timeout`), with pymodbus's retries
and auto-reconnect turned off, so there is exactly one policy and it is this one.
"""

from __future__ import annotations

import asyncio
import errno
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import structlog
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException

from cellctl.driver import DeviceUnavailable
from cellctl_modbus.config import ModbusConnection
from cellctl_modbus.tcpmux import PipelinedTcpClient

log = structlog.get_logger("cellctl.modbus")

# Circuit breaker: first probe of a tripped unit after this long, doubling up to the cap.
BREAKER_FIRST_PROBE: Final = 1.0
BREAKER_MAX_PROBE: Final = 30.0

EXCEPTION_NAMES: Final[dict[int, str]] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

# pymodbus's own response timeout, left far above ours so that ours always fires first
# (one policy); it also bounds pymodbus's connect if ours were ever bypassed.
_PYMODBUS_BACKSTOP: Final = 3600.0

_READ_METHOD: Final[dict[str, tuple[str, int]]] = {
    "holding": ("read_holding_registers", 3),
    "input": ("read_input_registers", 4),
    "coil": ("read_coils", 1),
    "discrete": ("read_discrete_inputs", 2),
}


def exception_text(code: int) -> str:
    """``modbus exception 2 (illegal data address)``."""
    return f"modbus exception {code} ({EXCEPTION_NAMES.get(code, 'non-standard code')})"


class RequestError(Exception):
    """The device answered, but not with the data asked for; the connection is fine."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ModbusExceptionResponse(RequestError):
    """The device answered with a Modbus exception response."""

    def __init__(self, code: int) -> None:
        super().__init__(exception_text(code))
        self.code = code


def check_read_response(resp: Any, table: str, count: int) -> Sequence[Any]:
    """The values of a decoded read response (a pymodbus PDU), or RequestError /
    ModbusExceptionResponse when it is not an answer to a read of `count` from `table`."""
    if resp.isError():
        raise ModbusExceptionResponse(int(resp.exception_code))
    fc = _READ_METHOD[table][1]
    if resp.function_code != fc:
        raise RequestError(f"bad response: function {resp.function_code} to a function {fc} request")
    if fc in (1, 2):
        bits: Sequence[bool] = resp.bits
        # Bits come padded to whole bytes.
        if not count <= len(bits) < count + 8:
            raise RequestError(f"bad response: {len(bits)} bits for a read of {count}")
        return bits[:count] if len(bits) != count else bits
    regs: Sequence[int] = resp.registers
    if len(regs) != count:
        raise RequestError(f"bad response: {len(regs)} registers for a read of {count}")
    return regs


def guard_receive(protocol: Any, on_garbage: Callable[[str], None]) -> None:
    """Make `protocol.data_received` (pymodbus's client protocol) never raise.

    pymodbus raises ModbusIOException out of `data_received` when a frame cannot be
    decoded; asyncio would log that as a fatal protocol error with a traceback and close
    the socket. Here the bytes received are dropped and `on_garbage` is told why, so the
    link reports a device fault (DeviceUnavailable, then reconnect) in our words.
    """
    received: Callable[[bytes], None] = protocol.data_received

    def data_received(data: bytes) -> None:
        try:
            received(data)
        except Exception as exc:  # garbage on the wire, whatever pymodbus makes of it
            protocol.recv_buffer = b""
            on_garbage(f"undecodable answer ({type(exc).__name__}: {exc})")

    protocol.data_received = data_received


def open_error(conn: ModbusConnection, where: str, exc: BaseException) -> str:
    """Why a connection could not be opened, in the user's terms. Linux pseudo-terminals
    (socat, simulators) reject any parity but N with EINVAL; say so rather than only
    ``(22, 'Invalid argument')``."""
    text = f"cannot open {where}: {exc}"
    code = getattr(exc, "errno", None)
    if code is None and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]  # termios.error carries (errno, text) without .errno
    einval = code == errno.EINVAL or "Invalid argument" in str(exc)
    if conn.transport == "rtu" and conn.parity != "N" and einval:
        return (
            f"{text}; the serial port refused parity {conn.parity}; "
            "pseudo-terminals accept only parity N (set 'parity: N' for a virtual serial port)"
        )
    return text


LinkKey = tuple[str, str, int]


def link_key(conn: ModbusConnection) -> LinkKey:
    """Devices with equal keys share one physical connection."""
    if conn.transport == "tcp":
        return ("tcp", str(conn.host), conn.port)
    return ("rtu", str(conn.serial_port), 0)


def _serial_settings(conn: ModbusConnection) -> tuple[int, str, int, int]:
    return (conn.baudrate, conn.parity, conn.stopbits, conn.bytesize)


@dataclass(eq=False)
class Lease:
    """One device's use of a link: its unit, and its pacing wish."""

    link: Link
    unit: int
    pause: float
    breaker_after: int = 0
    released: bool = field(default=False)

    async def read(self, table: str, start: int, count: int, timeout: float) -> Sequence[Any]:
        self.link.admit(self.unit)
        async with self.link.slot(self.unit):
            return await self.link.read_locked(self.unit, table, start, count, timeout)

    async def write_registers(self, start: int, values: Sequence[int], timeout: float) -> None:
        self.link.admit(self.unit)
        async with self.link.slot(self.unit):
            await self.link.write_registers_locked(self.unit, start, values, timeout)

    async def write_coil(self, start: int, value: bool, timeout: float) -> None:
        self.link.admit(self.unit)
        async with self.link.slot(self.unit):
            await self.link.write_coil_locked(self.unit, start, value, timeout)

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[Link]:
        """Hold this unit's turn on the link for several transactions (read-modify-write);
        use the ``*_locked`` methods of the yielded link, with this lease's unit."""
        self.link.admit(self.unit)
        async with self.link.slot(self.unit):
            yield self.link


class Link:
    """One physical connection: a pymodbus client, its lock and its users."""

    def __init__(self, key: LinkKey, conn: ModbusConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.conn = conn
        self.loop = loop
        self.lock = asyncio.Lock()
        self.leases: list[Lease] = []
        self.closed_reason: str | None = None
        self._client: Any = None
        self._lost: asyncio.Future[str] | None = None
        self._last_end = float("-inf")
        self._silent: set[int] = set()
        self.pipelining = conn.transport == "tcp" and conn.pipelining == "on"
        # TCP links use our lean client (tcpmux) with pipelining on or off: without it,
        # the link's lock keeps one request in flight, and each request skips pymodbus's
        # transaction manager (a wait_for, its lock and bookkeeping: about a third of the
        # daemon's Python time at `idle`, bench/README.md); serial links use pymodbus's
        self.own_client = conn.transport == "tcp"
        self._unit_locks: dict[int, asyncio.Lock] = {}
        self._streak: dict[int, int] = {}  # consecutive timeouts per unit
        self._probe_at: dict[int, float] = {}  # tripped units: when the next probe may go
        self._probe_gap: dict[int, float] = {}
        # Counters for diagnostics and tests.
        self.transactions = 0
        self.connects = 0

    def __repr__(self) -> str:
        return f"<Link {self.where} users={len(self.leases)} connected={self.connected}>"

    @property
    def where(self) -> str:
        kind, name, port = self.key
        return f"{name}:{port}" if kind == "tcp" else name

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected) and not self._lost_done()

    def _lost_done(self) -> bool:
        return self._lost is not None and self._lost.done()

    def slot(self, unit: int) -> asyncio.Lock:
        """What a request must hold: the whole link, or with pipelining only its unit
        (one request per unit at a time; different units overlap)."""
        if not self.pipelining:
            return self.lock
        lock = self._unit_locks.get(unit)
        if lock is None:
            lock = self._unit_locks[unit] = asyncio.Lock()
        return lock

    def admit(self, unit: int) -> None:
        """The circuit breaker: a unit that keeps timing out does not wait for (or hold)
        the link except for one probe now and then; meanwhile it is unavailable at once."""
        probe_at = self._probe_at.get(unit)
        if probe_at is None:
            return
        now = self.loop.time()
        if now < probe_at:
            raise DeviceUnavailable(
                f"unit {unit} at {self.where} is not answering ({self._streak.get(unit, 0)} timeouts "
                f"in a row); next probe in {probe_at - now:.1f} s"
            )
        gap = self._probe_gap.get(unit, BREAKER_FIRST_PROBE)
        self._probe_at[unit] = now + gap  # this request is the probe; others still fail fast
        self._probe_gap[unit] = min(gap * 2, BREAKER_MAX_PROBE)

    def _answered(self, unit: int) -> None:
        self._silent.clear()
        self._streak.pop(unit, None)
        if self._probe_at.pop(unit, None) is not None:
            self._probe_gap.pop(unit, None)
            log.info("modbus_unit_answering", link=self.where, unit=unit)

    def _breaker_after(self, unit: int) -> int:
        return max((lease.breaker_after for lease in self.leases if lease.unit == unit), default=0)

    def _make_client(self, on_connect: Callable[[bool], None], on_garbage: Callable[[str], None]) -> Any:
        c = self.conn
        if self.own_client:
            return PipelinedTcpClient(str(c.host), c.port, trace_connect=on_connect, on_garbage=on_garbage)
        common: dict[str, Any] = {
            "reconnect_delay": 0,  # 0 disables pymodbus's automatic reconnect
            "retries": 0,
            "timeout": _PYMODBUS_BACKSTOP,
            "trace_connect": on_connect,
        }
        return AsyncModbusSerialClient(
            str(c.serial_port),
            baudrate=c.baudrate,
            bytesize=c.bytesize,
            parity=c.parity,
            stopbits=c.stopbits,
            **common,
        )

    async def connect_locked(self, timeout: float) -> None:
        """(Re)connect if not connected; caller holds the lock."""
        if self.connected:
            return
        self._close_client()
        lost: asyncio.Future[str] = self.loop.create_future()

        def on_connect(up: bool) -> None:
            if not up and not lost.done():
                lost.set_result("connection closed by the other end")

        def on_garbage(reason: str) -> None:
            if not lost.done():
                lost.set_result(reason)
            if not self.own_client:  # ours closes itself
                transport = client.ctx.transport
                if transport is not None:
                    transport.close()  # the byte stream cannot be trusted any more

        client = self._make_client(on_connect, on_garbage)
        if not self.own_client:
            client.set_max_no_responses(1 << 30)  # never let pymodbus drop the link itself
            guard_receive(client.ctx, on_garbage)
        try:
            async with asyncio.timeout(timeout):
                ok = await client.connect()
        except TimeoutError:
            client.close()
            raise DeviceUnavailable(f"connect to {self.where} timed out after {timeout:g} s") from None
        except Exception as exc:  # pyserial/termios errors are not all OSErrors
            client.close()
            raise DeviceUnavailable(open_error(self.conn, self.where, exc)) from exc
        if not ok:
            client.close()
            raise DeviceUnavailable(f"cannot connect to {self.where}")
        self._client, self._lost = client, lost
        self.closed_reason = None
        self._silent.clear()
        self._streak.clear()
        self._probe_at.clear()
        self._probe_gap.clear()
        self._last_end = float("-inf")
        self.connects += 1

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None
        self._lost = None

    def drop(self, reason: str) -> None:
        """Close the physical connection for every user; the next `open` reconnects."""
        self._close_client()
        self.closed_reason = reason

    def _units(self) -> set[int]:
        return {lease.unit for lease in self.leases}

    def _pause(self) -> float:
        return max((lease.pause for lease in self.leases), default=0.0)

    async def _transact(self, unit: int, call: Callable[[Any], Awaitable[Any]], timeout: float) -> Any:
        """Run one request/response on the link; caller holds the lock."""
        if self._lost is not None and self._lost.done():
            self.drop(f"connection to {self.where} lost: {self._lost.result()}")
        client, lost = self._client, self._lost
        if client is None or lost is None or not client.connected:
            raise DeviceUnavailable(self.closed_reason or f"not connected to {self.where}")
        pause = 0.0 if self.pipelining else self._pause()
        if pause > 0:
            wait = self._last_end + pause - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # the configured inter-frame silence, not a sync hack
        self.transactions += 1
        # Await the request directly (no task per request: this is the hot path) under one
        # timeout; if the connection goes away meanwhile, the lost-callback cancels us.
        current = asyncio.current_task()
        assert current is not None
        cut: list[bool] = []
        active = [True]

        def on_lost(_: object) -> None:
            # done-callbacks run later via the loop: do nothing once this request is over
            if active[0]:
                cut.append(True)
                current.cancel()

        lost.add_done_callback(on_lost)
        try:
            async with asyncio.timeout(timeout):
                result = await call(client)
        except TimeoutError:
            self._on_timeout(unit, timeout)
        except asyncio.CancelledError:
            if not cut or current.uncancel() > 0:
                raise  # a real cancellation from outside
            reason = f"connection to {self.where} lost: {lost.result() if lost.done() else 'closed'}"
            self.drop(reason)
            raise DeviceUnavailable(reason) from None
        except (ConnectionException, OSError) as exc:
            if lost.done():  # our TCP client fails the request when the connection goes
                reason = f"connection to {self.where} lost: {lost.result()}"
            else:
                reason = f"connection to {self.where} failed: {exc}"
            self.drop(reason)
            raise DeviceUnavailable(reason) from exc
        except ModbusException as exc:  # e.g. a response that does not match the request
            self._answered(unit)
            raise RequestError(f"bad response: {exc}") from exc
        finally:
            active[0] = False
            lost.remove_done_callback(on_lost)
            self._last_end = self.loop.time()
        self._answered(unit)
        return result

    def _on_timeout(self, unit: int, timeout: float) -> NoReturn:
        self._silent.add(unit)
        streak = self._streak[unit] = self._streak.get(unit, 0) + 1
        after = self._breaker_after(unit)
        if after and streak >= after and unit not in self._probe_at and len(self._units()) > 1:
            self._probe_at[unit] = self.loop.time() + BREAKER_FIRST_PROBE
            self._probe_gap[unit] = 2 * BREAKER_FIRST_PROBE
            log.warning("modbus_unit_not_answering", link=self.where, unit=unit, timeouts=streak,
                        probe_in=BREAKER_FIRST_PROBE)
        reason = f"no response from unit {unit} at {self.where} within {timeout:g} s"
        if self._silent >= self._units():
            # Nobody on this link answers any more: the link itself is suspect.
            self.drop(reason)
        raise DeviceUnavailable(reason)

    async def read_locked(
        self, unit: int, table: str, start: int, count: int, timeout: float
    ) -> Sequence[Any]:
        """Read `count` registers/bits; raise RequestError for an unusable answer."""
        method, _ = _READ_METHOD[table]

        def call(client: Any) -> Awaitable[Any]:
            fn: Callable[..., Awaitable[Any]] = getattr(client, method)
            return fn(start, count=count, device_id=unit)

        return check_read_response(await self._transact(unit, call, timeout), table, count)

    async def write_registers_locked(
        self, unit: int, start: int, values: Sequence[int], timeout: float
    ) -> None:
        """FC6 for one register, FC16 for several."""
        values = list(values)

        def call(client: Any) -> Awaitable[Any]:
            if len(values) == 1:
                one: Awaitable[Any] = client.write_register(start, values[0], device_id=unit)
                return one
            many: Awaitable[Any] = client.write_registers(start, values, device_id=unit)
            return many

        resp = await self._transact(unit, call, timeout)
        if resp.isError():
            raise ModbusExceptionResponse(int(resp.exception_code))

    async def write_coil_locked(self, unit: int, start: int, value: bool, timeout: float) -> None:
        """FC5."""

        def call(client: Any) -> Awaitable[Any]:
            r: Awaitable[Any] = client.write_coil(start, value, device_id=unit)
            return r

        resp = await self._transact(unit, call, timeout)
        if resp.isError():
            raise ModbusExceptionResponse(int(resp.exception_code))


_registry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[LinkKey, Link]] = (
    weakref.WeakKeyDictionary()
)


def links() -> dict[LinkKey, Link]:
    """The links of the running event loop (diagnostics and tests)."""
    return _registry.setdefault(asyncio.get_running_loop(), {})


async def acquire(
    conn: ModbusConnection, *, timeout: float, pause: float = 0.0, breaker_after: int = 0
) -> Lease:
    """Join (or open) the physical connection for `conn`; raise DeviceUnavailable if it
    cannot be opened or is already open with different serial settings."""
    loop = asyncio.get_running_loop()
    table = links()
    key = link_key(conn)
    link = table.get(key)
    if link is None:
        link = table[key] = Link(key, conn, loop)
    elif conn.transport == "rtu" and _serial_settings(conn) != _serial_settings(link.conn):
        have, want = link.conn, conn
        raise DeviceUnavailable(
            f"{link.where} is already open at {have.baudrate} {have.bytesize}{have.parity}{have.stopbits}; "
            f"this device wants {want.baudrate} {want.bytesize}{want.parity}{want.stopbits}"
        )
    elif conn.transport == "tcp" and conn.pipelining != link.conn.pipelining:
        raise DeviceUnavailable(
            f"{link.where} is already open with pipelining {link.conn.pipelining}; "
            f"this device wants pipelining {conn.pipelining}"
        )
    lease = Lease(link, conn.unit, pause, breaker_after)
    link.leases.append(lease)
    try:
        async with link.lock:
            await link.connect_locked(timeout)
    except BaseException:
        release(lease)
        raise
    return lease


def release(lease: Lease) -> None:
    """Leave the link; the last user closes it."""
    if lease.released:
        return
    lease.released = True
    link = lease.link
    link.leases.remove(lease)
    if link.leases:
        return
    link.drop("closed")
    table = _registry.get(link.loop)
    if table is not None and table.get(link.key) is link:
        del table[link.key]
