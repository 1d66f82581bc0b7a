"""Durable store-and-forward outbox: messages are kept on disk from before they are
published until the broker acknowledged them (see store.py for the guarantees and the
drop policy, writer.py for how the event loop uses it without waiting on the disk)."""

from cellctl.outbox.replay import AckTracker, Replay, uns_historical
from cellctl.outbox.store import (
    AppendResult,
    DropEvent,
    DropReason,
    Format,
    Fsync,
    Outbox,
    OutboxCorrupt,
    OutboxError,
    OutboxLocked,
    OutboxStats,
    Record,
    Stored,
)
from cellctl.outbox.writer import OutboxWriter

__all__ = [
    "AckTracker",
    "AppendResult",
    "DropEvent",
    "DropReason",
    "Format",
    "Fsync",
    "Outbox",
    "OutboxCorrupt",
    "OutboxError",
    "OutboxLocked",
    "OutboxStats",
    "OutboxWriter",
    "Record",
    "Replay",
    "Stored",
    "uns_historical",
]
