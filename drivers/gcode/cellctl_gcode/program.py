"""A G-code job in memory, cleaned and checked for one dialect before a byte is sent.

Lines are kept in one bytes blob with an offset table (about the file's size plus four
bytes a line), so a job of a million lines costs tens of megabytes, not hundreds.
Everything that could stop a job halfway for a reason known in advance (a line too long
for the firmware's buffer, a non-ASCII character) is refused here, with its line number.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cellctl_gcode import grbl, marlin
from cellctl_gcode.fields import Dialect

GRBL_MAX_LINE: Final = 80  # GRBL's line buffer
# Marlin lines travel as "N<n> <cmd>*<cs>"; leave room for a 7-digit number and checksum.
MARLIN_MAX_COMMAND: Final = marlin.MAX_LINE - len("N ") - 7 - len("*255")

FLAG_KIND_MASK: Final = 0b011  # grbl.LineKind
FLAG_WAITS: Final = 0b100  # GRBL dwell / Marlin blocking command: long silence is normal


_SLICER = re.compile(r";\s*(filament_diameter|filament_density)\s*=\s*([0-9.]+)")


def _slicer_setting(text: str, into: dict[str, float]) -> None:
    """Take a slicer's `; filament_diameter = 1.75` (the first extruder's value of a list);
    the first mention wins, a value that is not a positive number is ignored."""
    m = _SLICER.search(text)
    if m is None or m.group(1) in into:
        return
    try:
        value = float(m.group(2))
    except ValueError:
        return
    if 0 < value < 1000:
        into[m.group(1)] = value


class ProgramError(ValueError):
    """The job cannot be streamed as it is; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Program:
    name: str
    dialect: Dialect
    data: bytes
    offsets: array[int]  # line i is data[offsets[i]:offsets[i+1]]
    source_lines: array[int]  # 1-based line in the original text, per program line
    flags: bytes
    # From the slicer's comments (`; filament_diameter = 1.75`, `; filament_density = 1.24`,
    # as PrusaSlicer, SuperSlicer and OrcaSlicer write them): None when the file does not say.
    filament_diameter_mm: float | None = None
    filament_density_g_cm3: float | None = None
    # GRBL: the M2/M30 that ends the program (its last line), and how many lines followed
    # it in the file: never sent (RS274/NGC: nothing after the program end runs).
    end_word: str | None = None
    lines_after_end: int = 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def line(self, i: int) -> bytes:
        return self.data[self.offsets[i] : self.offsets[i + 1]]

    def lines(self) -> list[str]:
        return [self.line(i).decode("ascii") for i in range(len(self))]

    def source_line(self, i: int) -> int:
        return self.source_lines[i]

    @property
    def bytes_total(self) -> int:
        """Bytes as sent, one newline per line (Marlin adds its numbers and checksums)."""
        return len(self.data) + len(self)

    def describe_line(self, i: int) -> str:
        """``line 12 'G1X10'`` for messages, with the line number of the original file."""
        text = self.line(i).decode("ascii", "replace")
        if len(text) > 40:
            text = text[:37] + "..."
        return f"line {self.source_line(i)} {text!r}"

    @classmethod
    def from_lines(cls, lines: Iterable[str], *, dialect: Dialect, name: str) -> Program:
        data = bytearray()
        offsets = array("I", [0])
        sources = array("I")
        flags = bytearray()
        slicer: dict[str, float] = {}
        end_word: str | None = None
        after_end = 0
        for number, raw in enumerate(lines, start=1):
            text = raw.rstrip("\r\n")
            if ";" in text and "filament_d" in text:
                _slicer_setting(text, slicer)
            if dialect == "grbl":
                line = grbl.compact(text)
                limit, why = GRBL_MAX_LINE, "GRBL's line buffer holds 80"
            else:
                line = marlin.clean(text)
                limit, why = MARLIN_MAX_COMMAND, (
                    f"a Marlin line with its number and checksum must stay within {marlin.MAX_LINE}, "
                    f"which leaves {MARLIN_MAX_COMMAND} for the command"
                )
            if not line or line == "%":
                continue
            if end_word is not None:
                after_end += 1
                continue
            if not line.isascii():
                raise ProgramError(f"job {name!r}: line {number} contains non-ASCII characters: {line[:40]!r}")
            if len(line) > limit:
                raise ProgramError(f"job {name!r}: line {number} is {len(line)} characters long; {why}")
            encoded = line.encode("ascii")
            if dialect == "grbl":
                kind = grbl.line_kind(encoded)
                waits = grbl.dwell_seconds(encoded) > 0 if b"4" in encoded else False
                flags.append(int(kind) | (FLAG_WAITS if waits else 0))
                end_word = grbl.program_end(encoded)
            else:
                if b"*" in encoded:
                    raise ProgramError(
                        f"job {name!r}: line {number} contains '*', which Marlin reads as a checksum: {line[:40]!r}"
                    )
                flags.append(FLAG_WAITS if marlin.command_word(encoded) in marlin.BLOCKING else 0)
            data += encoded
            offsets.append(len(data))
            sources.append(number)
        return cls(
            name, dialect, bytes(data), offsets, sources, bytes(flags),
            slicer.get("filament_diameter"), slicer.get("filament_density"), end_word, after_end,
        )  # fmt: skip

    @classmethod
    def from_text(cls, text: str, *, dialect: Dialect, name: str = "job") -> Program:
        return cls.from_lines(text.splitlines(), dialect=dialect, name=name)

    @classmethod
    def from_file(cls, path: Path, *, dialect: Dialect, name: str | None = None) -> Program:
        """Read a file (any 8-bit encoding; comments may hold anything)."""
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ProgramError(f"job file {str(path)!r}: {exc.strerror or exc}") from exc
        return cls.from_lines(raw.decode("latin-1").splitlines(), dialect=dialect, name=name or path.name)
