"""What a device cannot read, learned while polling.

Real devices have holes in their maps: a read that spans one unreadable address is
refused whole (exception 2, illegal data address; or 3, illegal data value, from
devices that check the quantity). When a planned read is refused so, the poller splits
it in halves until it knows which points cannot be read at all (they go bad, with the
device's reason, and are not asked for again) and between which points a read must
not reach across (a *barrier*); it then plans the rest again in the largest reads
those barriers allow. What was learned lasts for one connection: after a reconnect
the device is probed afresh (it may have been reconfigured).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

# Exception codes that are about *where* a request reads, not about the device's state.
UNREADABLE_CODES: Final = frozenset({2, 3})


@dataclass
class Learned:
    """Knowledge about one device's map, for the current connection."""

    unreadable: dict[int, str] = field(default_factory=dict)  # point position -> reason
    barriers: dict[str, set[int]] = field(default_factory=dict)  # table -> barrier addresses
    session: int = -1  # the link's connect count this knowledge belongs to

    def clear(self, session: int) -> None:
        self.unreadable.clear()
        self.barriers.clear()
        self.session = session

    @property
    def empty(self) -> bool:
        return not self.unreadable and not self.barriers

    def add_barrier(self, table: str, address: int) -> bool:
        """Remember a barrier; True if it is new."""
        have = self.barriers.setdefault(table, set())
        if address in have:
            return False
        have.add(address)
        return True


def ranges(addresses: Iterable[int]) -> str:
    """``16, 100..101``: sorted addresses with consecutive runs joined."""
    out: list[str] = []
    run: list[int] = []
    for a in sorted(set(addresses)):
        if run and a == run[-1] + 1:
            run.append(a)
            continue
        if run:
            out.append(_run(run))
        run = [a]
    if run:
        out.append(_run(run))
    return ", ".join(out)


def _run(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}..{run[-1]}"
