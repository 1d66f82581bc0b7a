"""Start-up cost (issue 15): a cell imports only what its config uses. A real daemon runs in
a subprocess against the session's broker and a simulated meter until its first data
message is published, then reports its `sys.modules`: without Sparkplug, metrics, status
page or jobs configured, their modules (and protobuf, prometheus_client, aiohttp) must not
be there; with them configured, they must (so the guard can fail)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto, free_port
from cellctl.testing import modbus_device, write_config

pytestmark = pytest.mark.timeout(120)

# Runs the daemon as `cellctl run` does (load, build, run) until the first UNS message
# left, then prints the modules it imported. Bounded: 60 s to first data.
_PROBE = """
import asyncio, json, sys
from pathlib import Path
from cellctl.cli.main import import_structlog_without_rich
import_structlog_without_rich()  # as `cellctl run` does first
from cellctl.config.loader import load_cell
from cellctl.daemon import Daemon

async def main() -> None:
    daemon = Daemon(load_cell(Path(sys.argv[1])))
    task = asyncio.create_task(daemon.run(install_signal_handlers=False))
    async with asyncio.timeout(60):
        while not (daemon.started.is_set() and daemon.session.published > 0):
            await asyncio.sleep(0.02)
    daemon.terminate()
    await task

asyncio.run(main())
print(json.dumps(sorted(sys.modules)))
"""

# (module, what configures it)
UNCONFIGURED = [
    ("cellctl.sparkplug.codec", "publish.formats: sparkplug"),
    ("cellctl.deliver.sparkplug", "publish.formats: sparkplug"),
    ("google.protobuf", "publish.formats: sparkplug"),
    ("cellctl.observe.server", "metrics"),
    ("prometheus_client", "metrics"),
    ("cellctl.status.server", "status_page"),
    ("aiohttp", "status_page"),
    ("cellctl.jobs.device", "a profile with jobs"),
    ("cellctl.jobs.shifts", "oee.shifts"),
    ("cellctl.contract.asyncapi", "never at run time"),
    ("asyncua", "an OPC UA device"),
    ("rich", "never by the daemon (structlog would import it for console tracebacks)"),
    ("cellctl.cli.commands", "never by `cellctl run` (`cellctl write | call | job` only)"),
    ("getpass", "never by `cellctl run` (the command CLI's default requester)"),
    ("cellctl.cli.poll", "never by `cellctl run` (`cellctl poll`)"),
    ("cellctl.cli.watch", "never by `cellctl run` (`cellctl watch`)"),
    ("cellctl.cli.demo", "never by `cellctl run` (`cellctl demo`)"),
    ("cellctl.cli.output", "never by `cellctl run` (tables for the CLI, rich)"),
    ("cellctl.contract.schema", "never at run time (`cellctl schema`)"),
    ("cellctl.contract.registry", "never at run time (`cellctl schema`, `asyncapi`)"),
    ("cellctl.contract.payloads", "never at run time (its TypedDicts only annotate the encoders)"),
    ("cellctl_opcua", "an OPC UA device"),
    ("cellctl_gcode.plugin", "a G-code device"),
    ("cellctl_gcode.cli", "never by `cellctl run` (`cellctl gcode`, `ports`)"),
    ("cellctl_modbus.cli", "never by `cellctl run` (`cellctl read modbus`, `scan modbus`)"),
    ("cellctl_modbus.commission", "never by `cellctl run` (commissioning)"),
    ("cryptography", "an OPC UA device with security"),
    ("pymodbus.server", "never by the daemon (the simulators)"),
    ("cellctl.localbroker", "never by the daemon (tests, demo, benchmarks)"),
    ("click", "never by `cellctl run` (the fast path in cellctl/cli/main.py; the other commands)"),
    ("cellctl.cli.app", "never by `cellctl run` (the click application)"),
    ("cellctl.cli.convention", "never by `cellctl run` (click's root group)"),
    ("cellctl.cli.entrypoints", "never by `cellctl run` (contributed commands)"),
    ("cellctl.cli.failure", "never by `cellctl run` (CommandFailed, a click exception)"),
]


@pytest.mark.parametrize("module", [m for m, _ in UNCONFIGURED])
def test_guarded_names_are_real_modules(module: str) -> None:
    """A misspelt or renamed module would make its guard pass vacuously."""
    assert importlib.util.find_spec(module) is not None, module


@pytest.fixture
async def meter() -> AsyncIterator[int]:
    async with SimModbusServer({1: "energy-meter"}, tick=0.05, seed=3) as sim:
        yield await sim.serve_tcp()


def _modules(config: Path) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(config)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _config(tmp_path: Path, broker: Mosquitto, port: int, unique: str, **extra: Any) -> Path:
    device = modbus_device("m1", "sim-energy-meter", port, 1)
    return write_config(tmp_path, broker.port, [device], cell=unique, **extra)


async def test_minimal_cell_imports_nothing_it_does_not_use(
    tmp_path: Path, broker: Mosquitto, meter: int, unique: str
) -> None:
    modules = _modules(_config(tmp_path, broker, meter, unique))
    assert "cellctl.daemon" in modules  # it did run
    assert "cellctl_modbus" in modules
    assert "cellctl_modbus.plugin" in modules  # the names below are real modules of the same kind
    loaded = [f"{m} ({why})" for m, why in UNCONFIGURED if m in modules]
    assert loaded == [], f"imported although not configured: {loaded}"


async def test_configured_features_are_imported(
    tmp_path: Path, broker: Mosquitto, meter: int, unique: str
) -> None:
    config = _config(
        tmp_path,
        broker,
        meter,
        unique,
        publish={"prefix": "uns/v1", "formats": ["uns", "sparkplug"]},
        metrics={"listen": f"127.0.0.1:{free_port()}"},
        status_page={"port": 0},
    )
    modules = _modules(config)
    for m in ("cellctl.sparkplug.codec", "google.protobuf", "cellctl.observe.server", "aiohttp"):
        assert m in modules, m
