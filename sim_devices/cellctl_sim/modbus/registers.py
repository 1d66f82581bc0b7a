"""Register maps and the wire codec of the simulated devices.

The codec is deliberately built on `struct` alone and shares nothing with cellctl's own
Modbus codec: the simulator is the independent reference that catches decoding bugs in
the driver, so a shared helper would hide exactly the bugs it is meant to find.

Order names describe two independent properties:

* word order: ABCD/BADC put the high word first, CDAB/DCBA the low word first
  (for 64-bit values low-first reverses all four words);
* byte order inside each 16-bit word: ABCD/CDAB big-endian, BADC/DCBA swapped.

16-bit types honour only the byte order. Strings put the first character of each
register in the high byte for ABCD/CDAB and in the low byte for BADC/DCBA.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

Value = int | float | str | bool


class Table(StrEnum):
    """The four Modbus data tables."""

    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)


class WireType(StrEnum):
    """How a point is laid out in its table."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BIT = "bit"  # one bit of a 16-bit register
    STRING = "string"
    BOOL = "bool"  # a coil or a discrete input

    @property
    def value_type(self) -> str:
        """The profile's value type for this wire type (what consumers see)."""
        if self in (WireType.FLOAT32, WireType.FLOAT64):
            return "float"
        if self in (WireType.BIT, WireType.BOOL):
            return "bool"
        if self is WireType.STRING:
            return "string"
        return "int"


class Order(StrEnum):
    """Word and byte order of a multi-byte value; see the module docstring."""

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"

    @property
    def low_word_first(self) -> bool:
        return self in (Order.CDAB, Order.DCBA)

    @property
    def swap_bytes(self) -> bool:
        return self in (Order.BADC, Order.DCBA)


# struct format and register count of the fixed-width numeric types
_NUMERIC: dict[WireType, tuple[str, int]] = {
    WireType.INT16: ("h", 1),
    WireType.UINT16: ("H", 1),
    WireType.INT32: ("i", 2),
    WireType.UINT32: ("I", 2),
    WireType.INT64: ("q", 4),
    WireType.UINT64: ("Q", 4),
    WireType.FLOAT32: ("f", 2),
    WireType.FLOAT64: ("d", 4),
}

INT_LIMITS: dict[WireType, tuple[int, int]] = {
    WireType.INT16: (-(2**15), 2**15 - 1),
    WireType.UINT16: (0, 2**16 - 1),
    WireType.INT32: (-(2**31), 2**31 - 1),
    WireType.UINT32: (0, 2**32 - 1),
    WireType.INT64: (-(2**63), 2**63 - 1),
    WireType.UINT64: (0, 2**64 - 1),
}
FLOAT32_MAX = struct.unpack(">f", b"\x7f\x7f\xff\xff")[0]


@dataclass(frozen=True, slots=True)
class Point:
    """One named point of a register map.

    `start` is zero-based; `bit` (0 = LSB) only for BIT points; `length` is in
    registers and only for STRING points. `evolves` is a one-line description of how
    the simulator changes the value, kept beside the address so the map documents itself.
    """

    name: str
    table: Table
    start: int
    type: WireType
    order: Order = Order.ABCD
    bit: int | None = None
    length: int | None = None
    writable: bool = False
    unit: str | None = None
    evolves: str = ""

    def __post_init__(self) -> None:
        if self.table.is_bits != (self.type is WireType.BOOL):
            raise ValueError(f"{self.name}: bool points live in coils/discrete inputs, others in registers")
        if (self.type is WireType.BIT) != (self.bit is not None):
            raise ValueError(f"{self.name}: 'bit' is for bit points only, and they need it")
        if self.bit is not None and not 0 <= self.bit <= 15:
            raise ValueError(f"{self.name}: bit {self.bit} is outside 0..15")
        if (self.type is WireType.STRING) != (self.length is not None):
            raise ValueError(f"{self.name}: 'length' is for string points only, and they need it")
        if self.length is not None and self.length < 1:
            raise ValueError(f"{self.name}: string length must be at least one register")
        if self.start < 0 or self.end > 0x10000:
            raise ValueError(f"{self.name}: address out of range")
        if self.writable and self.table in (Table.DISCRETE, Table.INPUT):
            raise ValueError(f"{self.name}: the {self.table} table is read-only in Modbus")

    @property
    def width(self) -> int:
        """Registers (or bits, in coil/discrete tables) the point occupies."""
        if self.type in _NUMERIC:
            return _NUMERIC[self.type][1]
        if self.type is WireType.STRING:
            assert self.length is not None
            return self.length
        return 1

    @property
    def end(self) -> int:
        """One past the last address the point occupies."""
        return self.start + self.width

    @property
    def wire_bit(self) -> int:
        """The bit as stored in the raw register (byte-swapped orders move it by 8)."""
        assert self.bit is not None
        return self.bit ^ 8 if self.order.swap_bytes else self.bit

    def address_block(self) -> dict[str, object]:
        """The point's address in the profile schema (`address:` of a profile point)."""
        block: dict[str, object] = {"table": self.table.value, "start": self.start}
        if self.type is not WireType.BOOL:
            block["type"] = self.type.value
        if self.type is WireType.BIT:
            block["bit"] = self.bit
        if self.type is WireType.STRING:
            block["length"] = self.length
        if self.order is not Order.ABCD:
            block["order"] = self.order.value
        return block


