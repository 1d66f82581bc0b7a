"""The Sparkplug B part of a cell's AsyncAPI document: the edge node's channels (births,
data, deaths, commands, the primary host's STATE) with the metrics of the NBIRTH and of
each device's DBIRTH — name, alias and datatype — taken from the same code the node
births them with (`device_model`, `NODE_METRICS`). Payloads are Sparkplug B protobuf; the
schemas describe the decoded `Payload` message (sparkplug_b.proto)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired

from pydantic import ConfigDict, TypeAdapter, with_config
from typing_extensions import TypedDict

from cellctl.config.loader import CompiledCell
from cellctl.deliver.sparkplug import NODE_METRICS
from cellctl.encode.sparkplug import device_model
from cellctl.sparkplug.codec import DataType
from cellctl.sparkplug.state import AliasBook
from cellctl.sparkplug.topics import MessageType, NodeTopics

if TYPE_CHECKING:
    from cellctl.contract.asyncapi import _Builder

PROTOBUF = "application/x-protobuf"
REF = "#/components/schemas/{model}"


@with_config(ConfigDict(use_attribute_docstrings=True))
class SparkplugMetric(TypedDict):
    """A metric of a decoded Sparkplug B payload."""

    name: NotRequired[str]
    """In BIRTH messages and commands; DATA refers to the metric by alias."""
    alias: NotRequired[int]
    timestamp: int
    """ms since the epoch."""
    datatype: NotRequired[int]
    """Sparkplug DataType number (BIRTH only)."""
    is_historical: NotRequired[bool]
    is_null: NotRequired[bool]
    value: NotRequired[bool | int | float | str]
    """In the protobuf field of the metric's datatype."""
    properties: NotRequired[dict[str, Any]]
    """`Quality` (Int32 192 good, 0 bad), `cellctl/quality`, `cellctl/reason`."""


@with_config(ConfigDict(use_attribute_docstrings=True))
class SparkplugPayload(TypedDict):
    """A decoded Sparkplug B `Payload`."""

    timestamp: int
    seq: NotRequired[int]
    """0-255, wrapping; absent in NDEATH."""
    metrics: list[SparkplugMetric]


def _metric_list(table: Any) -> list[dict[str, Any]]:
    return [
        {"name": d.name, "alias": d.alias, "datatype": DataType(d.datatype).name}
        for d in sorted(table.by_name.values(), key=lambda d: d.alias or 0)
    ]


def _birth_schema(names: list[str]) -> dict[str, Any]:
    """The payload schema with the metric names of this birth."""
    return {
        "allOf": [
            {"$ref": REF.format(model="SparkplugPayload")},
            {"properties": {"metrics": {"items": {"properties": {"name": {"enum": names}}}}}},
        ]
    }


def _message(
    name: str, summary: str, payload: dict[str, Any], metrics: list[dict[str, Any]] | None
) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "name": name,
        "title": name,
        "summary": summary,
        "contentType": PROTOBUF,
        "description": summary + " Sparkplug B protobuf; the schema describes the decoded Payload.",
        "payload": payload,
    }
    if metrics is not None:
        msg["x-sparkplug-metrics"] = metrics
    return msg


