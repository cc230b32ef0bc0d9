"""Money a provider says it was billed for a failed or cancelled call: taken in any numeric form, never left open.

A float, an int or a numeric string is read as a Decimal (a float through ``str``); a negative amount, NaN, infinity
or something that is not a number is logged and ignored, so the router still settles or releases the reservation
instead of crashing with it open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from conftest import FakePlugin, FakeProvider, section
from genroute import errors
from genroute.errors import DeadlineExceeded, ModelFailed, NoRouteAvailable, ProviderUnavailable
from genroute.provider import RunContext
from genroute.types import Offer, ProviderOutput, RequestModel, TextGeneration, TextToImage

D = Decimal


def image() -> TextToImage:
    return TextToImage(prompt="a lighthouse at dusk")


def one_provider(settings_factory: Any, router_factory: Any, provider: FakeProvider, **routing: Any) -> Any:
    config = settings_factory({provider.name: section(provider.name, "0.01")}, routing={"max_attempts": 1, **routing})
    return router_factory(config, FakePlugin(provider))


@pytest.mark.parametrize(
    ("given", "settled"),
    [
        (0.25, D("0.25")),  # a float, read through str: 0.25, not 0.25000000000000001…
        (0.1, D("0.1")),
        (1, D("1")),
        ("0.003", D("0.003")),
        (D("0.007"), D("0.007")),
    ],
)
async def test_a_failed_call_billed_in_any_numeric_form_is_settled(settings_factory, router_factory, given, settled):
    lab = FakeProvider("lab", errors=[ModelFailed("model crashed", provider="lab", incurred=given)])
    router = one_provider(settings_factory, router_factory, lab)

    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(image())

    assert "lab: model crashed" in info.value.message
    assert router.ledger.open_reservations() == []
    (entry,) = router.ledger.entries()
    assert (entry.status, entry.actual) == ("settled", settled)
    assert "billed for failed calls" in entry.note


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        (D("-1"), "negative"),
        (-0.5, "negative"),
        (D("NaN"), "not a finite number"),
        (float("inf"), "not a finite number"),
        ("lots", "not a finite number"),
        (True, "a bool, not an amount of money"),
        ([1], "a list, not an amount of money"),
    ],
)
async def test_a_bad_billed_amount_is_ignored_with_a_warning_and_the_reservation_released(
    settings_factory, router_factory, caplog, given, problem
):
    lab = FakeProvider("lab", errors=[ModelFailed("model crashed", provider="lab", incurred=given)])
    router = one_provider(settings_factory, router_factory, lab)

    with caplog.at_level(logging.WARNING, logger="genroute.router"), pytest.raises(NoRouteAvailable) as info:
        await router.arun(image())

    # the provider's own failure is what the user reads, not a TypeError or "cannot settle a negative amount"
    assert "lab: model crashed" in info.value.message
    assert router.ledger.open_reservations() == []
    assert [(e.status, e.actual) for e in router.ledger.entries()] == [("released", D(0))]
    (warning,) = [r.getMessage() for r in caplog.records if "reported incurred=" in r.getMessage()]
    assert warning.startswith("provider lab reported incurred=")
    assert problem in warning and "ignored" in warning


def test_incurred_is_a_decimal_or_none_however_it_was_given() -> None:
    assert ModelFailed("x", provider="lab", incurred=0.1).incurred == D("0.1")
    assert ModelFailed("x", provider="lab", incurred="2").incurred == D("2")
    assert ModelFailed("x", provider="lab", incurred=0).incurred == D(0)
    assert ModelFailed("x", provider="lab").incurred is None
    assert ModelFailed("x", provider="lab", incurred=D("-0.01")).incurred is None
    err = errors.ProviderError("x", provider="lab")
    err.incurred = 0.0007  # as a provider's except clause adds it after the error was made
    assert err.incurred == D("0.0007") and isinstance(err.incurred, Decimal)
    err.incurred = D("NaN")
    assert err.incurred is None


async def test_a_float_billed_by_retried_attempts_adds_up_with_the_success(settings_factory, router_factory):
    flaky = ProviderUnavailable("busy", provider="lab", incurred=0.002)
    lab = FakeProvider("lab", errors=[flaky])
    router = one_provider(settings_factory, router_factory, lab, max_attempts=2)

    result = await router.arun(image())

    assert result.attempts == 2
    assert result.actual_cost == D("0.012")  # the success's 0.01 plus the failed attempt's 0.002
    assert router.ledger.open_reservations() == []


class _BilledThenStuck(FakeProvider):
    """Reports what a remote job was billed in ``ctx.extra["incurred"]`` and then outlives the deadline."""

    def __init__(self, name: str, billed: object) -> None:
        super().__init__(name)
        self.billed = billed

    async def run(self, request: RequestModel, offer: Offer, ctx: RunContext) -> ProviderOutput:
        ctx.extra["incurred"] = self.billed
        await asyncio.sleep(30)
        raise AssertionError("the deadline should have cancelled this call")


async def test_a_float_in_ctx_extra_incurred_is_settled_when_the_call_is_cancelled(settings_factory, router_factory):
    lab = _BilledThenStuck("lab", 0.0007)
    router = one_provider(settings_factory, router_factory, lab)

    with pytest.raises(DeadlineExceeded):
        await router.arun(TextToImage(prompt="a fox", deadline_seconds=0.1))

    assert router.ledger.open_reservations() == []
    assert [(e.status, e.actual) for e in router.ledger.entries()] == [("settled", D("0.0007"))]


async def test_a_bad_amount_in_ctx_extra_incurred_is_ignored_with_a_warning(settings_factory, router_factory, caplog):
    lab = _BilledThenStuck("lab", D("-3"))
    router = one_provider(settings_factory, router_factory, lab)

    with caplog.at_level(logging.WARNING, logger="genroute.router"), pytest.raises(DeadlineExceeded):
        await router.arun(TextToImage(prompt="a fox", deadline_seconds=0.1))

    assert router.ledger.open_reservations() == []
    assert [(e.status, e.actual) for e in router.ledger.entries()] == [("released", D(0))]
    assert any(
        r.getMessage().startswith('provider lab reported ctx.extra["incurred"]=') and "negative" in r.getMessage()
        for r in caplog.records
    )


class _ReportsThenFails(FakeProvider):
    """Puts what the call billed in ``ctx.extra["incurred"]``, then fails without an ``incurred`` of its own."""

    def __init__(self, name: str, billed: object) -> None:
        super().__init__(name)
        self.billed = billed

    async def run(self, request: RequestModel, offer: Offer, ctx: RunContext) -> ProviderOutput:
        ctx.extra["incurred"] = self.billed
        raise ModelFailed("model crashed", provider=self.name)


@pytest.mark.parametrize(("billed", "entry"), [(0.0007, ("settled", D("0.0007"))), (0, ("released", D(0)))])
async def test_a_failed_call_settles_what_it_reported_in_ctx_extra_as_a_stream_does(
    settings_factory, router_factory, billed, entry
):
    # run and stream close a failed call's reservation through one function: the same report, the same money
    lab = _ReportsThenFails("lab", billed)
    router = one_provider(settings_factory, router_factory, lab)

    with pytest.raises(NoRouteAvailable):
        await router.arun(image())

    assert [(e.status, e.actual) for e in router.ledger.entries()] == [entry]
    assert router.ledger.open_reservations() == []


async def test_a_bad_amount_reported_by_a_failed_call_names_its_provider_and_is_ignored(
    settings_factory, router_factory, caplog
):
    lab = _ReportsThenFails("lab", "lots")
    router = one_provider(settings_factory, router_factory, lab)

    with caplog.at_level(logging.WARNING, logger="genroute.router"), pytest.raises(NoRouteAvailable):
        await router.arun(image())

    assert [(e.status, e.actual) for e in router.ledger.entries()] == [("released", D(0))]
    (warning,) = [r.getMessage() for r in caplog.records if 'ctx.extra["incurred"]=' in r.getMessage()]
    assert warning.startswith('provider lab reported ctx.extra["incurred"]=') and "not a finite number" in warning


class _StreamReportsThenFails(FakeProvider):
    """Streams one piece, puts ``billed`` in ``ctx.extra["incurred"]``, then fails without an amount of its own."""

    def __init__(self, name: str, billed: object) -> None:
        super().__init__(name, stream_pieces=["Hel"])
        self.billed = billed

    async def stream(self, request: RequestModel, offer: Offer, ctx: RunContext) -> AsyncIterator[str]:
        yield "Hel"
        ctx.extra["incurred"] = self.billed
        raise ModelFailed("model crashed", provider=self.name)


async def test_a_bad_amount_reported_by_a_stream_names_its_provider_and_the_estimate_is_settled(
    settings_factory, router_factory, caplog
):
    lab = _StreamReportsThenFails("lab", D("-2"))
    config = settings_factory({"lab": section("lab", "0.01", task="text-generation", unit="request")})
    router = router_factory(config, FakePlugin(lab))

    with caplog.at_level(logging.WARNING, logger="genroute.router"), pytest.raises(ModelFailed):
        [piece async for piece in router.astream(TextGeneration(prompt="hi"))]

    # nothing usable reported, and text reached the caller: the estimate
    assert [(e.status, e.actual) for e in router.ledger.entries()] == [("settled", D("0.01"))]
    (warning,) = [r.getMessage() for r in caplog.records if 'ctx.extra["incurred"]=' in r.getMessage()]
    assert warning.startswith('provider lab reported ctx.extra["incurred"]=') and "negative" in warning
