"""`cellctl sim grbl`: a simulated GRBL machine on a new pseudo-terminal, until SIGINT or
SIGTERM. The first line on stdout (flushed) names the pty to connect to:

    grbl /dev/pts/7
    grbl /dev/pts/7 link /tmp/ttyGRBL
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import sys

import click

from cellctl_sim.grbl.machine import GrblSim


def speedup_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--speedup", default="1", show_default=True, metavar="FACTOR|inf",
        help="Motion (and heating) runs this many times faster than real; inf: instantly.",
    )(f)


def parse_speedup(value: str) -> float:
    try:
        v = math.inf if value.strip().lower() in ("inf", "max") else float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number or 'inf'", param_hint="--speedup") from None
    if not v > 0:
        raise click.BadParameter(f"must be positive, got {value!r}", param_hint="--speedup")
    return v


async def _serve(sim: GrblSim, link: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        click.echo(f"grbl {sim.line.slave_path}" + (f" link {link}" if link else ""))
        sys.stdout.flush()
        await stop.wait()
        # what happened, for scripts and benchmarks: one JSON line on the way out
        click.echo(json.dumps(sim.stats()))
        sys.stdout.flush()


@click.command("grbl")
@speedup_option
@click.option("--baud", type=click.IntRange(min=300), default=None, help="Pace bytes as a serial line at this baud rate (default: as fast as the pty goes).")
@click.option("--link", metavar="PATH", help="Also make PATH a symlink to the pty (a stable name, like /dev/serial/by-id).")
@click.option("--rx-size", type=click.IntRange(min=16), default=128, show_default=True, help="Serial RX buffer size in bytes.")
@click.option("--planner-blocks", type=click.IntRange(min=1), default=15, show_default=True)
@click.option("--no-soft-limits", is_flag=True, help="Do not raise ALARM:2 for moves outside the work area.")
@click.option("--report-buffer", is_flag=True, help="Status reports carry Bf: ($10=3); default $10=1, GRBL's own default, without it.")
@click.option("--homing", is_flag=True, help="Homing enabled: the machine starts locked (Alarm) until $H or $X.")
@click.option("--noise", type=click.FloatRange(0, 1), default=0.0, help="Probability that a received line has a flipped byte.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible noise.")
@click.option("-v", "--verbose", is_flag=True, help="Log simulator details to stderr.")
def grbl(
    *, speedup: str, baud: int | None, link: str | None, rx_size: int, planner_blocks: int,
    no_soft_limits: bool, report_buffer: bool, homing: bool, noise: float, seed: int | None, verbose: bool,
) -> None:
    """A simulated GRBL 1.1 CNC controller on a pseudo-terminal."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    sim = GrblSim(
        speedup=parse_speedup(speedup), baudrate=baud, link=link, seed=seed, rx_size=rx_size,
        planner_blocks=planner_blocks, soft_limits=not no_soft_limits, homing=homing,
        report_buffer=report_buffer,
    )
    sim.line.noise_rx = noise
    try:
        asyncio.run(_serve(sim, link))
    except OSError as exc:
        raise click.ClickException(str(exc)) from exc
