"""End-to-end benchmark of the Modbus pipeline: simulated devices -> cellctl -> mosquitto -> subscriber.

Why end to end: the figures that matter on an edge PC (values/s delivered, change-to-receipt
latency, CPU and memory of the daemon) depend on every hop, and a micro-benchmark of one
function cannot show when the simulator or the broker, not the daemon, is the limit. So
every process runs for real, each in its own process on 127.0.0.1, and every one of them
has its CPU measured.

Each scenario runs twice against the same simulators, broker and subscriber: once with
`cellctl run`, once with a bare loop (pymodbus -> orjson -> paho, one message per device
scan) as the baseline, so results can also be quoted as ratios on a noisy shared machine.

    .venv/bin/python bench/modbus_pipeline.py                      # every scenario
    .venv/bin/python bench/modbus_pipeline.py --scenario steady --json
    .venv/bin/python bench/modbus_pipeline.py --scenario throughput --profile /tmp/prof.txt

See bench/README.md for what each figure means and the measured results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import IO, Any

import orjson
import psutil
import yaml

from cellctl.localbroker import Mosquitto

HOST = "127.0.0.1"
PREFIX = "uns/v1"
IDENTITY = {"enterprise": "bench", "site": "lab", "area": "a1", "line": "l1", "cell": "c1"}
ROOT = "/".join([PREFIX, *IDENTITY.values()])
# the daemon's Sparkplug ids, by default from the identity: <enterprise>-<site>-<area>, <line>-<cell>
SPB_GROUP = "bench-lab-a1"
SPB_NODE = "l1-c1"
FORMATS = {"uns": ["uns"], "sparkplug": ["sparkplug"], "both": ["uns", "sparkplug"]}
BENCH_VALUE_REGISTERS = 96  # r004..r099 of the sim's bench device type
STAMP_REGISTERS = 4  # stamp_us, uint64 in holding 0..3
MAX_LATENCY_SAMPLES = 2_000_000  # bounds the subscriber's memory on long runs
CHILD_MAX_RUNTIME = 4 * 3600.0  # child roles exit on their own after this, whatever happens
RSS_SAMPLE_PERIOD = 0.2

# ------------------------------------------------------------------------------------
# scenarios
# ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One preset; command-line flags override single fields."""

    name: str
    devices: int = 10
    points: int = BENCH_VALUE_REGISTERS  # value registers per device, plus stamp_us
    interval: float = 0.01  # poll interval, s
    tick: float = 0.001  # simulator tick, s
    duration: float = 10.0  # measuring window, s
    warmup: float = 3.0  # s after the first values arrive
    mode: str = "batched"
    fmt: str = "uns"  # publish.formats of the daemon: uns, sparkplug or both (the baseline is UNS JSON)
    qos: int = 1
    devices_per_sim: int = 5  # devices per simulator process (one TCP port each)
    startup_runs: int = 0  # > 0: measure start-up time this many times instead of a window
    commit_gather: str | None = None  # the daemon's outbox.commit_gather (None: its default)
    description: str = ""

    @property
    def values_per_scan(self) -> int:
        return self.points + 1

    @property
    def offered_values_per_s(self) -> float:
        return self.devices * self.values_per_scan / self.interval


PRESETS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "throughput",
            interval=0.001,
            description="10 devices x 100 registers, poll 1 ms (unthrottled), every value changing every scan",
        ),
        Scenario("steady", description="10 devices x 100 registers at 10 ms: about 100,000 values/s offered"),
        Scenario(
            "idle",
            interval=1.0,
            duration=30.0,
            description="10 devices at 1 s: what a quiet cell costs (every value still changes each scan)",
        ),
        Scenario("per_point", mode="per_point", description="steady, with publish.mode per_point"),
        Scenario(
            "startup",
            startup_runs=5,
            description="spawn to first data message at the subscriber, median of several runs",
        ),
    )
}

# Targets from the project brief: (scenario, figure key, comparison, limit, text).
TARGETS: list[tuple[str, str, str, float, str]] = [
    ("throughput", "values_per_s", ">=", 500_000, ">= 500,000 values/s with 10 x 100 unthrottled"),
    ("steady", "cpu_pct", "<=", 20.0, "<= 20 % of one core at 100,000 values/s"),
    ("steady", "rss_peak_mb", "<=", 40.0, "<= 40 MB RSS at 100,000 values/s"),
    ("steady", "lat_p99_ms", "<=", 5.0, "p99 latency <= 5 ms at 100,000 values/s"),
    ("idle", "cpu_pct", "<=", 0.5, "<= 0.5 % of one core with 10 devices at 1 s"),
    ("startup", "startup_median_ms", "<=", 300.0, "start-up to first publish <= 300 ms"),
]


