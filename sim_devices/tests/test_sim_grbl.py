"""The GRBL simulator over a real pty, driven by a raw client (no cellctl driver): the
wire protocol as the grbl.md protocol notes describe it."""

from __future__ import annotations

import asyncio
import math
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cellctl_sim.grbl import BANNER, GrblSim
from test_sim_grbl_support import RawPort, exists, field_of, state_of, until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def sim() -> AsyncIterator[GrblSim]:
    async with GrblSim(speedup=math.inf) as s:
        yield s


async def test_path_is_a_tty_and_status_reports_every_field(sim: GrblSim, port: RawPort) -> None:
    assert stat.S_ISCHR(os.stat(sim.path).st_mode)
    rep = await port.status()
    assert state_of(rep) == "Idle"
    assert field_of(rep, "MPos") == "0.000,0.000,0.000"
    assert field_of(rep, "Bf") is None  # $10=1, GRBL's default: no buffer data
    assert field_of(rep, "FS") == "0,0"
    assert field_of(rep, "WCO") == "0.000,0.000,0.000"  # first report carries WCO
    rep2 = await port.status()
    assert field_of(rep2, "Ov") == "100,100,100"  # ... the next one overrides


async def test_lines_are_answered_and_logged_as_grbl_buffers_them(sim: GrblSim, port: RawPort) -> None:
    since = port.mark()
    port.send("g21 g90 (metric) ; comment")
    port.send("G1 X10 Y5 F600")
    port.send("")
    await port.count("ok", 3, since=since)
    assert sim.executed == ["G21G90", "G1X10Y5F600"]
    rep = await port.status()
    assert field_of(rep, "MPos") == "10.000,5.000,0.000"


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("G5 X1", 20),  # unsupported command
        ("G1 X", 2),  # a letter without a number
        ("#12", 1),  # not a word at all
        ("$Q", 3),  # unknown $ command
        ("G1 X1 X2 F10", 25),  # repeated word
        ("G1 X" + "1" * 90, 11),  # longer than the line buffer
        ("G1 X1", 22),  # no feed rate yet
    ],
)
async def test_error_codes(port: RawPort, line: str, code: int) -> None:
    since = port.mark()
    port.send(line)
    assert await port.wait_for("error:", since=since) == f"error:{code}"


async def test_rx_overflow_is_detected_not_forgiven() -> None:
    # Slow moves and a 2-block planner: the main loop stops reading and RX fills up.
    async with GrblSim(speedup=1.0, planner_blocks=2) as sim:
        port = RawPort(sim.path)
        try:
            lines = b"".join(b"G1X%dF60\n" % (i % 50) for i in range(1, 40))
            assert len(lines) > 127
            port.write(lines)
            since = 0
            await port.count("ok", 2, since=since)
            await until(lambda: sim.rx_overflows > 0, what="an overflow")
            assert sim.max_rx_used == 127  # 128-byte ring, one byte never used
        finally:
            port.close()


async def test_realtime_bytes_act_mid_line_and_never_enter_rx(sim: GrblSim, port: RawPort) -> None:
    since = port.mark()
    port.write(b"G1X1?0F100\n")  # a status request inside a line
    rep = await port.wait_for("<", since=since)
    assert state_of(rep) in ("Idle", "Run")
    await port.wait_for("ok", since=since)
    assert sim.executed == ["G1X10F100"]
    port.write(b"\x91\x91")  # feed override +10 % twice
    await until(lambda: sim.feed_override == 120, what="override applied")
    reports = [await port.status() for _ in range(2)]  # Ov: comes on change
    assert any(field_of(r, "Ov") == "120,100,100" for r in reports)


