"""A cancel that fails is tried again; one that never lands is settled at the estimate, never at $0.

When a deadline (or Ctrl-C, or SIGTERM) cuts a run short, the provider cancels the prediction so that it stops
billing. A cancel answered with a 503, or whose connection drops, is tried a few more times with a short backoff
(within a few seconds in all); what the prediction used is then reported to the router. A cancel that never
lands leaves a prediction that may run to its end and be billed in full: the reservation is settled at the
offer's estimate, and a warning names the prediction and says how to cancel it by hand.

The real ``replicate`` client against :class:`fakes.FakeReplicate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from fakes import FakeReplicate
from genroute import errors
from genroute.ledger import LedgerEntry
from genroute.money import quantize
from genroute.router import Router
from genroute.types import Upscale
from test_replicate_helpers import build_settings, png

pytest_plugins = ["test_replicate_helpers"]  # its fixtures: fake, token, router, make_router

MODEL = "nightmareai/real-esrgan"  # per second on a T4: $0.000225, estimated at 4 s
RATE = Decimal("0.000225")
ESTIMATE = Decimal("0.0009")
CANCEL = "POST /v1/predictions/*/cancel"


def _run_past_the_deadline(fake: FakeReplicate, router: Router) -> None:
    fake.set_predict_time(MODEL, 8)
    with pytest.raises(errors.DeadlineExceeded):
        router.run(Upscale(image=png(), tier="fast", deadline_seconds=3))  # type: ignore[arg-type]


def _ledger_entry(router: Router) -> LedgerEntry:
    (entry,) = list(router.ledger.entries())
    assert router.ledger.open_reservations() == []
    return entry


def _settled_at_what_it_used(fake: FakeReplicate, router: Router) -> None:
    (prediction,) = fake.predictions
    assert prediction.status == "canceled" and prediction.canceled
    assert 1 < prediction.predict_time < 8  # stopped well before its end
    entry = _ledger_entry(router)
    assert entry.status == "settled", entry
    assert entry.actual == quantize(RATE * Decimal(str(prediction.predict_time))) > 0


@pytest.fixture
def router(fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]) -> Router:
    return make_router(build_settings(tmp_path, fake, options={"wait_seconds": 1}))


def test_a_cancel_answered_503_once_is_tried_again(fake: FakeReplicate, router: Router) -> None:
    fake.faults.add(CANCEL, 503, times=1)
    _run_past_the_deadline(fake, router)
    assert fake.count("POST", "/v1/predictions/*/cancel") == 2
    _settled_at_what_it_used(fake, router)


def test_a_cancel_whose_connection_drops_is_tried_again(fake: FakeReplicate, router: Router) -> None:
    fake.faults.add(CANCEL, "drop-before", times=1)
    _run_past_the_deadline(fake, router)
    assert fake.count("POST", "/v1/predictions/*/cancel") == 2
    _settled_at_what_it_used(fake, router)


def test_a_cancel_that_never_lands_is_settled_at_the_estimate_with_a_warning(
    fake: FakeReplicate, router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="genroute")
    fake.faults.add(CANCEL, 503)
    _run_past_the_deadline(fake, router)
    attempts = fake.count("POST", "/v1/predictions/*/cancel")
    assert 2 <= attempts <= 6  # tried a few times, then given up (bounded: the caller is waiting)
    (prediction,) = fake.predictions
    assert not prediction.canceled  # it runs on, and is billed on Replicate
    entry = _ledger_entry(router)
    assert entry.status == "settled", entry
    assert entry.actual == ESTIMATE  # what it may cost, not $0
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and prediction.id in r.getMessage()
    ]
    assert warnings, caplog.text
    assert "may still be running" in warnings[-1] and "replicate.com" in warnings[-1]
    assert f"/v1/predictions/{prediction.id}/cancel" in warnings[-1]


def test_a_cancel_that_lands_but_whose_answer_is_lost_is_settled_at_what_it_used(
    fake: FakeReplicate, router: Router
) -> None:
    # The service cancelled it, but the answer never came back (then every later cancel fails too): the read
    # afterwards shows it canceled, with its compute time.
    fake.faults.add(CANCEL, "drop-after", times=1)
    fake.faults.add(CANCEL, 503)
    _run_past_the_deadline(fake, router)
    _settled_at_what_it_used(fake, router)