def log(msg: str) -> None:
    """Progress goes to stderr so that --json output stays clean."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------
# subscriber role (its own process): counts values and latency of what arrives
# ------------------------------------------------------------------------------------


class SubStats:
    """What the subscriber saw since the last reset. Latency samples are the receipt
    wall clock minus the simulator's stamp_us carried in the same message."""

    def __init__(self, per_point: bool, fmt: str = "uns") -> None:
        self.per_point = per_point
        # --format both: values are counted from the UNS messages; the Sparkplug ones are
        # counted apart (spb_*), so values/s and CPU per value stay comparable
        self.spb_counts_as_values = fmt != "both"
        self.last_seq: dict[bytes, int] = {}
        self.last_stamp: dict[bytes, int] = {}
        self.stamp_alias: dict[bytes, int] = {}  # Sparkplug device -> alias of stamp_us (DBIRTH)
        self.reset()

    def reset(self) -> None:
        self.t0 = time.monotonic()
        self.msgs = 0
        self.values = 0
        self.stale = 0  # scans that carried the same stamp as the previous one (nothing new)
        self.lost = 0  # gaps in `seq`
        self.other = 0  # messages without values (quality-only, points without "v")
        self.latencies: list[int] = []
        self.first_rx_us: int | None = None
        self.spb_msgs = 0
        self.spb_values = 0

    def on_message(self, topic: bytes, payload: bytes | bytearray, rx_us: int) -> None:
        if topic.startswith(b"spBv1.0/"):
            self._on_sparkplug(topic, payload, rx_us)
        elif self.per_point:
            self._on_point(topic, payload, rx_us)
        else:
            self._on_data(topic, payload, rx_us)

    def _on_data(self, topic: bytes, payload: bytes | bytearray, rx_us: int) -> None:
        msg = orjson.loads(payload)
        seq = msg.get("seq")
        if isinstance(seq, int):
            prev = self.last_seq.get(topic)
            if prev is not None and seq > prev + 1:
                self.lost += seq - prev - 1
            self.last_seq[topic] = seq
        values = msg.get("values")
        if not values:
            self.other += 1
            return
        stamp = values.get("stamp_us")
        if stamp is not None and not self._take_stamp(topic, stamp, rx_us):
            return
        self.msgs += 1
        self.values += len(values)
        if self.first_rx_us is None:
            self.first_rx_us = rx_us

    def _take_stamp(self, topic: bytes, stamp: int, rx_us: int) -> bool:
        """A scan's stamp: False (counted stale) when it repeats the topic's last one,
        else its latency is recorded (up to MAX_LATENCY_SAMPLES)."""
        if self.last_stamp.get(topic) == stamp:
            self.stale += 1
            return False
        self.last_stamp[topic] = stamp
        if len(self.latencies) < MAX_LATENCY_SAMPLES:
            self.latencies.append(rx_us - stamp)
        return True

    def _on_sparkplug(self, topic: bytes, payload: bytes | bytearray, rx_us: int) -> None:
        """DDATA carries metrics by alias: the DBIRTH (sent after the subscriber is up)
        says which alias is stamp_us. Sparkplug's seq is per node (0..255): not checked."""
        parts = topic.split(b"/")
        if len(parts) != 5:
            return
        from cellctl.sparkplug import sparkplug_b_pb2 as pb

        kind, device = parts[2], parts[4]
        msg = pb.Payload.FromString(bytes(payload))
        if kind == b"DBIRTH":
            for m in msg.metrics:
                if m.name == "stamp_us":
                    self.stamp_alias[device] = m.alias
            return
        if kind != b"DDATA":
            return
        n = len(msg.metrics)
        self.spb_msgs += 1
        self.spb_values += n
        if not self.spb_counts_as_values:
            return
        alias = self.stamp_alias.get(device)
        for m in msg.metrics:
            if alias is not None and m.alias == alias:
                if not self._take_stamp(topic, m.long_value or m.int_value, rx_us):
                    return
                break
        self.msgs += 1
        self.values += n
        if self.first_rx_us is None:
            self.first_rx_us = rx_us

    def _on_point(self, topic: bytes, payload: bytes | bytearray, rx_us: int) -> None:
        if b'"v":' not in payload:
            self.other += 1
            return
        if topic.endswith(b"/stamp_us"):
            stamp = orjson.loads(payload)["v"]
            if self.last_stamp.get(topic) == stamp:
                self.stale += 1
                return
            self.last_stamp[topic] = stamp
            if len(self.latencies) < MAX_LATENCY_SAMPLES:
                self.latencies.append(rx_us - stamp)
        self.msgs += 1
        self.values += 1
        if self.first_rx_us is None:
            self.first_rx_us = rx_us

    def report(self) -> dict[str, Any]:
        window = time.monotonic() - self.t0
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return lat[min(len(lat) - 1, math.ceil(p / 100 * len(lat)) - 1)] / 1000

        return {
            "type": "report",
            "window_s": window,
            "msgs": self.msgs,
            "values": self.values,
            "stale": self.stale,
            "lost": self.lost,
            "other": self.other,
            "lat_n": len(lat),
            "lat_p50_ms": pct(50),
            "lat_p99_ms": pct(99),
            "lat_max_ms": lat[-1] / 1000 if lat else None,
            "first_rx_us": self.first_rx_us,
            "spb_msgs": self.spb_msgs,
            "spb_values": self.spb_values,
        }


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _mqtt_str(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def _mqtt_packet(first: int, body: bytes) -> bytes:
    n, rl = len(body), bytearray()
    while True:
        byte, n = n % 128, n // 128
        rl.append(byte | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(rl) + body


class RawSubscriber:
    """A minimal MQTT 3.1.1 QoS 0 subscriber on a plain socket.

    Why not paho here: paho costs tens of microseconds of Python per message, so at the
    message rates of per_point mode the subscriber, not the daemon, would be measured. This
    one parses PUBLISH frames straight out of large reads and stamps every frame of a read
    with the time the read returned."""

    def __init__(self, port: int, topics: Sequence[str], client_id: str) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.sendall(
            _mqtt_packet(0x10, _mqtt_str("MQTT") + bytes([4, 0x02, 0, 60]) + _mqtt_str(client_id))
        )
        connack = self._recv_exact(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"broker refused the subscriber: {connack!r}")
        body = b"\x00\x01" + b"".join(_mqtt_str(t) + b"\x00" for t in topics)
        self.sock.sendall(_mqtt_packet(0x82, body))
        suback = self._recv_exact(4 + len(topics))  # header, packet id, one code per topic
        if suback[0] != 0x90 or 0x80 in suback[4:]:
            raise RuntimeError(f"broker refused the subscription: {suback!r}")
        self.sock.setblocking(False)
        self.buf = bytearray()

    def _recv_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise RuntimeError("broker closed the connection")
            out += chunk
        return out

    def ping(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self.sock.send(b"\xc0\x00")

    def read(self, stats: SubStats) -> bool:
        """Read what is there and hand each PUBLISH to `stats`; False when the broker closed."""
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return True
        if not data:
            return False
        rx_us = time.time_ns() // 1000
        buf = self.buf
        buf += data
        n, i = len(buf), 0
        while i < n:
            b0, j, mult, rl = buf[i], i + 1, 1, 0
            complete = False
            while j < n:
                c = buf[j]
                j += 1
                rl += (c & 0x7F) * mult
                mult <<= 7
                if c < 0x80:
                    complete = True
                    break
            end = j + rl
            if not complete or end > n:
                break
            if b0 >> 4 == 3:  # PUBLISH
                tl = (buf[j] << 8) | buf[j + 1]
                p = j + 2 + tl
                topic = bytes(buf[j + 2 : p])
                if b0 & 0x06:  # QoS > 0 carries a packet id (not expected: we subscribe at 0)
                    p += 2
                stats.on_message(topic, buf[p:end], rx_us)
            i = end
        del buf[:i]
        return True


def run_subscriber(args: argparse.Namespace) -> int:
    """Child role: subscribe, then obey `reset`/`report`/`quit` lines on stdin.

    Prints JSON lines: `ready` once subscribed, `first` at the first value after a reset
    (for start-up timing), `report` on request."""
    per_point = args.mode == "per_point"
    topics = [f"{ROOT}/+/points/+"] if per_point else [f"{ROOT}/+/data"]
    fmt = args.format or "uns"
    if fmt != "uns":
        topics += [f"spBv1.0/{SPB_GROUP}/DDATA/{SPB_NODE}/+", f"spBv1.0/{SPB_GROUP}/DBIRTH/{SPB_NODE}/+"]
    stats = SubStats(per_point, fmt)
    lock = threading.Lock()
    announced = [False]
    epoch = [0]  # set by `reset N`; echoed so the orchestrator never takes an old answer

    def check_first() -> None:
        if not announced[0] and stats.first_rx_us is not None:
            announced[0] = True
            _emit({"type": "first", "epoch": epoch[0], "rx_us": stats.first_rx_us})

    def command(line: str) -> bool:
        cmd, _, arg = line.strip().partition(" ")
        with lock:
            if cmd == "reset":
                stats.reset()
                announced[0] = False
                epoch[0] = int(arg or 0)
            elif cmd == "report":
                _emit({**stats.report(), "epoch": epoch[0]})
            elif cmd == "quit":
                return False
        return True

    parent = os.getppid()
    deadline = time.monotonic() + CHILD_MAX_RUNTIME
    client_id = f"bench-sub-{os.getpid()}"
    if args.subscriber == "paho":
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            rx_us = time.time_ns() // 1000
            with lock:
                stats.on_message(msg.topic.encode(), msg.payload, rx_us)
                check_first()

        client.on_message = on_message
        client.connect(HOST, args.broker_port, keepalive=60)
        client.subscribe([(t, 0) for t in topics])
        client.loop_start()
        try:
            time.sleep(0.2)  # SUBACK; a benchmark warm-up follows anyway
            _emit({"type": "ready"})
            for line in sys.stdin:  # EOF when the orchestrator goes away
                if not command(line) or time.monotonic() > deadline:
                    break
        finally:
            client.disconnect()
            client.loop_stop()
        return 0

    sub = RawSubscriber(args.broker_port, topics, client_id)
    sel = selectors.DefaultSelector()
    sel.register(sub.sock, selectors.EVENT_READ, "mqtt")
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "cmd")
    _emit({"type": "ready"})
    pending = b""
    last_ping = time.monotonic()
    try:
        while time.monotonic() < deadline and os.getppid() == parent:
            for key, _ in sel.select(timeout=1.0):
                if key.data == "mqtt":
                    if not sub.read(stats):
                        return 1
                    check_first()
                    continue
                chunk = os.read(sys.stdin.fileno(), 4096)
                if not chunk:
                    return 0
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if not command(line.decode()):
                        return 0
            if time.monotonic() - last_ping > 30:
                sub.ping()
                last_ping = time.monotonic()
    finally:
        sub.sock.close()
    return 0


# ------------------------------------------------------------------------------------
# baseline role (its own process): the bare loop the daemon is compared with
# ------------------------------------------------------------------------------------


def run_baseline(args: argparse.Namespace) -> int:
    """Child role: pymodbus reads -> orjson -> paho publish, one message per device scan
    (plus one per value in per_point mode), same topics and payload shape as cellctl."""
    import asyncio

    spec = json.loads(args.spec)
    return asyncio.run(_baseline(spec))


async def _baseline(spec: dict[str, Any]) -> int:
    import asyncio

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from pymodbus.client import AsyncModbusTcpClient

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    qos, interval, points = spec["qos"], spec["interval"], spec["points"]
    per_point = spec["mode"] == "per_point"
    names = [f"r{i:03d}" for i in range(STAMP_REGISTERS, STAMP_REGISTERS + points)]
    count = STAMP_REGISTERS + points

    mqtt = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bench-base-{os.getpid()}"
    )
    mqtt.max_inflight_messages_set(200)  # as cellctl's MqttSession

    def on_connect(client: Any, *_: Any) -> None:
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    mqtt.on_connect = on_connect
    mqtt.connect(HOST, spec["broker_port"], keepalive=30)
    mqtt.loop_start()
    clients: dict[int, Any] = {}
    for port in sorted({d["port"] for d in spec["devices"]}):
        c = AsyncModbusTcpClient(HOST, port=port, reconnect_delay=0, retries=0, timeout=1)
        if not await c.connect():
            raise RuntimeError(f"baseline cannot connect to the simulator on port {port}")
        clients[port] = c

    async def device(dev: dict[str, Any]) -> None:
        client, unit = clients[dev["port"]], dev["unit"]
        topic = f"{ROOT}/{dev['id']}/data"
        point_topics = {n: f"{ROOT}/{dev['id']}/points/{n}" for n in ["stamp_us", *names]}
        seq = 0
        next_at = time.monotonic()
        while not stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            rr = await client.read_holding_registers(0, count=count, device_id=unit)
            regs = rr.registers
            values: dict[str, int] = {
                "stamp_us": (regs[0] << 48) | (regs[1] << 32) | (regs[2] << 16) | regs[3]
            }
            values.update(zip(names, regs[STAMP_REGISTERS:], strict=True))
            seq += 1
            ts = time.time_ns() // 1_000_000
            mqtt.publish(topic, orjson.dumps({"ts": ts, "seq": seq, "values": values}), qos)
            if per_point:
                for name, v in values.items():
                    mqtt.publish(point_topics[name], orjson.dumps({"v": v, "ts": ts, "q": "good"}), qos, True)
            next_at += interval
            next_at = max(next_at, time.monotonic())  # overran: skip, do not burst (as cellctl)

    async def watch_parent() -> None:
        parent = os.getppid()
        deadline = time.monotonic() + CHILD_MAX_RUNTIME
        while os.getppid() == parent and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
                return
        stop.set()

    tasks = [asyncio.create_task(device(d)) for d in spec["devices"]]
    watcher = asyncio.create_task(watch_parent())
    try:
        await stop.wait()
    finally:
        for t in [*tasks, watcher]:
            t.cancel()
        await asyncio.gather(*tasks, watcher, return_exceptions=True)
        for c in clients.values():
            c.close()
        mqtt.disconnect()
        mqtt.loop_stop()
    failed = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
    for exc in failed:
        print(f"baseline device task failed: {exc!r}", file=sys.stderr)
    return 1 if failed else 0


# ------------------------------------------------------------------------------------
# orchestrator: processes, measurement, reporting
# ------------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """SIGTERM by PID (what systemd does), SIGKILL if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"pid {proc.pid} ignored SIGTERM for {timeout:g} s; killing it")
        proc.kill()
        proc.wait(timeout)


class LineReader:
    """Lines of a child's stdout on a queue, so every read can be bounded in time."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def get(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no output within {timeout:g} s") from None
        if line is None:
            raise RuntimeError("the child process closed its output")
        return line


class SubscriberProc:
    """The subscriber child and its line protocol."""

    def __init__(self, broker_port: int, mode: str, kind: str, logdir: Path, fmt: str = "uns") -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "subscriber", "--mode", mode]
        cmd += ["--format", fmt]
        cmd += ["--subscriber", kind, "--broker-port", str(broker_port)]
        self.stderr = (logdir / "subscriber.log").open("wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        assert self.proc.stdout is not None
        self.reader = LineReader(self.proc.stdout)
        self.epoch = 0
        self.expect("ready", 15.0)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"subscriber: no {kind!r} within {timeout:g} s")
            msg: dict[str, Any] = json.loads(self.reader.get(left))
            if msg.get("type") == kind and msg.get("epoch", self.epoch) == self.epoch:
                return msg

    def reset(self) -> None:
        """Start counting afresh; answers to earlier resets are ignored from now on."""
        self.epoch += 1
        self.send(f"reset {self.epoch}")

    def report(self, timeout: float = 30.0) -> dict[str, Any]:
        self.send("report")
        return self.expect("report", timeout)

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send("quit")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(3.0)
        stop_process(self.proc)
        self.stderr.close()


@dataclass
class SimProc:
    proc: subprocess.Popen[bytes]
    port: int
    units: int


@dataclass
class Rig:
    """Everything that stays up for one scenario: broker, simulators, subscriber."""

    scenario: Scenario
    workdir: Path
    broker: Mosquitto
    sims: list[SimProc] = field(default_factory=list)
    subscriber: SubscriberProc | None = None
    logs: list[IO[bytes]] = field(default_factory=list)

    def devices(self) -> list[dict[str, Any]]:
        """(id, port, unit) of every simulated device, in order."""
        out, k = [], 0
        for sim in self.sims:
            for unit in range(1, sim.units + 1):
                k += 1
                out.append({"id": f"dev{k:02d}", "port": sim.port, "unit": unit})
        return out


def start_sim(units: int, tick: float, logfile: IO[bytes]) -> SimProc:
    """One simulator process on a free loopback port; waits for its `tcp HOST:PORT` line."""
    cmd = [sys.executable, "-m", "cellctl_sim.modbus", "--tcp", f"{HOST}:0", "--units-bench", str(units)]
    cmd += ["--tick", f"{tick:g}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logfile, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    reader = LineReader(proc.stdout)
    try:
        line = reader.get(20.0)
    except (TimeoutError, RuntimeError):
        stop_process(proc)
        raise
    m = re.match(r"tcp \S+:(\d+) units", line)
    if not m:
        stop_process(proc)
        raise RuntimeError(f"unexpected simulator output: {line!r}")
    return SimProc(proc, int(m.group(1)), units)


@contextlib.contextmanager
def rig(scenario: Scenario, workdir: Path, subscriber: str) -> Iterator[Rig]:
    """Start broker, simulators and subscriber; stop every one of them by PID on exit."""
    broker = Mosquitto(host=HOST)
    r = Rig(scenario, workdir, broker)
    try:
        broker.start()
        remaining, n = scenario.devices, 0
        while remaining > 0:
            units = min(scenario.devices_per_sim, remaining)
            logfile = (workdir / f"sim{n}.log").open("wb")
            r.logs.append(logfile)
            r.sims.append(start_sim(units, scenario.tick, logfile))
            remaining -= units
            n += 1
        r.subscriber = SubscriberProc(broker.port, scenario.mode, subscriber, workdir, scenario.fmt)
        yield r
    finally:
        if r.subscriber is not None:
            r.subscriber.stop()
        for sim in r.sims:
            stop_process(sim.proc)
        broker.cleanup()
        for f in r.logs:
            f.close()


def write_cell_config(r: Rig) -> Path:
    """The daemon's config: the sim-bench profile with the unused value registers disabled."""
    s = r.scenario
    disabled = [
        f"r{i:03d}" for i in range(STAMP_REGISTERS + s.points, STAMP_REGISTERS + BENCH_VALUE_REGISTERS)
    ]
    devices = [
        {
            "id": d["id"],
            "driver": "modbus",
            "profile": "sim-bench",
            "connection": {"transport": "tcp", "host": HOST, "port": d["port"], "unit": d["unit"]},
            "poll_interval": f"{s.interval * 1000:g}ms",
            "timeout": "1s",
            **({"disabled_points": disabled} if disabled else {}),
        }
        for d in r.devices()
    ]
    config = {
        "identity": IDENTITY,
        "state_dir": str(r.workdir / "state"),  # the outbox: per run, never /var/lib/cellctl
        "backbone": {"host": HOST, "port": r.broker.port, "qos": s.qos},
        "publish": {"prefix": PREFIX, "mode": s.mode, "formats": FORMATS[s.fmt]},
        "devices": devices,
    }
    if s.commit_gather is not None:
        config["outbox"] = {"commit_gather": s.commit_gather}
    path = r.workdir / "cell.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def daemon_command(config: Path) -> list[str]:
    exe = Path(sys.executable).parent / "cellctl"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "cellctl.cli.main"]
    return [*base, "run", str(config)]


