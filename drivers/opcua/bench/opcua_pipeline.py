"""End-to-end benchmark of the OPC UA path: simulated server -> cellctl -> mosquitto ->
subscriber, against a bare asyncua client subscription of the same size in the same run.

    .venv/bin/python drivers/opcua/bench/opcua_pipeline.py                 # 1,000 items at 10 Hz
    .venv/bin/python drivers/opcua/bench/opcua_pipeline.py --items 2000 --rate 5 --duration 30 --json

Every part is a real process on 127.0.0.1: the simulator (`python -m cellctl_sim.opcua
--bench N --bench-rate R`: N Int64 nodes, all written R times a second with the write's
time in µs, which is also their source timestamp), mosquitto, `cellctl run`, and this
script as the MQTT subscriber. Latency of a value = its arrival at the consumer minus the
µs stamp it carries (the server's source timestamp of that write):

* bare:    arrival in an asyncua client's subscription iterator (publishing interval and
           sampling interval as the daemon's), in its own process;
* cellctl: arrival at the MQTT subscriber, after the daemon's subscription, engine,
           encoder, mosquitto and paho.

CPU is user+system time of the measured process over the window, in % of one core; RSS
is the daemon's peak. The simulator's CPU is printed too: when it saturates a core, it,
not the client, is the limit. Figures only, never a pass/fail: see README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import yaml

NAMESPACE = "urn:cellctl:sim:opcua-machine"
IDENTITY = {"enterprise": "bench", "site": "lab", "area": "a1", "line": "l1", "cell": "opcua"}
ROOT = "/".join(["uns/v1", *IDENTITY.values()])
MAX_SAMPLES = 2_000_000


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Figures:
    client: str
    values_per_s: float
    offered_per_s: float  # server writes seen (distinct time stamps x items) per second
    lat_p50_ms: float
    lat_p99_ms: float
    lat_max_ms: float
    cpu_pct: float
    rss_peak_mb: float
    sim_cpu_pct: float
    window_s: float
    latencies_ms: list[float] | None = None  # kept for pooled percentiles, not printed


# -- the bare asyncua client (its own process) ---------------------------------------------


async def _bare(args: argparse.Namespace) -> dict[str, Any]:
    url, items, interval, queue, warmup, duration = (
        args.url, args.items, args.interval, args.queue_size, args.warmup, args.duration
    )
    from asyncua import Client, ua

    me = psutil.Process()
    async with Client(url, timeout=10) as client:
        ns = await client.get_namespace_index(NAMESPACE)
        nodes = [client.get_node(ua.NodeId(f"Bench.V{i:04d}", ns)) for i in range(items)]
        sub = await client.create_subscription(interval * 1000, None, queue_maxsize=10 * items)
        await sub.subscribe_data_change(nodes, queuesize=queue, sampling_interval=interval * 1000)
        latencies: list[float] = []
        stamps: set[int] = set()
        count = 0
        start = end = None
        cpu0: Any = None
        async for event in sub:
            now = time.time()
            if start is None:
                start = now + warmup
                end = start + duration
            if now < start:
                continue
            assert end is not None
            if cpu0 is None:
                cpu0, t0 = me.cpu_times(), now
            if now >= end:
                break
            count += 1
            value = getattr(event, "value", None)
            if isinstance(value, int):
                stamps.add(value)
                if len(latencies) < MAX_SAMPLES:
                    latencies.append(now - value / 1e6)
        cpu1, t1 = me.cpu_times(), time.time()
    window = t1 - t0
    return {
        "values": count,
        "ticks": len(stamps),
        "window": window,
        "cpu_pct": 100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / window,
        "rss_mb": me.memory_info().rss / 2**20,
        "latencies": latencies,
    }


def run_bare_role(args: argparse.Namespace) -> int:
    result = asyncio.run(_bare(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


# -- orchestration ----------------------------------------------------------------------------


@contextlib.contextmanager
def process(cmd: list[str], **kw: Any) -> Iterator[subprocess.Popen[str]]:
    """A child process, stopped by its PID (SIGTERM, then SIGKILL) whatever happens."""
    proc = subprocess.Popen(cmd, text=True, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def start_sim(items: int, rate: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellctl_sim.opcua", "--listen", "127.0.0.1:0", "--tick", "1",
         "--bench", str(items), "--bench-rate", str(rate)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("opcua "):
            return proc, line.split()[1]
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("the simulator did not start")


def bench_profile(folder: Path, items: int) -> None:
    profile = {
        "name": "bench-opcua",
        "driver": "opcua",
        "description": "cellctl-sim OPC UA bench nodes",
        "points": [
            {"id": f"v{i:04d}", "type": "int", "address": {"node": f"nsu={NAMESPACE};s=Bench.V{i:04d}"}}
            for i in range(items)
        ],
    }
    (folder / "bench-opcua.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))


def cell_config(folder: Path, broker_port: int, url: str, interval: float, queue: int) -> Path:
    config = {
        "identity": IDENTITY,
        "backbone": {"host": "127.0.0.1", "port": broker_port},
        "publish": {"prefix": "uns/v1", "state_min_interval": 1.0},
        "profile_dirs": [str(folder)],
        "log_level": "warning",
        "devices": [
            {
                "id": "bench",
                "driver": "opcua",
                "profile": "bench-opcua",
                "connection": {"endpoint": url},
                "options": {
                    "publishing_interval": interval,
                    "sampling_interval": interval,
                    "queue_size": queue,
                    "keepalive": 2.0,
                },
                "timeout": 5.0,
            }
        ],
    }
    path = folder / "cell.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Subscriber:
    """MQTT consumer of the daemon's data topic: counts values and their latency."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.lock = threading.Lock()
        self.counting = False
        self.values = 0
        self.stamps: set[int] = set()
        self.first = threading.Event()
        self.latencies: list[float] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}")
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(f"{ROOT}/bench/data", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise SystemExit("could not subscribe to the broker")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        values = orjson.loads(msg.payload).get("values") or {}
        self.first.set()
        if not self.counting:
            return
        with self.lock:
            self.values += len(values)
            self.stamps.update(v for v in values.values() if isinstance(v, int))
            if len(self.latencies) < MAX_SAMPLES:
                self.latencies.extend(now - v / 1e6 for v in values.values() if isinstance(v, int))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def measure_bare(args: argparse.Namespace, url: str, sim: psutil.Process) -> Figures:
    log(f"bare asyncua client: {args.items} monitored items, {args.warmup:g} s warm-up, {args.duration:g} s window")
    sim_cpu0 = cpu_seconds(sim)
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, __file__, "--role", "bare", "--url", url, "--items", str(args.items),
         "--interval", str(args.interval), "--queue-size", str(args.queue_size),
         "--warmup", str(args.warmup), "--duration", str(args.duration)],
        capture_output=True, text=True, timeout=args.warmup + args.duration + 120, check=True,
    )
    sim_cpu = 100 * (cpu_seconds(sim) - sim_cpu0) / (time.monotonic() - t0)
    r = orjson.loads(out.stdout.strip().splitlines()[-1])
    lat = [x * 1000 for x in r["latencies"]]
    return Figures(
        "bare asyncua", r["values"] / r["window"], r["ticks"] * args.items / r["window"], pct(lat, 0.5), pct(lat, 0.99),
        max(lat, default=float("nan")), r["cpu_pct"], r["rss_mb"], sim_cpu, r["window"], lat,
    )


