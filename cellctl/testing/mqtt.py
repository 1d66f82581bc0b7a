"""A real MQTT subscriber for tests: collects every message on a topic filter and lets
the test wait for a condition with a deadline."""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    received: float  # time.time()
    dup: bool = False  # the broker's redelivery of a message it had sent before (MQTT DUP)

    def json(self) -> Any:
        return orjson.loads(self.payload)


class Collector:
    """`client_id` + `clean_session=False` keep the subscription (and the messages for
    it) across a restart of a broker with persistence, so nothing published while the
    collector reconnects is missed."""

    def __init__(
        self,
        port: int,
        topic: str,
        host: str = "127.0.0.1",
        *,
        client_id: str | None = None,
        clean_session: bool = True,
        tls: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
            clean_session=clean_session,
        )
        self.client.max_queued_messages_set(0)
        if username is not None:  # a broker with `users` (cellctl.localbroker.Mosquitto)
            self.client.username_pw_set(username, password)
        if tls is not None:  # a broker with TLS (cellctl.localbroker.BrokerTls)
            self.client.tls_set_context(tls)
        self.client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]  # paho takes float seconds
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"could not subscribe to {topic!r} on port {port}")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append(Message(msg.topic, msg.payload, bool(msg.retain), msg.qos, time.time(), bool(msg.dup)))
            self._cond.notify_all()

    def on(self, suffix: str) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(
        self, predicate: Callable[[list[Message]], Any], timeout: float = 10.0, what: str = ""
    ) -> Any:
        """Wait until predicate(messages) is truthy; return its value or fail with what was seen."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate(list(self.messages))
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = [(m.topic, m.payload[:200]) for m in self.messages[-5:]]
                    raise AssertionError(
                        f"timed out after {timeout} s waiting for {what or predicate}; last: {tail}"
                    )
                self._cond.wait(min(left, 0.1))

    async def until(
        self, predicate: Callable[[list[Message]], Any], timeout: float = 10.0, what: str = ""
    ) -> Any:
        """`wait_for` for async tests: checks between event-loop turns, never blocks the loop."""
        import asyncio

        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                snapshot = list(self.messages)
            result = predicate(snapshot)
            if result:
                return result
            if time.monotonic() > deadline:
                tail = [(m.topic, m.payload[:300]) for m in snapshot[-5:]]
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what or predicate}; last: {tail}"
                )
            await asyncio.sleep(0.01)

    def latest(self, suffix: str) -> Any:
        """The JSON body of the newest message whose topic ends with `suffix`, or None."""
        found = self.on(suffix)
        return found[-1].json() if found else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
