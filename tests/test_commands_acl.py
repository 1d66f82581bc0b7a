"""The deployment docs/commands.md describes: a broker with users and an ACL in which only
the MES's user may publish to the command topics. Another user's command never reaches
the daemon (nothing is audited, nothing written); the MES's command is executed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import modbus_device, root_topic, running_daemon, write_config
from cellctl.testing.commands import CommandClient
from cellctl.testing.waiting import async_wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def plc() -> AsyncIterator[tuple[SimModbusServer, int]]:
    async with SimModbusServer({2: "machine-plc"}, tick=0.1, seed=3, auto_tick=False) as sim:
        yield sim, await sim.serve_tcp()


async def test_only_the_mes_user_can_command_the_cell(
    plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    sim, port = plc
    root = root_topic(unique)
    acl = "\n".join(
        [
            "user mes",
            f"topic write {root}/cmd/+",
            f"topic read {root}/cmd/+/ack",
            "topic read test-replies/#",
            "user cellctl",
            f"topic readwrite {root}/#",
            "topic write test-replies/#",
            "user viewer",
            f"topic read {root}/#",
            "topic read test-replies/#",
            "",
        ]
    )
    users = {"mes": "mes-secret", "cellctl": "cellctl-secret", "viewer": "viewer-secret"}
    (tmp_path / "password").write_text("cellctl-secret\n", encoding="utf-8")
    with Mosquitto(users=users, acl=acl) as broker:
        config = write_config(
            tmp_path,
            broker.port,
            [modbus_device("plc", "sim-machine-plc", port, 2, poll_interval=0.05)],
            cell=unique,
            backbone={
                "host": "127.0.0.1",
                "port": broker.port,
                "protocol": "5",
                "username": "cellctl",
                "password_file": str(tmp_path / "password"),
            },
            commands={"enabled": True, "devices": {"plc": {"points": {"setpoint": {"min": 0, "max": 500}}}}},
        )
        viewer = CommandClient(broker.port, root, username="viewer", password="viewer-secret")
        mes = CommandClient(broker.port, root, username="mes", password="mes-secret")
        try:
            async with running_daemon(config) as daemon:
                await async_wait_until(lambda: daemon.cell.runner("plc").available, what="plc online")
                await mes.async_probe("plc")  # the daemon's command subscription is in place
                before = dict(daemon.audit.outcomes)
                viewer.send("plc", {"id": "v-1", "command": "write", "args": {"point": "setpoint", "value": 11.0}})
                mes.send("plc", {"id": "m-1", "command": "write", "args": {"point": "setpoint", "value": 22.0}})
                done = await mes.async_final("m-1")
                # the viewer's command was published (and acknowledged) before the MES's one:
                # had the broker delivered it, it would have been audited first
                outcomes = {k: n - before.get(k, 0) for k, n in daemon.audit.outcomes.items() if n - before.get(k, 0)}
        finally:
            viewer.close()
            mes.close()
    assert done["state"] == "done"
    assert viewer.results("v-1") == []
    assert outcomes == {"accepted": 1, "done": 1}
    assert sim.unit(2).snapshot()["setpoint"] == 22.0
    assert len(sim.unit(2).writes) == 1
