"""`cellctl sim modbus`: run simulated Modbus devices until SIGINT/SIGTERM.

Prints one line per listener on stdout (flushed), so scripts and tests can wait for
it and read the actual port or pty path:

    tcp 127.0.0.1:5020 units 1=energy-meter,2=machine-plc
    rtu /dev/pts/7 19200 8N1 units 1=energy-meter,2=machine-plc

The RTU line gives the serial settings a client must use: parity N, because Linux
pseudo-terminals refuse even or odd parity (EINVAL).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click

from cellctl_sim.modbus.devices import DEVICE_TYPES
from cellctl_sim.modbus.server import DEFAULT_UNITS, MIN_TICK, SimModbusServer

MAX_UNIT = 247


def _parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _parse_units(specs: tuple[str, ...], bench: int) -> dict[int, str]:
    units: dict[int, str] = {}
    for spec in specs:
        uid, sep, type_name = spec.partition("=")
        if not sep or not uid.strip().isdigit():
            raise click.BadParameter(f"{spec!r} is not N=TYPE", param_hint="--unit")
        n = int(uid)
        if not 1 <= n <= MAX_UNIT:
            raise click.BadParameter(f"unit {n} is outside 1..{MAX_UNIT}", param_hint="--unit")
        if type_name not in DEVICE_TYPES:
            raise click.BadParameter(
                f"unknown type {type_name!r}; one of {', '.join(sorted(DEVICE_TYPES))}", param_hint="--unit"
            )
        if n in units:
            raise click.BadParameter(f"unit {n} given twice", param_hint="--unit")
        units[n] = type_name
    if not units and not bench:
        return dict(DEFAULT_UNITS)
    first = max(units, default=0) + 1
    if first + bench - 1 > MAX_UNIT:
        raise click.BadParameter(f"{bench} bench units after unit {first - 1} go past {MAX_UNIT}")
    units.update(dict.fromkeys(range(first, first + bench), "bench"))
    return units


async def _serve(
    *,
    units: dict[int, str],
    tcp: tuple[str, int] | None,
    rtu_pty: bool,
    rtu_link: str | None,
    tick: float,
    seed: int | None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SimModbusServer(units, tick=tick, seed=seed) as sim:
        described = sim.describe_units()
        if tcp is not None:
            port = await sim.serve_tcp(*tcp)
            host = f"[{tcp[0]}]" if ":" in tcp[0] else tcp[0]
            click.echo(f"tcp {host}:{port} units {described}")
        if rtu_pty:
            path = await sim.serve_rtu_pty(link=rtu_link)
            # Parity N: Linux pseudo-terminals refuse any other (clients must use it too).
            click.echo(f"rtu {path} 19200 8N1 units {described}" + (f" link {rtu_link}" if rtu_link else ""))
        sys.stdout.flush()
        await stop.wait()


@click.command("modbus")
@click.option(
    "--tcp", "tcp", default="127.0.0.1:5020", show_default=True, metavar="HOST:PORT",
    help="Modbus TCP listen address (port 0 = any free port; the line printed has the real one).",
)
@click.option("--no-tcp", is_flag=True, help="Do not listen on TCP (e.g. RTU only).")
@click.option("--rtu-pty", is_flag=True, help="Also serve Modbus RTU on a new pseudo-terminal; prints its path.")
@click.option("--rtu-link", metavar="PATH", help="With --rtu-pty: make PATH a symlink to the pty.")
@click.option(
    "--unit", "unit_specs", multiple=True, metavar="N=TYPE",
    help=f"A unit and its device type ({', '.join(sorted(DEVICE_TYPES))}); repeatable. "
    "Default: 1=energy-meter and 2=machine-plc.",
)
@click.option("--units-bench", type=click.IntRange(0, MAX_UNIT), default=0, metavar="N",
              help="Add N units of type bench, numbered after the others.")
@click.option("--tick", type=click.FloatRange(min=MIN_TICK), default=1.0, show_default=True,
              help="Seconds between value updates (down to 0.001).")
@click.option("--seed", type=int, default=None, help="Seed for reproducible noise.")
@click.option("-v", "--verbose", is_flag=True, help="Log pymodbus and simulator details to stderr.")
def modbus(
    *,
    tcp: str,
    no_tcp: bool,
    rtu_pty: bool,
    rtu_link: str | None,
    unit_specs: tuple[str, ...],
    units_bench: int,
    tick: float,
    seed: int | None,
    verbose: bool,
) -> None:
    """Simulated Modbus devices: an energy meter, a machine PLC, a type test and a bench block."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    units = _parse_units(unit_specs, units_bench)
    address = None if no_tcp else _parse_hostport(tcp)
    if address is None and not rtu_pty:
        raise click.UsageError("nothing to serve: --no-tcp without --rtu-pty")
    if rtu_link and not rtu_pty:
        raise click.UsageError("--rtu-link needs --rtu-pty")
    try:
        asyncio.run(_serve(units=units, tcp=address, rtu_pty=rtu_pty, rtu_link=rtu_link, tick=tick, seed=seed))
    except OSError as exc:
        raise click.ClickException(str(exc)) from exc
