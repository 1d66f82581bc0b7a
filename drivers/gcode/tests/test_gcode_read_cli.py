"""`cellctl read gcode`: one status report from the GRBL and Marlin simulators run as
processes on real ptys, and the errors a user meets."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner

from cellctl.cli.main import cli

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def serial_sim() -> Iterator[Callable[[str], str]]:
    """Start `python -m cellctl_sim.<kind>`; returns the pty path it prints. Stopped by PID."""
    procs: list[subprocess.Popen[str]] = []

    def start(kind: str) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"cellctl_sim.{kind}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.2)[0]:
                line = proc.stdout.readline()
                if line.startswith(kind):
                    return line.split()[1]
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"the {kind} simulator printed no pty within 20 s")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def test_read_grbl_status_report(serial_sim: Callable[[str], str]) -> None:
    port = serial_sim("grbl")
    result = CliRunner().invoke(cli, ["read", "gcode", "--port", port, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dialect"] == "grbl"
    assert data["raw"][0].startswith("<Idle|")
    assert data["status"]["state"] == "Idle"
    assert data["status"]["mpos"] == [0.0, 0.0, 0.0]
    human = CliRunner().invoke(cli, ["read", "gcode", "--port", port])
    assert human.exit_code == 0
    assert "state          Idle" in human.stdout


def test_read_marlin_position_and_temperatures(serial_sim: Callable[[str], str]) -> None:
    port = serial_sim("marlin")
    result = CliRunner().invoke(cli, ["read", "gcode", "--port", port, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dialect"] == "marlin"
    assert data["status"]["pos.x"] == 0.0
    assert 15 < data["status"]["temp.hotend"] < 40


def test_read_gcode_missing_port_is_a_runtime_error_as_json() -> None:
    result = CliRunner().invoke(cli, ["read", "gcode", "--port", "/dev/cellctl-no-such-port", "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)
    assert error["exit_code"] == 1
    assert "/dev/cellctl-no-such-port" in error["error"]
