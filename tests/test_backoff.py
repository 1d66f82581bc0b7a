from __future__ import annotations

import pytest

from cellctl.engine.backoff import Backoff, worth_repeating


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(0.5, 4.0, rand=lambda: 1.0, fast_attempts=1)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5


def test_backoff_jitter_stays_in_upper_half() -> None:
    b = Backoff(1.0, 8.0, rand=lambda: 0.0, fast_attempts=1)
    assert [b.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_the_first_retries_come_quickly_then_the_delay_grows() -> None:
    """Issue 9 item 17: a peer that blinked is retried within about a second, three
    times, before the backoff grows for a long outage."""
    b = Backoff(0.5, 30.0, rand=lambda: 1.0)
    delays = [b.next_delay() for _ in range(8)]
    assert delays == [0.5, 0.5, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert sum(delays[:3]) <= 1.5


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="minimum"):
        Backoff(0, 1)


def test_a_repeating_failure_is_logged_at_1_10_100_1000() -> None:
    """Issue 9 item 16: logged once and then never again hid a long outage."""
    assert [n for n in range(1, 5001) if worth_repeating(n)] == [1, 10, 100, 1000]
