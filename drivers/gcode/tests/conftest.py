"""Fixtures: simulated GRBL and Marlin machines in-process on real ptys, and a private
mosquitto for the end-to-end tests (this directory's own, like tests/conftest.py's)."""

from __future__ import annotations

import math
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cellctl_sim.grbl import GrblSim
from cellctl_sim.marlin import MarlinSim

from cellctl.localbroker import Mosquitto

# The end-to-end tests share tests/support with the core's tests; make the repository
# root importable when this directory is collected on its own.
_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


@pytest.fixture(scope="session")
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as b:
        yield b


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")[:40]
    return f"{name}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def grbl() -> AsyncIterator[GrblSim]:
    async with GrblSim(speedup=math.inf) as sim:
        yield sim


@pytest.fixture
async def grbl_factory() -> AsyncIterator[Any]:
    sims: list[GrblSim] = []

    async def make(**kwargs: Any) -> GrblSim:
        sim = GrblSim(**kwargs)
        await sim.start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        sim.close()


@pytest.fixture
async def marlin() -> AsyncIterator[MarlinSim]:
    async with MarlinSim(speedup=math.inf) as sim:
        yield sim


@pytest.fixture
async def marlin_factory() -> AsyncIterator[Any]:
    sims: list[MarlinSim] = []

    async def make(**kwargs: Any) -> MarlinSim:
        sim = MarlinSim(**kwargs)
        await sim.start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        sim.close()
