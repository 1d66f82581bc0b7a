"""Sparkplug B topic names: build them for publishing, parse them for routing commands.

    spBv1.0/<group_id>/<NBIRTH|NDATA|NDEATH|NCMD>/<edge_node_id>
    spBv1.0/<group_id>/<DBIRTH|DDATA|DDEATH|DCMD>/<edge_node_id>/<device_id>
    spBv1.0/STATE/<host_id>

Ids are checked once, when a `NodeTopics` is built (config load time), so the hot path
only concatenates strings it already has.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

NAMESPACE: Final = "spBv1.0"
_FORBIDDEN: Final = frozenset("/+#\x00")
_MAX_TOPIC_BYTES: Final = 65535  # MQTT's limit for a UTF-8 topic name


class MessageType(StrEnum):
    NBIRTH = "NBIRTH"
    NDATA = "NDATA"
    NDEATH = "NDEATH"
    NCMD = "NCMD"
    DBIRTH = "DBIRTH"
    DDATA = "DDATA"
    DDEATH = "DDEATH"
    DCMD = "DCMD"


NODE_TYPES: Final = frozenset({MessageType.NBIRTH, MessageType.NDATA, MessageType.NDEATH, MessageType.NCMD})
DEVICE_TYPES: Final = frozenset({MessageType.DBIRTH, MessageType.DDATA, MessageType.DDEATH, MessageType.DCMD})


class TopicError(ValueError):
    """A Sparkplug id or topic that the specification does not allow."""


def validate_id(kind: str, value: str) -> str:
    """Return `value` if it may be a Sparkplug group, edge node, device or host id.

    The specification allows any UTF-8 string except the MQTT topic characters
    `/ + #`; we also refuse the empty string and NUL, which MQTT itself forbids."""
    if not isinstance(value, str):
        raise TopicError(f"sparkplug {kind} must be a string, got {type(value).__name__}")
    if not value:
        raise TopicError(f"sparkplug {kind} must not be empty")
    bad = sorted(_FORBIDDEN.intersection(value))
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise TopicError(f"sparkplug {kind} {value!r} contains {shown}, which Sparkplug ids must not contain")
    if len(value.encode("utf-8", "surrogatepass")) > _MAX_TOPIC_BYTES:
        raise TopicError(f"sparkplug {kind} is longer than an MQTT topic can be")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise TopicError(f"sparkplug {kind} {value!r} is not valid UTF-8 (lone surrogate)") from None
    return value


def case_collisions(ids: list[str]) -> list[tuple[str, str]]:
    """Pairs of ids that differ only by letter case, which the specification asks to avoid
    (some hosts store ids case-insensitively). For config checks, not the hot path."""
    seen: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    for i in ids:
        key = i.casefold()
        other = seen.get(key)
        if other is not None and other != i:
            out.append((other, i))
        else:
            seen[key] = i
    return out


def node_topic(group_id: str, message_type: MessageType, edge_node_id: str) -> str:
    """A node-level topic (NBIRTH, NDATA, NDEATH, NCMD)."""
    if message_type not in NODE_TYPES:
        raise TopicError(f"{message_type} is a device message type; it needs a device id")
    validate_id("group id", group_id)
    validate_id("edge node id", edge_node_id)
    return f"{NAMESPACE}/{group_id}/{message_type}/{edge_node_id}"


def device_topic(group_id: str, message_type: MessageType, edge_node_id: str, device_id: str) -> str:
    """A device-level topic (DBIRTH, DDATA, DDEATH, DCMD)."""
    if message_type not in DEVICE_TYPES:
        raise TopicError(f"{message_type} is a node message type; it takes no device id")
    validate_id("group id", group_id)
    validate_id("edge node id", edge_node_id)
    validate_id("device id", device_id)
    return f"{NAMESPACE}/{group_id}/{message_type}/{edge_node_id}/{device_id}"


def state_topic(host_id: str) -> str:
    """The primary host application's STATE topic (Sparkplug 3.0 form)."""
    validate_id("host id", host_id)
    return f"{NAMESPACE}/STATE/{host_id}"


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """A Sparkplug topic taken apart. `device_id` is None for node messages."""

    group_id: str
    message_type: MessageType
    edge_node_id: str
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedStateTopic:
    host_id: str


def parse_topic(topic: str) -> ParsedTopic | ParsedStateTopic:
    """Take an incoming topic apart; TopicError says what is wrong with it."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != NAMESPACE:
        raise TopicError(f"not a Sparkplug B topic: {topic!r}")
    if parts[1] == "STATE":
        if len(parts) != 3:
            raise TopicError(f"a STATE topic has exactly one host id level: {topic!r}")
        return ParsedStateTopic(validate_id("host id", parts[2]))
    if len(parts) not in (4, 5):
        raise TopicError(f"a Sparkplug topic has 4 or 5 levels, {topic!r} has {len(parts)}")
    try:
        mtype = MessageType(parts[2])
    except ValueError:
        raise TopicError(f"unknown Sparkplug message type {parts[2]!r} in {topic!r}") from None
    group, edge = validate_id("group id", parts[1]), validate_id("edge node id", parts[3])
    if mtype in DEVICE_TYPES:
        if len(parts) != 5:
            raise TopicError(f"{mtype} needs a device id level: {topic!r}")
        return ParsedTopic(group, mtype, edge, validate_id("device id", parts[4]))
    if len(parts) != 4:
        raise TopicError(f"{mtype} takes no device id level: {topic!r}")
    return ParsedTopic(group, mtype, edge)


class NodeTopics:
    """Every topic one edge node publishes or subscribes to, validated once.

    Device topics are computed on first use and cached, since the hot path asks for
    the DDATA topic of the same few devices over and over."""

    __slots__ = ("_device", "edge_node_id", "group_id", "nbirth", "ncmd", "ndata", "ndeath")

    def __init__(self, group_id: str, edge_node_id: str) -> None:
        self.group_id = validate_id("group id", group_id)
        self.edge_node_id = validate_id("edge node id", edge_node_id)
        self.nbirth = node_topic(group_id, MessageType.NBIRTH, edge_node_id)
        self.ndata = node_topic(group_id, MessageType.NDATA, edge_node_id)
        self.ndeath = node_topic(group_id, MessageType.NDEATH, edge_node_id)
        self.ncmd = node_topic(group_id, MessageType.NCMD, edge_node_id)
        self._device: dict[tuple[str, MessageType], str] = {}

    def device(self, message_type: MessageType, device_id: str) -> str:
        key = (device_id, message_type)
        topic = self._device.get(key)
        if topic is None:
            topic = self._device[key] = device_topic(
                self.group_id, message_type, self.edge_node_id, device_id
            )
        return topic

    @property
    def dcmd_filter(self) -> str:
        """One subscription for the DCMD of every device of this node."""
        return f"{NAMESPACE}/{self.group_id}/{MessageType.DCMD}/{self.edge_node_id}/+"
