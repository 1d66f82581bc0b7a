"""What one slow or stalled unit costs the others on a shared Modbus TCP gateway.

Five units behind one gateway (the cellctl_sim simulator, in-process, on 127.0.0.1),
each a device polled every 100 ms on monotonic deadlines, as the engine does. Unit 5
is made slow (300 ms per answer) or stalled (never answers; timeout 0.5 s), and each
healthy unit's completed polls per second and p99 poll time are printed, before
(pipelining off, no breaker) and after (breaker, pipelining), in the same run.

    .venv/bin/python drivers/modbus/bench/bench_shared_link.py [seconds-per-case]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from typing import Any

from cellctl_modbus.config import ModbusAddress, ModbusConnection, ModbusOptions
from cellctl_modbus.plugin import plugin
from cellctl_sim.modbus import SimModbusServer

from cellctl.driver import DeviceContext, DeviceUnavailable, PointSpec

INTERVAL = 0.1
UNITS = (1, 2, 3, 4, 5)
BAD = 5
POINTS = [
    PointSpec(0, "r4", "int", "r", ModbusAddress(table="holding", start=4, type="uint16")),
    PointSpec(1, "r20", "int", "r", ModbusAddress(table="holding", start=20, type="uint16")),
]


async def run_unit(ctx: DeviceContext, seconds: float, lat: list[float]) -> int:
    """Poll like the runner: reopen after DeviceUnavailable; returns good polls."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    next_at = loop.time()
    good = 0
    while loop.time() < end:
        try:
            async with plugin.open(ctx) as dev:
                while loop.time() < end:
                    t0 = loop.time()
                    await dev.poll()
                    lat.append(loop.time() - t0)
                    good += 1
                    next_at += INTERVAL
                    next_at = max(next_at, loop.time())  # behind: skip, never burst
                    await asyncio.sleep(next_at - loop.time())
        except DeviceUnavailable:
            await asyncio.sleep(0.1)  # the runner's first, short backoff
            next_at = loop.time()
    return good


async def case(port: int, seconds: float, *, pipelining: str, breaker: int, timeout: float) -> tuple[float, float]:
    ctxs = [
        DeviceContext(
            device_id=f"u{u}",
            connection=ModbusConnection(transport="tcp", host="127.0.0.1", port=port, unit=u, pipelining=pipelining),  # type: ignore[arg-type]
            options=ModbusOptions(breaker_after=breaker),
            points=POINTS,
            timeout=timeout,
        )
        for u in UNITS
    ]
    lats: list[list[float]] = [[] for _ in UNITS]
    goods = await asyncio.gather(*(run_unit(c, seconds, lat) for c, lat in zip(ctxs, lats, strict=True)))
    healthy = [i for i, u in enumerate(UNITS) if u != BAD]
    rate = statistics.mean(goods[i] for i in healthy) / seconds
    all_lat = sorted(x for i in healthy for x in lats[i])
    p99 = all_lat[int(0.99 * (len(all_lat) - 1))] if all_lat else float("nan")
    return rate, p99


async def main(seconds: float) -> None:
    async with SimModbusServer(dict.fromkeys(UNITS, "bench"), tick=0.05, seed=1) as sim:
        port = await sim.serve_tcp()
        rows: list[tuple[str, Any, Any]] = []

        async def measure(name: str, **kw: Any) -> None:
            rate, p99 = await case(port, seconds, **kw)
            rows.append((name, rate, p99))
            print(f"{name:58s} {rate:6.1f} polls/s per healthy unit   p99 {p99 * 1000:7.1f} ms", flush=True)

        await measure("all healthy, pipelining off", pipelining="off", breaker=0, timeout=0.5)
        sim.set_latency(0.3, unit=BAD)
        await measure("unit 5 slow (300 ms), pipelining off (before)", pipelining="off", breaker=0, timeout=0.5)
        await measure("unit 5 slow (300 ms), pipelining on (after)", pipelining="on", breaker=3, timeout=0.5)
        sim.resume(unit=BAD)
        sim.stop_answering(unit=BAD)
        await measure("unit 5 stalled, pipelining off, no breaker (before)", pipelining="off", breaker=0, timeout=0.5)
        await measure("unit 5 stalled, pipelining off, breaker 3 (after)", pipelining="off", breaker=3, timeout=0.5)
        await measure("unit 5 stalled, pipelining on, breaker 3 (after)", pipelining="on", breaker=3, timeout=0.5)


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 6.0))
