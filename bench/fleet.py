"""Fleet bench (issue 14 items 4-5): N real `cellctl run` daemons, each a cell of its own
identity, sharing one in-process simulated Modbus server, publishing to one site broker
(`--topology single`), to per-cell mosquitto brokers bridged to the site broker
(`--topology bridged`), or to a clustered broker of three RabbitMQ nodes with every
cell's `backbone.hosts` listing them (`--topology cluster`). A site consumer checks
completeness per cell (every data seq, duplicates counted) and that every message
validates against the contract.

Figures printed (nothing asserted; run by hand, keep it short on a shared machine):
  values/s and messages/s at the site, per-cell RSS and CPU (psutil, mean and max over
  the daemons), end-to-end latency p50/p99 (site arrival minus the sample's `ts`),
  seqs missing at the site (goal: 0) and duplicates, contract problems (goal: 0).
  With --site-outage S the site broker (cluster: its first node, where a third of the
  cells are connected) is stopped for S seconds in the middle of the run; with the
  cluster, the failover time of each cell that was on that node (from the stop to its
  `mqtt_connected` on another node, from the daemon's JSON log) is printed too.

    .venv/bin/python bench/fleet.py --cells 10 --topology bridged --duration 30
    .venv/bin/python bench/fleet.py --cells 50 --topology single --duration 60 --site-outage 10
    .venv/bin/python bench/fleet.py --cells 10 --topology cluster --duration 30 --site-outage 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.testing import Collector
from cellctl.testing.contract import check_messages
from cellctl.testing.fleet import Cell, Fleet, completeness
from cellctl.testing.rabbitmq import group_pids


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _sample_processes(pids: list[int]) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            p.cpu_percent(None)  # starts the measurement interval
            procs.append(p)
        except psutil.NoSuchProcess:
            pass
    return procs


async def run(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="cellctl-fleet-"))
    async with SimModbusServer(
        dict.fromkeys(range(1, args.devices + 1), "energy-meter"), tick=0.05, seed=1
    ) as sim:
        port = await sim.serve_tcp()
        fleet = Fleet(base, args.cells, args.topology, port, devices=args.devices, poll_interval=args.poll)
        started = time.monotonic()
        await asyncio.to_thread(fleet.start)
        site = Collector(fleet.site_port, "uns/v1/#", client_id="fleet-bench-site", clean_session=False)
        try:
            await site.until(
                lambda _m: all(site.on(f"{c.root}/manifest") for c in fleet.members),
                timeout=max(60.0, args.cells * 2.0),
                what="a manifest from every cell",
            )
            ready = time.monotonic() - started
            mark = len(site.messages)
            procs = _sample_processes(fleet.pids())
            brokers_before = _cpu_seconds(_broker_pids(fleet))
            t0 = time.monotonic()
            outage_at = t0 + args.duration / 3 if args.site_outage else None
            stopped_wall = restarted_wall = None
            while (now := time.monotonic()) < t0 + args.duration:
                if outage_at is not None and now >= outage_at:
                    stopped_wall = time.time()
                    await asyncio.to_thread(_stop_site, fleet)
                    await asyncio.sleep(args.site_outage)  # the outage itself is the measured condition
                    await asyncio.to_thread(_start_site, fleet)
                    restarted_wall = time.time()
                    outage_at = None
                await asyncio.sleep(0.5)
            elapsed = time.monotonic() - t0
            cpu = [p.cpu_percent(None) for p in procs]
            rss = [p.memory_info().rss / 2**20 for p in procs]
            broker_cpu, broker_rss, restarted = _broker_figures(fleet, brokers_before, elapsed)
        finally:
            codes = await asyncio.to_thread(fleet.stop)
            site.close()
    window = site.messages[mark:]
    data = [m for m in window if m.topic.endswith("/data")]
    values = sum(len(m.json()["values"]) for m in data)
    latency = [m.received * 1000 - m.json()["ts"] for m in data if not m.json().get("historical")]
    # taken outside the outage (and the 10 s after it, while the backlog drains)
    calm = [
        m.received * 1000 - m.json()["ts"]
        for m in data
        if not m.json().get("historical")
        and (
            stopped_wall is None
            or not stopped_wall * 1000 <= m.json()["ts"] <= (restarted_wall or 0) * 1000 + 10_000
        )
    ]
    missing = dups = problems = 0
    for cell in fleet.members:
        done = completeness(site.messages, cell.root)
        missing += sum(len(v) for v in done.missing.values())
        dups += sum(done.duplicates.values())
        problems += len(check_messages(site.messages, cell.root).problems)
    print(
        f"fleet: {args.cells} cells x {args.devices} device(s), topology {args.topology}, poll {args.poll} s"
    )
    print(f"  all cells publishing after   {ready:.1f} s")
    print(
        f"  at the site                  {values / elapsed:.0f} values/s, {len(data) / elapsed:.0f} data msgs/s"
    )
    print(f"  per-cell CPU %               mean {statistics.fmean(cpu):.1f}, max {max(cpu):.1f}")
    print(f"  per-cell RSS MiB             mean {statistics.fmean(rss):.1f}, max {max(rss):.1f}")
    print(
        f"  end-to-end latency ms        p50 {_percentile(latency, 0.5):.1f}, p99 {_percentile(latency, 0.99):.1f}"
    )
    if stopped_wall is not None:
        print(
            f"  latency ms outside outage    p50 {_percentile(calm, 0.5):.1f}, p99 {_percentile(calm, 0.99):.1f}"
        )
    print(
        f"  broker(s) CPU %, RSS MiB     {broker_cpu:.1f}, {broker_rss:.0f}"
        + (f" ({restarted} restarted process(es) left out of the CPU)" if restarted else "")
    )
    if stopped_wall is not None and fleet.cluster is not None:
        moves = _failovers(fleet.members, stopped_wall)
        if not moves:
            print("  failover                     no cell was connected to the stopped node")
        else:
            print(
                f"  failover s (cells moved)     mean {statistics.fmean(moves):.2f}, max {max(moves):.2f} ({len(moves)})"
            )
    print(f"  seqs missing at the site     {missing} (duplicates {dups})")
    print(f"  contract problems            {problems}")
    print(f"  daemons' exit codes          {sorted(set(codes), key=str)}")
    print(f"  configs and logs in          {base}")
    return 0 if missing == 0 and problems == 0 else 1


def _broker_pids(fleet: Fleet) -> list[int]:
    if fleet.cluster is not None:
        return [pid for n in fleet.cluster.nodes if n.proc is not None for pid in group_pids(n.proc.pid)]
    pids = [fleet.site.pid] + [c.broker.pid for c in fleet.members if c.broker is not None]
    return [p for p in pids if p is not None]


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return out


def _broker_figures(fleet: Fleet, before: dict[int, float], elapsed: float) -> tuple[float, float, int]:
    """CPU % over the measured window of the broker processes that ran through it, RSS MiB
    of those alive now, and how many were restarted (outage) and left out of the CPU."""
    now = _cpu_seconds(_broker_pids(fleet))
    cpu = sum(100 * (now[pid] - before[pid]) / elapsed for pid in now if pid in before)
    rss = 0.0
    for pid in now:
        try:
            rss += psutil.Process(pid).memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
    return cpu, rss, sum(1 for pid in now if pid not in before)


def _stop_site(fleet: Fleet) -> None:
    if fleet.cluster is not None:
        fleet.cluster.stop_node(fleet.cluster.nodes[0])
    else:
        fleet.site.stop()


def _start_site(fleet: Fleet) -> None:
    if fleet.cluster is not None:
        fleet.cluster.start_node(fleet.cluster.nodes[0])
    else:
        fleet.site.start()


def _failovers(cells: list[Cell], stopped: float) -> list[float]:
    """Seconds from the node's stop to each moved cell's next `mqtt_connected` (JSON log)."""
    out = []
    for cell in cells:
        lost = False
        for line in cell.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
                ts = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            if ts < stopped:
                continue
            if entry.get("event") == "mqtt_disconnected" and entry.get("session") == "uns":
                lost = True
            elif lost and entry.get("event") == "mqtt_connected" and entry.get("session") == "uns":
                out.append(ts - stopped)
                break
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", type=int, default=10)
    parser.add_argument("--devices", type=int, default=1, help="simulated devices per cell")
    parser.add_argument("--topology", choices=["single", "bridged", "cluster"], default="bridged")
    parser.add_argument("--poll", type=float, default=0.5, help="poll interval, seconds")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--site-outage", type=float, default=0.0, help="stop the site broker this long")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
