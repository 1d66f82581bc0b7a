"""A leaner paho client for the per-message hot path under MQTT 3.1.1.

Why (decision 0018): in `publish.mode: per_point` every changed value is one QoS 1
message, and paho-mqtt 2.x spends more Python time on each than the rest of cellctl:
`publish()` builds an `MQTTMessage` with an `MQTTMessageInfo` (and its
`threading.Condition`), a packet dict and one `send()` system call per message; each
PUBACK costs three `recv()` calls (command byte, length byte, body), a fresh `_in_packet`
dict, and a `ReasonCode` plus a `Properties` object, although a 3.1.1 PUBACK is only a
packet id.

`LeanClient` keeps paho's protocol engine (CONNECT, keep-alive, subscriptions, inbound
PUBLISH, TLS, disconnect) and changes three things, for MQTT 3.1.1 only:

- `publish_fast()` sends a QoS 0 or 1 PUBLISH without paho's per-message bookkeeping: the
  caller (`AckTracker`) tracks the message id, and paho never holds the message (the
  session makes a fresh client per connection and never lets paho resend anything).
  Consecutive fast publishes share one write buffer, so a loop turn's messages leave in
  one `send()`.
- `loop_read()` reads the socket in large chunks and splits packets itself; a 2-byte
  PUBACK for a message paho does not track (a fast publish) goes straight to `on_ack`.
  Every other packet (CONNACK, SUBACK, UNSUBACK, PINGRESP, inbound PUBLISH, and PUBACKs
  of messages sent with paho's own `publish()`) is handed to paho's own handler.
- nothing else: MQTT 5 sessions use `paho.Client` unchanged.

It relies on paho internals (`_sock`, `_out_packet`, `_out_messages`, `_in_packet`,
`_packet_handle`, `_loop_rc_handle`, `_mid_generate`, `_call_socket_register_write`,
`_sock_recv`, `_msgtime_mutex`, `_last_bytes_received`): pyproject.toml pins the paho-mqtt
versions checked, and tests/test_mqtt_lean.py fails loudly when one of them changes.
"""

from __future__ import annotations

import ssl
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

try:
    from paho.mqtt.exception import MalformedPacket
except ImportError:  # paho-mqtt 2.1
    from paho.mqtt.properties import MalformedPacket  # type: ignore[attr-defined]

if TYPE_CHECKING:
    from paho.mqtt.client import _OutPacket

_PUBLISH: Final = 0x30
# The batch packet's command for paho's _packet_write: a QoS 1 PUBLISH, so that paho
# calls no on_publish for it (it does for a QoS 0 packet written).
_PUBLISH_QOS1: Final = 0x32
_PUBACK: Final = 0x40
_MAX_REMAINING: Final = 268_435_455  # the largest remaining length MQTT can say
_BATCH_BYTES: Final = 64 * 1024  # one send() carries at most about this much
_READ_CHUNK: Final = 64 * 1024
_READ_CHUNKS: Final = 8  # chunks per loop_read call; the rest waits for the next readiness
_TOPIC_CACHE: Final = 4096  # encoded topic names kept (a few hundred KB at most)
_pack_h = struct.Struct("!H").pack
_pack_bb = struct.Struct("!BB").pack

# The paho internals this module uses; tests/test_mqtt_lean.py checks they exist.
PAHO_INTERNALS: Final = (
    "_sock",
    "_out_packet",
    "_out_messages",
    "_in_packet",
    "_protocol",
    "_msgtime_mutex",
    "_last_bytes_received",
    "_packet_handle",
    "_loop_rc_handle",
    "_mid_generate",
    "_call_socket_register_write",
    "_sock_recv",
    "_easy_log",
)


