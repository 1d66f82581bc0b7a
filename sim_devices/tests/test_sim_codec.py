"""The simulator's struct codec against hand-computed registers and the reference."""

from __future__ import annotations

import math
import struct

import pytest
from cellctl_sim.modbus.registers import (
    INT_LIMITS,
    Order,
    Point,
    RegisterImage,
    RegisterMap,
    Table,
    WireType,
    canonical,
    decode,
    encode,
)
from hypothesis import given
from hypothesis import strategies as st
from simref import ref_decode, ref_encode

H = Table.HOLDING


def pt(wt: WireType, order: Order = Order.ABCD, **kw: int) -> Point:
    return Point("p", H, 0, wt, order, **kw)  # type: ignore[arg-type]


# Golden vectors, worked out by hand from the order definition.
@pytest.mark.parametrize(
    ("wt", "order", "value", "regs"),
    [
        (WireType.FLOAT32, Order.ABCD, 1.5, [0x3FC0, 0x0000]),
        (WireType.FLOAT32, Order.CDAB, 1.5, [0x0000, 0x3FC0]),
        (WireType.FLOAT32, Order.BADC, 1.5, [0xC03F, 0x0000]),
        (WireType.FLOAT32, Order.DCBA, 1.5, [0x0000, 0xC03F]),
        (WireType.INT32, Order.ABCD, 0x12345678, [0x1234, 0x5678]),
        (WireType.INT32, Order.CDAB, 0x12345678, [0x5678, 0x1234]),
        (WireType.INT32, Order.BADC, 0x12345678, [0x3412, 0x7856]),
        (WireType.INT32, Order.DCBA, 0x12345678, [0x7856, 0x3412]),
        (WireType.INT32, Order.ABCD, -2, [0xFFFF, 0xFFFE]),
        (WireType.UINT64, Order.ABCD, 0x0123456789ABCDEF, [0x0123, 0x4567, 0x89AB, 0xCDEF]),
        (WireType.UINT64, Order.CDAB, 0x0123456789ABCDEF, [0xCDEF, 0x89AB, 0x4567, 0x0123]),
        (WireType.UINT64, Order.BADC, 0x0123456789ABCDEF, [0x2301, 0x6745, 0xAB89, 0xEFCD]),
        (WireType.UINT64, Order.DCBA, 0x0123456789ABCDEF, [0xEFCD, 0xAB89, 0x6745, 0x2301]),
        (WireType.FLOAT64, Order.CDAB, 1.0, [0x0000, 0x0000, 0x0000, 0x3FF0]),
        (WireType.INT16, Order.ABCD, -2, [0xFFFE]),
        (WireType.INT16, Order.BADC, -2, [0xFEFF]),
        (WireType.UINT16, Order.CDAB, 0x1234, [0x1234]),  # 16-bit: only the byte order counts
        (WireType.UINT16, Order.DCBA, 0x1234, [0x3412]),
    ],
)
def test_golden_registers(wt: WireType, order: Order, value: float, regs: list[int]) -> None:
    p = pt(wt, order)
    assert encode(p, value) == regs
    assert decode(p, regs) == value


def test_string_layout() -> None:
    abcd = pt(WireType.STRING, Order.ABCD, length=3)
    badc = pt(WireType.STRING, Order.BADC, length=3)
    assert encode(abcd, "ABC") == [0x4142, 0x4300, 0x0000]
    assert encode(badc, "ABC") == [0x4241, 0x0043, 0x0000]
    assert decode(badc, [0x4241, 0x0043, 0x0000]) == "ABC"
    assert encode(abcd, "ABCDEFGH") == [0x4142, 0x4344, 0x4546]  # cut to the space
    assert canonical(abcd, "ABCDEFGH") == "ABCDEF"


