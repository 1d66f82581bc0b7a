"""Fault suite, G-code part (issue 16 item 9): a GRBL and a Marlin machine on real ptys
that stop answering sanely and send random bytes, an endless line, invalid UTF-8,
malformed and oversized status fields. The promise: nothing raises out of the driver,
its memory stays bounded, the points concerned go bad with a reason, and the device
recovers when sane lines resume. Each scenario takes seconds.

The machines are the simulators, stalled (they answer nothing) while the test writes the
hostile bytes straight onto the wire (`sim.inject`)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from cellctl_gcode.config import GcodeAddress, GcodeConnection, GcodeOptions
from cellctl_gcode.device import GcodeDevice, open_device
from cellctl_gcode.fields import FIELDS
from cellctl_gcode.serialport import MAX_LINE_BYTES
from cellctl_gcode.session import MAX_REPLY_LINES
from cellctl_sim.grbl import GrblSim
from cellctl_sim.marlin import MarlinSim

from cellctl.driver import DeviceContext, DeviceUnavailable, PointSpec, Reading

pytestmark = pytest.mark.timeout(60)

HUGE = "99999999999999999999999"
GRBL_FIELDS = ("state", "mpos.x", "wpos.x", "feed", "buffer.planner", "buffer.rx", "pins", "ov.feed", "alarm_code")
MARLIN_FIELDS = ("state", "temp.hotend", "target.hotend", "power.hotend", "temp.bed", "pos.x", "sd.byte", "sd.progress")


def _ctx(port: str, fields: tuple[str, ...], **options: Any) -> DeviceContext:
    pts = [
        PointSpec(i, f.replace(".", "_"), FIELDS[f].kind, "r", GcodeAddress(field=f))
        for i, f in enumerate(fields)
    ]
    return DeviceContext(
        device_id="faulty", connection=GcodeConnection(port=port), options=GcodeOptions.model_validate(options),
        points=pts, timeout=1.0,
    )


class Points:
    """Latest value or error per point id, as the engine applies partial readings."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        self.ids = [f.replace(".", "_") for f in fields]
        self.values: dict[str, Any] = {}
        self.errors: dict[str, str] = {}

    def __call__(self, reading: Reading) -> None:
        for k, i in enumerate(reading.indexes or range(len(reading.values))):
            pid = self.ids[i]
            if reading.errors and i in reading.errors:
                self.errors[pid] = reading.errors[i]
                self.values.pop(pid, None)
            else:
                self.values[pid] = reading.values[k]
                self.errors.pop(pid, None)