def baseline_command(r: Rig) -> list[str]:
    s = r.scenario
    spec = {
        "broker_port": r.broker.port,
        "devices": r.devices(),
        "points": s.points,
        "interval": s.interval,
        "mode": s.mode,
        "qos": s.qos,
    }
    # imported as a module rather than run as a script, so its bytecode is cached like the
    # daemon's (a script's code is compiled at every start: ~15 ms for this file)
    here = Path(__file__).resolve()
    entry = f"import sys; sys.path.insert(0, {str(here.parent)!r}); import {here.stem}; sys.exit({here.stem}.main())"
    return [sys.executable, "-c", entry, "--role", "baseline", "--spec", json.dumps(spec)]


def compile_sources() -> None:
    """Byte-compile the daemon's packages and this script once, as `pip install` does for an
    installed package. With PYTHONDONTWRITEBYTECODE set (as on the CI and agent machines)
    and an editable install, every start would otherwise compile cellctl and its Modbus
    driver from source: about 70-90 ms of start-up and 1 MB of RSS that an installed daemon
    does not pay. compileall writes the caches whatever that variable says."""
    import compileall
    import importlib.util

    dirs = [Path(__file__).resolve().parent]
    for name in ("cellctl", "cellctl_modbus"):
        spec = importlib.util.find_spec(name)
        dirs += [Path(d) for d in (spec.submodule_search_locations or [])] if spec else []
    for d in dirs:
        compileall.compile_dir(d, quiet=1, workers=1)


