"""GRBL 1.1 wire protocol, without I/O: real-time bytes, status report parsing, message
classes, error and alarm texts, and which lines must not be character-counted."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from cellctl_gcode.bounds import OutOfRange, shown, small_int, wire_float, wire_int

# Real-time commands: single bytes, no newline, act at once, never answered with ok.
STATUS: Final = b"?"
CYCLE_START: Final = b"~"
FEED_HOLD: Final = b"!"
SOFT_RESET: Final = b"\x18"
SAFETY_DOOR: Final = b"\x84"
JOG_CANCEL: Final = b"\x85"
FEED_OV_RESET: Final = b"\x90"
FEED_OV_PLUS_10: Final = b"\x91"
FEED_OV_MINUS_10: Final = b"\x92"
RAPID_OV_RESET: Final = b"\x95"
SPINDLE_OV_RESET: Final = b"\x99"

BANNER_RE: Final = re.compile(r"^Grbl(?:HAL)?\s+(\S+)\s*\[.*\]\s*$", re.IGNORECASE)

# In our own words; numbers from GRBL 1.1.
ERROR_TEXTS: Final[dict[int, str]] = {
    1: "a word has no command letter",
    2: "a number is missing or malformed",
    3: "unknown or invalid $ command",
    4: "a value that must not be negative is negative",
    5: "homing is not enabled ($22)",
    6: "step pulse time must be at least 3 microseconds",
    7: "EEPROM read failed; defaults restored",
    8: "$ command only allowed when idle",
    9: "G-code locked during alarm or jog",
    10: "soft limits need homing enabled",
    11: "line too long for the line buffer",
    12: "setting would exceed the maximum step rate",
    13: "safety door is open",
    14: "build info or startup line too long",
    15: "jog target exceeds machine travel",
    16: "invalid jog command",
    17: "laser mode needs PWM output",
    20: "unsupported or invalid G-code command",
    21: "two commands of one modal group in a block",
    22: "feed rate not set",
    23: "command needs an integer value",
    24: "two commands in a block need axis words",
    25: "a word is repeated in the block",
    26: "command needs axis words and has none",
    27: "line number out of range",
    28: "command is missing a required value word",
    29: "work coordinate system not supported",
    30: "G53 needs G0 or G1",
    31: "axis words not used by any command in the block",
    32: "arc has no axis words in the selected plane",
    33: "motion target is invalid",
    34: "arc radius geometry error",
    35: "arc has no offsets in the selected plane",
    36: "unused value words in the block",
    37: "tool length offset not on the configured axis",
    38: "tool number above the maximum",
}

ALARM_TEXTS: Final[dict[int, str]] = {
    1: "hard limit triggered; position may be lost",
    2: "soft limit: the target is outside the machine travel",
    3: "reset while in motion; position may be lost",
    4: "probe not in the expected state before probing",
    5: "probe did not make contact",
    6: "homing failed: reset during the cycle",
    7: "homing failed: safety door opened",
    8: "homing failed: pull-off did not clear the limit switch",
    9: "homing failed: limit switch not found",
    10: "homing failed: second limit switch not found",
}

CRITICAL_ALARMS: Final = frozenset({1, 2})  # GRBL answers nothing but a reset afterwards

BUSY_STATES: Final = frozenset({"Run", "Jog", "Home", "Hold", "Door", "Check"})


def error_text(code: int) -> str:
    return ERROR_TEXTS.get(code, "unknown error")


def alarm_text(code: int) -> str:
    return ALARM_TEXTS.get(code, "unknown alarm")


class LineKind(IntEnum):
    """How a job line may be streamed."""

    STREAM = 0  # character counting is fine
    EEPROM = 1  # writes EEPROM (serial interrupts off): send alone, wait for its ok
    SETTING = 2  # a $ command: as EEPROM, and only once the machine is idle


_GL_WORD = re.compile(r"([GL])([-+]?\d*\.?\d+)")


def line_kind(line: bytes) -> LineKind:
    """Classify a compacted line (no spaces or comments, any case)."""
    if line[:1] == b"$":
        if line[:3].upper() == b"$J=":
            return LineKind.STREAM
        return LineKind.SETTING
    if b"." in line or b"10" in line:
        words = _GL_WORD.findall(line.decode("ascii", "replace").upper())
        gs = {float(v) for k, v in words if k == "G"}
        ls = {float(v) for k, v in words if k == "L"}
        if 28.1 in gs or 30.1 in gs or (10.0 in gs and ls & {2.0, 20.0}):
            return LineKind.EEPROM
    return LineKind.STREAM


_PROGRAM_END = re.compile(rb"M0*(2|30)(?![\d.])", re.I)


def program_end(line: bytes) -> str | None:
    """`M2` or `M30` when a compacted line ends the program (RS274/NGC program end), else
    None. GRBL runs it only once the planner is empty, so its `ok` comes when the program's
    motion is over."""
    m = _PROGRAM_END.search(line)
    return f"M{m.group(1).decode()}" if m else None


def dwell_seconds(line: bytes) -> float:
    """Seconds a G4 line keeps the machine busy without acknowledging (0 if not a dwell)."""
    text = line.decode("ascii", "replace").upper()
    if not re.search(r"G0*4(?![\d.])", text):
        return 0.0
    m = re.search(r"P([-+]?\d*\.?\d+)", text)
    return float(m.group(1)) if m else 0.0


_PAREN = re.compile(r"\([^)]*\)")


def compact(line: str) -> str:
    """A line as GRBL will buffer it: comments and all whitespace removed."""
    line = line.split(";", 1)[0]
    if "(" in line:
        line = _PAREN.sub("", line)
    return "".join(line.split())


@dataclass(slots=True)
class StatusReport:
    """One `<...>` report. Fields GRBL left out are None (keep the last known value);
    a field whose numbers no point can carry is None too, with the driver fields it
    feeds named in `errors` (field name -> reason)."""

    state: str
    mpos: tuple[float, ...] | None = None
    wpos: tuple[float, ...] | None = None
    wco: tuple[float, ...] | None = None
    planner_free: int | None = None
    rx_free: int | None = None
    line: int | None = None
    feed: float | None = None
    spindle: float | None = None
    pins: str = ""
    overrides: tuple[int, int, int] | None = None
    accessories: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def base_state(self) -> str:
        return self.state.split(":", 1)[0]


AXES: Final = "xyzabc"
MAX_AXES: Final = len(AXES)
MAX_STATE: Final = 16  # the longest real state word is "Hold:0"/"Door:3"; a longer one is noise


def _floats(text: str) -> tuple[float, ...]:
    parts = text.split(",")
    if len(parts) > MAX_AXES:
        raise ValueError(f"more than {MAX_AXES} axes")
    return tuple(wire_float(v) for v in parts)


def _ints(text: str, n: int) -> tuple[int, ...]:
    parts = text.split(",")
    if len(parts) != n:
        raise ValueError(f"expected {n} values")
    return tuple(wire_int(v) for v in parts)


MAX_LETTERS: Final = 16  # Pn: and A: are a few letters (XYZABCPDHRS, SCFM)


def _letters(value: str) -> str:
    if len(value) > MAX_LETTERS:
        raise OutOfRange(f"value {shown(value)} longer than {MAX_LETTERS} characters")
    return value


def _fields_of(key: str, value: str) -> list[str]:
    """The driver fields a status field feeds (named in errors when it is out of range)."""
    if key in ("MPos", "WPos", "WCO"):
        prefix = {"MPos": "mpos", "WPos": "wpos", "WCO": "wco"}[key]
        n = min(MAX_AXES, value.count(",") + 1)
        return [f"{prefix}.{a}" for a in AXES[:n]]
    return {
        "Bf": ["buffer.planner", "buffer.rx"], "Ln": ["line"], "FS": ["feed", "spindle"], "F": ["feed"],
        "Ov": ["ov.feed", "ov.rapid", "ov.spindle"], "Pn": ["pins"], "A": ["accessories"],
    }.get(key, [])


def parse_status(text: str) -> StatusReport | None:
    """Parse ``<Idle|MPos:0.000,0.000,0.000|FS:0,0>``; None if it is not a status report.

    Fields may come in any order and any may be missing; unknown fields are kept in
    `extra`. A malformed field makes the whole report None (line noise); a well-formed
    number no point can carry (wider than int64, not finite) leaves its field None and
    names the fields it feeds in `errors`. Never raises."""
    if len(text) < 3 or text[0] != "<" or text[-1] != ">":
        return None
    parts = text[1:-1].split("|")
    state = parts[0]
    if not state or not state[0].isalpha() or len(state) > MAX_STATE or not state.isascii():
        return None
    rep = StatusReport(state=state)
    try:
        for part in parts[1:]:
            key, sep, value = part.partition(":")
            if not sep:
                rep.extra[key] = ""
                continue
            try:
                _parse_field(rep, key, value)
            except OutOfRange as exc:
                for name in _fields_of(key, value):
                    rep.errors[name] = str(exc)
    except ValueError:
        return None
    return rep


def _parse_field(rep: StatusReport, key: str, value: str) -> None:
    if key == "MPos":
        rep.mpos = _floats(value)
    elif key == "WPos":
        rep.wpos = _floats(value)
    elif key == "WCO":
        rep.wco = _floats(value)
    elif key == "Bf":
        rep.planner_free, rep.rx_free = _ints(value, 2)
    elif key == "Ln":
        rep.line = wire_int(value)
    elif key == "FS":
        feed, speed = value.split(",")
        rep.feed, rep.spindle = wire_float(feed), wire_float(speed)
    elif key == "F":
        rep.feed = wire_float(value)
    elif key == "Pn":
        rep.pins = _letters(value)
    elif key == "Ov":
        f, r, s = _ints(value, 3)
        rep.overrides = (f, r, s)
    elif key == "A":
        rep.accessories = _letters(value)
    else:
        rep.extra[key] = value


def parse_opt(text: str) -> tuple[int | None, int | None]:
    """``[OPT:V,15,128]`` -> (planner blocks, rx buffer size); None where absent."""
    body = text[5:-1] if text.startswith("[OPT:") and text.endswith("]") else ""
    parts = body.split(",")
    planner = small_int(parts[1], -1) if len(parts) > 1 else -1
    rx = small_int(parts[2], -1) if len(parts) > 2 else -1
    return (planner if planner >= 0 else None), (rx if rx >= 0 else None)