async def until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def watched(dev: GcodeDevice, points: Points) -> AsyncIterator[list[dict[str, Any]]]:
    """Subscribe, and collect every exception that reaches the loop (there must be none)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    task = loop.create_task(dev.subscribe(points), name="subscribe")
    try:
        yield errors
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, DeviceUnavailable):
            await task
        loop.set_exception_handler(previous)


async def _fed(dev: GcodeDevice, sent_before: int, n: int) -> None:
    await until(lambda: dev.link.bytes_in >= sent_before + n, what=f"{n} bytes read by the driver")


def _random_lines(rng: random.Random, n: int) -> bytes:
    return b"".join(rng.randbytes(rng.randrange(1, 120)) + b"\n" for _ in range(n))


async def test_grbl_garbage_never_raises_stays_bounded_and_the_machine_recovers() -> None:
    rng = random.Random(16)
    async with GrblSim(speedup=math.inf, report_buffer=True) as sim:
        points = Points(GRBL_FIELDS)
        async with open_device(_ctx(sim.path, GRBL_FIELDS, silence_timeout=3.0)) as dev, watched(dev, points) as errors:
            await until(lambda: points.values.get("buffer_rx") == 128, what="sane status")
            sim.stall()  # from here on only the test talks
            cmd = dev.submit("$$")  # a command waiting for an answer that never comes
            start, link = dev.link.bytes_in, dev.link

            # random bytes, with and without newlines
            junk = _random_lines(rng, 2000) + rng.randbytes(50_000)
            sim.inject(junk)
            await _fed(dev, start, len(junk))
            # an endless line: 2 MB, no newline
            endless = 0
            for _ in range(64):
                chunk = bytes(rng.choice(b"<Idle|MPos:0123456789,.>") for _ in range(32_768))
                sim.inject(chunk)
                endless += len(chunk)
                await _fed(dev, start, len(junk) + endless)
                assert link.buffered <= MAX_LINE_BYTES
            assert link.noise_dropped >= endless - MAX_LINE_BYTES
            # answer lines the waiting command collects: bounded too
            chatty = b"\n" + b"[GC:G0 G54]\n" * (MAX_REPLY_LINES * 3)
            sim.inject(chatty)
            await _fed(dev, start, len(junk) + endless + len(chatty))
            assert len(cmd.lines) <= MAX_REPLY_LINES
            # invalid UTF-8 inside what look like reports and answers
            sim.inject(b"<Idle|MPos:\xff\xfe0,0,0|FS:0,0>\r\nok\xc3\x28\r\nALARM:\xe2\x82\r\n<\xf0\x9f\x92|Bf:1,1>\r\n")
            # malformed and oversized status fields: the points they feed go bad, with reasons
            sim.inject(
                f"<Idle|MPos:1e999,0,0|Bf:15,{HUGE}|FS:nan,0|Pn:{'X' * 3000}>\r\n".encode()
                + b"<Idle|MPos:0,0|FS:1,2,3>\r\n<Idle|Ov:100,100>\r\n"
            )
            await until(lambda: "buffer_rx" in points.errors and "mpos_x" in points.errors, what="bad points")
            assert "int64" in points.errors["buffer_rx"]
            assert "finite" in points.errors["mpos_x"]
            assert "finite" in points.errors["wpos_x"]
            assert "finite" in points.errors["feed"]
            assert "longer than" in points.errors["pins"]
            assert points.values["state"] == "Idle"
            assert errors == []
            assert dev.failed_lines == 0
            assert not dev.closed.is_set()

            # sane lines resume: every point is good again without a reconnect
            sim.unstall()
            await until(lambda: not points.errors and points.values.get("buffer_rx") == 128, what="recovered")
            assert not dev.closed.is_set()
            assert errors == []


async def test_grbl_that_only_sends_garbage_is_lost_with_a_reason_and_reconnects() -> None:
    rng = random.Random(17)
    async with GrblSim(speedup=math.inf) as sim:
        points = Points(GRBL_FIELDS)
        ctx = _ctx(sim.path, GRBL_FIELDS, silence_timeout=1.0)
        async with open_device(ctx) as dev, watched(dev, points) as errors:
            await until(lambda: points.values.get("state") == "Idle", what="sane status")
            sim.stall()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not dev.closed.is_set() and loop.time() < deadline:
                sim.inject(_random_lines(rng, 50))
                await asyncio.sleep(0.02)  # a steady trickle of noise, not synchronisation
            assert dev.closed.is_set()
            assert "no status report" in dev.close_reason
            assert errors == []
        sim.unstall()
        points = Points(GRBL_FIELDS)
        async with open_device(ctx) as dev, watched(dev, points) as errors:
            await until(lambda: points.values.get("state") == "Idle", what="reconnected")
            assert errors == []


async def test_marlin_garbage_never_raises_stays_bounded_and_the_printer_recovers() -> None:
    rng = random.Random(18)
    async with MarlinSim(speedup=math.inf) as sim:
        points = Points(MARLIN_FIELDS)
        async with open_device(_ctx(sim.path, MARLIN_FIELDS, status_interval=1.0)) as dev, watched(dev, points) as errors:
            await until(lambda: points.values.get("temp_hotend") == 25.0, what="sane temperatures")
            sim.stall()
            sim.inject(b"M105 answer follows\n")
            start, link = dev.link.bytes_in, dev.link
            junk = _random_lines(rng, 2000) + rng.randbytes(50_000)
            sim.inject(junk)
            await _fed(dev, start, len(junk))
            endless = 0
            for _ in range(64):
                chunk = bytes(rng.choice(b"T:0123456789. /B@") for _ in range(32_768))
                sim.inject(chunk)
                endless += len(chunk)
                await _fed(dev, start, len(junk) + endless)
                assert link.buffered <= MAX_LINE_BYTES
            sim.inject(b"\nok T:\xff\xfe21.0 /0.0\n\xc3\x28Resend: \xe2\x82\n")
            sim.inject(
                f"T:{'9' * 400}.0 /210.0 B:nan /0.0 @:{HUGE} B@:0\n".encode()
                + f"X:1e999 Y:0.00 Z:0.00 E:0.00 Count X:0\nSD printing byte {'9' * 400}/3\n".encode()
                + f"Resend: {HUGE}\nok N{HUGE}\n".encode()
            )
            await until(lambda: {"temp_hotend", "power_hotend", "sd_byte", "sd_progress"} <= set(points.errors),
                        what="bad points")
            assert "finite" in points.errors["temp_hotend"]
            assert "int64" in points.errors["power_hotend"]
            assert points.values["target_hotend"] == 210.0
            assert errors == []
            assert dev.failed_lines == 0
            assert not dev.closed.is_set()

            sim.unstall()
            await until(lambda: points.values.get("temp_hotend") == 25.0 and "power_hotend" not in points.errors,
                        what="recovered")
            reply = await dev.command("M114", timeout=5.0)  # the line numbering survived the noise
            assert reply.ok
            assert errors == []
