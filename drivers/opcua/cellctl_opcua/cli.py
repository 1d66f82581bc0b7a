"""Commissioning commands, mounted into `cellctl` by the core:

    cellctl browse opc.tcp://HOST:PORT [--depth N] [--profile-skeleton]   (cellctl_opcua.cli:browse)
    cellctl cert init | show | trust                                      (cellctl_opcua.cli:cert)
    cellctl read opcua opc.tcp://HOST:PORT NODE... [--namespace URI]      (cellctl_opcua.cli:read)

They use the driver itself (same connection, security and trust store as the daemon),
never a second implementation. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from cellctl_opcua.config import SecurityMode, SecurityPolicyName, default_pki_dir

EXIT_FAILED = 1
_MODES: tuple[SecurityMode, ...] = ("None", "Sign", "SignAndEncrypt")
_POLICIES: tuple[SecurityPolicyName, ...] = ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")

F = TypeVar("F", bound=Callable[..., Any])

pki_option = click.option(
    "--pki",
    "pki",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="PKI directory (default: $STATE_DIRECTORY/pki, else /var/lib/cellctl/pki).",
)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_FAILED)


def session_options(command: F) -> F:
    """The options every command that opens an OPC UA session takes: security mode and
    policy, the PKI directory, user and password file, and the per-request timeout."""
    for option in reversed((
        click.option("--security-mode", type=click.Choice(_MODES), default="None", show_default=True),
        click.option("--security-policy", type=click.Choice(_POLICIES), default=None, help="Default Basic256Sha256."),
        pki_option,
        click.option("--username", default=None),
        click.option(
            "--password-file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
            help="File holding the password (never on the command line).",
        ),
        click.option(
            "--timeout", type=click.FloatRange(0.1, 60), default=5.0, show_default=True, help="Seconds per request."
        ),
    )):  # fmt: skip
        command = option(command)
    return command


@click.command("browse")
@click.argument("endpoint")
@click.option("--depth", type=click.IntRange(1, 20), default=3, show_default=True, help="Levels below the root.")
@click.option("--root", default=None, metavar="NODE", help="Start here (nsu=<uri>;s=... or i=...); default Objects.")
@click.option("--include-server", is_flag=True, help="Also list the standard Server object (large).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of nodes, for scripts.")
@click.option("--profile-skeleton", is_flag=True, help="Print a starting profile (YAML) instead of the tree.")
@click.option("--name", default="my-opcua-machine", show_default=True, help="Profile name for --profile-skeleton.")
@session_options
def browse(
    *,
    endpoint: str,
    depth: int,
    root: str | None,
    include_server: bool,
    as_json: bool,
    profile_skeleton: bool,
    name: str,
    security_mode: SecurityMode,
    security_policy: SecurityPolicyName | None,
    pki: Path | None,
    username: str | None,
    password_file: Path | None,
    timeout: float,
) -> None:
    """Print the address space of the OPC UA server at ENDPOINT: NodeIds with namespace
    URIs, browse names, data types and values; or a profile skeleton to start from."""
    from pydantic import ValidationError

    from cellctl.driver import configure_logging
    from cellctl_opcua.config import OpcUaConnection, OpcUaOptions

    configure_logging("warning", stream=sys.stderr)  # stdout carries the tree, JSON or YAML only

    try:
        connection = OpcUaConnection.model_validate(
            {
                "endpoint": endpoint,
                "security_mode": security_mode,
                "security_policy": security_policy,
                "pki_dir": pki or default_pki_dir(),
                "username": username,
                "password_file": password_file,
            }
        )
    except ValidationError as exc:
        _fail("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors(include_url=False)))
        return
    try:
        nodes = asyncio.run(
            _browse(
                connection, OpcUaOptions(), depth=depth, root=root, include_server=include_server, timeout=timeout
            )
        )
    except Exception as exc:  # DeviceUnavailable, a bad --root, a server error: say it, no traceback
        _fail(str(getattr(exc, "reason", None) or exc))
        return
    if profile_skeleton:
        from cellctl_opcua.browse import profile_skeleton as skeleton

        click.echo(skeleton(nodes, name=name, endpoint=endpoint), nl=False)
    elif as_json:
        import orjson

        click.echo(orjson.dumps([n.as_dict() for n in nodes], option=orjson.OPT_INDENT_2).decode())
    else:
        _print_tree(nodes)


async def _browse(
    connection: Any, options: Any, *, depth: int, root: str | None, include_server: bool, timeout: float
) -> list[Any]:
    from cellctl.driver import DeviceContext
    from cellctl_opcua.browse import browse_nodes
    from cellctl_opcua.nodeid import parse_node_id
    from cellctl_opcua.plugin import plugin

    ctx = DeviceContext(device_id="browse", connection=connection, options=options, points=[], timeout=timeout)
    async with plugin.open(ctx) as device:
        assert device.client is not None
        assert device.resolver is not None
        start = device.resolver.node_id(parse_node_id(root)) if root else None
        return await browse_nodes(
            device.client, device.namespaces, depth=depth, root=start, include_server=include_server
        )


def _print_tree(nodes: list[Any]) -> None:
    """Depth-first, children under their parent; names without their namespace (the
    NodeId column has it)."""
    for n in sorted(nodes, key=lambda n: n.path):
        indent = "  " * (n.depth - 1)
        label = f"{indent}{n.browse_name.rpartition(';')[2]}"
        if n.node_class == "Variable":
            value = f"[{n.status}]" if n.status else repr(n.value)
            access = " rw" if n.writable else ""
            click.echo(f"{label:<44} {n.node:<60} {n.data_type or '?':<10}{access:<3} = {value}")
        else:
            click.echo(f"{label:<44} {n.node:<60} {n.node_class}")


@click.group("cert")
def cert() -> None:
    """The OPC UA client certificate (stable application URI) and the trust store."""


@cert.command("init")
@pki_option
@click.option("--uri", default=None, help="Application URI (default: kept from an existing cert, else urn:<host>:cellctl).")
@click.option("--hostname", default=None, help="Host name in the certificate (default: this host's).")
@click.option("--days", type=click.IntRange(1, 36500), default=1825, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing certificate (its application URI is kept).")
def cert_init(*, pki: Path | None, uri: str | None, hostname: str | None, days: int, force: bool) -> None:
    """Create the client's application instance certificate and the trust store folders."""
    from cellctl_opcua.pki import PkiError, TrustStore, der_of, thumbprint

    store = TrustStore(pki or default_pki_dir())
    try:
        me, created = store.init(uri=uri, hostname=hostname, days=days, force=force)
    except (PkiError, OSError) as exc:
        _fail(str(exc))
        return
    click.echo(f"{'created' if created else 'exists '} {me.cert_path}")
    click.echo(f"application URI  {me.uri}")
    click.echo(f"thumbprint       {thumbprint(der_of(me.cert))}")
    if created:
        click.echo("Servers must trust this certificate: copy it into the server's trusted list.")


