"""`cellctl`'s click application: the daemon and the commissioning tool, on the same
drivers and models.

Heavy imports happen inside commands so `cellctl --version` and start-up stay fast;
`cellctl run` does not come here at all when its arguments are plain (cellctl/cli/main.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from cellctl import __version__
from cellctl.cli.complete import device_ids, profile_names
from cellctl.cli.convention import RootGroup
from cellctl.cli.entrypoints import COMMANDS, READERS, SCANNERS, SIMS, EntryPointGroup
from cellctl.exits import CommandFailed, ExitCode

EXIT_CONFIG = ExitCode.BAD_INPUT

config_arg = click.argument("config", type=click.Path(path_type=Path, dir_okay=False))


class ConfigProblems(CommandFailed):
    """A bad config or profile: one line per problem, exit code 2 (with --json, one JSON
    error whose message holds every line)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems), ExitCode.BAD_INPUT)
        self.problems = problems

    def show(self, file: Any = None) -> None:
        for line in self.problems:
            click.echo(f"error: {line}", err=True)
        click.echo(f"{len(self.problems)} problem(s); nothing was started.", err=True)


def _fail_config(problems: list[str]) -> NoReturn:
    raise ConfigProblems(problems)


def _load(config: Path) -> Any:
    from cellctl.config.loader import load_cell
    from cellctl.errors import ConfigError

    try:
        return load_cell(config)
    except ConfigError as exc:
        _fail_config(exc.problems)


# `-h` and `--help` everywhere: subcommands, including contributed ones, inherit this.
@click.group(
    cls=RootGroup,
    entry_point_group=COMMANDS,
    # `cellctl write | call | job`: their module is imported only when one of them runs
    lazy_commands={name: f"cellctl.cli.commands:{name}" for name in ("write", "call", "job")},
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="cellctl")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="Log level (default: the config's log_level, else info).",
)
@click.option(
    "--log-format", type=click.Choice(["auto", "json", "console"]), default="auto", show_default=True
)
@click.pass_context
def cli(ctx: click.Context, log_level: str | None, log_format: str) -> None:
    """Edge cell controller: machines over Modbus, OPC UA and G-code, published to MQTT."""
    ctx.ensure_object(dict)
    ctx.obj["log_level"] = log_level
    ctx.obj["log_json"] = None if log_format == "auto" else log_format == "json"


@cli.command()
@config_arg
@click.pass_context
def run(ctx: click.Context, config: Path) -> None:
    """Run the daemon for the cell described by CONFIG until SIGINT/SIGTERM."""
    from cellctl.cli.main import run_daemon
    from cellctl.errors import ConfigError

    try:
        run_daemon(config, log_level=ctx.obj.get("log_level"), log_json=ctx.obj.get("log_json"))
    except ConfigError as exc:
        _fail_config(exc.problems)


