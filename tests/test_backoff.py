"""The pause between a background loop's failed rounds."""

from __future__ import annotations

from seqd.backoff import Backoff


def test_doubles_up_to_the_cap_and_resets_on_success() -> None:
    backoff = Backoff(0.2, 2.0)
    assert [backoff.failed() for _ in range(6)] == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    backoff.reset()
    assert backoff.failed() == 0.2


def test_a_poll_longer_than_the_cap_is_kept() -> None:
    backoff = Backoff(5.0, 2.0)
    assert [backoff.failed() for _ in range(3)] == [5.0, 5.0, 5.0]


def test_many_failures_do_not_overflow() -> None:
    backoff = Backoff(0.2)
    for _ in range(10_000):
        pause = backoff.failed()
    assert pause == 2.0
