"""Pure protocol code: status reports, line classes, Marlin framing and reports, job
programs, configuration and the plugin's load-time checks. No I/O."""

from __future__ import annotations

import pytest
from cellctl_gcode import grbl, marlin
from cellctl_gcode.config import GcodeAddress, GcodeOptions
from cellctl_gcode.device import resolve_dialect
from cellctl_gcode.grbl import LineKind
from cellctl_gcode.plugin import plugin
from cellctl_gcode.program import FLAG_KIND_MASK, FLAG_WAITS, Program, ProgramError
from gcode_testutil import ctx, points
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cellctl.driver import PointSpec


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("<Idle|MPos:0.000,0.000,0.000|FS:0,0|WCO:1.000,2.000,3.000>",
         {"state": "Idle", "mpos": (0.0, 0.0, 0.0), "wco": (1.0, 2.0, 3.0), "feed": 0.0, "spindle": 0.0}),
        ("<Run|WPos:-1.5,2,3.25|Bf:12,90|F:500>",
         {"state": "Run", "wpos": (-1.5, 2.0, 3.25), "planner_free": 12, "rx_free": 90, "feed": 500.0}),
        ("<Hold:0|MPos:1,2,3,4|Ln:99|Pn:XZP|Ov:120,50,100|A:SFM>",
         {"state": "Hold:0", "mpos": (1.0, 2.0, 3.0, 4.0), "line": 99, "pins": "XZP",
          "overrides": (120, 50, 100), "accessories": "SFM"}),
        ("<Door:3|FS:10,1000|MPos:0,0,0|Zz:odd>", {"state": "Door:3", "feed": 10.0, "extra": {"Zz": "odd"}}),
        ("<Alarm>", {"state": "Alarm", "mpos": None, "pins": ""}),
    ],
)
def test_status_reports_parse_in_any_field_order(text: str, expect: dict[str, object]) -> None:
    rep = grbl.parse_status(text)
    assert rep is not None
    for key, value in expect.items():
        assert getattr(rep, key) == value, key


@pytest.mark.parametrize("text", ["<Idle|MPos:0,x,0>", "Idle|MPos:0,0,0", "<|MPos:1,2,3>", "<>", "<Idle|Bf:15>"])
def test_noise_is_not_a_status_report(text: str) -> None:
    assert grbl.parse_status(text) is None


@given(st.text(max_size=60))
def test_status_parser_never_raises(text: str) -> None:
    grbl.parse_status(text)
    grbl.parse_status(f"<{text}>")


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"G1X10F100", LineKind.STREAM),
        (b"$110=500", LineKind.SETTING),
        (b"$H", LineKind.SETTING),
        (b"$J=G91X1F100", LineKind.STREAM),
        (b"G10L2P1X0Y0", LineKind.EEPROM),
        (b"G10P1L20X0", LineKind.EEPROM),
        (b"G10L1P1Z5", LineKind.STREAM),
        (b"G28.1", LineKind.EEPROM),
        (b"G30.1", LineKind.EEPROM),
        (b"G28", LineKind.STREAM),
        (b"G1X10.1Y28.1", LineKind.STREAM),
    ],
)
def test_which_lines_must_go_ping_pong(line: bytes, kind: LineKind) -> None:
    assert grbl.line_kind(line) == kind


def test_grbl_compaction_and_program_checks() -> None:
    assert grbl.compact("G1 X10 (move) Y2 ; to the corner") == "G1X10Y2"
    text = "%\n; header\nG21 G90\n\nG1 X1 F100 (a)\n$110=900\nG4 P0.5\n%\n"
    prog = Program.from_text(text, dialect="grbl", name="t.nc")
    assert prog.lines() == ["G21G90", "G1X1F100", "$110=900", "G4P0.5"]
    assert [prog.source_line(i) for i in range(len(prog))] == [3, 5, 6, 7]
    assert prog.flags[2] & FLAG_KIND_MASK == LineKind.SETTING
    assert prog.flags[3] & FLAG_WAITS
    assert prog.bytes_total == sum(len(x) + 1 for x in prog.lines())
    with pytest.raises(ProgramError, match=r"job 'long.nc': line 2 is 81 characters long; GRBL's line buffer holds 80"):
        Program.from_text("G0\nG1X" + "1" * 78, dialect="grbl", name="long.nc")
    with pytest.raises(ProgramError, match=r"line 1 contains non-ASCII"):
        Program.from_text("G1 X1 Y2 ÄÖ", dialect="grbl", name="x")
    with pytest.raises(ProgramError, match=r"contains '\*'"):
        Program.from_text("M117 a*b", dialect="marlin", name="x")


def test_marlin_framing() -> None:
    assert marlin.checksum(b"N1 M115") == 39
    assert marlin.frame(1, b"M115") == b"N1 M115*39\n"
    assert marlin.command_word(b"g01 X1") == "G1"
    assert marlin.command_word(b"M109 S200") == "M109"
    prog = Program.from_text("M109 S200 ; heat\nG1 X1\n", dialect="marlin", name="p")
    assert prog.lines() == ["M109 S200", "G1 X1"]
    assert prog.flags[0] & FLAG_WAITS
    assert not prog.flags[1] & FLAG_WAITS


