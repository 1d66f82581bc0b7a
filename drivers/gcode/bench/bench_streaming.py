"""Streaming benchmark for the gcode driver. Prints figures; asserts nothing.

    .venv/bin/python drivers/gcode/bench/bench_streaming.py            # everything, ~1 min
    .venv/bin/python drivers/gcode/bench/bench_streaming.py --quick    # smaller runs

What it measures (the simulators run as separate processes, like a real machine):

1. lines/s streamed to the GRBL simulator at its maximum speed (instant motion, no
   pacing): character counting against ping-pong;
2. the same with the simulator pacing bytes at 115,200 baud (11,520 bytes/s each way):
   lines/s and the share of the wire's capacity the streamer uses;
3. planner starvation: paced at 115,200 baud, short segments whose motion takes a little
   longer than their bytes take on the wire; counts the times the planner ran dry;
4. lines/s to the Marlin simulator (numbered, checksummed, 4 lines in flight);
5. status-to-MQTT latency: from the simulator writing a status report to a subscriber
   receiving the changed position, through the daemon and a local mosquitto.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import structlog
from cellctl_gcode.config import GcodeConnection, GcodeOptions
from cellctl_gcode.device import open_device
from cellctl_gcode.job import Job, JobState
from cellctl_gcode.program import Program

from cellctl.driver import DeviceContext

BAUD = 115_200
WIRE_BYTES_PER_S = BAUD / 10


def short_lines(n: int, step: float, feed: float | None = None) -> list[str]:
    """A zig-zag of `step` mm segments: the short-line CAM output that starves planners."""
    lines = ["G21G90", f"G1X10Y10F{feed or 6000:g}"]
    x, y = 10.0, 10.0
    for i in range(n - 2):
        x += step if (i // 400) % 2 == 0 else -step
        y += step / 3 if i % 2 else -step / 3
        lines.append(f"G1X{x:.3f}Y{y:.3f}")
    return lines


def start_sim(kind: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", f"cellctl_sim.{kind}", *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().split()
    return proc, first[1]


def stop_sim(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    last = out.strip().splitlines()[-1] if out.strip() else "{}"
    stats: dict[str, Any] = json.loads(last)
    return stats


async def stream(path: str, dialect: str, streaming: str, lines: list[str]) -> tuple[Job, float, int]:
    ctx = DeviceContext(
        device_id="bench",
        connection=GcodeConnection(port=path),
        options=GcodeOptions.model_validate({"dialect": dialect, "grbl": {"streaming": streaming}, "ack_timeout": 30}),
        points=[],
        timeout=2.0,
    )
    async with open_device(ctx) as dev:
        program = Program.from_text("\n".join(lines), dialect=dialect, name="bench")  # type: ignore[arg-type]
        t0 = time.perf_counter()
        job = await dev.run_job(program, progress_every=0.5)
        took = time.perf_counter() - t0
        return job, took, program.bytes_total


def run(kind: str, sim_args: list[str], dialect: str, streaming: str, lines: list[str]) -> dict[str, Any]:
    proc, path = start_sim(kind, *sim_args)
    try:
        job, took, nbytes = asyncio.run(stream(path, dialect, streaming, lines))
    finally:
        stats = stop_sim(proc)
    if job.state != JobState.COMPLETED:
        raise SystemExit(f"benchmark job did not complete: {job.state} {job.error}")
    return {"lines": len(lines), "seconds": took, "lines_s": len(lines) / took, "bytes_s": nbytes / took,
            "bytes": nbytes, "sim": stats}


def streaming_figures(quick: bool) -> None:
    n_fast = 5_000 if quick else 20_000
    n_paced = 1_000 if quick else 3_000
    fast = short_lines(n_fast, 0.5)
    paced = short_lines(n_paced, 0.5)
    avg = sum(len(x) + 1 for x in paced) / len(paced)
    wire_lines = WIRE_BYTES_PER_S / avg
    print(f"\nGRBL streaming ({n_fast} / {n_paced} lines, {avg:.1f} bytes a line with its newline)")
    print(f"{'mode':<22}{'link':<22}{'lines/s':>10}{'bytes/s':>10}{'% of wire':>11}{'RX peak':>9}{'overflows':>10}")
    for streaming in ("character_counting", "ping_pong"):
        r = run("grbl", ["--speedup", "inf"], "grbl", streaming, fast)
        print(f"{streaming:<22}{'pty, unpaced':<22}{r['lines_s']:>10.0f}{r['bytes_s']:>10.0f}{'-':>11}"
              f"{r['sim']['max_rx_used']:>9}{r['sim']['rx_overflows']:>10}")
        r = run("grbl", ["--speedup", "inf", "--baud", str(BAUD)], "grbl", streaming, paced)
        share = r["bytes_s"] / WIRE_BYTES_PER_S * 100
        print(f"{streaming:<22}{'paced 115200 baud':<22}{r['lines_s']:>10.0f}{r['bytes_s']:>10.0f}{share:>10.1f}%"
              f"{r['sim']['max_rx_used']:>9}{r['sim']['rx_overflows']:>10}")
    print(f"(the wire carries {WIRE_BYTES_PER_S:.0f} bytes/s = {wire_lines:.0f} of these lines/s)")


def planner_figures(quick: bool) -> None:
    n = 400 if quick else 1_200
    # 0.25 mm at 6000 mm/min = 2.5 ms of motion; ~18 bytes = 1.6 ms on the wire
    lines = short_lines(n, 0.25, feed=6000)
    motion = 0.25 / 6000 * 60
    avg = sum(len(x) + 1 for x in lines) / len(lines)
    print(f"\nplanner starvation, paced {BAUD} baud, {n} segments of {motion * 1000:.1f} ms motion, "
          f"{avg / WIRE_BYTES_PER_S * 1000:.1f} ms on the wire each")
    print(f"{'mode':<22}{'seconds':>9}{'ideal s':>9}{'planner ran dry':>17}")
    for streaming in ("character_counting", "ping_pong"):
        r = run("grbl", ["--speedup", "1", "--baud", str(BAUD)], "grbl", streaming, lines)
        ideal = n * motion
        print(f"{streaming:<22}{r['seconds']:>9.2f}{ideal:>9.2f}{max(0, r['sim']['underruns'] - 1):>17}")


def marlin_figures(quick: bool) -> None:
    n = 3_000 if quick else 10_000
    lines = [x.replace("G1X", "G1 X").replace("Y", " Y") for x in short_lines(n, 0.5)]
    print(f"\nMarlin streaming ({n} lines, 4 in flight, numbered and checksummed)")
    for args, label in ((["--speedup", "inf"], "pty, unpaced"), (["--speedup", "inf", "--baud", str(BAUD)], "paced 115200 baud")):
        r = run("marlin", args, "marlin", "character_counting", lines[: n if "--baud" not in args else n // 5])
        wire = r["sim"]["bytes_in"] / r["seconds"]
        share = f", {wire / WIRE_BYTES_PER_S * 100:.1f}% of the wire" if "--baud" in args else ""
        print(f"{label:<22}{r['lines_s']:>10.0f} lines/s{wire:>10.0f} bytes/s with numbers and checksums{share}")


def latency_figures(quick: bool) -> None:
    """Status report written by the simulator -> position change received over MQTT."""
    import paho.mqtt.client as paho
    import yaml
    from cellctl_sim.grbl import GrblSim
    from paho.mqtt.enums import CallbackAPIVersion

    from cellctl.config.loader import load_cell
    from cellctl.daemon import Daemon
    from cellctl.localbroker import Mosquitto

    seconds = 4.0 if quick else 10.0
    received: list[tuple[float, float]] = []  # (wall time, mpos_x)
    emitted: dict[str, float] = {}  # "x.xxx" -> wall time of the first report showing it

    async def main(broker_port: int, tmp: Path) -> None:
        job_dir = tmp / "jobs"
        async with GrblSim(speedup=1.0) as sim:
            original = sim.status_report

            def traced() -> str:
                text = original()
                x = f"{sim.current_position()[0]:.3f}"
                emitted.setdefault(x, time.time())
                return text

            sim.status_report = traced  # type: ignore[method-assign]
            cfg = {
                "identity": {"enterprise": "bench", "site": "s", "area": "a", "line": "l", "cell": "c"},
                "backbone": {"host": "127.0.0.1", "port": broker_port},
                "devices": [{
                    "id": "mill", "driver": "gcode", "profile": "grbl-cnc", "connection": {"port": sim.path},
                    "options": {"status_interval": 0.2, "job_dir": str(job_dir)},
                }],
            }
            path = tmp / "cell.yaml"
            path.write_text(yaml.safe_dump(cfg))
            daemon = Daemon(load_cell(path))
            task = asyncio.get_running_loop().create_task(daemon.run(install_signal_handlers=False), name="daemon")
            await asyncio.wait_for(daemon.started.wait(), 10)
            job_dir.mkdir(exist_ok=True)  # the daemon makes its job folder at start
            (tmp / "move.nc").write_text("G1X250F600\nG1X20\n")  # 23 s of steady motion at 10 mm/s
            os.replace(tmp / "move.nc", job_dir / "move.nc")
            await asyncio.sleep(seconds)  # the measurement window itself
            daemon.stop.set()
            await asyncio.wait_for(task, 15)

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        body = json.loads(msg.payload)
        x = body.get("values", {}).get("mpos_x")
        if x is not None:
            received.append((now, x))

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with Mosquitto() as broker, tempfile.TemporaryDirectory() as tmp:
        client = paho.Client(CallbackAPIVersion.VERSION2)
        client.on_message = on_message
        subscribed = threading.Event()
        client.on_subscribe = lambda *a: subscribed.set()
        client.connect("127.0.0.1", broker.port)
        client.subscribe("uns/v1/bench/s/a/l/c/mill/data", qos=1)
        client.loop_start()
        subscribed.wait(10)
        try:
            asyncio.run(main(broker.port, Path(tmp)))
        finally:
            client.loop_stop()
            client.disconnect()
    lat = sorted((t - emitted[f"{x:.3f}"]) * 1000 for t, x in received if f"{x:.3f}" in emitted)
    if not lat:
        print("\nstatus-to-MQTT latency: no samples")
        return
    p = lambda q: lat[min(len(lat) - 1, math.floor(q * len(lat)))]  # noqa: E731
    print(f"\nstatus-to-MQTT latency ({len(lat)} position changes, status every 200 ms, daemon + mosquitto on this host)")
    print(f"  report written -> MQTT received: median {statistics.median(lat):.1f} ms, p95 {p(0.95):.1f} ms, max {lat[-1]:.1f} ms")
    print("  a change waits up to one status interval (200 ms) for the next report on top of that")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller runs")
    ap.add_argument("--only", choices=["streaming", "planner", "marlin", "latency"])
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    parts = {"streaming": streaming_figures, "planner": planner_figures, "marlin": marlin_figures, "latency": latency_figures}
    for name, fn in parts.items():
        if args.only in (None, name):
            fn(args.quick)


if __name__ == "__main__":
    main()
