"""Codec: known vectors, round trips and an independent reference for every type x order."""

from __future__ import annotations

import math
import struct
from decimal import Decimal
from typing import Any

import pytest
from cellctl_modbus.codec import ORDERS, decode, encode, make_decoder, merge_bit, register_count
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin

NUMERIC = ("int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64")
FMT = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}
DT = ModbusClientMixin.DATATYPE
PYMODBUS_TYPE = {
    "int16": DT.INT16,
    "uint16": DT.UINT16,
    "int32": DT.INT32,
    "uint32": DT.UINT32,
    "int64": DT.INT64,
    "uint64": DT.UINT64,
    "float32": DT.FLOAT32,
    "float64": DT.FLOAT64,
}

register = st.integers(0, 0xFFFF)
orders = st.sampled_from(ORDERS)


def registers(n: int) -> st.SearchStrategy[list[int]]:
    return st.lists(register, min_size=n, max_size=n)


def same(a: Any, b: Any, wire: str = "") -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if wire == "float32" and isinstance(a, float) and isinstance(b, float):
        # decoded as the shortest decimal of the same float32 (123.456, not 123.45600128...)
        return struct.pack("<f", a) == struct.pack("<f", b)
    return bool(a == b) and type(a) is type(b)


# -- the order definition, spelled out -------------------------------------------------

# int32 0x01020304 = bytes A=01 B=02 C=03 D=04; float32 1.0 = 3F 80 00 00
VECTORS = [
    ("int32", 0x01020304, "ABCD", [0x0102, 0x0304]),
    ("int32", 0x01020304, "CDAB", [0x0304, 0x0102]),
    ("int32", 0x01020304, "BADC", [0x0201, 0x0403]),
    ("int32", 0x01020304, "DCBA", [0x0403, 0x0201]),
    ("float32", 1.0, "ABCD", [0x3F80, 0x0000]),
    ("float32", 1.0, "CDAB", [0x0000, 0x3F80]),
    ("float32", 1.0, "BADC", [0x803F, 0x0000]),
    ("float32", 1.0, "DCBA", [0x0000, 0x803F]),
    ("int64", 0x0102030405060708, "ABCD", [0x0102, 0x0304, 0x0506, 0x0708]),
    ("int64", 0x0102030405060708, "CDAB", [0x0708, 0x0506, 0x0304, 0x0102]),
    ("int64", 0x0102030405060708, "BADC", [0x0201, 0x0403, 0x0605, 0x0807]),
    ("int64", 0x0102030405060708, "DCBA", [0x0807, 0x0605, 0x0403, 0x0201]),
    ("int16", -2, "ABCD", [0xFFFE]),
    ("int16", -2, "CDAB", [0xFFFE]),  # 16-bit types ignore the word order
    ("int16", -2, "BADC", [0xFEFF]),
    ("uint16", 0x1234, "DCBA", [0x3412]),
    ("float64", -2.5, "ABCD", [0xC004, 0, 0, 0]),
    ("uint32", 0xFFFFFFFF, "CDAB", [0xFFFF, 0xFFFF]),
]


@pytest.mark.parametrize(("wire", "value", "order", "regs"), VECTORS)
def test_known_vectors(wire: str, value: Any, order: str, regs: list[int]) -> None:
    assert encode(value, wire, order) == regs
    assert same(decode(regs, wire, order), value)


def test_decode_at_offset_in_a_block() -> None:
    block = [0xAAAA, 0x0102, 0x0304, 0xBBBB]
    dec = make_decoder("uint32", "ABCD")
    assert dec(block, 1) == 0x01020304
    assert decode(block, "uint32", offset=1) == 0x01020304


def test_register_count() -> None:
    assert [register_count(t) for t in ("bool", "bit", *NUMERIC)] == [1, 1, 1, 1, 2, 2, 4, 4, 2, 4]
    assert register_count("string", 7) == 7
    with pytest.raises(ValueError, match="length"):
        register_count("string")
    with pytest.raises(ValueError, match="unknown wire type"):
        register_count("int24")


