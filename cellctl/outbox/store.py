"""The durable outbox: messages wait here from before they are published until the
broker acknowledged them, across broker outages, kill -9 and (per fsync policy) power loss.

One SQLite database in WAL mode (stdlib sqlite3), one table, ids from AUTOINCREMENT so
they only ever grow: insertion order is id order, which gives per-stream order for
free and lets a replay cursor (`after_id`) never skip a message appended later.

Durability (`fsync`):
    always  synchronous=FULL: every commit is on disk before append returns.
    batch   synchronous=NORMAL: a commit survives a process crash at once; a WAL
            checkpoint at most every `sync_interval_s` bounds what a power cut can lose.
    off     synchronous=OFF: survives a process crash; a power cut may lose or corrupt.

Bounds and the drop policy (every drop counted by reason and reported, never silent):
    max_age_s   messages enqueued longer ago than this are dropped ("max_age").
    max_bytes   over this many stored bytes, drop in this order until it fits:
                1. retained messages superseded by a newer retained message on the
                   same topic ("superseded"): the broker would replace them anyway;
                2. the oldest non-retained messages ("max_bytes");
                3. the oldest retained messages ("max_bytes").

Thread safety: one connection behind a lock, so any thread may call; checkpoints
(`sync`) use a second connection so that they never hold up a commit. `OutboxWriter`
(writer.py) commits from the event loop with `nowait` (never waiting for a lock) unless
every commit syncs (fsync=always), and runs everything else on its thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

Fsync = Literal["always", "batch", "off"]
DropReason = Literal["max_age", "max_bytes", "superseded", "backlog"]

ROW_OVERHEAD: Final = 48  # bytes counted per message on top of payload, topic and stream
_SYNCHRONOUS: Final[dict[str, str]] = {"always": "FULL", "batch": "NORMAL", "off": "OFF"}
_CHUNK: Final = 500  # ids per statement, below SQLite's bound-parameter limit
_SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    stream     TEXT    NOT NULL,
    topic      TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    qos        INTEGER NOT NULL,
    retain     INTEGER NOT NULL,
    fmt        TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    size       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_retained ON messages(topic, id) WHERE retain = 1;
"""