def _cpu_s(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
    except psutil.Error:
        return math.nan
    return float(t.user + t.system)


def _thread_cpu_s(p: psutil.Process) -> dict[int, float]:
    """CPU seconds per thread: the main (asyncio) thread's id is the PID; the others
    are paho's network thread and asyncio's executor threads."""
    try:
        return {t.id: t.user_time + t.system_time for t in p.threads()}
    except psutil.Error:
        return {}


def _machine_busy_s() -> tuple[float, float]:
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle, sum(t)


def _vm_hwm_mb(pid: int) -> float | None:
    """Peak RSS since the process started (includes start-up), from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _daemon_counters(logfile: Path) -> dict[str, int]:
    """`published`, `dropped` and the outbox commits from the daemon's stop log line, if it wrote one."""
    text = logfile.read_text(errors="replace") if logfile.exists() else ""
    out = {}
    for key in ("published", "dropped", "outbox_commits", "outbox_committed"):
        found = re.findall(rf"\b{key}\W{{1,3}}(\d+)", text)
        if found:
            out[key] = int(found[-1])
    return out


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class Profiler:
    """py-spy on the daemon during the measuring window (collapsed stacks, which
    speedscope.app opens as they are).

    Default: every thread that is on a CPU, with `--nonblocking`: py-spy's default pauses
    the process for every sample, and (measured here) then counts threads waiting in
    select()/epoll as busy, so idle threads would swamp the figures. `gil=True` samples
    only the thread holding the GIL, i.e. Python execution without system-call time; that
    mode pauses the process for whole, consistent stacks (idle threads do not matter)."""

    def __init__(self, pid: int, duration: float, out: Path, rate: int, *, gil: bool = False) -> None:
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if exe is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.out = out
        cmd = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(duration))),
            "--rate",
            str(rate),
        ]
        cmd += ["--gil"] if gil else ["--nonblocking"]
        cmd += ["--format", "raw", "--output", str(out)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finish(self, timeout: float) -> None:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
            raise RuntimeError("py-spy did not finish") from None
        if self.proc.returncode != 0 or not self.out.exists():
            raise RuntimeError(
                f"py-spy failed ({self.proc.returncode}): {err.decode(errors='replace')[-500:]}"
            )


_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('fn')} ({path})"