def measure_cellctl(args: argparse.Namespace, url: str, sim: psutil.Process, broker_port: int, work: Path) -> Figures:
    bench_profile(work, args.items)
    config = cell_config(work, broker_port, url, args.interval, args.queue_size)
    sub = Subscriber(broker_port)
    log_file = (work / "daemon.log").open("w")
    try:
        with process([sys.executable, "-m", "cellctl.cli.main", "--log-format", "json", "run", str(config)],
                     stdout=log_file, stderr=subprocess.STDOUT) as daemon:
            me = psutil.Process(daemon.pid)
            if not sub.first.wait(60):
                log_file.flush()
                tail = (work / "daemon.log").read_text().splitlines()[-20:]
                raise SystemExit("no data from the daemon within 60 s; its log ends:\n" + "\n".join(tail))
            log(f"cellctl: first data; {args.warmup:g} s warm-up, {args.duration:g} s window")
            time.sleep(args.warmup)  # a measuring window, not synchronisation
            rss_peak = 0.0
            cpu0, sim0, t0 = cpu_seconds(me), cpu_seconds(sim), time.monotonic()
            with sub.lock:
                sub.counting = True
            end = t0 + args.duration
            while time.monotonic() < end:
                rss_peak = max(rss_peak, me.memory_info().rss / 2**20)
                time.sleep(min(0.25, max(0.0, end - time.monotonic())))
            with sub.lock:
                sub.counting = False
            window = time.monotonic() - t0
            cpu = 100 * (cpu_seconds(me) - cpu0) / window
            sim_cpu = 100 * (cpu_seconds(sim) - sim0) / window
            if daemon.poll() is not None:
                log_file.flush()
                tail = (work / "daemon.log").read_text().splitlines()[-20:]
                raise SystemExit("the daemon exited; its log ends:\n" + "\n".join(tail))
    finally:
        sub.close()
        log_file.close()
    lat = [x * 1000 for x in sub.latencies]
    return Figures(
        "cellctl", sub.values / window, len(sub.stamps) * args.items / window, pct(lat, 0.5), pct(lat, 0.99),
        max(lat, default=float("nan")), cpu, rss_peak, sim_cpu, window, lat,
    )


