"""`cellctl watch`: a running cell seen from the backbone (real mosquitto, the daemon and
the Modbus simulator as processes); the view itself with malformed and late messages."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from cellctl.cli.main import cli
from cellctl.cli.watch import CellView, job_lines
from cellctl.localbroker import Mosquitto
from cellctl.testing import modbus_device, root_topic, write_config

pytestmark = pytest.mark.timeout(120)
CELLCTL = [sys.executable, "-m", "cellctl.cli.main"]


def start(cmd: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def first_line(proc: subprocess.Popen[str], predicate: Callable[[str], Any], timeout: float, what: str) -> Any:
    """The first stdout line for which predicate is truthy, within `timeout` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            last = proc.stdout.readline()
            if not last:
                break
            found = predicate(last)
            if found:
                return found
    raise AssertionError(f"no {what} within {timeout} s; last line: {last[:300]!r}")


@pytest.fixture
def cell(broker: Mosquitto, unique: str, tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A running cell: the simulator and `cellctl run` as processes; yields (config, simulator)."""
    sim = start([sys.executable, "-m", "cellctl_sim.modbus", "--tcp", "127.0.0.1:0", "--tick", "0.1"])
    daemon = None
    try:
        port = first_line(sim, lambda line: line.startswith("tcp ") and int(line.split()[1].rsplit(":", 1)[1]),
                          20, "simulator listener")  # fmt: skip
        devices = [
            modbus_device("meter", "sim-energy-meter", port, 1, availability={"offline_after": 1}),
            modbus_device("plc", "sim-machine-plc", port, 2),
        ]
        config = write_config(tmp_path, broker.port, devices, cell=unique)
        daemon = start([*CELLCTL, "run", str(config)])
        yield config, sim
    finally:
        if daemon is not None:
            stop(daemon)
        stop(sim)


def view_of(line: str) -> dict[str, Any] | None:
    return json.loads(line) if line.startswith("{") else None


def test_watch_json_streams_the_cell_and_shows_a_device_going_down(
    cell: tuple[Path, subprocess.Popen[str]], unique: str
) -> None:
    config, sim = cell
    watch = start([*CELLCTL, "watch", "--config", str(config), "--json", "--interval", "0.1", "--duration", "60"])
    try:
        def meter_good(line: str) -> dict[str, Any] | None:
            view = view_of(line)
            meter = (view or {}).get("devices", {}).get("meter", {})
            voltage = meter.get("points", {}).get("voltage_l1", {})
            return view if voltage.get("q") == "good" and isinstance(voltage.get("v"), float) else None

        view = first_line(watch, meter_good, 30, "a good meter reading")
        assert view["root"] == root_topic(unique)
        assert view["connected"] is True
        assert view["status"] == "online"
        stop(sim)  # every device of the simulator goes away

        def meter_down(line: str) -> dict[str, Any] | None:
            view = view_of(line)
            meter = (view or {}).get("devices", {}).get("meter", {})
            return view if meter.get("available") is False else None

        down = first_line(watch, meter_down, 30, "the meter shown as down")
        assert down["devices"]["meter"]["points"]["voltage_l1"]["q"] == "bad"
    finally:
        stop(watch)


def test_watch_needs_a_config_or_a_root() -> None:
    result = CliRunner().invoke(cli, ["watch", "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"].startswith("give --config CELL.yaml")


def test_view_ignores_malformed_messages_and_late_history() -> None:
    view = CellView("uns/v1/a/b/c/d/e")
    root = view.root
    view.on_message(f"{root}/m1/data", orjson.dumps({"values": {"t": 1.5}}))
    view.on_message(f"{root}/m1/data", b"not json")
    view.on_message(f"{root}/m1/data", orjson.dumps([1, 2]))
    view.on_message(f"{root}/m1/data", orjson.dumps({"values": "nonsense", "quality": 3}))
    view.on_message(f"{root}/m1/data", orjson.dumps({"historical": True, "values": {"t": 0.5}}))
    view.on_message("some/other/topic", orjson.dumps({"values": {"t": 9}}))
    view.on_message(f"{root}/events", orjson.dumps({"event": "outbox_dropped", "count": 2}))
    snap = view.snapshot()
    assert snap["devices"]["m1"]["points"]["t"]["v"] == 1.5
    assert snap["events"] == [{"event": "outbox_dropped", "count": 2}]
    view.render()  # draws whatever it holds


def test_view_shows_the_current_job_and_oee() -> None:
    view = CellView("uns/v1/a/b/c/d/e")
    root = view.root
    job = {
        "ts": 1, "job_id": "J-4711", "order_id": None, "program": "BRACKET", "state": "running",
        "start_ts": 1, "end_ts": None, "reason": None, "produced": 8, "good": 7, "scrap": 1,
        "running_s": 20.0, "cycle_time_s": 2.5, "energy_kwh": 0.125,
        "materials": {"filament": {"amount": 1519.0, "unit": "mm", "volume_cm3": 3.65, "mass_g": 4.53}},
    }  # fmt: skip
    oee = {
        "availability": 0.8125, "performance": 0.923, "quality": 0.983, "oee": 0.7375,
        "seconds": {"executing": 11700.0}, "produced": 600, "good": 590, "window": "hour", "start_ts": 0,
    }  # fmt: skip
    view.on_message(f"{root}/m1/job", orjson.dumps(job))
    view.on_message(f"{root}/m1/state", orjson.dumps({"available": True, "points": {}, "oee": oee}))
    view.on_message(f"{root}/m1/job", orjson.dumps({**job, "historical": True, "job_id": "old"}))
    dev = view.snapshot()["devices"]["m1"]
    assert dev["job"]["job_id"] == "J-4711"
    assert job_lines(dev) == [
        "job J-4711 running: 8 made, 7 good, 1 scrap, filament 1519.0 mm (4.5 g), 0.125 kWh",
        "OEE hour: A 81% x P 92% x Q 98% = 74% (600 made)",
    ]