# Where a frame's file lives -> the layer it belongs to, for the per-layer summary.
_LAYERS: list[tuple[str, str]] = [
    ("paho/", "paho-mqtt"),
    ("pymodbus/", "pymodbus"),
    ("cellctl_modbus/", "cellctl-modbus driver"),
    ("cellctl/engine/", "cellctl engine"),
    ("cellctl/encode/", "cellctl encode"),
    ("cellctl/deliver/", "cellctl deliver"),
    ("asyncio/", "asyncio"),
    ("selectors.py", "asyncio"),
    ("threading.py", "threads"),
]
# Frames that only wrap everything (entry point, click, asyncio.run): useless as hot spots.
_WRAPPERS = (
    "cellctl/cli/",
    "click/",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
    "threading.py",
    "<module>",
)


def _layer(frame: str) -> str:
    return next((name for marker, name in _LAYERS if marker in frame), "other")


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Self time (leaf frame), inclusive time per function and self time per layer from
    py-spy's collapsed stacks, in % of the samples in which a thread was active (py-spy
    leaves out threads waiting in a system call, so these are shares of CPU time)."""
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += count
        self_t[frames[-1]] += count
        layers[_layer(frames[-1])] += count
        for name in set(frames):
            if not any(w in name for w in _WRAPPERS):
                incl[name] += count
    if not total:
        return {"samples": 0, "self": [], "inclusive": [], "layers": []}

    def rows(c: Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, 100.0 * n / total) for name, n in c.most_common(k)]

    return {
        "samples": total,
        "self": rows(self_t, top),
        "inclusive": rows(incl, top),
        "layers": rows(layers, len(layers)),
    }


@dataclass
class Phase:
    """Figures of one subject (cellctl or the baseline) in one window."""

    subject: str
    values_per_s: float = 0.0
    msgs_per_s: float = 0.0
    lat_p50_ms: float | None = None
    lat_p99_ms: float | None = None
    lat_max_ms: float | None = None
    lat_n: int = 0
    stale: int = 0
    lost: int = 0
    cpu_pct: float = 0.0
    cpu_main_thread_pct: float = 0.0  # the asyncio loop
    cpu_other_threads_pct: float = 0.0  # paho's network thread (and any executor threads)
    cpu_us_per_value: float | None = None
    rss_peak_mb: float = 0.0
    rss_hwm_mb: float | None = None
    sim_cpu_pct: float = 0.0
    sim_cpu_max_pct: float = 0.0
    broker_cpu_pct: float = 0.0
    subscriber_cpu_pct: float = 0.0
    machine_cpu_pct: float = 0.0  # of all cores together (200 % on 2 cores)
    window_s: float = 0.0
    spb_values_per_s: float = 0.0  # Sparkplug DDATA metrics/s (--format sparkplug|both)
    daemon_log: dict[str, int] = field(default_factory=dict)
    startup_ms: list[float] = field(default_factory=list)
    startup_median_ms: float | None = None
    # CPU time (all threads) the subject had used when its first message arrived: on a
    # loaded machine the wall time swings with the load, the CPU a start costs hardly does
    startup_cpu_ms: list[float] = field(default_factory=list)
    startup_cpu_median_ms: float | None = None


def _spawn(cmd: list[str], logpath: Path) -> subprocess.Popen[bytes]:
    with logpath.open("wb") as logf:
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _check_alive(proc: subprocess.Popen[bytes], subject: str, logpath: Path) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"{subject} exited with {proc.returncode}:\n{_tail(logpath)}")


def measure_window(
    r: Rig,
    subject: str,
    cmd: list[str],
    *,
    tag: str,
    profile: Path | None = None,
    profile_rate: int = 200,
    profile_gil: bool = False,
) -> Phase:
    """Spawn the subject, wait for values, warm up, then measure for `duration`."""
    s, sub = r.scenario, r.subscriber
    assert sub is not None
    logpath = r.workdir / f"{tag}.log"
    proc = _spawn(cmd, logpath)
    result = Phase(subject)
    try:
        sub.reset()
        deadline = time.monotonic() + 30.0
        while True:  # bounded: 30 s for the first value
            try:
                sub.expect("first", 0.5)
                break
            except TimeoutError:
                _check_alive(proc, subject, logpath)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{subject}: no values at the subscriber within 30 s") from None
        time.sleep(s.warmup)
        _check_alive(proc, subject, logpath)
        target = psutil.Process(proc.pid)
        sims = [psutil.Process(x.proc.pid) for x in r.sims]
        broker = psutil.Process(r.broker.pid) if r.broker.pid else None
        subp = psutil.Process(sub.pid)
        procs = [target, *sims, *([broker] if broker else []), subp]
        sub.reset()
        prof = Profiler(proc.pid, s.duration, profile, profile_rate, gil=profile_gil) if profile else None
        t0 = time.monotonic()
        cpu0 = [_cpu_s(p) for p in procs]
        threads0 = _thread_cpu_s(target)
        busy0, total0 = _machine_busy_s()
        rss_peak = 0
        end = t0 + s.duration
        while (now := time.monotonic()) < end:
            with contextlib.suppress(psutil.Error):
                rss_peak = max(rss_peak, target.memory_info().rss)
            time.sleep(min(RSS_SAMPLE_PERIOD, max(0.0, end - now)))
        _check_alive(proc, subject, logpath)
        cpu1 = [_cpu_s(p) for p in procs]
        threads1 = _thread_cpu_s(target)
        busy1, total1 = _machine_busy_s()
        wall = time.monotonic() - t0
        rep = sub.report()
        result.rss_hwm_mb = _vm_hwm_mb(proc.pid)
        if prof is not None:
            prof.finish(timeout=s.duration + 30)
    finally:
        stop_process(proc)
    pct = [100.0 * (b - a) / wall for a, b in zip(cpu0, cpu1, strict=True)]
    n_sims = len(sims)
    result.cpu_pct = pct[0]
    main_s = threads1.get(proc.pid, 0.0) - threads0.get(proc.pid, 0.0)
    other_s = sum(v - threads0.get(k, 0.0) for k, v in threads1.items() if k != proc.pid)
    result.cpu_main_thread_pct = 100.0 * main_s / wall
    result.cpu_other_threads_pct = 100.0 * other_s / wall
    result.sim_cpu_pct = sum(pct[1 : 1 + n_sims])
    result.sim_cpu_max_pct = max(pct[1 : 1 + n_sims])
    result.broker_cpu_pct = pct[1 + n_sims] if broker else math.nan
    result.subscriber_cpu_pct = pct[-1]
    ncpu = psutil.cpu_count() or 1
    result.machine_cpu_pct = 100.0 * ncpu * (busy1 - busy0) / max(1e-9, total1 - total0)
    result.window_s = rep["window_s"]
    result.values_per_s = rep["values"] / rep["window_s"]
    result.msgs_per_s = rep["msgs"] / rep["window_s"]
    result.spb_values_per_s = rep.get("spb_values", 0) / rep["window_s"]
    result.lat_p50_ms, result.lat_p99_ms, result.lat_max_ms = (
        rep["lat_p50_ms"],
        rep["lat_p99_ms"],
        rep["lat_max_ms"],
    )
    result.lat_n, result.stale, result.lost = rep["lat_n"], rep["stale"], rep["lost"]
    result.rss_peak_mb = rss_peak / (1 << 20)
    if rep["values"]:
        result.cpu_us_per_value = (pct[0] / 100.0 * wall) / rep["values"] * 1e6
    if subject == "cellctl":
        result.daemon_log = _daemon_counters(logpath)
    time.sleep(0.5)  # let the stopped subject's last messages drain before the next phase
    return result


def _cpu_ms(pid: int) -> float:
    """CPU time used so far by all threads of `pid` (schedstat: nanoseconds on a CPU)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e6


