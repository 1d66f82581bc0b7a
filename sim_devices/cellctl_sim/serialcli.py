"""What `cellctl sim grbl` and `cellctl sim marlin` share: the options every serial
simulator takes, and serving one on its pty until SIGINT or SIGTERM (the first line on
stdout names the pty; the last one is the simulator's counters as JSON)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

import click


class ServedMachine(Protocol):
    """A simulator `serve` can run (GrblSim, MarlinSim)."""

    line: Any

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def stats(self) -> dict[str, int]: ...


def parse_speedup(value: str) -> float:
    try:
        v = math.inf if value.strip().lower() in ("inf", "max") else float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number or 'inf'", param_hint="--speedup") from None
    if not v > 0:
        raise click.BadParameter(f"must be positive, got {value!r}", param_hint="--speedup")
    return v


def speedup_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--speedup", default="1", show_default=True, metavar="FACTOR|inf",
        help="Motion (and heating) runs this many times faster than real; inf: instantly.",
    )(f)


def serial_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--speedup, --baud, --link, --noise, --seed, -v: what every serial simulator takes."""
    for option in reversed((
        speedup_option,
        click.option("--baud", type=click.IntRange(min=300), default=None,
                     help="Pace bytes as a serial line at this baud rate (default: as fast as the pty goes)."),
        click.option("--link", metavar="PATH",
                     help="Also make PATH a symlink to the pty (a stable name, like /dev/serial/by-id)."),
        click.option("--noise", type=click.FloatRange(0, 1), default=0.0,
                     help="Probability that a received line has a flipped byte."),
        click.option("--seed", type=int, default=None, help="Seed for reproducible noise."),
        click.option("-v", "--verbose", is_flag=True, help="Log simulator details to stderr."),
    )):
        f = option(f)
    return f


async def _serve(name: str, sim: ServedMachine, link: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        click.echo(f"{name} {sim.line.slave_path}" + (f" link {link}" if link else ""))
        sys.stdout.flush()
        await stop.wait()
        # what happened, for scripts and benchmarks: one JSON line on the way out
        click.echo(json.dumps(sim.stats()))
        sys.stdout.flush()


def serve(name: str, sim: ServedMachine, *, link: str | None, noise: float, verbose: bool) -> None:
    """Run `sim` on its pty until SIGINT/SIGTERM; OSError becomes a clean CLI error."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    sim.line.noise_rx = noise
    try:
        asyncio.run(_serve(name, sim, link))
    except OSError as exc:
        raise click.ClickException(str(exc)) from exc
