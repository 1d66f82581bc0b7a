"""A third-party-style command client for tests: an MQTT 5 client as an MES would be,
sending UNS JSON commands with a response topic and correlation data (or without, then
reading the ack topic), collecting every answer."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@dataclass(frozen=True)
class Answer:
    topic: str
    body: dict[str, Any]
    correlation: bytes | None


class CommandClient:
    """Answers arrive on a private response topic (`reply_topic`) and on the cell's ack
    topics; both are collected in `answers`."""

    def __init__(
        self, port: int, root: str, *, username: str | None = None, password: str | None = None
    ) -> None:
        self.root = root
        self.reply_topic = f"test-replies/{uuid.uuid4().hex[:10]}"
        self.answers: list[Answer] = []
        self.refused_connect: str | None = None
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"mes-{uuid.uuid4().hex[:8]}", protocol=MQTTProtocolVersion.MQTTv5
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._ready.wait(10):
            self.close()
            raise TimeoutError(f"command client: no subscription on port {port} ({self.refused_connect})")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.refused_connect = str(reason)
            return
        client.subscribe([(self.reply_topic, 1), (f"{self.root}/cmd/+/ack", 1)])

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            body = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        with self._cond:
            self.answers.append(Answer(msg.topic, body, corr))
            self._cond.notify_all()

    def send(
        self,
        device: str,
        body: dict[str, Any] | bytes,
        *,
        retain: bool = False,
        reply: bool = True,
        correlation: bytes | None = None,
        user: dict[str, str] | None = None,
        topic: str | None = None,
    ) -> None:
        """Publish one command (QoS 1, waits for PUBACK). `reply` asks for the answer on
        `reply_topic`; without it the daemon answers on the ack topic."""
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if reply:
            props.ResponseTopic = self.reply_topic
            props.CorrelationData = correlation or uuid.uuid4().bytes
        for k, v in (user or {}).items():
            props.UserProperty = (k, v)
        payload = body if isinstance(body, bytes) else orjson.dumps(body)
        info = self.client.publish(topic or f"{self.root}/cmd/{device}", payload, 1, retain, properties=props)
        info.wait_for_publish(5)

    def results(self, request_id: str) -> list[dict[str, Any]]:
        with self._cond:
            return [a.body for a in self.answers if a.body.get("id") == request_id]

    def wait(self, predicate: Callable[[list[Answer]], Any], timeout: float = 10.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = predicate(list(self.answers))
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; last answers: {self.answers[-5:]}")
                self._cond.wait(min(left, 0.1))

    def final(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first final answer (done, failed, refused) for `request_id`."""

        def found(answers: list[Answer]) -> dict[str, Any] | None:
            for a in answers:
                if a.body.get("id") == request_id and a.body.get("state") in ("done", "failed", "refused"):
                    return a.body
            return None

        result: dict[str, Any] = self.wait(found, timeout, f"a final answer to {request_id!r}")
        return result

    def probe(self, device: str, timeout: float = 30.0) -> dict[str, Any]:
        """Send a command that is always refused (a write to a point no profile has, so
        nothing reaches a machine) until one is answered:
        the daemon's command subscription may not be in place yet when the device is
        already online, and a command sent before it is not delivered to the daemon at all.
        Returns the answer; the probes' ids start with `probe`."""
        deadline = time.monotonic() + timeout
        for attempt in range(1, 1000):
            request_id = f"probe-{attempt}"
            self.send(device, {"id": request_id, "command": "write", "args": {"point": "__probe__", "value": 0}})
            try:
                return self.final(request_id, timeout=min(1.0 * attempt, max(0.1, deadline - time.monotonic())))
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise
        raise AssertionError("unreachable: probe attempts exhausted")

    async def async_probe(self, device: str, timeout: float = 30.0) -> dict[str, Any]:
        """`probe` for async tests (in a thread, so the daemon's loop goes on)."""
        import asyncio

        return await asyncio.to_thread(self.probe, device, timeout)

    async def async_wait(self, predicate: Callable[[list[Answer]], Any], timeout: float = 10.0) -> Any:
        """`wait` for async tests (in a thread, so the daemon's loop goes on)."""
        import asyncio

        return await asyncio.to_thread(self.wait, predicate, timeout)

    async def async_final(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """`final` for async tests (runs in a thread so the daemon's loop goes on)."""
        import asyncio

        return await asyncio.to_thread(self.final, request_id, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