async def test_status_in_every_state() -> None:
    async with GrblSim(speedup=20.0, homing=True) as sim:
        port = RawPort(sim.path)
        try:
            assert state_of(await port.status()) == "Alarm"  # homing enabled: locked at boot
            since = port.mark()
            port.send("$H")
            await until(lambda: sim.state == "Home", what="homing")
            port.write(b"?")  # no answer while homing
            await port.wait_for("ok", since=since, timeout=5)
            assert not any(x.startswith("<") for x in port.lines[since:])
            assert state_of(await port.status()) == "Idle"
            port.send("G1X100F600")  # 10 s of motion, 0.5 s at speedup 20
            await port.wait_for("ok", since=since + 1)
            assert state_of(await port.status()) == "Run"
            port.write(b"!")
            assert state_of(await port.status()) == "Hold:1"
            deadline = time.monotonic() + 2
            while state_of(await port.status()) != "Hold:0":
                assert time.monotonic() < deadline
            port.write(b"~")
            assert state_of(await port.status()) == "Run"
            port.write(b"\x84")  # safety door
            rep = await port.status()
            assert state_of(rep).startswith("Door")
            assert field_of(rep, "Pn") == "D"
            sim.close_door()
            port.write(b"~")
            deadline = time.monotonic() + 3
            while state_of(await port.status()) != "Idle":
                assert time.monotonic() < deadline
            since = port.mark()
            port.send("$J=G91X5F600")
            await port.wait_for("ok", since=since)  # planned: the jog is under way
            assert state_of(await port.status()) == "Jog"
            port.write(b"\x85")  # jog cancel
            assert state_of(await port.status()) == "Idle"
            since = port.mark()
            port.send("$C")
            await port.wait_for("ok", since=since)
            assert state_of(await port.status()) == "Check"
            since = port.mark()
            port.send("$C")  # leaving check mode resets
            await port.wait_for(BANNER, since=since)
            since = port.mark()
            port.send("$X")
            await port.wait_for("ok", since=since)
            port.send("$SLP")
            await port.wait_for("[MSG:Sleeping]", since=since)
            assert state_of(await port.status()) == "Sleep"
        finally:
            port.close()


async def test_soft_limit_is_a_critical_alarm_until_reset(sim: GrblSim, port: RawPort) -> None:
    since = port.mark()
    port.send("G0X400")  # the work area ends at X300
    await port.wait_for("ALARM:2", since=since)
    await port.wait_for("[MSG:Reset to continue]", since=since)
    port.send("G0X1")
    port.write(b"?")
    port.write(b"\x18")  # bytes are taken in order: the banner comes after any answer to those
    await port.wait_for(BANNER, since=since)
    assert [x for x in port.lines[since:] if x.startswith(("ok", "<"))] == []  # nothing answered
    await port.wait_for("[MSG:'$H'|'$X' to unlock]", since=since)
    assert state_of(await port.status()) == "Alarm"
    since = port.mark()
    port.send("$X")
    await port.wait_for("ok", since=since)
    assert state_of(await port.status()) == "Idle"
    assert sim.executed == ["$X"]


async def test_settings_need_idle_and_eeprom_writes_lose_input() -> None:
    async with GrblSim(speedup=1.0, eeprom_write_time=0.05) as sim:
        port = RawPort(sim.path)
        try:
            since = port.mark()
            port.send("G1X50F600")
            port.send("$110=2000")  # while running: refused
            assert await port.wait_for("error:", since=since) == "error:8"
            port.write(b"\x18")  # stop (an alarm, since it moves)
            await port.wait_for(BANNER, since=since)
            port.send("$X")
            await port.wait_for("ok", since=port.mark() - 1)
            sim.position = (0.0, 0.0, 0.0)
            since = port.mark()
            port.write(b"$110=2000\nG0X1\n")  # a host that does not wait for the ok
            await port.wait_for("ok", since=since)
            port.send("$I")  # a marker: its answer comes after every byte before it was taken in
            await port.wait_for("[VER:", since=since)
            assert sim.lost_bytes > 0
            assert sim.settings.values[110] == 2000
        finally:
            port.close()


