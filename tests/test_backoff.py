from __future__ import annotations

import pytest

from cellctl.engine.backoff import Backoff


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(0.5, 4.0, rand=lambda: 1.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5


def test_backoff_jitter_stays_in_upper_half() -> None:
    b = Backoff(1.0, 8.0, rand=lambda: 0.0)
    assert [b.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="minimum"):
        Backoff(0, 1)
