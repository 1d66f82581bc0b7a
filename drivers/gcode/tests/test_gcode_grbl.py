"""The driver against the GRBL simulator over real ptys: status, streaming, the halting
rules, pause / resume / cancel, the watchdog and a lost port."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from cellctl_gcode.device import open_device
from cellctl_gcode.job import Job, JobRejected, JobState
from cellctl_gcode.program import Program
from cellctl_sim.grbl import GrblSim
from gcode_testutil import Values, ctx, grbl_job, points, subscribed, until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellctl.driver import DeviceUnavailable

pytestmark = pytest.mark.timeout(60)

STATUS_FIELDS = (
    "state", "mpos.x", "mpos.y", "wpos.x", "wco.x", "feed", "spindle", "buffer.planner", "buffer.rx",
    "ov.feed", "pins", "accessories", "alarm_code", "alarm_text", "firmware", "build", "job.state",
    "job.lines_acked", "job.progress",
)


def program(lines: list[str], name: str = "job.nc") -> Program:
    return Program.from_text("\n".join(lines), dialect="grbl", name=name)


async def test_status_report_fields_are_published(grbl_factory: Any) -> None:
    grbl: GrblSim = await grbl_factory(speedup=math.inf, report_buffer=True)  # $10=3: Bf: too
    pts = points(*STATUS_FIELDS)
    values = Values(pts)
    async with open_device(ctx(grbl.path, pts)) as dev, subscribed(dev, values):
        await until(lambda: values.values.get("state") == "Idle", what="state Idle")
        await until(lambda: "ov_feed" in values.values, what="Ov: in a later report")
        reply = await dev.command("G10L20P1X5Y6")  # here is work (5, 6): WCO = (-5, -6)
        assert reply.ok
        await dev.command("G0X20Y30")  # work coordinates
        await until(lambda: values.values.get("mpos_x") == 15.0 and values.values.get("wpos_x") == 20.0,
                    what="MPos and derived WPos = MPos - WCO")
        v = values.values
        assert v["wco_x"] == -5.0
        assert v["buffer_planner"] == 15
        assert v["buffer_rx"] == 128
        assert v["firmware"] == "Grbl 1.1h"
        assert v["build"].startswith("1.1h")
        assert v["alarm_code"] == 0
        assert v["pins"] == ""
        assert v["job_state"] == "idle"
        grbl.feed_override = 120
        grbl.flood = True
        await until(lambda: values.values.get("ov_feed") == 120 and values.values.get("accessories") == "F",
                    what="overrides and accessories")


async def test_buffer_points_say_the_machine_does_not_report_them_with_the_default_status_mask(
    grbl: GrblSim,
) -> None:
    """Issue 9 item 18: GRBL's default $10=1 sends no Bf:, so the buffer points must not
    wait for it as "not reported yet" forever; nothing is written to the machine's EEPROM."""
    pts = points("state", "mpos.x", "buffer.planner", "buffer.rx")
    values = Values(pts)
    async with open_device(ctx(grbl.path, pts)) as dev, subscribed(dev, values):
        await until(lambda: "buffer_rx" in values.errors and values.values.get("state") == "Idle", what="Bf verdict")
        assert values.errors["buffer_rx"] == values.errors["buffer_planner"]
        assert "not reported by this machine ($10" in values.errors["buffer_rx"]
        assert values.values["mpos_x"] == 0.0
        assert not any(line.startswith("$10") for line in grbl.executed)  # the mask was left alone
        # an operator who enables buffer data gets the points at once
        assert (await dev.command("$10=3")).ok
        await until(lambda: values.values.get("buffer_rx") == 128, what="Bf: after $10=3")
        assert values.values["buffer_planner"] == 15
        assert "buffer_rx" not in values.errors