def startup_figures() -> dict[str, float]:
    """Import cost: what a cell without OPC UA devices must not pay."""
    def seconds(code: str) -> float:
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs)

    base = seconds("import cellctl.daemon")
    return {
        "python_cellctl_daemon_s": base,
        "plus_cellctl_opcua_plugin_s": seconds("import cellctl.daemon, cellctl_opcua.plugin") - base,
        "plus_asyncua_s": seconds("import cellctl.daemon, asyncua") - base,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1000, help="monitored items (default 1000)")
    ap.add_argument("--rate", type=float, default=10.0, help="changes per item per second (default 10)")
    ap.add_argument("--interval", type=float, default=0.1, help="publishing = sampling interval, s (default 0.1)")
    ap.add_argument(
        "--queue-size", type=int, default=10,
        help="monitored item queue size of both clients (default 10: no change is overwritten)",
    )
    ap.add_argument("--duration", type=float, default=20.0, help="measuring window per client, s")
    ap.add_argument("--warmup", type=float, default=5.0, help="s after the first value before the window")
    ap.add_argument("--rounds", type=int, default=1, help="alternate bare/cellctl this often; medians too")
    ap.add_argument("--no-bare", action="store_true", help="skip the bare asyncua client")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--role", choices=["bare"], help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role == "bare":
        return run_bare_role(args)

    from cellctl.localbroker import Mosquitto

    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="cellctl-bench-opcua-") as tmp, Mosquitto() as broker:
        sim_proc, url = start_sim(args.items, args.rate)
        try:
            sim = psutil.Process(sim_proc.pid)
            log(f"simulator {url}: {args.items} nodes x {args.rate:g} Hz; broker port {broker.port}")
            for r in range(args.rounds):
                if not args.no_bare:
                    results.append(measure_bare(args, url, sim))
                work = Path(tmp) / f"round-{r}"
                work.mkdir()
                results.append(measure_cellctl(args, url, sim, broker.port, work))
        finally:
            sim_proc.send_signal(signal.SIGTERM)
            try:
                sim_proc.wait(15)
            except subprocess.TimeoutExpired:
                sim_proc.kill()
                sim_proc.wait(5)
    startup = startup_figures()
    if args.json:
        figures = [{k: v for k, v in asdict(f).items() if k != "latencies_ms"} for f in results]
        print(json.dumps({"figures": figures, "startup": startup}, indent=2))
        return 0
    print(f"\n{args.items} monitored items x {args.rate:g} Hz, publishing interval {args.interval * 1000:g} ms, "
          f"{args.duration:g} s windows")
    print(f"{'client':<14}{'values/s':>10}{'offered':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'CPU %':>8}{'RSS MB':>8}{'sim CPU %':>11}")
    for f in results:
        print(f"{f.client:<14}{f.values_per_s:>10.0f}{f.offered_per_s:>10.0f}{f.lat_p50_ms:>9.1f}{f.lat_p99_ms:>9.1f}"
              f"{f.lat_max_ms:>9.1f}{f.cpu_pct:>8.1f}{f.rss_peak_mb:>8.1f}{f.sim_cpu_pct:>11.1f}")
    pooled: dict[str, dict[str, float]] = {}
    for name in ("bare asyncua", "cellctl"):
        rows = [f for f in results if f.client == name]
        if rows:
            lat = [x for f in rows for x in f.latencies_ms or []]
            pooled[name] = {
                "p50": pct(lat, 0.5),
                "p99": pct(lat, 0.99),
                "cpu": statistics.median(f.cpu_pct for f in rows),
            }
            print(f"{name + ' (all)':<22} p50 {pooled[name]['p50']:.1f} ms  p99 {pooled[name]['p99']:.1f} ms  "
                  f"CPU (median) {pooled[name]['cpu']:.1f} %  over {len(lat)} values")
    if len(pooled) == 2:
        c, b = pooled["cellctl"], pooled["bare asyncua"]
        print(f"cellctl - bare (pooled over {args.rounds} round(s)): p50 {c['p50'] - b['p50']:+.1f} ms, "
              f"p99 {c['p99'] - b['p99']:+.1f} ms, CPU {c['cpu'] - b['cpu']:+.1f} points")
    print("start-up: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in startup.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
