"""The CLI as users and systemd run it: real processes, real signals, real broker."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cellctl import __version__
from cellctl.cli.main import cli
from cellctl.config.profiles import load_profile, search_path
from cellctl.localbroker import Mosquitto, find_mosquitto, free_port
from cellctl.testing import Collector, modbus_device, root_topic, write_config

pytestmark = pytest.mark.timeout(90)
CELLCTL = [sys.executable, "-m", "cellctl.cli.main"]


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_profiles_list_and_show() -> None:
    listed = CliRunner().invoke(cli, ["profiles", "list"], terminal_width=200)
    assert listed.exit_code == 0, listed.output
    for name in ("sim-energy-meter", "sim-machine-plc", "sim-types", "sim-bench"):
        assert name in listed.output
    shown = CliRunner().invoke(cli, ["profiles", "show", "sim-machine-plc"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "temperature" in shown.output
    assert "out_of_service" in shown.output
    missing = CliRunner().invoke(cli, ["profiles", "show", "no-such-profile"])
    assert missing.exit_code == 2
    assert "profile 'no-such-profile' not found" in missing.stderr


def test_check_prints_the_plan(tmp_path: Path) -> None:
    devices = [
        modbus_device("meter", "sim-energy-meter", 5020, 1),
        modbus_device("plc", "sim-machine-plc", 5020, 2, enabled=False),
    ]
    config = write_config(tmp_path, 1883, devices, cell="c1")
    result = CliRunner().invoke(cli, ["check", "--json", str(config)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert [d["id"] for d in summary["devices"]] == ["meter"]
    assert summary["disabled_devices"] == ["plc"]
    meter = summary["devices"][0]
    assert meter["points"] == len(load_profile("sim-energy-meter", search_path()).points)
    assert meter["requests"], "a planned request list"
    assert meter["topics"]["data"] == f"{root_topic('c1')}/meter/data"
    human = CliRunner().invoke(cli, ["check", str(config)], terminal_width=200)
    assert human.exit_code == 0
    assert "1 device(s)" in human.output


def test_run_with_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "cell.yaml"
    bad.write_text("identity: {enterprise: acme}\n", encoding="utf-8")
    proc = subprocess.run(
        [*CELLCTL, "run", str(bad)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 2
    assert "identity.site: required field is missing" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture
def sim_process() -> Iterator[int]:
    """The Modbus simulator as its own process (as in the demo), stopped by PID."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellctl_sim.modbus", "--tcp", f"127.0.0.1:{port}", "--tick", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("tcp "), line
    yield port
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def test_run_publishes_and_stops_cleanly_on_sigterm(
    sim_process: int, broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, broker.port, [modbus_device("meter", "sim-energy-meter", sim_process, 1)], cell=unique
    )
    collector = Collector(broker.port, f"{root_topic(unique)}/#")
    started = time.monotonic()
    proc = subprocess.Popen(
        [*CELLCTL, "run", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        collector.wait_for(lambda _m: collector.on("/meter/data"), timeout=20, what="first data message")
        first_publish = time.monotonic() - started
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    collector.wait_for(
        lambda _m: collector.latest("/status") == {"status": "offline", "reason": "shutdown"},
        what="offline status",
    )
    collector.close()
    assert proc.returncode == 0, err
    assert first_publish < 20
    # not a TTY: one JSON object per log line
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "cellctl_starting" in events
    assert "cellctl_stopped" in events


def test_demo_runs_end_to_end_logs_at_info_and_leaves_nothing_behind(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CELLCTL, "demo", "--duration", "4", "--no-table"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # where its temporary folders go
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "devices: meter-1, mill-1" in proc.stdout
    assert "mill-1: OEE hour: A " in proc.stdout  # the PLC's OEE (and its job, once one ran)
    # --no-table logs the daemon's events at the default level (info), as JSON lines
    events = {json.loads(line)["event"] for line in proc.stderr.splitlines() if line.startswith("{")}
    assert {"cellctl_starting", "cellctl_stopped"} <= events, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("amqtt") is not None, reason="amqtt is installed here")
def test_demo_embedded_broker_without_amqtt_says_what_is_missing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CELLCTL, "demo", "--broker", "embedded", "--duration", "1", "--no-table"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert proc.returncode == 1, proc.stderr
    assert "the embedded broker needs amqtt" in proc.stderr
    assert "pip install 'cellctl[embedded-broker]'" in proc.stderr
    if find_mosquitto() is not None:
        assert "--broker mosquitto" in proc.stderr
        assert "neither" not in proc.stderr
    assert "Traceback" not in proc.stderr
    # a demo that failed to start leaves nothing behind either
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("what", ["config", "profile"])
def test_schema_export_is_json_schema_of_the_models(what: str) -> None:
    result = CliRunner().invoke(cli, ["schema", what])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["additionalProperties"] is False
    expected = {"config": {"identity", "backbone", "devices"}, "profile": {"name", "driver", "points"}}[what]
    assert expected <= set(schema["properties"])


@pytest.mark.parametrize("problem", ["not-a-directory", "locked"])
def test_run_refuses_an_unusable_state_dir_with_exit_2(problem: str, tmp_path: Path) -> None:
    from cellctl.outbox import Outbox

    config = write_config(tmp_path, 1883, [], cell="c1")
    text = config.read_text()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    holder = None
    if problem == "not-a-directory":
        config.write_text(text.replace(str(tmp_path / "state"), str(blocker / "state")))
    else:
        holder = Outbox(tmp_path / "state" / "outbox.sqlite", max_bytes=1 << 20, max_age_s=60)
    try:
        proc = subprocess.run(
            [*CELLCTL, "run", str(config)], capture_output=True, text=True, timeout=30, check=False
        )
    finally:
        if holder is not None:
            holder.close()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "state_dir" in proc.stderr
    expected = "Not a directory" if problem == "not-a-directory" else f"in use by another process (pid {os.getpid()})"
    assert expected in proc.stderr
