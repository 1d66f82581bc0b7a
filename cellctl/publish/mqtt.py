"""One MQTT session to the backbone: paho-mqtt's protocol engine driven by the asyncio
loop through paho's external-loop hooks (no network thread).

Why (docs/decisions/0002-mqtt-client.md): paho is the best-kept Python MQTT client and
publishes about 22,000 small messages/s; aiomqtt on top of it about 8,000. Driving it from
the event loop instead of `loop_start()` removes a thread wake-up, a select() and a
socketpair read per published message (about a quarter of the daemon's CPU in the
benchmark). The blocking TCP/TLS connect runs in an executor so an unreachable broker
never stalls device polling. The rest of cellctl sees only this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cellctl.config.cell import Backbone
from cellctl.engine.backoff import Backoff
from cellctl.errors import ConfigError

log = structlog.get_logger("cellctl.mqtt")


class MqttSession:
    """Connect, keep connected, publish. Reusable as an async context manager, not reentrant."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        client_id: str,
        status_topic: str,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.backbone = backbone
        self.client_id = client_id
        self.status_topic = status_topic
        self.on_connected = on_connected
        self.connected = threading.Event()
        self.connects = 0
        self.dropped = 0  # messages refused because the in-memory queue was full
        self.published = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._was_connected = False
        self._dropping = False
        protocol = MQTTProtocolVersion.MQTTv5 if backbone.protocol == "5" else MQTTProtocolVersion.MQTTv311
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=True if protocol == MQTTProtocolVersion.MQTTv311 else None,
        )
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(backbone.max_queued_messages)
        self.backoff = Backoff(backbone.reconnect_min, backbone.reconnect_max)
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._fd: int | None = None
        self._last_error: str | None = None
        self.client.will_set(
            status_topic, orjson.dumps({"status": "offline", "reason": "connection_lost"}), 1, True
        )
        if backbone.username is not None:
            self.client.username_pw_set(backbone.username, self._read_password())
        if backbone.tls is not None:
            tls = backbone.tls
            self.client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_NONE if tls.insecure_skip_verify else ssl.CERT_REQUIRED,
            )
            if tls.insecure_skip_verify:
                self.client.tls_insecure_set(True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_socket_open = self._on_socket_open
        self.client.on_socket_close = self._on_socket_close
        self.client.on_socket_register_write = self._on_socket_register_write
        self.client.on_socket_unregister_write = self._on_socket_unregister_write

    def _read_password(self) -> str | None:
        path = self.backbone.password_file
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(
                [f"backbone.password_file: cannot read {str(path)!r}: {exc.strerror}"]
            ) from None

    # -- paho callbacks: socket plumbing ---------------------------------------------------
    # on_socket_open and the first register_write come from the executor thread that
    # connects; everything else from the loop. Hand over to the loop thread either way.

    def _in_loop(self, fn: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):
            # Nagle adds tens of ms to small bursts; we want every scan out at once.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._in_loop(self._add_reader, sock.fileno())

    def _add_reader(self, fd: int) -> None:
        assert self._loop is not None
        sock = self.client.socket()
        if sock is None or sock.fileno() != fd:
            return
        self._forget_fd()
        self._fd = fd
        self._loop.add_reader(fd, self._read)

    def _forget_fd(self) -> None:
        """Stop watching the socket; by fd, because paho may have closed it already."""
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
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
        self._in_loop(self._socket_closed)

    def _socket_closed(self) -> None:
        self._forget_fd()
        self._lost.set()

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._add_writer, sock.fileno())

    def _add_writer(self, fd: int) -> None:
        assert self._loop is not None
        sock = self.client.socket()
        if sock is None or sock.fileno() != fd:
            return  # that socket is gone already (closed between the request and now)
        if fd == self._fd or self._fd is None:
            self._fd = fd
            self._loop.add_writer(fd, self._write)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._remove_writer)

    def _remove_writer(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_writer(self._fd)

    # -- paho callbacks: protocol events -----------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            message = str(reason)
            if message != self._last_error:
                log.warning(
                    "mqtt_connect_refused", reason=message, host=self.backbone.host, port=self.backbone.port
                )
            self._last_error = message
            self._lost.set()
            return
        self.connects += 1
        self.connected.set()
        self.backoff.reset()
        self._last_error = None
        log.info(
            "mqtt_connected", host=self.backbone.host, port=self.backbone.port, reconnect=self._was_connected
        )
        self._was_connected = True
        self.publish(self.status_topic, orjson.dumps({"status": "online"}), qos=1, retain=True)
        if self.on_connected is not None:
            self._in_loop(self.on_connected)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self.connected.is_set() and not self._closing:
            log.warning("mqtt_disconnected", reason=str(reason))
        self.connected.clear()
        self._lost.set()

    # -- the session task -------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, service keep-alive, reconnect with capped backoff and jitter. Forever."""
        loop = asyncio.get_running_loop()
        first = True
        while True:
            self._lost.clear()
            try:
                if first:
                    await loop.run_in_executor(
                        None,
                        self.client.connect,
                        self.backbone.host,
                        self.backbone.port,
                        self.backbone.keepalive,
                    )
                else:
                    await loop.run_in_executor(None, self.client.reconnect)
                first = False
            except (OSError, ssl.SSLError, ValueError) as exc:
                message = f"{type(exc).__name__}: {exc}"
                if message != self._last_error:
                    log.warning(
                        "mqtt_connect_failed", host=self.backbone.host, port=self.backbone.port, error=message
                    )
                self._last_error = message
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
            await asyncio.sleep(self.backoff.next_delay())

    # -- API ----------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        """Queue one message; never blocks. QoS 1 messages wait in paho's queue while
        the broker is away (bounded by backbone.max_queued_messages; overflow is counted)."""
        info = self.client.publish(topic, payload, qos, retain)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                log.error(
                    "mqtt_queue_full_dropping",
                    limit=self.backbone.max_queued_messages,
                    hint="the broker has been unreachable for long; raise backbone.max_queued_messages",
                )
        else:
            self.published += 1
            if self._dropping:
                self._dropping = False
                log.warning("mqtt_queue_accepting_again", dropped_total=self.dropped)

    async def __aenter__(self) -> MqttSession:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="mqtt-session")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, timeout: float = 2.0) -> None:
        """Say offline (retained), let queued messages drain, disconnect; bounded in time."""
        self._closing = True
        try:
            if self.connected.is_set():
                info = self.client.publish(
                    self.status_topic, orjson.dumps({"status": "offline", "reason": "shutdown"}), 1, True
                )
                deadline = time.monotonic() + timeout
                # paho offers no awaitable for one message; poll its flag, bounded
                while not info.is_published() and self.connected.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
            was_connected = self.connected.is_set()
            self.connected.clear()
            self.client.disconnect()
            # Send DISCONNECT now (the loop's writer may never run again): without it the
            # broker would publish our last will over the clean "shutdown" status.
            for _ in range(100):
                if not was_connected or self.client.socket() is None:
                    break
                if self.client.loop_write() not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_AGAIN):
                    break
                await asyncio.sleep(0.001)
        except (RuntimeError, ValueError) as exc:
            log.warning("mqtt_close_incomplete", error=str(exc))
        finally:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._forget_fd()
            self.connected.clear()

    async def wait_connected(self, timeout: float) -> bool:
        return await asyncio.to_thread(self.connected.wait, timeout)
