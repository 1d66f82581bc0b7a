"""One MQTT session to the backbone: paho-mqtt's protocol engine driven by the asyncio
loop through paho's external-loop hooks (no network thread).

Why (docs/decisions/0002-mqtt-client.md): paho is the best-kept Python MQTT client and
publishes about 22,000 small messages/s; aiomqtt on top of it about 8,000. Driving it from
the event loop instead of `loop_start()` removes a thread wake-up, a select() and a
socketpair read per published message (about a quarter of the daemon's CPU in the
benchmark). The blocking TCP/TLS connect runs in an executor so an unreachable broker
never stalls device polling. The rest of cellctl sees only this module.

Every connection attempt gets a **fresh paho client** (decision 0006). The durable outbox
is the only queue: paho must never hold a message across connections, or it would resend
it after reconnecting while the outbox replays it too (with a Sparkplug seq of the old
session, before the new NBIRTH). A new client also carries the Will of that CONNECT,
which for Sparkplug changes every time (bdSeq). Publishing while disconnected is refused
(`publish` raises `PublishRefused`) instead of queued.

Under MQTT 3.1.1 that client is a `LeanClient` (cellctl/deliver/lean.py, decision 0018):
QoS 0 and 1 messages go out without paho's per-message objects, a loop turn's messages in
one `send()`, and PUBACKs reach `SessionEvents.acked` without paho's decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cellctl.config.cell import Backbone, Tls
from cellctl.credentials import secret_path
from cellctl.deliver.lean import LeanClient
from cellctl.engine.backoff import Backoff, worth_repeating
from cellctl.errors import ConfigError

log = structlog.get_logger("cellctl.mqtt")

# A topic filter nobody subscribes to: UNSUBSCRIBE from it is answered (UNSUBACK) and
# changes nothing, which makes it a fence (see AckTracker in cellctl/deliver/acks.py).
FENCE_TOPIC = "cellctl/fence"
MAX_INFLIGHT = 200
TCP_USER_TIMEOUT_MS = 10_000


# OpenSSL's X509_V_ERR_* codes, grouped by what the user has to do about them
_UNKNOWN_ISSUER = frozenset({2, 18, 19, 20, 21})
_NOT_YET_VALID, _EXPIRED = 9, 10
_WRONG_NAME = frozenset({62, 64})


def describe_connect_error(exc: BaseException, backbone: Backbone, host: str | None = None) -> str:
    """A connection failure in words that name the cause: for a refused broker
    certificate, which check failed and what to look at."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        detail = f"{exc.verify_message} (verify code {code})"
        tls = backbone.tls
        ca = str(tls.ca_file) if tls is not None and tls.ca_file is not None else "the system CA store"
        if code in _UNKNOWN_ISSUER:
            return f"tls: the broker's certificate is not signed by a CA in {ca!r}: {detail}"
        if code == _EXPIRED:
            return f"tls: the broker's certificate has expired (or this machine's clock is wrong): {detail}"
        if code == _NOT_YET_VALID:
            return f"tls: the broker's certificate is not valid yet (is this machine's clock right?): {detail}"
        if code in _WRONG_NAME:
            return (
                f"tls: the broker's certificate is not valid for backbone.host {host or backbone.host!r}: {detail}"
            )
        return f"tls: the broker's certificate was refused: {detail}"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc}"
    return f"{type(exc).__name__}: {exc}"


class _LastError(logging.Handler):
    """Keeps paho's last error line (e.g. the TLS alert of a broker that refused our
    client certificate), which paho reports only through its logger."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


def configure_tls(client: paho.Client, tls: Tls) -> None:
    """TLS on a paho client exactly as the daemon uses it (also for `watch` and the
    command CLI): the CA, an optional client certificate, and verification unless
    `insecure_skip_verify`."""
    client.tls_set(
        ca_certs=str(tls.ca_file) if tls.ca_file else None,
        certfile=str(tls.cert_file) if tls.cert_file else None,
        keyfile=str(tls.key_file) if tls.key_file else None,
        cert_reqs=ssl.CERT_NONE if tls.insecure_skip_verify else ssl.CERT_REQUIRED,
    )
    if tls.insecure_skip_verify:
        client.tls_insecure_set(True)


class MqttError(Exception):
    """The one exception family of the session. `rc` is paho's result code, when any."""

    def __init__(self, message: str, *, rc: int | None = None) -> None:
        super().__init__(message)
        self.rc = rc


