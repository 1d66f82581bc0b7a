"""Chaos bench: the fault scenarios of issue 16, longer than CI allows, printing figures.

Every hop is real: a private mosquitto on a free loopback port, simulated Modbus devices
in this process (each on its own port, or several units behind one gateway port), and
`cellctl run` as a subprocess with a JSON log, so it can be killed with SIGKILL and its
RSS and file descriptors sampled. Figures are printed, never asserted; the functional
promises are asserted by tests/faults/ (this script reuses its accounting, hostile corpus
and garbage server). Every loop is bounded in time; only processes started here are
stopped, by PID.

    .venv/bin/python bench/chaos.py --quick                  # every scenario, ~3-4 minutes
    .venv/bin/python bench/chaos.py                          # 60 s outages, 10 min soak
    .venv/bin/python bench/chaos.py --scenario outage --outage-s 10 --devices 5 10

Scenarios: outage, kill9, isolation, hostile, soak; `logs` (tracebacks and non-JSON
lines in every daemon's log) is always reported last. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, modbus_device, root_topic, write_config
from cellctl.testing.sparkplug import Capture, SpMessage, metric_value

# the fault suite's accounting, corpus and raw garbage server (run from the repo root)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.faults.streams import Stream, streams
from tests.faults.test_hostile_commands import hostile_corpus
from tests.faults.test_modbus_garbage import GarbageServer

CELLCTL = [sys.executable, "-m", "cellctl.cli.main", "--log-format", "json"]
MODES = ("none", "silent", "exception", "drop_connection", "garbage", "slow_300ms")


# -- processes ---------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything a scenario run started, stopped by PID at the end."""

    dir: Path
    logs: list[Path] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, config: Path, log: Path) -> subprocess.Popen[bytes]:
        if log not in self.logs:
            self.logs.append(log)
        with log.open("ab") as out:
            p = subprocess.Popen([*CELLCTL, "run", str(config)], stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    @staticmethod
    def stop(p: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        return int(p.returncode)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                self.stop(p)


def log_health(logs: list[Path]) -> tuple[int, int, int]:
    """(lines, tracebacks, non-JSON lines) across daemon logs."""
    lines = tracebacks = non_json = 0
    for path in logs:
        if not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            lines += 1
            tracebacks += b"Traceback (most recent call last)" in line
            try:
                ok = isinstance(orjson.loads(line), dict)
            except orjson.JSONDecodeError:
                ok = False
            non_json += not ok
    return lines, tracebacks, non_json


async def until(pred: Callable[[], Any], timeout: float, what: str) -> bool:
    """Poll `pred` until true or `timeout`; False (and a note) on timeout, never raises."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            print(f"  (timed out after {timeout:.0f} s waiting for {what})")
            return False
        await asyncio.sleep(0.05)
    return True


@contextlib.asynccontextmanager
async def meters(
    n: int, *, shared: bool = False, tick: float = 0.01
) -> AsyncIterator[list[tuple[SimModbusServer, int, int]]]:
    """(sim, port, unit) per device: own servers, or one gateway with units 1..n."""
    async with contextlib.AsyncExitStack() as stack:
        if shared:
            sim = await stack.enter_async_context(
                SimModbusServer(dict.fromkeys(range(1, n + 1), "energy-meter"), tick=tick, seed=1)
            )
            port = await sim.serve_tcp()
            yield [(sim, port, u) for u in range(1, n + 1)]
        else:
            out = []
            for i in range(n):
                sim = await stack.enter_async_context(SimModbusServer({1: "energy-meter"}, tick=tick, seed=i))
                out.append((sim, await sim.serve_tcp(), 1))
            yield out


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [
        header,
        *[
            [f"{c:,.1f}" if isinstance(c, float) else f"{c:,}" if isinstance(c, int) else str(c) for c in r]
            for r in rows
        ],
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n## {title}")
    for k, r in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


# -- outage --------------------------------------------------------------------------------------


async def outage(run: Run, n: int, outage_s: float, summary: dict[str, Any]) -> None:
    cell = f"outage{n}"
    tmp = run.dir / cell
    tmp.mkdir()
    with Mosquitto(persistence=True) as broker:
        async with meters(n) as ms:
            config = write_config(
                tmp,
                broker.port,
                [modbus_device(f"m{i}", "sim-energy-meter", p, u) for i, (_, p, u) in enumerate(ms)],
                cell=cell,
                outbox={"fsync": "batch"},
            )
            c = Collector(
                broker.port, f"{root_topic(cell)}/+/data", client_id=f"chaos-{cell}", clean_session=False
            )
            proc = run.spawn(config, tmp / "daemon.log")
            try:
                await until(lambda: len(streams(c.messages)) == n, 30, "every device publishing")
                await asyncio.to_thread(broker.stop)
                stopped_ms = time.time() * 1000
                await asyncio.sleep(outage_s)  # the outage itself
                restart_ms = time.time() * 1000
                await asyncio.to_thread(broker.start)
                marks = {d: s.live_highest() for d, s in streams(c.messages).items()}
                await until(
                    lambda: all(
                        not s.lost() and s.live_highest() > marks.get(d, 0) + 20
                        for d, s in streams(c.messages).items()
                    ),
                    60 + 2 * outage_s,
                    "every device caught up",
                )
                crashed = proc.poll() is not None
                Run.stop(proc)
            finally:
                c.close()
    rows: list[list[Any]] = []
    got = streams(c.messages)
    for dev in sorted(got, key=lambda d: int(d[1:])):
        st = got[dev]
        during = [b for b in st.bodies if stopped_ms < b["ts"] < restart_ms]
        unflagged = sum(1 for b in during if not b.get("historical"))
        rows.append(
            [
                dev,
                len(st.bodies),
                len(st.historical()),
                len(st.lost()),
                st.duplicates,
                st.reordered(),
                unflagged,
            ]
        )
    total = [sum(r[i] for r in rows) for i in range(1, 7)]
    rows.append(["all", *total])
    table(
        f"outage: {n} devices x {outage_s:.0f} s broker outage (poll 50 ms)",
        ["device", "received", "historical", "lost", "duplicated", "reordered", "outage unflagged"],
        rows,
    )
    summary[f"outage{n}"] = f"lost {total[2]}/{total[0]:,} dup {total[3]} reord {total[4]}" + (
        " CRASHED" if crashed else ""
    )
    summary["lost"] = summary.get("lost", 0) + total[2]


# -- kill -9 -------------------------------------------------------------------------------------


def stored_data(db: Path) -> list[tuple[str, int]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute(
            "SELECT topic, payload FROM messages WHERE fmt = 'uns' AND topic GLOB '*/data'"
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
    return [(t.split("/")[-2], int(orjson.loads(p)["seq"])) for t, p in rows]


async def kill9(run: Run, when: str, outage_s: float, summary: dict[str, Any]) -> list[Any]:
    """kill -9 during an outage (`when`='outage') or mid-replay; a new daemon on the same
    state dir; lost = the killed daemon's committed seqs that never arrived."""
    cell = f"kill9{when}"
    tmp = run.dir / cell
    tmp.mkdir()
    n = 2
    with Mosquitto(persistence=True) as broker:
        async with meters(n) as ms:
            config = write_config(
                tmp,
                broker.port,
                [
                    modbus_device(f"m{i}", "sim-energy-meter", p, u, poll_interval=0.02)
                    for i, (_, p, u) in enumerate(ms)
                ],
                cell=cell,
                outbox={"fsync": "batch", "replay_rate": 100},
            )
            db = tmp / "state" / "outbox.sqlite"
            log = tmp / "daemon.log"
            c = Collector(
                broker.port, f"{root_topic(cell)}/+/data", client_id=f"chaos-{cell}", clean_session=False
            )
            first = run.spawn(config, log)
            try:
                await until(lambda: len(streams(c.messages)) == n, 30, "data")
                await asyncio.to_thread(broker.stop)
                await asyncio.sleep(outage_s)
                if when == "replay":
                    await asyncio.to_thread(broker.start)
                    await until(
                        lambda: sum(len(s.historical()) for s in streams(c.messages).values()) >= 40,
                        30,
                        "replay",
                    )
                first.send_signal(signal.SIGKILL)
                await asyncio.to_thread(first.wait, 10)
                killed_ms = time.time() * 1000
                left = stored_data(db)
                second = run.spawn(config, log)
                if when == "outage":
                    await asyncio.sleep(1.0)
                    await asyncio.to_thread(broker.start)

                def first_life() -> dict[str, Stream]:
                    return {
                        d: Stream(d, [b for b in s.bodies if b["ts"] <= killed_ms])
                        for d, s in streams(c.messages).items()
                    }

                committed = {
                    d: max([s for dd, s in left if dd == d], default=0) for d in (f"m{i}" for i in range(n))
                }

                def delivered() -> bool:
                    fl = first_life()
                    if not all(d in fl for d in committed):
                        return False
                    seen = {d: {b["seq"] for b in fl[d].bodies} for d in committed}
                    return all(not fl[d].lost(max(committed[d], fl[d].highest)) for d in committed) and all(
                        s in seen[d] for d, s in left
                    )

                await until(delivered, 60, "the killed daemon's backlog")
                Run.stop(second)
            finally:
                c.close()
    fl = {d: Stream(d, [b for b in s.bodies if b["ts"] <= killed_ms]) for d, s in streams(c.messages).items()}
    lost = sum(len(fl[d].lost(max(committed[d], fl[d].highest))) for d in fl)
    received = sum(len(s.bodies) for s in fl.values())
    summary["lost"] = summary.get("lost", 0) + lost
    return [f"during {when}", len(left), received, lost, sum(s.duplicates for s in fl.values())]


# -- isolation -------------------------------------------------------------------------------------


async def isolation_case(run: Run, n: int, mode: str, topo: str, window: float) -> list[Any] | None:
    """Healthy devices' rate and p99 poll-to-subscriber latency with `mode` on device n."""
    if mode == "garbage" and topo != "ports":
        return None  # a raw garbage server answers for every unit behind it: not one unit's fault
    cell = f"iso-{topo}-{mode}".replace("_", "-")
    tmp = run.dir / cell
    tmp.mkdir()
    poll = 0.1
    async with meters(n, shared=topo != "ports") as ms, contextlib.AsyncExitStack() as stack:
        gs: GarbageServer | None = None
        if mode == "garbage":
            gs = GarbageServer(mode="random")
            gs.server = await asyncio.start_server(gs.handle, "127.0.0.1", 0)
            stack.callback(gs.server.close)
        with Mosquitto() as broker:
            devices = []
            for i, (_, p, u) in enumerate(ms):
                port = gs.port if gs is not None and i == n - 1 else p
                d = modbus_device(f"m{i}", "sim-energy-meter", port, u, poll_interval=poll)
                if topo == "gateway-pipelined":
                    d["connection"]["pipelining"] = "on"
                devices.append(d)
            config = write_config(tmp, broker.port, devices, cell=cell)
            c = Collector(broker.port, f"{root_topic(cell)}/+/data")
            proc = run.spawn(config, tmp / "daemon.log")
            try:
                await until(
                    lambda: len(streams(c.messages)) >= n - (gs is not None), 30, "devices publishing"
                )
                sim, _, unit = ms[-1]
                per_unit = unit if topo != "ports" else None
                if mode == "silent":
                    sim.stop_answering(unit=per_unit)
                elif mode == "exception":
                    sim.set_exception(4, unit=per_unit)
                elif mode == "slow_300ms":
                    sim.set_latency(0.3, unit=per_unit)
                await asyncio.sleep(1.0)  # let the fault take hold (breaker, backoff) before measuring
                start = time.time()
                end = start + window
                while time.time() < end:  # bounded: the window
                    if mode == "drop_connection":
                        sim.drop_connections()  # on a gateway: the shared link itself
                    await asyncio.sleep(0.2)
                msgs = list(c.messages)
                crashed = proc.poll() is not None
                Run.stop(proc)
            finally:
                c.close()
    healthy = [f"m{i}" for i in range(n - 1)]
    rates, lat = [], []
    for m in msgs:
        dev = m.topic.split("/")[-2]
        if dev in healthy and start <= m.received <= end:
            lat.append(m.received * 1000 - m.json()["ts"])
    for dev in healthy:
        rates.append(
            sum(1 for m in msgs if m.topic.split("/")[-2] == dev and start <= m.received <= end) / window
        )
    p99 = statistics.quantiles(lat, n=100)[98] if len(lat) >= 2 else float("nan")
    return [topo, mode, min(rates), statistics.mean(rates), 1 / poll, p99, "yes" if crashed else ""]


# -- hostile ---------------------------------------------------------------------------------------


async def hostile(run: Run, rounds: int, summary: dict[str, Any]) -> None:
    cell = "hostile"
    tmp = run.dir / cell
    tmp.mkdir()
    group, edge = "test-lab-a1", f"l1-{cell}"
    async with SimModbusServer({2: "machine-plc"}, tick=0.1, seed=3) as sim:
        port = await sim.serve_tcp()
        with Mosquitto() as broker:
            config = write_config(
                tmp,
                broker.port,
                [modbus_device("plc", "sim-machine-plc", port, 2)],
                cell=cell,
                publish={"formats": ["uns", "sparkplug"]},
                sparkplug={"device_writes": "allow"},
            )
            before = sim.unit(2).snapshot()["setpoint"]
            cap = Capture(broker.port, f"spBv1.0/{group}/#")
            proc = run.spawn(config, tmp / "daemon.log")
            sent = uns_sent = 0
            refused: int | None = None
            try:

                def births(kind: str, dev: str | None) -> dict[str, int]:
                    b = [m for m in cap.snapshot() if m.kind == kind and m.device == dev]
                    return (
                        {x.name: x.alias for x in b[-1].decode().metrics if x.HasField("alias")} if b else {}
                    )

                await until(lambda: births("DBIRTH", "plc") and births("NBIRTH", None), 30, "births")
                a, node = births("DBIRTH", "plc"), births("NBIRTH", None)
                rng = random.Random(5)
                for r in range(rounds):
                    for target, payload in hostile_corpus(a["setpoint"], a["temperature"], seed=r):
                        t = (
                            f"spBv1.0/{group}/NCMD/{edge}"
                            if target == "node"
                            else f"spBv1.0/{group}/DCMD/{edge}/{target}"
                        )
                        await asyncio.to_thread(cap.publish, t, payload)
                        sent += 1
                    for i in range(20):  # UNS: no command path; garbage on command-like topics
                        sub = ("cmd", "cmd/setpoint", "set/setpoint", "points/setpoint/set")[i % 4]
                        await asyncio.to_thread(
                            cap.publish, f"{root_topic(cell)}/plc/{sub}", rng.randbytes(rng.randint(0, 300))
                        )
                        uns_sent += 1

                def last_refused(msgs: list[SpMessage]) -> int | None:
                    vals = [
                        metric_value(x)
                        for m in msgs
                        if m.kind == "NDATA"
                        for x in m.decode().metrics
                        if x.alias == node["Commands/Refused"]
                    ]
                    return int(vals[-1]) if vals else None

                await until(
                    lambda: (last_refused(cap.snapshot()) or 0) >= sent, 30, "Commands/Refused in NDATA"
                )
                refused = last_refused(cap.snapshot())
                alive = proc.poll() is None
                rc = Run.stop(proc)
            finally:
                cap.close()
        after = sim.unit(2).snapshot()["setpoint"]
    crashes = 0 if alive and rc == 0 else 1
    table(
        "hostile: Sparkplug and UNS command corpora",
        ["Sparkplug sent", "refused (NDATA)", "UNS garbage sent", "crashes", "setpoint changed", "exit code"],
        [
            [
                sent,
                refused if refused is not None else "n/a",
                uns_sent,
                crashes,
                "yes" if after != before else "no",
                rc,
            ]
        ],
    )
    summary["crashes"] = summary.get("crashes", 0) + crashes
    summary["hostile"] = f"{sent} cmds, {refused} refused"


# -- soak ------------------------------------------------------------------------------------------


async def soak(run: Run, seconds: float, summary: dict[str, Any]) -> None:
    cell = "soak"
    tmp = run.dir / cell
    tmp.mkdir()
    n = 3
    samples: list[tuple[float, int, int]] = []
    async with meters(n) as ms:
        with Mosquitto() as broker:
            config = write_config(
                tmp,
                broker.port,
                [
                    modbus_device(f"m{i}", "sim-energy-meter", p, u, poll_interval=0.02)
                    for i, (_, p, u) in enumerate(ms)
                ],
                cell=cell,
            )
            c = Collector(broker.port, f"{root_topic(cell)}/+/data")
            proc = run.spawn(config, tmp / "daemon.log")
            try:
                await until(lambda: len(streams(c.messages)) == n, 30, "data")
                mark = len(c.messages)
                ps = psutil.Process(proc.pid)
                start = next_at = time.monotonic()
                while next_at - start <= seconds and proc.poll() is None:  # one sample per second
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                    samples.append((next_at - start, ps.memory_info().rss, ps.num_fds()))
                    if int(next_at - start) % 5 == 0:
                        ms[-1][0].drop_connections()  # the reconnect path, every 5 s
                    next_at += 1.0
                crashed = proc.poll() is not None
                delivered = len(c.messages) - mark
                Run.stop(proc)
            finally:
                c.close()
    warm = [s for s in samples if s[0] >= min(10.0, seconds / 4)] or samples
    mib = 1024 * 1024
    rows = [
        ["RSS MiB", warm[0][1] / mib, max(s[1] for s in warm) / mib, warm[-1][1] / mib],
        ["open fds", warm[0][2], max(s[2] for s in warm), warm[-1][2]],
    ]
    table(
        f"soak: {seconds:.0f} s, 3 devices at 50/s, one dropped every 5 s ({len(samples)} samples, {delivered:,} messages)",
        ["figure", "after warm-up", "max", "last"],
        rows,
    )
    summary["soak"] = (
        f"RSS {warm[0][1] / mib:.1f}->{warm[-1][1] / mib:.1f} MiB, fds {warm[0][2]}->{warm[-1][2]}"
        + (" CRASHED" if crashed else "")
    )


# -- main ------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    run = Run(Path(tempfile.mkdtemp(prefix="cellctl-chaos-")))
    summary: dict[str, Any] = {"lost": 0, "crashes": 0}
    t0 = time.monotonic()
    try:
        if "outage" in args.scenario:
            for n in args.devices:
                await outage(run, n, args.outage_s, summary)
        if "kill9" in args.scenario:
            rows = [await kill9(run, w, args.kill_outage_s, summary) for w in ("outage", "replay")]
            table(
                "kill9: kill -9 of cellctl run, restart on the same state dir",
                ["killed", "in outbox at kill", "received (killed daemon's)", "lost", "duplicated"],
                rows,
            )
        if "isolation" in args.scenario:
            rows = []
            for topo in ("ports", "gateway", "gateway-pipelined"):
                for mode in MODES:
                    r = await isolation_case(run, args.iso_devices, mode, topo, args.window_s)
                    if r is not None:
                        rows.append(r)
                        summary["crashes"] += r[-1] == "yes"
            table(
                f"isolation: fault on 1 of {args.iso_devices} devices; healthy devices over {args.window_s:.0f} s",
                ["topology", "fault", "min rate/s", "mean rate/s", "nominal/s", "p99 ms", "crashed"],
                rows,
            )
            summary["isolation"] = "; ".join(
                f"{r[0]}/{r[1]} {r[3]:.1f}/s p99 {r[5]:.0f}ms" for r in rows if r[1] != "none"
            )
        if "hostile" in args.scenario:
            await hostile(run, args.hostile_rounds, summary)
        if "soak" in args.scenario:
            await soak(run, args.soak_s, summary)
    finally:
        run.close()
        lines, tracebacks, non_json = log_health(run.logs)
        table(
            "logs: every daemon's JSON log",
            ["daemons", "lines", "tracebacks", "non-JSON lines"],
            [[len(run.logs), lines, tracebacks, non_json]],
        )
        if args.keep:
            print(f"\nkept {run.dir}")
        else:
            shutil.rmtree(run.dir, ignore_errors=True)
    print(
        f"\nSUMMARY lost={summary['lost']} crashes={summary['crashes']} tracebacks={tracebacks} "
        f"non_json={non_json} {' | '.join(f'{k}: {v}' for k, v in summary.items() if k not in ('lost', 'crashes'))} "
        f"({time.monotonic() - t0:.0f} s)"
    )
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--scenario",
        nargs="+",
        choices=["outage", "kill9", "isolation", "hostile", "soak"],
        default=["outage", "kill9", "isolation", "hostile", "soak"],
    )
    ap.add_argument("--quick", action="store_true", help="every scenario in ~3-4 minutes")
    ap.add_argument(
        "--devices", type=int, nargs="+", default=[5, 10], help="device counts of the outage scenario"
    )
    ap.add_argument("--outage-s", type=float, default=60.0)
    ap.add_argument("--kill-outage-s", type=float, default=10.0, help="outage before the kill -9")
    ap.add_argument("--iso-devices", type=int, default=5)
    ap.add_argument("--window-s", type=float, default=10.0, help="isolation measuring window")
    ap.add_argument(
        "--hostile-rounds", type=int, default=10, help="times the ~200-payload corpus is sent (reseeded)"
    )
    ap.add_argument("--soak-s", type=float, default=600.0)
    ap.add_argument("--keep", action="store_true", help="keep configs and daemon logs")
    args = ap.parse_args(argv)
    if args.quick:
        args.outage_s, args.kill_outage_s, args.window_s = 10.0, 3.0, 3.0
        args.hostile_rounds, args.soak_s = 2, 60.0
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
