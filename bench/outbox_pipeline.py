"""The publish path with the durable outbox in it, against the same path bypassing it,
in the same run: how much live throughput the outbox costs, and how fast a backlog
drains to the broker after an outage.

What runs (all on 127.0.0.1): this process drives the real publisher (`UnsEncoder`,
one JSON message per device scan of --values values) as fast as the path takes it; a
private mosquitto; a subscriber in its own process (a raw-socket QoS 0 reader, so it is
not the limit) counting what arrives.

  outbox   UnsEncoder -> OutboxWriter (SQLite WAL, group commit on its thread)
           -> UnsDelivery (paho on the loop, QoS 1) -> PUBACK -> ack -> delete
  bypass   UnsEncoder -> MqttSession.publish (paho's own queue, QoS 1): the path
           before issue 5, nothing durable

The producer keeps at most --window messages unacknowledged (closed loop), so each path
runs at the rate it sustains; rounds alternate (ABBA) because the machine is shared.
Figures: messages/s and values/s that reached the subscriber in the window, and CPU
seconds of this process (publisher + outbox thread + paho) per 10,000 messages.

Then `replay`: --backlog stored messages (an outage's worth) drained to the subscriber
with no pacing (`replay_rate` 1,000,000/s), alone and beside live data at --live-rate
messages/s (the live rate must hold: replay only uses what live data leaves).

    .venv/bin/python bench/outbox_pipeline.py
    .venv/bin/python bench/outbox_pipeline.py --rounds 2 --duration 8 --fsync always
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cellctl.config.cell import Backbone, Publish
from cellctl.deliver.mqtt import Message, MqttSession, PublishRefused
from cellctl.deliver.uns import UnsDelivery
from cellctl.encode.uns import UnsEncoder
from cellctl.localbroker import Mosquitto
from cellctl.model import DeviceUpdate
from cellctl.outbox import Outbox, OutboxWriter, Record

HOST = "127.0.0.1"
ROOT = "bench/outbox/site/area/line/cell"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- subscriber role (its own process) ----------------------------------------------------


class Counts:
    def __init__(self) -> None:
        self.msgs = 0
        self.historical = 0

    def on_message(self, topic: bytes, payload: bytes | bytearray, rx_us: int) -> None:
        if topic.endswith(b"/data"):
            self.msgs += 1
            if payload[:14] == b'{"historical":':
                self.historical += 1


def run_subscriber(port: int) -> int:
    """Count data messages; answer `count` lines on stdin with a JSON line; stop on `quit`."""
    sys.path.insert(0, str(Path(__file__).parent))
    from modbus_pipeline import RawSubscriber  # the same fast reader as the Modbus bench

    sub = RawSubscriber(port, [f"{ROOT}/#"], f"outbox-bench-sub-{time.monotonic_ns()}")
    counts = Counts()
    print(json.dumps({"ready": True}), flush=True)
    deadline = time.monotonic() + 4 * 3600  # never outlive a forgotten parent by much
    last_ping = time.monotonic()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sub.sock, sys.stdin], [], [], 1.0)
        if sub.sock in ready and not sub.read(counts):  # type: ignore[arg-type]
            return 1
        if sys.stdin in ready:
            line = sys.stdin.readline().strip()
            if line in ("", "quit"):
                return 0
            if line == "count":
                print(json.dumps({"msgs": counts.msgs, "historical": counts.historical}), flush=True)
        if time.monotonic() - last_ping > 20:
            sub.ping()
            last_ping = time.monotonic()
    return 0


class Subscriber:
    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--role", "subscriber", "--port", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the subscriber did not start")

    def count(self) -> tuple[int, int]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        got = json.loads(self.proc.stdout.readline())
        return int(got["msgs"]), int(got["historical"])

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# -- the two paths ---------------------------------------------------------------------------


class Acks:
    """SessionEvents for the bypass path: count PUBACKs."""

    def __init__(self) -> None:
        self.n = 0

    def will(self) -> Message | None:
        return None

    def session_up(self) -> None: ...

    def session_down(self) -> None: ...

    def message(self, topic: str, payload: bytes, retain: bool = False) -> None: ...

    def acked(self, mid: int) -> None:
        self.n += 1


class Bypass:
    """The RecordSink of the bypass path: straight to paho, nothing stored."""

    def __init__(self, session: MqttSession) -> None:
        self.session = session
        self.refused = 0

    def put(self, record: Record) -> bool:
        try:
            self.session.publish(record.topic, record.payload, record.qos, record.retain)
        except PublishRefused:
            self.refused += 1
            return False
        return True


def scans(devices: int, values: int, variants: int = 32) -> list[dict[str, float]]:
    """Pre-built value dicts (every value changes from one to the next): the producer
    should cost little next to the path measured."""
    return [{f"p{i:03d}": 230.0 + i * 0.01 + v for i in range(values)} for v in range(variants)]


async def produce(
    publisher: UnsEncoder,
    *,
    devices: int,
    variants: list[dict[str, float]],
    outstanding: Callable[[int], int],
    window: int,
    until: float,
    rate: float | None = None,
) -> int:
    """Scans until `until` (monotonic); closed loop on `outstanding`, or paced at `rate`."""
    produced = 0
    k = 0
    next_at = time.monotonic()
    while time.monotonic() < until:
        if rate is not None:
            next_at += devices / rate
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elif outstanding(produced) > window:
            await asyncio.sleep(0.0005)
            continue
        ts = time.time_ns() // 1_000_000
        vals = variants[k % len(variants)]
        k += 1
        for d in range(devices):
            publisher.device_update(DeviceUpdate(f"dev{d:02d}", ts, vals, {}))
        produced += devices
        await asyncio.sleep(0)
    return produced


async def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


async def live_run(
    mode: str, args: argparse.Namespace, port: int, sub: Subscriber, tmp: Path, *, rate: float | None = None
) -> dict[str, Any]:
    backbone = Backbone(
        host=HOST,
        port=port,
        qos=1,
        max_queued_messages=Backbone().max_queued_messages if mode == "outbox" else 1_000_000,
    )
    variants = scans(args.devices, args.values)
    async with contextlib.AsyncExitStack() as stack:
        if mode == "outbox":
            ob = Outbox(
                tmp / f"live-{time.monotonic_ns()}.sqlite",
                max_bytes=1 << 34,
                max_age_s=86400,
                fsync=args.fsync,
            )
            stack.callback(ob.close)
            writer = OutboxWriter(ob)

            def writer_cycles() -> int:
                return writer.cycles

            delivery = UnsDelivery(
                backbone, client_id=f"bench-{mode}", writer=writer, replay_rate=1_000_000, root=ROOT
            )
            writer.on_stored = delivery.on_stored
            session = delivery.session
            publisher = UnsEncoder(writer, ROOT, Publish(), 1)

            base = ob.acked_total

            def outstanding(produced: int) -> int:
                return produced - (ob.acked_total - base)

            tg = await stack.enter_async_context(asyncio.TaskGroup())
            tasks = [
                tg.create_task(writer.run(), name="outbox-writer"),
                tg.create_task(delivery.run(), name="replay"),
            ]
            await stack.enter_async_context(session)
            await wait_for(lambda: delivery.live, 10, "live")
        else:
            acks = Acks()

            def writer_cycles() -> int:
                return 0

            session = MqttSession(backbone, client_id=f"bench-{mode}", events=acks)
            sink = Bypass(session)
            publisher = UnsEncoder(sink, ROOT, Publish(), 1)

            base = acks.n

            def outstanding(produced: int) -> int:
                return produced - (acks.n - base)

            tasks = []
            await stack.enter_async_context(session)
            await wait_for(session.connected.is_set, 10, "connected")
        try:
            common = {"devices": args.devices, "variants": variants, "outstanding": outstanding}
            marks: dict[str, Any] = {}

            async def measure() -> None:
                await asyncio.sleep(args.warmup)
                marks["m0"], _ = sub.count()
                marks["cpu0"], marks["t0"] = time.process_time(), time.monotonic()
                marks["c0"] = writer_cycles()
                await asyncio.sleep(args.duration)
                marks["c1"] = writer_cycles()
                marks["m1"], _ = sub.count()
                marks["cpu1"], marks["t1"] = time.process_time(), time.monotonic()

            async with asyncio.TaskGroup() as window_tg:
                probe = window_tg.create_task(measure(), name="measure")
                produced_all = await produce(
                    publisher,
                    **common,
                    window=args.window,
                    until=time.monotonic() + args.warmup + args.duration,
                    rate=rate,
                )
                await probe
            m0, m1, cpu0, cpu1, t0 = marks["m0"], marks["m1"], marks["cpu0"], marks["cpu1"], marks["t0"]
            produced = produced_all * args.duration / (args.warmup + args.duration)  # offered, on average
            t1 = marks["t1"]
        finally:
            for t in tasks:
                t.cancel()
    msgs = m1 - m0
    wall = t1 - t0
    return {
        "mode": mode if rate is None else f"{mode} @ {rate:g}/s",
        "commits_per_s": (marks["c1"] - marks["c0"]) / wall,
        "msgs_per_s": msgs / wall,
        "values_per_s": msgs * args.values / wall,
        "produced_per_s": produced / wall,
        "cpu_s_per_10k": (cpu1 - cpu0) / max(msgs, 1) * 10_000,
        "cpu_pct": (cpu1 - cpu0) / wall * 100,
    }


async def replay_run(
    args: argparse.Namespace, port: int, sub: Subscriber, tmp: Path, live_rate: float | None
) -> dict[str, Any]:
    """A stored backlog of --backlog messages drains after 'reconnecting'."""
    backbone = Backbone(host=HOST, port=port, qos=1)
    ob = Outbox(
        tmp / f"replay-{time.monotonic_ns()}.sqlite", max_bytes=1 << 34, max_age_s=86400, fsync=args.fsync
    )
    variants = scans(args.devices, args.values)
    filler = UnsEncoder(ob_sink := _Collect(), ROOT, Publish(), 1)
    for k in range(args.backlog // args.devices):
        for d in range(args.devices):
            filler.device_update(DeviceUpdate(f"dev{d:02d}", 1_764_000_000_000 + k, variants[k % len(variants)], {}))
    for i in range(0, len(ob_sink.records), 1000):
        ob.append_many(ob_sink.records[i : i + 1000])
    backlog = len(ob)
    writer = OutboxWriter(ob)
    delivery = UnsDelivery(
        backbone, client_id="bench-replay", writer=writer, replay_rate=1_000_000, root=ROOT
    )
    writer.on_stored = delivery.on_stored
    publisher = UnsEncoder(writer, ROOT, Publish(), 1)
    m0, h0 = sub.count()
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(writer.run(), name="outbox-writer"),
                tg.create_task(delivery.run(), name="replay"),
            ]
            async with delivery.session:
                t0, cpu0 = time.monotonic(), time.process_time()
                live_task = None
                if live_rate is not None:
                    live_task = tg.create_task(
                        produce(
                            publisher,
                            devices=args.devices,
                            variants=variants,
                            outstanding=lambda _p: 0,
                            window=0,
                            until=t0 + 3600,
                            rate=live_rate,
                        ),
                        name="live",
                    )
                last = (0, 0)
                deadline = t0 + 600
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    last = sub.count()
                    if last[1] - h0 >= backlog:
                        break
                t1, cpu1 = time.monotonic(), time.process_time()
                if live_task is not None:
                    live_task.cancel()
            for t in tasks:
                t.cancel()
    finally:
        ob.close()
    hist = last[1] - h0
    live_msgs = (last[0] - m0) - hist
    wall = t1 - t0
    return {
        "mode": "replay" if live_rate is None else f"replay + live {live_rate:g}/s",
        "msgs_per_s": hist / wall,
        "values_per_s": hist * args.values / wall,
        "live_per_s": live_msgs / wall,
        "cpu_s_per_10k": (cpu1 - cpu0) / max(hist + live_msgs, 1) * 10_000,
        "backlog": backlog,
        "seconds": wall,
    }


class _Collect:
    def __init__(self) -> None:
        self.records: list[Record] = []

    def put(self, record: Record) -> bool:
        self.records.append(record)
        return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=["main", "subscriber"], default="main", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--values", type=int, default=100, help="values per message (device scan)")
    ap.add_argument("--duration", type=float, default=5.0, help="measuring window per run, s")
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=1, help="ABBA rounds of outbox/bypass")
    ap.add_argument("--window", type=int, default=2000, help="messages the producer lets go unacknowledged")
    ap.add_argument("--fsync", choices=["always", "batch", "off"], default="batch")
    ap.add_argument("--backlog", type=int, default=50_000, help="stored messages for the replay runs")
    ap.add_argument("--live-rate", type=float, default=1000.0, help="live messages/s beside the replay")
    ap.add_argument(
        "--rate", type=float, action="append", default=None, help="also a fixed offered rate (messages/s)"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    args.rate = args.rate or [1000.0]
    if args.role == "subscriber":
        return run_subscriber(args.port)
    tmp = Path(tempfile.mkdtemp(prefix="outbox-pipeline-"))
    broker = Mosquitto(host=HOST)
    sub: Subscriber | None = None
    results: list[dict[str, Any]] = []
    try:
        broker.start()
        sub = Subscriber(broker.port)
        log(f"mosquitto on {broker.port}; {args.devices} devices x {args.values} values, fsync={args.fsync}")
        for r in range(args.rounds):
            order = ["outbox", "bypass"] if r % 2 == 0 else ["bypass", "outbox"]
            for mode in order:
                log(f"round {r + 1}: {mode}")
                results.append(asyncio.run(live_run(mode, args, broker.port, sub, tmp)))
        for rate in args.rate:
            for mode in ("outbox", "bypass"):
                log(f"{mode} at {rate:g} messages/s")
                results.append(asyncio.run(live_run(mode, args, broker.port, sub, tmp, rate=rate)))
        for rate in (None, args.live_rate):
            log("replay" + ("" if rate is None else f" beside live data at {rate:g}/s"))
            results.append(asyncio.run(replay_run(args, broker.port, sub, tmp, rate)))
    finally:
        if sub is not None:
            sub.stop()
        broker.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'path':26} {'msgs/s':>9} {'values/s':>11} {'CPU s/10k msgs':>15}  notes")
    for res in results:
        note = ""
        if "cpu_pct" in res:
            note = f"offered {res['produced_per_s']:.0f}/s, process CPU {res['cpu_pct']:.0f} %"
            if res["commits_per_s"]:
                note += f", {res['commits_per_s']:.0f} commits/s"
        if "backlog" in res:
            note = f"{res['backlog']} stored messages in {res['seconds']:.1f} s"
            if res["mode"] != "replay":
                note += f"; live kept {res['live_per_s']:.0f}/s"
        print(
            f"{res['mode']:26} {res['msgs_per_s']:9.0f} {res['values_per_s']:11.0f} {res['cpu_s_per_10k']:15.2f}  {note}"
        )
    live = {m: [x["msgs_per_s"] for x in results if x["mode"] == m] for m in ("outbox", "bypass")}
    for rate in args.rate:
        cpu = {
            m: [x["cpu_pct"] for x in results if x["mode"] == f"{m} @ {rate:g}/s"]
            for m in ("outbox", "bypass")
        }
        if cpu["outbox"] and cpu["bypass"]:
            print(
                f"at {rate:g} messages/s the outbox costs {cpu['outbox'][0] - cpu['bypass'][0]:.1f} % of a core"
            )
    if live["outbox"] and live["bypass"]:
        ratio = (sum(live["outbox"]) / len(live["outbox"])) / (sum(live["bypass"]) / len(live["bypass"]))
        print(f"live throughput with the outbox / bypassed: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
