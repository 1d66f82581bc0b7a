"""`cellctl watch`: what a running cell publishes, as any consumer sees it on the
backbone: cell status, every device with its points, machine state, alarms and job,
the outbox figures and the last events. A live table on a terminal, or JSON lines
(`--json`). `cellctl demo` draws this same view.

The view is built from the UNS JSON topics only (docs/topics.md): retained states give
the full picture at once, data messages the changes.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson

from cellctl.config.cell import Backbone

MAX_EVENTS = 20


class CellView:
    """What a consumer knows about one cell, from the messages under its root topic.
    Thread-safe: paho's thread feeds it, the terminal or a JSON writer reads it."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.status = "?"
        self.status_reason: str | None = None
        self.connected = False
        self.broker = ""
        self.devices: dict[str, dict[str, Any]] = {}
        self.outbox: dict[str, Any] | None = None
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_EVENTS)
        self.messages = 0
        self.changes = 0  # bumped on every message that changed the view

    def set_connected(self, up: bool) -> None:
        with self.lock:
            self.connected = up
            self.changes += 1

    def on_message(self, topic: str, payload: bytes) -> None:
        """Take one message; anything malformed is ignored (a view must not crash)."""
        if not topic.startswith(self.root + "/"):
            return
        rest = topic[len(self.root) + 1 :].split("/")
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(body, dict):
            return
        with self.lock:
            self.messages += 1
            self.changes += 1
            with contextlib.suppress(AttributeError, TypeError, ValueError):
                self._take(rest, body)  # a message of another shape: keep what we know

    def _take(self, rest: list[str], body: dict[str, Any]) -> None:
        if rest == ["status"]:
            self.status = str(body.get("status", "?"))
            self.status_reason = body.get("reason")
        elif rest == ["outbox"]:
            self.outbox = body
        elif rest == ["events"]:
            self.events.appendleft(body)
        elif len(rest) == 2 and rest[1] in ("state", "data", "job"):
            dev = self.devices.setdefault(
                rest[0], {"points": {}, "machine": None, "available": None, "reason": None, "ts": None}
            )
            if body.get("historical"):
                return  # late delivery from the outbox: never overwrite newer values
            if rest[1] == "job":  # the current job record (retained), docs/jobs.md
                dev["job"] = body
                return
            dev["ts"] = body.get("ts")
            if rest[1] == "state":
                self._state(dev, body)
            else:
                self._data(dev, body)

    @staticmethod
    def _state(dev: dict[str, Any], body: dict[str, Any]) -> None:
        dev["available"] = body.get("available")
        dev["reason"] = body.get("reason") or body.get("degraded")
        dev["machine"] = body.get("machine")
        dev["profile"] = body.get("profile")
        dev["points"] = {pid: dict(entry) for pid, entry in (body.get("points") or {}).items()}
        for key in ("oee", "oee_shift"):
            if key in body:
                dev[key] = body[key]

    @staticmethod
    def _data(dev: dict[str, Any], body: dict[str, Any]) -> None:
        for pid, value in (body.get("values") or {}).items():
            entry = dev["points"].setdefault(pid, {})
            entry["v"] = value
            entry.setdefault("q", "good")
        for pid, q in (body.get("quality") or {}).items():
            entry = dev["points"].setdefault(pid, {})
            entry["q"] = q.get("q")
            entry["reason"] = q.get("reason")
        if body.get("machine"):
            dev["machine"] = body["machine"]
        if "available" in body:
            dev["available"] = body["available"]

    def snapshot(self) -> dict[str, Any]:
        """The whole view as plain data (what `--json` prints)."""
        with self.lock:
            return {
                "root": self.root,
                "broker": self.broker,
                "connected": self.connected,
                "status": self.status,
                "status_reason": self.status_reason,
                "messages": self.messages,
                "devices": {
                    d: {**dev, "points": {p: dict(e) for p, e in dev["points"].items()}}
                    for d, dev in sorted(self.devices.items())
                },
                "outbox": self.outbox,
                "events": list(self.events),
            }

    def render(self, title: str = "cellctl watch") -> Any:
        """A rich renderable of the view (a table per device)."""
        return render(self.snapshot(), title)


def render(view: dict[str, Any], title: str) -> Any:
    from rich.columns import Columns
    from rich.console import Group
    from rich.text import Text

    link = "connected" if view["connected"] else "not connected"
    status = view["status"] + (f" ({view['status_reason']})" if view["status_reason"] else "")
    parts: list[Any] = [
        Text.assemble(
            (f"{title} ", "bold"),
            f"- {view['root']} on {view['broker']} ({link}) - cell {status} - {view['messages']} messages - Ctrl-C to stop",
        )
    ]
    tables = []
    for dev_id, dev in view["devices"].items():
        tables.append(_device_table(dev_id, dev))
    parts.append(Columns(tables))
    ob = view["outbox"]
    if ob is not None:
        dropped = ob.get("dropped_total", 0)
        parts.append(
            Text(
                f"outbox: {ob.get('messages', '?')} waiting, {ob.get('bytes', '?')} bytes, {dropped} dropped",
                style="red" if dropped else "",
            )
        )
    for event in list(view["events"])[:5]:
        parts.append(Text(f"event: {orjson.dumps(event).decode()}", style="yellow"))
    return Group(*parts)


