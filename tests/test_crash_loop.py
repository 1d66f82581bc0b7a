"""A crash loop is bounded and visible: systemd limits the restart rate, a crashed daemon's
last log line says why, and a start after too many recent ones says so."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from cellctl.lifecycle import STARTS_FILE, STARTS_OFTEN, STARTS_WINDOW_S, record_start
from cellctl.localbroker import Mosquitto
from cellctl.testing import wait_until, write_config

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "cellctl.service"
CELLCTL = [sys.executable, "-m", "cellctl.cli.main"]


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT, encoding="utf-8")
    return parser


def test_unit_limits_the_start_rate() -> None:
    unit = _unit()
    assert unit["Unit"]["StartLimitIntervalSec"] == "15min"
    assert int(unit["Unit"]["StartLimitBurst"]) >= 2
    assert unit["Service"]["Restart"] == "on-failure"
    assert int(unit["Service"]["RestartSec"]) >= 5
    assert unit["Service"]["RestartPreventExitStatus"] == "2"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_is_valid_for_the_installed_systemd(tmp_path: Path) -> None:
    """No unknown keys for this systemd (RestartSteps= needs 254): `systemd-analyze
    verify` says nothing. The binary path is pointed at this checkout's cellctl."""
    cellctl = shutil.which("cellctl", path=str(Path(sys.executable).parent))
    assert cellctl is not None
    unit = tmp_path / "cellctl.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("/usr/bin/cellctl", cellctl))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout + proc.stderr == ""


def test_start_history_keeps_the_window_and_survives_a_bad_file(tmp_path: Path) -> None:
    t0 = 1_800_000_000.0
    assert record_start(tmp_path, now=t0) == [t0]
    assert record_start(tmp_path, now=t0 + 60) == [t0, t0 + 60]
    # the first start leaves the window; a start "from the future" (clock set back) is dropped
    (tmp_path / STARTS_FILE).write_text(json.dumps({"starts": [t0, t0 + 60, t0 + 10_000]}))
    assert record_start(tmp_path, now=t0 + STARTS_WINDOW_S + 1) == [t0 + 60, t0 + STARTS_WINDOW_S + 1]
    (tmp_path / STARTS_FILE).write_text("{not json")
    assert record_start(tmp_path, now=t0 + 2000) == [t0 + 2000]
    for i in range(300):
        recent = record_start(tmp_path, now=t0 + 3000 + i)
    assert len(recent) == 100


def _crashy_driver(site: Path) -> None:
    """A third-party driver, installed as any other (an entry point in cellctl.drivers),
    with a bug: planning raises something that is not a config problem."""
    site.mkdir()
    (site / "crashy_driver.py").write_text(
        "from pydantic import BaseModel, ConfigDict\n"
        "class Any_(BaseModel):\n"
        "    model_config = ConfigDict(extra='allow')\n"
        "class Plugin:\n"
        "    name = 'crashy'\n"
        "    connection_model = options_model = address_model = Any_\n"
        "    def check_point(self, point): return None\n"
        "    def plan_summary(self, ctx): raise RuntimeError('planner exploded')\n"
        "    def open(self, ctx): raise NotImplementedError\n"
        "plugin = Plugin()\n",
        encoding="utf-8",
    )
    meta = site / "crashy_driver-1.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: crashy-driver\nVersion: 1.0\n")
    (meta / "entry_points.txt").write_text("[cellctl.drivers]\ncrashy = crashy_driver:plugin\n")


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            out.append(json.loads(line))
        except ValueError:
            pytest.fail(f"line {n} is not JSON: {line!r}\n--- log ---\n{text[-3000:]}")
    return out


def test_a_crash_ends_with_one_json_line_and_exit_1(tmp_path: Path) -> None:
    _crashy_driver(tmp_path / "site")
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "crashy.yaml").write_text(
        "name: crashy\ndriver: crashy\npoints: [{id: x, type: int, address: {reg: 1}}]\n"
    )
    device = {"id": "d1", "driver": "crashy", "profile": "crashy", "connection": {}}
    config = write_config(tmp_path, 1, [device], cell="crash", profile_dirs=[str(profiles)])
    proc = subprocess.run(
        [*CELLCTL, "run", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
    )
    assert proc.returncode == 1, proc.stderr
    lines = json_lines(proc.stderr)
    last = lines[-1]
    assert last["event"] == "cellctl_crashed"
    assert last["level"] == "critical"
    assert last["error"] == "RuntimeError: planner exploded"
    assert last["exception"].startswith("Traceback")
    assert "plan_summary" in last["exception"]


class _Run:
    """One `cellctl run` whose stderr is read as it comes."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [*CELLCTL, "run", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="stderr-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def events(self) -> list[dict[str, Any]]:
        return json_lines("".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)


def test_a_start_after_too_many_recent_ones_is_logged(broker: Mosquitto, unique: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, broker.port, [], cell=unique)
    starts = tmp_path / "state" / STARTS_FILE
    warnings = []
    for n in range(1, STARTS_OFTEN + 2):
        run = _Run(config)
        try:
            wait_until(
                lambda run=run: any(e["event"] == "cellctl_starting" for e in run.events()),  # type: ignore[misc]
                timeout=30,
                what=f"start {n}",
            )
        finally:
            run.stop()
        warnings.append([e for e in run.events() if e["event"] == "cellctl_restarting_often"])
        assert len(json.loads(starts.read_text())["starts"]) == n
    assert warnings[:-1] == [[]] * STARTS_OFTEN
    (warning,) = warnings[-1]
    assert warning["starts"] == STARTS_OFTEN + 1
    assert warning["level"] == "warning"