def measure_startup(r: Rig, subject: str, cmd: list[str], runs: int, tag: str) -> Phase:
    """Spawn -> first data message carrying values at the subscriber, `runs` times."""
    sub = r.subscriber
    assert sub is not None
    result = Phase(subject)
    for i in range(runs):
        logpath = r.workdir / f"{tag}-startup{i}.log"
        sub.reset()
        time.sleep(0.05)  # the reset is in before the spawn
        t0_us = time.time_ns() // 1000
        proc = _spawn(cmd, logpath)
        try:
            deadline = time.monotonic() + 30.0
            while True:
                try:
                    first = sub.expect("first", 0.5)
                    break
                except TimeoutError:
                    _check_alive(proc, subject, logpath)
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{subject}: no values within 30 s of spawning") from None
            result.startup_ms.append((first["rx_us"] - t0_us) / 1000)
            with contextlib.suppress(OSError):  # ended meanwhile: no figure
                result.startup_cpu_ms.append(_cpu_ms(proc.pid))
        finally:
            stop_process(proc)
        time.sleep(0.5)
    result.startup_median_ms = statistics.median(result.startup_ms)
    if result.startup_cpu_ms:
        result.startup_cpu_median_ms = statistics.median(result.startup_cpu_ms)
    return result


def median_phase(runs: list[Phase]) -> Phase:
    """Per figure, the median over rounds (start-up runs are pooled)."""
    if len(runs) == 1:
        return runs[0]
    out = Phase(runs[0].subject)
    for f in fields(Phase):
        vals = [getattr(x, f.name) for x in runs]
        if f.name in ("startup_ms", "startup_cpu_ms"):
            setattr(out, f.name, [v for x in runs for v in getattr(x, f.name)])
        elif f.name == "daemon_log":
            out.daemon_log = runs[-1].daemon_log
        elif f.name != "subject":
            nums = [v for v in vals if isinstance(v, int | float) and not math.isnan(v)]
            setattr(out, f.name, statistics.median(nums) if nums else None)
    if out.startup_ms:
        out.startup_median_ms = statistics.median(out.startup_ms)
    if out.startup_cpu_ms:
        out.startup_cpu_median_ms = statistics.median(out.startup_cpu_ms)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def run_scenario(s: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"cellctl-bench-{s.name}-"))
    log(f"scenario {s.name}: {s.description or 'custom'}; logs in {workdir}")
    try:
        with rig(s, workdir, args.subscriber) as r:
            config = write_cell_config(r)
            subjects: list[tuple[str, list[str]]] = [("cellctl", daemon_command(config))]
            if not args.no_baseline:
                subjects.append(("baseline", baseline_command(r)))
            rounds: dict[str, list[Phase]] = {name: [] for name, _ in subjects}
            profile = None
            for k in range(args.rounds):
                # ABBA order, so a slow drift of the shared machine hits both subjects alike
                for subject, cmd in subjects if k % 2 == 0 else subjects[::-1]:
                    tag = f"{subject}-r{k}"
                    if s.startup_runs:
                        log(f"  round {k + 1}/{args.rounds} {subject}: start-up, {s.startup_runs} runs")
                        rounds[subject].append(measure_startup(r, subject, cmd, s.startup_runs, tag))
                        continue
                    log(
                        f"  round {k + 1}/{args.rounds} {subject}: {s.warmup:g} s warm-up, {s.duration:g} s window"
                    )
                    prof = Path(args.profile) if args.profile and subject == "cellctl" and k == 0 else None
                    rounds[subject].append(
                        measure_window(
                            r,
                            subject,
                            cmd,
                            tag=tag,
                            profile=prof,
                            profile_rate=args.profile_rate,
                            profile_gil=args.profile_gil,
                        )
                    )
                    if prof is not None:
                        profile = summarize_profile(prof)
                        profile["file"] = str(prof)
                        profile["mode"] = "GIL holder only" if args.profile_gil else "all active threads"
            phases = {name: median_phase(runs) for name, runs in rounds.items()}
    finally:
        if args.keep:
            log(f"  kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    out: dict[str, Any] = {
        "scenario": s.name,
        "params": {
            **asdict(s),
            "values_per_scan": s.values_per_scan,
            "offered_values_per_s": s.offered_values_per_s,
        },
        **{k: asdict(v) for k, v in phases.items()},
    }
    if args.rounds > 1:
        out["rounds"] = {k: [asdict(x) for x in v] for k, v in rounds.items()}
    if "baseline" in phases:
        a, b = phases["cellctl"], phases["baseline"]
        out["ratios"] = {
            "values_per_s": _ratio(a.values_per_s, b.values_per_s),
            "lat_p50_ms": _ratio(a.lat_p50_ms, b.lat_p50_ms),
            "lat_p99_ms": _ratio(a.lat_p99_ms, b.lat_p99_ms),
            "cpu_pct": _ratio(a.cpu_pct, b.cpu_pct),
            "cpu_us_per_value": _ratio(a.cpu_us_per_value, b.cpu_us_per_value),
            "rss_peak_mb": _ratio(a.rss_peak_mb, b.rss_peak_mb),
            "startup_median_ms": _ratio(a.startup_median_ms, b.startup_median_ms),
            "startup_cpu_median_ms": _ratio(a.startup_cpu_median_ms, b.startup_cpu_median_ms),
        }
    out["targets"] = []
    for scen, key, op, limit, text in TARGETS:
        if scen != s.name:
            continue
        got = getattr(phases["cellctl"], key)
        ok = got is not None and (got >= limit if op == ">=" else got <= limit)
        out["targets"].append({"target": text, "value": got, "met": ok})
    if profile is not None:
        out["profile"] = profile
    return out


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000 or digits == 0:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


