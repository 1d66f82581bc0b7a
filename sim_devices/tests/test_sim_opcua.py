"""The simulated OPC UA machine, checked with a plain asyncua client (not cellctl's
driver, which the simulator is the reference for): values, types, writes, the method,
faults, the secure endpoint, the shipped profile and the CLI process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from asyncua import Client, ua
from asyncua.ua.uaerrors import BadOutOfRange, BadTypeMismatch, BadUserAccessDenied, UaStatusCodeError
from cellctl_sim.opcua import NAMESPACE, POINTS, JobRefused, Machine, Security, SimOpcUaServer

from cellctl.testing import async_wait_until

pytestmark = pytest.mark.timeout(60)
in_module_loop = pytest.mark.asyncio(loop_scope="module")  # shares the module's simulator
PROFILE = Path(__file__).resolve().parents[1] / "cellctl_sim" / "profiles" / "sim-opcua-machine.yaml"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def opcua_sim() -> AsyncIterator[SimOpcUaServer]:
    async with SimOpcUaServer(tick=0.1, seed=1, auto_tick=False) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="module")
async def client(opcua_sim: SimOpcUaServer) -> AsyncIterator[Client]:
    async with Client(opcua_sim.url, timeout=2) as c:
        yield c


def nid(ns: int, name: str) -> ua.NodeId:
    return ua.NodeId("Machine." + name.replace("/", "."), ns)


def test_the_machine_model_is_deterministic_and_jobs_start_only_from_idle() -> None:
    a, b = Machine(tick=0.5, seed=9), Machine(tick=0.5, seed=9)
    for _ in range(400):
        a.advance()
        b.advance()
    assert a.values == b.values
    m = Machine(seed=1, autonomous=False)
    m.start_job("J-1")
    assert (m.state, m.job) == ("Running", "J-1")
    with pytest.raises(JobRefused):
        m.start_job("J-2")
    for _ in range(100):
        m.advance()
    assert m.good + m.bad > 0
    assert m.state == "Running"  # not autonomous: stays until told


def test_jobs_follow_the_machine_with_their_own_quantities() -> None:
    """OPC 40001-3 / 10031-4 job semantics: the machine starts jobs by itself, each with its
    own produced / good / scrap quantities; an ended job stays until the next one; a hold
    interrupts it, an alarm aborts it; StartJob runs the caller's job."""
    m = Machine(tick=2.0, seed=11)
    seen: list[tuple[str, str]] = []
    good0 = bad0 = 0
    progress: list[float] = []
    for _ in range(400):
        m.advance()
        if m.job:
            progress.append(m.progress)
        if m.job and (not seen or seen[-1] != (m.job, m.job_state)):
            if m.job_state == "Running" and (not seen or seen[-1][0] != m.job):
                good0, bad0 = m.good, m.bad  # a new job: the machine's counters at its start
            seen.append((m.job, m.job_state))
        if m.job_state == "Ended":
            break
    assert m.job.startswith("JOB-")
    assert m.order.startswith("PO-")
    assert m.program
    assert [st for _j, st in seen] == ["Running", "Interrupted", "Running", "Ended"]
    assert m.state == "Idle"
    assert m.values["Job/JobId"] == m.job, "an ended job stays the current one"
    assert progress == sorted(progress), "a held job resumes where it stood"
    assert progress[-1] == 100.0
    assert (m.job_good, m.job_scrap) == (m.good - good0, m.bad - bad0)
    assert m.values["Job/ProducedQuantity"] == m.job_good + m.job_scrap > 0
    m.start_job("J-9")
    assert (m.job, m.order, m.job_state, m.job_good, m.job_scrap) == ("J-9", "", "Running", 0, 0)
    m.force_state("Alarm", alarm=17)
    assert m.job_state == "Aborted"
    m.force_state("Idle")
    m.force_state("Running")  # after an aborted job, Running is a new job
    assert m.job != "J-9"
    assert m.job_state == "Running"