@cert.command("show")
@pki_option
@click.option("--json", "as_json", is_flag=True)
def cert_show(*, pki: Path | None, as_json: bool) -> None:
    """Our certificate, and the trusted and rejected server certificates."""
    from cellctl_opcua.pki import PkiError, TrustStore, application_uri, common_name, der_of, thumbprint

    store = TrustStore(pki or default_pki_dir())

    def entry(path: Path, c: Any) -> dict[str, Any]:
        return {
            "file": str(path),
            "subject": common_name(c),
            "application_uri": application_uri(c),
            "thumbprint": thumbprint(der_of(c)),
            "not_after": c.not_valid_after_utc.isoformat(),
        }

    own: dict[str, Any] | None
    try:
        me = store.identity()
        own = entry(me.cert_path, me.cert)
    except PkiError as exc:
        own = {"error": str(exc)}
    data = {
        "pki": str(store.root),
        "own": own,
        "trusted": [entry(p, c) for p, c in store.trusted()],
        "rejected": [entry(p, c) for p, c in store.rejected()],
    }
    if as_json:
        import orjson

        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"PKI directory {store.root}")
    if "error" in own:
        click.echo(f"own: {own['error']}")
    else:
        click.echo(f"own: {own['subject']}  {own['application_uri']}  {own['thumbprint']}  until {own['not_after'][:10]}")
    for kind in ("trusted", "rejected"):
        items = data[kind]
        assert isinstance(items, list)
        click.echo(f"{kind}: {len(items)}")
        for e in items:
            click.echo(f"  {e['thumbprint']}  {e['subject']}  {e['application_uri'] or ''}  ({e['file']})")


@cert.command("trust")
@pki_option
@click.argument("certificate")
def cert_trust(*, pki: Path | None, certificate: str) -> None:
    """Trust a server certificate: a file, or a thumbprint (prefix) from `cert show`'s
    rejected list. The daemon uses it at its next connect attempt, no restart needed."""
    from cellctl_opcua.pki import PkiError, TrustStore

    store = TrustStore(pki or default_pki_dir())
    try:
        path = store.trust(certificate)
    except PkiError as exc:
        _fail(str(exc))
        return
    click.echo(f"trusted {path}")


def _is_node_id(text: str) -> bool:
    return text.startswith(("nsu=", "ns=", "i=", "s=", "g=", "b="))


