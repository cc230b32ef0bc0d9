"""A create's answer may take ``create_timeout_seconds`` beyond its wait, and reconciliation after a 500/503 waits
for a listing that lags: either way one request makes one prediction.

The real ``replicate`` client against :class:`fakes.FakeReplicate`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fakes import FakeReplicate
from genroute.router import Router
from genroute.types import TextToImage
from test_replicate_helpers import build_settings, creates

pytest_plugins = ["test_replicate_helpers"]  # its fixtures: fake, token, router, make_router

CREATE = "POST /v1/models/*/predictions"
LIST = "/v1/predictions"


def _request() -> TextToImage:
    return TextToImage(prompt="a fox", tier="fast", provider="replicate")  # type: ignore[arg-type]


def test_a_create_answered_after_its_wait_but_within_create_timeout_seconds_is_taken_as_answered(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    # The client's own read timeout for a held create is wait + 0.5 s: 1.5 s here, before the 1.7 s answer.
    router = make_router(build_settings(tmp_path, fake, options={"wait_seconds": 1, "create_timeout_seconds": 5}))
    fake.faults.add(CREATE, "slow", seconds=1.7, processed=True, times=1)
    result = router.run(_request())
    assert len(result.artifacts) == 1
    assert creates(fake) == 1 and len(fake.predictions) == 1
    assert fake.count("GET", LIST) == 0  # answered: nothing to reconcile


def test_a_create_slower_than_create_timeout_seconds_is_reconciled(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    router = make_router(build_settings(tmp_path, fake, options={"wait_seconds": 1, "create_timeout_seconds": 0.5}))
    fake.faults.add(CREATE, "slow", seconds=2.5, processed=True, times=1)
    result = router.run(_request())
    assert len(result.artifacts) == 1
    assert creates(fake) == 1 and len(fake.predictions) == 1
    assert fake.count("GET", LIST) >= 1  # timed out after 1 + 0.5 s: found among recent predictions


@pytest.mark.parametrize("status", [500, 503])
def test_a_500_or_503_after_the_prediction_was_made_lists_again_until_the_lagging_listing_shows_it(
    status: int, fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    options = {"reconcile_attempts": 4, "reconcile_interval_seconds": 0.2}
    router = make_router(build_settings(tmp_path, fake, options=options))
    fake.listing_lag = 0.35  # the first listings, right after the answer, do not show it yet
    fake.faults.add(CREATE, status, processed=True, times=1)
    result = router.run(_request())
    assert len(result.artifacts) == 1
    assert creates(fake) == 1 and len(fake.predictions) == 1  # adopted, never created twice
    assert fake.count("GET", LIST) >= 2
    assert result.job_id == fake.predictions[0].id


def test_a_503_that_made_nothing_is_listed_reconcile_attempts_times_then_retried(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    router = make_router(build_settings(tmp_path, fake, options={"reconcile_attempts": 3}))
    fake.faults.add(CREATE, 503, times=1)  # refused before anything was made
    result = router.run(_request())
    assert len(result.artifacts) == 1
    assert creates(fake) == 2 and len(fake.predictions) == 1
    assert fake.count("GET", LIST) == 3
