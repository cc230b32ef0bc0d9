"""Waiting for a model that is loading: hf-inference answers 503 ``{"estimated_time": N}``, and the client no
longer waits or retries. One run waits (asyncio.sleep) and asks again, within ``max_loading_wait_seconds`` and
never past the request's deadline; otherwise it gives up with a typed ``ProviderUnavailable``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from genroute import errors
from genroute.provider import RunContext

from .failures import loading_estimate
from .options import NAME, HuggingFaceOptions

log = logging.getLogger("genroute_huggingface")

T = TypeVar("T")

MIN_WAIT_SECONDS = 0.05
"""Shortest wait between two calls to a loading model (the service may say ``estimated_time: 0``)."""


class LoadingWaiter:
    """Calls a client method, waiting and asking again while the model loads. One per run: the cap is per run."""

    def __init__(self, ctx: RunContext, options: HuggingFaceOptions, model: str) -> None:
        self.ctx = ctx
        self.cap = options.max_loading_wait_seconds
        self.model = model
        self.waited = 0.0
        self.loads = 0  # 503 "loading" answers seen

    async def __call__(self, call: Callable[[], Awaitable[T]]) -> T:
        while True:
            try:
                return await call()
            except Exception as exc:
                estimate = loading_estimate(exc)
                if estimate is None:
                    raise
                self.loads += 1
                delay = self._delay_or_give_up(estimate)
            log.info("%s is loading; asking again in %.2fs (service estimate %.1fs)", self.model, delay, estimate)
            await asyncio.sleep(delay)
            self.waited += delay

    def _delay_or_give_up(self, estimate: float) -> float:
        delay = max(estimate, MIN_WAIT_SECONDS)
        left = self.ctx.remaining()
        if delay >= left:
            raise errors.ProviderUnavailable(
                f"{self.model} is loading (estimated {estimate:g}s), longer than the {left:.1f}s left before the "
                "request's deadline",
                provider=NAME,
                retryable=False,
                retry_after=estimate,
                hint="raise the request's deadline_seconds, or try again once the model is warm",
            )
        if self.waited + delay > self.cap:
            raise errors.ProviderUnavailable(
                f"{self.model} is still loading (estimated {estimate:g}s more) after {self.waited:.1f}s of waiting; "
                f"max_loading_wait_seconds is {self.cap:g}",
                provider=NAME,
                retryable=False,
                retry_after=estimate,
                hint="raise max_loading_wait_seconds in [providers.huggingface.options] to wait longer for cold models",
            )
        return delay
