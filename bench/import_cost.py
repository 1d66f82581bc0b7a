"""What a minimal `cellctl run` imports, and what each import costs in time and RSS.

Starts a private mosquitto and one simulated Modbus energy meter, runs `cellctl run` on a
one-device config under `python -X importtime` with an audit hook that reads
/proc/self/statm at every import, stops the daemon (SIGTERM) once it has published for
a moment, and prints per top-level package: modules, import self-time (ms) and the RSS
growth (MB) from the start of each import to the start of the next one, in import order
(so a package is charged what it adds on top of what came before it).

    .venv/bin/python bench/import_cost.py [--top 25] [--keep DIR]

Linux only (statm). The sources are byte-compiled first, as an installed package is.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import modbus_device, write_config

# Runs in the daemon's process before anything else: one (module, RSS, time) row per import.
_PROBE = """
import atexit, os, sys, time
_page = os.sysconf("SC_PAGE_SIZE")
_rows = []
_statm = open("/proc/self/statm", "rb")
def _rss():
    _statm.seek(0)
    return int(_statm.read().split()[1]) * _page
def _hook(event, args):
    if event == "import":
        _rows.append((args[0], _rss(), time.perf_counter()))
sys.addaudithook(_hook)
def _dump():
    _rows.append(("<stop>", _rss(), time.perf_counter()))
    with open(os.environ["IMPORT_COST_OUT"], "w") as out:
        out.writelines(f"{n}\\t{r}\\t{t}\\n" for n, r, t in _rows)
atexit.register(_dump)
sys.argv = ["cellctl", *sys.argv[1:]]
from cellctl.cli.main import main
main()
"""

RUN_S = 3.0  # after the first data message: long enough for the run-time imports


def _top(name: str) -> str:
    return name.split(".", maxsplit=1)[0]


def report(rows_file: Path, importtime: str, top: int) -> None:
    rows: list[tuple[str, int]] = []
    for line in rows_file.read_text().splitlines():
        module, rss, _ = line.split("\t")
        rows.append((module, int(rss)))
    rss_by: collections.Counter[str] = collections.Counter()
    for (module, before), (_, after) in itertools.pairwise(rows):
        rss_by[_top(module)] += after - before
    self_us: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_s, _, name = line.split(":", 1)[1].split("|")
        self_us[_top(name.strip())] += int(self_s)
        count[_top(name.strip())] += 1
    print(f"modules imported: {sum(count.values())}; import self-time {sum(self_us.values()) / 1000:.0f} ms")
    print(f"RSS: {rows[0][1] / 1e6:.1f} MB at the first import, {rows[-1][1] / 1e6:.1f} MB at stop")
    print(f"{'package':24} {'modules':>7} {'self ms':>8} {'RSS MB':>7}")
    for name, us in self_us.most_common(top):
        print(f"{name:24} {count[name]:7d} {us / 1000:8.1f} {rss_by[name] / 1e6:7.2f}")


async def _run(workdir: Path, top: int) -> None:
    with Mosquitto() as broker:
        async with SimModbusServer({1: "energy-meter"}, tick=0.05, seed=3) as sim:
            port = await sim.serve_tcp()
            config = write_config(
                workdir, broker.port, [modbus_device("m1", "sim-energy-meter", port, 1)], cell="importcost"
            )
            rows_file = workdir / "imports.tsv"
            log = workdir / "stderr.txt"  # -X importtime's lines and the daemon's log
            env = {**os.environ, "IMPORT_COST_OUT": str(rows_file)}
            cmd = [sys.executable, "-X", "importtime", "-c", _PROBE, "run", str(config)]
            with log.open("wb") as err:
                proc = await asyncio.create_subprocess_exec(
                    *cmd, env=env, stdout=err, stderr=err, stdin=subprocess.DEVNULL
                )
            try:
                deadline = time.monotonic() + 60
                while b"mqtt_connected" not in log.read_bytes():
                    if proc.returncode is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the daemon did not connect:\n{log.read_text()[-2000:]}")
                    await asyncio.sleep(0.1)
                await asyncio.sleep(RUN_S)
            finally:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 30)
            report(rows_file, log.read_text(), top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=25, help="packages to list, by import self-time")
    ap.add_argument("--keep", type=Path, help="work in DIR (config, daemon log, rows) and keep it")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from modbus_pipeline import compile_sources

    compile_sources()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        asyncio.run(_run(args.keep, args.top))
        return
    with tempfile.TemporaryDirectory(prefix="cellctl-import-cost-") as d:
        asyncio.run(_run(Path(d), args.top))


if __name__ == "__main__":
    main()
