"""The Marlin simulator over a real pty, driven by a raw client (no cellctl driver): line
numbers and checksums, resends, reports, heating with keep-alives, faults."""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cellctl_sim.marlin import MarlinSim
from test_sim_grbl_support import RawPort, checksum_line, exists, until

pytestmark = pytest.mark.timeout(30)


async def reset_numbers(port: RawPort) -> None:
    """M110 runs from the queue, late: wait for its ok before numbering lines (a host
    that does not can see its next lines rejected)."""
    since = port.mark()
    port.send("M110 N0")
    await port.wait_for("ok", since=since)


async def settled(port: RawPort, since: int) -> None:
    """Send a marker (an unnumbered M105) and wait for its answer: the printer runs its
    queue in order, so whatever the lines before it were to bring has arrived by then."""
    port.send("M105")
    await port.wait_for("ok T:", since=since)


@pytest.fixture
async def sim() -> AsyncIterator[MarlinSim]:
    async with MarlinSim(speedup=math.inf) as s:
        yield s


async def test_numbered_lines_and_reports(sim: MarlinSim, port: RawPort) -> None:
    await reset_numbers(port)
    since = port.mark()
    port.send(checksum_line(1, "M115"))
    await port.wait_for("FIRMWARE_NAME:Marlin", since=since)
    await port.wait_for("Cap:AUTOREPORT_TEMP:1", since=since)
    await port.wait_for("ok", since=since)
    since = port.mark()
    port.send(checksum_line(2, "G1 X10 Y20 Z0.3 E1 F3000"))
    port.send(checksum_line(3, "M114"))
    port.send(checksum_line(4, "M105"))
    port.send(checksum_line(5, "M27"))
    pos = await port.wait_for("X:", since=since)
    assert pos.startswith("X:10.00 Y:20.00 Z:0.30 E:1.00 Count")
    temp = await port.wait_for("ok T:", since=since)
    assert re.fullmatch(r"ok T:25\.00 /0\.00 B:25\.00 /0\.00 @:0 B@:0", temp)
    assert await port.wait_for("Not SD", since=since) == "Not SD printing"
    assert sim.executed == ["M110 N0", "M115", "G1 X10 Y20 Z0.3 E1 F3000", "M114", "M105", "M27"]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (checksum_line(2, "G1 X1").replace("*", "0*"), "Error:checksum mismatch, Last Line: 1"),
        ("N2 G1 X1", "Error:No Checksum with line number, Last Line: 1"),
        (checksum_line(5, "G1 X1"), "Error:Line Number is not Last Line Number+1, Last Line: 1"),
    ],
)
async def test_line_errors_ask_for_a_resend_and_flush_input(sim: MarlinSim, port: RawPort, line: str, error: str) -> None:
    await reset_numbers(port)
    port.send(checksum_line(1, "G1 X5 F100"))
    await port.count("ok", 2)
    since = port.mark()
    port.write((line + "\n" + checksum_line(2, "G1 X7") + "\n").encode())  # the good line behind it is flushed
    assert await port.wait_for("Error:", since=since) == error
    assert await port.wait_for("Resend:", since=since) == "Resend: 2"
    await settled(port, since)
    assert "ok" not in port.lines[since:]  # this firmware sends no ok after a resend request
    assert sim.executed == ["M110 N0", "G1 X5 F100", "M105"]  # the flushed line never ran
    since = port.mark()
    port.send(checksum_line(2, "G1 X7"))
    await port.wait_for("ok", since=since)
    assert sim.executed[-1] == "G1 X7"


async def test_ok_after_resend_and_advanced_ok_variants() -> None:
    async with MarlinSim(speedup=math.inf, ok_after_resend=True, advanced_ok=True) as sim:
        port = RawPort(sim.path)
        try:
            port.send(checksum_line(0, "M110 N0"))
            await port.wait_for("ok N0")
            port.send(checksum_line(1, "G1 X1 F100"))
            # B: free queue slots with this command still in its slot, as Marlin counts
            assert await port.wait_for("ok N1") == "ok N1 P16 B3"
            since = port.mark()
            port.send(checksum_line(3, "G1 X2"))
            await port.wait_for("Resend: 2", since=since)
            assert port.lines[since:][-1] == "ok" or await port.wait_for("ok", since=since) == "ok"
        finally:
            port.close()