def _device_table(dev_id: str, dev: dict[str, Any]) -> Any:
    from rich.table import Table
    from rich.text import Text

    m = dev.get("machine") or {}
    lines = []
    if dev.get("available") is False:
        lines.append(f"DOWN: {dev.get('reason') or 'unavailable'}")
    elif dev.get("reason"):
        lines.append(f"degraded: {dev['reason']}")
    if m:
        lines.append(
            f"{m.get('item_state', '?')} / {m.get('operation_mode', '?')} / {m.get('execution', '?')}"
            f" (raw {m.get('raw_state')})"
        )
        alarms = ", ".join(f"{a.get('code')} {a.get('text')}" for a in m.get("alarms") or []) or "none"
        lines.append(f"alarms: {alarms}")
        program = m.get("program")
        if program:
            progress = program.get("progress")
            shown = f" {progress * 100:.0f}%" if isinstance(progress, int | float) else ""
            lines.append(f"job: {program.get('name') or '?'}{shown}")
    lines += job_lines(dev)
    style = "bold red" if dev.get("available") is False else "bold"
    table = Table(
        "point", "value", "unit", "quality",
        title=Text(dev_id, style=style), caption="\n".join(lines), caption_justify="left",
    )  # fmt: skip
    for pid, entry in sorted(dev["points"].items()):
        v = entry.get("v")
        shown = f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))
        q = entry.get("q") or "?"
        qstyle = {"good": "green", "uncertain": "yellow"}.get(q, "red")
        reason = f" ({entry['reason']})" if entry.get("reason") else ""
        table.add_row(pid, shown, entry.get("unit") or "", Text(f"{q}{reason}", style=qstyle))
    return table


def _pct(v: Any) -> str:
    return f"{v * 100:.0f}%" if isinstance(v, int | float) else "-"


def job_line(job: dict[str, Any]) -> str:
    """`job BRACKET running: 8 made, 7 good, 1 scrap, filament 1519 mm (4.5 g), 0.12 kWh`."""
    text = (
        f"job {job.get('job_id')} {job.get('state')}"
        + (f" ({job['reason']})" if job.get("reason") else "")
        + f": {job.get('produced', 0)} made, {job.get('good', 0)} good, {job.get('scrap', 0)} scrap"
    )
    for name, m in (job.get("materials") or {}).items():
        mass = f" ({m['mass_g']:.1f} g)" if isinstance(m.get("mass_g"), int | float) else ""
        text += f", {name} {m.get('amount')} {m.get('unit')}{mass}"
    if isinstance(job.get("energy_kwh"), int | float):
        text += f", {job['energy_kwh']:.3f} kWh"
    return text


def oee_line(label: str, oee: dict[str, Any]) -> str:
    """`OEE hour: A 81% x P 92% x Q 98% = 74% (600 made)`."""
    return (
        f"OEE {label}: A {_pct(oee.get('availability'))} x P {_pct(oee.get('performance'))}"
        f" x Q {_pct(oee.get('quality'))} = {_pct(oee.get('oee'))} ({oee.get('produced', 0)} made)"
    )


def job_lines(dev: dict[str, Any]) -> list[str]:
    """The current job and OEE of a device whose profile maps jobs (none otherwise)."""
    lines = []
    if isinstance(dev.get("job"), dict):
        lines.append(job_line(dev["job"]))
    for key in ("oee", "oee_shift"):
        oee = dev.get(key)
        if isinstance(oee, dict):
            lines.append(oee_line(str(oee.get("window") or ("hour" if key == "oee" else "shift")), oee))
    return lines


@contextlib.contextmanager
def subscribed(view: CellView, backbone: Backbone, *, client_id: str | None = None) -> Iterator[Any]:
    """A paho client on `backbone` (TLS and credentials as the daemon uses them) feeding
    `view` from `<root>/#`, reconnecting by itself; disconnected on exit."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"cellctl-watch-{os.getpid()}")
    if backbone.username is not None:
        password = None
        if backbone.password_file is not None:
            password = backbone.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        client.username_pw_set(backbone.username, password)
    if backbone.tls is not None:
        from cellctl.deliver.mqtt import configure_tls

        configure_tls(client, backbone.tls)
    view.broker = f"{backbone.host}:{backbone.port}"

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if not getattr(reason, "is_failure", False):
            c.subscribe(f"{view.root}/#", qos=0)
            view.set_connected(True)

    client.on_connect = on_connect
    client.on_disconnect = lambda *a: view.set_connected(False)
    client.on_message = lambda c, u, msg: view.on_message(msg.topic, bytes(msg.payload))
    client.reconnect_delay_set(1, 5)
    client.connect_async(backbone.host, backbone.port, keepalive=backbone.keepalive)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def run_watch(
    view: CellView, backbone: Backbone, *, as_json: bool, duration: float | None, interval: float
) -> None:
    """Until Ctrl-C (or `duration`): the live table, or one JSON line per change at most
    every `interval` seconds."""
    import click

    deadline = None if duration is None else time.monotonic() + duration
    with subscribed(view, backbone):
        seen = -1
        if as_json:
            while deadline is None or time.monotonic() < deadline:
                if view.changes != seen:
                    seen = view.changes
                    click.echo(orjson.dumps(view.snapshot()).decode())
                time.sleep(interval)  # the output's pace, not synchronisation
            return
        from rich.live import Live

        from cellctl.cli.output import console

        with Live(view.render(), console=console(), refresh_per_second=4, screen=False) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(interval)
                if view.changes != seen:
                    seen = view.changes
                    live.update(view.render())
