"""`cellctl poll`: each device of a cell read once through the engine's code, against the
Modbus simulator in its own process; the commissioning traps are flagged."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cellctl.cli.main import cli
from cellctl.testing import free_port, modbus_device, write_config

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def sim_port() -> Iterator[int]:
    """`python -m cellctl_sim.modbus` (unit 1 energy meter, unit 2 machine PLC); stopped by PID."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellctl_sim.modbus", "--tcp", "127.0.0.1:0", "--tick", "3600", "--seed", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.2)[0]:
                line = proc.stdout.readline()
                if line.startswith("tcp "):
                    yield int(line.split()[1].rsplit(":", 1)[1])
                    break
            assert proc.poll() is None
        else:
            raise AssertionError("the simulator did not start within 20 s")
    finally:
        proc.terminate()
        proc.wait(10)


def swapped_meter_profile(folder: Path) -> None:
    """The energy meter's profile with its float32 read high word first (the device sends
    low word first): the classic wrong word order."""
    source = Path(__file__).resolve().parents[1] / "sim_devices/cellctl_sim/profiles/sim-energy-meter.yaml"
    profile = yaml.safe_load(source.read_text(encoding="utf-8"))
    profile["name"] = "swapped-meter"
    for point in profile["points"]:
        if point["address"].get("type") == "float32":
            point["address"]["order"] = "ABCD"
    folder.mkdir()
    (folder / "swapped-meter.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")


def poll(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["poll", *args], terminal_width=200)
    return result.exit_code, result.stdout, result.stderr


def test_poll_reads_every_point_and_the_machine_state(tmp_path: Path, sim_port: int) -> None:
    devices = [
        modbus_device("meter", "sim-energy-meter", sim_port, 1),
        modbus_device("plc", "sim-machine-plc", sim_port, 2),
    ]
    config = write_config(tmp_path, 1, devices, cell="c1")
    code, out, err = poll(str(config), "--json")
    assert code == 0, out + err
    meter, plc = json.loads(out)["devices"]
    assert meter["traps"] == []
    assert all(p["quality"] == "good" for p in meter["points"])
    voltage = next(p for p in meter["points"] if p["id"] == "voltage_l1")
    assert 215 < voltage["value"] < 245
    assert voltage["unit"] == "V"
    assert meter["machine"] is None  # a meter maps no machine state
    assert plc["machine"]["item_state"] in ("not_executing", "executing", "out_of_service")
    code, out, _ = poll(str(config), "--device", "plc")
    assert code == 0
    assert "ok: every point readable" in out
    assert "meter" not in out


def test_poll_flags_wrong_unit_wrong_profile_and_wrong_word_order(tmp_path: Path, sim_port: int) -> None:
    swapped_meter_profile(tmp_path / "profiles")
    devices = [
        modbus_device("wrong-unit", "sim-machine-plc", sim_port, 1),  # unit 1 is the meter
        modbus_device("wrong-profile", "sim-energy-meter", sim_port, 2),  # unit 2 is the PLC
        modbus_device("swapped", "swapped-meter", sim_port, 1),
    ]
    config = write_config(tmp_path, 1, devices, cell="c1", profile_dirs=[str(tmp_path / "profiles")])
    code, out, err = poll(str(config), "--json")
    assert code == 1, err
    wrong_unit, wrong_profile, swapped = json.loads(out)["devices"]
    assert wrong_unit["traps"][0].startswith("every point is bad")
    assert "wrong unit id" in wrong_unit["traps"][0]
    assert wrong_unit["machine"]["item_state"] == "unknown"
    assert wrong_profile["traps"][0].startswith("every point is bad")
    flagged = " ".join(swapped["traps"])
    assert "'voltage_l1'" in flagged
    assert "wrong word order" in flagged
    code, out, _ = poll(str(config), "--device", "swapped")
    assert code == 1
    assert "! point 'voltage_l1'" in out


def test_poll_state_point_bad_is_flagged(tmp_path: Path, sim_port: int) -> None:
    # The PLC's state register is refused while the rest reads: a hole in the map.
    source = Path(__file__).resolve().parents[1] / "sim_devices/cellctl_sim/profiles/sim-machine-plc.yaml"
    profile = yaml.safe_load(source.read_text(encoding="utf-8"))
    profile["name"] = "plc-state-elsewhere"
    state_point = next(p for p in profile["points"] if p["id"] == profile["state"]["point"])
    state_point["address"]["start"] = 900  # nothing there on the simulator
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "plc-state-elsewhere.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
    devices = [modbus_device("plc", "plc-state-elsewhere", sim_port, 2)]
    config = write_config(tmp_path, 1, devices, cell="c1", profile_dirs=[str(tmp_path / "profiles")])
    code, out, _ = poll(str(config), "--json")
    assert code == 1
    (plc,) = json.loads(out)["devices"]
    assert any(t.startswith(f"state point {state_point['id']!r} is bad") for t in plc["traps"])
    assert plc["machine"]["item_state"] == "unknown"


def test_poll_unreachable_device_unknown_device_and_bad_config(tmp_path: Path) -> None:
    devices = [modbus_device("gone", "sim-energy-meter", free_port(), 1)]
    config = write_config(tmp_path, 1, devices, cell="c1")
    code, out, _ = poll(str(config), "--json")
    assert code == 1
    (gone,) = json.loads(out)["devices"]
    assert gone["reachable"] is False
    assert gone["traps"][0].startswith("device unreachable:")
    code, _, err = poll(str(config), "--device", "nope")
    assert code == 2
    assert "no enabled device 'nope' (devices: gone)" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("identity: {enterprise: acme}\n", encoding="utf-8")
    code, out, _ = poll(str(bad), "--json")
    assert code == 2
    error = json.loads(out)
    assert error["exit_code"] == 2
    assert "identity.site: required field is missing" in error["error"]
