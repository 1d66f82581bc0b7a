"""The extrusion tracker: filament used = net E travel, whatever mode the file is in."""

from __future__ import annotations

import pytest
from cellctl_gcode.extrusion import ExtrusionTracker
from cellctl_gcode.program import Program
from hypothesis import given
from hypothesis import strategies as st


def run(lines: list[str]) -> ExtrusionTracker:
    t = ExtrusionTracker()
    for line in lines:
        t.feed(line)
    return t


@pytest.mark.parametrize(
    ("lines", "net", "retracted"),
    [
        (["G1 X1 E5", "G1 X2 E7.5"], 7.5, 0.0),  # absolute (Marlin's default)
        (["M83", "G1 E5", "G1 E2.5"], 7.5, 0.0),  # relative E
        (["G1 E10", "G92 E0", "G1 E4"], 14.0, 0.0),  # a reset is not a move
        (["G1 E10", "G1 E8", "G1 E10", "G1 E12"], 12.0, 2.0),  # retract, prime, go on
        (["M83", "G1 E3", "G1 E-1", "G1 E1"], 3.0, 1.0),
        (["G91", "G1 X1 E2", "G90", "G1 E5"], 5.0, 0.0),  # G91 makes E relative; G90 back: E2 -> E5 is +3
        (["G91", "M82", "G1 E2", "G1 E3"], 3.0, 0.0),  # M82 overrides G91 for E
        (["M83", "G90", "G1 E2", "G1 E3"], 3.0, 0.0),  # G90 clears M83 (Marlin)
        (["G1 E5", "G92", "G1 E1"], 6.0, 0.0),  # G92 alone zeroes every axis
        (["G1 E5", "G92 X0", "G1 E6"], 6.0, 0.0),  # G92 without E keeps E
        (["G1X1E5", "g1 e6", "G1 F1200", "G28", "M104 S200", "G10", "G11"], 6.0, 0.0),  # packed, lower case, others
        (["G92 E100", "G1 E102"], 2.0, 0.0),
    ],
)
def test_modes_resets_and_retractions(lines: list[str], net: float, retracted: float) -> None:
    t = run(lines)
    assert t.net_mm == pytest.approx(net)
    assert t.retracted_mm == pytest.approx(retracted)


_STEP = st.integers(-40, 200).map(lambda q: q / 4)  # quarter millimetres: exact in binary


@st.composite
def jobs(draw: st.DrawFn) -> tuple[list[str], float]:
    """A file of E steps written in randomly switching modes with random `G92 E` resets,
    and the net length it extrudes."""
    lines: list[str] = []
    pos = 0.0
    relative = False
    total = 0.0
    for step in draw(st.lists(_STEP, max_size=60)):
        action = draw(st.sampled_from(["move", "move", "move", "m82", "m83", "g92", "g90", "g91"]))
        if action == "m82":
            lines.append("M82")
            relative = False
        elif action == "m83":
            lines.append("M83")
            relative = True
        elif action == "g90":
            lines.append("G90")
            relative = False
        elif action == "g91":
            lines.append("G91")
            relative = True
        elif action == "g92":
            pos = float(draw(st.integers(-50, 50)))
            lines.append(f"G92 E{pos:g}")
        total += step
        lines.append(f"G1 X{draw(st.integers(0, 200))} E{step:g}" if relative else f"G1 E{pos + step:g}")
        pos += step
    return lines, total


@given(jobs())
def test_net_length_is_the_sum_of_the_steps_in_any_mode(job: tuple[list[str], float]) -> None:
    lines, total = job
    t = run(lines)
    assert t.net_mm == pytest.approx(total, abs=1e-9)
    assert t.extruded_mm >= t.net_mm


@given(jobs(), st.integers(0, 200))
def test_lines_fed_in_two_parts_give_the_same_length(job: tuple[list[str], float], cut: int) -> None:
    lines, _ = job
    a = ExtrusionTracker()
    for line in lines[:cut]:
        a.feed(line)
    for line in lines[cut:]:
        a.feed(line)
    assert a.net_mm == run(lines).net_mm


@pytest.mark.parametrize(
    ("comments", "diameter", "density"),
    [
        (["; filament_diameter = 1.75", "; filament_density = 1.24"], 1.75, 1.24),  # PrusaSlicer, OrcaSlicer
        (["; filament_diameter = 2.85,1.75", ";filament_density=1.27"], 2.85, 1.27),  # the first extruder's
        (["G1 X1 ; filament_diameter = 3"], 3.0, None),  # after a command
        (["; filament_diameter = 0", "; filament_density = nonsense"], None, None),  # ignored
        (["; filament_diameter = 1.75", "; filament_diameter = 2.85"], 1.75, None),  # the first mention wins
        ([], None, None),
    ],
)
def test_the_slicer_comments_give_the_jobs_filament(
    comments: list[str], diameter: float | None, density: float | None
) -> None:
    program = Program.from_lines(["G1 E1", *comments], dialect="marlin", name="part.gcode")
    assert (program.filament_diameter_mm, program.filament_density_g_cm3) == (diameter, density)
