"""The outbox store: order, acks, bounds with counted drops, and clear errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cellctl.outbox import DropEvent, Outbox, OutboxCorrupt, OutboxError, OutboxLocked, Record
from cellctl.outbox.store import ROW_OVERHEAD

pytestmark = pytest.mark.timeout(60)

MB = 1024 * 1024


class Clock:
    def __init__(self, t: float = 1_764_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def rec(stream: str, n: int, *, size: int = 10, retain: bool = False, topic: str | None = None) -> Record:
    body = f"{stream}:{n}:".encode().ljust(size, b".")
    return Record(stream, topic or f"uns/v1/{stream}/data", body, qos=1, retain=retain)


def row_size(r: Record) -> int:
    return len(r.payload) + len(r.topic) + len(r.stream) + ROW_OVERHEAD


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.sqlite"


def test_pending_returns_insertion_order_and_ack_removes(path: Path) -> None:
    with Outbox(path, max_bytes=MB, max_age_s=3600, fsync="off") as ob:
        res = ob.append_many([rec(f"dev{i % 3}", i) for i in range(30)])
        assert list(res.ids) == list(range(1, 31))
        got = ob.pending(100)
        assert [m.id for m in got] == list(res.ids)
        for dev in ("dev0", "dev1", "dev2"):  # per stream: exactly the order appended
            assert [int(m.payload.split(b":")[1]) for m in got if m.stream == dev] == list(range(int(dev[-1]), 30, 3))
        assert ob.ack(res.ids[:10]) == 10
        assert ob.ack(res.ids[:10]) == 0  # a second ack of the same ids is a no-op
        assert [m.id for m in ob.pending(100)] == list(res.ids[10:])
        assert [m.id for m in ob.pending(5, after_id=20)] == [21, 22, 23, 24, 25]
        assert len(ob) == 20


def test_ids_never_go_back_even_when_emptied_and_reopened(path: Path) -> None:
    with Outbox(path, max_bytes=MB, max_age_s=3600, fsync="off") as ob:
        ids = ob.append_many([rec("d", i) for i in range(5)]).ids
        ob.ack(ids)
        assert len(ob) == 0
    with Outbox(path, max_bytes=MB, max_age_s=3600, fsync="off") as ob:
        # a replay cursor left at 5 must still see what comes next
        assert list(ob.append_many([rec("d", 9)]).ids) == [6]
        assert [m.id for m in ob.pending(10, after_id=5)] == [6]


def test_reopen_keeps_unacked_messages_and_totals(path: Path) -> None:
    with Outbox(path, max_bytes=MB, max_age_s=3600, fsync="always") as ob:
        ids = ob.append_many([rec("d", i, retain=i == 2) for i in range(4)]).ids
        ob.ack([ids[0]])
        size = ob.stored_bytes
    with Outbox(path, max_bytes=MB, max_age_s=3600, fsync="batch") as ob:
        got = ob.pending(10)
        assert [(m.id, m.retain, m.qos, m.fmt) for m in got] == [
            (2, False, 1, "uns"), (3, True, 1, "uns"), (4, False, 1, "uns")]
        assert got[0].payload == rec("d", 1).payload
        assert ob.stored_bytes == size
        assert ob.stats().messages == 3


def test_a_batch_is_one_transaction(path: Path) -> None:
    with Outbox(path, max_bytes=MB, max_age_s=3600, fsync="off") as ob:
        ob.append_many([rec("d", 0)])
        bad = Record("d", "t", [1, 2])  # type: ignore[arg-type]  # SQLite cannot bind it: fails mid-batch
        with pytest.raises(OutboxError) as info:
            ob.append_many([rec("d", 1), bad, rec("d", 2)])
        assert type(info.value) is OutboxError  # a bad record is not a corrupt database
        assert [m.payload for m in ob.pending(10)] == [rec("d", 0).payload]
        assert len(ob) == 1
        assert ob.stored_bytes == row_size(rec("d", 0))


def test_age_bound_drops_old_messages_counted(path: Path) -> None:
    clock = Clock()
    events: list[DropEvent] = []
    with Outbox(path, max_bytes=MB, max_age_s=60, fsync="off", clock=clock, on_drop=events.append) as ob:
        ob.append_many([rec("a", i) for i in range(3)])
        clock.t += 30
        ob.append_many([rec("b", i) for i in range(2)])
        clock.t += 31  # the first three are now 61 s old, the others 31 s
        assert ob.expire()[0].count == 3
        assert [m.stream for m in ob.pending(10)] == ["b", "b"]
        (ev,) = events
        assert (ev.reason, ev.count, ev.by_stream) == ("max_age", 3, {"a": 3})
        assert ev.oldest_created_ms == int((clock.t - 61) * 1000)
        clock.t += 100
        ob.append_many([rec("c", 0)])  # appending applies the bound too
        assert [m.stream for m in ob.pending(10)] == ["c"]
        st = ob.stats()
        assert st.dropped_total == 5
        assert st.dropped_by_reason == {"max_age": 5}


def test_size_bound_drops_superseded_retained_then_oldest_data_then_retained(path: Path) -> None:
    events: list[DropEvent] = []
    state = [rec("m", i, retain=True, topic="uns/v1/m/state", size=100) for i in range(3)]
    data = [rec("m", 10 + i, size=100) for i in range(4)]
    per = row_size(data[0])
    assert row_size(state[0]) == row_size(rec("m", 0, retain=True, topic="uns/v1/m/state", size=100))
    # room for 6 rows: appending 7 forces out 1 -> the first superseded state message
    limit = 6 * per + per // 2
    with Outbox(path, max_bytes=limit, max_age_s=3600, fsync="off", on_drop=events.append) as ob:
        ob.append_many(state[:1] + data[:2] + state[1:] + data[2:])
        kept = ob.pending(20)
        assert [m.payload for m in kept] == [m.payload for m in data[:2] + state[1:] + data[2:]]
        assert [(e.reason, e.count) for e in events] == [("superseded", 1)]
        # 3 more data messages: the remaining superseded state goes, then the oldest data
        ob.append_many([rec("m", 20 + i, size=100) for i in range(3)])
        assert [(e.reason, e.count) for e in events[1:]] == [("superseded", 1), ("max_bytes", 2)]
        payloads = [m.payload for m in ob.pending(20)]
        assert state[2].payload in payloads
        assert data[0].payload not in payloads
        assert data[1].payload not in payloads
        assert ob.stored_bytes <= limit
        st = ob.stats()
        assert st.dropped_by_reason == {"superseded": 2, "max_bytes": 2}
        assert st.dropped_total == 4
        assert st.messages == 6


def test_size_bound_drops_a_huge_new_message_and_finally_retained_ones(path: Path) -> None:
    events: list[DropEvent] = []
    with Outbox(path, max_bytes=1000, max_age_s=3600, fsync="off", on_drop=events.append) as ob:
        ob.append_many([rec("a", 0, retain=True, topic="t/a", size=300), rec("b", 0, retain=True, topic="t/b", size=300)])
        ob.append_many([rec("c", 0, size=5000)])  # bigger than the whole bound: it goes first
        assert [m.stream for m in ob.pending(10)] == ["a", "b"]
        assert [(e.reason, e.count, e.by_stream) for e in events] == [("max_bytes", 1, {"c": 1})]
        # only retained messages on distinct topics left to drop: the oldest goes
        ob.append_many([rec("d", 0, retain=True, topic="t/d", size=300)])
        assert [m.stream for m in ob.pending(10)] == ["b", "d"]
        assert [(e.reason, e.count, e.by_stream) for e in events[1:]] == [("max_bytes", 1, {"a": 1})]
        assert ob.stored_bytes <= 1000


def test_corrupt_file_gives_a_clear_error(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database, it is a shopping list " * 100)
    with pytest.raises(OutboxCorrupt) as info:
        Outbox(path, max_bytes=MB, max_age_s=60)
    msg = str(info.value)
    assert str(path) in msg
    assert "move the file" in msg
    Outbox(path.with_name("other.sqlite"), max_bytes=MB, max_age_s=60).close()  # the lock was released


def test_second_process_lock_is_refused_clearly(path: Path) -> None:
    with (
        Outbox(path, max_bytes=MB, max_age_s=60, fsync="off"),
        pytest.raises(OutboxLocked, match=r"in use by another process \(pid \d+\)"),
    ):
        Outbox(path, max_bytes=MB, max_age_s=60)
    Outbox(path, max_bytes=MB, max_age_s=60).close()  # free again after close


def test_foreign_write_lock_times_out_with_a_clear_error(path: Path) -> None:
    with Outbox(path, max_bytes=MB, max_age_s=60, fsync="off", busy_timeout_s=0.2) as ob:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(OutboxLocked, match="database is locked"):
                ob.append_many([rec("d", 1)])
            other.execute("ROLLBACK")
        finally:
            other.close()
        ob.append_many([rec("d", 2)])
        assert [m.payload for m in ob.pending(5)] == [rec("d", 2).payload]
        assert len(ob) == 1


def test_bad_arguments(path: Path) -> None:
    with pytest.raises(ValueError, match="fsync"):
        Outbox(path, max_bytes=MB, max_age_s=60, fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        Outbox(path, max_bytes=0, max_age_s=60)


def test_stats(path: Path) -> None:
    clock = Clock()
    with Outbox(path, max_bytes=MB, max_age_s=60, fsync="batch", clock=clock) as ob:
        ids = ob.append_many([rec("d", i) for i in range(4)]).ids
        ob.ack(ids[:1])
        st = ob.stats()
        assert (st.messages, st.appended_total, st.acked_total, st.dropped_total) == (3, 4, 1, 0)
        assert st.oldest_created_ms == int(clock.t * 1000)
        assert st.file_bytes > 0
        assert st.max_bytes == MB
