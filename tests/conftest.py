"""Shared fixtures: one private mosquitto per test session on a free loopback port."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from cellctl.localbroker import Mosquitto


@pytest.fixture(scope="session")
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as b:
        yield b


@pytest.fixture
def broker_fresh() -> Iterator[Mosquitto]:
    """A broker of the test's own, for tests that stop and restart it."""
    with Mosquitto() as b:
        yield b


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A topic-safe name unique to this test run."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")[:40]
    return f"{name}-{uuid.uuid4().hex[:6]}"
