"""`cellctl write | call | job` against the running daemon through a real broker: the
same router, policy and audit as a command from the MES; `--json` for scripts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from cellctl_sim.modbus.server import SimModbusServer
from click.testing import CliRunner, Result

from cellctl.cli.main import cli
from cellctl.localbroker import Mosquitto
from cellctl.testing import modbus_device, running_daemon, write_config
from cellctl.testing.waiting import async_wait_until

pytestmark = pytest.mark.timeout(60)
POLICY = {"enabled": True, "devices": {"plc": {"points": {"setpoint": {"min": 0, "max": 500}}}}}


@pytest.fixture
async def plc() -> AsyncIterator[tuple[SimModbusServer, int]]:
    async with SimModbusServer({2: "machine-plc"}, tick=0.1, seed=3, auto_tick=False) as sim:
        yield sim, await sim.serve_tcp()


async def invoke(*args: str) -> Result:
    """The CLI in a thread: the daemon runs on in this loop meanwhile."""
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


def last_line(result: Result) -> str:
    """The CLI's own output: CliRunner swaps sys.stdout for the whole process, so the
    daemon's log lines (same process here) land in it too, before the answer."""
    return result.stdout.strip().splitlines()[-1]


async def test_cli_write_and_call_reach_the_daemon_through_its_policy(
    broker: Mosquitto, plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    sim, port = plc
    config = write_config(
        tmp_path,
        broker.port,
        [modbus_device("plc", "sim-machine-plc", port, 2, poll_interval=0.05)],
        cell=unique,
        commands=POLICY,
    )
    async with running_daemon(config) as daemon:
        await async_wait_until(lambda: daemon.cell.runner("plc").available, what="plc online")
        ok = await invoke("write", "plc", "setpoint", "123.5", "--config", str(config), "--json")
        too_high = await invoke("write", "plc", "setpoint", "900", "--config", str(config))
        wrong = await invoke("write", "plc", "setpoint", '"12"', "--config", str(config), "--json")
        unknown = await invoke("call", "plc", "StartJob", "jobId=J-1", "--config", str(config), "--json")
        events = daemon.audit.events
    assert ok.exit_code == 0, ok.output
    answer = orjson.loads(last_line(ok))
    assert answer["state"] == "done"
    assert answer["readback"] == 123.5
    assert sim.unit(2).snapshot()["setpoint"] == 123.5
    assert too_high.exit_code == 1
    assert last_line(too_high) == (
        "refused: write on 'plc' (out_of_range: device 'plc': point 'setpoint': 900 is outside [0, 500])"
    )
    assert orjson.loads(last_line(wrong))["reason"] == "wrong_type"
    assert orjson.loads(last_line(unknown))["reason"] == "unknown_command"
    assert events == 4


async def test_cli_without_a_daemon_says_so_and_exits_3(broker: Mosquitto, unique: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, broker.port, [modbus_device("plc", "sim-machine-plc", 1, 2)], cell=unique)
    result = await invoke("job", "pause", "plc", "--config", str(config), "--timeout", "1")
    assert result.exit_code == 3
    assert "no answer within 1 s (is the daemon running?)" in result.stderr


async def test_cli_with_a_daemon_that_said_offline_names_its_reason(
    broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    """The daemon's retained status says offline: the CLI waits for it to come back until
    its timeout, then says why it sent nothing (a command would have reached no one)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from cellctl.testing import root_topic

    publisher = paho.Client(CallbackAPIVersion.VERSION2)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    try:
        body = orjson.dumps({"status": "offline", "reason": "shutdown"})
        publisher.publish(f"{root_topic(unique)}/status", body, 1, True).wait_for_publish(5)
        config = write_config(tmp_path, broker.port, [modbus_device("plc", "sim-machine-plc", 1, 2)], cell=unique)
        result = await invoke("job", "pause", "plc", "--config", str(config), "--timeout", "3")
    finally:
        publisher.publish(f"{root_topic(unique)}/status", b"", 1, True).wait_for_publish(5)
        publisher.loop_stop()
        publisher.disconnect()
    assert result.exit_code == 3
    assert f"the daemon is offline (shutdown) according to {root_topic(unique)}/status" in result.stderr