async def test_several_thousand_lines_arrive_exactly_once_in_order(grbl_factory: Any) -> None:
    sim: GrblSim = await grbl_factory(speedup=2000.0, planner_blocks=15)  # 2 mm at F3000: 20 us
    lines = grbl_job(4000)
    async with open_device(ctx(sim.path)) as dev:
        job = await dev.run_job(program(lines))
        session: Any = dev.session
    assert job.state == JobState.COMPLETED, job.error
    assert job.acked == job.total == len(lines)
    assert sim.executed[1:] == lines  # after the handshake's $I: nothing lost, doubled or reordered
    assert sim.rx_overflows == 0
    assert sim.lost_bytes == 0
    assert session.max_in_flight_bytes <= 127
    assert sim.max_rx_used > 64  # the RX buffer really was kept busy


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=80), min_size=1, max_size=60),
    blocks=st.integers(min_value=1, max_value=4),
    rx=st.sampled_from([128, 256]),
)
def test_rx_buffer_never_overflows(lengths: list[int], blocks: int, rx: int) -> None:
    """Property: whatever the line lengths, character counting never over-fills RX."""

    def line(n: int, i: int) -> str:
        """A valid block of exactly n characters (a move for most lengths)."""
        if n <= 2:
            return "G0"
        if n == 3:
            return "G90"
        if n < 9:
            return "G0X" + "0" * (n - 3)
        return f"G1X{i % 9}F" + "0" * (n - 9) + "6000"

    lines = [line(n, i) for i, n in enumerate(lengths)]
    assert all(len(x) == max(n, 2) for x, n in zip(lines, lengths, strict=True))

    async def run() -> None:
        async with GrblSim(speedup=20.0, planner_blocks=blocks, rx_size=rx) as sim:  # RX fills
            async with open_device(ctx(sim.path, **{"grbl": {"rx_buffer": "auto"}})) as dev:
                job = await dev.run_job(program(lines))
                session: Any = dev.session
            assert job.state == JobState.COMPLETED, job.error
            assert sim.rx_overflows == 0
            assert sim.max_rx_used <= rx - 1
            assert session.max_in_flight_bytes <= rx - 1
            assert [x for x in sim.executed if x != "$I"] == [x.upper() for x in lines]

    asyncio.run(asyncio.wait_for(run(), 20))


async def test_rx_buffer_is_kept_nearly_full_but_never_over(grbl_factory: Any) -> None:
    # one planner block and short lines of ~5 ms moves: GRBL's RX is the only buffer left
    sim: GrblSim = await grbl_factory(speedup=5.0, planner_blocks=1)
    lines = ["G1X0Y0F6000", *(f"G1X{i % 2}Y{i % 3}" for i in range(200))]
    async with open_device(ctx(sim.path, dialect="grbl")) as dev:
        job = await dev.run_job(program(lines))
        session: Any = dev.session
    assert job.state == JobState.COMPLETED, job.error
    assert sim.rx_overflows == 0
    assert session.max_in_flight_bytes >= 120  # the window was used ...
    assert sim.max_rx_used > 100  # ... and really sat in GRBL's RX, up to the last byte
    assert sim.executed[1:] == lines


async def test_settings_and_eeprom_lines_go_ping_pong(grbl_factory: Any) -> None:
    sim: GrblSim = await grbl_factory(speedup=500.0, eeprom_write_time=0.02)
    lines = [*grbl_job(200, seed=2), "$110=2500", *grbl_job(100, seed=3), "G10L2P1X0Y0", "G28.1", *grbl_job(50, seed=4)]
    async with open_device(ctx(sim.path, dialect="grbl")) as dev:
        job = await dev.run_job(program(lines))
    assert job.state == JobState.COMPLETED, job.error
    assert sim.errors == []  # the $ line waited for Idle: no error:8
    assert sim.lost_bytes == 0  # nothing arrived during an EEPROM write
    assert sim.executed[1:] == lines
    assert sim.settings.values[110] == 2500


async def test_ping_pong_mode(grbl_factory: Any) -> None:
    sim: GrblSim = await grbl_factory(speedup=math.inf)
    lines = grbl_job(300, seed=5)
    async with open_device(ctx(sim.path, **{"grbl": {"streaming": "ping_pong"}})) as dev:
        job = await dev.run_job(program(lines))
        session: Any = dev.session
    assert job.state == JobState.COMPLETED
    assert sim.executed[1:] == lines
    assert sim.max_rx_used <= max(len(x) for x in lines) + 1  # one line at a time
    assert session.max_in_flight_bytes <= max(len(x) for x in lines) + 1


async def test_error_mid_job_halts_with_the_line_and_holds(grbl_factory: Any) -> None:
    sim: GrblSim = await grbl_factory(speedup=200.0)
    lines = grbl_job(1000, seed=6)
    bad = 400
    sim.fail_lines[lines[bad]] = 33
    pts = points("state", "job.state", "job.error", "job.error_code")
    values = Values(pts)
    async with open_device(ctx(sim.path, pts)) as dev, subscribed(dev, values):
        job = await dev.run_job(program(lines))
        assert job.state == JobState.FAILED
        assert job.error_code == 33
        assert job.error == f"line {bad + 1} {lines[bad]!r} was rejected: error:33 (motion target is invalid)"
        assert job.next < bad + 1 + 127 // 10  # stopped streaming at once: at most an RX buffer behind
        await until(lambda: values.values.get("state", "").startswith("Hold"), what="feed hold after the error")
        await until(lambda: values.values.get("job_state") == "failed" and values.values.get("job_error_code") == 33,
                    what="the failure published")
    assert len(sim.executed) - 1 < job.next  # lines behind the bad one were never all sent