class PublishRefused(MqttError):
    """A packet was not handed to the broker: not connected, or the connection is going
    away. Nothing was queued for a later connection; the outbox still has the message."""


@dataclass(frozen=True, slots=True)
class Message:
    """A message sent directly (not through the outbox): Wills, status, births."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Inbound:
    """What an incoming MQTT 5 PUBLISH says beside its payload (empty under 3.1.1):
    where the sender wants an answer, the data to correlate it, its user properties."""

    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


NO_PROPERTIES = Inbound()


def _inbound(msg: paho.MQTTMessage) -> Inbound:
    props = getattr(msg, "properties", None)
    if props is None:
        return NO_PROPERTIES
    topic = getattr(props, "ResponseTopic", None)
    data = getattr(props, "CorrelationData", None)
    users = getattr(props, "UserProperty", None) or []
    return Inbound(
        topic if isinstance(topic, str) else None,
        bytes(data) if isinstance(data, (bytes, bytearray)) else None,
        tuple((str(k), str(v)) for k, v in users[:32]),
    )


class SessionEvents(Protocol):
    """What the owner of a session (a format's delivery) is told. All on the loop
    thread, except `will`, which runs in the connecting thread before each CONNECT."""

    def will(self) -> Message | None: ...

    def session_up(self) -> None: ...

    def session_down(self) -> None: ...

    def message(self, topic: str, payload: bytes, retain: bool = False, props: Inbound = NO_PROPERTIES) -> None: ...

    def acked(self, mid: int) -> None: ...


class MqttSession:
    """Connect, keep connected, publish. Reusable as an async context manager, not reentrant."""

    def __init__(
        self, backbone: Backbone, *, client_id: str, events: SessionEvents, name: str = "mqtt"
    ) -> None:
        self.backbone = backbone
        self.client_id = client_id
        self.events = events
        self.name = name
        self.log = log.bind(session=name)
        self.connected = threading.Event()
        self.connects = 0
        self.published = 0
        self.refused = 0  # publish() calls refused: not connected, or paho's queue full
        self._protocol = (
            MQTTProtocolVersion.MQTTv5 if backbone.protocol == "5" else MQTTProtocolVersion.MQTTv311
        )
        self._password = self._read_password()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None  # the loop's thread id: paho calls back on both
        self._flush_due = False
        self._was_connected = False
        self._up = False  # session_up was sent for the current client
        self.backoff = Backoff(backbone.reconnect_min, backbone.reconnect_max)
        self.nodes = backbone.nodes  # failover: a failed attempt or a lost connection moves on
        self._node = 0
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._restart_soon = False
        self._fd: int | None = None
        self._last_error: str | None = None
        self._failed_connects = 0  # since the last successful connection
        self._refused = False
        # paho's error lines while connecting (not once connected: paho logs every packet)
        self._paho_errors = _LastError()
        self._paho_log = logging.getLogger(f"cellctl.paho.{name}.{id(self)}")
        self._paho_log.propagate = False
        self._paho_log.setLevel(logging.ERROR)
        self._paho_log.addHandler(self._paho_errors)
        self._check_tls_files()
        try:
            self.client: paho.Client = self._new_client(None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError([f"backbone.tls: {describe_connect_error(exc, backbone)}"]) from None

    @property
    def node(self) -> tuple[str, int]:
        """The (host, port) connected to, or tried next."""
        return self.nodes[self._node]

    def _next_node(self) -> None:
        if len(self.nodes) > 1:
            self._node = (self._node + 1) % len(self.nodes)

    @property
    def last_error(self) -> str | None:
        """Why the last connection attempt failed; None once connected."""
        return self._last_error

    def _read_password(self) -> str | None:
        if self.backbone.password_file is None:
            return None
        path = secret_path(self.backbone.password_file)
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(
                [f"backbone.password_file: cannot read {str(path)!r}: {exc.strerror}"]
            ) from None

    def _check_tls_files(self) -> None:
        """Missing or unreadable certificate files are a config error, found at start."""
        tls = self.backbone.tls
        if tls is None:
            return
        problems = []
        for field in ("ca_file", "cert_file", "key_file"):
            path: Path | None = getattr(tls, field)
            if path is None:
                continue
            try:
                with path.open("rb"):
                    pass
            except OSError as exc:
                problems.append(f"backbone.tls.{field}: cannot read {str(path)!r}: {exc.strerror}")
        if problems:
            raise ConfigError(problems)

    def _new_client(self, will: Message | None) -> paho.Client:
        backbone = self.backbone
        client: paho.Client
        if self._protocol == MQTTProtocolVersion.MQTTv311:
            # the lean QoS 1 publish and PUBACK path (decision 0018)
            client = LeanClient(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=self._protocol,
                clean_session=True,
            )
            # Fast acks are read by self._read, which reads only the current client.
            client.on_ack = self.events.acked
        else:
            client = paho.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=self._protocol,
                clean_session=None,
            )
        # The window (MAX_INFLIGHT) and the waiting line are the delivery's
        # (cellctl/deliver/delivery.py): paho sends at once and queues nothing, which
        # also spares it a scan of every in-flight message on each PUBACK.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if will is not None:
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        if backbone.username is not None:
            client.username_pw_set(backbone.username, self._password)
        client.enable_logger(self._paho_log)
        if backbone.tls is not None:
            configure_tls(client, backbone.tls)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    # -- paho callbacks: socket plumbing ---------------------------------------------------
    # on_socket_open and the first register_write come from the executor thread that
    # connects; everything else from the loop. Hand over to the loop thread either way.
    # Callbacks of a client that is no longer current are ignored.

    def _in_loop(self, fn: Any, *args: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed at shutdown
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):
            # Nagle adds tens of ms to small bursts; we want every scan out at once.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                # A broker that vanished (cable, power) is noticed when sent data stays
                # unacknowledged this long, not only after 1.5 keep-alives.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
        self._in_loop(self._add_reader, client, sock.fileno())

    def _add_reader(self, client: paho.Client, fd: int) -> None:
        assert self._loop is not None
        sock = client.socket()
        if client is not self.client or sock is None or sock.fileno() != fd:
            return
        self._forget_fd()
        self._fd = fd
        self._loop.add_reader(fd, self._read)

    def _forget_fd(self) -> None:
        """Stop watching the socket; by fd, because paho may have closed it already
        (then the selector drops the fd itself and reports EBADF: the fd number may be
        reused by another socket at once, so it must not stay registered)."""
        if self._fd is not None and self._loop is not None:
            with contextlib.suppress(OSError):
                self._loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):
                self._loop.remove_writer(self._fd)
        self._fd = None

    def _read(self) -> None:
        rc = self.client.loop_read(max_packets=100)
        if rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_AGAIN):
            self._lost.set()

    def _write(self) -> None:
        rc = self.client.loop_write()
        if rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_AGAIN):
            self._lost.set()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._socket_closed, client)

    def _socket_closed(self, client: paho.Client) -> None:
        if client is not self.client:
            return
        self._forget_fd()
        self._lost.set()

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            # A publish on the loop (the hot path): write it out at the end of this loop
            # turn, together with whatever else is published in it; a writer is added only
            # if the socket cannot take it all. No self-pipe wake-up, no epoll changes.
            if not self._flush_due:
                self._flush_due = True
                assert self._loop is not None
                self._loop.call_soon(self._flush, client)
            return
        self._in_loop(self._add_writer, client, sock.fileno())

    def _flush(self, client: paho.Client) -> None:
        self._flush_due = False
        if client is not self.client:
            return
        self._write()
        sock = client.socket()
        if client.want_write() and sock is not None:
            self._add_writer(client, sock.fileno())  # the socket is full: the loop waits for room

    def _add_writer(self, client: paho.Client, fd: int) -> None:
        assert self._loop is not None
        sock = client.socket()
        if client is not self.client or sock is None or sock.fileno() != fd:
            return  # that socket is gone already (closed between the request and now)
        if fd == self._fd or self._fd is None:
            self._fd = fd
            self._loop.add_writer(fd, self._write)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            self._remove_writer(client)
            return
        self._in_loop(self._remove_writer, client)

    def _remove_writer(self, client: paho.Client) -> None:
        if client is not self.client or self._fd is None or self._loop is None:
            return
        sock = client.socket()
        if sock is None or sock.fileno() != self._fd:
            self._forget_fd()  # closed meanwhile
            return
        with contextlib.suppress(OSError):
            self._loop.remove_writer(self._fd)

    # -- paho callbacks: protocol events (on the loop thread, inside loop_read) ---------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if client is not self.client:
            return
        if reason.is_failure:
            message = str(reason)
            self._failed_connects += 1
            if message != self._last_error or worth_repeating(self._failed_connects):
                self.log.warning(
                    "mqtt_connect_refused",
                    reason=message,
                    host=self.node[0],
                    port=self.node[1],
                    attempts=self._failed_connects,
                )
            self._last_error = message
            self._refused = True
            self._lost.set()
            return
        client.disable_logger()
        self.connects += 1
        self.connected.set()
        self.backoff.reset()
        self._last_error = None
        self.log.info(
            "mqtt_connected",
            host=self.node[0],
            port=self.node[1],
            reconnect=self._was_connected,
            failed_attempts=self._failed_connects,
        )
        self._failed_connects = 0
        self._was_connected = True
        self._up = True
        self._in_loop(self.events.session_up)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if client is not self.client:
            return
        if self.connected.is_set() and not self._closing and not self._restart_soon:
            self.log.warning("mqtt_disconnected", reason=str(reason))
        self.connected.clear()
        self._lost.set()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if client is self.client:
            self.events.acked(mid)

    def _on_unsubscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if client is self.client:
            self.events.acked(mid)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if client is self.client:
            self._in_loop(self.events.message, msg.topic, bytes(msg.payload), bool(msg.retain), _inbound(msg))

    # -- the session task -------------------------------------------------------------------

    def _open(self) -> None:
        """Executor thread: a new client with this CONNECT's Will, connected."""
        self.client = self._new_client(self.events.will())
        host, port = self.node
        self.client.connect(host, port, self.backbone.keepalive)

    async def _run(self) -> None:
        """Connect, service keep-alive, reconnect with capped backoff and jitter. Forever."""
        loop = asyncio.get_running_loop()
        while True:
            self._lost.clear()
            self._refused = False  # this attempt got a CONNACK that refused us
            try:
                await loop.run_in_executor(None, self._open)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._connect_failed(describe_connect_error(exc, self.backbone, self.node[0]))
                self._next_node()
                await asyncio.sleep(self.backoff.next_delay())
                continue
            while not self._lost.is_set():
                try:
                    async with asyncio.timeout(1.0):
                        await self._lost.wait()
                except TimeoutError:
                    if self.client.loop_misc() != paho.MQTT_ERR_SUCCESS:  # keep-alive, timeouts
                        self._lost.set()
            self.connected.clear()
            self._forget_fd()
            if not self._up and not self._refused:
                # gone before CONNACK: with TLS, typically our client certificate refused
                self._paho_errors.last, paho_error = None, self._paho_errors.last
                self._connect_failed(
                    "the broker closed the connection before accepting it"
                    + (f": {paho_error}" if paho_error else "")
                )
            if self._up:
                self._up = False
                self._in_loop(self.events.session_down)
            if self._restart_soon:
                self._restart_soon = False
                self.backoff.reset()
            else:
                self._next_node()
            await asyncio.sleep(self.backoff.next_delay())

    def _connect_failed(self, message: str) -> None:
        """Count a failed attempt; log it when new or, while repeating, now and then."""
        self._failed_connects += 1
        if message != self._last_error or worth_repeating(self._failed_connects):
            self.log.warning(
                "mqtt_connect_failed",
                host=self.node[0],
                port=self.node[1],
                error=message,
                attempts=self._failed_connects,
            )
        self._last_error = message

    # -- API ----------------------------------------------------------------------------

    def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool = False, *, correlation_data: bytes | None = None
    ) -> int:
        """Hand one message to paho, which sends it at once; never blocks. Returns its
        mid. PublishRefused when not connected (nothing is queued for a later
        connection). Flow control is the caller's (see Delivery). `correlation_data`
        (MQTT 5 only) answers a request that carried it."""
        if not self.connected.is_set():
            self.refused += 1
            raise PublishRefused(f"{self.name}: not connected")
        client = self.client
        if qos < 2 and isinstance(client, LeanClient):  # (correlation data is MQTT 5's)
            mid = client.publish_fast(topic, payload, qos, retain)
            if not mid:  # the connection is going away
                self.refused += 1
                raise PublishRefused(f"{self.name}: {paho.error_string(paho.MQTT_ERR_NO_CONN)}", rc=paho.MQTT_ERR_NO_CONN)
            self.published += 1
            return mid
        props = None
        if correlation_data is not None and self._protocol == MQTTProtocolVersion.MQTTv5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation_data
        info = client.publish(topic, payload, qos, retain, properties=props)
        if info.rc != paho.MQTT_ERR_SUCCESS:  # the connection is going away
            self.refused += 1
            raise PublishRefused(f"{self.name}: {paho.error_string(info.rc)}", rc=info.rc)
        self.published += 1
        return int(info.mid)

    def fence(self) -> int:
        """Send a packet the broker must answer after everything sent before it; its
        answer reaches `events.acked(mid)`. PublishRefused when it cannot be sent."""
        if not self.connected.is_set():
            raise PublishRefused(f"{self.name}: not connected")
        rc, mid = self.client.unsubscribe(FENCE_TOPIC)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise PublishRefused(f"{self.name}: fence not sent: {paho.error_string(rc)}", rc=rc)
        return int(mid)

    def subscribe(self, topics: Sequence[tuple[str, int]]) -> None:
        """Subscribe (the broker's SUBACK is not awaited). PublishRefused when not sent."""
        if not topics:
            return
        if not self.connected.is_set():
            raise PublishRefused(f"{self.name}: not connected")
        if self._protocol == MQTTProtocolVersion.MQTTv5:
            # no_local: the broker never hands us back what this client published;
            # retain as published: a command published retained is seen as retained (and
            # refused) even when it arrives live, not only when it is replayed at subscribe
            subs: list[Any] = [
                (t, SubscribeOptions(qos=q, noLocal=True, retainAsPublished=True)) for t, q in topics
            ]
        else:
            subs = list(topics)
        rc, _mid = self.client.subscribe(subs)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise PublishRefused(f"{self.name}: subscribe not sent: {paho.error_string(rc)}", rc=rc)

    @property
    def is_connected(self) -> bool:
        return self.connected.is_set()

    async def __aenter__(self) -> MqttSession:
        if self._task is not None and not self._task.done():
            raise RuntimeError(f"MQTT session {self.name!r} is already running (not reentrant)")
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = asyncio.create_task(self._run(), name=f"mqtt-session:{self.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _say_goodbye(self, farewell: Message | None, *, will: bool, timeout: float) -> None:
        """Publish `farewell` and wait for its PUBACK (bounded), then send DISCONNECT
        (MQTT 5 with `will`: "disconnect with will message", so the broker sends our Will)."""
        if not self.connected.is_set():
            return
        client = self.client
        if farewell is not None:
            info = client.publish(farewell.topic, farewell.payload, farewell.qos, farewell.retain)
            deadline = time.monotonic() + timeout
            # paho offers no awaitable for one message; poll its flag, bounded
            while (  # noqa: ASYNC110
                info.rc == paho.MQTT_ERR_SUCCESS
                and not info.is_published()
                and self.connected.is_set()
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.005)
        was_connected = self.connected.is_set()
        if will and self._protocol == MQTTProtocolVersion.MQTTv5:
            client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        else:
            client.disconnect()
        # Send DISCONNECT now (the loop's writer may never run again): without it the
        # broker would publish our last will over a clean farewell.
        for _ in range(100):
            if not was_connected or client.socket() is None:
                break
            if client.loop_write() not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_AGAIN):
                break
            await asyncio.sleep(0.001)

    async def restart(self, farewell: Message | None = None, *, timeout: float = 2.0) -> None:
        """End this connection on purpose (farewell, then DISCONNECT) and connect again
        at once, with a new client and Will. Sparkplug: the primary host went offline."""
        self._restart_soon = True
        try:
            await self._say_goodbye(farewell, will=False, timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            self.log.warning("mqtt_restart_incomplete", error=str(exc))
        self._lost.set()

    async def close(
        self, farewell: Message | None = None, *, will: bool = False, timeout: float = 2.0
    ) -> None:
        """Say goodbye, disconnect; bounded in time. Reentrant calls do nothing."""
        if self._closing:
            return
        self._closing = True
        try:
            await self._say_goodbye(farewell, will=will, timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            self.log.warning("mqtt_close_incomplete", error=str(exc))
        finally:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._forget_fd()
            self.connected.clear()

    async def wait_connected(self, timeout: float) -> bool:
        return await asyncio.to_thread(self.connected.wait, timeout)
