"""Commissioning commands, mounted into `cellctl` through entry points:

    cellctl read modbus (--tcp HOST[:PORT] | --rtu PORT) --unit N --table T --address A --count C
    cellctl scan modbus (--tcp HOST[:PORT] | --rtu PORT) [--units 1-247]

Both run on the driver's transport and codec (cellctl_modbus.commission). Exit codes
follow cellctl's convention: 0 ok, 1 the device could not be read, 2 bad options, 130
interrupted; with --json an error is JSON too.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from cellctl.driver import CommandFailed, ExitCode

_TABLES = ("holding", "input", "coil", "discrete")


def _connection(
    *, tcp: str | None, rtu: str | None, unit: int, baud: int, parity: str, stopbits: int, bytesize: int
) -> Any:
    """The options as the driver's ModbusConnection (its own validation, its own words)."""
    from pydantic import ValidationError

    from cellctl_modbus.config import ModbusConnection

    if (tcp is None) == (rtu is None):
        raise CommandFailed("give exactly one of --tcp HOST[:PORT] or --rtu SERIAL_PORT", ExitCode.BAD_INPUT)
    data: dict[str, Any]
    if tcp is not None:
        host, port = _host_port(tcp)
        data = {"transport": "tcp", "host": host, "port": port, "unit": unit}
    else:
        data = {
            "transport": "rtu", "serial_port": rtu, "unit": unit, "baudrate": baud,
            "parity": parity, "stopbits": stopbits, "bytesize": bytesize,
        }  # fmt: skip
    try:
        return ModbusConnection.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
            for e in exc.errors(include_url=False)
        )
        raise CommandFailed(f"bad connection {tcp or rtu!r}: {problems}", ExitCode.BAD_INPUT) from None


def _host_port(text: str) -> tuple[str, int]:
    """`HOST`, `HOST:PORT` or `[IPv6]:PORT`; port 502 when not given."""
    m = re.fullmatch(
        r"\[(?P<v6>[^\]]+)\](?::(?P<p6>\d+))?|(?P<host>[^:\[\]]+)(?::(?P<port>\d+))?", text.strip()
    )
    if m is None:
        raise CommandFailed(f"--tcp {text!r} is not HOST or HOST:PORT", ExitCode.BAD_INPUT)
    port = int(m["p6"] or m["port"] or 502)
    if not 1 <= port <= 65535:
        raise CommandFailed(f"--tcp {text!r}: port {port} is outside 1..65535", ExitCode.BAD_INPUT)
    return m["v6"] or m["host"], port


def _connection_options(unit_default: int | None) -> Callable[[Any], Any]:
    def wrap(f: Any) -> Any:
        for option in reversed(
            [
                click.option(
                    "--tcp", metavar="HOST[:PORT]", help="Modbus TCP device or gateway (port 502 by default)."
                ),
                click.option("--rtu", metavar="SERIAL_PORT", help="Modbus RTU line, e.g. /dev/ttyUSB0."),
                click.option(
                    "--baud", type=click.IntRange(min=300), default=19200, show_default=True, help="RTU only."
                ),
                click.option(
                    "--parity",
                    type=click.Choice(["N", "E", "O"]),
                    default="E",
                    show_default=True,
                    help="RTU only.",
                ),
                click.option(
                    "--stopbits",
                    type=click.Choice(["1", "2"]),
                    default="1",
                    show_default=True,
                    help="RTU only.",
                ),
                click.option(
                    "--bytesize",
                    type=click.Choice(["7", "8"]),
                    default="8",
                    show_default=True,
                    help="RTU only.",
                ),
                click.option(
                    "--timeout",
                    type=click.FloatRange(0.01, 60),
                    default=1.0 if unit_default else 0.3,
                    show_default=True,
                    help="Seconds to wait for each answer.",
                ),
                click.option("--json", "as_json", is_flag=True, help="Machine-readable output (errors too)."),
            ]
        ):
            f = option(f)
        if unit_default is not None:
            f = click.option(
                "--unit", "-u", type=click.IntRange(0, 247), default=unit_default, show_default=True
            )(f)
        return f

    return wrap


def _run(coro: Any) -> Any:
    """Run one command's I/O; the driver's errors become the convention's exit codes."""
    from cellctl.driver import DeviceUnavailable, scoped_logging
    from cellctl_modbus.transport import RequestError

    try:
        with scoped_logging("error", stream=sys.stderr):  # stdout carries the result only
            return asyncio.run(coro)
    except DeviceUnavailable as exc:
        raise CommandFailed(exc.reason) from None
    except RequestError as exc:
        raise CommandFailed(f"the device refused the read: {exc.reason}") from None


# -- read -------------------------------------------------------------------------------


