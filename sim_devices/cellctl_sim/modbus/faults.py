"""Fault switches: what a misbehaving device or gateway does to requests.

A `Faults` object exists for the whole server and one for each unit; the server applies
both (latencies add up, either can silence or raise). They are plain mutable state
checked on every request, so tests flip them at any moment and the next request obeys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cellctl_sim.modbus.registers import Table

# Modbus exception codes (function code | 0x80 on the wire, then this byte)
ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_VALUE = 0x03
DEVICE_FAILURE = 0x04
ACKNOWLEDGE = 0x05
DEVICE_BUSY = 0x06
GATEWAY_PATH_UNAVAILABLE = 0x0A
GATEWAY_NO_RESPONSE = 0x0B

Access = tuple[Table, int, int]  # table, first address, count


@dataclass(frozen=True, slots=True)
class ExceptionRule:
    """Answer matching requests with exception `code` instead of data.

    `table` None matches every table; `start`/`end` (inclusive) None match every
    address. A rule with neither matches every request, whatever its function code.
    A rule with `once` is removed after its first match: a transient error.
    """

    code: int
    table: Table | None = None
    start: int | None = None
    end: int | None = None
    once: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.code <= 0xFF:
            raise ValueError(f"exception code {self.code} does not fit a byte (1..255)")
        lo, hi = self.bounds
        if not 0 <= lo <= hi <= 0xFFFF:
            raise ValueError(f"address range {lo}..{hi} is not within 0..65535")

    @property
    def bounds(self) -> tuple[int, int]:
        return (0 if self.start is None else self.start, 0xFFFF if self.end is None else self.end)

    @property
    def matches_everything(self) -> bool:
        return self.table is None and self.start is None and self.end is None

    def matches(self, accesses: list[Access]) -> bool:
        if self.matches_everything:
            return True
        lo, hi = self.bounds
        return any(
            (self.table is None or self.table is table) and address <= hi and lo < address + max(count, 1)
            for table, address, count in accesses
        )


@dataclass
class Faults:
    """The fault switches of one unit, or of the whole server."""

    latency: float = 0.0
    silent: bool = False
    stalled: bool = False  # requests are held (in flight, unanswered) until released
    exceptions: list[ExceptionRule] = field(default_factory=list)
    # Acknowledge writes without keeping them, as a PLC whose program overwrites the
    # register at once (a client's read-back sees the old value).
    ignore_writes: bool = False

    def clear(self) -> None:
        self.latency = 0.0
        self.silent = False
        self.stalled = False
        self.exceptions.clear()
        self.ignore_writes = False

    @property
    def active(self) -> bool:
        return bool(self.latency or self.silent or self.stalled or self.exceptions or self.ignore_writes)

    def exception_for(self, accesses: list[Access]) -> int | None:
        for rule in self.exceptions:
            if rule.matches(accesses):
                if rule.once:
                    self.exceptions.remove(rule)
                return rule.code
        return None
