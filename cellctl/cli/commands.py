"""`cellctl write | call | job`: commands to the *running* daemon, through the backbone
(docs/decisions/0010-cli-commands-over-the-backbone.md). The CLI is one more MQTT 5
client of the cell's command topic: the same router, policy and audit as the MES's
commands, and the answer comes back on a private response topic."""

from __future__ import annotations

import getpass
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import click
import orjson

EXIT_DONE, EXIT_NOT_DONE, EXIT_CONFIG, EXIT_NO_ANSWER = 0, 1, 2, 3

config_opt = click.option(
    "--config", "config", required=True, type=click.Path(path_type=Path, dir_okay=False), help="The cell config."
)
json_opt = click.option("--json", "as_json", is_flag=True, help="Print the final answer as JSON.")
timeout_opt = click.option("--timeout", type=float, default=15.0, show_default=True, help="Seconds to wait.")
dry_opt = click.option("--validate-only", is_flag=True, help="Run every check but not the command.")
user_opt = click.option("--username", default=None, help="MQTT user (default: the config's backbone user).")
pw_opt = click.option(
    "--password-file", type=click.Path(path_type=Path, dir_okay=False), default=None, help="File with its password."
)


def parse_value(text: str) -> Any:
    """A value as JSON (`250.5`, `true`, `"250"`), else the text itself (a string)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


class NoAnswer(Exception):
    pass


STATUS_GRACE = 2.0  # s without any retained status before sending anyway (an ACL may hide it)


def _wait_online(online: threading.Event, status: list[dict[str, Any]], topic: str, deadline: float) -> None:
    """Send only once the daemon says `online`: it subscribes to its command topics before
    it says so, and a command sent before that reaches no one. A daemon that said
    `offline` is waited for until the deadline; no status at all (never run, or hidden by
    an ACL) is given `STATUS_GRACE` seconds, then the command goes out anyway."""
    if online.wait(max(0.0, min(STATUS_GRACE, deadline - time.monotonic()))):
        return
    if not status:
        return
    if online.wait(max(0.0, deadline - time.monotonic())):
        return
    reason = status[-1].get("reason")
    raise NoAnswer(f"the daemon is offline ({reason or 'no reason given'}) according to {topic}")


def _ask(
    config: Path, device: str, body: dict[str, Any], *, timeout: float, username: str | None, password_file: Path | None
) -> dict[str, Any]:
    """Publish one command and wait for its final answer (done, failed, refused)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from cellctl.cli.app import _load
    from cellctl.encode.uns import cell_root

    compiled = _load(config)
    cfg = compiled.config
    if "uns" not in cfg.publish.formats:
        raise click.ClickException("the cell publishes no UNS format: its command topics do not exist")
    root = cell_root(cfg.publish.prefix, cfg.identity)
    backbone = cfg.backbone
    user = username if username is not None else backbone.username
    pw_path = password_file if password_file is not None else (backbone.password_file if username is None else None)
    password = pw_path.read_text(encoding="utf-8").rstrip("\r\n") if pw_path is not None else None
    token = uuid.uuid4().hex
    reply_topic = f"cellctl-cli/{token}"
    final: dict[str, Any] = {}
    done = threading.Event()
    subscribed = threading.Event()
    online = threading.Event()
    status: list[dict[str, Any]] = []
    problem: list[str] = []
    status_topic = f"{root}/status"

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            problem.append(f"broker refused the connection: {reason}")
            done.set()
            return
        # the ack topic too: a daemon on MQTT 3.1.1 never sees the response topic; the
        # retained status says whether the daemon (and so its command subscription) is up
        client.subscribe([(reply_topic, 1), (f"{root}/cmd/{device}/ack", 1), (status_topic, 1)])

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        try:
            answer = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        if msg.topic == status_topic:
            if isinstance(answer, dict):
                status.append(answer)
                if answer.get("status") == "online":
                    online.set()
            return
        if not isinstance(answer, dict) or answer.get("state") in (None, "accepted"):
            return
        if corr == token.encode() or (msg.topic != reply_topic and answer.get("id") == body["id"]):
            final.update(answer)
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"cellctl-cli-{token[:12]}", protocol=MQTTProtocolVersion.MQTTv5)
    if user is not None:
        client.username_pw_set(user, password)
    if backbone.tls is not None:
        from cellctl.deliver.mqtt import configure_tls

        configure_tls(client, backbone.tls)
    client.on_connect = on_connect
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = on_message
    deadline = time.monotonic() + timeout
    try:
        client.connect(backbone.host, backbone.port, 30)
    except OSError as exc:
        raise NoAnswer(f"cannot reach the broker at {backbone.host}:{backbone.port}: {exc}") from None
    client.loop_start()
    try:
        if not subscribed.wait(max(0.1, deadline - time.monotonic())) or problem:
            raise NoAnswer(problem[0] if problem else "no subscription to the response topic")
        _wait_online(online, status, status_topic, deadline)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = reply_topic
        props.CorrelationData = token.encode()
        props.UserProperty = ("via", "cellctl-cli")
        props.UserProperty = ("user", getpass.getuser())
        client.publish(f"{root}/cmd/{device}", orjson.dumps(body), 1, False, properties=props)
        if not done.wait(max(0.1, deadline - time.monotonic())) or problem:
            raise NoAnswer(problem[0] if problem else f"no answer within {timeout:g} s (is the daemon running?)")
    finally:
        client.loop_stop()
        client.disconnect()
    return final


