"""A Modbus TCP server answering garbage, against the real driver (issue 16 items 6, 9).

The server is a raw asyncio TCP server on 127.0.0.1 that parses requests itself and
answers each in the way its current `mode` says. The promise: `poll()` never raises
anything but DeviceUnavailable, points go bad with a reason, asyncio never sees an
exception escape the protocol (no traceback in the log), memory stays bounded, and the
device recovers once sane answers resume.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cellctl_modbus.config import ModbusAddress, ModbusConnection, ModbusOptions
from cellctl_modbus.plugin import plugin
from cellctl_modbus.transport import RequestError, check_read_response, guard_receive
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient

from cellctl.driver import DeviceContext, DeviceUnavailable, PointSpec, Reading

pytestmark = pytest.mark.timeout(60)

COUNT = 4  # registers per read: one uint16 point at 0..3 each
TIMEOUT = 0.3
MODES = [
    "wrong_tid",
    "wrong_length",
    "truncated",
    "random",
    "lying_byte_count",
    "huge_length",
    "slow_bytes",
    "wrong_function",
    "undecodable",
]


def sane_payload(count: int) -> bytes:
    return bytes([3, 2 * count]) + b"".join(struct.pack(">H", 100 + i) for i in range(count))


def mbap(tid: int, unit: int, pdu: bytes, length: int | None = None) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1 if length is None else length, unit) + pdu


@dataclass
class GarbageServer:
    """Answers FC3 reads; `mode` picks how (``sane`` answers correctly)."""

    mode: str = "sane"
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    requests: int = 0
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", head)
                body = await reader.readexactly(length - 1)
                self.requests += 1
                count = struct.unpack(">H", body[3:5])[0] if body[0] == 3 else 1
                await self.answer(writer, tid, unit, count)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def answer(self, w: asyncio.StreamWriter, tid: int, unit: int, count: int) -> None:
        good = sane_payload(count)
        mode = self.mode
        if mode == "sane":
            w.write(mbap(tid, unit, good))
        elif mode == "wrong_tid":
            w.write(mbap((tid + 1) & 0xFFFF, unit, good))
        elif mode == "wrong_length":
            w.write(mbap(tid, unit, good, length=len(good) - 1))  # one byte short
        elif mode == "truncated":
            w.write(mbap(tid, unit, good)[:9])
        elif mode == "random":
            w.write(self.rng.randbytes(self.rng.randint(1, 300)))
        elif mode == "lying_byte_count":
            w.write(mbap(tid, unit, bytes([3, 2 * count + 6]) + good[2:]))
        elif mode == "huge_length":
            w.write(mbap(tid, unit, good, length=0xFFFF) + bytes(64 * 1024))
        elif mode == "slow_bytes":  # correct, but a byte at a time (well within the timeout)
            for b in mbap(tid, unit, good):
                w.write(bytes([b]))
                await w.drain()
                await asyncio.sleep(0.002)
        elif mode == "wrong_function":
            w.write(mbap(tid, unit, bytes([4]) + good[1:]))
        elif mode == "undecodable":  # a function code no response has
            w.write(mbap(tid, unit, bytes([0x42, 1, 2, 3])))
        await w.drain()


@pytest.fixture
async def garbage() -> AsyncIterator[GarbageServer]:
    gs = GarbageServer()
    gs.server = await asyncio.start_server(gs.handle, "127.0.0.1", 0)
    yield gs
    gs.server.close()
    for w in gs.writers:
        w.close()
    await gs.server.wait_closed()


def ctx_for(port: int) -> DeviceContext:
    point = PointSpec(0, "p0", "int", "r", ModbusAddress(table="holding", start=0, type="uint16"))
    wide = PointSpec(1, "p1", "int", "r", ModbusAddress(table="holding", start=3, type="uint16"))
    return DeviceContext(
        device_id="garbage",
        connection=ModbusConnection(transport="tcp", host="127.0.0.1", port=port),
        options=ModbusOptions(),
        points=[point, wide],
        timeout=TIMEOUT,
    )


async def poll_like_the_engine(ctx: DeviceContext, polls: int) -> list[Reading | str]:
    """Open, poll; on DeviceUnavailable close and reopen, as the runner does. Any other
    exception escapes and fails the test."""
    out: list[Reading | str] = []
    while len(out) < polls:
        try:
            async with plugin.open(ctx) as dev:
                while len(out) < polls:
                    out.append(await dev.poll())
        except DeviceUnavailable as exc:
            out.append(f"unavailable: {exc.reason}")
    return out


@pytest.mark.parametrize("mode", MODES)
async def test_garbage_is_a_device_fault_and_recovers(garbage: GarbageServer, mode: str) -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    ctx = ctx_for(garbage.port)
    garbage.mode = mode
    results = await poll_like_the_engine(ctx, 4)
    for r in results:
        if isinstance(r, Reading):
            if mode == "slow_bytes":
                assert r.errors is None
                assert r.values == [100, 103]
            else:
                assert r.errors is not None
                assert set(r.errors) == {0, 1}
                assert all(reason.startswith("bad response") for reason in r.errors.values())
        else:
            assert r.startswith("unavailable: ")
    if mode != "slow_bytes":
        assert any(isinstance(r, str) for r in results) or mode == "wrong_function"
    garbage.mode = "sane"
    deadline = time.monotonic() + 10
    while True:  # recovers once sane answers resume (bounded)
        (last,) = await poll_like_the_engine(ctx, 1)
        if isinstance(last, Reading) and last.errors is None:
            break
        assert time.monotonic() < deadline, f"no recovery, last: {last}"
    assert last.values == [100, 103]
    assert errors == [], errors  # nothing escaped into asyncio's handler


async def test_a_flood_of_garbage_keeps_memory_bounded(garbage: GarbageServer) -> None:
    garbage.mode = "huge_length"
    ctx = ctx_for(garbage.port)
    tracemalloc.start()
    try:
        await poll_like_the_engine(ctx, 8)  # 8 x 64 KiB of junk after a 64 KiB length field
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024


# -- the receive path as a pure property: bytes in, only documented outcomes ---------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(chunks=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=4), count=st.integers(1, 125))
async def test_receive_path_never_raises(chunks: list[bytes], count: int) -> None:
    """pymodbus's client protocol with our guard: feeding it any bytes never raises; the
    outcome is a garbage report, a PDU our check accepts or refuses with RequestError,
    or nothing yet."""
    client = AsyncModbusTcpClient("127.0.0.1", port=1)
    proto: Any = client.ctx
    garbage_reports: list[str] = []
    guard_receive(proto, garbage_reports.append)
    proto.response_future = asyncio.get_running_loop().create_future()
    proto.request_transaction_id = 1
    proto.request_dev_id = 1
    for chunk in chunks:
        if chunk:
            proto.data_received(chunk)
    assert len(proto.recv_buffer) <= 264 + 300
    if proto.response_future.done():
        try:
            values = check_read_response(proto.response_future.result(), "holding", count)
        except RequestError:
            pass
        else:
            assert len(values) == count
    for reason in garbage_reports:
        assert reason.startswith("undecodable answer")
