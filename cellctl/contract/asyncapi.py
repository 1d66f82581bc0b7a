"""The AsyncAPI 3.0 document of one cell (`cellctl asyncapi CELL.yaml`): every channel with
its concrete topic (the ISA-95 root, device and point ids), the JSON Schema of each
message (generated from the payload registry), QoS and retain as MQTT bindings, and, with
Sparkplug B, the node's channels with the metric list of each DBIRTH, so a consumer can
generate code or documentation for exactly this cell. No I/O but reading the config,
its profiles and (when the daemon has run) its alias file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from cellctl import __version__
from cellctl.config.cell import Backbone
from cellctl.config.loader import CompiledCell
from cellctl.contract.registry import PAYLOADS, Payload
from cellctl.encode.uns import PAYLOAD_VERSION, cell_root

Doc = dict[str, Any]

ASYNCAPI_VERSION = "3.0.0"
MQTT_BINDING_VERSION = "0.2.0"
REF = "#/components/schemas/{model}"


def _channel_id(address: str, used: set[str]) -> str:
    """AsyncAPI ids are `[\\w.-]+`: the topic's levels joined by dots, made unique."""
    base = re.sub(r"[^\w.-]", "_", address.replace("/", "."))
    key, n = base, 1
    while key in used:
        n += 1
        key = f"{base}.{n}"
    used.add(key)
    return key


def _uns_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """Each payload's schema (a `$ref` into components/schemas) and the shared definitions."""
    inputs = [(name, "serialization", TypeAdapter(pl.type)) for name, pl in PAYLOADS.items()]
    by_key, defs = TypeAdapter.json_schemas(inputs, ref_template=REF)  # type: ignore[arg-type]
    return {key[0]: schema for key, schema in by_key.items()}, defs.get("$defs", {})


def _message(pl: Payload, payload_ref: Any) -> Doc:
    description = pl.summary
    if pl.clearable:
        description += (
            " An empty (zero-byte) retained message on this topic clears it: the device or point"
            " was removed. It is not JSON."
        )
    return {
        "name": pl.name,
        "title": pl.name,
        "summary": pl.summary,
        "description": description,
        "contentType": "application/json",
        "payload": payload_ref,
        "bindings": {"mqtt": {"bindingVersion": MQTT_BINDING_VERSION}},
    }


def _qos(pl: Payload, backbone_qos: int) -> int:
    return backbone_qos if pl.qos == "backbone" else pl.qos


class _Builder:
    def __init__(self, root: str) -> None:
        self.root = root
        self.channels: Doc = {}
        self.operations: Doc = {}
        self._ids: set[str] = set()

    def channel(
        self,
        address: str,
        messages: dict[str, str],
        *,
        description: str,
        action: str,
        qos: int,
        retain: bool,
    ) -> str:
        """One channel with its messages (name -> components/messages key) and the
        operation of the cell on it (send or receive) with its MQTT binding."""
        if address.startswith(self.root + "/"):  # UNS: the topic below the cell's root
            key = address[len(self.root) + 1 :]
        else:  # Sparkplug: spb.<type>[.<device>]
            parts = address.split("/")
            key = ".".join(["spb", *parts[2:3], *parts[4:]]) if parts[0] == "spBv1.0" else address
        cid = _channel_id(key, self._ids)
        self.channels[cid] = {
            "address": address,
            "description": description,
            "messages": {m: {"$ref": f"#/components/messages/{ref}"} for m, ref in messages.items()},
        }
        self.operations[f"{action}.{cid}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{cid}"},
            "messages": [{"$ref": f"#/channels/{cid}/messages/{m}"} for m in messages],
            "bindings": {"mqtt": {"qos": qos, "retain": retain, "bindingVersion": MQTT_BINDING_VERSION}},
        }
        return cid


