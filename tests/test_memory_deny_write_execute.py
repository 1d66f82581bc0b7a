"""MemoryDenyWriteExecute=yes in the shipped unit, with OPC UA security: `cellctl run`
under W^X talks Basic256Sha256 SignAndEncrypt to the simulated OPC UA server and
publishes its data. Both ways systemd enforces that key: the kernel's prctl PR_SET_MDWE
(systemd 254+ on Linux 6.3+; skipped on older kernels) and the seccomp filter systemd
252 (Debian 12) installs (refuses W+X mmap, mprotect to executable, shmat SHM_EXEC)."""

from __future__ import annotations

import asyncio
import json
import platform
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cellctl_opcua.pki import TrustStore
from cellctl_sim.opcua import Security, SimOpcUaServer

from cellctl.testing import Collector, Mosquitto, root_topic, write_config
from cellctl.testing.confine import SYSCALLS, mdwe_supported

pytestmark = pytest.mark.timeout(90)
# (confine option, the error a refused W+X mapping gets)
FLAVOURS = [
    pytest.param(
        ("--mdwe", "Permission denied"),
        id="prctl",
        marks=pytest.mark.skipif(not mdwe_supported(), reason="kernel without PR_SET_MDWE (Linux 6.3+)"),
    ),
    pytest.param(
        ("--mdwe-seccomp", "Operation not permitted"),
        id="seccomp",
        marks=pytest.mark.skipif(
            platform.machine() not in SYSCALLS, reason=f"no syscall table for {platform.machine()}"
        ),
    ),
]
UNIT = Path(__file__).resolve().parents[1] / "systemd" / "cellctl.service"
CONFINE = [sys.executable, "-m", "cellctl.testing.confine"]
PASSWORD = "correct-horse-battery-staple"
# what W^X refuses: an anonymous mapping both writable and executable
WX_PROBE = (
    "import mmap, sys\n"
    "try:\n"
    "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
    "except OSError as e:\n"
    "    sys.exit(f'refused: {e.strerror}')\n"
)


def test_the_unit_asks_for_memory_deny_write_execute() -> None:
    assert "\nMemoryDenyWriteExecute=yes\n" in UNIT.read_text(encoding="utf-8")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_confinement_reaches_the_started_program(flavour: tuple[str, str]) -> None:
    """The control for the test below: unconfined a W+X mapping works, confined the
    kernel refuses it in the exec'd program, so a daemon started the same way runs W^X."""
    option, refusal = flavour
    free = subprocess.run(
        [sys.executable, "-c", WX_PROBE], capture_output=True, text=True, timeout=30, check=False
    )
    assert free.returncode == 0, free.stderr
    confined = subprocess.run(
        [*CONFINE, option, "--", sys.executable, "-c", WX_PROBE],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert confined.returncode == 1
    assert f"refused: {refusal}" in confined.stderr


@pytest.fixture
async def secure_sim(tmp_path: Path) -> AsyncIterator[SimOpcUaServer]:
    security = Security(tmp_path / "server-pki", users={"operator": PASSWORD})
    async with SimOpcUaServer(tick=0.1, seed=11, security=security) as sim:
        yield sim


@pytest.fixture
def collector(broker: Mosquitto, unique: str) -> Iterator[Collector]:
    c = Collector(broker.port, f"{root_topic(unique)}/#")
    yield c
    c.close()


def _good_state(c: Collector) -> bool:
    state = c.latest("/press/state")
    return bool(state and state["available"] and all(p["q"] == "good" for p in state["points"].values()))


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_opcua_sign_and_encrypt_under_write_xor_execute(
    flavour: tuple[str, str],
    *,
    broker: Mosquitto,
    collector: Collector,
    secure_sim: SimOpcUaServer,
    unique: str,
    tmp_path: Path,
) -> None:
    assert secure_sim.security is not None
    assert not secure_sim.security.allow_insecure  # secure endpoints only: data means a secure channel
    pki = TrustStore(tmp_path / "pki")
    pki.init(hostname="localhost")
    pki.trust(str(secure_sim.security.cert_path))
    secret = tmp_path / "opcua-password"
    secret.write_text(PASSWORD + "\n")
    device = {
        "id": "press",
        "driver": "opcua",
        "profile": "sim-opcua-machine",
        "connection": {
            "endpoint": secure_sim.url,
            "security_mode": "SignAndEncrypt",
            "security_policy": "Basic256Sha256",
            "pki_dir": str(pki.root),
            "username": "operator",
            "password_file": str(secret),
        },
        "options": {"publishing_interval": 0.05, "keepalive": 0.5},
        "timeout": 2.0,
    }
    config = write_config(tmp_path, broker.port, [device], cell=unique)
    log = (tmp_path / "daemon.log").open("wb")
    command = [
        *CONFINE,
        flavour[0],
        "--",
        sys.executable,
        "-m",
        "cellctl.cli.main",
        "--log-format",
        "json",
        "run",
    ]
    daemon = await asyncio.to_thread(
        subprocess.Popen, [*command, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
    )
    log.close()
    try:
        await collector.until(lambda _: _good_state(collector), timeout=45, what="every OPC UA point good")
        seen = len(collector.on("/press/data"))
        await collector.until(
            lambda _: len(collector.on("/press/data")) > seen, timeout=20, what="data still flowing"
        )
        assert daemon.poll() is None
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(daemon.wait, 20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)
            raise
    output = (tmp_path / "daemon.log").read_text(errors="replace")
    assert code == 0, output[-3000:]
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert events, output[-3000:]
    problems = [e for e in events if e.get("level") in ("error", "critical")]
    assert not problems, problems
