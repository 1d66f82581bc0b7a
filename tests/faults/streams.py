"""Accounting of what a subscriber received, per device, for the fault suite: lost,
duplicated and reordered UNS data messages by their per-device `seq`, and which of them
came back flagged historical. Shared by the scenarios of tests/faults/."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cellctl.testing import Message


@dataclass
class Stream:
    """One device's data messages as received (arrival order)."""

    device: str
    bodies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seqs(self) -> list[int]:
        return [int(b["seq"]) for b in self.bodies]

    @property
    def highest(self) -> int:
        return max(self.seqs, default=0)

    def lost(self, upto: int | None = None) -> list[int]:
        """Seqs from 1 to `upto` (default: the highest received) that never arrived."""
        top = self.highest if upto is None else upto
        return sorted(set(range(1, top + 1)) - set(self.seqs))

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in Counter(self.seqs).values() if n > 1)

    def reordered(self) -> int:
        """First arrivals older than one that arrived before them, counted within the
        history and within the live data (the two interleave by design after a reconnect)."""
        out = 0
        for historical in (True, False):
            seen: set[int] = set()
            top = 0
            for b in self.bodies:
                if bool(b.get("historical")) != historical or b["seq"] in seen:
                    continue
                seen.add(b["seq"])
                out += b["seq"] < top
                top = max(top, b["seq"])
        return out

    def historical(self) -> list[dict[str, Any]]:
        return [b for b in self.bodies if b.get("historical")]

    def live_highest(self) -> int:
        return max((int(b["seq"]) for b in self.bodies if not b.get("historical")), default=0)


def streams(msgs: list[Message]) -> dict[str, Stream]:
    """Data messages (`<root>/<device>/data`) by device, in arrival order."""
    out: dict[str, Stream] = {}
    for m in msgs:
        if m.topic.endswith("/data"):
            dev = m.topic.split("/")[-2]
            out.setdefault(dev, Stream(dev)).bodies.append(m.json())
    return out
