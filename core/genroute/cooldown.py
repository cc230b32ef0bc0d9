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
