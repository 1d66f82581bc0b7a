"""Per-device figures the engine keeps for metrics: a poll latency histogram with fixed
buckets and a coarse kind for each failure reason. Updating them is an index and two
adds per poll; turning them into Prometheus text happens at scrape time
(cellctl/observe/metrics.py)."""

from __future__ import annotations

from bisect import bisect_left

# seconds; Prometheus' `le` upper bounds (a last, implicit +Inf bucket follows)
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class LatencyHistogram:
    """Counts per bucket (not cumulative) and the sum of observed seconds."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds


# (kind, words of a reason that mean it), checked in order
_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("internal", ("internal error",)),
    ("timeout", ("timed out", "timeout", "did not finish", "no response")),
    ("refused", ("refused",)),
    ("permission", ("permission denied",)),
    ("not_found", ("no such file", "not found", "no such device")),
    ("connection_lost", ("closed", "reset", "lost", "broken pipe", "ended", "disconnect", "eof")),
)


def reason_kind(reason: str) -> str:
    """A device failure reason (free text from a driver) as one of a few kinds, so a
    metric label has a bounded set of values: internal, timeout, refused, permission,
    not_found, connection_lost or other."""
    lowered = reason.lower()
    for kind, words in _KINDS:
        if any(w in lowered for w in words):
            return kind
    return "other"
