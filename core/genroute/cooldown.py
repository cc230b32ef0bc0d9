"""Take a provider that keeps failing out of rotation for a while, then let it back in."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Cooldowns:
    """Consecutive failures per provider; ``after_failures`` in a row cool it down for ``seconds``."""

    after_failures: int
    seconds: float
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, int] = field(default_factory=dict)
    _until: dict[str, float] = field(default_factory=dict)

    def remaining(self, provider: str) -> float:
        """Seconds left in the provider's cooldown; 0 when it is in rotation."""
        until = self._until.get(provider)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            # Back in rotation, on probation: one more failure cools it down again at once.
            del self._until[provider]
            self._failures[provider] = self.after_failures - 1
            return 0.0
        return left

    def failure(self, provider: str) -> bool:
        """Count a failure; return True when this one started a cooldown."""
        count = self._failures.get(provider, 0) + 1
        self._failures[provider] = count
        if count >= self.after_failures and self.seconds > 0:
            self._until[provider] = self.clock() + self.seconds
            self._failures[provider] = 0
            return True
        return False

    def success(self, provider: str) -> None:
        self._failures.pop(provider, None)
        self._until.pop(provider, None)


class SharedCooldowns:
    """:class:`Cooldowns` that every process sharing a ledger directory honours.

    Failures are counted per process; when one process takes a provider out of rotation it posts until
    when (wall-clock time), and the others look for posts at most every ``recheck_seconds`` per provider,
    so a provider that keeps failing stops being called everywhere within about a second. A post taken back
    (``until`` 0, from ``genroute providers reset``) ends the cooldown in every process, the one that
    counted the failures included.
    """

    def __init__(
        self,
        local: Cooldowns,
        post: Callable[[str, float], None],
        read: Callable[[str], float | None],
        *,
        recheck_seconds: float = 1.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.local = local
        self._post = post
        self._read = read
        self.recheck_seconds = recheck_seconds
        self._wall = wall
        self._seen: dict[str, tuple[float, float]] = {}  # provider → (when looked, posted until)

    def remaining(self, provider: str) -> float:
        """Seconds left in the provider's cooldown, this process's or another's; 0 when it is in rotation."""
        left = self.local.remaining(provider)
        now = self._wall()
        looked, until = self._seen.get(provider, (float("-inf"), 0.0))
        if now - looked >= self.recheck_seconds:
            posted = self._read(provider)
            if left > 0 and posted is not None and posted <= now:
                # This process's own cooldown, taken back elsewhere (genroute providers reset posts "until 0"):
                # back in rotation here too. Its own post would still be in the future.
                self.local.success(provider)
                left = 0.0
            until = posted or 0.0
            self._seen[provider] = (now, until)
        return max(left, until - now, 0.0)

    def failure(self, provider: str) -> bool:
        """Count a failure; when it starts a cooldown, post it for the other processes."""
        started = self.local.failure(provider)
        if started:
            until = self._wall() + self.local.seconds
            self._post(provider, until)
            self._seen[provider] = (self._wall(), until)
        return started

    def success(self, provider: str) -> None:
        self.local.success(provider)