# -- round trips ------------------------------------------------------------------------


def values_for(wire: str) -> st.SearchStrategy[Any]:
    if wire.startswith("float"):
        return st.floats(width=32 if wire == "float32" else 64, allow_nan=True, allow_infinity=True)
    bits = int(wire.removeprefix("u").removeprefix("int"))
    if wire.startswith("u"):
        return st.integers(0, (1 << bits) - 1)
    return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


@pytest.mark.parametrize("wire", NUMERIC)
@given(data=st.data(), order=orders)
def test_numeric_value_round_trip(wire: str, data: st.DataObject, order: str) -> None:
    value = data.draw(values_for(wire))
    regs = encode(value, wire, order)
    assert len(regs) == register_count(wire)
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert same(make_decoder(wire, order)(regs, 0), value, wire)


@pytest.mark.parametrize("wire", NUMERIC)
@given(data=st.data(), order=orders)
def test_numeric_register_round_trip(wire: str, data: st.DataObject, order: str) -> None:
    regs = data.draw(registers(register_count(wire)))
    value = decode(regs, wire, order)
    if isinstance(value, float) and math.isnan(value):
        return  # a NaN's payload need not survive a float32 -> double -> float32 trip
    assert encode(value, wire, order) == regs


@given(order=orders, bit=st.integers(0, 15), value=st.booleans(), base=register)
def test_bit_round_trip(order: str, bit: int, value: bool, base: int) -> None:
    (reg,) = encode(value, "bit", order, bit=bit)
    assert decode([reg], "bit", order, bit=bit) is value
    merged = merge_bit(base, bit, value, order)
    assert decode([merged], "bit", order, bit=bit) is value
    # every other bit is untouched
    for other in range(16):
        if other != bit:
            assert decode([merged], "bit", order, bit=other) == decode([base], "bit", order, bit=other)


@given(value=st.booleans())
def test_bool_round_trip(value: bool) -> None:
    assert decode(encode(value, "bool"), "bool") is value


text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12)


@given(order=orders, length=st.integers(1, 10), value=text)
def test_string_round_trip(order: str, length: int, value: str) -> None:
    value = value.rstrip(" ")
    if len(value.encode("utf-8")) > 2 * length:
        with pytest.raises(ValueError, match="does not fit"):
            encode(value, "string", order, length=length)
        return
    regs = encode(value, "string", order, length=length)
    assert len(regs) == length
    assert decode(regs, "string", order, length=length) == value


# -- an independent reference -----------------------------------------------------------


def reference(regs: list[int], wire: str, order: str) -> Any:
    """The order definition applied with bytes, not struct word formats."""
    words = list(regs)
    if order in ("CDAB", "DCBA") and len(words) > 1:
        words.reverse()
    raw = b"".join(w.to_bytes(2, "big" if order in ("ABCD", "CDAB") else "little") for w in words)
    return struct.unpack(">" + FMT[wire], raw)[0]


def pymodbus_reference(regs: list[int], wire: str, order: str) -> Any:
    """pymodbus's convert_from_registers: it knows word order; we pre-swap bytes."""
    if order in ("BADC", "DCBA"):
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    word_order = "little" if order in ("CDAB", "DCBA") else "big"
    return ModbusClientMixin.convert_from_registers(regs, PYMODBUS_TYPE[wire], word_order=word_order)


@pytest.mark.parametrize("wire", NUMERIC)
@given(data=st.data(), order=orders)
def test_decode_matches_references(wire: str, data: st.DataObject, order: str) -> None:
    regs = data.draw(registers(register_count(wire)))
    got = make_decoder(wire, order)(regs, 0)
    assert same(got, reference(regs, wire, order), wire)
    assert same(got, pymodbus_reference(regs, wire, order), wire)


@given(order=orders, bit=st.integers(0, 15), reg=register)
def test_bit_matches_reference(order: str, bit: int, reg: int) -> None:
    value16 = reference([reg], "uint16", order)
    assert decode([reg], "bit", order, bit=bit) is bool((value16 >> bit) & 1)