@click.command("read")
@click.argument("endpoint")
@click.argument("nodes", nargs=-1, required=True)
@click.option("--namespace", default=None, metavar="URI", help="Namespace URI of browse path names.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, one object per node (errors too).")
@session_options
def read(
    *,
    endpoint: str,
    nodes: tuple[str, ...],
    namespace: str | None,
    as_json: bool,
    security_mode: SecurityMode,
    security_policy: SecurityPolicyName | None,
    pki: Path | None,
    username: str | None,
    password_file: Path | None,
    timeout: float,
) -> None:
    """Read NODE(s) of the OPC UA server at ENDPOINT once: value, data type, status and the
    source and server timestamps. A NODE is a NodeId (nsu=<uri>;s=Name, i=2258) or a
    browse path from Objects (Machine/Temperatures/Spindle, names in --namespace). Exit
    code 1 when a node is not Good, or the server cannot be reached; 2 for a bad NODE."""
    from pydantic import ValidationError

    from cellctl.driver import CommandFailed, ExitCode, print_json, scoped_logging
    from cellctl_opcua.config import NodeAddress, OpcUaConnection

    addresses = []
    for text in nodes:
        spec: dict[str, Any] = {"node": text} if _is_node_id(text) else {"path": text, "namespace": namespace}
        try:
            addresses.append(NodeAddress.model_validate(spec))
        except ValidationError as exc:
            msg = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors(include_url=False))
            raise CommandFailed(f"node {text!r}: {msg}", ExitCode.BAD_INPUT) from None
    try:
        connection = OpcUaConnection.model_validate(
            {
                "endpoint": endpoint,
                "security_mode": security_mode,
                "security_policy": security_policy,
                "pki_dir": pki or default_pki_dir(),
                "username": username,
                "password_file": password_file,
            }
        )
    except ValidationError as exc:
        msg = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors(include_url=False))
        raise CommandFailed(f"endpoint {endpoint!r}: {msg}", ExitCode.BAD_INPUT) from None
    try:
        with scoped_logging("error", stream=sys.stderr):
            rows = asyncio.run(_read(connection, addresses, nodes, timeout=timeout))
    except Exception as exc:  # DeviceUnavailable, a server error: say it, no traceback
        raise CommandFailed(str(getattr(exc, "reason", None) or exc)) from None
    if as_json:
        print_json(rows)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("node", "value", "type", "status", "source time", "server time")
        for column in table.columns:
            column.overflow = "fold"  # NodeIds are copied from here: never cut them
        for r in rows:
            style = "green" if r["status"] == "Good" else "red"
            table.add_row(
                r["node"], repr(r["value"]) if isinstance(r["value"], str) else str(r["value"]),
                r["data_type"] or "", f"[{style}]{r['status']}[/{style}]",
                r["source_timestamp"] or "", r["server_timestamp"] or "",
            )  # fmt: skip
        Console().print(table)
    if any(r["status"] != "Good" for r in rows):
        sys.exit(ExitCode.FAILED)


async def _read(connection: Any, addresses: list[Any], texts: tuple[str, ...], *, timeout: float) -> list[dict[str, Any]]:
    """Resolve and read through the driver's own session (same security and trust store)."""
    from asyncua import ua

    from cellctl.driver import DeviceContext
    from cellctl_opcua.device import status_name
    from cellctl_opcua.plugin import plugin
    from cellctl_opcua.values import text_of

    ctx = DeviceContext(device_id="read", connection=connection, options=_options(), points=[], timeout=timeout)
    rows: list[dict[str, Any]] = []
    async with plugin.open(ctx) as device:
        assert device.client is not None
        assert device.resolver is not None
        resolved = await device.resolver.resolve(addresses)
        for text, target in zip(texts, resolved, strict=True):
            row: dict[str, Any] = {
                "node": text, "node_id": None, "value": None, "data_type": None, "status": None,
                "source_timestamp": None, "server_timestamp": None,
            }  # fmt: skip
            rows.append(row)
            if isinstance(target, str):
                row["status"] = target
                continue
            row["node_id"] = target.to_string()
            dv = await device.client.get_node(target).read_data_value(raise_on_bad_status=False)
            code = dv.StatusCode.value if dv.StatusCode is not None else 0
            row["status"] = status_name(code)
            if dv.Value is not None and dv.Value.VariantType != ua.VariantType.Null:
                value = dv.Value.Value
                row["value"] = value if isinstance(value, bool | int | float | str) else text_of(value)
                row["data_type"] = dv.Value.VariantType.name
            for key, stamp in (("source_timestamp", dv.SourceTimestamp), ("server_timestamp", dv.ServerTimestamp)):
                row[key] = stamp.isoformat() if stamp is not None else None
    return rows


def _options() -> Any:
    from cellctl_opcua.config import OpcUaOptions

    return OpcUaOptions()
