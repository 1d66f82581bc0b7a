"""The lean MQTT 3.1.1 path (cellctl/deliver/lean.py, decision 0018): it leans on paho
internals, so these tests fail loudly when paho changes them, and they check against a
real mosquitto that fast-published messages are acknowledged, arrive in order, and leave
the outbox; and that the packet splitter copes with packets cut anywhere."""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cellctl.config.cell import Backbone
from cellctl.deliver.lean import PAHO_INTERNALS, LeanClient
from cellctl.deliver.uns import UnsDelivery
from cellctl.localbroker import Mosquitto
from cellctl.outbox import OutboxWriter, Record
from cellctl.outbox.store import Outbox
from cellctl.testing import Collector, async_wait_until

pytestmark = pytest.mark.timeout(60)

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _client(cls: type[paho.Client] = paho.Client) -> paho.Client:
    return cls(CallbackAPIVersion.VERSION2, client_id="lean-test", protocol=MQTTProtocolVersion.MQTTv311)


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def test_the_installed_paho_is_in_the_range_pyproject_pins() -> None:
    text = PYPROJECT.read_text(encoding="utf-8")
    spec = next(line.strip().strip('",') for line in text.splitlines() if line.strip().startswith('"paho-mqtt'))
    low, high = spec.removeprefix("paho-mqtt>=").split(",<")
    assert _release(low) <= _release(version("paho-mqtt")) < _release(high), spec


def test_the_paho_internals_the_lean_client_relies_on_are_unchanged() -> None:
    """If this fails, paho changed what LeanClient overrides or calls: re-read paho's
    `_packet_read`, `_packet_write`, `_packet_queue` and `publish`, adapt lean.py, and
    widen the pin in pyproject.toml only then."""
    client = _client()
    missing = [name for name in PAHO_INTERNALS if not hasattr(client, name)]
    assert missing == []
    params = {
        name: list(inspect.signature(getattr(client, name)).parameters)
        for name in ("_packet_handle", "_loop_rc_handle", "_mid_generate", "_sock_recv", "_call_socket_register_write", "loop_read")
    }
    assert params == {
        "_packet_handle": [],
        "_loop_rc_handle": ["rc"],
        "_mid_generate": [],
        "_sock_recv": ["bufsize"],
        "_call_socket_register_write": [],
        "loop_read": ["max_packets"],
    }
    assert set(client._in_packet) == {
        "command", "have_remaining", "remaining_count", "remaining_mult", "remaining_length", "packet", "to_process", "pos",
    }
    # the packet dicts LeanClient queues: paho writes packet[pos:], counts to_process down,
    # and looks at `info` only for QoS 0 PUBLISH (a QoS 1 batch carries none)
    write_src = inspect.getsource(paho.Client._packet_write)
    assert "packet['packet'][packet['pos']:]" in write_src
    assert "packet['to_process'] -= write_length" in write_src
    assert "== PUBLISH and packet['qos'] == 0" in write_src
    assert write_src.count("packet['info']") == 1
    queue_src = inspect.getsource(paho.Client._packet_queue)
    assert '"to_process": len(packet)' in queue_src
    # a PUBACK paho tracks (its own publish()) is still handled by paho
    assert "self._out_messages" in inspect.getsource(paho.Client._handle_pubackcomp)


def test_the_lean_client_refuses_mqtt5() -> None:
    with pytest.raises(ValueError, match=r"3\.1\.1 only"):
        LeanClient(CallbackAPIVersion.VERSION2, client_id="x", protocol=MQTTProtocolVersion.MQTTv5)


@pytest.fixture
def wired() -> Iterator[tuple[LeanClient, socket.socket, list[int]]]:
    """A LeanClient whose socket is one end of a real socket pair (the test plays broker)."""
    client = _client(LeanClient)
    assert isinstance(client, LeanClient)
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    acks: list[int] = []
    client.on_ack = acks.append
    yield client, broker, acks
    client._sock = None
    ours.close()
    broker.close()


def _read_all(client: LeanClient) -> None:
    for _ in range(10):
        assert client.loop_read() == paho.MQTT_ERR_SUCCESS


def test_pubacks_cut_anywhere_are_reassembled(wired: tuple[LeanClient, socket.socket, list[int]]) -> None:
    client, broker, acks = wired
    stream = b"".join(bytes([0x40, 2, mid >> 8, mid & 0xFF]) for mid in range(1, 301))
    pos = 0
    for cut in [1, 2, 3, 5, 7, 11, 13, 400, 1, 1, 1]:  # lengths of the pieces the broker sends
        broker.sendall(stream[pos : pos + cut])
        pos += cut
        _read_all(client)
    broker.sendall(stream[pos:])
    _read_all(client)
    assert acks == list(range(1, 301))
    assert client.buffered == 0


def test_other_packets_go_to_paho_between_fast_acks(wired: tuple[LeanClient, socket.socket, list[int]]) -> None:
    """An UNSUBACK (a fence) between PUBACKs reaches paho's on_unsubscribe, in order."""
    client, broker, acks = wired
    seen: list[Any] = []
    client.on_unsubscribe = lambda c, u, mid, rcs, props: seen.append(("unsuback", mid, len(acks)))
    client.on_publish = lambda c, u, mid, rc, props: seen.append(("paho puback", mid))
    broker.sendall(bytes([0x40, 2, 0, 7, 0xB0, 2, 0, 8, 0x40, 2, 0, 9, 0xD0, 0]))  # PUBACK UNSUBACK PUBACK PINGRESP
    _read_all(client)
    assert acks == [7, 9]
    assert seen == [("unsuback", 8, 1)]


