"""The daemon's status page over real HTTP: off unless configured, loopback by default,
token or basic auth elsewhere, read-only, security headers, the state as JSON and as
server-sent events. The in-browser test is tests/test_status_page_browser.py."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cellctl_sim.modbus import SimModbusServer

from cellctl.config.loader import load_cell
from cellctl.errors import ConfigError
from cellctl.localbroker import Mosquitto
from cellctl.testing import async_wait_until, modbus_device, running_daemon, write_config

pytestmark = pytest.mark.timeout(60)


async def started_page(daemon: Any) -> str:
    assert daemon.status_page is not None
    async with asyncio.timeout(10):
        await daemon.status_page.listening.wait()
    return f"http://127.0.0.1:{daemon.status_page.port}"


def config(tmp_path: Path, broker: Mosquitto, unique: str, port: int, page: dict[str, Any] | None) -> Path:
    extra = {} if page is None else {"status_page": page}
    return write_config(
        tmp_path, broker.port, [modbus_device("meter", "sim-energy-meter", port, 1)], cell=unique, **extra
    )


async def test_page_state_and_events(tmp_path: Path, broker: Mosquitto, unique: str) -> None:
    async with SimModbusServer({1: "energy-meter"}, tick=0.05, seed=1) as sim:
        port = await sim.serve_tcp()
        async with running_daemon(config(tmp_path, broker, unique, port, {"port": 0})) as daemon:
            url = await started_page(daemon)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{url}/") as page:
                    assert page.status == 200
                    html = await page.text()
                    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
                    assert page.headers["X-Content-Type-Options"] == "nosniff"
                assert '<script src="page.js" defer></script>' in html
                assert "<script>" not in html  # no inline script: the CSP forbids it anyway
                for asset in ("page.js", "page.css"):
                    async with http.get(f"{url}/{asset}") as r:
                        assert r.status == 200
                async with http.post(f"{url}/api/state") as refused:
                    assert refused.status == 405  # read-only

                async def meter_good() -> Any:
                    async with http.get(f"{url}/api/state") as r:
                        state = await r.json()
                    (meter,) = state["devices"]
                    return state if meter["available"] and meter["points"][0]["q"] == "good" else None

                state = await async_wait_until(meter_good, timeout=15)
                assert state["cell"]["identity"]["cell"] == unique
                assert state["broker"][0]["connected"] is True
                assert any(e["event"] == "device_online" for e in state["events"])

                async with http.get(f"{url}/events") as stream:
                    assert stream.headers["Content-Type"].startswith("text/event-stream")
                    voltages = []
                    async with asyncio.timeout(15):
                        async for raw in stream.content:
                            if raw.startswith(b"data: "):
                                pushed = orjson.loads(raw[6:])
                                voltages.append(pushed["devices"][0]["points"][0]["v"])
                                if len(set(voltages)) >= 2:
                                    break  # the value changed on the simulator, and the push followed
                    assert len(set(voltages)) >= 2


async def test_no_section_no_page(tmp_path: Path, broker: Mosquitto, unique: str) -> None:
    async with running_daemon(config(tmp_path, broker, unique, 1, None)) as daemon:
        assert daemon.status_page is None


def test_bound_elsewhere_needs_auth(tmp_path: Path) -> None:
    path = write_config(tmp_path, 1883, [], cell="c1", status_page={"host": "0.0.0.0", "port": 8088})
    with pytest.raises(ConfigError) as err:
        load_cell(path)
    assert (
        "status_page: host '0.0.0.0' is reachable from other machines: set 'token_file'"
        in err.value.problems[0]
    )


@pytest.mark.parametrize("kind", ["token", "basic"])
async def test_auth(kind: str, tmp_path: Path, broker: Mosquitto, unique: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-Value\n", encoding="utf-8")
    auth: dict[str, Any] = (
        {"token_file": str(secret)} if kind == "token" else {"username": "op", "password_file": str(secret)}
    )
    # bound to every interface: auth is required (the test still connects over loopback)
    path = config(tmp_path, broker, unique, 1, {"host": "0.0.0.0", "port": 0, **auth})
    async with running_daemon(path) as daemon:
        url = await started_page(daemon)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/state") as r:
                assert r.status == 401
                if kind == "basic":
                    assert r.headers["WWW-Authenticate"].startswith("Basic ")
            if kind == "token":
                good = [
                    {"params": {"token": "s3cret-Value"}},
                    {"headers": {"Authorization": "Bearer s3cret-Value"}},
                ]
                bad = [{"params": {"token": "s3cret"}}]
            else:

                def basic(user: str, pw: str) -> dict[str, Any]:
                    return {
                        "headers": {
                            "Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
                        }
                    }

                good = [basic("op", "s3cret-Value")]
                bad = [
                    basic("op", "wrong"),
                    basic("other", "s3cret-Value"),
                    {"headers": {"Authorization": "Basic !!"}},
                ]
            for kwargs in good:
                async with http.get(f"{url}/api/state", **kwargs) as r:
                    assert r.status == 200
            for kwargs in bad:
                async with http.get(f"{url}/api/state", **kwargs) as r:
                    assert r.status == 401


async def test_a_port_in_use_leaves_the_daemon_running(
    tmp_path: Path, broker: Mosquitto, unique: str
) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    busy = blocker.sockets[0].getsockname()[1]
    try:
        async with running_daemon(config(tmp_path, broker, unique, 1, {"port": busy})) as daemon:
            page = daemon.status_page
            assert page is not None
            failed = await async_wait_until(lambda: page.failed, timeout=10, what="the bind to fail")
            assert str(busy) in failed
            assert page.port is None
            assert not daemon.stop.is_set()
            assert daemon.session.is_connected  # the cell goes on without its page
    finally:
        blocker.close()
        await blocker.wait_closed()


async def test_the_page_carries_the_current_job_and_oee(
    tmp_path: Path, broker: Mosquitto, unique: str
) -> None:
    async with SimModbusServer({2: "blank"}, tick=0.05, seed=1) as sim:
        port = await sim.serve_tcp()
        unit = sim.unit(2)
        unit.load("holding", 0, [2])  # running
        unit.load("holding", 10, [0x4A31, 0, 0, 0, 0, 0, 0, 0])  # program "J1": a job
        plc = modbus_device("plc", "sim-machine-plc", port, 2, poll_interval=0.05)
        cfg = write_config(tmp_path, broker.port, [plc], cell=unique, status_page={"port": 0})
        async with running_daemon(cfg) as daemon:
            url = await started_page(daemon)
            async with aiohttp.ClientSession() as http:

                async def with_job() -> Any:
                    async with http.get(f"{url}/api/state") as r:
                        (dev,) = (await r.json())["devices"]
                    return dev if dev["job"] and dev["oee"] else None

                dev = await async_wait_until(with_job, timeout=15)
                async with http.get(f"{url}/page.js") as r:
                    script = await r.text()
    assert dev["job"]["job_id"] == "J1"
    assert dev["job"]["state"] == "running"
    assert set(dev["oee"]) >= {"availability", "performance", "quality", "oee"}
    assert "OEE this hour" in script
