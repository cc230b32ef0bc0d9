"""Edges of the money path found while proving the rest: a call that ran but whose output is refused, a
deadline that cancels a running call, and a webhook completion delivered twice at once.

The rule under test is the ledger's: every provider call that may cost money ends with exactly one entry,
settled at what it cost when the provider billed it, and a job completes (is charged) exactly once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from reliability_support import count_calls, fast_image

import genroute_mock.plugin
from conftest import FakePlugin, mock_section, section
from genroute.config import Settings
from genroute.errors import DeadlineExceeded, GenrouteError, NoRouteAvailable
from genroute.jobs import Job
from genroute.provider import Provider, RunContext
from genroute.router import Router
from genroute.types import Offer, OutputFile, ProviderOutput, RequestModel, TextToImage, Usage

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
JOB_PRICE = Decimal("0.02")


def test_a_call_whose_output_is_refused_is_still_charged(
    settings_factory: Callable[..., Settings], router_factory: Callable[..., Router]
) -> None:
    settings = settings_factory({"mock": mock_section()}, routing={"max_output_bytes": 1024})
    router = router_factory(settings, genroute_mock.plugin)
    log = count_calls(router)
    with pytest.raises(NoRouteAvailable, match=r"over routing\.max_output_bytes"):
        router.run(TextToImage(prompt="too big to keep", tier="fast", width=512, height=512))
    assert [outcome for *_rest, outcome in log.calls] == ["ok"]  # the provider did the work
    [entry] = list(router.ledger.entries())
    assert (entry.status, entry.actual) == ("settled", Decimal("0.003")), entry


def test_a_deadline_cancels_the_call_and_releases_its_reservation(
    settings_factory: Callable[..., Settings], router_factory: Callable[..., Router]
) -> None:
    settings = settings_factory({"mock": mock_section(latency_seconds=5)})
    router = router_factory(settings, genroute_mock.plugin)
    with pytest.raises(DeadlineExceeded):
        router.run(fast_image("slow", deadline_seconds=0.2))
    assert router.ledger.open_reservations() == []
    [entry] = list(router.ledger.entries())
    assert entry.status == "released" and entry.actual == 0


# -- completion by webhook -----------------------------------------------------------------------------------


class Hooked(Provider):
    """Completes by webhook; ``complete`` waits ``delay`` (downloading the outputs) before answering."""

    name = "hooked"
    supports_webhooks = True

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    async def run(self, request: RequestModel, offer: Offer, ctx: RunContext) -> ProviderOutput:
        raise AssertionError("submitted jobs are never run")

    async def submit(self, request: RequestModel, offer: Offer, ctx: RunContext, webhook_url: str) -> str:
        return "pred-1"

    async def complete(self, job: Job, payload: Any, ctx: RunContext) -> ProviderOutput:
        await asyncio.sleep(self.delay)
        files = [OutputFile(data=PNG, media_type="image/png")]
        return ProviderOutput(files=files, usage=Usage(outputs=1), job_id=job.remote_id)


def webhook_routers(
    settings_factory: Callable[..., Settings], router_factory: Callable[..., Router], delay: float = 0.0
) -> tuple[Router, Router]:
    """Two views of one ledger, store and job store, as two webhook receiver processes would have."""
    settings = settings_factory({"hooked": section("hooked", str(JOB_PRICE))})
    return (
        router_factory(settings, FakePlugin(Hooked(delay))),
        router_factory(settings, FakePlugin(Hooked(delay))),
    )


def settled_amounts(router: Router) -> list[Decimal]:
    return [e.actual for e in router.ledger.entries() if e.status == "settled"]


async def test_two_deliveries_racing_through_download_charge_once(
    settings_factory: Callable[..., Settings], router_factory: Callable[..., Router]
) -> None:
    first, second = webhook_routers(settings_factory, router_factory, delay=0.05)
    await first.asubmit(TextToImage(prompt="a harbour"), webhook_url="https://example.test/hook")
    outcomes = await asyncio.gather(
        first.acomplete("hooked", "pred-1", {}), second.acomplete("hooked", "pred-1", {}), return_exceptions=True
    )
    # One delivery completes the job; the other one may fail, but only with a genroute error.
    assert sum(isinstance(o, Job) and o.status == "succeeded" for o in outcomes) >= 1
    assert all(isinstance(o, Job | GenrouteError) for o in outcomes), outcomes
    assert settled_amounts(first) == [JOB_PRICE]
    assert first.ledger.open_reservations() == []


async def test_a_duplicate_delivery_while_the_first_is_storing_charges_once(
    settings_factory: Callable[..., Settings], router_factory: Callable[..., Router]
) -> None:
    first, second = webhook_routers(settings_factory, router_factory)
    await first.asubmit(TextToImage(prompt="a harbour"), webhook_url="https://example.test/hook")
    assert first.store is not None
    keep = first.store.put
    seen: list[Job | BaseException] = []

    def deliver_again() -> None:
        try:
            seen.append(second.complete("hooked", "pred-1", {}))
        except BaseException as exc:
            seen.append(exc)

    def put_while_a_duplicate_arrives(*args: Any, **kwargs: Any) -> Any:
        # The first delivery has settled and is writing the result; the second arrives in another worker.
        worker = threading.Thread(target=deliver_again)
        worker.start()
        worker.join(30)
        return keep(*args, **kwargs)

    first.store.put = put_while_a_duplicate_arrives  # type: ignore[method-assign]
    done = await first.acomplete("hooked", "pred-1", {})
    assert done.status == "succeeded"
    assert all(isinstance(o, Job | GenrouteError) for o in seen), seen
    assert settled_amounts(first) == [JOB_PRICE], "one prediction, charged more than once"
