"""Per-value decode cost of the codec's precompiled decoders (the poll hot path).

Run: .venv/bin/python drivers/modbus/bench/bench_codec.py
"""

from __future__ import annotations

import timeit

from cellctl_modbus.codec import ORDERS, make_decoder

BLOCK = [0x4142, 0x4344, 0x1234, 0x5678, 0x9ABC, 0xDEF0, 0x0102, 0x0304] * 16
CASES = [
    ("uint16", {}),
    ("int16", {}),
    ("bit", {"bit": 3}),
    ("int32", {}),
    ("uint32", {}),
    ("float32", {}),
    ("int64", {}),
    ("float64", {}),
    ("string", {"length": 8}),
]


def main(number: int = 200_000) -> None:
    print(f"{'type':<8} " + " ".join(f"{o:>6}" for o in ORDERS) + "   ns per value")
    for wire, kw in CASES:
        row = []
        for order in ORDERS:
            dec = make_decoder(wire, order, **kw)  # type: ignore[arg-type]
            block = [0x4142] * 16 if wire == "string" else BLOCK  # ASCII for strings
            t = min(
                timeit.repeat("dec(block, 8)", globals={"dec": dec, "block": block}, number=number, repeat=5)
            )
            row.append(t / number * 1e9)
        print(f"{wire:<8} " + " ".join(f"{ns:6.0f}" for ns in row))
    # a whole merged request: 40 float32 points decoded the way ModbusDevice.poll does
    decs = [(k, 2 * k, make_decoder("float32", "CDAB")) for k in range(40)]
    regs = BLOCK[:80]
    values: list[object] = [None] * 40

    def loop() -> None:
        for k, off, dec in decs:
            try:
                values[k] = dec(regs, off)
            except Exception:
                values[k] = None

    t = min(timeit.repeat(loop, number=number // 40, repeat=5))
    print(f"poll loop, 40 float32 CDAB: {t / (number // 40) / 40 * 1e9:.0f} ns per value")


if __name__ == "__main__":
    main()
