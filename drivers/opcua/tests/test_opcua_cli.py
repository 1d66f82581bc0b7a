"""The commissioning commands: `browse` against the simulator run as a process (as a
user would), `cert init|show|trust` on a temporary PKI directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cellctl_opcua.cli import cert
from cellctl_opcua.pki import TrustStore, generate, thumbprint
from click.testing import CliRunner

from cellctl.config.profile import Profile

pytestmark = pytest.mark.timeout(60)
NS = "urn:cellctl:sim:opcua-machine"


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """`python -m cellctl_sim.opcua` on a free port; stopped by its PID."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellctl_sim.opcua", "--listen", "127.0.0.1:0", "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while not line.startswith("opcua ") and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert line.startswith("opcua "), f"simulator did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        yield line.split()[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_browse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cellctl_opcua", "browse", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "STATE_DIRECTORY": ""},
        check=False,
    )


def test_browse_prints_the_tree_with_namespace_uris(sim_url: str) -> None:
    out = run_browse(sim_url, "--depth", "3")
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if "Machine.Process.Setpoint" in x)
    assert line.split()[:4] == ["Setpoint", f"nsu={NS};s=Machine.Process.Setpoint", "Double", "rw"]
    assert line.rstrip().endswith("= 100.0")
    assert "ns=" not in out.stdout.replace("nsu=", "")


def test_browse_json_for_scripts(sim_url: str) -> None:
    out = run_browse(sim_url, "--depth", "2", "--json", "--root", f"nsu={NS};s=Machine")
    assert out.returncode == 0, out.stderr
    nodes = json.loads(out.stdout)
    names = {n["node"]: n for n in nodes}
    assert names[f"nsu={NS};s=Machine.Counters.GoodParts"]["data_type"] == "UInt32"
    assert names[f"nsu={NS};s=Machine.StartJob"]["class"] == "Method"


def test_profile_skeleton_is_a_valid_profile(sim_url: str) -> None:
    out = run_browse(sim_url, "--depth", "3", "--profile-skeleton", "--name", "mill-x")
    assert out.returncode == 0, out.stderr
    profile = Profile.model_validate(yaml.safe_load(out.stdout))
    assert profile.name == "mill-x"
    ids = {p.id: p for p in profile.points}
    assert ids["process_setpoint"].address == {"node": f"nsu={NS};s=Machine.Process.Setpoint"}
    assert ids["counters_good_parts"].type == "int"
    assert ids["state_current_state"].type == "string"
    assert "# writable on the server (Double)" in out.stdout


def test_browse_of_a_dead_endpoint_fails_cleanly() -> None:
    out = run_browse("opc.tcp://127.0.0.1:9", "--timeout", "1")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == "error: opc.tcp://127.0.0.1:9: connection refused"
    assert "Traceback" not in out.stderr


def test_cert_init_show_trust(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    runner = CliRunner()
    first = runner.invoke(cert, ["init", "--pki", str(pki), "--uri", "urn:cell-3:cellctl"])
    assert first.exit_code == 0, first.output
    assert "application URI  urn:cell-3:cellctl" in first.output
    again = runner.invoke(cert, ["init", "--pki", str(pki)])
    assert again.output.startswith("exists ")
    server_der, _ = generate("urn:plc", common="plc-9", hostnames=["plc-9"], role="server")
    TrustStore(pki).check(server_der)  # an untrusted server parks its certificate
    shown = runner.invoke(cert, ["show", "--pki", str(pki), "--json"])
    data = json.loads(shown.output)
    assert data["own"]["application_uri"] == "urn:cell-3:cellctl"
    assert [r["thumbprint"] for r in data["rejected"]] == [thumbprint(server_der)]
    trusted = runner.invoke(cert, ["trust", "--pki", str(pki), thumbprint(server_der)[:10]])
    assert trusted.exit_code == 0, trusted.output
    data = json.loads(runner.invoke(cert, ["show", "--pki", str(pki), "--json"]).output)
    assert data["rejected"] == []
    assert [t["subject"] for t in data["trusted"]] == ["plc-9"]
    nothing = runner.invoke(cert, ["trust", "--pki", str(pki), "0000000000"])
    assert nothing.exit_code == 1
    assert "neither a certificate file nor the thumbprint" in nothing.output
