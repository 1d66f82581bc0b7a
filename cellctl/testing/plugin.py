"""The pytest plugin of the test kit, registered through the ``pytest11`` entry point of
the cellctl distribution: every test directory (the core's, each driver's, a third-party
driver's) gets these fixtures without conftest imports or `sys.path` edits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from cellctl.localbroker import Mosquitto


@pytest.fixture(scope="session")
def broker() -> Iterator[Mosquitto]:
    """One private mosquitto per test session on a free loopback port, stopped by its PID."""
    with Mosquitto() as b:
        yield b


@pytest.fixture
def broker_fresh() -> Iterator[Mosquitto]:
    """A broker of the test's own, for tests that stop and restart it."""
    with Mosquitto() as b:
        yield b


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A topic-safe name unique to this test run (test name + random suffix)."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")[:40]
    return f"{name}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(autouse=True)
def _logging_set_up_stays_in_its_test() -> Iterator[None]:
    """A test that runs a CLI command in-process configures logging for that command's
    output; the next test must not log into it. Structlog's set-up is put back after every
    test, and the root handler cellctl.logs installed (writing to that command's stream)
    is taken off again."""
    import logging

    import structlog

    saved = structlog.get_config()
    root = logging.getLogger()
    level = root.level
    yield
    structlog.configure(**saved)
    for h in root.handlers[:]:
        if getattr(h, "cellctl_handler", False):
            root.removeHandler(h)
    root.setLevel(level)
