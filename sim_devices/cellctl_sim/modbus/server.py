"""The simulator as an asyncio Modbus server (TCP and RTU over a pty) with faults.

pymodbus does the framing and PDU decoding; the simulator answers requests itself.
Its per-connection request handler is replaced by a small subclass so that

* faults (latency, exceptions, silence) are applied in one place, per unit and
  server-wide, before the datastore is touched;
* the request is captured before any await: pymodbus's own handler reads its
  `last_pdu` again after awaiting the datastore, so with injected latency a request
  arriving meanwhile would lend its transaction id to the older answer;
* the datastore is the simulator's own register images (`SimUnit.read/write`),
  independent of pymodbus's datastore classes, which changed in every 3.x release.

The pymodbus internals relied on (tested with 3.12.1 to 3.16.1; 3.11 and older
pass the PDU a per-unit context instead): `ModbusBaseServer.
callback_new_connection`, `ServerRequestHandler(owner, trace_packet, trace_pdu,
trace_connect)` with `last_pdu`/`last_addr`/`handle_request`/`server_send`, the
`active_connections` of a listener, and `PDU.datastore_update(context, dev_id)`
calling `context.async_getValues/async_setValues`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException, NotImplementedException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import SimData, SimDevice

from cellctl_sim.modbus.devices import DEVICE_TYPES, DeviceModel
from cellctl_sim.modbus.faults import (
    DEVICE_FAILURE,
    GATEWAY_NO_RESPONSE,
    ILLEGAL_ADDRESS,
    ILLEGAL_FUNCTION,
    Access,
    ExceptionRule,
    Faults,
)
from cellctl_sim.modbus.pty import PtyBridge
from cellctl_sim.modbus.registers import RegisterImage, Table, Value
from cellctl_sim.modbus.traffic import Traffic
from cellctl_sim.modbus.unit import SimUnit

log = logging.getLogger("cellctl_sim.modbus")

DEFAULT_UNITS: dict[int, str] = {1: "energy-meter", 2: "machine-plc"}
MIN_TICK = 0.001

# function code -> the table it reads or writes
_FC_TABLE: dict[int, Table] = {
    1: Table.COIL, 5: Table.COIL, 15: Table.COIL,
    2: Table.DISCRETE,
    4: Table.INPUT,
    3: Table.HOLDING, 6: Table.HOLDING, 16: Table.HOLDING, 22: Table.HOLDING, 23: Table.HOLDING,
}


def _accesses(pdu: ModbusPDU) -> list[Access]:
    """The (table, address, count) ranges a request touches, for address-range faults."""
    fc = pdu.function_code
    if fc == 23:
        p: Any = pdu
        return [(Table.HOLDING, p.read_address, p.read_count), (Table.HOLDING, p.write_address, p.write_count)]
    table = _FC_TABLE.get(fc)
    if table is None:
        return []
    return [(table, pdu.address, max(pdu.count, len(pdu.bits), len(pdu.registers), 1))]


class _Datastore:
    """The interface pymodbus PDUs update (`datastore_update(context, dev_id)`), backed
    by the simulator's units. Unknown units never get here (the handler answers them)."""

    def __init__(self, units: Mapping[int, SimUnit]) -> None:
        self._units = units

    async def async_getValues(  # pymodbus's name
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        result = self._units[device_id].read(_FC_TABLE[func_code], address, count)
        return ExcCodes(result) if isinstance(result, int) else result

    async def async_setValues(  # pymodbus's name
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        rc = self._units[device_id].write(_FC_TABLE[func_code], address, values)
        return None if rc is None else ExcCodes(rc)

    def device_ids(self) -> list[int]:
        return list(self._units)


class _SimRequestHandler(ServerRequestHandler):
    """Per-connection handler: hands each request to the simulator, answers or not.

    Requests are taken from the byte stream as soon as they are complete, several per
    read if a client pipelines them (Modbus TCP transaction ids allow that), and each
    is answered by its own task, so a slow unit does not hold up the others' answers,
    as on a real multi-port gateway.
    """

    _tasks: set[asyncio.Task[None]]

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        used = 0
        while used < len(data):
            try:
                n, pdu = self.framer.handleFrame(self.trace_packet(False, data[used:]), 0, 0)
            except ModbusIOException:
                return len(data)  # undecodable request: drop what we have, as pymodbus would
            if not n:
                break
            used += n
            if pdu is None:
                continue
            pdu = self.trace_pdu(False, pdu)
            owner: _SimListener = self.server
            owner.sim.traffic.arrived(pdu.dev_id, pdu.function_code)
            if not hasattr(self, "_tasks"):
                self._tasks = set()
            task = asyncio.get_running_loop().create_task(self._handle(pdu, addr), name="cellctl-sim request")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return used

    def send(self, data: bytes, addr: tuple[Any, ...] | None = None) -> None:
        keep = self.recv_buffer  # pymodbus clears it on send; pipelined requests may wait there
        super().send(data, addr)
        self.recv_buffer = keep

    async def _handle(self, pdu: ModbusPDU, addr: tuple[Any, ...] | None) -> None:
        owner: _SimListener = self.server
        sim = owner.sim
        try:
            try:
                response = await sim._respond(pdu, gateway=owner.gateway)
                if response is not None and sim.mangle is not None:
                    response = sim.mangle(response)
            except Exception:
                log.exception("simulator failed on %s", pdu)
                response = ExceptionResponse(pdu.function_code, DEVICE_FAILURE)
            if response is None or not self.transport:  # silenced, or the connection was dropped meanwhile
                return
            response.transaction_id = pdu.transaction_id
            response.dev_id = pdu.dev_id
            self.server_send(response, addr)  # type: ignore[no-untyped-call]
        finally:
            sim.traffic.finished()


class _SimListener:
    """Mixed into pymodbus's servers: our handler, and a back reference to the sim."""

    sim: SimModbusServer
    gateway: bool

    def callback_new_connection(self) -> _SimRequestHandler:
        s: Any = self
        return _SimRequestHandler(s, s.trace_packet, s.trace_pdu, s.trace_connect)  # type: ignore[no-untyped-call]


def _placeholder_context() -> SimDevice:
    """pymodbus insists on a datastore of its own; requests never reach this one."""
    return SimDevice(0, simdata=[SimData(0)])


class _SimTcpServer(_SimListener, ModbusTcpServer):
    def __init__(self, sim: SimModbusServer, host: str, port: int) -> None:
        super().__init__(_placeholder_context(), address=(host, port))
        self.sim = sim
        self.gateway = True  # a TCP gateway answers 0x0B for units it cannot reach

    def callback_new_connection(self) -> _SimRequestHandler:
        self.sim.traffic.connects += 1
        return super().callback_new_connection()


class _SimSerialServer(_SimListener, ModbusSerialServer):
    def __init__(self, sim: SimModbusServer, port: str, baudrate: int) -> None:
        super().__init__(_placeholder_context(), port=port, baudrate=baudrate)
        self.sim = sim
        self.gateway = False  # on an RTU bus nobody answers for an absent unit


@dataclass(frozen=True)
class Listener:
    """One place clients reach the simulator: `kind` is "tcp" or "rtu"; `address` is
    "host:port" or the pty path clients open."""

    kind: str
    address: str
    server: Any
    bridge: PtyBridge | None = None


class SimModbusServer:
    """Simulated Modbus devices behind one server (a TCP gateway and/or an RTU bus).

    `units` maps unit id -> device type (see `DEVICE_TYPES`). Values advance one tick
    every `tick` seconds from an asyncio task on monotonic deadlines (`auto_tick`), or
    only when `step()` is called. `seed` makes every unit's noise reproducible.

    Use as `async with SimModbusServer({1: "energy-meter"}, tick=0.1, seed=1) as sim:`
    then `port = await sim.serve_tcp()` and/or `path = await sim.serve_rtu_pty()`.
    """

    def __init__(
        self,
        units: Mapping[int, str] | None = None,
        *,
        tick: float = 1.0,
        seed: int | None = None,
        auto_tick: bool = True,
    ) -> None:
        if tick < MIN_TICK:
            raise ValueError(f"tick must be at least {MIN_TICK} s, got {tick}")
        self.tick = tick
        self.seed = seed
        self.auto_tick = auto_tick
        self.ticks = 0
        self.missed_ticks = 0
        self.faults = Faults()  # server-wide
        self.traffic = Traffic()
        # test hook: rewrites each answer before it is sent (a truncated or wrong response)
        self.mangle: Callable[[ModbusPDU], ModbusPDU] | None = None
        self._unstalled = asyncio.Event()  # set (then replaced) whenever stalls are lifted
        self._units: dict[int, SimUnit] = {}
        self._groups: list[tuple[DeviceModel, RegisterImage]] = []
        shared: dict[str, tuple[DeviceModel, RegisterImage]] = {}
        for uid, type_name in sorted((units if units is not None else DEFAULT_UNITS).items()):
            cls = DEVICE_TYPES.get(type_name)
            if cls is None:
                raise ValueError(f"unit {uid}: unknown device type {type_name!r}; one of {sorted(DEVICE_TYPES)}")
            if cls.SHARED and type_name in shared:
                model, image = shared[type_name]
            else:
                rng = random.Random(f"{seed}:{uid}") if seed is not None else random.Random()
                model = cls(rng, tick)
                image = RegisterImage(cls.MAP)
                model.render(image)
                self._groups.append((model, image))
                if cls.SHARED:
                    shared[type_name] = (model, image)
            self._units[uid] = SimUnit(uid, model, image)
        if not self._units:
            raise ValueError("a simulator needs at least one unit")
        self._datastore = _Datastore(self._units)
        self._listeners: list[Listener] = []
        self._tick_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> SimModbusServer:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Start ticking (when `auto_tick`); needs a running loop."""
        if self.auto_tick and self._tick_task is None:
            self._tick_task = asyncio.get_running_loop().create_task(self._run_ticks(), name="cellctl-sim ticks")

    async def close(self) -> None:
        """Stop ticking and every listener; closes client connections and ptys."""
        self.release()  # held requests end (their connections are going away)
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
            self._tick_task = None
        for lst in self._listeners:
            await lst.server.shutdown()
            if lst.bridge is not None:
                lst.bridge.close()
        self._listeners.clear()

    async def _run_ticks(self) -> None:
        """Tick on monotonic deadlines; when more than a tick late, skip rather than burst."""
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline += self.tick
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                if -delay >= self.tick:
                    missed = int(-delay // self.tick)
                    self.missed_ticks += missed
                    deadline += missed * self.tick
                await asyncio.sleep(0)  # let requests in even when behind
            try:
                self.step()
            except Exception:  # a model bug must not freeze every unit silently
                log.exception("simulator tick %d failed", self.ticks)

    def step(self, n: int = 1) -> None:
        """Advance every unit by `n` ticks now (deterministic with a seed)."""
        for _ in range(n):
            for model, image in self._groups:
                model.advance()
                model.render(image)
            self.ticks += 1

    # -- listeners ---------------------------------------------------------------------
    async def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen for Modbus TCP; returns the port actually bound (port 0 = any free one)."""
        server = _SimTcpServer(self, host, port)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus logs the OSError and raises this
            raise OSError(f"cannot listen on {host}:{port} (address in use or not local?)") from exc
        listening: Any = server.transport  # an asyncio.Server once listening
        bound = int(listening.sockets[0].getsockname()[1])
        self._listeners.append(Listener("tcp", f"{host}:{bound}", server))
        return bound

    async def serve_rtu_pty(self, *, link: str | None = None, baudrate: int = 19200) -> str:
        """Serve Modbus RTU on a new virtual serial line; returns the path clients open.

        `link`, if given, is made a symlink to that path. The baud rate is only what
        the ports are configured with: a pty moves bytes as fast as they come.
        """
        bridge = PtyBridge(link)
        try:
            bridge.start()
            server = _SimSerialServer(self, bridge.server_path, baudrate)
            await server.serve_forever(background=True)
        except BaseException:
            bridge.close()
            raise
        self._listeners.append(Listener("rtu", bridge.client_path, server, bridge))
        return bridge.client_path

    @property
    def listeners(self) -> list[Listener]:
        return list(self._listeners)

    # -- units and values --------------------------------------------------------------
    @property
    def units(self) -> Mapping[int, SimUnit]:
        return dict(self._units)

    def unit(self, unit_id: int) -> SimUnit:
        try:
            return self._units[unit_id]
        except KeyError:
            raise KeyError(f"no unit {unit_id}; units are {sorted(self._units)}") from None

    def snapshot(self) -> dict[int, dict[str, Value]]:
        """Every unit's engineering values now: {unit id: {point: value}}."""
        return {uid: u.snapshot() for uid, u in self._units.items()}

    def describe_units(self) -> str:
        """"1=energy-meter,2=machine-plc": the unit list as the CLI prints it."""
        return ",".join(f"{uid}={u.device_type}" for uid, u in self._units.items())

    # -- faults ------------------------------------------------------------------------
    def fault_target(self, unit: int | None = None) -> Faults:
        """The fault switches of one unit, or server-wide for None."""
        return self.faults if unit is None else self.unit(unit).faults

    def set_latency(self, seconds: float, *, unit: int | None = None) -> None:
        """Delay every answer (of one unit, or all) by `seconds`; 0 removes it."""
        if seconds < 0:
            raise ValueError("latency cannot be negative")
        self.fault_target(unit).latency = seconds

    def set_exception(
        self,
        code: int,
        *,
        unit: int | None = None,
        table: Table | str | None = None,
        start: int | None = None,
        end: int | None = None,
        once: bool = False,
    ) -> ExceptionRule:
        """Answer requests with exception `code`: all of them, or those touching
        `table` (holding|input|coil|discrete) and/or addresses `start`..`end` inclusive;
        with `once`, only the first such request (a transient error)."""
        rule = ExceptionRule(code, Table(table) if table is not None else None, start, end, once)
        self.fault_target(unit).exceptions.append(rule)
        return rule

    def add_hole(
        self, table: Table | str, start: int, end: int | None = None, *, unit: int | None = None
    ) -> ExceptionRule:
        """Take `start`..`end` (inclusive) out of the device's map, as real devices have
        holes: any request touching them is refused with exception 2 (illegal data
        address), also when it reads valid addresses around them."""
        return self.set_exception(ILLEGAL_ADDRESS, unit=unit, table=table, start=start, end=start if end is None else end)

    def stop_answering(self, *, unit: int | None = None) -> None:
        """Drop requests silently (connections stay open; clients time out)."""
        self.fault_target(unit).silent = True

    def stall(self, *, unit: int | None = None) -> None:
        """Hold requests (to one unit, or all) unanswered until `release()`: the request
        stays in flight, as with a device that hangs mid-transaction."""
        self.fault_target(unit).stalled = True

    def release(self, *, unit: int | None = None) -> None:
        """End a `stall` (of one unit, or every stall for None): held requests are
        answered now, late, as the device would once it recovers."""
        targets = [self.fault_target(unit)] if unit is not None else [self.faults, *(u.faults for u in self._units.values())]
        for f in targets:
            f.stalled = False
        self._wake_stalled()

    def _wake_stalled(self) -> None:
        event, self._unstalled = self._unstalled, asyncio.Event()
        event.set()

    def drop_connections(self) -> int:
        """Close every client TCP connection now; returns how many were closed.
        Clients may connect again at once."""
        closed = 0
        for lst in self._listeners:
            if lst.kind != "tcp":
                continue
            for conn in list(lst.server.active_connections.values()):
                conn.close()
                closed += 1
        return closed

    def resume(self, *, unit: int | None = None) -> None:
        """Clear faults: of one unit, or (None) server-wide and of every unit."""
        if unit is not None:
            self.unit(unit).faults.clear()
        else:
            self.faults.clear()
            for u in self._units.values():
                u.faults.clear()
        self._wake_stalled()

    # -- request path (called by the handler) ------------------------------------------
    async def _respond(self, pdu: ModbusPDU, *, gateway: bool) -> ModbusPDU | None:
        """The answer to one request, or None for no answer at all.

        Server-wide silence and latency hit all traffic, like a dead or slow gateway;
        an absent unit then gets 0x0B from a TCP gateway and silence on an RTU bus.
        """
        unit = self._units.get(pdu.dev_id)
        layers = (self.faults,) if unit is None else (self.faults, unit.faults)
        if unit is not None:
            unit.requests += 1
        while any(f.stalled for f in layers):
            await self._unstalled.wait()
        if any(f.silent for f in layers):
            return None
        latency = sum(f.latency for f in layers)
        if latency > 0:
            await asyncio.sleep(latency)
            if any(f.silent for f in layers):  # switched off while we were "busy"
                return None
        if unit is None:
            return ExceptionResponse(pdu.function_code, GATEWAY_NO_RESPONSE) if gateway else None
        accesses = _accesses(pdu)
        for f in layers:
            code = f.exception_for(accesses)
            if code is not None:
                return ExceptionResponse(pdu.function_code, code)
        try:
            response: ModbusPDU = await pdu.datastore_update(self._datastore, pdu.dev_id)  # type: ignore[arg-type]
        except NotImplementedException:
            return ExceptionResponse(pdu.function_code, ILLEGAL_FUNCTION)
        return response
