"""Request planning: which read requests cover a device's points. Pure, no I/O.

Per table, points are sorted by start address. Points that overlap (several points on
one register, a bit field inside an int32...) form runs that are moved whole, so the
requests of a table never overlap. Runs are then merged greedily: a run joins the
current request when at most `max_gap` unused addresses separate them and the merged
span stays within the table's limit (`max_registers`, `max_bits`). Greedy is optimal
here: no plan within the same rules has fewer requests. The one exception is a run of
overlapping points wider than the limit itself: it is cut, and those cuts overlap.

`barriers` (per table) are places a request must not span, learned from a device that
refuses reads across them: a barrier at `b` keeps addresses below `b` and from `b` on
in separate requests.

Planning happens when the config is checked, so a point that cannot fit in one request
is a config error (`PlanError`, a ValueError), never a poll-time surprise.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

Table = Literal["holding", "input", "coil", "discrete"]
RequestMode = Literal["merged", "per_point"]

TABLES: Final[tuple[Table, ...]] = ("holding", "input", "coil", "discrete")
BIT_TABLES: Final[frozenset[str]] = frozenset({"coil", "discrete"})
# Protocol limits: FC3/FC4 read at most 125 registers, FC1/FC2 at most 2000 bits.
MAX_REGISTERS: Final = 125
MAX_BITS: Final = 2000


class PlanError(ValueError):
    """A point that no request can hold under the device's limits."""


@dataclass(frozen=True, slots=True)
class PlanPoint:
    """What the planner needs of a point: where it lives and how wide it is."""

    index: int
    table: Table
    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: `count` registers (or bits) of `table` from `start`; `points` lists
    (point index, offset of the point's first register within this request)."""

    table: Table
    start: int
    count: int
    points: tuple[tuple[int, int], ...]

    @property
    def end(self) -> int:
        return self.start + self.count

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES


def limit_for(table: str, max_registers: int, max_bits: int) -> int:
    return max_bits if table in BIT_TABLES else max_registers


def plan(
    points: Iterable[PlanPoint],
    *,
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
    max_gap: int = 10,
    mode: RequestMode = "merged",
    barriers: Mapping[str, Collection[int]] | None = None,
) -> list[ReadRequest]:
    """Plan the read requests for `points`, ordered by table then start address."""
    if not 1 <= max_registers <= MAX_REGISTERS:
        raise PlanError(f"max_registers must be 1..{MAX_REGISTERS}, got {max_registers}")
    if not 1 <= max_bits <= MAX_BITS:
        raise PlanError(f"max_bits must be 1..{MAX_BITS}, got {max_bits}")
    if max_gap < 0:
        raise PlanError(f"max_gap must be >= 0, got {max_gap}")
    by_table: dict[str, list[PlanPoint]] = {t: [] for t in TABLES}
    for p in points:
        if p.table not in by_table:
            raise PlanError(f"point {p.index}: unknown table {p.table!r}")
        limit = limit_for(p.table, max_registers, max_bits)
        unit = "bits" if p.table in BIT_TABLES else "registers"
        if p.count < 1:
            raise PlanError(f"point {p.index}: needs at least one {unit[:-1]}")
        if p.count > limit:
            raise PlanError(
                f"point {p.index}: {p.table} {p.start}..{p.end - 1} spans {p.count} {unit}, "
                f"more than one request may read ({limit})"
            )
        if p.start < 0 or p.end > 65536:
            raise PlanError(f"point {p.index}: {p.table} {p.start}..{p.end - 1} is outside 0..65535")
        by_table[p.table].append(p)

    requests: list[ReadRequest] = []
    for table in TABLES:
        pts = sorted(by_table[table], key=lambda p: (p.start, p.end, p.index))
        if not pts:
            continue
        if mode == "per_point":
            requests.extend(ReadRequest(table, p.start, p.count, ((p.index, 0),)) for p in pts)
            continue
        limit = limit_for(table, max_registers, max_bits)
        bars = sorted((barriers or {}).get(table, ()))
        group: list[PlanPoint] = []
        start = end = 0
        for run in _units(pts, limit):
            r_start, r_end = run[0].start, max(p.end for p in run)
            if (
                group
                and r_start - end <= max_gap
                and max(end, r_end) - start <= limit
                and not any(end <= b <= r_start for b in bars)
            ):
                group.extend(run)
                end = max(end, r_end)
                continue
            if group:
                requests.append(_request(table, start, end, group))
            group, start, end = list(run), r_start, r_end
        requests.append(_request(table, start, end, group))
    return requests


def _units(pts: list[PlanPoint], limit: int) -> list[list[PlanPoint]]:
    """Split start-sorted points into the units the merge moves whole: runs of
    overlapping points (two requests sharing a run would overlap each other). A run
    wider than `limit` cannot be one request; it is cut greedily, and only those cuts
    overlap."""
    runs: list[list[PlanPoint]] = []
    run_end = -1
    for p in pts:
        if runs and p.start < run_end:
            runs[-1].append(p)
            run_end = max(run_end, p.end)
        else:
            runs.append([p])
            run_end = p.end
    units: list[list[PlanPoint]] = []
    for run in runs:
        if max(p.end for p in run) - run[0].start <= limit:
            units.append(run)
            continue
        cut = [run[0]]
        start, end = run[0].start, run[0].end
        for p in run[1:]:
            if max(end, p.end) - start <= limit:
                cut.append(p)
                end = max(end, p.end)
            else:
                units.append(cut)
                cut, start, end = [p], p.start, p.end
        units.append(cut)
    return units


def _request(table: Table, start: int, end: int, group: list[PlanPoint]) -> ReadRequest:
    return ReadRequest(table, start, end - start, tuple((p.index, p.start - start) for p in group))


def describe(requests: Iterable[ReadRequest]) -> list[str]:
    """Human lines for `cellctl check`: ``holding 0..39 (40 registers, 12 points)``."""
    lines = []
    for r in requests:
        unit = "bit" if r.is_bits else "register"
        n = len(r.points)
        lines.append(
            f"{r.table} {r.start}..{r.end - 1} ({r.count} {unit}{'s' if r.count != 1 else ''}, "
            f"{n} point{'s' if n != 1 else ''})"
        )
    return lines