ROWS: list[tuple[str, str, int]] = [
    ("values/s delivered", "values_per_s", 0),
    ("messages/s delivered", "msgs_per_s", 0),
    ("latency p50 ms", "lat_p50_ms", 2),
    ("latency p99 ms", "lat_p99_ms", 2),
    ("latency max ms", "lat_max_ms", 2),
    ("latency samples", "lat_n", 0),
    ("seq gaps (lost msgs)", "lost", 0),
    ("stale scans", "stale", 0),
    ("CPU % of one core", "cpu_pct", 1),
    ("  main thread (asyncio)", "cpu_main_thread_pct", 1),
    ("  other threads (paho)", "cpu_other_threads_pct", 1),
    ("CPU us per value", "cpu_us_per_value", 3),
    ("Sparkplug metrics/s", "spb_values_per_s", 0),
    ("peak RSS MB (window)", "rss_peak_mb", 1),
    ("peak RSS MB (VmHWM)", "rss_hwm_mb", 1),
    ("sim CPU % (all procs)", "sim_cpu_pct", 1),
    ("sim CPU % (busiest)", "sim_cpu_max_pct", 1),
    ("broker CPU %", "broker_cpu_pct", 1),
    ("subscriber CPU %", "subscriber_cpu_pct", 1),
    ("machine CPU % (all cores)", "machine_cpu_pct", 0),
    ("start-up median ms", "startup_median_ms", 0),
    ("start-up CPU median ms", "startup_cpu_median_ms", 0),
]
STARTUP_ROWS = ("startup_median_ms", "startup_cpu_median_ms")


