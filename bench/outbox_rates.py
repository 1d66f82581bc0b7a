"""Outbox micro-benchmark: append and replay rates for each fsync policy.

Why: the outbox sits between every sample and the broker, so its write rate bounds the
daemon's throughput, and its replay rate bounds how fast a backlog drains after an
outage. Messages are realistic: one device scan of 100 values, as UNS JSON (orjson) and
as Sparkplug B DDATA (the codec's storage form), so values/s = 100 x messages/s.

Figures printed (nothing is asserted; run by hand):
  append      Outbox.append_many in batches of --batch messages, one transaction each;
              batch 1 shows the per-commit cost (fsync=always pays one fsync each).
  writer      OutboxWriter.put() from the event loop as fast as possible, group commit on
              its thread; also the worst event-loop stall seen meanwhile (a ticker task).
  replay      pending(1000) + ack(ids) until empty: how fast a backlog drains.
  codec       (--format sparkplug) encoding a 100-metric DDATA, completing it with_seq
              for live publishing, and to_historical for replay: the CPU side of the path.

    .venv/bin/python bench/outbox_rates.py                       # all policies, in /tmp
    .venv/bin/python bench/outbox_rates.py --dir /var/lib/cellctl --messages 50000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from cellctl.outbox import Fsync, Outbox, OutboxWriter, Record
from cellctl.sparkplug.codec import DataType, Metric, encode_data, to_historical, with_seq

VALUES = 100
TS = 1_764_012_938_123


def uns_payload(seq: int) -> bytes:
    values = {f"point_{i:03d}": 230.0 + i * 0.01 + seq for i in range(VALUES)}
    return orjson.dumps({"ts": TS + seq, "seq": seq, "values": values})


def spb_payload(seq: int) -> bytes:
    ms = [Metric(alias=i + 1, datatype=DataType.Double, value=230.0 + i * 0.01 + seq) for i in range(VALUES)]
    return encode_data(timestamp=TS + seq, metrics=ms)


def records(n: int, fmt: str) -> list[Record]:
    make = uns_payload if fmt == "uns" else spb_payload
    # a few distinct payloads reused: the bench measures the store, not the encoder
    bodies = [make(s) for s in range(16)]
    if fmt == "uns":
        return [
            Record(f"dev{i % 8}", f"uns/v1/acme/site/area/line/cell/dev{i % 8}/data", bodies[i % 16])
            for i in range(n)
        ]
    return [
        Record(
            f"dev{i % 8}",
            f"spBv1.0/acmesitearea/DDATA/cell/dev{i % 8}",
            bodies[i % 16],
            qos=0,
            fmt="sparkplug",
        )
        for i in range(n)
    ]


def open_outbox(d: Path, fsync: Fsync) -> Outbox:
    path = d / f"bench-{fsync}-{time.monotonic_ns()}.sqlite"
    return Outbox(path, max_bytes=1 << 34, max_age_s=86400, fsync=fsync)


def bench_append(d: Path, fsync: Fsync, recs: Sequence[Record], batch: int) -> tuple[float, Outbox]:
    ob = open_outbox(d, fsync)
    t0 = time.perf_counter()
    for i in range(0, len(recs), batch):  # bounded by the record count
        ob.append_many(recs[i : i + batch])
    ob.sync()
    return time.perf_counter() - t0, ob


def bench_replay(ob: Outbox) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for _ in range(10_000_000):  # bounded; ends when the outbox is empty
        batch = ob.pending(1000)
        if not batch:
            break
        n += len(batch)
        ob.ack([m.id for m in batch])
    return time.perf_counter() - t0, n


async def bench_writer(d: Path, fsync: Fsync, recs: Sequence[Record]) -> tuple[float, float, int]:
    ob = open_outbox(d, fsync)
    writer = OutboxWriter(ob, max_backlog=len(recs) + 1)
    worst = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            worst = max(worst, now - last - 0.001)
            last = now

    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(writer.run(), name="outbox-writer")
        tick = tg.create_task(ticker(), name="loop-ticker")
        t0 = time.perf_counter()
        for i, r in enumerate(recs):
            writer.put(r)
            if i % 200 == 199:
                await asyncio.sleep(0)  # a daemon yields between device scans
        await writer.flush()
        elapsed = time.perf_counter() - t0
        stop.set()
        await tick
        run.cancel()
    cycles = writer.cycles
    ob.close()
    return elapsed, worst, cycles


def bench_codec(n: int) -> None:
    ms = [Metric(alias=i + 1, datatype=DataType.Double, value=230.0 + i * 0.01) for i in range(VALUES)]
    stored = encode_data(timestamp=TS, metrics=ms)
    for what, fn in (
        ("encode DDATA", lambda: encode_data(timestamp=TS, metrics=ms)),
        ("with_seq (live)", lambda: with_seq(stored, 7)),
        ("to_historical (replay)", lambda: to_historical(stored, seq=7)),
    ):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        row("-", what, n, time.perf_counter() - t0, len(stored))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, help="where to put the databases (default: a temp dir)")
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--single", type=int, default=300, help="messages for the batch-of-1 run")
    ap.add_argument("--policy", choices=["always", "batch", "off"], action="append")
    ap.add_argument("--format", choices=["uns", "sparkplug"], default="uns")
    args = ap.parse_args(argv)
    policies: list[Fsync] = args.policy or ["always", "batch", "off"]
    tmp = Path(tempfile.mkdtemp(prefix="outbox-bench-", dir=args.dir))
    recs = records(args.messages, args.format)
    size = len(recs[0].payload)
    print(
        f"outbox bench: {args.messages} messages of {VALUES} values ({args.format}, {size} B payload), "
        f"SQLite {__import__('sqlite3').sqlite_version}, dir {tmp}"
    )
    print(f"{'fsync':7} {'what':22} {'msgs/s':>10} {'values/s':>12} {'MB/s':>7}  notes")
    try:
        if args.format == "sparkplug":
            bench_codec(min(args.messages, 5000))
        for fsync in policies:
            secs, ob = bench_append(tmp, fsync, recs, args.batch)
            row(fsync, f"append batch={args.batch}", len(recs), secs, size)
            rsecs, n = bench_replay(ob)
            row(fsync, "replay pending+ack", n, rsecs, size)
            ob.close()
            single = recs[: args.single]
            secs1, ob1 = bench_append(tmp, fsync, single, 1)
            ob1.close()
            row(fsync, "append batch=1", len(single), secs1, size)
            wsecs, worst, cycles = asyncio.run(bench_writer(tmp, fsync, recs))
            row(
                fsync,
                "writer put()+commit",
                len(recs),
                wsecs,
                size,
                note=f"{cycles} commits, worst loop stall {worst * 1000:.1f} ms",
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def row(fsync: str, what: str, n: int, secs: float, size: int, *, note: str = "") -> None:
    rate = n / secs if secs > 0 else float("inf")
    print(
        f"{fsync:7} {what:22} {rate:10.0f} {rate * VALUES:12.0f} {rate * size / 1e6:7.1f}  {note}", flush=True
    )


if __name__ == "__main__":
    sys.exit(main())