@in_module_loop
async def test_nodes_hold_the_machines_values_with_their_data_types(
    opcua_sim: SimOpcUaServer, client: Client
) -> None:
    ns = await client.get_namespace_index(NAMESPACE)
    opcua_sim.machine.force_state("Idle")
    opcua_sim.machine.start_job("J-7")
    await opcua_sim.step(50)
    for name, type_name in POINTS.items():
        node = client.get_node(nid(ns, name))
        assert await node.read_value() == opcua_sim.machine.values[name], name
        assert (await node.read_data_type_as_variant_type()).name == type_name, name
        dv = await node.read_data_value()
        assert dv.SourceTimestamp is not None


@in_module_loop
async def test_writes_are_range_checked_and_typed(opcua_sim: SimOpcUaServer, client: Client) -> None:
    ns = await client.get_namespace_index(NAMESPACE)
    setpoint = client.get_node(nid(ns, "Process/Setpoint"))
    await setpoint.write_value(ua.Variant(321.0, ua.VariantType.Double))
    assert opcua_sim.machine.setpoint == 321.0
    with pytest.raises(BadOutOfRange):
        await setpoint.write_value(ua.Variant(1001.0, ua.VariantType.Double))
    with pytest.raises(BadTypeMismatch):
        await setpoint.write_value(ua.Variant(5, ua.VariantType.Int32))
    assert opcua_sim.machine.setpoint == 321.0
    with pytest.raises(UaStatusCodeError):
        await client.get_node(nid(ns, "Counters/GoodParts")).write_value(ua.Variant(5, ua.VariantType.UInt32))


@in_module_loop
async def test_start_job_method(opcua_sim: SimOpcUaServer, client: Client) -> None:
    ns = await client.get_namespace_index(NAMESPACE)
    machine = client.get_node(ua.NodeId("Machine", ns))
    opcua_sim.machine.force_state("Idle")
    await machine.call_method(ua.NodeId("Machine.StartJob", ns), "J-77")
    assert await client.get_node(nid(ns, "Job/JobId")).read_value() == "J-77"
    assert await client.get_node(nid(ns, "State/CurrentState")).read_value() == "Running"
    with pytest.raises(UaStatusCodeError, match="BadInvalidState"):
        await machine.call_method(ua.NodeId("Machine.StartJob", ns), "J-78")


@in_module_loop
async def test_restart_on_the_same_port_with_the_namespace_moved() -> None:
    async with SimOpcUaServer(auto_tick=False) as sim:
        port = sim.port
        async with Client(sim.url, timeout=2) as c:
            before = await c.get_namespace_index(NAMESPACE)
        await sim.restart(namespace_shift=2)
        assert sim.port == port
        async with Client(sim.url, timeout=2) as c:
            after = await c.get_namespace_index(NAMESPACE)
            assert await c.get_node(nid(after, "Process/Setpoint")).read_value() == sim.machine.setpoint
        assert after == before + 2


@in_module_loop
async def test_stall_answers_nothing_until_resumed() -> None:
    async with SimOpcUaServer(auto_tick=False) as sim, Client(sim.url, timeout=0.5) as c:
        ns = await c.get_namespace_index(NAMESPACE)
        node = c.get_node(nid(ns, "Counters/GoodParts"))
        sim.stall()
        with pytest.raises((TimeoutError, asyncio.TimeoutError)):
            await node.read_value()
        sim.resume()
        assert await node.read_value() == sim.machine.good


@in_module_loop
async def test_secure_endpoint_needs_the_user(tmp_path: Path) -> None:
    security = Security(tmp_path, users={"operator": "pw"})
    async with SimOpcUaServer(auto_tick=False, security=security) as sim:
        probe = Client(sim.url, timeout=2)
        endpoints = await probe.connect_and_get_server_endpoints()
        modes = {(e.SecurityMode.name, e.SecurityPolicyUri.rpartition("#")[2]) for e in endpoints}
        assert ("None_", "None") not in modes
        assert ("SignAndEncrypt", "Aes256_Sha256_RsaPss") in modes

        async def connect(password: str) -> None:
            c = Client(sim.url, timeout=2)
            c.set_user("operator")
            c.set_password(password)
            await c.set_security_string(
                f"Basic256Sha256,SignAndEncrypt,{tmp_path / 'server-cert.der'},{tmp_path / 'server-key.pem'}"
            )
            await c.connect()
            await c.disconnect()

        await connect("pw")
        with pytest.raises(BadUserAccessDenied):
            await connect("wrong")