async def test_soft_limit_alarm_mid_job_fails_and_publishes_the_alarm(grbl_factory: Any) -> None:
    sim: GrblSim = await grbl_factory(speedup=1000.0)
    lines = [*grbl_job(300, seed=7), "G0X400", *grbl_job(300, seed=8)]
    pts = points("state", "alarm_code", "alarm_text", "job.state", "job.error")
    values = Values(pts)
    async with open_device(ctx(sim.path, pts)) as dev, subscribed(dev, values):
        job = await dev.run_job(program(lines))
        assert job.state == JobState.FAILED
        assert job.error.startswith("ALARM:2 (soft limit: the target is outside the machine travel) near line")
        await until(lambda: values.values.get("alarm_code") == 2, what="alarm published")
        assert values.values["state"] == "Alarm"
        assert values.values["alarm_text"] == "soft limit: the target is outside the machine travel"
        sent = job.next
        with pytest.raises(JobRejected, match="not Idle"):
            dev.start_job(Job(program(["G0X1"])))
        dev.realtime(b"\x18")  # the operator resets and unlocks
        await until(lambda: values.values.get("state") == "Alarm" and dev.job is job, what="reset seen")
        assert (await dev.command("$X")).ok  # FIFO with the stream: a job line queued meanwhile went first
        assert job.next == sent  # nothing more went out
        await until(lambda: values.values.get("state") == "Idle" and values.values.get("alarm_code") == 0,
                    what="alarm cleared")
        again = await dev.run_job(program(["G0X1Y1"]))
        assert again.state == JobState.COMPLETED


async def test_reset_banner_mid_job_fails_cleanly_and_the_device_goes_on(grbl_factory: Any) -> None:
    sim: GrblSim = await grbl_factory(speedup=300.0)
    lines = grbl_job(3000, seed=9)
    async with open_device(ctx(sim.path)) as dev:
        job = Job(program(lines))
        dev.start_job(job)
        await until(lambda: job.acked > 500, what="half way")
        sim.reset()
        await asyncio.wait_for(asyncio.shield(job.done), 5)
        assert job.state == JobState.FAILED
        assert job.error.startswith("the machine reset (banner \"Grbl 1.1h ['$' for help]\") after")
        sent = job.next
        assert (await dev.command("$I")).ok  # FIFO with the stream: a line queued after the reset goes first
        assert job.next == sent  # not one line more after the reset
        executed = len(sim.executed)
        again = await dev.run_job(program(grbl_job(50, seed=10)))
        assert again.state == JobState.COMPLETED
        assert len(sim.executed) == executed + 50


async def test_pause_resume_and_cancel(grbl_factory: Any) -> None:
    sim: GrblSim = await grbl_factory(speedup=50.0)
    lines = grbl_job(400, seed=11)
    pts = points("state", "job.state")
    values = Values(pts)
    async with open_device(ctx(sim.path, pts)) as dev, subscribed(dev, values):
        job = Job(program(lines))
        dev.start_job(job)
        await until(lambda: job.acked > 20, what="running")
        dev.pause()
        await until(lambda: values.values.get("state") == "Hold:0" and values.values.get("job_state") == "paused",
                    what="held")
        held = job.acked
        reports = sim.status_reports
        await until(lambda: sim.status_reports >= reports + 2, what="two more status reports while held")
        assert job.acked <= held + 30  # held: the planner and RX may fill up, no more
        dev.resume()
        await until(lambda: job.acked > held + 20, what="running again")
        await dev.cancel()
        assert job.state == JobState.CANCELLED
        await until(lambda: values.values.get("state") == "Idle", what="idle after cancel")
        assert sim.alarm is None  # held before the reset: position kept, no ALARM:3
        again = await dev.run_job(program(grbl_job(20, seed=12)))
        assert again.state == JobState.COMPLETED


