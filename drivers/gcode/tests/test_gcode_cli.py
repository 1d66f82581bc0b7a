"""The CLI against simulators running as separate processes (as a user would run them)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cellctl_gcode.cli import gcode, ports
from click.testing import CliRunner
from gcode_testutil import grbl_job, marlin_job

pytestmark = pytest.mark.timeout(60)


def start_sim(kind: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", f"cellctl_sim.{kind}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().split()
    assert first[0] == kind, first
    return proc, first[1]


@pytest.fixture
def grbl_port() -> Iterator[str]:
    proc, path = start_sim("grbl", "--speedup", "inf")
    yield path
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def marlin_port() -> Iterator[str]:
    proc, path = start_sim("marlin", "--speedup", "inf")
    yield path
    proc.terminate()
    proc.wait(timeout=10)


def test_send_streams_a_file_and_reports_json(grbl_port: str, tmp_path: Path) -> None:
    job = tmp_path / "part.nc"
    job.write_text("; header\n" + "\n".join(grbl_job(2000, seed=31)) + "\n", encoding="ascii")
    result = CliRunner().invoke(gcode, ["send", "--port", grbl_port, "--json", str(job)])
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.output.strip().splitlines()[-1])
    assert summary["state"] == "completed"
    assert summary["lines_acked"] == summary["lines_total"] == 2000


def test_send_with_a_progress_bar_to_marlin(marlin_port: str, tmp_path: Path) -> None:
    job = tmp_path / "print.gcode"
    job.write_text("\n".join(marlin_job(500, seed=32)) + "\n", encoding="ascii")
    result = CliRunner().invoke(gcode, ["send", "-p", marlin_port, "--dialect", "marlin", str(job)])
    assert result.exit_code == 0, result.output
    assert "print.gcode (marlin)" in result.output
    assert "completed: 500 lines in" in result.output


def test_send_exit_codes_say_what_went_wrong(grbl_port: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.nc"
    bad.write_text("G21\nG0X1\nG5X1\nG0X2\n", encoding="ascii")
    failed = CliRunner().invoke(gcode, ["send", "--port", grbl_port, str(bad)])
    assert failed.exit_code == 1
    assert "failed: line 3 'G5X1' was rejected: error:20 (unsupported or invalid G-code command)" in failed.output
    long = tmp_path / "long.nc"
    long.write_text("G1X" + "1" * 90 + "\n", encoding="ascii")
    refused = CliRunner().invoke(gcode, ["send", "--port", grbl_port, str(long)])
    assert refused.exit_code == 2
    assert "job 'long.nc': line 1 is 93 characters long" in refused.output
    missing = CliRunner().invoke(gcode, ["send", "--port", str(tmp_path / "ttyNONE"), str(bad)])
    assert missing.exit_code == 1
    assert "cannot open serial port" in missing.output


def test_console_round_trip(grbl_port: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cellctl_gcode", "gcode", "console", "--port", grbl_port],
        input="G0 X5\n?\n$I\nG5\n:quit\n", capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == f"connected to {grbl_port} (grbl); :help for help"
    assert "ok" in out
    assert any(x.startswith("< <Idle|MPos:5.000,0.000,0.000") for x in out)
    assert "< [VER:1.1h.20190830:]" in out
    assert "error:20 (unsupported or invalid G-code command)" in out


def test_ports_lists_json() -> None:
    result = CliRunner().invoke(ports, ["--json"])
    assert result.exit_code == 0
    rows = orjson.loads(result.output)
    assert isinstance(rows, list)
    for row in rows:
        assert set(row) == {"device", "by_id", "description", "hwid", "vid_pid", "serial_number"}
