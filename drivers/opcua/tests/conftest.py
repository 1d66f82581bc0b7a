"""Fixtures: simulated OPC UA machines on free loopback ports, each stopped at teardown,
and a collector on the test's topics (the broker comes from the cellctl.testing plugin)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from cellctl_sim.opcua import SimOpcUaServer
from opcua_testutil import root_topic

from cellctl.testing import Collector, Mosquitto


@pytest.fixture
async def machine() -> AsyncIterator[SimOpcUaServer]:
    """A simulated machine that changes only when the test steps it."""
    async with SimOpcUaServer(tick=0.1, seed=7, auto_tick=False, autonomous=False) as sim:
        yield sim


@pytest.fixture
def collector(broker: Mosquitto, unique: str) -> Iterator[Collector]:
    c = Collector(broker.port, f"{root_topic(unique)}/#")
    yield c
    c.close()