@pytest.mark.parametrize("policy", ["fail", "resume"])
async def test_watchdog_resynchronises_after_a_lost_ok(grbl_factory: Any, policy: str) -> None:
    sim: GrblSim = await grbl_factory(speedup=math.inf)
    lines = grbl_job(200, seed=13)
    async with open_device(ctx(sim.path, ack_timeout=0.5, lost_ack=policy)) as dev:
        job = Job(program(lines))
        sim.drop_ok(1)
        dev.start_job(job)
        await asyncio.wait_for(asyncio.shield(job.done), 10)
    if policy == "fail":
        assert job.state == JobState.FAILED
        assert "acknowledgement lost: the machine is Idle with empty buffers, but 1 line(s)" in job.error
    else:
        assert job.state == JobState.COMPLETED
        assert sim.executed[1:] == lines


async def test_watchdog_waits_for_a_busy_machine(grbl_factory: Any) -> None:
    sim: GrblSim = await grbl_factory(speedup=1.0, planner_blocks=1)
    # One slow move (0.6 s) holds the acks back longer than ack_timeout: Run means wait.
    lines = ["G1X10F1000", "G1X11", "G1X12"]
    async with open_device(ctx(sim.path, ack_timeout=0.25)) as dev:
        job = await dev.run_job(program(lines))
    assert job.state == JobState.COMPLETED


async def test_a_silent_machine_fails_the_job_and_the_device(grbl_factory: Any) -> None:
    sim: GrblSim = await grbl_factory(speedup=math.inf)
    async with open_device(ctx(sim.path, ack_timeout=0.4, silence_timeout=1.0)) as dev:
        job = Job(program(grbl_job(500, seed=14)))
        dev.start_job(job)
        await until(lambda: job.acked > 10, what="running")
        sim.stall()
        with pytest.raises(DeviceUnavailable, match=r"machine silent|no status report"):
            await asyncio.wait_for(dev.subscribe(lambda r: None), 5)
        assert job.state == JobState.FAILED
        assert "silent" in job.error


async def test_unplugged_port_ends_the_subscription_and_reopens(grbl_factory: Any, tmp_path: Any) -> None:
    link = str(tmp_path / "ttyCNC")
    sim: GrblSim = await grbl_factory(speedup=math.inf, link=link)
    async with open_device(ctx(link)) as dev:
        job = Job(program(grbl_job(100000, seed=15)))
        dev.start_job(job)
        await until(lambda: job.acked > 100, what="running")
        sim.unplug()
        with pytest.raises(DeviceUnavailable, match=r"serial port .* (failed|closed)"):
            await asyncio.wait_for(dev.subscribe(lambda r: None), 5)
        assert job.state == JobState.FAILED
        assert job.error.startswith("connection lost")
    with pytest.raises(DeviceUnavailable, match=r"cannot open serial port"):
        async with open_device(ctx(link)):
            pass
    sim.replug()
    async with open_device(ctx(link)) as dev:
        assert (await dev.run_job(program(["G0X1"]))).state == JobState.COMPLETED


async def test_homing_is_silent_but_not_a_lost_machine(grbl_factory: Any) -> None:
    # $H takes 0.5 s of simulated time at speedup 0.25: 2 s without a status report
    sim: GrblSim = await grbl_factory(speedup=0.25, homing=True)
    async with open_device(ctx(sim.path, dialect="grbl", silence_timeout=1.0)) as dev:
        reply = await dev.command("$H", timeout=10)
        assert reply.ok
        assert not dev.closed.is_set()


async def test_m30_completes_the_job_once_its_motion_is_over_and_nothing_after_it_is_sent(grbl_factory: Any) -> None:
    """Issue 11 §2: GRBL has no job, but a program cellctl streams ends with M2/M30, which
    GRBL runs only once the planner is empty: its ok is the program's real end."""
    sim: GrblSim = await grbl_factory(speedup=20.0)
    lines = ["G21G90", "G1X100Y100F3000", "G1X150Y100F600", "M30", "G0X10", "G0X20"]
    prog = program(lines, name="end.nc")
    assert (prog.end_word, prog.lines_after_end, len(prog)) == ("M30", 2, 4)
    async with open_device(ctx(sim.path)) as dev:
        job = await dev.run_job(prog)
        at_end = sim.current_position()
    assert job.state == JobState.COMPLETED, job.error
    assert at_end[:2] == pytest.approx((150.0, 100.0)), "completed only once the last move was over"
    assert sim.executed[-1] == "M30"
    assert "G0X10" not in sim.executed
    assert job.summary()["program_end"] == "M30"
    assert job.summary()["lines_after_end"] == 2
