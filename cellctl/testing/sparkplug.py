"""A Sparkplug host's view of the broker traffic, for tests: an MQTT 5 capture with
retain-as-published (so retain flags are the publisher's) and a persistent session
(so a broker restart loses nothing), decoded with the generated protobuf classes
directly, never with cellctl's codec, and checked against the edge node checklist."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from cellctl.sparkplug import sparkplug_b_pb2 as pb

BOOLEAN, INT64, UINT64 = 11, 4, 8


@dataclass
class SpMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    received: float
    dup: bool = False  # a QoS 1 redelivery (at-least-once between broker and capture)
    parts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.parts = self.topic.split("/")

    @property
    def kind(self) -> str:
        return self.parts[2] if len(self.parts) > 2 else ""

    @property
    def device(self) -> str | None:
        return self.parts[4] if len(self.parts) > 4 else None

    def decode(self) -> pb.Payload:
        return pb.Payload.FromString(self.payload)


class Capture:
    def __init__(self, port: int, topic: str, *, client_id: str | None = None) -> None:
        self.messages: list[SpMessage] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"cap-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]  # paho takes float seconds
        self.client.max_queued_messages_set(0)
        opts = SubscribeOptions(qos=1, retainAsPublished=True)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, options=opts)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 300  # keep the session across a broker restart
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"could not subscribe to {topic!r}")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append(
                SpMessage(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.time(), bool(msg.dup))
            )

    def snapshot(self) -> list[SpMessage]:
        with self._lock:
            return list(self.messages)

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *, user: dict[str, str] | None = None
    ) -> None:
        """Publish as a host would; `user`: MQTT 5 user properties (a declared identity)."""
        props = None
        if user:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = list(user.items())
        self.client.publish(topic, payload, qos, retain, properties=props).wait_for_publish(5)

    async def until(
        self, predicate: Callable[[list[SpMessage]], Any], timeout: float = 15.0, what: str = ""
    ) -> Any:
        import asyncio

        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            result = predicate(snap)
            if result:
                return result
            if time.monotonic() > deadline:
                tail = [(m.topic, m.qos) for m in snap[-5:]]
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {tail}")
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def metric_value(m: pb.Payload.Metric) -> Any:
    which = m.WhichOneof("value")
    return None if m.is_null else getattr(m, which) if which else None


def bd_seq(p: pb.Payload) -> int:
    (m,) = [m for m in p.metrics if m.name == "bdSeq"]
    assert m.datatype == INT64
    assert not m.HasField("alias")
    return int(m.long_value)


def rebirth_command(ts: int) -> bytes:
    """NCMD `Node Control/Rebirth = true`, as a host builds it."""
    p = pb.Payload()
    p.timestamp = ts
    m = p.metrics.add()
    m.name = "Node Control/Rebirth"
    m.datatype = BOOLEAN
    m.boolean_value = True
    return p.SerializeToString()


@dataclass
class Report:
    """What a checked capture contained."""

    births: list[int] = field(default_factory=list)  # bdSeq of each NBIRTH
    deaths: list[int] = field(default_factory=list)  # bdSeq of each NDEATH
    data: int = 0
    historical: int = 0
    wraps: int = 0
    ddeaths: list[str] = field(default_factory=list)
    dbirths: list[str] = field(default_factory=list)
    aliases: dict[int, tuple[str, str]] = field(default_factory=dict)  # alias -> (device, name)
    historical_qos: set[int] = field(default_factory=set)


def check_node(msgs: list[SpMessage], group: str, edge: str, *, node_qos: int = 0) -> Report:
    """Check every message of one edge node against the checklist
    (../shared/protocols/sparkplug-b.md items 1-16, 20); return what was seen.
    `node_qos` 1 for `sparkplug.historical_qos: 1`, where every message but NDEATH is
    sent at QoS 1 (a documented deviation) instead of the specification's 0."""
    r = Report()
    seq: int | None = None  # the last seq seen in this session; None before an NBIRTH
    session_bd: int | None = None
    born: dict[str, set[int]] = {}  # device -> aliases birthed in this session
    dead: set[str] = set()
    seen: set[tuple[str, bytes]] = set()
    for i, m in enumerate(msgs):
        where = f"message {i} {m.topic}"
        if m.kind in ("NCMD", "DCMD"):
            continue  # host to node
        if m.dup and (m.topic, m.payload) in seen:
            continue  # the broker resent it to us after its restart: not the node's doing
        seen.add((m.topic, m.payload))
        assert m.parts[:2] == ["spBv1.0", group], where
        assert m.parts[3] == edge, where
        p = m.decode()
        kind = m.kind
        assert not m.retain, f"{where}: Sparkplug messages are never retained"
        if kind == "NDEATH":
            assert m.qos == 1, where
            assert not p.HasField("seq"), f"{where}: NDEATH has no seq"
            bd = bd_seq(p)
            if session_bd is not None:
                assert bd == session_bd, f"{where}: NDEATH bdSeq {bd} != NBIRTH bdSeq {session_bd}"
            r.deaths.append(bd)
            seq, session_bd, born = None, None, {}
            continue
        assert m.device is None or kind.startswith("D"), where
        assert p.HasField("seq"), f"{where}: seq"
        assert 0 <= p.seq <= 255, f"{where}: seq"
        assert p.HasField("timestamp"), f"{where}: payload timestamp"
        if kind == "NBIRTH":
            assert m.qos == node_qos, where
            assert p.seq == 0, where
            bd = bd_seq(p)  # the same as before for a rebirth; a new value for a new connection
            session_bd = bd
            r.births.append(bd)
            (rebirth,) = [x for x in p.metrics if x.name == "Node Control/Rebirth"]
            assert rebirth.datatype == BOOLEAN, where
            assert rebirth.boolean_value is False, where
            assert not rebirth.HasField("alias"), where
            for x in p.metrics:
                if x.name not in ("bdSeq", "Node Control/Rebirth"):
                    _check_birth_metric(x, where, r, "")
            seq, born, dead = 0, {}, set()
            continue
        assert seq is not None, f"{where}: {kind} before any NBIRTH of the session"
        expected = (seq + 1) % 256
        assert p.seq == expected, f"{where}: seq {p.seq}, expected {expected}"
        if expected == 0:
            r.wraps += 1
        seq = p.seq
        if kind == "DBIRTH":
            assert m.qos == node_qos, where
            assert m.device is not None
            born[m.device] = {_check_birth_metric(x, where, r, m.device) for x in p.metrics}
            dead.discard(m.device)
            r.dbirths.append(m.device)
        elif kind == "DDEATH":
            assert m.qos == node_qos, where
            assert m.device in born, f"{where}: DDEATH of a device not birthed"
            assert not p.metrics, where
            dead.add(m.device)
            r.ddeaths.append(m.device)
        elif kind in ("DDATA", "NDATA"):
            assert p.metrics, f"{where}: empty DATA"
            historical = [x.is_historical for x in p.metrics]
            assert all(historical) or not any(historical), f"{where}: mixed is_historical"
            if historical[0]:
                r.historical += 1
                r.historical_qos.add(m.qos)
            else:
                assert m.qos == node_qos, f"{where}: live DATA is QoS 0"
                r.data += 1
            if kind == "DDATA":
                assert m.device in born, f"{where}: DDATA before its DBIRTH"
                assert historical[0] or m.device not in dead, f"{where}: live DDATA after DDEATH"
            for x in p.metrics:
                assert not x.HasField("name"), f"{where}: DATA by alias only"
                assert x.HasField("alias"), f"{where}: DATA by alias only"
                assert not x.HasField("datatype"), f"{where}: no datatype in DATA"
                assert x.HasField("timestamp"), f"{where}: metric timestamp"
                if kind == "DDATA" and not x.is_historical:
                    assert x.alias in born[m.device or ""], f"{where}: alias {x.alias} not birthed"
        else:
            raise AssertionError(f"{where}: unexpected message type {kind}")
    return r


def _check_birth_metric(x: pb.Payload.Metric, where: str, r: Report, device: str) -> int:
    for part in ("name", "alias", "datatype"):
        assert x.HasField(part), f"{where}: {x.name} has no {part}"
    assert x.HasField("timestamp"), f"{where}: {x.name} timestamp"
    assert x.is_null or x.WhichOneof("value") is not None, f"{where}: {x.name} has a value or is_null"
    known = r.aliases.setdefault(x.alias, (device, x.name))
    assert known == (device, x.name), f"{where}: alias {x.alias} is {known}, now {(device, x.name)}"
    return int(x.alias)