def _remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class LeanClient(paho.Client):
    """paho's client with a lean QoS 1 publish and PUBACK path (MQTT 3.1.1 only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._protocol != MQTTProtocolVersion.MQTTv311:
            raise ValueError("LeanClient speaks MQTT 3.1.1 only")
        # Called with the packet id of each PUBACK for a fast-published message.
        self.on_ack: Callable[[int], None] | None = None
        self._rbuf = bytearray()
        self._batch: _OutPacket | None = None  # the packet fast publishes append to
        self._topics: dict[str, bytes] = {}  # topic -> its encoded name (bounded)

    def publish_fast(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Queue a QoS 0 or 1 PUBLISH and return its message id (1..65535; for QoS 0 it
        is not on the wire, as with paho), or 0 when there is no socket (the connection is
        going away). A PUBACK reaches `on_ack`; `on_publish` is never called (paho calls
        it for each QoS 0 message written, with a ReasonCode and Properties built for
        it); paho keeps no record of the message."""
        if self._sock is None:
            return 0
        name = self._topics.get(topic)
        if name is None:
            name = self._topic_name(topic)
        mid = self._mid_generate()
        body_len = len(name) + 2 * qos + len(payload)  # topic length + topic, packet id, payload
        if body_len > _MAX_REMAINING:
            raise ValueError(f"payload too large for MQTT: {len(payload)} bytes")
        head = _PUBLISH | qos << 1 | retain
        out = self._out_packet
        batch = self._batch
        if batch is None or not out or out[-1] is not batch or batch["to_process"] >= _BATCH_BYTES:
            batch = {"command": _PUBLISH_QOS1, "mid": mid, "qos": 1, "pos": 0, "to_process": 0, "packet": bytearray(), "info": None}
            out.append(batch)
            self._batch = batch
        packet = cast(bytearray, batch["packet"])
        before = len(packet)
        if body_len < 128:
            packet += _pack_bb(head, body_len)
        else:
            packet.append(head)
            packet += _remaining_length(body_len)
        packet += name
        if qos:
            packet += _pack_h(mid)
        packet += payload
        batch["to_process"] += len(packet) - before
        self._call_socket_register_write()
        return mid

    def _topic_name(self, topic: str) -> bytes:
        """The topic as PUBLISH carries it (length-prefixed UTF-8), checked once and
        kept: per_point publishes the same few thousand topics over and over."""
        tb = topic.encode("utf-8")
        if not tb or len(tb) > 65535 or b"+" in tb or b"#" in tb:
            raise ValueError(f"invalid topic for publishing: {topic!r}")
        if len(self._topics) >= _TOPIC_CACHE:
            self._topics.clear()
        name = self._topics[topic] = _pack_h(len(tb)) + tb
        return name

    @property
    def buffered(self) -> int:
        """Bytes read from the socket and not handled yet (an incomplete packet)."""
        return len(self._rbuf)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read what the socket has (bounded), and handle every complete packet in it."""
        sock = self._sock
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        buf = self._rbuf
        got = False
        for _ in range(_READ_CHUNKS):
            try:
                data = self._sock_recv(_READ_CHUNK)
            except BlockingIOError:
                break
            except OSError as err:
                self._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            if not data:
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            buf += data
            got = True
            if len(data) < _READ_CHUNK and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                break  # the socket is drained (a TLS record may hold more than recv returned)
        if not got:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        with self._msgtime_mutex:
            self._last_bytes_received = paho.time_func()
        return self._handle_buffer()

    def _handle_buffer(self) -> MQTTErrorCode:
        buf = self._rbuf
        n = len(buf)
        pos = 0
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        on_ack = self.on_ack
        tracked = self._out_messages
        while n - pos >= 2:
            cmd = buf[pos]
            if cmd == _PUBACK and buf[pos + 1] == 2:
                if n - pos < 4:
                    break
                mid = (buf[pos + 2] << 8) | buf[pos + 3]
                if mid not in tracked:
                    pos += 4
                    if on_ack is not None:
                        on_ack(mid)
                    continue
            # the general case: decode the remaining length, hand the packet to paho
            length, mult, i = 0, 1, pos + 1
            while True:
                if i >= n:
                    length = -1  # incomplete
                    break
                byte = buf[i]
                length += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    break
                if i - pos > 4:
                    del buf[:pos]
                    return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
            if length < 0 or i + length > n:
                break
            end = i + length
            self._in_packet = {
                "command": cmd,
                "have_remaining": 1,
                "remaining_count": [],
                "remaining_mult": 1,
                "remaining_length": length,
                "packet": bytearray(buf[i:end]),
                "to_process": 0,
                "pos": 0,
            }
            pos = end
            try:
                rc = self._packet_handle()
            except MalformedPacket as exc:
                self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
                rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
            self._in_packet = {
                "command": 0,
                "have_remaining": 0,
                "remaining_count": [],
                "remaining_mult": 1,
                "remaining_length": 0,
                "packet": bytearray(),
                "to_process": 0,
                "pos": 0,
            }
            if rc > 0:
                del buf[:pos]
                return self._loop_rc_handle(rc)
            if self._sock is None:  # the handler closed the connection (a refused CONNACK)
                buf.clear()
                return MQTTErrorCode.MQTT_ERR_NO_CONN
        del buf[:pos]
        return MQTTErrorCode.MQTT_ERR_SUCCESS
