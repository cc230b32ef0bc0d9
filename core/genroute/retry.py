"""Backoff for retrying one provider: exponential with full jitter, never shorter than Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial: float
    maximum: float

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.maximum, self.initial * (2 ** (attempt - 1)))
        jittered = (rng or random).uniform(0, ceiling)
        if retry_after is not None and retry_after > 0:
            return max(jittered, retry_after)
        return jittered