def test_the_shipped_profile_matches_the_simulator() -> None:
    profile = yaml.safe_load(PROFILE.read_text())
    kinds = {"String": "string", "Int32": "int", "UInt32": "int", "UInt16": "int", "Double": "float", "Boolean": "bool"}
    seen = set()
    for point in profile["points"]:
        address: dict[str, Any] = point["address"]
        if "node" in address:
            uri, _, ident = address["node"].partition(";s=")
            assert uri == f"nsu={NAMESPACE}"
            name = ident.removeprefix("Machine.").replace(".", "/")
        else:
            assert address["namespace"] == NAMESPACE
            assert address["path"][0] == "Machine"
            name = "/".join(address["path"][1:])
        assert name in POINTS, point["id"]
        assert point["type"] == kinds[POINTS[name]], point["id"]
        seen.add(name)
    assert set(profile["state"]["map"]) == {"Off", "Idle", "Running", "Held", "Alarm", "Setup", "Maintenance"}


@in_module_loop
async def test_cli_serves_restarts_on_sighup_and_exits_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cellctl_sim.opcua", "--listen", "127.0.0.1:0",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("opcua opc.tcp://127.0.0.1:")
        url = line.split()[1]
        async with Client(url, timeout=2) as c:
            assert await c.get_namespace_index(NAMESPACE) >= 1
        proc.send_signal(signal.SIGHUP)

        async def serves() -> bool:
            try:
                async with Client(url, timeout=2) as c:
                    await c.get_namespace_index(NAMESPACE)
            except (OSError, TimeoutError, UaStatusCodeError):
                return False
            return True

        # the old session dies, a new one on the same URL works
        await async_wait_until(serves, 20, "the simulator to serve again after SIGHUP", interval=0.1)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@in_module_loop
async def test_cli_secure_without_user_accepts_the_anonymous_login_it_advertises() -> None:
    """`sim opcua --secure` without --user advertises anonymous logins: a real client
    that takes the offer over SignAndEncrypt gets a session (it got BadUserAccessDenied).
    Without --cert-dir, the certificate's temporary directory is gone after exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cellctl_sim.opcua", "--listen", "127.0.0.1:0", "--secure",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    cert: Path | None = None
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        url, cert = line.split()[1], Path(line.split()[-1])
        probe = Client(url, timeout=5)
        endpoints = await probe.connect_and_get_server_endpoints()
        secured = [e for e in endpoints if e.SecurityMode == ua.MessageSecurityMode.SignAndEncrypt]
        assert secured
        for e in secured:
            assert ua.UserTokenType.Anonymous in {t.TokenType for t in e.UserIdentityTokens}
        c = Client(url, timeout=5)
        await c.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{cert.parent / 'server-key.pem'}")
        async with c:
            assert await c.get_namespace_index(NAMESPACE) >= 1
    finally:
        proc.terminate()
        async with asyncio.timeout(15):
            await proc.wait()
    assert proc.returncode == 0
    assert cert is not None
    assert not cert.parent.exists()


@in_module_loop
async def test_strict_client_trust_refuses_an_unknown_certificate_until_it_is_trusted(tmp_path: Path) -> None:
    security = Security(tmp_path / "server", trust_clients=True)
    client_dir = tmp_path / "client"
    async with SimOpcUaServer(auto_tick=False, security=security) as sim:
        Security(client_dir).ensure_certificate()  # any certificate the server has not seen

        async def connect() -> None:
            c = Client(sim.url, timeout=5)
            await c.set_security_string(
                f"Basic256Sha256,SignAndEncrypt,{client_dir / 'server-cert.der'},{client_dir / 'server-key.pem'}"
            )
            async with c:
                assert await c.get_namespace_index(NAMESPACE) >= 1

        with pytest.raises(Exception):  # noqa: B017, PT011  (asyncua raises a bare AssertionError here)
            await connect()
        (parked,) = security.client_trust.rejected_dir.iterdir()
        assert parked.read_bytes() == (client_dir / "server-cert.der").read_bytes()
        parked.rename(security.client_trust.trusted_dir / parked.name)
        await connect()
