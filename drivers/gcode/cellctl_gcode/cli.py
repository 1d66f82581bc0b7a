"""Commissioning commands, built on the driver the daemon uses (`open_device`):

* `cellctl ports`: the serial ports on this machine, with their stable by-id names;
* `cellctl gcode send --port P FILE`: stream a job with a progress bar;
* `cellctl gcode console --port P`: type G-code and see what the machine answers;
* `cellctl read gcode --port P`: the machine's status report once (GRBL `?`, Marlin
  M114 and M105), raw and parsed by the driver's own parsers.

cellctl mounts `ports` and `gcode` lazily; `python -m cellctl_gcode` runs them alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
BY_ID = Path("/dev/serial/by-id")


def _links() -> dict[str, list[str]]:
    """Real device path -> the /dev/serial/by-id names pointing at it."""
    out: dict[str, list[str]] = {}
    if BY_ID.is_dir():
        for link in sorted(BY_ID.iterdir()):
            with contextlib.suppress(OSError):
                out.setdefault(os.path.realpath(link), []).append(str(link))
    return out


@click.command("ports")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable list.")
def ports(as_json: bool) -> None:
    """List serial ports (USB adapters, on-board UARTs) and their stable by-id names."""
    from serial.tools import list_ports

    links = _links()
    rows: list[dict[str, Any]] = []
    for p in sorted(list_ports.comports(), key=lambda p: p.device):
        rows.append({
            "device": p.device,
            "by_id": links.get(os.path.realpath(p.device), []),
            "description": p.description if p.description != "n/a" else "",
            "hwid": p.hwid if p.hwid != "n/a" else "",
            "vid_pid": f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None and p.pid is not None else "",
            "serial_number": p.serial_number or "",
        })
    if as_json:
        import orjson

        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    if not rows:
        click.echo("no serial ports found")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("device", "by-id (use this in configs)", "description", "usb id", "serial")
    for r in rows:
        table.add_row(r["device"], "\n".join(r["by_id"]), r["description"], r["vid_pid"], r["serial_number"])
    Console().print(table)


@click.group("gcode")
def gcode() -> None:
    """Talk to a GRBL or Marlin machine on a serial port (commissioning, manual jobs)."""


def _port_options(f: Any) -> Any:
    f = click.option("--port", "-p", required=True, help="Serial port, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")(f)
    f = click.option("--baud", "-b", type=click.IntRange(min=300), default=115200, show_default=True)(f)
    return click.option(
        "--dialect", type=click.Choice(["auto", "grbl", "marlin"]), default="auto", show_default=True,
        help="Firmware family; auto asks the machine (M115).",
    )(f)


def _context(port: str, baud: int, dialect: str, **options: Any) -> Any:
    from cellctl.driver import DeviceContext
    from cellctl_gcode.config import GcodeConnection, GcodeOptions

    try:
        opts = GcodeOptions.model_validate({"dialect": dialect, **options})
        conn = GcodeConnection(port=port, baudrate=baud)
    except Exception as exc:
        raise click.UsageError(str(exc)) from exc
    return DeviceContext(device_id="cli", connection=conn, options=opts, points=[], timeout=2.0)


def _quiet_logs(verbose: bool) -> None:
    from cellctl.driver import configure_logging

    configure_logging("debug" if verbose else "warning", json=False)


@gcode.command("send")
@_port_options
@click.option("--streaming", type=click.Choice(["character_counting", "ping_pong"]), default="character_counting",
              show_default=True, help="GRBL flow control.")
@click.option("--json", "as_json", is_flag=True, help="Print the job's result as JSON at the end.")
@click.option("-v", "--verbose", is_flag=True, help="Log the driver's events to stderr.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def send(*, port: str, baud: int, dialect: str, streaming: str, as_json: bool, verbose: bool, file: Path) -> None:
    """Stream FILE to the machine and show its progress. Ctrl-C cancels the job (GRBL:
    feed hold then soft reset; Marlin: quick stop). Exit status: 0 completed, 1 failed,
    2 bad file or options, 130 cancelled."""
    _quiet_logs(verbose)
    ctx = _context(port, baud, dialect, grbl={"streaming": streaming})
    try:
        code = asyncio.run(_send(ctx, file, as_json))
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    sys.exit(code)


async def _send(ctx: Any, file: Path, as_json: bool) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from cellctl.driver import DeviceUnavailable
    from cellctl_gcode.device import open_device
    from cellctl_gcode.job import Job, JobRejected, JobState
    from cellctl_gcode.program import ProgramError

    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    try:
        async with open_device(ctx) as dev:
            try:
                program = dev.load_program(file)
            except ProgramError as exc:
                click.echo(f"error: {exc}", err=True)
                return EXIT_USAGE
            job = Job(program)
            try:
                dev.start_job(job)
            except JobRejected as exc:
                click.echo(f"error: {exc}", err=True)
                return EXIT_FAILED
            columns = (
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>7.0f} lines/s"), TimeElapsedColumn(), TimeRemainingColumn(),
            )
            with Progress(*columns, transient=False, disable=as_json) as bar:
                task = bar.add_task(f"{file.name} ({dev.dialect})", total=job.total, rate=0.0)
                while not job.done.done():
                    waiter: asyncio.Future[Any] = loop.create_task(interrupted.wait(), name="cli-interrupt")
                    done: asyncio.Future[Any] = job.done
                    try:
                        await asyncio.wait({waiter, done}, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                    if interrupted.is_set() and job.active and not job.cancel_requested:
                        bar.console.print("cancelling ...")
                        await dev.cancel()
                    rate = job.acked / job.elapsed if job.elapsed > 0 else 0.0
                    bar.update(task, completed=job.acked, rate=rate)
                bar.update(task, completed=job.acked)
    except DeviceUnavailable as exc:
        click.echo(f"error: {exc.reason}", err=True)
        return EXIT_FAILED
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    summary = job.summary()
    if as_json:
        import orjson

        click.echo(orjson.dumps(summary).decode())
    elif job.state == JobState.COMPLETED:
        click.echo(f"completed: {job.total} lines in {job.elapsed:.1f} s"
                   + (f", {job.resends} resent" if job.resends else ""))
    if job.state == JobState.FAILED:
        click.echo(f"failed: {job.error}", err=True)
        return EXIT_FAILED
    if job.state == JobState.CANCELLED:
        click.echo(f"cancelled after {job.acked} of {job.total} lines", err=True)
        return EXIT_INTERRUPTED
    return 0


CONSOLE_HELP = """\
Type G-code lines; the machine's answers are shown as they come.
  ?        status report (GRBL)          !  feed hold (GRBL)      ~  cycle start (GRBL)
  :reset   GRBL soft reset (Ctrl-X)      :estop  emergency stop (GRBL reset, Marlin M112)
  :pause / :resume / :cancel   control a job sent from this console
  :quit    leave (or Ctrl-D)"""


@gcode.command("console")
@_port_options
@click.option("--show-status", is_flag=True, help="Also print periodic status / temperature reports.")
@click.option("-v", "--verbose", is_flag=True, help="Log the driver's events to stderr.")
def console(*, port: str, baud: int, dialect: str, show_status: bool, verbose: bool) -> None:
    """An interactive line to the machine for commissioning."""
    _quiet_logs(verbose)
    ctx = _context(port, baud, dialect)
    try:
        code = asyncio.run(_console(ctx, show_status))
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)


def _periodic(text: str) -> bool:
    t = text.lstrip()
    return t.startswith(("<", "T:", "ok T:", "X:", "echo:busy", "busy:")) or t in ("wait",)


async def _console(ctx: Any, show_status: bool) -> int:
    from cellctl.driver import DeviceUnavailable
    from cellctl_gcode import grbl
    from cellctl_gcode.device import open_device
    from cellctl_gcode.job import JobRejected
    from cellctl_gcode.session import CommandFailed

    want_status = [False]  # the user typed ?: show the next report even if periodic ones are hidden
    ready = [False]  # the handshake's own traffic is not the user's business

    def monitor(text: str) -> None:
        if not ready[0] or text == "ok" or text.startswith(("ok ", "error:")):
            return  # replies are printed with their command
        if _periodic(text) and not show_status:
            if not (want_status[0] and text.startswith("<")):
                return
            want_status[0] = False
        click.echo(f"< {text}")

    try:
        async with open_device(ctx, monitor=monitor) as dev:
            ready[0] = True
            click.echo(f"connected to {ctx.connection.port} ({dev.dialect}); :help for help")
            while True:
                line = await asyncio.to_thread(sys.stdin.readline)  # stdin, not the port
                if not line:
                    return 0
                cmd = line.strip()
                if not cmd:
                    continue
                if cmd in (":quit", ":q", ":exit"):
                    return 0
                if cmd == ":help":
                    click.echo(CONSOLE_HELP)
                    continue
                if dev.closed.is_set():
                    click.echo(f"error: {dev.close_reason}", err=True)
                    return EXIT_FAILED
                try:
                    if cmd in ("?", "!", "~") and dev.dialect == "grbl":
                        want_status[0] = cmd == "?"
                        dev.realtime(cmd.encode())
                    elif cmd == ":reset":
                        dev.realtime(grbl.SOFT_RESET)
                    elif cmd == ":estop":
                        dev.emergency_stop()
                    elif cmd in (":pause", ":resume", ":cancel"):
                        await {":pause": _call(dev.pause), ":resume": _call(dev.resume), ":cancel": dev.cancel()}[cmd]
                    else:
                        reply = await dev.command(cmd, timeout=30.0)
                        click.echo("ok" if reply.ok else reply.error)
                except (JobRejected, ValueError, CommandFailed) as exc:
                    click.echo(f"error: {exc}", err=True)
                except TimeoutError:
                    click.echo("error: no answer within 30 s", err=True)
    except DeviceUnavailable as exc:
        click.echo(f"error: {exc.reason}", err=True)
        return EXIT_FAILED


async def _call(fn: Any) -> None:
    fn()


@click.command("gcode")
@_port_options
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=5.0, show_default=True,
              help="Seconds to wait for the report.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (errors too).")
def read(*, port: str, baud: int, dialect: str, timeout: float, as_json: bool) -> None:
    """Ask the machine for its status once and print it: GRBL's `?` report (state,
    positions, feed and spindle, pins, overrides), Marlin's position (M114) and
    temperatures (M105). Exit code 1 when the machine cannot be reached or does not
    answer in time."""
    from cellctl.driver import CommandFailed, DeviceUnavailable, print_json, scoped_logging

    ctx = _context(port, baud, dialect)
    try:
        with scoped_logging("warning", json=False):
            data = asyncio.run(_read_status(ctx, timeout))
    except DeviceUnavailable as exc:
        raise CommandFailed(exc.reason) from None
    except TimeoutError:
        raise CommandFailed(f"no status report from {port!r} within {timeout:g} s") from None
    if as_json:
        print_json(data)
        return
    click.echo(f"{data['port']} ({data['dialect']})")
    for line in data["raw"]:
        click.echo(f"< {line}")
    for key, value in data["status"].items():
        click.echo(f"{key:<14} {value}")


async def _read_status(ctx: Any, timeout: float) -> dict[str, Any]:
    import dataclasses

    from cellctl_gcode import grbl, marlin
    from cellctl_gcode.device import open_device

    lines: list[str] = []
    arrived = asyncio.Event()

    def monitor(text: str) -> None:
        lines.append(text)
        arrived.set()

    async def first(match: Any) -> str:
        async with asyncio.timeout(timeout):
            while True:
                found = next((t for t in lines if match(t)), None)
                if found is not None:
                    return found
                arrived.clear()
                await arrived.wait()

    async with open_device(ctx, monitor=monitor) as dev:
        lines.clear()
        status: dict[str, Any] = {}
        raw: list[str] = []
        if dev.dialect == "grbl":
            dev.realtime(b"?")
            report = await first(lambda t: grbl.parse_status(t) is not None)
            parsed = grbl.parse_status(report)
            assert parsed is not None
            raw.append(report)
            status = {k: v for k, v in dataclasses.asdict(parsed).items() if v not in (None, "", {}, ())}
        else:
            async with asyncio.timeout(timeout):
                await dev.command("M114", timeout=timeout)
                await dev.command("M105", timeout=timeout)
            for text in lines:
                if marlin.is_position_report(text):
                    raw.append(text)
                    status.update(marlin.parse_position(text))
                elif marlin.is_temperature_report(text):
                    raw.append(text)
                    status.update(marlin.parse_temperatures(text))
        return {"port": ctx.connection.port, "dialect": dev.dialect, "raw": raw, "status": status}


def main() -> None:
    """`python -m cellctl_gcode`: the commands without cellctl's front door."""

    @click.group()
    def root() -> None:
        """cellctl's G-code commands."""

    root.add_command(ports)
    root.add_command(gcode)
    root(prog_name="python -m cellctl_gcode")
