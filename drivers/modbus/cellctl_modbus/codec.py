"""Register <-> value conversion: pure functions, and the per-value hot path of a poll.

Wire types
    ``bool``      one coil / discrete input (bit tables only)
    ``bit``       one bit of a 16-bit register, ``bit`` 0..15, 0 = least significant
    ``int16 uint16 int32 uint32 int64 uint64 float32 float64``
    ``string``    ``length`` registers, two bytes each, UTF-8 (ASCII is a subset);
                  decoding cuts at the first NUL and strips trailing spaces.

Orders are two independent properties:

====== ================== ====================
order  word order          byte order in a word
====== ================== ====================
ABCD   high word first     big endian (default)
CDAB   low word first      big endian
BADC   high word first     little endian
DCBA   low word first      little endian
====== ================== ====================

For 64-bit types "low word first" reverses all four words. 16-bit types (and ``bit``)
honour only the byte order: BADC and DCBA swap the two bytes of the register first (so a
``bit`` number always counts in the value, not on the wire). Strings honour only the
byte order too: a string is a sequence of characters, not a number, so there is no word
order to apply.

Floats: NaN and infinities decode as-is; deciding what they mean is the engine's job.

Decoders are built once per point by `make_decoder` with their `struct` formats and
word positions resolved up front, so decoding one value is a couple of C calls.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, get_args

from cellctl.driver import float32_shortest

WireType = Literal[
    "bool", "bit", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
Order = Literal["ABCD", "CDAB", "BADC", "DCBA"]

WIRE_TYPES: Final[tuple[str, ...]] = get_args(WireType)
ORDERS: Final[tuple[str, ...]] = get_args(Order)

Decoder = Callable[[Sequence[Any], int], Any]
"""``decoder(block, offset) -> value``: decode one value from a response block (registers,
or bools for bit tables) starting at `offset`."""

# order -> (high word first, big-endian bytes)
_ORDER: Final[dict[str, tuple[bool, bool]]] = {
    "ABCD": (True, True),
    "CDAB": (False, True),
    "BADC": (True, False),
    "DCBA": (False, False),
}

# wire type -> (struct format of the value, register count)
_NUMERIC: Final[dict[str, tuple[str, int]]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float32": ("f", 2),
    "float64": ("d", 4),
}

_INT_RANGE: Final[dict[str, tuple[int, int]]] = {
    "int16": (-(1 << 15), (1 << 15) - 1),
    "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "uint32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint64": (0, (1 << 64) - 1),
}

STRING_ENCODING: Final = "utf-8"
MAX_STRING_REGISTERS: Final = 125  # one read request


def register_count(wire_type: str, length: int | None = None) -> int:
    """Registers (or bits, for ``bool``) one value of `wire_type` occupies."""
    if wire_type in ("bool", "bit"):
        return 1
    if wire_type == "string":
        if length is None or length < 1:
            raise ValueError("a string needs a length of at least 1 register")
        return length
    try:
        return _NUMERIC[wire_type][1]
    except KeyError:
        raise ValueError(
            f"unknown wire type {wire_type!r}; expected one of {', '.join(WIRE_TYPES)}"
        ) from None


def _order(order: str) -> tuple[bool, bool]:
    try:
        return _ORDER[order]
    except KeyError:
        raise ValueError(f"unknown order {order!r}; expected one of {', '.join(ORDERS)}") from None


def _check_bit(bit: int | None) -> int:
    if bit is None or not 0 <= bit <= 15:
        raise ValueError(f"a bit type needs 'bit' in 0..15, got {bit!r}")
    return bit


def _decode_bool(block: Sequence[Any], offset: int) -> bool:
    return bool(block[offset])


def _decode_uint16(block: Sequence[Any], offset: int) -> int:
    v: int = block[offset]
    return v


def _decode_uint16_swapped(block: Sequence[Any], offset: int) -> int:
    v: int = block[offset]
    return ((v & 0xFF) << 8) | ((v >> 8) & 0xFF)


def _decode_int16(block: Sequence[Any], offset: int) -> int:
    v: int = block[offset]
    return v - 0x10000 if v & 0x8000 else v


def _decode_int16_swapped(block: Sequence[Any], offset: int) -> int:
    v: int = block[offset]
    v = ((v & 0xFF) << 8) | ((v >> 8) & 0xFF)
    return v - 0x10000 if v & 0x8000 else v


def _string_decoder(length: int, big: bool) -> Decoder:
    pack = struct.Struct(("<" if not big else ">") + "H" * length).pack

    def decode(block: Sequence[Any], offset: int) -> str:
        raw = pack(*block[offset : offset + length])
        nul = raw.find(0)
        if nul >= 0:
            raw = raw[:nul]
        return raw.decode(STRING_ENCODING).rstrip(" ")

    return decode


def make_decoder(
    wire_type: str, order: str = "ABCD", bit: int | None = None, length: int | None = None
) -> Decoder:
    """Build the decoder for one point; raises ValueError for an invalid combination."""
    high_first, big = _order(order)
    if wire_type == "bool":
        return _decode_bool
    if wire_type == "bit":
        # A byte swap moves value bit b to wire bit b ^ 8.
        shift = _check_bit(bit) if big else _check_bit(bit) ^ 8

        def decode_bit(block: Sequence[Any], offset: int) -> bool:
            return bool((block[offset] >> shift) & 1)

        return decode_bit
    if wire_type == "string":
        return _string_decoder(register_count("string", length), big)
    fmt, n = _NUMERIC.get(wire_type, ("", 0))
    if not n:
        register_count(wire_type)  # raises the unknown-type error
    if n == 1:
        # Plain arithmetic beats a struct round trip for one register (~2x).
        if wire_type == "uint16":
            return _decode_uint16 if big else _decode_uint16_swapped
        return _decode_int16 if big else _decode_int16_swapped
    pack = struct.Struct((">" if big else "<") + "H" * n).pack
    unpack = struct.Struct(">" + fmt).unpack
    if wire_type == "float32":
        return _float32_decoder(pack, unpack, high_first)
    if n == 2:
        if high_first:

            def decode2(block: Sequence[Any], offset: int) -> Any:
                return unpack(pack(block[offset], block[offset + 1]))[0]

            return decode2

        def decode2_low(block: Sequence[Any], offset: int) -> Any:
            return unpack(pack(block[offset + 1], block[offset]))[0]

        return decode2_low
    if high_first:

        def decode4(block: Sequence[Any], offset: int) -> Any:
            return unpack(pack(block[offset], block[offset + 1], block[offset + 2], block[offset + 3]))[0]

        return decode4

    def decode4_low(block: Sequence[Any], offset: int) -> Any:
        return unpack(pack(block[offset + 3], block[offset + 2], block[offset + 1], block[offset]))[0]

    return decode4_low


def _float32_decoder(
    pack: Callable[..., bytes], unpack: Callable[[bytes], tuple[Any, ...]], high_first: bool
) -> Decoder:
    """float32 as the device means it: the shortest decimal that is the same float32
    (123.456, not 123.45600128173828)."""
    if high_first:

        def decode_f32(block: Sequence[Any], offset: int) -> Any:
            return float32_shortest(unpack(pack(block[offset], block[offset + 1]))[0])

        return decode_f32

    def decode_f32_low(block: Sequence[Any], offset: int) -> Any:
        return float32_shortest(unpack(pack(block[offset + 1], block[offset]))[0])

    return decode_f32_low


def decode(
    registers: Sequence[Any],
    wire_type: str,
    order: str = "ABCD",
    *,
    bit: int | None = None,
    length: int | None = None,
    offset: int = 0,
) -> Any:
    """Decode one value (convenience; the poller keeps decoders from `make_decoder`)."""
    need = register_count(wire_type, length)
    if len(registers) - offset < need:
        raise ValueError(f"{wire_type} needs {need} register(s) at offset {offset}, got {len(registers)}")
    return make_decoder(wire_type, order, bit=bit, length=length)(registers, offset)


def _as_int(value: Any, wire_type: str) -> int:
    if isinstance(value, int):  # bool included: True is 1
        v = int(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value} as {wire_type}")
        v = round(value)
        if not math.isclose(value, v, rel_tol=1e-9, abs_tol=1e-9):
            raise ValueError(f"{value} is not a whole number; {wire_type} holds integers only")
    else:  # ValueError, not TypeError: the engine reports every bad write value alike
        raise ValueError(f"cannot write {type(value).__name__} {value!r} as {wire_type}")  # noqa: TRY004
    lo, hi = _INT_RANGE[wire_type]
    if not lo <= v <= hi:
        raise ValueError(f"{v} is out of range for {wire_type} ({lo}..{hi})")
    return v


def _swap16(v: int) -> int:
    return ((v & 0xFF) << 8) | (v >> 8)


def encode(
    value: Any, wire_type: str, order: str = "ABCD", *, bit: int | None = None, length: int | None = None
) -> list[int]:
    """Encode a value into the registers to write (``[0|1]`` for ``bool``).

    Raises ValueError, naming the limit, for a value the wire type cannot hold. For
    ``bit`` the result is a register with only that bit set (or none); `merge_bit` sets
    one bit in a register read from the device.
    """
    high_first, big = _order(order)
    if wire_type == "bool":
        if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
            return [int(bool(value))]
        raise ValueError(f"a bool point takes true/false (or 0/1), got {value!r}")
    if wire_type == "bit":
        if not (isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1))):
            raise ValueError(f"a bit point takes true/false (or 0/1), got {value!r}")
        return [merge_bit(0, _check_bit(bit), bool(value), order)]
    if wire_type == "string":
        n = register_count("string", length)
        if not isinstance(value, str):
            raise ValueError(f"a string point takes a string, got {type(value).__name__}")
        raw = value.encode(STRING_ENCODING)
        if len(raw) > 2 * n:
            raise ValueError(f"string of {len(raw)} bytes does not fit {n} registers ({2 * n} bytes)")
        raw = raw.ljust(2 * n, b"\0")
        return list(struct.unpack(("<" if not big else ">") + "H" * n, raw))
    fmt, n = _NUMERIC.get(wire_type, ("", 0))
    if not n:
        register_count(wire_type)  # raises the unknown-type error
    if fmt in ("f", "d"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"cannot write {type(value).__name__} {value!r} as {wire_type}")
        try:
            raw = struct.pack(">" + fmt, float(value))
        except (OverflowError, struct.error):
            raise ValueError(f"{value} is out of range for {wire_type}") from None
    else:
        raw = struct.pack(">" + fmt, _as_int(value, wire_type))
    words = list(struct.unpack(">" + "H" * n, raw))
    if not high_first:
        words.reverse()
    if not big:
        words = [_swap16(w) for w in words]
    return words


def merge_bit(register: int, bit: int, value: bool, order: str = "ABCD") -> int:
    """`register` (as read from the device) with value bit `bit` set to `value`."""
    _, big = _order(order)
    shift = _check_bit(bit) if big else _check_bit(bit) ^ 8
    return (register | (1 << shift)) if value else (register & ~(1 << shift) & 0xFFFF)
