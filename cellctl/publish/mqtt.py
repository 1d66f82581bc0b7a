"""One MQTT session to the backbone, on paho-mqtt's own network thread.

Why paho directly (docs/decisions/0002-mqtt-client.md): measured here, paho's client
publishes about 22,000 small messages/s against about 8,000 for aiomqtt on top of it,
and it already handles keep-alive, reconnect with backoff and the in-flight window.
The rest of cellctl sees only this module: `publish()` is non-blocking and thread-safe,
and connection events are handed to the asyncio loop.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cellctl.config.cell import Backbone
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
        self.client.reconnect_delay_set(
            min_delay=max(1, round(backbone.reconnect_min)), max_delay=max(1, round(backbone.reconnect_max))
        )
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

    # -- paho thread callbacks --------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning(
                "mqtt_connect_refused", reason=str(reason), host=self.backbone.host, port=self.backbone.port
            )
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # Nagle adds tens of ms to small bursts; we want every scan out at once.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connects += 1
        self.connected.set()
        log.info(
            "mqtt_connected", host=self.backbone.host, port=self.backbone.port, reconnect=self._was_connected
        )
        self._was_connected = True
        self.publish(self.status_topic, orjson.dumps({"status": "online"}), qos=1, retain=True)
        if self.on_connected is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.on_connected)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self.connected.is_set():
            log.warning("mqtt_disconnected", reason=str(reason))
        self.connected.clear()

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
        self.client.connect_async(self.backbone.host, self.backbone.port, keepalive=self.backbone.keepalive)
        self.client.loop_start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, timeout: float = 2.0) -> None:
        """Say offline (retained) and disconnect cleanly, bounded in time."""
        try:
            if self.connected.is_set():
                info = self.client.publish(
                    self.status_topic, orjson.dumps({"status": "offline", "reason": "shutdown"}), 1, True
                )
                await asyncio.to_thread(info.wait_for_publish, timeout)
            self.client.disconnect()
        except (RuntimeError, ValueError) as exc:
            log.warning("mqtt_close_incomplete", error=str(exc))
        finally:
            await asyncio.to_thread(self.client.loop_stop)
            self.connected.clear()

    async def wait_connected(self, timeout: float) -> bool:
        return await asyncio.to_thread(self.connected.wait, timeout)