@given(order=orders, regs=st.lists(register, min_size=1, max_size=8))
def test_string_matches_reference(order: str, regs: list[int]) -> None:
    raw = b"".join(r.to_bytes(2, "big" if order in ("ABCD", "CDAB") else "little") for r in regs)
    raw = raw.split(b"\0", 1)[0]
    try:
        want: str | None = raw.decode("utf-8").rstrip(" ")
    except UnicodeDecodeError:
        want = None
    if want is None:
        with pytest.raises(UnicodeDecodeError):
            decode(regs, "string", order, length=len(regs))
    else:
        assert decode(regs, "string", order, length=len(regs)) == want


def test_string_strips_nuls_and_trailing_spaces() -> None:
    regs = [0x4142, 0x2020, 0x0000, 0x4344]  # "AB  \0\0CD"
    assert decode(regs, "string", length=4) == "AB"
    assert decode([0x4241, 0x0043], "string", "BADC", length=2) == "ABC"
    assert decode([0x2041, 0x2020], "string", length=2) == " A"


def test_nan_and_inf_decode_as_is() -> None:
    assert math.isnan(decode([0x7FC0, 0], "float32"))
    assert decode([0x7F80, 0], "float32") == math.inf
    assert decode([0xFFF0, 0, 0, 0], "float64") == -math.inf


# -- encode errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "wire", "message"),
    [
        (32768, "int16", r"out of range for int16 \(-32768..32767\)"),
        (-1, "uint16", "out of range for uint16"),
        (1 << 32, "uint32", "out of range"),
        (1 << 63, "int64", "out of range"),
        (1.5, "int32", "not a whole number"),
        (math.nan, "int32", "cannot write nan"),
        ("12", "int16", "cannot write str"),
        (1e39, "float32", "out of range for float32"),
        ("x", "float64", "cannot write str"),
        (2, "bool", "true/false"),
        (1, "string", "takes a string"),
    ],
)
def test_encode_rejects(value: Any, wire: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode(value, wire, length=2 if wire == "string" else None)


def test_encode_accepts_whole_floats_and_bools() -> None:
    assert encode(12.0, "int16") == [12]
    assert encode(122.99999999999999, "uint16") == [123]  # engine unscaling noise
    assert encode(True, "bool") == [1]
    assert encode(0, "bool") == [0]


def test_invalid_decoder_arguments() -> None:
    with pytest.raises(ValueError, match="unknown order"):
        make_decoder("int32", "BACD")
    with pytest.raises(ValueError, match="bit"):
        make_decoder("bit", "ABCD")
    with pytest.raises(ValueError, match="bit"):
        make_decoder("bit", "ABCD", bit=16)
    with pytest.raises(ValueError, match="needs 2 register"):
        decode([1], "int32")


@given(bits=st.integers(0, 2**32 - 1))
def test_float32_is_published_as_its_shortest_decimal(bits: int) -> None:
    """Issue 9 item 5: 123.456 in a float32 register is 123.456 on the wire."""
    wide = struct.unpack("<f", struct.pack("<I", bits))[0]
    got = make_decoder("float32", "ABCD")([bits >> 16, bits & 0xFFFF], 0)
    if math.isnan(wide):
        assert math.isnan(got)
        return
    assert struct.pack("<f", got) == struct.pack("<f", wide), "the same float32"
    if math.isfinite(wide) and wide != 0.0:
        digits = len(Decimal(repr(got)).normalize().as_tuple().digits)
        assert digits <= 9
        if digits > 1:
            shorter = float(f"{wide:.{digits - 1}g}")
            assert struct.pack("<f", shorter) != struct.pack("<f", wide), "nothing shorter is the same"


def test_float32_examples_from_the_field() -> None:
    for value, text in ((123.456, "123.456"), (-273.15, "-273.15"), (0.1, "0.1"), (1e-45, "1e-45")):
        regs = encode(value, "float32", "CDAB")
        assert repr(make_decoder("float32", "CDAB")(regs, 0)) == text