def test_bit_positions_follow_byte_order() -> None:
    m = RegisterMap(
        (
            Point("w", H, 0, WireType.UINT16),
            Point("b3", H, 0, WireType.BIT, bit=3),
            Point("s3", H, 1, WireType.BIT, Order.BADC, bit=3),
            Point("s15", H, 1, WireType.BIT, Order.BADC, bit=15),
        )
    )
    img = RegisterImage(m)
    img.put(m.get("b3"), True)
    img.put(m.get("s3"), True)
    img.put(m.get("s15"), True)
    assert img.holding == [0x0008, 0x0880]
    assert img.get(m.get("s3")) is True
    assert ref_decode([0x0880], "bit", "BADC", 3) is True
    assert ref_decode([0x0880], "bit", "BADC", 15) is True
    assert ref_decode([0x0880], "bit", "BADC", 7) is False


_INT_TYPES = [WireType.INT16, WireType.UINT16, WireType.INT32, WireType.UINT32, WireType.INT64, WireType.UINT64]


@given(st.data())
def test_ints_agree_with_reference(data: st.DataObject) -> None:
    wt = data.draw(st.sampled_from(_INT_TYPES))
    order = data.draw(st.sampled_from(list(Order)))
    lo, hi = INT_LIMITS[wt]
    value = data.draw(st.integers(lo, hi))
    p = pt(wt, order)
    regs = encode(p, value)
    assert ref_decode(regs, wt.value, order.value) == value
    assert regs == ref_encode(value, wt.value, order.value)
    assert decode(p, regs) == value


@given(st.sampled_from(list(Order)), st.floats(allow_nan=False, width=32))
def test_float32_agrees_with_reference(order: Order, value: float) -> None:
    p = pt(WireType.FLOAT32, order)
    regs = encode(p, value)
    assert ref_decode(regs, "float32", order.value) == value
    assert regs == ref_encode(value, "float32", order.value)


@given(st.sampled_from(list(Order)), st.floats(allow_nan=False))
def test_float64_agrees_with_reference(order: Order, value: float) -> None:
    p = pt(WireType.FLOAT64, order)
    regs = encode(p, value)
    assert ref_decode(regs, "float64", order.value) == value


@given(st.sampled_from([Order.ABCD, Order.BADC]), st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=16))
def test_strings_agree_with_reference(order: Order, text: str) -> None:
    p = pt(WireType.STRING, order, length=8)
    regs = encode(p, text)
    expect = canonical(p, text)
    assert ref_decode(regs, "string", order.value) == expect
    assert regs == ref_encode(expect, "string", order.value, length=8)


def test_canonical_rounds_float32_like_the_wire() -> None:
    p = pt(WireType.FLOAT32)
    assert canonical(p, 0.1) == struct.unpack(">f", struct.pack(">f", 0.1))[0]
    assert canonical(p, 16777217.0) == 16777216.0
    with pytest.raises(OverflowError):
        canonical(p, 1e39)
    assert math.isinf(float(canonical(p, math.inf)))


def test_canonical_rejects_what_the_wire_cannot_carry() -> None:
    with pytest.raises(OverflowError):
        canonical(pt(WireType.INT16), 40000)
    with pytest.raises(TypeError):
        canonical(pt(WireType.INT32), 1.5)
    with pytest.raises(UnicodeEncodeError):
        canonical(pt(WireType.STRING, length=2), "é")


def test_map_rejects_overlaps_and_bad_points() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        RegisterMap((Point("a", H, 0, WireType.INT32), Point("b", H, 1, WireType.UINT16)))
    with pytest.raises(ValueError, match="duplicate"):
        RegisterMap((Point("a", H, 0, WireType.UINT16), Point("a", H, 1, WireType.UINT16)))
    with pytest.raises(ValueError, match="not a word"):
        RegisterMap((Point("f", H, 0, WireType.FLOAT32), Point("b", H, 0, WireType.BIT, bit=1)))
    with pytest.raises(ValueError, match="bool points"):
        Point("c", Table.COIL, 0, WireType.UINT16)
    with pytest.raises(ValueError, match="read-only"):
        Point("i", Table.INPUT, 0, WireType.UINT16, writable=True)
    with pytest.raises(ValueError, match="length"):
        Point("s", H, 0, WireType.STRING)
