"""The CLI as a real process: prints its listener lines, answers, exits 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from cellctl_sim.modbus.cli import _parse_units, modbus
from click.testing import CliRunner
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

START_TIMEOUT = 15.0


@asynccontextmanager
async def running(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[str]]]:
    """Start `python -m cellctl_sim.modbus ARGS`; yield it with the lines it printed first."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cellctl_sim.modbus", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        yield proc, []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    try:
        raw = await asyncio.wait_for(proc.stdout.readline(), timeout=START_TIMEOUT)
    except TimeoutError:
        pytest.fail("the simulator printed no listener line in time")
    if not raw:
        err = await proc.stderr.read() if proc.stderr else b""
        pytest.fail(f"the simulator exited early: {err.decode(errors='replace')}")
    return raw.decode().rstrip("\n")


async def _stop(proc: asyncio.subprocess.Process) -> int:
    os.kill(proc.pid, signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), timeout=10.0)


async def test_tcp_line_read_and_clean_sigterm() -> None:
    async with running("--tcp", "127.0.0.1:0", "--tick", "0.05", "--seed", "1") as (proc, _):
        line = await _line(proc)
        kind, address, word, units = line.split(" ")
        assert (kind, word, units) == ("tcp", "units", "1=energy-meter,2=machine-plc")
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1"
        assert int(port) > 0
        client = AsyncModbusTcpClient(host, port=int(port), timeout=2.0, retries=0)
        assert await client.connect()
        try:
            rr = await client.read_holding_registers(0, count=20, device_id=2)
            assert not rr.isError()
            assert rr.registers[0] in range(6)
            rr = await client.read_input_registers(0, count=24, device_id=1)
            assert not rr.isError()
        finally:
            client.close()
        assert await _stop(proc) == 0


async def test_rtu_only_with_bench_units_and_sigint() -> None:
    async with running("--no-tcp", "--rtu-pty", "--unit", "7=type-test", "--units-bench", "2", "--tick", "0.01") as (
        proc,
        _,
    ):
        line = await _line(proc)
        kind, path, baud, framing, word, units = line.split(" ")
        assert (kind, word, units) == ("rtu", "units", "7=type-test,8=bench,9=bench")
        assert (baud, framing) == ("19200", "8N1")  # the parity a pty accepts
        client = AsyncModbusSerialClient(path, timeout=2.0, retries=0)
        assert await client.connect()
        try:
            rr = await client.read_holding_registers(0, count=100, device_id=9)
            assert not rr.isError()
            assert len(rr.registers) == 100
        finally:
            client.close()
        os.kill(proc.pid, signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), timeout=10.0) == 0


async def test_port_in_use_fails_with_a_message() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running("--tcp", f"127.0.0.1:{port}") as (proc, _):
            rc = await asyncio.wait_for(proc.wait(), timeout=START_TIMEOUT)
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode()
            assert rc == 1
            assert "cannot listen" in err
    finally:
        server.close()


def test_bad_arguments_are_usage_errors() -> None:
    runner = CliRunner()
    for args in (["--unit", "1=toaster"], ["--unit", "x"], ["--tcp", "nohost"], ["--tick", "0"],
                 ["--no-tcp"], ["--rtu-link", "/tmp/x"], ["--unit", "300=bench"]):
        result = runner.invoke(modbus, args)
        assert result.exit_code == 2, (args, result.output)


def test_unit_parsing() -> None:
    assert _parse_units((), 0) == {1: "energy-meter", 2: "machine-plc"}
    assert _parse_units((), 3) == {1: "bench", 2: "bench", 3: "bench"}
    assert _parse_units(("5=machine-plc",), 2) == {5: "machine-plc", 6: "bench", 7: "bench"}
