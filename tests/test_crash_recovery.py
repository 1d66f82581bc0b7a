"""kill -9 of a real `cellctl run` during a broker outage: after restarting the daemon
and the broker, every sample the killed process had accepted arrives, in order, marked
historical. (The store-level version of this is test_outbox_crash.py.)"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import Collector, Message, modbus_device, root_topic, write_config

pytestmark = pytest.mark.timeout(90)
CELLCTL = [sys.executable, "-m", "cellctl.cli.main", "--log-format", "json"]
FIRST = 1001
VALUES = 15


@pytest.fixture
def persistent_broker() -> Iterator[Mosquitto]:
    with Mosquitto(persistence=True) as b:
        yield b


@pytest.fixture
async def plc() -> AsyncIterator[tuple[SimModbusServer, int]]:
    async with SimModbusServer({2: "machine-plc"}, tick=0.1, seed=3, auto_tick=False) as sim:
        yield sim, await sim.serve_tcp()


def spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([*CELLCTL, "run", str(config)], stdout=out, stderr=subprocess.STDOUT)


def stored_with(db: Path, value: int) -> bool:
    """Whether the daemon has committed a data message carrying good_parts == value
    (read from its outbox as any other SQLite reader would)."""
    if not db.exists():
        return False
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute(
            "SELECT 1 FROM messages WHERE topic GLOB '*/data' AND CAST(payload AS TEXT) GLOB ? LIMIT 1",
            (f'*"good_parts":{value}[,}}]*',),
        ).fetchone()
    except sqlite3.OperationalError:  # created but no schema yet
        return False
    finally:
        conn.close()
    return row is not None


async def until(pred: Any, what: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


def good_parts(msgs: list[Message]) -> list[tuple[int, bool]]:
    """(good_parts, historical) of every data message that carried a new count."""
    out = []
    for m in msgs:
        body = m.json()
        if "good_parts" in body.get("values", {}):
            out.append((body["values"]["good_parts"], bool(body.get("historical"))))
    return out


async def test_kill_9_during_an_outage_loses_nothing(
    persistent_broker: Mosquitto, plc: tuple[SimModbusServer, int], unique: str, tmp_path: Path
) -> None:
    broker = persistent_broker
    sim, port = plc
    unit = sim.unit(2)
    unit.set_value("good_parts", 1)
    config = write_config(
        tmp_path,
        broker.port,
        [modbus_device("plc", "sim-machine-plc", port, 2, poll_interval=0.02)],
        cell=unique,
        outbox={"fsync": "batch"},
    )
    db = tmp_path / "state" / "outbox.sqlite"
    log = tmp_path / "daemon.log"
    c = Collector(
        broker.port, f"{root_topic(unique)}/plc/data", client_id=f"k-{unique}"[:23], clean_session=False
    )
    first = spawn(config, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        await c.until(good_parts, timeout=20, what="data from the first daemon")
        await asyncio.to_thread(broker.stop)
        # the outage: new counts, each taken and committed by the daemon before the next
        for v in range(FIRST, FIRST + VALUES):
            unit.set_value("good_parts", v)
            await until(lambda v=v: stored_with(db, v), f"good_parts={v} in the outbox")
        first.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(first.wait, 10) == -signal.SIGKILL
        # a new daemon on the same state dir, while the broker is still away; then the broker
        second = spawn(config, log)
        unit.set_value("good_parts", FIRST + VALUES)  # taken by the second daemon during the outage
        await until(lambda: stored_with(db, FIRST + VALUES), "the second daemon's sample in the outbox")
        await asyncio.to_thread(broker.start)
        want = set(range(FIRST, FIRST + VALUES + 1))
        await c.until(
            lambda m: want <= {v for v, _ in good_parts(m)}, timeout=30, what=f"every count in {sorted(want)}"
        )
        second.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.wait, 20) == 0
    finally:
        c.close()
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
    seen = good_parts(c.messages)
    outage = [v for v, hist in seen if v >= FIRST]
    assert all(hist for v, hist in seen if v >= FIRST), "outage samples are marked historical"
    # in order: the killed process's backlog, then the second one's (at-least-once: a
    # repeat may follow, never an older value after a newer one first arrived)
    firsts = [v for i, v in enumerate(outage) if v not in outage[:i]]
    assert firsts == sorted(want)
    # the second daemon started with the killed one's backlog
    starts = [json.loads(line) for line in log.read_text().splitlines() if '"cellctl_starting"' in line]
    assert len(starts) == 2
    assert starts[1]["outbox_backlog"] >= VALUES
