"""Fixtures: the session broker and topic names of the core tests, and simulated OPC UA
machines on free loopback ports, each stopped at teardown."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

# The core's test helpers (tests.support, the broker fixture) live in the repository
# root's `tests` package; make it importable when only this folder is collected.
_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
from cellctl_sim.opcua import SimOpcUaServer  # noqa: E402
from opcua_testutil import root_topic  # noqa: E402

from cellctl.localbroker import Mosquitto  # noqa: E402
from tests.conftest import broker, unique  # noqa: E402, F401  (re-exported fixtures)
from tests.support.mqtt import Collector  # noqa: E402


@pytest.fixture
async def machine() -> AsyncIterator[SimOpcUaServer]:
    """A simulated machine that changes only when the test steps it."""
    async with SimOpcUaServer(tick=0.1, seed=7, auto_tick=False, autonomous=False) as sim:
        yield sim


@pytest.fixture
def collector(broker: Mosquitto, unique: str) -> Iterator[Collector]:  # noqa: F811
    c = Collector(broker.port, f"{root_topic(unique)}/#")
    yield c
    c.close()
