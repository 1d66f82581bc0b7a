"""Durable store-and-forward outbox: storage only. Messages are kept on disk from before
they are published until the broker acknowledged them (see store.py for the guarantees and
the drop policy, writer.py for how the event loop uses it without waiting on the disk).
It knows nothing of payload formats or MQTT: `Record.fmt` is an opaque channel name chosen
by the delivery that owns the message (cellctl/deliver/)."""

from cellctl.outbox.store import (
    AppendResult,
    DropEvent,
    DropReason,
    Fsync,
    Outbox,
    OutboxBusy,
    OutboxCorrupt,
    OutboxError,
    OutboxLocked,
    OutboxStats,
    Record,
    Stored,
)
from cellctl.outbox.writer import OutboxWriter

__all__ = [
    "AppendResult",
    "DropEvent",
    "DropReason",
    "Fsync",
    "Outbox",
    "OutboxBusy",
    "OutboxCorrupt",
    "OutboxError",
    "OutboxLocked",
    "OutboxStats",
    "OutboxWriter",
    "Record",
    "Stored",
]