def asyncapi_document(compiled: CompiledCell) -> Doc:
    """The AsyncAPI 3.0 document of the cell `compiled` describes."""
    cfg = compiled.config
    root = cell_root(cfg.publish.prefix, cfg.identity)
    b = _Builder(root)
    messages: Doc = {}
    schemas: Doc = {}
    if "uns" in cfg.publish.formats:
        refs, schemas = _uns_schemas()
        qos = cfg.backbone.qos
        for pl in PAYLOADS.values():
            messages[pl.name] = _message(pl, refs[pl.name])
        _uns_channels(b, compiled, root, qos)
    if "sparkplug" in cfg.publish.formats:
        from cellctl.contract.sparkplug_doc import sparkplug_channels

        sp_messages, sp_schemas = sparkplug_channels(b, compiled, _aliases_path(compiled))
        messages |= sp_messages
        schemas |= sp_schemas
    backbone = cfg.backbone
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": f"cellctl cell {cfg.identity.cell} ({root})",
            "version": f"{PAYLOAD_VERSION}.0.0",
            "description": (
                f"What the cell `{root}` publishes and receives on its MQTT backbone: UNS JSON payload"
                f" version {PAYLOAD_VERSION} (docs/topics.md, docs/contract.md)"
                + (" and Sparkplug B 3.0 (docs/sparkplug.md)" if "sparkplug" in cfg.publish.formats else "")
                + f". Generated by cellctl {__version__} from {compiled.path.name}."
            ),
        },
        "defaultContentType": "application/json",
        "servers": _servers(backbone),
        "channels": b.channels,
        "operations": b.operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _servers(backbone: Backbone) -> Doc:
    """The broker, or each node of a clustered one (`backbone.hosts`, tried in turn)."""
    nodes = backbone.nodes
    out: Doc = {}
    for i, (host, port) in enumerate(nodes, 1):
        key = "backbone" if len(nodes) == 1 else f"backbone-{i}"
        what = "The site's MQTT broker" if len(nodes) == 1 else f"Node {i} of {len(nodes)} of the site's MQTT broker"
        out[key] = {
            "host": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "protocol": "secure-mqtt" if backbone.tls is not None else "mqtt",
            "protocolVersion": backbone.protocol,
            "description": f"{what} (the cell config's `backbone`).",
        }
    return out


def _uns_channels(b: _Builder, compiled: CompiledCell, root: str, backbone_qos: int) -> None:
    """Every UNS topic of the cell, concrete: cell topics once, device topics per device,
    point topics per point (per_point mode only)."""
    by_topic: dict[str, list[Payload]] = {}
    for pl in PAYLOADS.values():
        by_topic.setdefault(pl.topic, []).append(pl)
    per_point = compiled.config.publish.mode == "per_point"
    for pattern, pls in by_topic.items():
        if any(pl.per_point for pl in pls) and not per_point:
            continue
        first = pls[0]
        action = "send" if first.direction == "publish" else "receive"
        qos = max(_qos(pl, backbone_qos) for pl in pls)
        names = {pl.name.replace(".", "_"): pl.name for pl in pls}
        summary = " / ".join(pl.summary for pl in pls)
        if "{device}" not in pattern:
            b.channel(
                first.address(root), names, description=summary, action=action, qos=qos, retain=first.retain
            )
            continue
        for dev in compiled.devices:
            points = [p.id for p in dev.points] if "{point}" in pattern else [""]
            for point in points:
                address = first.address(root, dev.config.id, point)
                what = f"{summary} Device `{dev.config.id}` (profile `{dev.profile.name}`, driver `{dev.config.driver}`)"
                if point:
                    what += f", point `{point}`"
                b.channel(address, names, description=what + ".", action=action, qos=qos, retain=first.retain)


def _aliases_path(compiled: CompiledCell) -> Path:
    """The daemon's alias file (read only, never created here)."""
    path = compiled.config.state_dir
    if not path.is_absolute():
        path = compiled.path.parent / path
    return path / "aliases.json"
