"""`cellctl sim marlin`: a simulated Marlin printer on a new pseudo-terminal, until SIGINT
or SIGTERM. The first line on stdout (flushed) names the pty to connect to:

    marlin /dev/pts/8
"""

from __future__ import annotations

import click

from cellctl_sim.marlin.machine import MarlinSim
from cellctl_sim.serialcli import parse_speedup, serial_options, serve


@click.command("marlin")
@serial_options
@click.option("--bufsize", type=click.IntRange(min=1), default=4, show_default=True, help="Command queue slots (BUFSIZE).")
@click.option("--ok-after-resend", is_flag=True, help="Answer a resend request with an extra ok (older firmware).")
@click.option("--advanced-ok", is_flag=True, help="ok N<line> P<planner> B<queue> (ADVANCED_OK).")
@click.option("--no-autoreport", is_flag=True, help="No M155/M154/M27 S auto-reports (hosts must poll).")
@click.option("--no-emergency-parser", is_flag=True, help="M112/M108/M410 wait their turn in the queue.")
@click.option("--busy-interval", type=click.FloatRange(min=0), default=2.0, show_default=True, help="Seconds between busy: keep-alives (0: none).")
def marlin(
    *, speedup: str, baud: int | None, link: str | None, bufsize: int, ok_after_resend: bool,
    advanced_ok: bool, no_autoreport: bool, no_emergency_parser: bool, busy_interval: float,
    noise: float, seed: int | None, verbose: bool,
) -> None:
    """A simulated Marlin 2.x 3D printer on a pseudo-terminal."""
    sim = MarlinSim(
        speedup=parse_speedup(speedup), baudrate=baud, link=link, seed=seed, bufsize=bufsize,
        ok_after_resend=ok_after_resend, advanced_ok=advanced_ok, autoreport=not no_autoreport,
        emergency_parser=not no_emergency_parser, busy_interval=busy_interval,
    )
    serve("marlin", sim, link=link, noise=noise, verbose=verbose)
