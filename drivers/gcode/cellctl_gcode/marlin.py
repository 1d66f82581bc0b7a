"""Marlin 2.x wire protocol, without I/O: line framing with numbers and checksums, and
parsers for the reports (temperatures, position, SD status, M115 capabilities)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from cellctl_gcode.bounds import Bad, wire_float, wire_int

# A report value: a number, or Bad when the number is one no point can carry.
Value = float | int | bool | Bad

MAX_LINE: Final = 95  # MAX_CMD_SIZE 96 including the terminator

# Commands that keep the firmware busy without an ok for a long time (and, with
# HOST_KEEPALIVE, with `busy:` messages): the watchdog waits for them instead of probing.
BLOCKING: Final = frozenset({"M109", "M190", "M191", "G28", "G29", "M400", "G4", "M0", "M1", "M226", "M600", "M303", "G34", "G33"})
KILL_CAUSES: Final[tuple[tuple[str, int, str], ...]] = (
    # (text to look for, alarm code, meaning); the first match wins
    ("thermal runaway", 2, "thermal runaway"),
    ("maxtemp", 3, "temperature above MAXTEMP"),
    ("mintemp", 4, "temperature below MINTEMP"),
    ("heating failed", 5, "heating failed"),
    ("watchdog", 6, "watchdog reset"),
    ("m112", 8, "emergency stop (M112)"),
    ("emergency", 8, "emergency stop (M112)"),
)
ALARM_TEXTS: Final[dict[int, str]] = {
    1: "printer halted: kill() called",
    2: "thermal runaway",
    3: "temperature above MAXTEMP",
    4: "temperature below MINTEMP",
    5: "heating failed",
    6: "watchdog reset",
    7: "printer stopped due to errors (M999 to restart)",
    8: "emergency stop (M112)",
}

_TEMP = re.compile(r"(?<![A-Za-z@])(T\d?|B|C|P|A|R)\s*:\s*(-?\d+(?:\.\d+)?)(?:\s*/\s*(-?\d+(?:\.\d+)?))?", re.ASCII)
_POWER = re.compile(r"(B|C|T\d?)?@\s*:\s*(\d+)", re.ASCII)
_POS = re.compile(r"\b([XYZE])\s*:\s*(-?\d+(?:\.\d+)?)", re.ASCII)
_SD = re.compile(r"SD printing byte (\d+)\s*/\s*(\d+)", re.ASCII)
_RESEND = re.compile(r"^(?:Resend|rs)\s*:?\s*N?(\d+)", re.IGNORECASE | re.ASCII)
_LAST_LINE = re.compile(r"Last Line\s*:\s*(\d+)", re.IGNORECASE | re.ASCII)
_OK_N = re.compile(r"^ok\s+N(\d+)", re.ASCII)


def checksum(data: bytes) -> int:
    """XOR of every byte (of ``N<n> <command>``)."""
    cs = 0
    for b in data:
        cs ^= b
    return cs


def frame(number: int, command: bytes) -> bytes:
    """``N<n> <command>*<checksum>\\n``."""
    body = b"N%d %s" % (number, command)
    return b"%s*%d\n" % (body, checksum(body))


def command_word(command: bytes) -> str:
    """``G28``, ``M109`` ... the first word, upper case, leading zeros dropped (G01 -> G1)."""
    m = re.match(rb"\s*([GMT])0*(\d+)", command, re.IGNORECASE)
    if not m:
        return ""
    return (m.group(1) + m.group(2)).decode("ascii").upper()


def clean(line: str) -> str:
    """A line as it is sent: the ``;`` comment and surrounding whitespace removed."""
    return line.split(";", 1)[0].strip()


def _line_number(digits: str) -> int | None:
    """A line number as Marlin counts them (a long); None if wider (noise)."""
    try:
        return wire_int(digits)
    except ValueError:
        return None


def parse_resend(text: str) -> int | None:
    """``Resend: 12`` / ``rs 12`` / ``rs N12`` -> 12 (None: not a resend request)."""
    m = _RESEND.match(text)
    return _line_number(m.group(1)) if m else None


def parse_last_line(text: str) -> int | None:
    m = _LAST_LINE.search(text)
    return _line_number(m.group(1)) if m else None


def parse_ok_number(text: str) -> int | None:
    """ADVANCED_OK: ``ok N12 P15 B3`` -> 12."""
    m = _OK_N.match(text)
    return _line_number(m.group(1)) if m else None


def _number(text: str, *, integer: bool = False) -> float | int | Bad:
    """A report number, or Bad (with the reason) when no point could carry it."""
    try:
        return wire_int(text) if integer else wire_float(text)
    except ValueError as exc:  # OutOfRange, or digits the patterns let through
        return Bad(str(exc))


def is_temperature_report(text: str) -> bool:
    t = text.lstrip()
    if t.startswith("ok"):
        t = t[2:].lstrip()
    return t.startswith(("T:", "T0:", "B:"))


_TEMP_KEYS: Final = {"T": "hotend", "B": "bed", "C": "chamber"}


def parse_temperatures(text: str) -> dict[str, Value]:
    """`` T:210.0 /210.0 B:60.0 /60.0 @:127 B@:0`` -> field values (fields.py names)."""
    out: dict[str, Value] = {}
    body = text.split("ok", 1)[1] if text.startswith("ok") else text
    for key, cur, target in _TEMP.findall(body):
        if key in _TEMP_KEYS:
            name = _TEMP_KEYS[key]
        elif key[0] == "T" and len(key) == 2:
            name = f"tool{key[1]}"
        else:
            continue
        out[f"temp.{name}"] = _number(cur)
        if target:
            out[f"target.{name}"] = _number(target)
    for key, power in _POWER.findall(body):
        heater = {"": "hotend", "T": "hotend", "B": "bed"}.get(key)
        if heater is not None:
            out[f"power.{heater}"] = _number(power, integer=True)
    return out


def is_position_report(text: str) -> bool:
    return text.startswith("X:") and "Y:" in text and "Z:" in text


def parse_position(text: str) -> dict[str, Value]:
    """``X:10.00 Y:0.00 Z:0.30 E:1.20 Count X:800 ...`` -> pos.* (the part before Count)."""
    head = text.split("Count", 1)[0]
    return {f"pos.{axis.lower()}": _number(v) for axis, v in _POS.findall(head)}


def parse_sd(text: str) -> dict[str, Value] | None:
    """M27 answers; None if `text` is not one."""
    m = _SD.search(text)
    if m:
        cur, total = _number(m.group(1), integer=True), _number(m.group(2), integer=True)
        if isinstance(cur, Bad) or isinstance(total, Bad):
            bad = cur if isinstance(cur, Bad) else total
            return {"sd.printing": bad, "sd.byte": cur, "sd.total": total, "sd.progress": bad}
        return {
            "sd.printing": cur < total,
            "sd.byte": cur,
            "sd.total": total,
            "sd.progress": cur / total if total else 0.0,
        }
    if text.startswith("Not SD printing"):
        return {"sd.printing": False}
    if text.startswith("Done printing file"):
        return {"sd.printing": False, "sd.progress": 1.0}
    return None


def kill_cause(texts: list[str]) -> tuple[int, str]:
    """Alarm code and text for a halt, from the error lines that came with it."""
    joined = " ".join(texts).lower()
    for needle, code, meaning in KILL_CAUSES:
        if needle in joined:
            return code, meaning
    return 1, ALARM_TEXTS[1]


@dataclass(slots=True)
class Firmware:
    """What M115 said."""

    name: str = ""
    info: dict[str, str] = field(default_factory=dict)
    caps: dict[str, bool] = field(default_factory=dict)

    def cap(self, name: str) -> bool:
        return self.caps.get(name, False)


_M115_KEYS: Final = ("FIRMWARE_NAME", "SOURCE_CODE_URL", "PROTOCOL_VERSION", "MACHINE_TYPE", "EXTRUDER_COUNT", "UUID")


def parse_m115(text: str, fw: Firmware) -> bool:
    """Fold one M115 line into `fw`; False if the line is not part of the answer."""
    if text.startswith("Cap:"):
        name, _, value = text[4:].rpartition(":")
        if name:
            fw.caps[name] = value.strip() == "1"
            return True
        return False
    if "FIRMWARE_NAME:" not in text:
        return False
    # keys are separated by spaces but values contain spaces: split on the known keys
    positions = sorted((text.find(k + ":"), k) for k in _M115_KEYS if k + ":" in text)
    for i, (start, key) in enumerate(positions):
        end = positions[i + 1][0] if i + 1 < len(positions) else len(text)
        fw.info[key] = text[start + len(key) + 1 : end].strip()
    fw.name = fw.info.get("FIRMWARE_NAME", "")
    return True