@cli.command()
@config_arg
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def reload(config: Path, as_json: bool) -> None:
    """Ask the daemon running CONFIG to reload it (SIGHUP; `systemctl reload cellctl` does
    the same). CONFIG is checked first: an invalid one is refused here with exit code 2 and
    the daemon keeps its running config. Exit 1 when no daemon runs for CONFIG."""
    import os
    import signal

    import orjson

    from cellctl.daemon import PID_FILE, state_dir

    compiled = _load(config)  # the same errors `check` prints, exit 2
    pid_file = state_dir(compiled) / PID_FILE
    try:
        pid = int(pid_file.read_text(encoding="utf-8").strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        reason = f"no cellctl daemon is running for {str(config)!r} ({pid_file}: {exc.__class__.__name__})"
        if as_json:
            click.echo(orjson.dumps({"ok": False, "error": reason}).decode())
        else:
            click.echo(f"error: {reason}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(orjson.dumps({"ok": True, "pid": pid, "devices": len(compiled.devices)}).decode())
    else:
        click.echo(f"reload requested from cellctl (pid {pid}); its log says what changed")


@cli.command()
@config_arg
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def check(config: Path, as_json: bool) -> None:
    """Validate CONFIG and every profile it uses; print what would run. No device I/O."""
    from cellctl.cli.summary import print_summary, summary

    compiled = _load(config)
    data = summary(compiled)
    if as_json:
        import orjson

        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        print_summary(data)


@cli.command()
@config_arg
@click.option("--device", "devices", multiple=True, metavar="ID", shell_complete=device_ids,
              help="Only this device (repeatable).")
@click.option("--wait", type=click.FloatRange(0.1, 120), default=3.0, show_default=True,
              help="Seconds to listen to a pushing device (OPC UA, G-code) for its first values.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result (errors too).")
def poll(config: Path, devices: tuple[str, ...], wait: float, as_json: bool) -> None:
    """Open each device of CONFIG, read it once and print every point (value, unit,
    quality, reason) and the machine state, flagging the commissioning traps: every point
    bad (wrong unit id or profile), the state point bad, floats that look like the wrong
    word order. Exit code 1 when a device is unreachable or shows a trap."""
    import asyncio

    from cellctl import logs
    from cellctl.cli.poll import poll_all, print_polled, select_devices
    from cellctl.exits import print_json

    compiled = _load(config)
    with logs.scoped("error", json=False):  # the result is the output; driver chatter is not
        results = asyncio.run(poll_all(select_devices(compiled, devices), wait))
    if as_json:
        print_json({"config": str(config), "devices": [r.as_dict() for r in results]})
    else:
        print_polled(results)
    if any(r.traps for r in results):
        sys.exit(ExitCode.FAILED)


@cli.command()
@click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Take the broker, TLS, credentials and topic root from this cell config.")
@click.option("--host", default=None, help="Broker host (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Broker port (default 1883).")
@click.option("--username", default=None)
@click.option("--password-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="File holding the password (never on the command line).")
@click.option("--tls-ca", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="CA file: connect with TLS.")
@click.option("--root", default=None, metavar="TOPIC",
              help="The cell's UNS root, e.g. uns/v1/acme/berlin/machining/line-1/cell-3.")
@click.option("--json", "as_json", is_flag=True, help="Stream the view as JSON lines, one per change.")
@click.option("--interval", type=click.FloatRange(0.05, 60), default=0.5, show_default=True,
              help="Seconds between redraws or JSON lines.")
@click.option("--duration", type=click.FloatRange(0.1), default=None, help="Stop after this many seconds.")
def watch(
    *,
    config: Path | None, host: str | None, port: int | None, username: str | None, password_file: Path | None,
    tls_ca: Path | None, root: str | None, as_json: bool, interval: float, duration: float | None,
) -> None:  # fmt: skip
    """The live table of a running cell from the backbone, as any consumer sees it:
    devices, points, machine state, alarms, job, outbox and events. Give --config CELL.yaml
    or the broker and --root."""
    from pydantic import ValidationError

    from cellctl.cli.watch import CellView, run_watch
    from cellctl.config.cell import Backbone
    from cellctl.encode.uns import cell_root

    overrides: dict[str, Any] = {
        k: v for k, v in {"host": host, "port": port, "username": username, "password_file": password_file}.items()
        if v is not None
    }  # fmt: skip
    if tls_ca is not None:
        overrides["tls"] = {"ca_file": tls_ca}
    if config is not None:
        compiled = _load(config)
        backbone = compiled.config.backbone.model_copy(update=overrides)
        root = root or cell_root(compiled.config.publish.prefix, compiled.config.identity)
    else:
        if root is None:
            raise CommandFailed("give --config CELL.yaml, or --root TOPIC with the broker options", ExitCode.BAD_INPUT)
        try:
            backbone = Backbone.model_validate(overrides)
        except ValidationError as exc:
            raise CommandFailed(str(exc.errors(include_url=False)[0]["msg"]), ExitCode.BAD_INPUT) from None
    if backbone.password_file is not None and not backbone.password_file.is_file():
        raise CommandFailed(f"password file {str(backbone.password_file)!r} cannot be read", ExitCode.BAD_INPUT)
    run_watch(CellView(root.rstrip("/")), backbone, as_json=as_json, duration=duration, interval=interval)


@cli.command()
@click.argument("what", type=click.Choice(["config", "profile", "payload"]))
@click.argument("name", required=False)
@click.option("--list", "list_payloads", is_flag=True, help="With `payload`: every payload, its topic, QoS and retain.")
@click.option("--strict", is_flag=True, help="With `payload`: refuse fields the schema does not name.")
def schema(what: str, name: str | None, list_payloads: bool, strict: bool) -> None:
    """Print the JSON Schema of the cell config, of a profile, or of the UNS payload NAME
    (`cellctl schema payload --list` names them), for editors, consumers and CI."""
    import orjson

    if what != "payload":
        from cellctl.config.cell import CellConfig
        from cellctl.config.profile import Profile

        if name is not None or list_payloads or strict:
            raise click.UsageError(f"NAME, --list and --strict are for `schema payload`, not {what!r}")
        model = CellConfig if what == "config" else Profile
        click.echo(orjson.dumps(model.model_json_schema(), option=orjson.OPT_INDENT_2).decode())
        return
    from cellctl.contract.registry import PAYLOADS
    from cellctl.contract.schema import payload_schema

    if list_payloads:
        for pl in PAYLOADS.values():
            retain = "retained" if pl.retain else "-"
            click.echo(f"{pl.name:<22} {pl.topic:<34} qos {pl.qos!s:<8} {retain:<8} {pl.summary}")
        return
    if name is None:
        raise click.UsageError("name a payload (`cellctl schema payload --list` lists them)")
    if name not in PAYLOADS:
        raise click.BadParameter(f"no payload named {name!r} (known: {', '.join(PAYLOADS)})", param_hint="NAME")
    click.echo(orjson.dumps(payload_schema(name, strict=strict), option=orjson.OPT_INDENT_2).decode())


@cli.command()
@config_arg
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write here (default: stdout)."
)
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
def asyncapi(config: Path, output: Path | None, fmt: str, as_json: bool) -> None:
    """Write the AsyncAPI 3.0 document of the cell CONFIG describes: every topic it publishes
    and receives, concrete, with message schemas, QoS and retain, and the Sparkplug
    channels with each DBIRTH's metrics. No device or broker I/O."""
    import orjson
    import yaml

    from cellctl.contract.asyncapi import asyncapi_document

    doc = asyncapi_document(_load(config))
    if fmt == "json" or as_json:
        text = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"
    else:
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


@cli.group()
def profiles() -> None:
    """List and show device-type profiles on the search path."""


@profiles.command("list")
@click.option("--profile-dir", "dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable list.")
def profiles_list(dirs: tuple[Path, ...], as_json: bool) -> None:
    """Every profile on the search path: the file that wins, where it comes from (config,
    system or the distribution that ships it), and any file of the same name it shadows."""
    from rich.table import Table

    from cellctl.cli.output import console
    from cellctl.config.profiles import list_profiles, load_profile_file, search_dirs
    from cellctl.errors import ConfigError

    if as_json:
        from cellctl.exits import print_json

        rows: list[dict[str, Any]] = []
        for found in list_profiles(search_dirs(list(dirs))):
            row: dict[str, Any] = {"name": found.name, "from": found.source, "file": str(found.path),
                                   "shadows": [str(p) for p in found.shadowed]}  # fmt: skip
            try:
                p = load_profile_file(found.path)
                row.update(driver=p.driver, points=len(p.points), description=p.description, error=None)
            except ConfigError as exc:
                row.update(driver=None, points=None, description=None, error=exc.problems[0])
            rows.append(row)
        print_json(rows)
        return
    table = Table()
    for column in ("name", "driver", "points"):
        table.add_column(column, no_wrap=True)  # names are what users copy: never cut
    table.add_column("description")
    table.add_column("from", no_wrap=True)
    table.add_column("file", overflow="fold")
    for found in list_profiles(search_dirs(list(dirs))):
        file = str(found.path) + "".join(f"\n[dim]shadows {p}[/dim]" for p in found.shadowed)
        try:
            p = load_profile_file(found.path)
            table.add_row(p.name, p.driver, str(len(p.points)), p.description or "", found.source, file)
        except ConfigError as exc:
            table.add_row(
                found.name, "?", "?", f"[red]invalid: {exc.problems[0]}[/red]", found.source, file
            )
    console().print(table)


@profiles.command("show")
@click.option("--profile-dir", "dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              is_eager=True)  # read before NAME is completed
@click.argument("name", shell_complete=profile_names)
@click.option("--json", "as_json", is_flag=True, help="The profile as JSON (as validated).")
def profiles_show(name: str, dirs: tuple[Path, ...], as_json: bool) -> None:
    """Points, state map and alarms of profile NAME."""
    from rich.table import Table

    from cellctl.cli.output import console as make_console
    from cellctl.config.profiles import load_profile, search_path
    from cellctl.errors import ConfigError

    try:
        p = load_profile(name, search_path(list(dirs)))
    except ConfigError as exc:
        _fail_config(exc.problems)
    if as_json:
        from cellctl.exits import print_json

        print_json(p.model_dump(mode="json"))
        return
    console = make_console()
    console.print(f"[bold]{p.name}[/bold] ({p.driver}) {p.description or ''}")
    table = Table("point", "type", "access", "unit", "scale", "deadband", "address")
    for pt in p.points:
        db = ""
        if pt.deadband:
            db = f"{pt.deadband.absolute}" if pt.deadband.absolute is not None else f"{pt.deadband.percent}%"
        addr = " ".join(f"{k}={v}" for k, v in pt.address.items())
        table.add_row(
            pt.id, pt.type, pt.access, pt.unit or "", "" if pt.scale is None else f"{pt.scale:g}", db, addr
        )
    console.print(table)
    if p.state:
        console.print(f"state from [bold]{p.state.point}[/bold]:")
        for raw, st in p.state.map.items():
            ex = st.execution.value if st.execution else ""
            console.print(f"  {raw} -> {st.item_state.value} / {st.operation_mode.value} {ex}")


@cli.group(cls=EntryPointGroup, entry_point_group=SIMS, load_for_listing=False)
def sim() -> None:
    """Simulated devices for tests, demos and commissioning practice. Simulators come from
    installed distributions (cellctl-sim: pip install ./sim_devices)."""


@cli.group(cls=EntryPointGroup, entry_point_group=READERS)
def read() -> None:
    """Read a device once, without a config: Modbus registers with every type and word
    order decoded, OPC UA nodes, a G-code machine's status. Each driver contributes its
    own `cellctl read DRIVER`."""


@cli.group(cls=EntryPointGroup, entry_point_group=SCANNERS)
def scan() -> None:
    """Find what answers: unit ids on a Modbus gateway or RTU line, and what each can read."""


@cli.command()
@click.option(
    "--broker", type=click.Choice(["auto", "mosquitto", "embedded"]), default="auto", show_default=True
)
@click.option(
    "--duration", type=float, default=None, help="Stop after this many seconds (default: until Ctrl-C)."
)
@click.option("--no-table", is_flag=True, help="Log instead of drawing the live table.")
@click.pass_context
def demo(ctx: click.Context, broker: str, duration: float | None, no_table: bool) -> None:
    """Simulated cell + local broker + daemon, with a live table of what MQTT carries."""
    from cellctl.cli.demo import run_demo

    run_demo(
        broker=broker, duration=duration, table=not no_table, log_level=ctx.obj.get("log_level") or "info"
    )


def main() -> None:
    cli(prog_name="cellctl")
