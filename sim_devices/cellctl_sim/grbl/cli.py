"""`cellctl sim grbl`: a simulated GRBL machine on a new pseudo-terminal, until SIGINT or
SIGTERM. The first line on stdout (flushed) names the pty to connect to:

    grbl /dev/pts/7
    grbl /dev/pts/7 link /tmp/ttyGRBL
"""

from __future__ import annotations

import click

from cellctl_sim.grbl.machine import GrblSim
from cellctl_sim.serialcli import parse_speedup, serial_options, serve


@click.command("grbl")
@serial_options
@click.option("--rx-size", type=click.IntRange(min=16), default=128, show_default=True, help="Serial RX buffer size in bytes.")
@click.option("--planner-blocks", type=click.IntRange(min=1), default=15, show_default=True)
@click.option("--no-soft-limits", is_flag=True, help="Do not raise ALARM:2 for moves outside the work area.")
@click.option("--report-buffer", is_flag=True, help="Status reports carry Bf: ($10=3); default $10=1, GRBL's own default, without it.")
@click.option("--homing", is_flag=True, help="Homing enabled: the machine starts locked (Alarm) until $H or $X.")
def grbl(
    *, speedup: str, baud: int | None, link: str | None, rx_size: int, planner_blocks: int,
    no_soft_limits: bool, report_buffer: bool, homing: bool, noise: float, seed: int | None, verbose: bool,
) -> None:
    """A simulated GRBL 1.1 CNC controller on a pseudo-terminal."""
    sim = GrblSim(
        speedup=parse_speedup(speedup), baudrate=baud, link=link, seed=seed, rx_size=rx_size,
        planner_blocks=planner_blocks, soft_limits=not no_soft_limits, homing=homing,
        report_buffer=report_buffer,
    )
    serve("grbl", sim, link=link, noise=noise, verbose=verbose)
