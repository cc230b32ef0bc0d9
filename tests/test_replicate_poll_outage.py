"""A status-endpoint outage ends a run within the provider's own poll bounds.

The ``replicate`` client wraps every GET in its RetryTransport (10 tries, backoff up to 60 s, honouring
``Retry-After``); the provider's poll loop already tolerates ``poll_error_limit`` failed polls, so the
client's retries only multiplied it (a 3-second prediction held for about 6 minutes). Everything runs
through the real client against the fake.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fakes import FakeReplicate
from genroute.errors import GenrouteError
from genroute.router import Router
from genroute.types import Upscale
from genroute_replicate.client import ApiStatusError, Sessions
from genroute_replicate.options import ReplicateOptions
from test_replicate_helpers import TOKEN, build_settings, png

pytest_plugins = ["test_replicate_helpers"]  # its fixtures: fake, token, make_router

POLL_ERROR_LIMIT = 5
MAX_ATTEMPTS = 3


def test_a_status_endpoint_outage_fails_the_run_within_seconds(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    settings = build_settings(
        tmp_path,
        fake,
        options={"wait_seconds": 1, "poll_error_limit": POLL_ERROR_LIMIT},
        routing={"max_attempts": MAX_ATTEMPTS, "deadline_seconds": 600},
        providers=("replicate",),
    )
    fake.set_predict_time("nightmareai/real-esrgan", 3.0)
    fake.faults.add("GET /v1/predictions/*", 503, retry_after=1)
    started = time.monotonic()
    with pytest.raises(GenrouteError):
        make_router(settings).run(Upscale(image=png(), tier="fast"))
    elapsed = time.monotonic() - started
    polls = fake.count("GET", "/v1/predictions/*")
    assert elapsed < 30, f"the outage held the run for {elapsed:.0f} s"
    # Each attempt polls at most poll_error_limit times (a retry adopts the same prediction, never a new one).
    assert polls <= POLL_ERROR_LIMIT * MAX_ATTEMPTS, f"{polls} polls"
    assert fake.count("POST", "/v1/models/*/predictions") + fake.count("POST", "/v1/predictions") == 1


def test_the_deadline_bounds_a_wait_through_a_status_endpoint_outage(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    settings = build_settings(
        tmp_path,
        fake,
        options={"wait_seconds": 1, "poll_error_limit": 100, "poll_max_seconds": 0.5},
        routing={"max_attempts": MAX_ATTEMPTS, "deadline_seconds": 3},
        providers=("replicate",),
    )
    fake.set_predict_time("nightmareai/real-esrgan", 60.0)
    fake.faults.add("GET /v1/predictions/*", 503, retry_after=30)
    started = time.monotonic()
    with pytest.raises(GenrouteError):
        make_router(settings).run(Upscale(image=png(), tier="fast"))
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"a 3 s deadline held the run for {elapsed:.0f} s"
    assert fake.count("POST", "/v1/predictions/*/cancel") == 1  # and the prediction stopped billing


async def test_the_replicate_client_sends_each_request_once(fake: FakeReplicate) -> None:
    """The provider's client (the real one, as the provider builds it) never retries by itself: a GET answered
    503 with ``Retry-After`` comes back at once, and a create answered 503 after the fake made the prediction
    is not sent again (one request, one prediction); the provider decides what to retry or reconcile."""
    sessions = Sessions()
    session = sessions.get(TOKEN, ReplicateOptions(base_url=fake.base_url))
    try:
        fake.faults.add("GET /v1/predictions/*", 503, retry_after=1, times=3)
        started = time.monotonic()
        with pytest.raises(ApiStatusError) as info:
            await session.client.predictions.async_get("some-prediction")
        assert info.value.status == 503 and info.value.retry_after == 1
        assert fake.count("GET", "/v1/predictions/*") == 1 and time.monotonic() - started < 1

        fake.faults.add("POST /v1/models/*/predictions", 503, processed=True, times=1)
        with pytest.raises(ApiStatusError):
            await session.client.models.predictions.async_create(
                model="black-forest-labs/flux-schnell", input={"prompt": "once"}
            )
        assert fake.count("POST", "/v1/models/*/predictions") == 1 and len(fake.predictions) == 1
    finally:
        await sessions.aclose()
