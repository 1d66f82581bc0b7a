"""Every published payload: name -> type -> topic pattern -> QoS and retain. The JSON
Schemas, the AsyncAPI document and the contract tests are generated from this list, so a
new payload joins the contract with one `register(...)` line next to its type.

Topic patterns use `{root}` (the cell's UNS root, `<prefix>/<enterprise>/<site>/<area>/
<line>/<cell>`), `{device}` and `{point}`. QoS `"backbone"` means the configured
`backbone.qos`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from cellctl.contract import payloads as p

Qos = Literal[0, 1, 2, "backbone"]
Direction = Literal["publish", "subscribe"]


@dataclass(frozen=True, slots=True)
class Payload:
    """One message type of the contract."""

    name: str
    type: Any  # a TypedDict (or a union of them) of cellctl.contract.payloads
    topic: str
    qos: Qos
    retain: bool
    summary: str
    # An empty retained message on this topic clears it (the MQTT way): not JSON, no schema.
    clearable: bool = False
    # Only published with publish.mode per_point.
    per_point: bool = False
    # publish: the cell sends it; subscribe: the cell receives it (commands).
    direction: Direction = "publish"

    def address(self, root: str, device: str = "{device}", point: str = "{point}") -> str:
        return self.topic.format(root=root, device=device, point=point)


PAYLOADS: dict[str, Payload] = {}


def register(payload: Payload) -> Payload:
    """Add a payload to the contract (names are unique)."""
    if payload.name in PAYLOADS:
        raise ValueError(f"payload {payload.name!r} is registered twice")
    PAYLOADS[payload.name] = payload
    _patterns.cache_clear()
    return payload


def topic_regex(pattern: str) -> re.Pattern[str]:
    """`{root}/{device}/state` -> a regex over topics *below* the root: `([^/]+)/state`."""
    rest = pattern.removeprefix("{root}/")
    parts = [r"[^/]+" if seg in ("{device}", "{point}") else re.escape(seg) for seg in rest.split("/")]
    return re.compile("/".join(parts))


@cache
def _patterns() -> tuple[tuple[re.Pattern[str], tuple[Payload, ...]], ...]:
    by_topic: dict[str, list[Payload]] = {}
    for pl in PAYLOADS.values():
        by_topic.setdefault(pl.topic, []).append(pl)
    return tuple((topic_regex(t), tuple(pls)) for t, pls in by_topic.items())


def payloads_for(root: str, topic: str) -> tuple[Payload, ...]:
    """The payloads that may travel on `topic` of the cell at `root` (empty: none)."""
    if not topic.startswith(root + "/"):
        return ()
    rest = topic[len(root) + 1 :]
    for rx, pls in _patterns():
        if rx.fullmatch(rest):
            return pls
    return ()


# The contract. A new payload: its TypedDict in payloads.py and one line here.
# fmt: off
register(Payload("status", p.StatusJson, "{root}/status", 1, True, "Whether the cell's daemon is connected (with a last will)."))
register(Payload("state", p.StateJson, "{root}/{device}/state", "backbone", True, "Full snapshot of one device.", clearable=True))
register(Payload("data", p.DataJson, "{root}/{device}/data", "backbone", False, "The changes of one scan of one device."))
register(Payload("point", p.PointJson, "{root}/{device}/points/{point}", "backbone", True, "One point's value (per_point mode).", clearable=True, per_point=True))
register(Payload("outbox", p.OutboxJson, "{root}/outbox", 1, True, "The durable outbox's figures."))
register(Payload("event.outbox_dropped", p.OutboxDroppedEvent, "{root}/events", 1, False, "The outbox dropped messages."))
register(Payload("event.device_removed", p.DeviceRemovedEvent, "{root}/events", "backbone", False, "A reload removed a device."))
register(Payload("command.request", p.CommandRequestJson, "{root}/cmd/{device}", 1, False, "A command from the MES (never retained: refused).", direction="subscribe"))
register(Payload("command.result", p.CommandResultJson, "{root}/cmd/{device}/ack", 1, False, "An answer to a command that named no MQTT 5 response topic (also sent on that topic when named)."))
register(Payload("event.command", p.CommandEventJson, "{root}/events", 1, False, "The audit record of one command."))
register(Payload("job", p.CurrentJobJson, "{root}/{device}/job", "backbone", True, "The device's current or last job record.", clearable=True))
register(Payload("event.job", p.JobEventJson, "{root}/{device}/events", "backbone", False, "A job started, paused, resumed or ended."))
register(Payload("manifest", p.ManifestJson, "{root}/manifest", "backbone", True, "What the cell is now: devices, profiles, points."))
# fmt: on