@click.command("modbus")
@_connection_options(unit_default=1)
@click.option("--table", "-t", type=click.Choice(_TABLES), default="holding", show_default=True)
@click.option(
    "--address",
    "-a",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Zero-based protocol address (register 40001 is 0).",
)
@click.option(
    "--count",
    "-c",
    type=click.IntRange(1, 2000),
    default=2,
    show_default=True,
    help="Registers (at most 125) or bits (at most 2000).",
)
@click.option("--each", is_flag=True, help="Decode at every register of the block, not only at the first.")
def read(
    *, tcp: str | None, rtu: str | None, unit: int, baud: int, parity: str, stopbits: str, bytesize: str,
    timeout: float, as_json: bool, table: str, address: int, count: int, each: bool,
) -> None:  # fmt: skip
    """Read registers (or bits) once and print them raw, with every type in the four word
    orders decoded from the first register (--each: from every register), so the right
    interpretation can be spotted. NaN, denormal and absurd floats are marked."""
    from cellctl_modbus.commission import read_block
    from cellctl_modbus.planner import BIT_TABLES, MAX_REGISTERS

    bits = table in BIT_TABLES
    if not bits and count > MAX_REGISTERS:
        raise CommandFailed(
            f"--count {count}: a register read takes at most {MAX_REGISTERS}", ExitCode.BAD_INPUT
        )
    if address + count > 65536:
        raise CommandFailed(
            f"--address {address} --count {count} runs past address 65535", ExitCode.BAD_INPUT
        )
    conn = _connection(
        tcp=tcp, rtu=rtu, unit=unit, baud=baud, parity=parity, stopbits=int(stopbits), bytesize=int(bytesize)
    )
    values = _run(read_block(conn, table, address, count, timeout))
    data = _read_result(conn.describe(), table, address, values, bits=bits, each=each)
    if as_json:
        from cellctl.driver import print_json

        print_json(data)
    else:
        _print_read(data, bits=bits)


def _read_result(
    where: str, table: str, address: int, values: list[Any], *, bits: bool, each: bool
) -> dict[str, Any]:
    from cellctl_modbus.commission import decode_table

    data: dict[str, Any] = {"device": where, "table": table, "address": address, "count": len(values)}
    if bits:
        data["bits"] = [bool(v) for v in values]
        return data
    data["registers"] = values
    offsets = range(len(values)) if each else range(1)
    data["decoded"] = [
        {
            "address": address + off,
            "types": {
                t: {o: {"value": d.value, "suspect": d.suspect} for o, d in orders.items()}
                for t, orders in decode_table(values, off).items()
            },
        }
        for off in offsets
    ]
    return data


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.9g}"
    return repr(value) if isinstance(value, str) else str(value)


def _print_read(data: dict[str, Any], *, bits: bool) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    console.print(
        f"{data['device']} {data['table']} {data['address']}..{data['address'] + data['count'] - 1}"
    )
    if bits:
        table = Table("address", "bit")
        for k, v in enumerate(data["bits"]):
            table.add_row(str(data["address"] + k), "1" if v else "0")
        console.print(table)
        return
    raw = Table("address", "hex", "uint16", "int16", "bytes")
    for k, v in enumerate(data["registers"]):
        signed = v - 0x10000 if v & 0x8000 else v
        chars = "".join(chr(b) if 32 <= b < 127 else "." for b in (v >> 8, v & 0xFF))
        raw.add_row(str(data["address"] + k), f"0x{v:04X}", str(v), str(signed), chars)
    console.print(raw)
    for block in data["decoded"]:
        table = Table("type", "ABCD", "CDAB", "BADC", "DCBA", title=f"decoded from {block['address']}",
                      caption="? = NaN, infinite, denormal or an absurd magnitude: probably not this order",
                      caption_justify="left")  # fmt: skip
        for column in table.columns:
            column.overflow = "fold"  # numbers are copied from here: never cut them
        for wire_type, orders in block["types"].items():
            cells: list[Text | str] = []
            for order in ("ABCD", "CDAB", "BADC", "DCBA"):
                d = orders.get(order) or (orders.get("ABCD") if order == "CDAB" else orders.get("BADC"))
                if d is None:
                    cells.append("")
                elif d["suspect"]:
                    shown = "not UTF-8" if d["value"] is None else _shown(d["value"])
                    cells.append(Text(f"? {shown}", style="dim"))
                else:
                    cells.append(Text(_shown(d["value"]), style="bold"))
            table.add_row(wire_type, *cells)
        console.print(table)


# -- scan -------------------------------------------------------------------------------


def _unit_list(text: str) -> list[int]:
    """`1-247`, `1,2,5-9` -> unit ids; CommandFailed (exit 2) naming the bad part."""
    units: set[int] = set()
    for part in text.split(","):
        a, sep, b = part.strip().partition("-")
        if not a.isdigit() or (sep and not b.isdigit()):
            raise CommandFailed(f"--units {text!r}: {part!r} is not N or N-M", ExitCode.BAD_INPUT)
        lo, hi = int(a), int(b) if sep else int(a)
        if not 0 <= lo <= hi <= 247:
            raise CommandFailed(f"--units {text!r}: {part!r} is outside 0..247", ExitCode.BAD_INPUT)
        units.update(range(lo, hi + 1))
    return sorted(units)