async def test_heating_blocks_with_keepalives_and_temperature_lines() -> None:
    async with MarlinSim(speedup=4.0, busy_interval=0.1, heat_rate=5.0) as sim:
        port = RawPort(sim.path)
        try:
            await reset_numbers(port)
            since = port.mark()
            t0 = time.monotonic()
            port.send(checksum_line(1, "M109 S60"))  # 35 degC at 20 degC/s: ~1.7 s
            done = await port.wait_for("ok", since=since, timeout=10)
            took = time.monotonic() - t0
            assert done == "ok"
            assert 1.0 < took < 5.0
            lines = port.lines[since:]
            assert any(x == "echo:busy: processing" for x in lines)
            temps = [float(m.group(1)) for x in lines if (m := re.match(r" T:([\d.]+) /60\.00", x))]
            assert temps == sorted(temps)
            assert len(temps) >= 1
            assert abs(sim.hotend.temp - 60) <= 1.0
        finally:
            port.close()


async def test_autoreport_and_emergency_parser() -> None:
    async with MarlinSim(speedup=1.0, busy_interval=0.1) as sim:
        port = RawPort(sim.path)
        try:
            await reset_numbers(port)
            port.send(checksum_line(1, "M155 S1"))
            await port.count("ok", 2)
            since = port.mark()
            await port.wait_for(" T:", since=since, timeout=3)  # unasked
            port.send(checksum_line(2, "M109 S200"))  # blocks for a long time
            await port.wait_for("echo:busy: processing", since=since, timeout=3)
            port.send("M108")  # the emergency parser breaks the wait at once
            await port.wait_for("ok", since=since, timeout=3)
            since = port.mark()
            port.send(checksum_line(3, "M109 S200"))
            await port.wait_for("echo:busy", since=since, timeout=3)
            port.send("M112")
            await port.wait_for("Error:Printer halted. kill() called!", since=since)
            assert sim.killed
            since = port.mark()
            bytes_in = sim.line.bytes_in
            port.send(checksum_line(4, "M105"))
            await until(lambda: sim.line.bytes_in > bytes_in, what="the halted printer to take the line in")
            sim.reset()
            banner = await port.wait_for("start", since=since)
            assert port.lines[since : port.lines.index(banner, since)] == []  # halted: nothing answered
            assert sim.last_n == 0
        finally:
            port.close()


async def test_unknown_commands_sd_printing_and_kill() -> None:
    files = {"part.gco": ["G28", "G1 X10 F1000", "G1 X20"]}
    async with MarlinSim(speedup=math.inf, sd_files=files) as sim:
        port = RawPort(sim.path)
        try:
            port.send("M110 N0")
            port.send("M999999")
            assert await port.wait_for("echo:Unknown") == 'echo:Unknown command: "M999999"'
            assert sim.executed == ["M110 N0"]
            since = port.mark()
            port.send("M23 part.gco")
            port.send("M24")
            await port.wait_for("Done printing file", since=since)
            port.send("M27")
            assert await port.wait_for("Not SD", since=since) == "Not SD printing"
            assert sim.position[0] == 20.0
            since = port.mark()
            sim.kill("Thermal Runaway")
            assert await port.wait_for("Error:", since=since) == "Error:Thermal Runaway, system stopped! Heater_ID: 0"
            await port.wait_for("Error:Printer halted", since=since)
        finally:
            port.close()


async def test_line_noise_corrupts_one_byte_per_line() -> None:
    async with MarlinSim(speedup=math.inf, seed=5) as sim:
        sim.line.noise_rx = 1.0  # every line
        port = RawPort(sim.path)
        try:
            port.send(checksum_line(1, "G1 X1 F100"))
            await port.wait_for("Resend:")
            assert sim.line.corrupted_rx == 1
            assert sim.executed == []
        finally:
            port.close()


async def test_faults_drop_ok_and_unplug(tmp_path: Path) -> None:
    link = str(tmp_path / "ttyMARLIN")
    async with MarlinSim(speedup=math.inf, link=link) as sim:
        port = RawPort(link)
        try:
            await reset_numbers(port)
            sim.drop_ok(1)
            port.send(checksum_line(1, "G1 X1 F100"))
            await settled(port, port.mark())
            assert port.lines.count("ok") == 1
            assert sim.executed == ["M110 N0", "G1 X1 F100", "M105"]
            sim.unplug()
            await until(lambda: port.eof, 2, "end of file after the unplug")
        finally:
            port.close()
        assert not exists(link)
        sim.replug()
        port = RawPort(link)
        try:
            port.send("M105")
            await port.wait_for("ok T:")
        finally:
            port.close()


def test_cli_prints_the_pty_path() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellctl_sim.marlin", "--speedup", "inf"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        kind, path = proc.stdout.readline().split()[:2]
        assert kind == "marlin"

        async def talk() -> str:
            port = RawPort(path)
            try:
                port.send("M105")
                return await port.wait_for("ok")
            finally:
                port.close()

        assert asyncio.run(talk()).startswith("ok T:")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