def sparkplug_channels(
    b: _Builder, compiled: CompiledCell, aliases_path: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Add the node's channels to `b`; return (messages, schemas) for the components."""
    cfg = compiled.config
    sp = cfg.sparkplug
    topics = NodeTopics(cfg.sparkplug_group_id, cfg.sparkplug_edge_node_id)
    # the daemon's lasting aliases when it has run, else what a fresh one would assign
    aliases = AliasBook(aliases_path if aliases_path.is_file() else None)
    models = [device_model(d, aliases, shift_oee=bool(cfg.oee.shifts)) for d in compiled.devices]
    node_table = aliases.table(AliasBook.NODE, [(n, DataType.UInt64) for n in NODE_METRICS])
    bd_type = sp.bdseq_datatype
    node_metrics = [
        {"name": "bdSeq", "alias": None, "datatype": bd_type},
        {"name": "Node Control/Rebirth", "alias": None, "datatype": "Boolean"},
        *_metric_list(node_table),
    ]
    _, defs = TypeAdapter.json_schemas(
        [("payload", "serialization", TypeAdapter(SparkplugPayload))], ref_template=REF
    )
    schemas: dict[str, Any] = defs.get("$defs", {})
    plain = {"$ref": REF.format(model="SparkplugPayload")}
    qos = 1 if sp.historical_qos == 1 else 0
    messages: dict[str, Any] = {
        "spb_nbirth": _message(
            "spb_nbirth",
            "NBIRTH: the node's metrics (bdSeq, Node Control/Rebirth, outbox and command figures).",
            _birth_schema([m["name"] for m in node_metrics]),
            node_metrics,
        ),
        "spb_ndata": _message("spb_ndata", "NDATA: node metrics that changed, by alias.", plain, None),
        "spb_ndeath": _message(
            "spb_ndeath", "NDEATH: the MQTT Will; the single metric bdSeq.", _birth_schema(["bdSeq"]), None
        ),
        "spb_ncmd": _message("spb_ncmd", "NCMD: `Node Control/Rebirth = true`.", plain, None),
    }
    node = "Sparkplug B edge node"
    b.channel(
        topics.nbirth,
        {"spb_nbirth": "spb_nbirth"},
        description=f"{node}: birth.",
        action="send",
        qos=qos,
        retain=False,
    )
    b.channel(
        topics.ndata,
        {"spb_ndata": "spb_ndata"},
        description=f"{node}: node data.",
        action="send",
        qos=qos,
        retain=False,
    )
    b.channel(
        topics.ndeath,
        {"spb_ndeath": "spb_ndeath"},
        description=f"{node}: death (Will).",
        action="send",
        qos=1,
        retain=False,
    )
    b.channel(
        topics.ncmd,
        {"spb_ncmd": "spb_ncmd"},
        description=f"{node}: commands.",
        action="receive",
        qos=1,
        retain=False,
    )
    for model in models:
        dev = model.id
        metrics = _metric_list(model.table)
        key = f"spb_dbirth_{dev}"
        messages[key] = _message(
            key,
            f"DBIRTH of device `{dev}`: every metric with name, alias and datatype.",
            _birth_schema([m["name"] for m in metrics]),
            metrics,
        )
        per_device = (
            (MessageType.DBIRTH, key, "send", qos),
            (MessageType.DDATA, "spb_ddata", "send", qos),
            (MessageType.DDEATH, "spb_ddeath", "send", qos),
            (MessageType.DCMD, "spb_dcmd", "receive", 1),
        )
        for mtype, ref, action, q in per_device:
            b.channel(
                topics.device(mtype, dev),
                {ref: ref},
                description=f"{node}: {mtype} of device `{dev}`.",
                action=action,
                qos=q,
                retain=False,
            )
    messages["spb_ddata"] = _message("spb_ddata", "DDATA: metrics of one device scan, by alias.", plain, None)
    messages["spb_ddeath"] = _message("spb_ddeath", "DDEATH: the device became unavailable.", plain, None)
    messages["spb_dcmd"] = _message(
        "spb_dcmd", "DCMD: writes to writable points (policy decides).", plain, None
    )
    if sp.primary_host is not None:
        messages["spb_state"] = {
            "name": "spb_state",
            "title": "spb_state",
            "summary": "The primary host application's STATE.",
            "contentType": "application/json",
            "payload": {
                "type": "object",
                "properties": {"online": {"type": "boolean"}, "timestamp": {"type": "integer"}},
                "required": ["online", "timestamp"],
            },
        }
        b.channel(
            f"spBv1.0/STATE/{sp.primary_host}",
            {"spb_state": "spb_state"},
            description="The primary host's state: births wait for online.",
            action="receive",
            qos=1,
            retain=True,
        )
    return messages, schemas
