"""Fixtures: simulated GRBL and Marlin machines in-process on real ptys (the private
broker for the end-to-end tests comes from the cellctl.testing plugin)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from cellctl_sim.grbl import GrblSim
from cellctl_sim.marlin import MarlinSim
from cellctl_sim.serialsim import SerialMachine


async def _machines(kind: type[SerialMachine]) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """A factory of started simulators of `kind`, all closed at teardown."""
    sims: list[SerialMachine] = []

    async def make(**kwargs: Any) -> SerialMachine:
        sim = kind(**kwargs)
        await sim.start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        sim.close()


@pytest.fixture
async def grbl() -> AsyncIterator[GrblSim]:
    async with GrblSim(speedup=math.inf) as sim:
        yield sim


@pytest.fixture
async def grbl_factory() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    async for make in _machines(GrblSim):
        yield make


@pytest.fixture
async def marlin() -> AsyncIterator[MarlinSim]:
    async with MarlinSim(speedup=math.inf) as sim:
        yield sim


@pytest.fixture
async def marlin_factory() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    async for make in _machines(MarlinSim):
        yield make