@click.command("modbus")
@_connection_options(unit_default=None)
@click.option("--units", default="1-247", show_default=True, help="Unit ids to try: N, N-M, comma separated.")
@click.option(
    "--tables",
    default="holding,input,coil,discrete",
    show_default=True,
    help="Tables to explore on each unit that answers.",
)
@click.option("--no-ranges", is_flag=True, help="Only find the units; do not explore their tables.")
@click.option(
    "--start",
    "starts",
    type=click.IntRange(0, 65535),
    multiple=True,
    help="Also look for a readable block from this address (0 and 1 are always tried).",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(1, 3600),
    default=120,
    show_default=True,
    help="Seconds for the whole scan; what was found by then is printed.",
)
def scan(
    *, tcp: str | None, rtu: str | None, baud: int, parity: str, stopbits: str, bytesize: str, timeout: float,
    as_json: bool, units: str, tables: str, no_ranges: bool, starts: tuple[int, ...], time_limit: float,
) -> None:  # fmt: skip
    """Which unit ids answer on a TCP gateway or an RTU line, and for each one which
    tables and address ranges it lets us read (found by binary search on illegal-address
    answers). A unit counts as answering when it sends anything back, exceptions included,
    except a gateway's "target failed to respond"."""
    unit_ids = _unit_list(units)
    table_list = [t.strip() for t in tables.split(",") if t.strip()]
    for t in table_list:
        if t not in _TABLES:
            raise CommandFailed(
                f"--tables: unknown table {t!r}; one of {', '.join(_TABLES)}", ExitCode.BAD_INPUT
            )
    first_unit = next((u for u in unit_ids if u), 1)
    conn = _connection(
        tcp=tcp,
        rtu=rtu,
        unit=first_unit,
        baud=baud,
        parity=parity,
        stopbits=int(stopbits),
        bytesize=int(bytesize),
    )
    ranges_from = [] if no_ranges else [0, 1, *starts]
    result = _run(
        _scan(conn, unit_ids=unit_ids, tables=table_list, starts=ranges_from, timeout=timeout,
              time_limit=time_limit, quiet=as_json)
    )  # fmt: skip
    if as_json:
        from cellctl.driver import print_json

        print_json(result)
    else:
        _print_scan(result)


async def _scan(
    conn: Any, *, unit_ids: list[int], tables: list[str], starts: list[int], timeout: float, time_limit: float,
    quiet: bool,
) -> dict[str, Any]:  # fmt: skip
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cellctl_modbus.commission import Scanner

    loop = asyncio.get_running_loop()
    found = []
    started = loop.time()
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True, disable=quiet,
    )  # fmt: skip
    async with Scanner(conn, timeout=timeout, deadline=time.monotonic() + time_limit) as scanner:
        with progress:
            task = progress.add_task("units", total=len(unit_ids))
            for unit in unit_ids:
                if not scanner.time_left():
                    break
                progress.update(task, description=f"unit {unit}")
                hit = await scanner.probe_unit(unit)
                if hit is not None:
                    found.append(hit)
                progress.advance(task)
            if starts:
                task = progress.add_task("tables", total=len(found) * len(tables))
                for hit in found:
                    for table in tables:
                        progress.update(task, description=f"unit {hit.unit} {table}")
                        hit.tables.append(await scanner.table_ranges(hit.unit, table, starts))
                        progress.advance(task)
    return {
        "connection": conn.describe().rsplit(" unit ", 1)[0],
        "units_tried": len(unit_ids),
        "units": [h.as_dict() for h in found],
        "requests": scanner.requests,
        "seconds": round(loop.time() - started, 3),
        "complete": not scanner.out_of_time,
    }


def _print_scan(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table("unit", "first answer", "table", "readable", title=result["connection"])
    for unit in result["units"]:
        rows = unit["tables"] or [{"table": "", "supported": True, "ranges": [], "note": None, "_none": True}]
        for k, t in enumerate(rows):
            if t.get("_none"):
                readable = ""
            elif not t["supported"]:
                readable = "not supported"
            else:
                readable = (
                    ", ".join(
                        f"{r['first']}..{r['last']} ({r['count']})" if r["count"] > 1 else str(r["first"])
                        for r in t["ranges"]
                    )
                    or "nothing"
                )
                if t["note"]:
                    readable += f" [dim]({t['note']})[/dim]"
            table.add_row(
                str(unit["unit"]) if k == 0 else "", unit["answer"] if k == 0 else "", t["table"], readable
            )
    console.print(table)
    status = "" if result["complete"] else " (time limit reached: incomplete)"
    console.print(
        f"{len(result['units'])} of {result['units_tried']} unit id(s) answered; "
        f"{result['requests']} requests in {result['seconds']} s{status}"
    )
