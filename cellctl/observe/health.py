"""The health answer: what is wrong right now, in words (broker down, device N down,
outbox filling), with the figures behind it."""

from __future__ import annotations

from typing import Any

from cellctl.observe.figures import Figures


def problems(f: Figures, *, outbox_filling: float) -> list[str]:
    found: list[str] = []
    for s in f.live.sessions:
        if not s.connected:
            why = f": {s.last_error}" if s.last_error else ""
            found.append(f"broker down: {s.fmt} session not connected to {s.host}:{s.port}{why}")
    for d in f.live.devices:
        if not d.available:
            found.append(f"device {d.id!r} down: {d.reason or 'unknown reason'}")
        elif d.degraded:
            found.append(f"device {d.id!r} degraded: {d.degraded}")
    o = f.outbox
    if f.outbox_error is not None:
        found.append(f"outbox unreadable: {f.outbox_error}")
    elif o is not None and o.bytes > outbox_filling * o.max_bytes:
        found.append(
            f"outbox filling: {o.bytes} of {o.max_bytes} bytes ({100 * o.bytes / o.max_bytes:.0f}%),"
            f" {o.messages} messages waiting; past max_bytes the oldest are dropped"
        )
    return found


def health(f: Figures, *, outbox_filling: float) -> dict[str, Any]:
    """The JSON body of /health: `status` "ok" with no problems, else "degraded"."""
    found = problems(f, outbox_filling=outbox_filling)
    o = f.outbox
    outbox: dict[str, Any] | None = None
    if o is not None:
        outbox = {
            "messages": o.messages,
            "bytes": o.bytes,
            "max_bytes": o.max_bytes,
            "oldest_age_s": round(max(0.0, f.taken_at - o.oldest_created_ms / 1000), 3)
            if o.oldest_created_ms
            else None,
            "dropped_by_reason": o.dropped_by_reason,
        }
    return {
        "status": "degraded" if found else "ok",
        "problems": found,
        "version": f.version,
        "broker": {
            s.fmt: {"connected": s.connected, "host": s.host, "port": s.port, "last_error": s.last_error}
            for s in f.live.sessions
        },
        "devices": {
            d.id: {"available": d.available, "reason": d.reason, "degraded": d.degraded}
            for d in f.live.devices
        },
        "outbox": outbox,
        "recent_starts": f.recent_starts,
    }