class OutboxError(Exception):
    """The outbox cannot be used; `path` is the database concerned."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"outbox {str(path)!r}: {message}")
        self.path = path


class OutboxLocked(OutboxError):
    """Another process (or connection) holds the outbox."""


class OutboxBusy(OutboxLocked):
    """A `nowait` commit found the write lock taken: nothing was written; try again."""


class OutboxCorrupt(OutboxError):
    """The file is not a readable outbox database."""


@dataclass(frozen=True, slots=True)
class Record:
    """A message to keep until the broker acknowledged it. `stream` is the ordering key
    (the device id); `fmt` tells replay how to treat the payload."""

    stream: str
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    fmt: str = "uns"


@dataclass(frozen=True, slots=True)
class Stored:
    """A message as the outbox holds it; `id` is what `ack` takes."""

    id: int
    stream: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    fmt: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class DropEvent:
    """Messages the outbox gave up on, for one reason: counted, logged, published."""

    reason: DropReason
    count: int
    bytes: int
    by_stream: dict[str, int]
    oldest_created_ms: int | None
    newest_created_ms: int | None


@dataclass(frozen=True, slots=True)
class AppendResult:
    """`ids[i]` is the id of the i-th appended record (still valid if it was dropped
    within the same call; `drops` says so)."""

    ids: range
    acked: int = 0
    drops: tuple[DropEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class OutboxStats:
    messages: int
    bytes: int
    max_bytes: int
    oldest_created_ms: int | None
    appended_total: int
    acked_total: int
    dropped_total: int
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    file_bytes: int = 0


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorname", "")
    return code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in str(exc)


def _size(r: Record) -> int:
    return len(r.payload) + len(r.topic) + len(r.stream) + ROW_OVERHEAD


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


class Outbox:
    """See the module docstring. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int,
        max_age_s: float,
        fsync: Fsync = "batch",
        sync_interval_s: float = 1.0,
        busy_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        on_drop: Callable[[DropEvent], None] | None = None,
    ) -> None:
        if fsync not in _SYNCHRONOUS:
            raise ValueError(f"fsync must be one of always, batch, off; got {fsync!r}")
        if max_bytes <= 0 or max_age_s <= 0:
            raise ValueError("max_bytes and max_age_s must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_ms = int(max_age_s * 1000)
        self.fsync: Fsync = fsync
        self.sync_interval_s = sync_interval_s
        self.clock = clock
        self.on_drop = on_drop
        self.appended_total = 0
        self.acked_total = 0
        self.dropped: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._next_id = 1
        self._head_ms: int | None = None  # created_ms of the oldest message, as last read
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._busy_now_ms = self._busy_timeout_ms
        self._last_sync = time.monotonic()
        # checkpoints run on a connection of their own, so a commit never waits for one
        # (a checkpoint syncs the disk; the commits may run on the event loop)
        self._sync_lock = threading.Lock()
        self._sync_db: sqlite3.Connection | None = None
        self._lockfd = self._take_process_lock()
        try:
            self._db = self._open(busy_timeout_s)
            self._count, self._bytes = self._totals()
            self._next_id = self._last_assigned() + 1
        except sqlite3.DatabaseError as exc:
            os.close(self._lockfd)
            raise self._wrap(exc) from None
        except BaseException:
            os.close(self._lockfd)
            raise

    # -- opening -------------------------------------------------------------------

    def _take_process_lock(self) -> int:
        """One daemon per outbox: a second would publish every message twice."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise OutboxLocked(self.path, f"in use by another process (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _open(self, busy_timeout_s: float) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(self.path, f"cannot switch to WAL mode (got {mode!r})")
            db.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self.fsync]}")
            db.execute("PRAGMA journal_size_limit=67108864")  # truncate a grown WAL after checkpoints
            # no automatic checkpoint inside a commit: `sync()` checkpoints, on the writer's
            # thread, at most every sync_interval_s (and whenever the WAL has grown a lot)
            db.execute("PRAGMA wal_autocheckpoint=0")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise OutboxError(self.path, f"schema version {version} is newer than this cellctl knows")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def _wrap(self, exc: sqlite3.Error) -> OutboxError:
        text = str(exc)
        code = getattr(exc, "sqlite_errorname", "")
        if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in text:
            return OutboxLocked(self.path, f"database is locked by another connection ({text})")
        if (
            code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
            or "not a database" in text
            or "malformed" in text
        ):
            return OutboxCorrupt(
                self.path,
                f"{text}; stop cellctl and move the file (and its -wal, -shm) aside to start an empty outbox",
            )
        if code.startswith("SQLITE_FULL"):
            return OutboxError(
                self.path, f"{text}: the disk is full; the outbox keeps new messages in memory"
            )
        return OutboxError(self.path, text)

    @contextlib.contextmanager
    def _transaction(self, *, nowait: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._db
            try:
                wait_ms = 0 if nowait else self._busy_timeout_ms
                if wait_ms != self._busy_now_ms:  # only when switching: one pragma
                    db.execute(f"PRAGMA busy_timeout={wait_ms}")
                    self._busy_now_ms = wait_ms
                try:
                    db.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if nowait and _is_busy(exc):
                        raise OutboxBusy(self.path, "the write lock is taken; not waiting") from None
                    raise
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    self._recount()
                    raise
            except sqlite3.Error as exc:
                raise self._wrap(exc) from None

    def _recount(self) -> None:
        """After a rolled-back transaction the running totals are wrong: read them again."""
        self._head_ms = None
        with contextlib.suppress(sqlite3.Error):
            self._count, self._bytes = self._totals()

    def _last_assigned(self) -> int:
        """The highest id ever handed out (AUTOINCREMENT's counter), so ids keep growing
        after the table was emptied or the file reopened."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        top = self._db.execute("SELECT MAX(id) FROM messages").fetchone()[0]
        return max(int(row[0]) if row is not None else 0, int(top) if top is not None else 0)

    def _totals(self) -> tuple[int, int]:
        count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()
        return int(count), int(size)

    # -- writing --------------------------------------------------------------------

    def append_many(self, records: Sequence[Record]) -> AppendResult:
        """Store a batch in one transaction; when this returns, it is committed."""
        return self.commit(records, ())

    def ack(self, ids: Iterable[int]) -> int:
        """Forget acknowledged messages; unknown ids (already acked or dropped) are ignored."""
        return self.commit((), ids).acked

    def commit(
        self, records: Sequence[Record], ack_ids: Iterable[int], *, nowait: bool = False, sync: bool = True
    ) -> AppendResult:
        """Append `records` and remove `ack_ids` in one transaction (the writer's cycle),
        then enforce the age and size bounds. Returns the new ids and what was dropped.

        `nowait`: raise `OutboxBusy` at once instead of waiting up to the busy timeout
        when another connection holds the write lock (for a caller on the event loop).
        `sync=False` leaves the periodic checkpoint (`sync_due`/`sync`) to the caller, so
        that a commit never includes one (it syncs the disk)."""
        now_ms = int(self.clock() * 1000)
        acks = sorted(set(ack_ids))
        drops: list[DropEvent] = []
        with self._transaction(nowait=nowait) as db:
            first = self._next_id
            last = first + len(records) - 1
            if records:
                # explicit ids (this connection is the only writer): no read-back of the
                # counter per commit; AUTOINCREMENT still records the highest one
                rows = [
                    (i, r.stream, r.topic, r.payload, r.qos, int(r.retain), r.fmt, now_ms, _size(r))
                    for i, r in enumerate(records, first)
                ]
                db.executemany(
                    "INSERT INTO messages (id, stream, topic, payload, qos, retain, fmt, created_ms, size)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._count += len(records)
                self._bytes += sum(row[8] for row in rows)
            acked = self._delete(db, acks) if acks else (0, 0)
            drops.extend(self._enforce(db, now_ms))
            self.appended_total += len(records)
            self.acked_total += acked[0]
            for d in drops:
                self.dropped[d.reason] += d.count
        self._next_id = last + 1  # committed (a failed transaction raised above)
        if sync:
            self._maybe_sync()
        if self.on_drop is not None:
            for d in drops:
                self.on_drop(d)
        return AppendResult(ids=range(first, last + 1) if records else range(0), acked=acked[0], drops=tuple(drops))

    def _delete(self, db: sqlite3.Connection, ids: Sequence[int]) -> tuple[int, int]:
        """Delete acknowledged messages by id; returns (rows, bytes)."""
        n = size = 0
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            sizes = db.execute(
                f"DELETE FROM messages WHERE id IN ({marks}) RETURNING size", tuple(chunk)
            ).fetchall()
            n += len(sizes)
            size += sum(r[0] for r in sizes)
        self._count -= n
        self._bytes -= size
        return n, size

    def _enforce(self, db: sqlite3.Connection, now_ms: int) -> list[DropEvent]:
        drops: list[DropEvent] = []
        cutoff = now_ms - self.max_age_ms
        head = None
        if self._head_ms is None or self._head_ms < cutoff:
            # the oldest enqueue time only grows (acks and drops remove from the head end or
            # the middle), so a read is needed only when the last one read had expired
            head = db.execute("SELECT created_ms FROM messages ORDER BY id LIMIT 1").fetchone()
            self._head_ms = head[0] if head is not None else now_ms
        if head is not None and head[0] < cutoff:
            # enqueue times grow with id (one writer, one clock); a clock stepped back can
            # only delay an expiry, never expire something young
            row = db.execute(
                "SELECT id FROM messages WHERE created_ms >= ? ORDER BY id LIMIT 1", (cutoff,)
            ).fetchone()
            bound = row[0] if row is not None else None
            where, args = ("id < ?", (bound,)) if bound is not None else ("1", ())
            ev = self._drop_where(db, "max_age", where, args)
            if ev is not None:
                drops.append(ev)
        if self._bytes > self.max_bytes:
            drops.extend(self._shrink(db))
        return drops

    def _drop_where(
        self, db: sqlite3.Connection, reason: DropReason, where: str, args: tuple[object, ...]
    ) -> DropEvent | None:
        rows = db.execute(
            f"DELETE FROM messages WHERE {where} RETURNING stream, size, created_ms", args
        ).fetchall()
        return self._event(reason, rows)

    def _event(self, reason: DropReason, rows: list[tuple[str, int, int]]) -> DropEvent | None:
        if not rows:
            return None
        size = sum(r[1] for r in rows)
        self._count -= len(rows)
        self._bytes -= size
        per = Counter(r[0] for r in rows)
        created = [r[2] for r in rows]
        return DropEvent(reason, len(rows), size, dict(per), min(created), max(created))

    def _shrink(self, db: sqlite3.Connection) -> list[DropEvent]:
        """Drop by the stated policy until the stored bytes fit `max_bytes` again."""
        out: list[DropEvent] = []
        plans: list[tuple[DropReason, str]] = [
            (
                "superseded",
                "SELECT m.id, m.size FROM messages m WHERE m.retain = 1 AND EXISTS ("
                " SELECT 1 FROM messages n WHERE n.retain = 1 AND n.topic = m.topic AND n.id > m.id)"
                " ORDER BY m.id",
            ),
            ("max_bytes", "SELECT id, size FROM messages WHERE retain = 0 ORDER BY id"),
            ("max_bytes", "SELECT id, size FROM messages ORDER BY id"),
        ]
        for reason, query in plans:
            excess = self._bytes - self.max_bytes
            if excess <= 0:
                break
            victims: list[int] = []
            freed = 0
            for row_id, size in db.execute(query):  # bounded by the table; stops once enough is freed
                victims.append(row_id)
                freed += size
                if freed >= excess:
                    break
            rows: list[tuple[str, int, int]] = []
            for chunk in _chunks(victims):
                marks = ",".join("?" * len(chunk))
                rows += db.execute(
                    f"DELETE FROM messages WHERE id IN ({marks}) RETURNING stream, size, created_ms",
                    tuple(chunk),
                ).fetchall()
            ev = self._event(reason, rows)
            if ev is not None:
                out.append(ev)
        return _merge(out)

    def note_drop(self, reason: DropReason, count: int) -> None:
        """Count drops made outside the store (the writer's backlog) in the same stats."""
        with self._lock:
            self.dropped[reason] += count

    def sync_due(self) -> bool:
        """Whether a checkpoint is due: every `sync_interval_s` (fsync=batch: what a power
        cut can lose; the other policies: what keeps the WAL file small)."""
        return time.monotonic() - self._last_sync >= self.sync_interval_s

    def _maybe_sync(self) -> None:
        if self.sync_due():
            self.sync()

    def sync(self) -> None:
        """Checkpoint: make everything committed so far survive a power cut (fsync=batch;
        a passive checkpoint syncs the WAL first) and let the WAL start over. On its own
        connection, so it never blocks a commit. Cheap when nothing changed."""
        with self._sync_lock:
            self._last_sync = time.monotonic()
            try:
                if self._sync_db is None:
                    self._sync_db = sqlite3.connect(
                        self.path,
                        timeout=self._busy_timeout_ms / 1000,
                        isolation_level=None,
                        check_same_thread=False,
                    )
                    self._sync_db.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self.fsync]}")
                self._sync_db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                raise self._wrap(exc) from None

    def expire(self) -> list[DropEvent]:
        """Apply the age bound now (appends do it too); for an idle outbox's timer."""
        return list(self.commit((), ()).drops)

    # -- reading ---------------------------------------------------------------------

    def pending(self, limit: int, after_id: int | None = None, fmt: str | None = None) -> list[Stored]:
        """Up to `limit` unacknowledged messages in insertion order, after `after_id`;
        only those of format `fmt` when given (each output format replays on its own)."""
        where = "id > ?"
        args: list[object] = [after_id if after_id is not None else -1]
        if fmt is not None:
            where += " AND fmt = ?"
            args.append(fmt)
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT id, stream, topic, payload, qos, retain, fmt, created_ms FROM messages"
                    f" WHERE {where} ORDER BY id LIMIT ?",
                    (*args, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._wrap(exc) from None
        return [Stored(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5]), r[6], r[7]) for r in rows]

    def last_id(self) -> int:
        """The newest stored message's id (0 when empty): where a session's backlog ends."""
        with self._lock:
            try:
                row = self._db.execute("SELECT MAX(id) FROM messages").fetchone()
            except sqlite3.Error as exc:
                raise self._wrap(exc) from None
        return int(row[0]) if row[0] is not None else 0

    def __len__(self) -> int:
        return self._count

    @property
    def stored_bytes(self) -> int:
        return self._bytes

    def stats(self) -> OutboxStats:
        with self._lock:
            try:
                head = self._db.execute("SELECT created_ms FROM messages ORDER BY id LIMIT 1").fetchone()
            except sqlite3.Error as exc:
                raise self._wrap(exc) from None
        file_bytes = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                file_bytes += os.path.getsize(f"{self.path}{suffix}")
        return OutboxStats(
            messages=self._count,
            bytes=self._bytes,
            max_bytes=self.max_bytes,
            oldest_created_ms=head[0] if head else None,
            appended_total=self.appended_total,
            acked_total=self.acked_total,
            dropped_total=sum(self.dropped.values()),
            dropped_by_reason=dict(self.dropped),
            file_bytes=file_bytes,
        )

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._lockfd < 0:
                return
            try:
                with self._sync_lock:
                    if self._sync_db is not None:
                        self._sync_db.close()
                        self._sync_db = None
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._db.close()
            finally:
                os.close(self._lockfd)
                self._lockfd = -1

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _merge(events: list[DropEvent]) -> list[DropEvent]:
    """One event per reason (both size passes report as max_bytes)."""
    by: dict[str, DropEvent] = {}
    for e in events:
        prev = by.get(e.reason)
        if prev is None:
            by[e.reason] = e
            continue
        per = Counter(prev.by_stream)
        per.update(e.by_stream)
        olds = [x for x in (prev.oldest_created_ms, e.oldest_created_ms) if x is not None]
        news = [x for x in (prev.newest_created_ms, e.newest_created_ms) if x is not None]
        by[e.reason] = DropEvent(
            e.reason,
            prev.count + e.count,
            prev.bytes + e.bytes,
            dict(per),
            min(olds) if olds else None,
            max(news) if news else None,
        )
    return list(by.values())
