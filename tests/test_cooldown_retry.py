"""Backoff and cooldown: the two timing policies behind retries and fallback."""

from __future__ import annotations

import random

import pytest

from genroute.cooldown import Cooldowns, SharedCooldowns
from genroute.retry import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_grows_exponentially_and_is_capped() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [backoff.delay(attempt, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # full jitter reaches near the ceiling


def test_backoff_never_waits_less_than_retry_after() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0)
    assert all(backoff.delay(1, retry_after=3.0) >= 3.0 for _ in range(50))
    assert backoff.delay(5, retry_after=0) <= 1.0


def test_provider_cools_down_after_consecutive_failures_then_returns() -> None:
    clock = Clock()
    cooldowns = Cooldowns(after_failures=3, seconds=30, clock=clock)
    assert not cooldowns.failure("p")
    assert not cooldowns.failure("p")
    assert cooldowns.failure("p")  # the third in a row starts the cooldown
    assert cooldowns.remaining("p") == pytest.approx(30)
    clock.now += 29
    assert cooldowns.remaining("p") == pytest.approx(1)
    clock.now += 2
    assert cooldowns.remaining("p") == 0  # back in rotation
    # on probation: one more failure cools it down again at once
    assert cooldowns.failure("p")
    assert cooldowns.remaining("p") == pytest.approx(30)


def test_success_resets_the_count_and_providers_are_independent() -> None:
    clock = Clock()
    cooldowns = Cooldowns(after_failures=2, seconds=10, clock=clock)
    cooldowns.failure("a")
    cooldowns.success("a")
    assert not cooldowns.failure("a")  # the count restarted
    assert cooldowns.failure("a")
    assert cooldowns.remaining("b") == 0


def test_zero_cooldown_never_takes_a_provider_out() -> None:
    cooldowns = Cooldowns(after_failures=1, seconds=0, clock=Clock())
    assert not cooldowns.failure("p")
    assert cooldowns.remaining("p") == 0


def test_a_cooldown_posted_by_one_process_reaches_the_others_within_the_recheck() -> None:
    board: dict[str, float] = {}
    wall = Clock()
    reads: list[str] = []

    def read(provider: str) -> float | None:
        reads.append(provider)
        return board.get(provider)

    def shared() -> SharedCooldowns:
        local = Cooldowns(after_failures=2, seconds=30, clock=wall)
        return SharedCooldowns(local, board.__setitem__, read, recheck_seconds=1.0, wall=wall)

    failing, other = shared(), shared()
    assert other.remaining("p") == 0 and reads == ["p"]
    assert not failing.failure("p")
    assert failing.failure("p")  # the second failure starts the cooldown and posts it
    assert board["p"] == wall.now + 30
    assert other.remaining("p") == 0  # looked less than a second ago: not yet
    wall.now += 1.0
    assert other.remaining("p") == pytest.approx(29.0)  # seen: the other process skips it too
    reads.clear()
    wall.now += 0.5
    assert other.remaining("p") == pytest.approx(28.5) and reads == []  # no read between rechecks
    wall.now += 29.0
    assert other.remaining("p") == 0 and failing.remaining("p") == 0  # back in rotation everywhere


def test_a_cooldown_taken_back_elsewhere_ends_in_the_process_that_counted_the_failures() -> None:
    """genroute providers reset posts "until 0": the long-running process whose own failures started the
    cooldown takes the provider back within the recheck too, not only the others."""
    board: dict[str, float] = {}
    wall = Clock()
    local = Cooldowns(after_failures=1, seconds=60, clock=wall)
    failing = SharedCooldowns(local, board.__setitem__, board.get, recheck_seconds=1.0, wall=wall)
    assert failing.failure("p")
    wall.now += 1.0
    assert failing.remaining("p") == pytest.approx(59.0)  # its own post, still in force
    board["p"] = 0.0  # reset from another process
    assert failing.remaining("p") == pytest.approx(59.0)  # looked less than a second ago: not yet
    wall.now += 1.0
    assert failing.remaining("p") == 0
    assert local.remaining("p") == 0  # its own count forgotten too, as after a success


def test_an_unreadable_shared_cooldown_leaves_the_local_one_in_force() -> None:
    wall = Clock()
    local = Cooldowns(after_failures=1, seconds=60, clock=wall)
    failing = SharedCooldowns(
        local, lambda provider, until: None, lambda provider: None, recheck_seconds=1.0, wall=wall
    )
    assert failing.failure("p")
    wall.now += 5.0
    assert failing.remaining("p") == pytest.approx(55.0)