async def test_motion_time_follows_feed_and_speedup() -> None:
    async with GrblSim(speedup=10.0) as sim:
        port = RawPort(sim.path)
        try:
            since = port.mark()
            t0 = time.monotonic()
            port.send("G1X100F6000")  # 100 mm at 6000 mm/min: 1 s, 0.1 s at speedup 10
            await port.wait_for("ok", since=since)
            deadline = time.monotonic() + 2
            while state_of(await port.status()) != "Idle":
                assert time.monotonic() < deadline
            took = time.monotonic() - t0
            assert 0.08 <= took < 1.0
            assert sim.underruns == 1
        finally:
            port.close()


async def test_pacing_at_a_baud_rate() -> None:
    async with GrblSim(speedup=math.inf, baudrate=9600) as sim:  # 960 bytes/s
        port = RawPort(sim.path)
        try:
            lines = [f"G1X{i % 100}F1000" for i in range(40)]  # about 400 bytes in, 160 out
            t0 = time.monotonic()
            since = port.mark()
            for line in lines[:10]:
                port.send(line)  # at most ~110 bytes in flight: never overflows
            sent = 10
            while sent < len(lines):
                await port.count("ok", sent - 9, since=since)
                port.send(lines[sent])
                sent += 1
            await port.count("ok", len(lines), since=since)
            took = time.monotonic() - t0
            wire = sum(len(x) + 1 for x in lines) / 960
            assert took >= wire * 0.9
            assert sim.rx_overflows == 0
        finally:
            port.close()


async def test_faults_drop_ok_stall_reset() -> None:
    async with GrblSim(speedup=math.inf) as sim:
        port = RawPort(sim.path)
        try:
            sim.drop_ok(1)
            since = port.mark()
            port.send("G1X1F100")
            port.send("G1X2")
            await port.count("ok", 1, since=since)
            await port.status()  # answered after both lines: a second ok would stand before it
            assert len([x for x in port.lines[since:] if x == "ok"]) == 1
            assert sim.executed == ["G1X1F100", "G1X2"]
            sim.stall()
            since = port.mark()
            bytes_in = sim.line.bytes_in
            port.write(b"?")
            port.send("G1X3")
            await until(lambda: sim.line.bytes_in >= bytes_in + 6, what="the stalled machine to take the bytes in")
            assert port.lines[since:] == []
            sim.unstall()
            await port.wait_for("ok", since=since)
            assert port.lines[since:] == ["ok"]  # the status request sent during the stall was never answered
            since = port.mark()
            sim.reset()
            await port.wait_for(BANNER, since=since)
        finally:
            port.close()


async def test_unplug_and_replug_under_a_stable_link(tmp_path: Path) -> None:
    link = str(tmp_path / "ttyGRBL")
    async with GrblSim(speedup=math.inf, link=link) as sim:
        port = RawPort(link)
        assert state_of(await port.status()) == "Idle"
        sim.unplug()
        await until(lambda: port.eof, 2, "end of file after the unplug")
        port.close()
        assert not exists(link)
        sim.replug()
        port = RawPort(link)
        try:
            assert state_of(await port.status()) == "Idle"
        finally:
            port.close()
    assert not exists(link)


def test_cli_prints_the_pty_path_and_serves_it(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellctl_sim.grbl", "--speedup", "100", "--link", str(tmp_path / "ttyG")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        assert first[0] == "grbl"
        path = first[1]
        assert stat.S_ISCHR(os.stat(path).st_mode)
        assert os.path.realpath(tmp_path / "ttyG") == path

        async def talk() -> str:
            port = RawPort(path)
            try:
                return await port.status()
            finally:
                port.close()

        assert state_of(asyncio.run(talk())) == "Idle"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_bf_only_with_the_buffer_bit_of_the_status_mask() -> None:
    async with GrblSim(speedup=math.inf, report_buffer=True) as s:
        p = RawPort(s.path)
        try:
            assert field_of(await p.status(), "Bf") == "15,128"
            since = p.mark()
            p.send("$10=1")
            await p.count("ok", 1, since=since)
            assert field_of(await p.status(), "Bf") is None
        finally:
            p.close()
