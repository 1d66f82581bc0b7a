"""Security against the real simulated server: every policy with generated
certificates, the trust store (an unknown server certificate is refused and parked in
rejected/ until trusted), user names with passwords that never reach a log."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import structlog
from cellctl_opcua.pki import TrustStore
from cellctl_opcua.plugin import plugin
from cellctl_sim.opcua import Security, SimOpcUaServer
from cellctl_sim.opcua.clienttrust import Refusal
from click.testing import CliRunner
from opcua_testutil import all_good, device_ctx, first_readings, latest_state, opcua_device

from cellctl.driver import DeviceUnavailable
from cellctl.testing import Collector, Mosquitto, running_daemon, write_config

# One secure server for the module (building one costs over a second); tests that
# change it make their own.
pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="module")]

PASSWORD = "correct-horse-battery-staple"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure_sim(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SimOpcUaServer]:
    security = Security(tmp_path_factory.mktemp("server-pki"), users={"operator": PASSWORD})
    async with SimOpcUaServer(tick=0.1, seed=5, auto_tick=False, security=security) as sim:
        yield sim


@pytest.fixture
def pki(tmp_path: Path) -> TrustStore:
    store = TrustStore(tmp_path / "pki")
    store.init(hostname="localhost")
    return store


def trust_server(store: TrustStore, sim: SimOpcUaServer) -> None:
    assert sim.security is not None
    store.trust(str(sim.security.cert_path))


def secured(store: TrustStore, tmp_path: Path, mode: str, policy: str, password: str = PASSWORD) -> dict[str, str]:
    secret = tmp_path / "opcua-password"
    secret.write_text(password + "\n")
    return {
        "security_mode": mode,
        "security_policy": policy,
        "pki_dir": str(store.root),
        "username": "operator",
        "password_file": str(secret),
    }


@pytest.mark.parametrize(
    ("mode", "policy"),
    [
        ("SignAndEncrypt", "Basic256Sha256"),
        ("SignAndEncrypt", "Aes128_Sha256_RsaOaep"),
        ("SignAndEncrypt", "Aes256_Sha256_RsaPss"),
        ("Sign", "Basic256Sha256"),
    ],
)
async def test_secure_session_with_generated_certificates(
    secure_sim: SimOpcUaServer, pki: TrustStore, tmp_path: Path, mode: str, policy: str
) -> None:
    trust_server(pki, secure_sim)
    ctx = device_ctx(secure_sim.url, connection=secured(pki, tmp_path, mode, policy))
    async with plugin.open(ctx) as device:
        (reading, *_) = await first_readings(device)
    assert not reading.errors
    assert len(reading.values) == len(ctx.points) - 1  # every subscribed point (one is polled)


async def test_untrusted_server_certificate_is_refused_saved_and_then_trusted_with_the_cli(
    secure_sim: SimOpcUaServer, pki: TrustStore, tmp_path: Path
) -> None:
    from cellctl_opcua.cli import cert

    ctx = device_ctx(secure_sim.url, connection=secured(pki, tmp_path, "SignAndEncrypt", "Basic256Sha256"))
    with structlog.testing.capture_logs() as logs, pytest.raises(DeviceUnavailable) as refused:
        async with plugin.open(ctx):
            pass
    rejected = list(pki.rejected_dir.iterdir())
    assert len(rejected) == 1
    assert rejected[0].read_bytes() == secure_sim.security.cert_path.read_bytes()  # type: ignore[union-attr]
    assert "not trusted" in refused.value.reason
    assert "cellctl cert trust" in refused.value.reason
    (event,) = [e for e in logs if e["event"] == "opcua_server_certificate_rejected"]
    assert event["log_level"] == "warning"
    assert event["saved_to"] == str(rejected[0])
    assert event["trust_with"].startswith(f"cellctl cert trust --pki {pki.root} ")
    # the operator runs exactly the command the log line gave
    argv = event["trust_with"].split()[2:]
    result = CliRunner().invoke(cert, argv)
    assert result.exit_code == 0, result.output
    assert not list(pki.rejected_dir.iterdir())
    async with plugin.open(ctx) as device:
        await first_readings(device)


async def test_a_server_certificate_that_changed_is_refused_again(pki: TrustStore, tmp_path: Path) -> None:
    security = Security(tmp_path / "server-pki", users={"operator": PASSWORD})
    async with SimOpcUaServer(auto_tick=False, security=security) as sim:
        trust_server(pki, sim)
        ctx = device_ctx(sim.url, connection=secured(pki, tmp_path, "SignAndEncrypt", "Basic256Sha256"))
        async with plugin.open(ctx) as device:
            await first_readings(device)
        security.ensure_certificate(regenerate=True)
        await sim.restart()
        with pytest.raises(DeviceUnavailable, match="not trusted"):
            async with plugin.open(ctx):
                pass


async def test_wrong_password_gives_a_clear_error_and_no_password_reaches_a_log(
    secure_sim: SimOpcUaServer, pki: TrustStore, tmp_path: Path
) -> None:
    trust_server(pki, secure_sim)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    asyncua_log = logging.getLogger("asyncua")
    saved = asyncua_log.level
    asyncua_log.setLevel(logging.DEBUG)  # the worst case: someone debugging with full logs
    asyncua_log.addHandler(handler)
    try:
        with structlog.testing.capture_logs() as logs:
            wrong = device_ctx(
                secure_sim.url, connection=secured(pki, tmp_path, "SignAndEncrypt", "Basic256Sha256", "not-it")
            )
            with pytest.raises(DeviceUnavailable) as refused:
                async with plugin.open(wrong):
                    pass
            right = device_ctx(secure_sim.url, connection=secured(pki, tmp_path, "Sign", "Basic256Sha256"))
            async with plugin.open(right) as device:
                await first_readings(device)
    finally:
        asyncua_log.removeHandler(handler)
        asyncua_log.setLevel(saved)
    assert refused.value.reason.endswith(
        "refused user 'operator': BadUserAccessDenied (wrong user name or password?)"
    )
    assert records, "asyncua logged at debug level"
    for secret in (PASSWORD, "not-it"):
        assert not any(secret in r.getMessage() for r in records)
        assert not any(secret in repr(e) for e in logs)


async def test_missing_client_certificate_names_the_command_that_creates_it(
    secure_sim: SimOpcUaServer, tmp_path: Path
) -> None:
    empty = TrustStore(tmp_path / "no-pki")
    ctx = device_ctx(secure_sim.url, connection=secured(empty, tmp_path, "SignAndEncrypt", "Basic256Sha256"))
    with pytest.raises(DeviceUnavailable) as refused:
        async with plugin.open(ctx):
            pass
    assert f"cellctl cert init --pki {empty.root}" in refused.value.reason


async def test_sign_and_encrypt_end_to_end_and_a_wrong_password_in_the_device_state(  # noqa: PLR0917
    secure_sim: SimOpcUaServer, pki: TrustStore, collector: Collector, broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    trust_server(pki, secure_sim)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    good = secured(pki, tmp_path / "a", "SignAndEncrypt", "Aes256_Sha256_RsaPss")
    bad = secured(pki, tmp_path / "b", "SignAndEncrypt", "Basic256Sha256", "wrong")
    devices = [
        opcua_device("mill", secure_sim.url, connection=good),
        opcua_device("intruder", secure_sim.url, connection=bad),
    ]
    config = write_config(tmp_path, broker.port, devices, cell=unique)
    async with running_daemon(config):
        await collector.until(lambda _m: all_good(collector, "mill"), what="the secured device online")
        state = await collector.until(
            lambda _m: (s := latest_state(collector, "intruder")) and "refused" in (s["reason"] or "") and s,
            what="the wrong password reported in the retained state",
        )
    assert state["available"] is False
    assert "BadUserAccessDenied" in state["reason"]


@pytest.mark.parametrize(("refusal", "said"), [("service_fault", ""), ("error_message", " with BadSecurityChecksFailed")])
async def test_a_server_that_does_not_trust_our_certificate_is_named_as_the_cause(
    pki: TrustStore, tmp_path: Path, refusal: Refusal, said: str
) -> None:
    """A strict server answers OpenSecureChannel with a fault (asyncua then raised a bare
    AssertionError) or an error message: the daemon's reason and `browse` say the server
    refused our certificate, where servers park it, and which file to hand over; once
    the server trusts it, the same device connects."""
    security = Security(tmp_path / "server", trust_clients=True, refusal=refusal)
    async with SimOpcUaServer(auto_tick=False, security=security) as sim:
        trust_server(pki, sim)
        ctx = device_ctx(sim.url, connection={"security_mode": "SignAndEncrypt", "pki_dir": str(pki.root)})
        with structlog.testing.capture_logs() as logs:
            for _ in range(2):  # the retry is refused again, and logged once
                with pytest.raises(DeviceUnavailable) as refused:
                    async with plugin.open(ctx):
                        pass
        ours = pki.identity().cert_path
        (parked,) = security.client_trust.rejected_dir.iterdir()
        assert parked.read_bytes() == ours.read_bytes()
        reason = refused.value.reason
        assert "AssertionError" not in reason
        assert f"refused to open a secure channel{said}: it most likely does not trust our client certificate" in reason
        assert "pki/rejected/" in reason
        assert f"our certificate {str(ours)!r} (thumbprint {parked.stem})" in reason
        (event,) = [e for e in logs if e["event"] == "opcua_client_certificate_refused"]
        assert event["certificate"] == str(ours)
        assert event["thumbprint"] == parked.stem

        browse = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "cellctl"), "browse", sim.url, "--security-mode", "SignAndEncrypt",
            "--pki", str(pki.root), "--timeout", "5",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            out, err = await browse.communicate()
        assert browse.returncode == 1
        assert not out
        assert "AssertionError" not in err.decode()
        assert "does not trust our client certificate. Servers keep" in err.decode()
        assert str(ours) in err.decode()

        parked.rename(security.client_trust.trusted_dir / parked.name)  # the administrator trusts it
        async with plugin.open(ctx) as device:
            await first_readings(device)


async def test_the_daemon_publishes_that_the_server_refused_our_certificate(
    pki: TrustStore, collector: Collector, broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    security = Security(tmp_path / "server", trust_clients=True)
    async with SimOpcUaServer(auto_tick=False, security=security) as sim:
        trust_server(pki, sim)
        connection = {"security_mode": "Sign", "pki_dir": str(pki.root)}
        config = write_config(tmp_path, broker.port, [opcua_device("press", sim.url, connection=connection)], cell=unique)
        async with running_daemon(config):
            state = await collector.until(
                lambda _m: (s := latest_state(collector, "press")) and "refused" in (s["reason"] or "") and s,
                what="the refusal in the retained state",
            )
            assert state["available"] is False
            assert "does not trust our client certificate" in state["reason"]
            assert str(pki.identity().cert_path) in state["reason"]
            (parked,) = security.client_trust.rejected_dir.iterdir()
            parked.rename(security.client_trust.trusted_dir / parked.name)
            await collector.until(lambda _m: all_good(collector, "press"), timeout=30, what="connected once trusted")