def test_a_packet_length_over_four_bytes_is_a_protocol_error(wired: tuple[LeanClient, socket.socket, list[int]]) -> None:
    client, broker, acks = wired
    broker.sendall(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))
    assert client.loop_read() == paho.MQTT_ERR_PROTOCOL
    assert acks == []


def test_fast_publishes_are_batched_into_one_packet_write(wired: tuple[LeanClient, socket.socket, list[int]]) -> None:
    client, broker, _acks = wired
    published: list[int] = []
    client.on_publish = lambda c, u, mid, rc, props: published.append(mid)
    sizes = [*range(50), 200, 20_000]  # one- two- and three-byte remaining lengths
    qos = [i % 3 % 2 for i in range(len(sizes))]  # QoS 1, 0, 0, 1, ...
    mids = [
        client.publish_fast(f"t/lean/{i}", b"x" * n, q, retain=i % 2 == 1)
        for i, (n, q) in enumerate(zip(sizes, qos, strict=True))
    ]
    assert all(1 <= mid <= 65535 for mid in mids)
    assert len(client._out_packet) == 1  # one write for the lot
    assert client._out_messages == {}  # paho keeps nothing for a later connection
    for _ in range(100):
        assert client.loop_write() == paho.MQTT_ERR_SUCCESS
        if not client.want_write():
            break
    assert published == []  # no per-message on_publish, not even for QoS 0
    broker.settimeout(5)
    data = b""
    expected_len = sum(
        1 + (1 if body < 128 else 2 if body < 16384 else 3) + body
        for body in (2 + len(f"t/lean/{i}") + 2 * q + n for i, (n, q) in enumerate(zip(sizes, qos, strict=True)))
    )
    while len(data) < expected_len:
        data += broker.recv(65536)
    # parse the PUBLISH packets back: QoS and retain as asked, topic, packet id, payload
    pos, got = 0, []
    while pos < len(data):
        head, length, mult, i = data[pos], 0, 1, pos + 1
        while True:
            length += (data[i] & 0x7F) * mult
            mult *= 128
            i += 1
            if not data[i - 1] & 0x80:
                break
        body = data[i : i + length]
        tlen = int.from_bytes(body[:2], "big")
        q = (head >> 1) & 3
        mid = int.from_bytes(body[2 + tlen : 4 + tlen], "big") if q else None
        got.append((head, body[2 : 2 + tlen].decode(), mid, body[2 + tlen + 2 * q :]))
        pos = i + length
    assert got == [
        (0x30 | q << 1 | (i % 2), f"t/lean/{i}", mids[i] if q else None, b"x" * n)
        for i, (n, q) in enumerate(zip(sizes, qos, strict=True))
    ]


@pytest.mark.parametrize("qos", [1, 0])
async def test_fast_published_records_are_acked_delivered_in_order_and_leave_the_outbox(
    broker: Mosquitto, unique: str, tmp_path: Path, qos: int
) -> None:
    """QoS 1: each PUBACK confirms its record; QoS 0: the fences' UNSUBACKs do."""
    n = 3000
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 26, max_age_s=3600, fsync="off") as outbox:
        writer = OutboxWriter(outbox)
        backbone = Backbone(host="127.0.0.1", port=broker.port, reconnect_min=0.1)
        delivery = UnsDelivery(backbone, client_id=unique, writer=writer, replay_rate=1000, root=unique)
        writer.on_stored = delivery.on_stored
        collector = await asyncio.to_thread(Collector, broker.port, f"{unique}/points/#")
        try:
            async with asyncio.TaskGroup() as tg:
                writer_task = tg.create_task(writer.run(), name="outbox-writer")
                async with delivery.session:
                    run_task = tg.create_task(delivery.run(), name="delivery:uns")
                    assert await delivery.session.wait_connected(10)
                    assert isinstance(delivery.session.client, LeanClient)
                    await async_wait_until(lambda: delivery.live, what="the delivery went live")
                    for i in range(n):
                        assert writer.put(Record("d", f"{unique}/points/p{i % 7}", b"%d" % i, qos, False))
                        if i % 100 == 99:
                            await asyncio.sleep(0)  # let commits and acks interleave with puts
                    await async_wait_until(
                        lambda: (delivery.tracker.acked_total, len(outbox)) == (n, 0),
                        timeout=30,
                        what=f"every record acked and deleted (acked {delivery.tracker.acked_total}, left {len(outbox)})",
                    )
                    assert delivery.tracker.in_flight == 0
                    assert delivery.live_published == n
                    assert delivery.replay_published == 0
                    assert delivery.session.client._out_messages == {}
                    run_task.cancel()
                writer_task.cancel()
        except* asyncio.CancelledError:
            pass
        await collector.until(lambda ms: len(ms) >= n, 30, f"{n} messages at the subscriber")
        received = collector.on("")
        collector.close()
        assert [int(m.payload) for m in received[:n]] == list(range(n))
        assert all(m.qos == qos for m in received)