@given(st.integers(min_value=0, max_value=10**7), st.text(alphabet="GMXYZEF0123456789. -", max_size=70))
def test_marlin_frame_checksum_covers_the_number(n: int, cmd: str) -> None:
    framed = marlin.frame(n, cmd.encode())
    body, _, cs = framed.rstrip(b"\n").rpartition(b"*")
    assert int(cs) == marlin.checksum(body)
    assert body.startswith(b"N%d " % n)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        (" T:210.00 /215.00 B:60.00 /60.00 @:127 B@:0",
         {"temp.hotend": 210.0, "target.hotend": 215.0, "temp.bed": 60.0, "target.bed": 60.0,
          "power.hotend": 127, "power.bed": 0}),
        ("ok T:20.5 /0.0 B:21.0 /0.0 T0:20.5 /0.0 T1:19.0 /180.0 @:0 B@:0",
         {"temp.hotend": 20.5, "temp.tool0": 20.5, "temp.tool1": 19.0, "target.tool1": 180.0}),
        ("T:25.00 /0.00 B:25.00 /0.00 C:30.0 /40.0 @:0 B@:0 W:?", {"temp.chamber": 30.0, "target.chamber": 40.0}),
    ],
)
def test_marlin_temperatures(text: str, expect: dict[str, float]) -> None:
    assert marlin.is_temperature_report(text)
    got = marlin.parse_temperatures(text)
    for key, value in expect.items():
        assert got[key] == value, key


def test_marlin_reports_and_requests() -> None:
    assert marlin.parse_position("X:10.00 Y:-2.50 Z:0.30 E:1.20 Count X:800 Y:0 Z:120") == {
        "pos.x": 10.0, "pos.y": -2.5, "pos.z": 0.3, "pos.e": 1.2,
    }
    assert marlin.parse_sd("SD printing byte 50/200") == {
        "sd.printing": True, "sd.byte": 50, "sd.total": 200, "sd.progress": 0.25,
    }
    assert marlin.parse_sd("Not SD printing") == {"sd.printing": False}
    assert marlin.parse_sd("ok") is None
    assert marlin.parse_resend("Resend: 12") == 12
    assert marlin.parse_resend("rs N7") == 7
    assert marlin.parse_resend("rs 3") == 3
    assert marlin.parse_resend("Resending") is None
    assert marlin.parse_ok_number("ok N12 P15 B3") == 12
    assert marlin.parse_ok_number("ok T:20") is None
    fw = marlin.Firmware()
    assert marlin.parse_m115(
        "FIRMWARE_NAME:Marlin 2.1.2 (Jan 1 2024) SOURCE_CODE_URL:github.com/MarlinFirmware/Marlin "
        "PROTOCOL_VERSION:1.0 MACHINE_TYPE:Ender 3 EXTRUDER_COUNT:1 UUID:x", fw
    )
    assert marlin.parse_m115("Cap:AUTOREPORT_TEMP:1", fw)
    assert marlin.parse_m115("Cap:EMERGENCY_PARSER:0", fw)
    assert fw.name == "Marlin 2.1.2 (Jan 1 2024)"
    assert fw.info["MACHINE_TYPE"] == "Ender 3"
    assert fw.cap("AUTOREPORT_TEMP")
    assert not fw.cap("EMERGENCY_PARSER")
    assert marlin.kill_cause(["Error:Thermal Runaway, system stopped! Heater_ID: 0", "Error:Printer halted. kill() called!"]) == (2, "thermal runaway")
    assert marlin.kill_cause(["Error:Printer halted. kill() called!"])[0] == 1


def test_addresses_options_and_load_time_checks() -> None:
    with pytest.raises(ValidationError, match=r"unknown G-code field 'mpos\.q'; did you mean 'mpos\.z', 'mpos\.y', 'mpos\.x'"):
        GcodeAddress(field="mpos.q")
    with pytest.raises(ValidationError, match="status_interval"):
        GcodeOptions(status_interval=0.05)  # GRBL asks for at most 5 Hz
    with pytest.raises(ValidationError, match=r"starts with a dot"):
        GcodeOptions(job_suffixes=["nc"])
    with pytest.raises(ValidationError):
        GcodeOptions.model_validate({"grbl": {"rx_buffer": 16}})
    spec = PointSpec(0, "x", "string", "r", GcodeAddress(field="mpos.x"))
    assert plugin.check_point(spec) == "field mpos.x carries a float value, but the point is type string"
    spec = PointSpec(0, "s", "string", "rw", GcodeAddress(field="state"))
    assert plugin.check_point(spec) == "access rw on field state, which is read-only"
    spec = PointSpec(0, "acked", "float", "r", GcodeAddress(field="job.lines_acked"))
    assert plugin.check_point(spec) is None  # an int field may feed a float point


def test_dialect_from_profile_fields_and_options() -> None:
    assert resolve_dialect(GcodeOptions(), ["state", "mpos.x"]) == "grbl"
    assert resolve_dialect(GcodeOptions(), ["state", "temp.bed"]) == "marlin"
    assert resolve_dialect(GcodeOptions(), ["state", "job.progress"]) is None  # detect at connect
    assert resolve_dialect(GcodeOptions(dialect="marlin"), ["state"]) == "marlin"
    with pytest.raises(ValueError, match=r"mix GRBL-only and Marlin-only fields: mpos\.x \(grbl\), temp\.bed \(marlin\)"):
        resolve_dialect(GcodeOptions(), ["mpos.x", "temp.bed"])
    with pytest.raises(ValueError, match=r"dialect 'marlin' does not report field\(s\) mpos\.x"):
        resolve_dialect(GcodeOptions(dialect="marlin"), ["mpos.x"])
    lines = plugin.plan_summary(ctx("/dev/ttyUSB0", points("state", "mpos.x"), job_dir="/tmp/jobs"))
    assert lines[0] == "serial /dev/ttyUSB0 at 115200 baud, dialect grbl"
    assert any("character counting" in x for x in lines)
    assert lines[-1].startswith("jobs from /tmp/jobs")
