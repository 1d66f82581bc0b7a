"""`cellctl read opcua` against the simulator run as a process: nodes by NodeId and by
browse path with status and timestamps, and the errors a user meets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from cellctl.cli.main import cli
from cellctl.testing import free_port

pytestmark = pytest.mark.timeout(60)
NS = "urn:cellctl:sim:opcua-machine"


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """`python -m cellctl_sim.opcua` on a free port; stopped by its PID."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellctl_sim.opcua", "--listen", "127.0.0.1:0", "--seed", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while not line.startswith("opcua ") and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert line.startswith("opcua "), f"simulator did not start: {line!r}"
        yield line.split()[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def read(*args: str) -> tuple[int, str, str]:
    result = CliRunner(env={"STATE_DIRECTORY": ""}).invoke(cli, ["read", "opcua", *args], terminal_width=200)
    return result.exit_code, result.stdout, result.stderr


def test_read_by_node_id_and_browse_path(sim_url: str) -> None:
    code, out, err = read(
        sim_url, f"nsu={NS};s=Machine.Temperatures.Spindle", "Machine/Spindle/Speed", "--namespace", NS, "--json"
    )
    assert code == 0, err
    spindle, speed = json.loads(out)
    assert spindle["status"] == "Good"
    assert spindle["data_type"] == "Double"
    assert isinstance(spindle["value"], float)
    assert spindle["source_timestamp"]
    assert spindle["server_timestamp"]
    assert speed["node_id"].endswith("s=Machine.Spindle.Speed")
    assert speed["status"] == "Good"


def test_read_a_missing_node_exits_1_and_names_it(sim_url: str) -> None:
    code, out, _ = read(sim_url, "Machine/NoSuchThing", f"nsu={NS};s=Machine.Nope", "--namespace", NS, "--json")
    assert code == 1
    missing_path, missing_node = json.loads(out)
    assert "BadNoMatch" in missing_path["status"]
    assert missing_node["status"] == "BadNodeIdUnknown"


def test_read_bad_node_and_unreachable_server() -> None:
    code, _, err = read("opc.tcp://127.0.0.1:4840", "ns=3;s=x")
    assert code == 2
    assert "node 'ns=3;s=x'" in err
    port = free_port()
    code, out, _ = read(f"opc.tcp://127.0.0.1:{port}", "i=2258", "--timeout", "1", "--json")
    assert code == 1
    assert str(port) in json.loads(out)["error"]
