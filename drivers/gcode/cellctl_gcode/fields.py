"""Every value the driver can publish, by name: what a profile point's
``address: {field: ...}`` may say, its value type, and which dialects report it.

One table, so the address model, `cellctl check`, the README and the runtime agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Dialect = Literal["grbl", "marlin"]
ValueKind = Literal["bool", "int", "float", "string"]
BOTH: Final[frozenset[Dialect]] = frozenset({"grbl", "marlin"})
GRBL: Final[frozenset[Dialect]] = frozenset({"grbl"})
MARLIN: Final[frozenset[Dialect]] = frozenset({"marlin"})


@dataclass(frozen=True, slots=True)
class FieldInfo:
    name: str
    kind: ValueKind
    dialects: frozenset[Dialect]
    doc: str
    writable: bool = False


def _f(name: str, kind: ValueKind, dialects: frozenset[Dialect], doc: str, writable: bool = False) -> FieldInfo:
    return FieldInfo(name, kind, dialects, doc, writable)


def _unit(axis: str) -> str:
    return "mm" if axis in "xyz" else "mm or degrees"


_LIST: list[FieldInfo] = [
    _f("state", "string", BOTH, "raw machine state: GRBL's status word (Idle, Run, Hold:0, Alarm, ...), "
       "or for Marlin one the driver derives (Idle, Printing, Heating, Busy, Paused, Paused for user, "
       "SD printing, Killed, Stopped)"),
    _f("firmware", "string", BOTH, "firmware name and version (GRBL banner, Marlin FIRMWARE_NAME)"),
    _f("build", "string", BOTH, "build information (GRBL [VER:], Marlin M115 SOURCE_CODE_URL / MACHINE_TYPE)"),
    _f("message", "string", BOTH, "last message from the machine ([MSG:...], echo:, //action:)"),
    _f("alarm_code", "int", BOTH, "active alarm: GRBL ALARM:N; Marlin kill causes (see README); 0 when none"),
    _f("alarm_text", "string", BOTH, "text of the active alarm, empty when none"),
    # job progress, kept by the driver
    _f("job.state", "string", BOTH, "idle, running, paused, completed, failed or cancelled"),
    _f("job.name", "string", BOTH, "name of the current or last job"),
    _f("job.id", "string", BOTH, "this run of the job: name@start time (UTC), new for every run of the same file"),
    _f("job.lines_total", "int", BOTH, "lines of G-code in the job (after removing comments and blank lines)"),
    _f("job.lines_sent", "int", BOTH, "lines written to the machine so far"),
    _f("job.lines_acked", "int", BOTH, "lines the machine acknowledged (ok) so far"),
    _f("job.progress", "float", BOTH, "lines acknowledged / lines total, 0..1"),
    _f("job.bytes_sent", "int", BOTH, "bytes of G-code written so far"),
    _f("job.bytes_total", "int", BOTH, "bytes of G-code in the job as sent"),
    _f("job.elapsed", "float", BOTH, "seconds since the job started"),
    _f("job.eta", "float", BOTH, "estimated seconds until the last line is acknowledged"),
    _f("job.error", "string", BOTH, "why the job failed, empty otherwise"),
    _f("job.error_code", "int", BOTH, "GRBL error:N that halted the job, 0 otherwise"),
    _f("job.resends", "int", BOTH, "lines resent on the firmware's request (Marlin)"),
    _f("job.filament_mm", "float", MARLIN, "filament used by the job so far (mm): net E travel of the acknowledged "
       "lines, with M82/M83, G90/G91, G92 E resets and retractions (extrusion.py)"),
    _f("job.filament_diameter", "float", MARLIN, "filament diameter (mm) the job's slicer comments give "
       "(`; filament_diameter = 1.75`), null when the file does not say"),
    _f("job.filament_density", "float", MARLIN, "filament density (g/cm3) from the slicer comments "
       "(`; filament_density = 1.24`), null when the file does not say"),
    # GRBL status report
    *(_f(f"mpos.{a}", "float", GRBL, f"machine position {a.upper()} ({_unit(a)})") for a in "xyzabc"),
    *(_f(f"wpos.{a}", "float", GRBL, f"work position {a.upper()} ({_unit(a)}), MPos - WCO") for a in "xyzabc"),
    *(_f(f"wco.{a}", "float", GRBL, f"work coordinate offset {a.upper()} (mm)") for a in "xyz"),
    _f("feed", "float", GRBL, "current feed rate (FS:/F:)"),
    _f("spindle", "float", GRBL, "current spindle speed (FS:)"),
    _f("buffer.planner", "int", GRBL, "free planner blocks (Bf:; only when $10 asks for buffer data)"),
    _f("buffer.rx", "int", GRBL, "free bytes in the serial RX buffer (Bf:; only when $10 asks for buffer data)"),
    _f("line", "int", GRBL, "line number being executed (Ln:, only with N words)"),
    _f("pins", "string", GRBL, "input pins active (Pn:), empty when none"),
    _f("ov.feed", "int", GRBL, "feed override % (Ov:)"),
    _f("ov.rapid", "int", GRBL, "rapid override % (Ov:)"),
    _f("ov.spindle", "int", GRBL, "spindle override % (Ov:)"),
    _f("accessories", "string", GRBL, "accessory state (A:): S spindle CW, C CCW, F flood, M mist"),
    # Marlin reports
    *(_f(f"pos.{a}", "float", MARLIN, f"position {a.upper()} (M114 / auto-report)") for a in "xyze"),
    _f("temp.hotend", "float", MARLIN, "active hotend temperature (T:)"),
    _f("target.hotend", "float", MARLIN, "active hotend target (T: .../target)"),
    _f("power.hotend", "int", MARLIN, "hotend heater power 0..127 (@:)"),
    _f("temp.bed", "float", MARLIN, "bed temperature (B:)"),
    _f("target.bed", "float", MARLIN, "bed target"),
    _f("power.bed", "int", MARLIN, "bed heater power (B@:)"),
    _f("temp.chamber", "float", MARLIN, "chamber temperature (C:)"),
    _f("target.chamber", "float", MARLIN, "chamber target"),
    *(_f(f"temp.tool{i}", "float", MARLIN, f"hotend {i} temperature (T{i}:)") for i in range(4)),
    *(_f(f"target.tool{i}", "float", MARLIN, f"hotend {i} target") for i in range(4)),
    _f("sd.printing", "bool", MARLIN, "printing from the SD card (M27)"),
    _f("sd.byte", "int", MARLIN, "SD print position in bytes"),
    _f("sd.total", "int", MARLIN, "SD file size in bytes"),
    _f("sd.progress", "float", MARLIN, "SD print progress 0..1"),
    _f("capabilities", "string", MARLIN, "Marlin capabilities reported by M115, comma separated"),
    # controls (the Writer's way in)
    _f("control.pause", "bool", BOTH, "write true: pause the job (GRBL feed hold; Marlin stops streaming)", True),
    _f("control.resume", "bool", BOTH, "write true: resume a paused job", True),
    _f("control.cancel", "bool", BOTH, "write true: cancel the job", True),
    _f("control.start", "string", BOTH, "write a file name inside options.job_dir (deprecated): start that job", True),
]

FIELDS: Final[dict[str, FieldInfo]] = {f.name: f for f in _LIST}
FIELD_NAMES: Final[tuple[str, ...]] = tuple(FIELDS)

# A point of type X may carry a field of kind K when K is in COMPATIBLE[X].
COMPATIBLE: Final[dict[str, frozenset[str]]] = {
    "bool": frozenset({"bool"}),
    "int": frozenset({"int"}),
    "float": frozenset({"float", "int"}),
    "string": frozenset({"string"}),
}


def dialect_of(field_names: list[str]) -> tuple[frozenset[Dialect], list[str]]:
    """The dialects every field is valid for, and the fields that rule the others out."""
    allowed: frozenset[Dialect] = BOTH
    for name in field_names:
        allowed = allowed & FIELDS[name].dialects
    specific = [n for n in field_names if FIELDS[n].dialects != BOTH]
    return allowed, specific


def fields_markdown() -> str:
    """The field table of the README (a test keeps the two equal)."""
    rows = ["| field | type | dialects | what |", "| --- | --- | --- | --- |"]
    for f in _LIST:
        access = " (write)" if f.writable else ""
        rows.append(f"| `{f.name}` | {f.kind}{access} | {', '.join(sorted(f.dialects))} | {f.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(fields_markdown())
