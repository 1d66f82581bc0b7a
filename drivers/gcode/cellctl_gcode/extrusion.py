"""Filament used by a Marlin job, from the extrusion axis of the lines the firmware
acknowledged (issue 11, material per job).

Marlin's rules, followed here: `G90`/`G91` make every axis absolute/relative, E included,
until `M82` (E absolute) or `M83` (E relative) says otherwise for E alone; `G92 E<v>` sets
the E position without moving (`G92` with no axis sets every axis to 0); a move's E word
is the new position (absolute) or the step (relative). A retraction is a negative step:
it takes filament back, so the length *used* is the net extrusion. Firmware retraction
(`G10`/`G11`) moves by lengths only the firmware knows, and is not counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_WORD: Final = re.compile(r"([A-Za-z])\s*([-+]?(?:\d+\.?\d*|\.\d+))")
_MOVES: Final = frozenset({"G0", "G1", "G2", "G3", "G5"})


def _words(line: str) -> tuple[str | None, dict[str, float]]:
    """The command word (`G1`, `M83`) and the parameter words of one cleaned line."""
    words = _WORD.findall(line)
    if not words:
        return None, {}
    letter, number = words[0]
    letter = letter.upper()
    if letter not in "GM":
        return None, {}
    try:
        code = f"{letter}{int(float(number))}"
    except ValueError:
        return None, {}
    params: dict[str, float] = {}
    for p, v in words[1:]:
        params.setdefault(p.upper(), float(v))
    return code, params


@dataclass(slots=True)
class ExtrusionTracker:
    """Feed it the job's lines in order, each once; `net_mm` is the filament used so far."""

    relative_moves: bool = False  # G91
    e_mode: str | None = None  # "abs" (M82), "rel" (M83), or None: E follows G90/G91
    e_pos: float = 0.0
    extruded_mm: float = 0.0  # sum of the forward steps
    retracted_mm: float = 0.0  # sum of the backward steps (positive)

    @property
    def e_relative(self) -> bool:
        return self.e_mode == "rel" or (self.e_mode is None and self.relative_moves)

    @property
    def net_mm(self) -> float:
        return self.extruded_mm - self.retracted_mm

    def feed(self, line: str) -> None:
        code, params = _words(line)
        if code is None:
            return
        if code in _MOVES:
            e = params.get("E")
            if e is None:
                return
            step = e if self.e_relative else e - self.e_pos
            self.e_pos = self.e_pos + e if self.e_relative else e
            if step > 0:
                self.extruded_mm += step
            else:
                self.retracted_mm -= step
        elif code == "G92":
            if not params:
                self.e_pos = 0.0
            elif "E" in params:
                self.e_pos = params["E"]
        elif code == "G90":
            self.relative_moves, self.e_mode = False, None
        elif code == "G91":
            self.relative_moves, self.e_mode = True, None
        elif code == "M82":
            self.e_mode = "abs"
        elif code == "M83":
            self.e_mode = "rel"