def _swap(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def _bytes_to_words(data: bytes, order: Order) -> list[int]:
    words = [(data[i] << 8) | data[i + 1] for i in range(0, len(data), 2)]
    if order.low_word_first:
        words.reverse()
    if order.swap_bytes:
        words = [_swap(w) for w in words]
    return words


def _words_to_bytes(words: Sequence[int], order: Order) -> bytes:
    ws = list(words)
    if order.swap_bytes:
        ws = [_swap(w) for w in ws]
    if order.low_word_first:
        ws.reverse()
    return b"".join(w.to_bytes(2, "big") for w in ws)


def encode(point: Point, value: Value) -> list[int]:
    """Registers for a numeric or string point's value, in the point's order."""
    if point.type in _NUMERIC:
        fmt, _ = _NUMERIC[point.type]
        if point.type in INT_LIMITS and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{point.name}: {point.type} needs an int, got {value!r}")
        if isinstance(value, str):
            raise TypeError(f"{point.name}: {point.type} needs a number, got {value!r}")
        order = point.order
        if point.width == 1:  # 16-bit types honour only the byte order
            order = Order.BADC if order.swap_bytes else Order.ABCD
        return _bytes_to_words(struct.pack(">" + fmt, value), order)
    if point.type is WireType.STRING:
        if not isinstance(value, str):
            raise TypeError(f"{point.name}: string needs a str, got {value!r}")
        assert point.length is not None
        data = value.encode("ascii")[: 2 * point.length].ljust(2 * point.length, b"\0")
        # strings have no word order: only the byte position of the first character
        return _bytes_to_words(data, Order.BADC if point.order.swap_bytes else Order.ABCD)
    raise TypeError(f"{point.name}: {point.type} points are not encoded as whole registers")


def decode(point: Point, words: Sequence[int]) -> Value:
    """The value a point's registers hold: the inverse of `encode`.

    Used for what clients write; the reference decoding in the tests is separate.
    """
    if len(words) != point.width:
        raise ValueError(f"{point.name}: needs {point.width} registers, got {len(words)}")
    if point.type in _NUMERIC:
        fmt, _ = _NUMERIC[point.type]
        order = point.order
        if point.width == 1:
            order = Order.BADC if order.swap_bytes else Order.ABCD
        value: int | float = struct.unpack(">" + fmt, _words_to_bytes(words, order))[0]
        return value
    if point.type is WireType.STRING:
        data = _words_to_bytes(words, Order.BADC if point.order.swap_bytes else Order.ABCD)
        return data.rstrip(b"\0").decode("latin-1")
    raise TypeError(f"{point.name}: {point.type} points are not decoded from whole registers")


def canonical(point: Point, value: Value) -> Value:
    """The value exactly as a correct client will decode it from the wire.

    float32 values lose precision, strings are cut to the register space and lose
    trailing NULs; the simulator reports this form so tests can compare with `==`.
    """
    if point.type in (WireType.BIT, WireType.BOOL):
        return bool(value)
    if point.type is WireType.FLOAT32:
        f = float(value)
        if math.isfinite(f) and abs(f) > FLOAT32_MAX:
            raise OverflowError(f"{point.name}: {f} does not fit a float32")
        return float(struct.unpack(">f", struct.pack(">f", f))[0])
    if point.type is WireType.FLOAT64:
        return float(value)
    if point.type is WireType.STRING:
        assert point.length is not None
        text = str(value)
        text.encode("ascii")  # raises for anything a 1-byte-per-char string cannot carry
        return text[: 2 * point.length].rstrip("\0")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{point.name}: {point.type} needs an int, got {value!r}")
    lo, hi = INT_LIMITS[point.type]
    if not lo <= value <= hi:
        raise OverflowError(f"{point.name}: {value} is outside {point.type} ({lo}..{hi})")
    return value


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A device type's points, checked once: no two points share an address, except
    bit points, which may share a register with each other and with one whole-register
    point that carries the same word (a status word and its named bits)."""

    points: tuple[Point, ...]

    def __post_init__(self) -> None:
        names: set[str] = set()
        owner: dict[tuple[Table, int], Point] = {}
        for p in self.points:
            if p.name in names:
                raise ValueError(f"duplicate point {p.name!r}")
            names.add(p.name)
            if p.type is WireType.BIT:
                continue
            for addr in range(p.start, p.end):
                if (p.table, addr) in owner:
                    raise ValueError(f"{p.name} overlaps {owner[(p.table, addr)].name} at {p.table} {addr}")
                owner[(p.table, addr)] = p
        for p in self.points:
            other = owner.get((p.table, p.start))
            if p.type is WireType.BIT and other is not None and other.type not in (WireType.UINT16, WireType.INT16):
                raise ValueError(f"bit point {p.name} shares a register with {other.name}, which is not a word")

    def __iter__(self) -> Iterator[Point]:
        return iter(self.points)

    def get(self, name: str) -> Point:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)

    def size(self, table: Table) -> int:
        """Addresses 0..size-1 of the table answer; anything beyond is an illegal address."""
        return max((p.end for p in self.points if p.table is table), default=0)

    def writable_addresses(self, table: Table) -> frozenset[int]:
        return frozenset(a for p in self.points if p.table is table and p.writable for a in range(p.start, p.end))

    def overlapping(self, table: Table, start: int, count: int) -> list[Point]:
        """Points touched by an access to `count` addresses from `start`."""
        return [p for p in self.points if p.table is table and p.start < start + count and start < p.end]


class RegisterImage:
    """The four tables of one unit as plain Python lists: what the wire sees.

    Gaps between points read as zero; addresses past the last point are illegal.
    """

    __slots__ = ("coil", "discrete", "holding", "input")

    def __init__(self, register_map: RegisterMap) -> None:
        self.holding: list[int] = [0] * register_map.size(Table.HOLDING)
        self.input: list[int] = [0] * register_map.size(Table.INPUT)
        self.coil: list[bool] = [False] * register_map.size(Table.COIL)
        self.discrete: list[bool] = [False] * register_map.size(Table.DISCRETE)

    def table(self, table: Table) -> list[int] | list[bool]:
        if table is Table.HOLDING:
            return self.holding
        if table is Table.INPUT:
            return self.input
        if table is Table.COIL:
            return self.coil
        return self.discrete

    def put(self, point: Point, value: Value) -> None:
        """Write one point's (canonical) value into its table."""
        if point.type is WireType.BOOL:
            bits = self.coil if point.table is Table.COIL else self.discrete
            bits[point.start] = bool(value)
            return
        regs = self.holding if point.table is Table.HOLDING else self.input
        if point.type is WireType.BIT:
            mask = 1 << point.wire_bit
            regs[point.start] = (regs[point.start] | mask) if value else (regs[point.start] & ~mask)
            return
        regs[point.start : point.end] = encode(point, value)

    def get(self, point: Point) -> Value:
        """Read one point back from its table (the sim's own decoding)."""
        if point.type is WireType.BOOL:
            bits = self.coil if point.table is Table.COIL else self.discrete
            return bits[point.start]
        regs = self.holding if point.table is Table.HOLDING else self.input
        if point.type is WireType.BIT:
            return bool(regs[point.start] >> point.wire_bit & 1)
        return decode(point, regs[point.start : point.end])
