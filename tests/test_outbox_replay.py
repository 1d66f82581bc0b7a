"""Replay after a reconnect (paced, in order, backlog only), the PUBACK-to-id mapping
(including an ack that beats publish() back), and the UNS historical marker."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import orjson
import pytest

from cellctl.deliver.acks import AckTracker
from cellctl.deliver.replay import Replay
from cellctl.encode.uns import uns_historical
from cellctl.outbox import Outbox, Record

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_uns_historical_marks_objects_only() -> None:
    body = orjson.dumps({"ts": 1, "seq": 2, "values": {"a": 1.5}})
    out = orjson.loads(uns_historical(body))
    assert out == {"historical": True, "ts": 1, "seq": 2, "values": {"a": 1.5}}
    for odd in (b"{}", b"{ }", b"[1]", b"", b"online"):
        assert uns_historical(odd) == odd


def test_replay_hands_out_only_the_backlog_in_order_and_paced(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path / "o.sqlite", max_bytes=1 << 24, max_age_s=3600, fsync="off") as ob:
        backlog = ob.append_many([Record(f"d{i % 2}", "t", str(i).encode()) for i in range(25)]).ids
        replay = Replay(rate=10, burst=10, clock=clock)
        replay.start(ob.last_id())
        live = ob.append_many([Record("d0", "t", b"live")]).ids  # committed after the session began
        got = replay.take(ob, 100)
        assert [m.id for m in got] == list(backlog[:10])  # the burst
        assert replay.take(ob, 100) == []  # no tokens left until time passes
        clock.t += 0.5
        assert [m.id for m in replay.take(ob, 100)] == list(backlog[10:15])
        ob.ack(backlog[15:20])  # acked meanwhile (e.g. in flight from the last session)
        clock.t += 10
        assert [m.id for m in replay.take(ob, 100)] == list(backlog[20:25])
        assert replay.take(ob, 100) == []
        assert replay.done
        assert live[0] not in [m.id for m in got]
        assert replay.replayed == 20


def test_ack_tracker_pairs_mids_either_order() -> None:
    acked: list[list[int]] = []
    t = AckTracker(acked.append)
    t.sent(1, [10, 11])
    t.acked(1)
    t.acked(2)  # PUBACK handled on paho's thread before publish() returned to us
    t.sent(2, [12])
    assert t.drain() == 3
    assert acked == [[10, 11, 12]]
    t.acked(99)  # a birth or status message nobody tracks
    assert t.drain() == 0
    assert t.unknown == 1


def test_ack_tracker_on_disconnect_keeps_earlier_acks_and_forgets_in_flight() -> None:
    acked: list[int] = []
    t = AckTracker(acked.extend)
    t.sent(5, [50])
    t.sent(6, [60])
    t.acked(5)  # arrived before the disconnect was handled
    assert t.connection_lost() == 1
    assert acked == [50]
    t.sent(6, [61])  # the mid reused in the next session
    t.acked(6)
    t.drain()
    assert acked == [50, 61]


def test_ack_tracker_with_paho_on_another_thread() -> None:
    acked: list[int] = []
    t = AckTracker(acked.extend)
    n = 5000
    start = threading.Barrier(2)
    wakes: list[int] = []
    t.wake = lambda: wakes.append(1)

    on_wire: queue.SimpleQueue[int] = queue.SimpleQueue()

    def paho() -> None:
        # a PUBACK can only come back for a message that was published (and registered)
        start.wait(timeout=5)
        for _ in range(n):
            t.acked(on_wire.get(timeout=5))

    th = threading.Thread(target=paho, name="fake-paho")
    th.start()
    start.wait(timeout=5)
    for mid in range(n):
        t.sent(mid, [mid + 1000])
        on_wire.put(mid)
        if mid % 100 == 0:
            t.drain()
    th.join(timeout=10)
    t.drain()
    assert sorted(acked) == [mid + 1000 for mid in range(n)]
    assert t.in_flight == 0
    assert 1 <= len(wakes) < n  # woken, but not once per ack


def test_qos0_messages_are_confirmed_by_a_later_fence() -> None:
    acked: list[int] = []
    t = AckTracker(acked.extend)
    t.sent_unconfirmed(1)
    t.sent_unconfirmed(2)
    t.fence(7)  # the session's UNSUBSCRIBE after them
    t.sent_unconfirmed(3)  # after the fence: not covered by it
    assert t.is_out(1)
    assert t.is_out(3)
    t.acked(7)
    t.drain()
    assert acked == [1, 2]
    assert not t.is_out(1)
    assert t.is_out(3)
    assert t.connection_lost() == 1  # 3 was never confirmed: it stays in the outbox
    assert not t.is_out(3)


def test_replay_per_format_extends_and_rewinds(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path / "o.sqlite", max_bytes=1 << 24, max_age_s=3600, fsync="off") as ob:
        ids = ob.append_many(
            [Record("d", "t", str(i).encode(), fmt="sparkplug" if i % 2 else "uns") for i in range(10)]
        ).ids
        replay = Replay(rate=1000, burst=1000, fmt="sparkplug", clock=clock)
        replay.start(ids[5])
        assert [m.payload for m in replay.take(ob, 100)] == [b"1", b"3", b"5"]
        assert replay.done
        replay.extend(ids[9])  # more backlog, nothing handed out twice
        got = replay.take(ob, 1)
        assert [m.payload for m in got] == [b"7"]
        replay.rewind(got[0].id - 1)  # it could not be sent
        assert [m.payload for m in replay.take(ob, 100)] == [b"7", b"9"]
        assert replay.done
