"""`cellctl read modbus` and `cellctl scan modbus` against the simulator in its own
process (TCP on a free port, RTU on a real pty), through the installed `cellctl` CLI."""

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
from cellctl.testing import free_port

pytestmark = pytest.mark.timeout(90)

SimStarter = Callable[..., str]


@pytest.fixture
def modbus_sim() -> Iterator[SimStarter]:
    """Start `python -m cellctl_sim.modbus` with the given arguments; returns the line it
    prints for its listener ("tcp HOST:PORT ..." or "rtu PATH ..."). Stopped by PID."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> str:
        cmd = [sys.executable, "-m", "cellctl_sim.modbus", "--tick", "3600", "--seed", "7", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                line = proc.stdout.readline()
                if line.startswith(("tcp ", "rtu ")):
                    return line.split()[1]
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        raise AssertionError("the simulator printed no listener within 20 s")

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


UNITS = ["--unit", "1=energy-meter", "--unit", "2=machine-plc", "--unit", "7=type-test"]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), terminal_width=200)
    return result.exit_code, result.stdout, result.stderr


def test_read_tcp_decodes_every_type_and_flags_the_wrong_word_orders(modbus_sim: SimStarter) -> None:
    where = modbus_sim("--tcp", "127.0.0.1:0", *UNITS)
    code, out, err = run(
        "read", "modbus", "--tcp", where, "-u", "1", "-t", "input", "-a", "0", "-c", "4", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["count"] == 4
    assert len(data["registers"]) == 4
    types = data["decoded"][0]["types"]
    assert set(types) == {
        "int16",
        "uint16",
        "int32",
        "uint32",
        "float32",
        "int64",
        "uint64",
        "float64",
        "string",
    }
    voltage = types["float32"]["CDAB"]  # the meter's voltage_l1: float32 low word first
    assert 215 < voltage["value"] < 245
    assert voltage["suspect"] is None
    assert types["float32"]["ABCD"]["suspect"] is not None, "high word first is nonsense here"
    assert set(types["float32"]) == {"ABCD", "CDAB", "BADC", "DCBA"}

    code, out, _ = run("read", "modbus", "--tcp", where, "-u", "1", "-t", "input", "-c", "2")
    assert code == 0
    assert "decoded from 0" in out
    assert "CDAB" in out


def test_read_coils_prints_bits(modbus_sim: SimStarter) -> None:
    where = modbus_sim("--tcp", "127.0.0.1:0", *UNITS)
    code, out, err = run("read", "modbus", "--tcp", where, "-u", "7", "-t", "coil", "-c", "8", "--json")
    assert code == 0, err
    bits = json.loads(out)["bits"]
    assert len(bits) == 8
    assert all(isinstance(b, bool) for b in bits)


def test_read_rtu_on_a_pty(modbus_sim: SimStarter) -> None:
    path = modbus_sim("--no-tcp", "--rtu-pty", *UNITS)
    args = ["--rtu", path, "--baud", "19200", "--parity", "N"]
    code, out, err = run("read", "modbus", *args, "-u", "2", "-t", "holding", "-a", "0", "-c", "10", "--json")
    assert code == 0, err
    assert len(json.loads(out)["registers"]) == 10
    # a unit nobody answers for on a serial line: silence, then a clear runtime error
    code, out, err = run("read", "modbus", *args, "-u", "9", "--timeout", "0.2")
    assert code == 1
    assert "no response from unit 9" in err


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["-u", "9"], 1, "modbus exception 11 (gateway target device failed to respond)"),
        (["-u", "1", "-t", "holding", "-a", "100"], 1, "modbus exception 2 (illegal data address)"),
        (["-u", "1", "-c", "126"], 2, "--count 126: a register read takes at most 125"),
        (["-u", "1", "-a", "65535", "-c", "2"], 2, "runs past address 65535"),
        (["-u", "300"], 2, "300 is not in the range 0<=x<=247"),
    ],
)
def test_read_bad_input_and_refusals(modbus_sim: SimStarter, args: list[str], code: int, text: str) -> None:
    where = modbus_sim("--tcp", "127.0.0.1:0", *UNITS)
    got, out, err = run("read", "modbus", "--tcp", where, *args)
    assert got == code, out + err
    assert text in err
    if code == 1:  # the same failure as JSON on stdout, same exit code
        got, out, _ = run("read", "modbus", "--tcp", where, *args, "--json")
        assert got == code
        assert json.loads(out) == {"error": err.strip().removeprefix("error: "), "exit_code": code}


def test_read_unreachable_host_and_bad_connection() -> None:
    port = free_port()  # nobody listens there
    code, _, err = run("read", "modbus", "--tcp", f"127.0.0.1:{port}", "--timeout", "0.5")
    assert code == 1
    assert f"127.0.0.1:{port}" in err
    code, _, err = run("read", "modbus", "--tcp", "127.0.0.1:")
    assert code == 2
    assert "--tcp '127.0.0.1:' is not HOST or HOST:PORT" in err
    code, _, err = run("read", "modbus")
    assert code == 2
    assert "give exactly one of --tcp" in err
    code, _, err = run("read", "modbus", "--rtu", "/dev/ttyUSB0", "-u", "0")
    assert code == 2
    assert "unit 0 is the RTU broadcast address" in err


def test_scan_tcp_finds_exactly_the_simulated_units_and_their_ranges(modbus_sim: SimStarter) -> None:
    where = modbus_sim("--tcp", "127.0.0.1:0", *UNITS)
    code, out, err = run("scan", "modbus", "--tcp", where, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [u["unit"] for u in result["units"]] == [1, 2, 7]
    assert result["complete"] is True
    meter = {t["table"]: t for t in result["units"][0]["tables"]}
    # the energy meter's map: input registers 0..23 (float32 x9, float64, uint32), nothing else
    assert meter["input"]["ranges"] == [{"first": 0, "last": 23, "count": 24}]
    assert meter["holding"]["ranges"] == []
    code, out, _ = run("scan", "modbus", "--tcp", where, "--units", "1-3", "--no-ranges")
    assert code == 0
    assert "2 of 3 unit id(s) answered" in out


def test_scan_rtu_finds_exactly_the_simulated_units(modbus_sim: SimStarter) -> None:
    path = modbus_sim("--no-tcp", "--rtu-pty", *UNITS)
    code, out, err = run(
        "scan", "modbus", "--rtu", path, "--baud", "19200", "--parity", "N",
        "--units", "1-8", "--timeout", "0.15", "--no-ranges", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert [u["unit"] for u in json.loads(out)["units"]] == [1, 2, 7]


def test_scan_bad_units() -> None:
    code, _, err = run("scan", "modbus", "--tcp", "127.0.0.1:1", "--units", "1-300")
    assert code == 2
    assert "'1-300' is outside 0..247" in err