def print_result(res: dict[str, Any]) -> None:
    p = res["params"]
    print(
        f"\n== {res['scenario']}: {p['devices']} devices x {p['values_per_scan']} values, poll "
        f"{p['interval'] * 1000:g} ms, sim tick {p['tick'] * 1000:g} ms, {p['mode']}, {p['fmt']}, QoS {p['qos']}, "
        f"{p['devices_per_sim']} devices per sim process; offered {p['offered_values_per_s']:,.0f} values/s"
    )
    startup = bool(p["startup_runs"])
    a, b = res.get("cellctl", {}), res.get("baseline")
    ratios = res.get("ratios", {})
    print(f"{'':28}{'cellctl':>14}{'baseline':>14}{'ratio':>8}")
    for label, key, digits in ROWS:
        if startup != (key in STARTUP_ROWS):
            continue
        va = a.get(key)
        vb = b.get(key) if b else None
        ratio = ratios.get(key)
        print(f"{label:28}{_fmt(va, digits):>14}{_fmt(vb, digits):>14}{_fmt(ratio, 2):>8}")
    if startup:
        print(f"  runs ms: cellctl {', '.join(f'{x:.0f}' for x in a['startup_ms'])}", end="")
        if b:
            print(f"; baseline {', '.join(f'{x:.0f}' for x in b['startup_ms'])}", end="")
        print()
        if a.get("startup_cpu_ms"):
            print(f"  CPU ms: cellctl {', '.join(f'{x:.0f}' for x in a['startup_cpu_ms'])}", end="")
            if b and b.get("startup_cpu_ms"):
                print(f"; baseline {', '.join(f'{x:.0f}' for x in b['startup_cpu_ms'])}", end="")
            print()
    if a.get("daemon_log"):
        print(f"  daemon stop line: {a['daemon_log']}")
    for t in res["targets"]:
        print(f"  target {t['target']}: {_fmt(t['value'], 2)} -> {'met' if t['met'] else 'NOT met'}")
    prof = res.get("profile")
    if prof:
        print(f"  py-spy ({prof['mode']}): {prof['samples']} samples, collapsed stacks in {prof['file']}")
        print("  top self time (% of active samples):")
        for name, pct in prof["self"][:10]:
            print(f"    {pct:5.1f}  {name}")
        print("  top inclusive time:")
        for name, pct in prof["inclusive"][:15]:
            print(f"    {pct:5.1f}  {name}")
        print("  self time by layer:")
        for name, pct in prof["layers"]:
            print(f"    {pct:5.1f}  {name}")


def build_scenarios(args: argparse.Namespace) -> list[Scenario]:
    names = list(PRESETS) if args.scenario == "all" else [args.scenario]
    overrides = {
        k: getattr(args, k)
        for k in (
            "devices",
            "points",
            "interval",
            "tick",
            "duration",
            "warmup",
            "mode",
            "qos",
            "devices_per_sim",
            "commit_gather",
        )
        if getattr(args, k) is not None
    }
    if args.format is not None:
        overrides["fmt"] = args.format
    if args.startup_runs is not None:
        overrides["startup_runs"] = args.startup_runs
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    out = []
    for name in names:
        s = replace(PRESETS[name], **overrides)
        if not 1 <= s.points <= BENCH_VALUE_REGISTERS:
            raise SystemExit(f"--points must be 1..{BENCH_VALUE_REGISTERS}")
        if not 1 <= s.devices <= 247 or s.devices_per_sim < 1:
            raise SystemExit("--devices must be 1..247 and --devices-per-sim at least 1")
        if s.interval <= 0 or s.tick < 0.001 or s.duration <= 0:
            raise SystemExit("--interval and --duration must be > 0, --tick >= 0.001")
        out.append(s)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="End-to-end benchmark: simulated Modbus devices -> cellctl -> mosquitto -> subscriber, "
        "with a bare pymodbus/orjson/paho loop as baseline in the same run.",
    )
    ap.add_argument("--scenario", choices=[*PRESETS, "all"], default="all", help="preset (default: all)")
    ap.add_argument("--devices", type=int, help="simulated devices (N)")
    ap.add_argument(
        "--points", type=int, help=f"value registers per device, 1..{BENCH_VALUE_REGISTERS}, plus stamp_us"
    )
    ap.add_argument("--interval", type=float, help="poll interval, seconds (1 ms = 0.001: unthrottled)")
    ap.add_argument("--tick", type=float, help="simulator tick, seconds (>= 0.001)")
    ap.add_argument("--duration", type=float, help="measuring window, seconds")
    ap.add_argument("--warmup", type=float, help="seconds between the first value and the window")
    ap.add_argument(
        "--mode", choices=["batched", "per_point"], help="publish.mode of the daemon (and the baseline)"
    )
    ap.add_argument("--qos", type=int, choices=[0, 1], help="backbone.qos of the daemon and the baseline")
    ap.add_argument(
        "--commit-gather",
        choices=["round", "turn"],
        help="the daemon's outbox.commit_gather: one commit per poll round, or per loop turn",
    )
    ap.add_argument(
        "--format",
        choices=list(FORMATS),
        help="publish.formats of the daemon (default uns; both: values counted from UNS, "
        "Sparkplug apart); the baseline always publishes UNS JSON",
    )
    ap.add_argument("--devices-per-sim", type=int, help="devices per simulator process (default 5)")
    ap.add_argument("--startup-runs", type=int, help="start-up runs (startup scenario)")
    ap.add_argument("--rounds", type=int, default=1, help="alternate cellctl/baseline this often; medians")
    ap.add_argument("--subscriber", choices=["raw", "paho"], default="raw", help="subscriber implementation")
    ap.add_argument("--no-baseline", action="store_true", help="skip the baseline phase")
    ap.add_argument(
        "--profile", metavar="FILE", help="py-spy the daemon in the window; collapsed stacks to FILE"
    )
    ap.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument(
        "--profile-gil",
        action="store_true",
        help="sample only the thread holding the GIL (Python execution, no system-call time)",
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory with configs and logs")
    ap.add_argument(
        "--role",
        choices=["orchestrator", "subscriber", "baseline"],
        default="orchestrator",
        help=argparse.SUPPRESS,
    )
    ap.add_argument("--broker-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "subscriber":
        signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            return run_subscriber(args)
        except KeyboardInterrupt:
            return 0
    if args.role == "baseline":
        return run_baseline(args)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM runs the same cleanup as Ctrl-C
    results = []
    compile_sources()
    try:
        for s in build_scenarios(args):
            res = run_scenario(s, args)
            results.append(res)
            if not args.json:
                print_result(res)
                sys.stdout.flush()
    except KeyboardInterrupt:
        log("interrupted; everything started has been stopped")
        return 130
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
