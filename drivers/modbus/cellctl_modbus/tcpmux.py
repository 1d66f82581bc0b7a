"""The Modbus TCP client of every TCP link, with several requests in flight when
``pipelining: on`` (with ``off`` the link's lock keeps one at a time).

pymodbus's client allows one transaction at a time per connection. On a TCP gateway
serving several units that lets one slow unit hold every other unit's requests for
its whole latency. Modbus TCP tags every frame with a transaction id, so requests to
*different* units can share the connection at once, each answer finding its request
by id. This client does exactly that and nothing else: pymodbus builds the request
PDUs (its client mixin) and decodes the answers (its PDU decoder); framing and the
table of outstanding requests are here, so garbage on the wire can never raise out
of `data_received` and the receive buffer never holds more than one frame.

It is also the lean path for one request at a time: a request is a frame written and a
future awaited under the link's one timeout, where pymodbus's client adds its
transaction manager (its own lock, a `wait_for` and retry bookkeeping per request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.exceptions import ConnectionException
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ModbusPDU

HEADER: Final = 7  # transaction id, protocol id, length, unit id
MAX_LENGTH: Final = 254  # MBAP length: unit id + a PDU of at most 253 bytes


class FrameError(Exception):
    """The byte stream is not Modbus TCP any more; the connection must be dropped."""


class MbapReader:
    """Splits a byte stream into (transaction id, unit, PDU) answers. Pure, no I/O."""

    def __init__(self) -> None:
        self.buffer = b""
        self.decoder = DecodePDU(False)

    def feed(self, data: bytes) -> list[tuple[int, int, ModbusPDU]]:
        """Take `data`; return the complete answers in it. FrameError for bytes that
        cannot be Modbus TCP (the buffer is cleared then)."""
        self.buffer += data
        out: list[tuple[int, int, ModbusPDU]] = []
        while len(self.buffer) >= HEADER:
            buf = self.buffer
            tid = int.from_bytes(buf[0:2], "big")
            pid = int.from_bytes(buf[2:4], "big")
            length = int.from_bytes(buf[4:6], "big")
            if pid != 0 or not 2 <= length <= MAX_LENGTH:
                self.buffer = b""
                raise FrameError(f"not a Modbus TCP frame (protocol id {pid}, length {length})")
            end = 6 + length
            if len(buf) < end:
                break
            unit, body = buf[6], buf[HEADER:end]
            self.buffer = buf[end:]
            pdu = self.decoder.decode(body)
            if pdu is None:
                self.buffer = b""
                raise FrameError(f"undecodable answer (function {body[0]}, {len(body)} bytes)")
            pdu.dev_id, pdu.transaction_id = unit, tid
            out.append((tid, unit, pdu))
        return out


class _Protocol(asyncio.Protocol):
    def __init__(self, client: PipelinedTcpClient) -> None:
        self.client = client
        self.reader = MbapReader()

    def data_received(self, data: bytes) -> None:
        try:
            answers = self.reader.feed(data)
        except FrameError as exc:
            self.client.fail(str(exc))
            return
        for tid, unit, pdu in answers:
            self.client.answer(tid, unit, pdu)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost()


class PipelinedTcpClient(ModbusClientMixin[Awaitable[ModbusPDU]]):
    """The subset of pymodbus's AsyncModbusTcpClient the transport uses, pipelined.

    Timeouts are the caller's (`asyncio.timeout` around each call); an answer arriving
    after its request gave up finds no entry and is dropped (`stray` counts them).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        trace_connect: Callable[[bool], None],
        on_garbage: Callable[[str], None],
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.host, self.port = host, port
        self._trace_connect = trace_connect
        self._on_garbage = on_garbage
        self._framer = FramerSocket(DecodePDU(False))
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, tuple[int, asyncio.Future[ModbusPDU]]] = {}
        self._next_tid = 0
        self.stray = 0
        self.max_in_flight = 0

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def connect(self) -> bool:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: _Protocol(self), self.host, self.port)
        self._transport = transport
        return True

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = None
        self._fail_pending("connection closed")

    def fail(self, reason: str) -> None:
        """Garbage on the wire: report it, and drop the connection."""
        self._on_garbage(reason)
        self.close()

    def lost(self) -> None:
        self._transport = None
        self._fail_pending("connection closed by the other end")
        self._trace_connect(False)

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for _, fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionException(reason))

    def answer(self, tid: int, unit: int, pdu: ModbusPDU) -> None:
        entry = self._pending.get(tid)
        if entry is None or entry[0] != unit or entry[1].done():
            self.stray += 1  # late (its request timed out) or not ours
            return
        entry[1].set_result(pdu)

    def execute(self, no_response_expected: bool, request: ModbusPDU) -> Awaitable[ModbusPDU]:
        return self._execute(request)

    async def _execute(self, request: ModbusPDU) -> ModbusPDU:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionException("not connected")
        self._next_tid = self._next_tid % 0xFFFF + 1  # 1..65535, never 0
        while self._next_tid in self._pending:
            self._next_tid = self._next_tid % 0xFFFF + 1
        tid = request.transaction_id = self._next_tid
        fut: asyncio.Future[ModbusPDU] = asyncio.get_running_loop().create_future()
        self._pending[tid] = (request.dev_id, fut)
        self.max_in_flight = max(self.max_in_flight, len(self._pending))
        try:
            transport.write(self._framer.buildFrame(request))
            return await fut
        finally:
            entry = self._pending.get(tid)
            if entry is not None and entry[1] is fut:
                del self._pending[tid]


