"""The daemon's event loop choice: the standard loop unless CELLCTL_EVENT_LOOP asks for uvloop
(decision 0019)."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import pytest

from cellctl import eventloop


async def _loop_type() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_is_used_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLCTL_EVENT_LOOP", "asyncio")
    assert eventloop.loop_factory() is None
    assert eventloop.run(_loop_type()).startswith("asyncio")


def test_the_standard_loop_is_the_default_even_with_uvloop_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv("CELLCTL_EVENT_LOOP", raising=False)
    assert eventloop.loop_factory() is None
    assert eventloop.run(_loop_type()).startswith("asyncio")


@pytest.mark.parametrize("choice", ["uvloop", "auto", " UVLOOP "])
def test_uvloop_is_used_when_asked_for_and_installed(monkeypatch: pytest.MonkeyPatch, choice: str) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.setenv("CELLCTL_EVENT_LOOP", choice)
    assert eventloop.run(_loop_type()).startswith("uvloop")


def test_without_uvloop_the_standard_loop_runs_and_forcing_it_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("No module named 'uvloop'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    monkeypatch.setenv("CELLCTL_EVENT_LOOP", "auto")
    assert eventloop.loop_factory() is None
    monkeypatch.setenv("CELLCTL_EVENT_LOOP", "uvloop")
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        eventloop.loop_factory()
