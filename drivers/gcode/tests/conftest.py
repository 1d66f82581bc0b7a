"""Fixtures: simulated GRBL and Marlin machines in-process on real ptys (the private
broker for the end-to-end tests comes from the cellctl.testing plugin)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cellctl_sim.grbl import GrblSim
from cellctl_sim.marlin import MarlinSim


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
