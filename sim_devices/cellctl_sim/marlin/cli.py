"""`cellctl sim marlin`: a simulated Marlin printer on a new pseudo-terminal, until SIGINT
or SIGTERM. The first line on stdout (flushed) names the pty to connect to:

    marlin /dev/pts/8
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

import click

from cellctl_sim.grbl.cli import parse_speedup, speedup_option
from cellctl_sim.marlin.machine import MarlinSim


async def _serve(sim: MarlinSim, link: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        click.echo(f"marlin {sim.line.slave_path}" + (f" link {link}" if link else ""))
        sys.stdout.flush()
        await stop.wait()
        # what happened, for scripts and benchmarks: one JSON line on the way out
        click.echo(json.dumps(sim.stats()))
        sys.stdout.flush()


@click.command("marlin")
@speedup_option
@click.option("--baud", type=click.IntRange(min=300), default=None, help="Pace bytes as a serial line at this baud rate.")
@click.option("--link", metavar="PATH", help="Also make PATH a symlink to the pty.")
@click.option("--bufsize", type=click.IntRange(min=1), default=4, show_default=True, help="Command queue slots (BUFSIZE).")
@click.option("--ok-after-resend", is_flag=True, help="Answer a resend request with an extra ok (older firmware).")
@click.option("--advanced-ok", is_flag=True, help="ok N<line> P<planner> B<queue> (ADVANCED_OK).")
@click.option("--no-autoreport", is_flag=True, help="No M155/M154/M27 S auto-reports (hosts must poll).")
@click.option("--no-emergency-parser", is_flag=True, help="M112/M108/M410 wait their turn in the queue.")
@click.option("--busy-interval", type=click.FloatRange(min=0), default=2.0, show_default=True, help="Seconds between busy: keep-alives (0: none).")
@click.option("--noise", type=click.FloatRange(0, 1), default=0.0, help="Probability that a received line has a flipped byte.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible noise.")
@click.option("-v", "--verbose", is_flag=True, help="Log simulator details to stderr.")
def marlin(
    *, speedup: str, baud: int | None, link: str | None, bufsize: int, ok_after_resend: bool,
    advanced_ok: bool, no_autoreport: bool, no_emergency_parser: bool, busy_interval: float,
    noise: float, seed: int | None, verbose: bool,
) -> None:
    """A simulated Marlin 2.x 3D printer on a pseudo-terminal."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    sim = MarlinSim(
        speedup=parse_speedup(speedup), baudrate=baud, link=link, seed=seed, bufsize=bufsize,
        ok_after_resend=ok_after_resend, advanced_ok=advanced_ok, autoreport=not no_autoreport,
        emergency_parser=not no_emergency_parser, busy_interval=busy_interval,
    )
    sim.line.noise_rx = noise
    try:
        asyncio.run(_serve(sim, link))
    except OSError as exc:
        raise click.ClickException(str(exc)) from exc
