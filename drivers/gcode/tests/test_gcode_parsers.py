"""The wire parsers against hostile input: values no point type can carry become
per-field `Bad` values with a reason, and no input at all raises out of a parser
(hypothesis). Pure functions, no I/O."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from cellctl_gcode import grbl, marlin
from cellctl_gcode.bounds import INT64_MAX, Bad, check
from cellctl_gcode.device import GcodeDevice
from cellctl_gcode.grbl_session import GrblSession
from cellctl_gcode.marlin_session import MarlinSession
from cellctl_gcode.session import FieldCache
from gcode_testutil import ctx, points
from hypothesis import given, settings
from hypothesis import strategies as st

from cellctl.driver import Reading

HUGE = "99999999999999999999999"
ISSUE_LINE = f"<Idle|MPos:0.000,0.000,0.000|Bf:15,{HUGE}|FS:0,0>"


def _bounded(value: Any) -> bool:
    """What a parser may hand on: Bad, str, bool, an int64, or a finite float."""
    if isinstance(value, (Bad, str, bool)) or value is None:
        return True
    if isinstance(value, int):
        return -(2**63) <= value <= INT64_MAX
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple):
        return all(_bounded(v) for v in value)
    return False


# -- regressions (issue 16 item 1) -------------------------------------------------------


def test_a_bf_wider_than_int64_is_a_field_error_and_the_rest_of_the_report_is_used() -> None:
    rep = grbl.parse_status(ISSUE_LINE)
    assert rep is not None
    assert rep.state == "Idle"
    assert rep.mpos == (0.0, 0.0, 0.0)
    assert rep.feed == 0.0
    assert rep.planner_free is None
    assert rep.rx_free is None
    assert set(rep.errors) == {"buffer.planner", "buffer.rx"}
    assert HUGE in rep.errors["buffer.rx"]
    assert "int64" in rep.errors["buffer.rx"]


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("<Run|MPos:1e999,0,0>", {"mpos.x", "mpos.y", "mpos.z"}),
        ("<Run|WPos:0,0,nan>", {"wpos.x", "wpos.y", "wpos.z"}),
        (f"<Run|Ln:{HUGE}>", {"line"}),
        ("<Run|FS:inf,0>", {"feed", "spindle"}),
        (f"<Run|Ov:100,{HUGE},100>", {"ov.feed", "ov.rapid", "ov.spindle"}),
    ],
)
def test_every_numeric_status_field_is_bounded(text: str, fields: set[str]) -> None:
    rep = grbl.parse_status(text)
    assert rep is not None
    assert set(rep.errors) == fields
    assert _bounded((rep.mpos, rep.wpos, rep.wco, rep.planner_free, rep.rx_free, rep.line, rep.feed, rep.spindle))


def test_marlin_reports_bound_their_numbers() -> None:
    temps = marlin.parse_temperatures(f"ok T:{HUGE}9{'9' * 400} /210.0 B:60.0 /60.0 @:{HUGE} B@:0")
    assert isinstance(temps["temp.hotend"], Bad)
    assert temps["target.hotend"] == 210.0
    assert temps["temp.bed"] == 60.0
    assert isinstance(temps["power.hotend"], Bad)
    assert "int64" in temps["power.hotend"].reason
    pos = marlin.parse_position(f"X:{'9' * 400}.0 Y:1.00 Z:2.00 E:0.00 Count X:0")
    assert isinstance(pos["pos.x"], Bad)
    assert pos["pos.y"] == 1.0
    sd = marlin.parse_sd(f"SD printing byte {'9' * 400}/3")  # was OverflowError in the division
    assert sd is not None
    assert isinstance(sd["sd.byte"], Bad)
    assert isinstance(sd["sd.progress"], Bad)
    assert marlin.parse_resend(f"Resend: {HUGE}") is None
    assert marlin.parse_ok_number(f"ok N{HUGE} P15 B3") is None
    assert grbl.parse_opt(f"[OPT:V,{HUGE},128]") == (None, 128)


def test_the_field_cache_never_publishes_an_unencodable_value() -> None:
    pts = points("buffer.rx", "feed", "alarm_code", "temp.hotend")
    cache = FieldCache(pts)
    got: list[Reading] = []
    cache.sink = got.append
    cache.update({"buffer.rx": 10**30, "feed": math.inf, "alarm_code": 3, "temp.hotend": Bad("sensor says no")})
    cache.flush()
    (reading,) = got
    assert reading.errors is not None
    by_index = dict(zip(reading.indexes or [], reading.values, strict=True))
    assert set(reading.errors) == {0, 1, 3}
    assert "int64" in reading.errors[0]
    assert "finite" in reading.errors[1]
    assert reading.errors[3] == "sensor says no"
    assert by_index[2] == 3


@pytest.mark.parametrize(
    ("value", "kind", "ok"),
    [(1, "int", True), (2**63, "int", False), (-(2**63), "int", True), (1.0, "int", True), (1.5, "int", False),
     (math.nan, "float", False), (-math.inf, "float", False), (1e308, "float", True), (5, "float", True),
     (10**30, "float", False), (True, "int", False), ("x", "string", True), (False, "bool", True)],
)
def test_check_by_point_type(value: Any, kind: str, ok: bool) -> None:
    assert (check(value, kind) is None) == ok


# -- properties (issue 16 item 9): no input raises out of a parser -----------------------

_num = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet="0123456789.-+eEinfa", max_size=30),
    st.text(max_size=8),
)
_status_field = st.one_of(
    st.builds(lambda k, vs: f"{k}:{','.join(vs)}",
              st.sampled_from(["MPos", "WPos", "WCO", "Bf", "Ln", "FS", "F", "Ov", "Pn", "A", "Zz", ""]),
              st.lists(_num, min_size=0, max_size=8)),
    st.text(max_size=20),
)
_status = st.builds(
    lambda state, fields: "<" + "|".join([state, *fields]) + ">",
    st.one_of(st.sampled_from(["Idle", "Run", "Hold:0", "Alarm", "Door:1", "Home"]), st.text(max_size=20)),
    st.lists(_status_field, max_size=8),
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_status, st.text(max_size=200)))
def test_grbl_status_parser_never_raises_and_returns_only_bounded_values(text: str) -> None:
    rep = grbl.parse_status(text)
    if rep is not None:
        assert _bounded((rep.mpos, rep.wpos, rep.wco, rep.planner_free, rep.rx_free, rep.line, rep.feed,
                         rep.spindle, rep.overrides))
    grbl.parse_opt(text)


_marlin_line = st.one_of(
    st.builds(lambda pre, parts: pre + " ".join(parts), st.sampled_from(["", "ok ", " "]),
              st.lists(st.builds(lambda k, v, t: f"{k}:{v}" + (f" /{t}" if t else ""),
                                 st.sampled_from(["T", "T0", "T3", "T9", "B", "C", "P", "@", "B@", "X", "Y", "Z", "E"]),
                                 _num, st.one_of(st.none(), _num)), max_size=8)),
    st.builds(lambda a, b: f"SD printing byte {a}/{b}", _num, _num),
    st.builds(lambda p, n: f"{p}{n}", st.sampled_from(["Resend: ", "rs N", "ok N", "Error:Last Line: "]), _num),
    st.text(max_size=200),
)


@settings(max_examples=400, deadline=None)
@given(_marlin_line)
def test_marlin_parsers_never_raise_and_return_only_bounded_values(text: str) -> None:
    for parsed in (marlin.parse_temperatures(text), marlin.parse_position(text), marlin.parse_sd(text) or {}):
        assert all(_bounded(v) for v in parsed.values()), parsed
    for n in (marlin.parse_resend(text), marlin.parse_ok_number(text), marlin.parse_last_line(text)):
        assert n is None or _bounded(n)
    marlin.is_temperature_report(text)
    marlin.is_position_report(text)
    marlin.parse_m115(text, marlin.Firmware())
    marlin.kill_cause([text])
    marlin.command_word(text.encode("utf-8", "replace"))


async def _feed(dialect: str, lines: list[str]) -> list[Reading]:
    """Lines into a session whose device has a closed link: nothing is written anywhere."""
    fields = ("state", "buffer.rx", "mpos.x", "wpos.x", "alarm_code", "job.error_code") if dialect == "grbl" else (
        "state", "temp.hotend", "power.hotend", "sd.byte", "sd.progress", "pos.x", "alarm_code")
    dev = GcodeDevice(ctx("/dev/null", points(*fields)))
    dev.session = GrblSession(dev) if dialect == "grbl" else MarlinSession(dev)
    got: list[Reading] = []
    dev.fields.sink = got.append
    for line in lines:
        dev.session.on_line(line)
        dev.fields.flush()
    return got


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["grbl", "marlin"]), st.lists(st.one_of(_status, _marlin_line, st.text(min_size=1, max_size=80)),
                                                      min_size=1, max_size=10))
def test_a_session_takes_any_line_and_publishes_only_bounded_values(dialect: str, lines: list[str]) -> None:
    lines = [t for t in lines if t]
    for reading in asyncio.run(_feed(dialect, lines)):
        assert all(_bounded(v) for v in reading.values)


@pytest.mark.parametrize(
    ("line", "end"),
    [(b"M30", "M30"), (b"M2", "M2"), (b"M02", "M2"), (b"m30", "M30"), (b"G0X1M30", "M30"), (b"M030", "M30"),
     (b"M3S1000", None), (b"M20", None), (b"M300", None), (b"M2.5", None), (b"G1X2", None), (b"G30", None)],
)
def test_program_end_is_m2_or_m30_as_a_word(line: bytes, end: str | None) -> None:
    assert grbl.program_end(line) == end


def test_a_grbl_program_ends_at_its_first_m2_or_m30() -> None:
    from cellctl_gcode.program import Program

    program = Program.from_lines(["G21 G90", "G0 X1", "M30 ; end", "", "G0 X9", "(tail)", "M2"], dialect="grbl", name="p")
    assert program.lines() == ["G21G90", "G0X1", "M30"]
    assert (program.end_word, program.lines_after_end) == ("M30", 2)  # G0X9 and M2: not sent
    marlin_prog = Program.from_lines(["G1 X1", "M30 old.gco", "G1 X2"], dialect="marlin", name="p")
    assert len(marlin_prog) == 3, "Marlin's M30 deletes an SD file: not a program end"
    assert marlin_prog.end_word is None


class _Wire:
    """A link that keeps what the session writes (no port, no firmware)."""

    is_open = True

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    write_realtime = write_urgent = write

    def close(self, reason: str = "") -> None:
        self.is_open = False


async def test_marlin_after_start_numbered_lines_wait_for_a_marker_the_firmware_may_already_hold() -> None:
    """Lines written before a reset reach the new firmware after its `start`, each answered
    `Resend: 1`. The first numbered line is a marker; a later request for line 2 says the
    firmware holds the marker (its ok got lost): it is never sent again, the queue goes on."""
    from cellctl.testing.waiting import async_wait_until

    dev = GcodeDevice(ctx("/dev/null", points("state")))
    wire = _Wire()
    dev.link = wire  # type: ignore[assignment]
    session = MarlinSession(dev)
    dev.session = session
    session.on_line("start")
    cmd = session.submit("G28")
    for _ in range(2):  # two stale lines answered by the new firmware
        session.on_line("Error:Line Number is not Last Line Number+1, Last Line: 0")
        session.on_line("Resend: 1")
    await async_wait_until(lambda: any(b"N1 M105*" in w for w in wire.out), timeout=5, what="the marker")
    assert not any(b"G28" in w for w in wire.out), "nothing numbered goes with the marker"
    session.on_line("Error:Line Number is not Last Line Number+1, Last Line: 1")  # a stale line after it
    session.on_line("Resend: 2")
    session.on_line("ok")  # that request's own ok (ok_after_resend)
    await async_wait_until(lambda: any(b"N2 G28*" in w for w in wire.out), timeout=5, what="G28 as line 2")
    assert sum(b"N1 M105*" in w for w in wire.out) == 1, "the held marker is not sent again"
    session.on_line("ok")
    assert (await asyncio.wait_for(cmd.future, 5)).ok