def _run(
    config: Path, device: str, body: dict[str, Any], *, as_json: bool, timeout: float, username: str | None,
    password_file: Path | None,
) -> None:
    try:
        answer = _ask(config, device, body, timeout=timeout, username=username, password_file=password_file)
    except NoAnswer as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_NO_ANSWER)
    if as_json:
        click.echo(orjson.dumps(answer).decode())
    else:
        line = f"{answer.get('state')}: {answer.get('command')} on {answer.get('device')!r}"
        if answer.get("reason"):
            line += f" ({answer['reason']}: {answer.get('message')})"
        if "readback" in answer:
            line += f", read back {answer['readback']!r}"
        if answer.get("result"):
            line += f", result {answer['result']}"
        click.echo(line)
    sys.exit(EXIT_DONE if answer.get("state") == "done" else EXIT_NOT_DONE)


def _body(kind: str, args: dict[str, Any], validate_only: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"id": f"cli-{uuid.uuid4().hex[:16]}", "command": kind, "args": args}
    if validate_only:
        body["validate_only"] = True
    return body


@click.command()
@click.argument("device")
@click.argument("point")
@click.argument("value")
@config_opt
@dry_opt
@json_opt
@timeout_opt
@user_opt
@pw_opt
def write(
    *,
    device: str, point: str, value: str, config: Path, validate_only: bool, as_json: bool, timeout: float,
    username: str | None, password_file: Path | None,
) -> None:
    """Write VALUE (JSON: 250.5, true, '"text"') to POINT of DEVICE on the running daemon."""
    body = _body("write", {"point": point, "value": parse_value(value)}, validate_only)
    _run(config, device, body, as_json=as_json, timeout=timeout, username=username, password_file=password_file)


@click.command()
@click.argument("device")
@click.argument("method")
@click.argument("args", nargs=-1)
@config_opt
@dry_opt
@json_opt
@timeout_opt
@user_opt
@pw_opt
def call(
    *,
    device: str, method: str, args: tuple[str, ...], config: Path, validate_only: bool, as_json: bool,
    timeout: float, username: str | None, password_file: Path | None,
) -> None:
    """Call METHOD (declared by the device's profile) with NAME=VALUE arguments."""
    named: dict[str, Any] = {}
    for a in args:
        name, sep, text = a.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{a!r} is not NAME=VALUE", param_hint="ARGS")
        named[name] = parse_value(text)
    body = _body("call", {"method": method, "args": named}, validate_only)
    _run(config, device, body, as_json=as_json, timeout=timeout, username=username, password_file=password_file)


def parse_lots(given: tuple[str, ...]) -> dict[str, str]:
    """`--lot MATERIAL=LOT` options as the `lots` argument (the daemon checks the names and ids)."""
    out: dict[str, str] = {}
    for a in given:
        material, sep, lot = a.partition("=")
        if not sep or not material or not lot:
            raise click.BadParameter(f"{a!r} is not MATERIAL=LOT", param_hint="--lot")
        if material in out and out[material] != lot:
            raise click.BadParameter(f"two lots for {material!r}", param_hint="--lot")
        out[material] = lot
    return out


@click.group()
def job() -> None:
    """Start, pause, resume or cancel a job on the running daemon."""


@job.command("start")
@click.argument("device")
@click.argument("name")
@click.option(
    "--file", "program", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
    help="Send this program inline (else NAME is taken from the cell's job store).",
)
@click.option(
    "--lot", "lots", multiple=True, metavar="MATERIAL=LOT",
    help="The job runs on lot LOT of the profile's job material MATERIAL (repeatable).",
)
@config_opt
@dry_opt
@json_opt
@timeout_opt
@user_opt
@pw_opt
def job_start(
    *,
    device: str, name: str, program: Path | None, lots: tuple[str, ...], config: Path, validate_only: bool,
    as_json: bool, timeout: float, username: str | None, password_file: Path | None,
) -> None:
    """Start job NAME on DEVICE."""
    args: dict[str, Any] = {"name": name}
    if program is not None:
        args["program"] = program.read_text(encoding="latin-1")
    if lots:
        args["lots"] = parse_lots(lots)
    _run(config, device, _body("job_start", args, validate_only), as_json=as_json, timeout=timeout,
         username=username, password_file=password_file)


def _control(kind: str) -> click.Command:
    @click.argument("device")
    @config_opt
    @dry_opt
    @json_opt
    @timeout_opt
    @user_opt
    @pw_opt
    def control(
        *,
        device: str, config: Path, validate_only: bool, as_json: bool, timeout: float, username: str | None,
        password_file: Path | None,
    ) -> None:
        _run(config, device, _body(f"job_{kind}", {}, validate_only), as_json=as_json, timeout=timeout,
             username=username, password_file=password_file)

    control.__doc__ = f"{kind.capitalize()} the job running on DEVICE."
    return click.command(kind)(control)


for _kind in ("pause", "resume", "cancel"):
    job.add_command(_control(_kind))
