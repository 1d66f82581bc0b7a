"""The /metrics and /health endpoint of a running daemon, scraped over HTTP while it
polls simulated Modbus devices and publishes to a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cellctl_sim.modbus.server import SimModbusServer
from prometheus_client.parser import text_string_to_metric_families

from cellctl.engine.figures import LATENCY_BUCKETS, LatencyHistogram, reason_kind
from cellctl.localbroker import Mosquitto, free_port
from cellctl.testing import async_wait_until, modbus_device, running_daemon, write_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def sim_port() -> AsyncIterator[int]:
    async with SimModbusServer({1: "energy-meter"}, tick=0.05, seed=9) as sim:
        yield await sim.serve_tcp()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    status, text = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def health(port: int) -> tuple[int, dict[str, Any]]:
    status, text = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/health")
    return status, json.loads(text)


def config(tmp_path: Path, broker: Mosquitto, devices: list[dict[str, Any]], cell: str, **metrics: Any) -> Path:
    port = free_port()
    return write_config(tmp_path, broker.port, devices, cell=cell, metrics={"listen": f"127.0.0.1:{port}", **metrics})


async def test_metrics_of_devices_outbox_mqtt_commands_and_process(
    broker: Mosquitto, sim_port: int, unique: str, tmp_path: Path
) -> None:
    path = config(tmp_path, broker, [modbus_device("m", "sim-energy-meter", sim_port, 1)], unique)
    async with running_daemon(path) as daemon:
        assert daemon.observer is not None
        port = daemon.observer.port

        async def enough() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            m = await scrape(port)
            polled = m.get(("cellctl_device_polls_total", (("device", "m"),)), 0) >= 5
            return m if polled and m.get(("cellctl_mqtt_acks_total", (("format", "uns"),)), 0) > 0 else None

        m = await async_wait_until(enough, what="5 polls and some acks in /metrics")
    dev = (("device", "m"),)
    assert m[("cellctl_up", ())] == 1
    assert m[("cellctl_device_up", (("device", "m"), ("driver", "modbus")))] == 1
    assert m[("cellctl_device_connects_total", dev)] == 1
    assert m[("cellctl_device_points", dev)] > 0
    assert m[("cellctl_device_points_bad", dev)] == 0
    count = m[("cellctl_device_poll_duration_seconds_count", dev)]
    assert count >= 5
    assert m[("cellctl_device_poll_duration_seconds_bucket", (("device", "m"), ("le", "+Inf")))] == count
    assert 0 < m[("cellctl_device_poll_duration_seconds_sum", dev)] < count * 10
    uns = (("format", "uns"),)
    assert m[("cellctl_mqtt_connected", uns)] == 1
    assert m[("cellctl_mqtt_reconnects_total", uns)] == 0
    assert m[("cellctl_mqtt_publishes_total", uns)] >= m[("cellctl_mqtt_acks_total", uns)] > 0
    assert m[("cellctl_outbox_appended_total", ())] > 0
    assert m[("cellctl_outbox_max_bytes", ())] == 2**30
    assert ("cellctl_outbox_oldest_age_seconds", ()) in m
    assert m[("cellctl_commands_total", (("outcome", "accepted"),))] == 0
    assert m[("cellctl_command_writes_total", (("outcome", "written"),))] == 0
    assert m[("process_resident_memory_bytes", ())] > 0
    assert m[("cellctl_recent_starts", ())] == 0  # running_daemon does not record starts
    assert m[("cellctl_reloads_total", ())] == 0


async def test_health_says_what_is_wrong(
    broker_fresh: Mosquitto, sim_port: int, unique: str, tmp_path: Path
) -> None:
    closed = free_port()  # nothing listens here
    devices = [
        modbus_device("m", "sim-energy-meter", sim_port, 1),
        modbus_device("gone", "sim-energy-meter", closed, 1),
    ]
    path = config(tmp_path, broker_fresh, devices, unique, outbox_filling=1e-6)
    async with running_daemon(path) as daemon:
        assert daemon.observer is not None
        port = daemon.observer.port

        async def gone_only() -> dict[str, Any] | None:
            status, body = await health(port)
            devices = body["devices"]
            ok = devices["m"]["available"] and not body["broker"]["uns"]["last_error"] and status == 503
            return body if ok and body["broker"]["uns"]["connected"] else None

        body = await async_wait_until(gone_only, what="health with only 'gone' down")
        assert body["status"] == "degraded"
        problems = body["problems"]
        assert any(p.startswith("device 'gone' down: ") for p in problems), problems
        assert not any("'m'" in p or p.startswith("broker down") for p in problems), problems
        m = await scrape(port)
        assert m[("cellctl_device_up", (("device", "gone"), ("driver", "modbus")))] == 0
        errors = {labels: v for (name, labels), v in m.items() if name == "cellctl_device_errors_total"}
        assert sum(v for labels, v in errors.items() if ("device", "gone") in labels) >= 1
        assert not any(("device", "m") in labels for labels in errors)

        broker_fresh.stop()
        want = f"broker down: uns session not connected to 127.0.0.1:{broker_fresh.port}"

        async def broker_down() -> list[str] | None:
            _status, body = await health(port)
            problems: list[str] = body["problems"]
            filling = any(p.startswith("outbox filling: ") for p in problems)
            return problems if filling and any(p.startswith(want) for p in problems) else None

        problems = await async_wait_until(broker_down, what="broker down and outbox filling in /health")
        m = await scrape(port)
        assert m[("cellctl_mqtt_connected", (("format", "uns"),))] == 0

        broker_fresh.start()

        async def reconnected() -> bool:
            m = await scrape(port)
            return m[("cellctl_mqtt_reconnects_total", (("format", "uns"),))] == 1

        await async_wait_until(reconnected, what="one reconnect in /metrics")


async def test_health_ok_and_unknown_page(broker: Mosquitto, sim_port: int, unique: str, tmp_path: Path) -> None:
    path = config(tmp_path, broker, [modbus_device("m", "sim-energy-meter", sim_port, 1)], unique)
    async with running_daemon(path) as daemon:
        assert daemon.observer is not None
        port = daemon.observer.port

        async def ok() -> dict[str, Any] | None:
            status, body = await health(port)
            return body if status == 200 else None

        body = await async_wait_until(ok, what="/health 200")
        assert body["status"] == "ok"
        assert body["problems"] == []
        assert body["devices"] == {"m": {"available": True, "reason": None, "degraded": None}}
        status, text = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/nope")
        assert status == 404
        assert "'/nope'" in text


async def test_port_in_use_leaves_the_daemon_running_without_metrics(
    broker: Mosquitto, sim_port: int, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(
            tmp_path,
            broker.port,
            [modbus_device("m", "sim-energy-meter", sim_port, 1)],
            cell=unique,
            metrics={"listen": f"127.0.0.1:{port}"},
        )
        async with running_daemon(path) as daemon:
            assert daemon.observer is None
            await async_wait_until(lambda: daemon.session.is_connected, what="connected")
    assert "metrics_unavailable" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("connect timed out after 3.5 s", "timeout"),
        ("poll did not finish within 11 s", "timeout"),
        ("[Errno 111] Connect call failed: Connection refused", "refused"),
        ("internal error: ValueError('x')", "internal"),
        ("could not open port /dev/ttyUSB9: [Errno 2] No such file or directory", "not_found"),
        ("[Errno 13] Permission denied: '/dev/ttyUSB0'", "permission"),
        ("connection closed by the device", "connection_lost"),
        ("modbus exception 2 (illegal data address)", "other"),
    ],
)
def test_reason_kind(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [(0.0, 0), (0.001, 0), (0.0011, 1), (0.05, 5), (10.0, len(LATENCY_BUCKETS) - 1), (10.01, len(LATENCY_BUCKETS))],
)
def test_latency_buckets_are_upper_bounds(seconds: float, bucket: int) -> None:
    h = LatencyHistogram()
    h.observe(seconds)
    assert h.counts[bucket] == 1
    assert sum(h.counts) == 1
    assert h.sum == seconds
