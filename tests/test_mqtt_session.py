"""The MQTT session's contract: one exception family for what was not sent, and an async
context manager that is reusable but not reentrant."""

from __future__ import annotations

import pytest

from cellctl.config.cell import Backbone
from cellctl.deliver.mqtt import Message, MqttError, MqttSession, PublishRefused
from cellctl.localbroker import Mosquitto

pytestmark = pytest.mark.timeout(30)


class Events:
    def __init__(self) -> None:
        self.ups = 0

    def will(self) -> Message | None:
        return None

    def session_up(self) -> None:
        self.ups += 1

    def session_down(self) -> None: ...

    def message(self, topic: str, payload: bytes, retain: bool = False) -> None: ...

    def acked(self, mid: int) -> None: ...


async def test_publishing_while_not_connected_raises_and_is_counted() -> None:
    session = MqttSession(Backbone(host="127.0.0.1", port=1), client_id="t", events=Events())
    with pytest.raises(PublishRefused, match="not connected") as info:
        session.publish("t/x", b"1", 1)
    assert isinstance(info.value, MqttError)
    with pytest.raises(PublishRefused):
        session.fence()
    with pytest.raises(PublishRefused):
        session.subscribe([("t/#", 1)])
    assert session.refused == 1


async def test_the_session_is_reusable_but_not_reentrant(broker: Mosquitto, unique: str) -> None:
    events = Events()
    session = MqttSession(
        Backbone(host="127.0.0.1", port=broker.port, reconnect_min=0.1), client_id=unique, events=events
    )
    async with session:
        assert await session.wait_connected(10)
        with pytest.raises(RuntimeError, match="not reentrant"):
            await session.__aenter__()
        assert session.publish(f"{unique}/x", b"1", 1) > 0
    assert not session.is_connected
    async with session:  # again, after a clean close
        assert await session.wait_connected(10)
        assert session.publish(f"{unique}/x", b"2", 1) > 0
    assert events.ups == 2


async def test_a_vanished_broker_is_noticed_by_tcp_not_only_by_keepalive(broker: Mosquitto, unique: str) -> None:
    """Issue 16 item 8: unacknowledged data gives up after TCP_USER_TIMEOUT_MS, so a broker
    that vanished (power, cable) is detected in seconds instead of 1.5 keep-alives."""
    import socket

    from cellctl.deliver.mqtt import TCP_USER_TIMEOUT_MS

    session = MqttSession(Backbone(host="127.0.0.1", port=broker.port), client_id=unique, events=Events())
    async with session:
        assert await session.wait_connected(10)
        sock = session.client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == TCP_USER_TIMEOUT_MS
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
