"""Values as a Modbus device holds them, for tests that play the machine through a
simulator's registers (`unit.load("holding", address, words)`)."""

from __future__ import annotations


def words32(n: int) -> list[int]:
    """A 32-bit unsigned counter as two registers, high word first (the profiles' default)."""
    return [(n >> 16) & 0xFFFF, n & 0xFFFF]


def text_registers(s: str, length: int = 8) -> list[int]:
    """ASCII text in `length` registers, two characters each, NUL-padded."""
    raw = s.encode().ljust(2 * length, b"\0")
    return [raw[i] << 8 | raw[i + 1] for i in range(0, 2 * length, 2)]
