"""CPU time, wall time and RSS of `cellctl run` from spawn to a working cell, for
comparing two daemons on a loaded machine.

Starts a private mosquitto and one simulated Modbus energy meter, then runs `cellctl
--log-format json run CONFIG` on a one-device config again and again, alternating this
checkout with each `--before DIR` given (a `git archive` of the core, run with PYTHONPATH
set to it), and stops each daemon (SIGTERM) as soon as its log says `mqtt_connected` and
`device_online`. At that moment it reads the daemon's CPU time (user + system of all its
threads, from /proc/PID/task/*/schedstat, nanoseconds) and its RSS. On a shared 2-core
machine the wall time swings with the load; the CPU time a start costs hardly does.

    .venv/bin/python bench/startup_cost.py [--runs 15] [--before /tmp/before] [--env NAME=VALUE]

Linux only (/proc). The sources are byte-compiled first, as an installed package is.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import modbus_device, write_config

READY = (b'"mqtt_connected"', b'"device_online"')
DEADLINE_S = 60.0


def _cpu_ns(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _one(config: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """(wall ms, CPU ms, RSS MB) of one start, up to the meter online and the backbone connected."""
    exe = Path(sys.executable).parent / "cellctl"
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(exe), "--log-format", "json", "run", str(config),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    seen: set[bytes] = set()
    log: list[bytes] = []
    try:
        async with asyncio.timeout(DEADLINE_S):
            while len(seen) < len(READY):
                line = await proc.stdout.readline()
                if not line:
                    raise SystemExit(f"the daemon ended before it was ready:\n{b''.join(log[-20:]).decode()}")
                log.append(line)
                seen.update(word for word in READY if word in line)
        wall = (time.monotonic() - started) * 1000
        cpu = _cpu_ns(proc.pid) / 1e6
        rss = _rss_mb(proc.pid)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await proc.communicate()
    return wall, cpu, rss


async def _run(workdir: Path, runs: int, subjects: dict[str, dict[str, str]]) -> None:
    with Mosquitto() as broker:
        async with SimModbusServer({1: "energy-meter"}, tick=0.05, seed=3) as sim:
            port = await sim.serve_tcp()
            config = write_config(
                workdir, broker.port, [modbus_device("m1", "sim-energy-meter", port, 1)], cell="startcost"
            )
            results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in subjects}
            for _ in range(runs):
                for name, env in subjects.items():
                    results[name].append(await _one(config, env))
    print(f"{runs} starts each, alternated; medians (min-max)")
    print(f"{'subject':28} {'wall ms':>18} {'CPU ms':>18} {'RSS MB':>16}")
    for name, rows in results.items():
        cols = []
        for i in range(3):
            values = [r[i] for r in rows]
            cols.append(f"{statistics.median(values):7.1f} ({min(values):.0f}-{max(values):.0f})")
        print(f"{name:28} {cols[0]:>18} {cols[1]:>18} {cols[2]:>16}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="starts per subject")
    ap.add_argument("--before", type=Path, action="append", default=[],
                    help="a directory holding another `cellctl` package (git archive): a subject of its own")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="also run this checkout with NAME=VALUE in the environment (a subject of its own)")
    args = ap.parse_args()  # fmt: skip
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from modbus_pipeline import compile_sources

    compile_sources()
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subjects: dict[str, dict[str, str]] = {"this checkout": base}
    for extra in args.env:
        name, _, value = extra.partition("=")
        subjects[f"this checkout, {extra}"] = {**base, name: value}
    for before in args.before:
        compileall.compile_dir(before / "cellctl", quiet=1, workers=1)
        subjects[str(before)] = {**base, "PYTHONPATH": str(before)}
    with tempfile.TemporaryDirectory(prefix="cellctl-startup-cost-") as d:
        asyncio.run(_run(Path(d), args.runs, subjects))


if __name__ == "__main__":
    main()
