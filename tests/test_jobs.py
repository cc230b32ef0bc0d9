"""Completion by webhook: a job is reserved and recorded at submit, settled and stored at completion."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal as D
from typing import Any

import pytest

from conftest import FakePlugin, section
from genroute.errors import (
    InvalidRequest,
    NoRouteAvailable,
    OverBudget,
    ProviderError,
    ProviderUnavailable,
    StoreError,
)
from genroute.jobs import Job, JobStore
from genroute.ledger import Ledger
from genroute.provider import Provider, RemoteJob, RunContext
from genroute.router import Router
from genroute.types import Offer, OutputFile, ProviderOutput, RequestModel, TextToImage, Usage

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


class Hooked(Provider):
    """Answers by webhook: submit returns an id; complete turns the posted payload into files."""

    name = "hooked"
    supports_webhooks = True

    def __init__(self) -> None:
        self.submitted: list[tuple[str, str]] = []

    async def run(self, request: RequestModel, offer: Offer, ctx: RunContext) -> ProviderOutput:
        raise AssertionError("run() must not be called for a submitted job")

    async def submit(self, request: RequestModel, offer: Offer, ctx: RunContext, webhook_url: str) -> str:
        remote = f"pred-{len(self.submitted) + 1}"
        self.submitted.append((remote, webhook_url))
        return remote

    async def complete(self, job: Job, payload: Any, ctx: RunContext) -> ProviderOutput:
        if payload["status"] == "failed":
            raise ProviderError(payload["error"], provider=self.name, incurred=D(payload.get("billed", "0")))
        if payload["status"] == "download-503":  # the outputs' host failed for a moment
            raise ProviderUnavailable("download of the outputs failed: HTTP 503", provider=self.name)
        if payload["status"] == "bug":
            raise KeyError("output")
        files = [OutputFile(data=PNG + bytes([i]), media_type="image/png") for i in range(payload["outputs"])]
        return ProviderOutput(files=files, usage=Usage(outputs=len(files)), job_id=job.remote_id)


class Plain(Provider):
    name = "plain"

    async def run(self, request: RequestModel, offer: Offer, ctx: RunContext) -> ProviderOutput:
        return ProviderOutput(files=[OutputFile(data=PNG, media_type="image/png")])


@pytest.fixture
def setup(settings_factory, router_factory):  # type: ignore[no-untyped-def]
    settings = settings_factory({"hooked": section("hooked", "0.02")})
    provider = Hooked()

    def another_router() -> Router:  # a second process's view: same directories, fresh objects
        return router_factory(settings, FakePlugin(Hooked()))

    return router_factory(settings, FakePlugin(provider)), provider, another_router


def _request(n: int = 2) -> TextToImage:
    return TextToImage(prompt="a harbour", num_outputs=n)


async def test_submit_reserves_and_records_a_pending_job(setup) -> None:  # type: ignore[no-untyped-def]
    router, provider, _ = setup
    job = await router.asubmit(_request(), webhook_url="https://example.test/hook")
    assert job.status == "pending" and job.remote_id == "pred-1"
    assert provider.submitted == [("pred-1", "https://example.test/hook")]
    [reservation] = router.ledger.open_reservations()
    assert reservation.id == job.reservation_id and reservation.amount == D("0.04")
    assert [j.id for j in router.jobs.list("pending")] == [job.id]


async def test_completion_in_another_process_settles_stores_and_ignores_redelivery(setup) -> None:  # type: ignore[no-untyped-def]
    router, _, another_router = setup
    job = await router.asubmit(_request(), webhook_url="https://example.test/hook")

    receiver = another_router()
    done = await receiver.acomplete("hooked", "pred-1", {"status": "succeeded", "outputs": 2})
    assert done.status == "succeeded" and done.cost == D("0.04")
    assert done.result is not None and [a.read_bytes()[-1] for a in done.result.artifacts] == [0, 1]
    assert receiver.ledger.open_reservations() == []

    again = await receiver.acomplete("hooked", "pred-1", {"status": "succeeded", "outputs": 2})
    assert again == done  # a replayed webhook changes nothing
    settled = [e for e in receiver.ledger.entries() if e.status == "settled"]
    assert len(settled) == 1 and settled[0].actual == D("0.04") and settled[0].job_id == "pred-1"

    hit = await router.arun(_request())  # the stored bytes now serve the same request
    assert hit.cached and hit.actual_cost == 0
    assert router.jobs.get(job.id) == done


async def test_fewer_outputs_than_asked_settle_what_was_returned(setup) -> None:  # type: ignore[no-untyped-def]
    router, _, _ = setup
    await router.asubmit(_request(3), webhook_url="https://example.test/hook")
    done = await router.acomplete("hooked", "pred-1", {"status": "succeeded", "outputs": 1})
    assert done.cost == D("0.02")


async def test_failed_completion_releases_or_settles_what_was_billed(setup) -> None:  # type: ignore[no-untyped-def]
    router, _, _ = setup
    await router.asubmit(_request(), webhook_url="https://example.test/hook")
    await router.asubmit(TextToImage(prompt="another"), webhook_url="https://example.test/hook")
    failed = await router.acomplete("hooked", "pred-1", {"status": "failed", "error": "NSFW"})
    billed = await router.acomplete("hooked", "pred-2", {"status": "failed", "error": "OOM", "billed": "0.005"})
    assert failed.status == billed.status == "failed" and "NSFW" in (failed.error or "")
    statuses = sorted((e.status, e.actual) for e in router.ledger.entries())
    assert statuses == [("released", D(0)), ("settled", D("0.005"))]


async def test_a_store_hit_is_a_finished_job_and_costs_nothing(setup) -> None:  # type: ignore[no-untyped-def]
    router, provider, _ = setup
    await router.asubmit(_request(), webhook_url="https://example.test/hook")
    await router.acomplete("hooked", "pred-1", {"status": "succeeded", "outputs": 2})
    job = await router.asubmit(_request(), webhook_url="https://example.test/hook")
    assert job.status == "succeeded" and job.cost == 0 and job.result is not None and job.result.cached
    assert len(provider.submitted) == 1


async def test_unknown_completion_is_refused(setup) -> None:  # type: ignore[no-untyped-def]
    router, _, _ = setup
    with pytest.raises(Exception, match="no job for hooked id nope"):
        await router.acomplete("hooked", "nope", {"status": "succeeded", "outputs": 1})


async def test_providers_without_webhooks_are_passed_over(settings_factory, router_factory) -> None:  # type: ignore[no-untyped-def]
    router = router_factory(settings_factory({"plain": section("plain", "0.01")}), FakePlugin(Plain()))
    with pytest.raises(NoRouteAvailable, match="does not complete by webhook"):
        await router.asubmit(_request(1), webhook_url="https://example.test/hook")
    assert list(router.ledger.entries()) == []


DAILY = [{"scope": "global", "period": "daily", "usd": "0.015"}]  # fits fast ($0.01 an output), not balanced


async def test_a_job_over_budget_is_told_of_a_cheaper_tier_that_fits(settings_factory, router_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory({"hooked": section("hooked")}, limits=DAILY)
    router = router_factory(settings, FakePlugin(Hooked()))
    with pytest.raises(OverBudget) as info:
        await router.asubmit(TextToImage(prompt="a harbour", tier="quality"), webhook_url="https://example.test/hook")
    assert info.value.cheaper_tiers == ("fast",)  # balanced ($0.02) is over the $0.015 left too
    assert info.value.hint == (
        "raise the limit in plugins.toml, wait for the next period, "
        "or ask for the cheaper tier fast, where an offer fits the budget"
    )
    job = await router.asubmit(TextToImage(prompt="a harbour", tier="fast"), webhook_url="https://example.test/hook")
    assert job.status == "pending" and job.tier == "fast"  # and it does: the hint was true


async def test_a_job_is_not_told_of_a_cheaper_tier_no_webhook_provider_offers(settings_factory, router_factory) -> None:  # type: ignore[no-untyped-def]
    # the cheaper tier fast is offered only by a provider that does not complete by webhook
    providers = {"hooked": section("hooked", {"quality": "0.04"}), "plain": section("plain", {"fast": "0.01"})}
    router = router_factory(settings_factory(providers, limits=DAILY), FakePlugin(Hooked(), Plain()))
    with pytest.raises(OverBudget) as info:
        await router.asubmit(TextToImage(prompt="a harbour", tier="quality"), webhook_url="https://example.test/hook")
    assert info.value.cheaper_tiers == ()
    assert info.value.hint == "raise the limit in plugins.toml, or wait for the next period"
    assert router.ledger.open_reservations() == []


async def test_a_job_asked_to_bypass_the_store_completes_without_storing(setup) -> None:  # type: ignore[no-untyped-def]
    router, _, another_router = setup
    request = _request(1).model_copy(update={"cache": "bypass"})
    job = await router.asubmit(request, webhook_url="https://example.test/hook")
    assert job.keep is False

    done = await another_router().acomplete("hooked", job.remote_id or "", {"status": "succeeded", "outputs": 1})

    assert done.status == "succeeded" and done.result is not None
    assert done.result.artifacts[0].read_bytes() == PNG + bytes([0])  # the caller still gets real files
    assert router.store is not None and router.store.get(job.request_key) is None  # but nothing was kept
    assert [e.status for e in router.ledger.entries()] == ["settled"]  # and the money is settled as usual


@pytest.mark.parametrize("trouble", ["download-503", "bug"])
async def test_a_completion_that_fails_for_now_keeps_the_job_pending_for_the_redelivery(setup, trouble) -> None:  # type: ignore[no-untyped-def]
    """A retryable failure (or a provider bug) decides nothing: the job stays pending, its reservation open,
    and the error reaches the webhook receiver, whose non-2xx answer makes the provider deliver again."""
    router, _, _ = setup
    job = await router.asubmit(_request(), webhook_url="https://example.test/hook")
    with pytest.raises(ProviderError) as info:
        await router.acomplete("hooked", "pred-1", {"status": trouble})
    assert info.value.retryable
    assert router.jobs.get(job.id).status == "pending"  # type: ignore[union-attr]
    assert [r.id for r in router.ledger.open_reservations()] == [job.reservation_id]
    assert list(router.ledger.entries()) == []

    done = await router.acomplete("hooked", "pred-1", {"status": "succeeded", "outputs": 2})  # the redelivery
    assert done.status == "succeeded" and done.cost == D("0.04") and done.result is not None
    assert [(e.status, e.actual) for e in router.ledger.entries()] == [("settled", D("0.04"))]


def test_a_file_at_the_jobs_path_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mine = tmp_path / "notes.txt"
    mine.write_text("keep me")
    with pytest.raises(StoreError) as info:
        JobStore(mine)
    assert f"job store at {mine}: a file is there, not a directory" in str(info.value)
    assert "jobs.path" in info.value.hint


class Gated(Hooked):
    """A provider whose submit takes a while (until ``opened``): two identical submissions overlap in it."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = asyncio.Event()
        self.entered = 0
        self.fail_next = False

    async def submit(self, request: RequestModel, offer: Offer, ctx: RunContext, webhook_url: str) -> str:
        self.entered += 1
        await self.opened.wait()
        if self.fail_next:
            self.fail_next = False
            raise ProviderUnavailable("HTTP 503 while creating", provider=self.name, retryable=False)
        return await super().submit(request, offer, ctx, webhook_url)


@pytest.fixture
def shared(settings_factory, router_factory):  # type: ignore[no-untyped-def]
    """Two routers over the same directories (two processes' views) calling one provider, which counts."""
    settings = settings_factory({"hooked": section("hooked", "0.02")})
    provider = Gated()
    provider.opened.set()
    return router_factory(settings, FakePlugin(provider)), router_factory(settings, FakePlugin(provider)), provider


async def test_the_same_request_submitted_again_while_pending_gets_the_pending_job(shared) -> None:  # type: ignore[no-untyped-def]
    first_router, second_router, provider = shared
    job = await first_router.asubmit(_request(), webhook_url="https://example.test/hook")
    again = await first_router.asubmit(_request(), webhook_url="https://example.test/hook")
    elsewhere = await second_router.asubmit(_request(), webhook_url="https://example.test/other-hook")

    assert again == job and elsewhere == job and job.status == "pending"
    assert provider.submitted == [("pred-1", "https://example.test/hook")]  # one remote job, so paid once
    [reservation] = second_router.ledger.open_reservations()
    assert reservation.id == job.reservation_id and reservation.amount == D("0.04")
    assert [j.id for j in second_router.jobs.list()] == [job.id]

    done = await second_router.acomplete("hooked", "pred-1", {"status": "succeeded", "outputs": 2})
    assert done.status == "succeeded"
    after = await first_router.asubmit(_request(), webhook_url="https://example.test/hook")  # finished: the store
    assert after.status == "succeeded" and after.result is not None and after.result.cached and after.cost == 0
    assert len(provider.submitted) == 1
    assert [(e.status, e.actual) for e in first_router.ledger.entries() if e.status != "saving"] == [
        ("settled", D("0.04"))
    ]


async def test_identical_submissions_at_the_same_moment_start_one_remote_job(shared) -> None:  # type: ignore[no-untyped-def]
    first_router, second_router, provider = shared
    provider.opened.clear()
    submissions = [
        asyncio.create_task(router.asubmit(_request(), webhook_url="https://example.test/hook"))
        for router in (first_router, second_router, first_router)
    ]
    while provider.entered < 1:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # the others had every chance to start their own
    provider.opened.set()
    jobs = await asyncio.gather(*submissions)

    assert provider.entered == 1 and len(provider.submitted) == 1
    assert len({job.id for job in jobs}) == 1 and jobs[0].status == "pending"
    assert len(first_router.ledger.open_reservations()) == 1


async def test_a_submission_that_failed_leaves_nothing_in_the_way_of_the_next(shared) -> None:  # type: ignore[no-untyped-def]
    router, _, provider = shared
    provider.fail_next = True
    with pytest.raises(NoRouteAvailable, match="HTTP 503 while creating"):
        await router.asubmit(_request(), webhook_url="https://example.test/hook")
    job = await router.asubmit(_request(), webhook_url="https://example.test/hook")
    assert job.status == "pending" and provider.submitted == [("pred-1", "https://example.test/hook")]


async def test_a_failed_job_or_a_refresh_starts_new_work(shared) -> None:  # type: ignore[no-untyped-def]
    router, _, provider = shared
    first = await router.asubmit(_request(), webhook_url="https://example.test/hook")
    refreshed = await router.asubmit(_request().model_copy(update={"cache": "refresh"}), webhook_url="https://x.test/h")
    assert refreshed.id != first.id and refreshed.remote_id == "pred-2"  # asked for new work: it gets it
    assert await router.asubmit(_request(), webhook_url="https://example.test/hook") == first

    await router.acomplete("hooked", "pred-1", {"status": "failed", "error": "NSFW"})
    retried = await router.asubmit(_request(), webhook_url="https://example.test/hook")
    assert retried.id not in (first.id, refreshed.id) and retried.remote_id == "pred-3"
    assert len(provider.submitted) == 3


# -- genroute jobs sync: asking the provider when the webhook never came ---------------------------------------


class Askable(Hooked):
    """Hooked, whose service can also be asked for a job's state: ``remote[remote_id]`` is what it answers."""

    def __init__(self) -> None:
        super().__init__()
        self.remote: dict[str, dict[str, Any]] = {}
        self.asked: list[str] = []
        self.fetch_error: BaseException | None = None
        self.completing = asyncio.Event()
        self.completing.set()

    async def fetch_job(self, job: Job, ctx: RunContext) -> RemoteJob | None:
        self.asked.append(job.remote_id or "")
        if self.fetch_error is not None:
            raise self.fetch_error
        state = self.remote.get(job.remote_id or "", {"status": "processing"})
        finished = state["status"] not in ("starting", "processing")
        return RemoteJob(status=state["status"], finished=finished, payload=state)

    async def complete(self, job: Job, payload: Any, ctx: RunContext) -> ProviderOutput:
        await self.completing.wait()
        return await super().complete(job, payload, ctx)


@pytest.fixture
def askable(settings_factory, router_factory):  # type: ignore[no-untyped-def]
    settings = settings_factory({"hooked": section("hooked", "0.02")})
    provider = Askable()
    return router_factory(settings, FakePlugin(provider)), provider, settings


async def test_sync_completes_finished_jobs_once_and_leaves_running_ones_pending(askable) -> None:  # type: ignore[no-untyped-def]
    router, provider, _ = askable
    first = await router.asubmit(_request(), webhook_url="https://example.test/hook")
    second = await router.asubmit(TextToImage(prompt="still going"), webhook_url="https://example.test/hook")
    provider.remote["pred-1"] = {"status": "succeeded", "outputs": 2}

    synced = await router.areconcile_jobs()

    assert [(s.job.id, s.action, s.remote_status) for s in synced] == [
        (first.id, "completed", "succeeded"),
        (second.id, "running", "processing"),
    ]
    assert all(s.ok for s in synced)
    done = synced[0].job
    assert done.status == "succeeded" and done.cost == D("0.04") and done.result is not None
    assert synced[0].message == "succeeded on hooked pred-1: completed as succeeded, 2 files stored, $0.04 settled"
    assert synced[1].message == "processing on hooked pred-2: still running, left pending"
    assert router.jobs.get(first.id) == done and router.jobs.get(second.id).status == "pending"  # type: ignore[union-attr]
    assert [r.id for r in router.ledger.open_reservations()] == [second.reservation_id]

    # The webhook arriving after all is a replay; a second sync asks only about the job still pending.
    assert await router.acomplete("hooked", "pred-1", {"status": "succeeded", "outputs": 2}) == done
    provider.asked.clear()
    again = await router.areconcile_jobs()
    assert [(s.job.id, s.action) for s in again] == [(second.id, "running")] and provider.asked == ["pred-2"]
    assert [(e.status, e.actual) for e in router.ledger.entries()] == [("settled", D("0.04"))]
    assert (await router.arun(_request())).cached  # the synced result serves the same request from the store


async def test_sync_records_a_failed_remote_job_with_what_it_billed(askable) -> None:  # type: ignore[no-untyped-def]
    router, provider, _ = askable
    billed = await router.asubmit(_request(), webhook_url="https://example.test/hook")
    free = await router.asubmit(TextToImage(prompt="refused"), webhook_url="https://example.test/hook")
    provider.remote["pred-1"] = {"status": "failed", "error": "out of memory", "billed": "0.005"}
    provider.remote["pred-2"] = {"status": "failed", "error": "NSFW"}

    first, second = await router.areconcile_jobs()

    assert (first.job.id, first.action, first.job.status, first.job.cost) == (
        billed.id,
        "completed",
        "failed",
        D("0.005"),
    )
    assert first.message.endswith("recorded as failed, $0.005 settled: out of memory")
    assert (second.job.id, second.job.status) == (free.id, "failed")
    assert "recorded as failed, reservation released" in second.message
    assert sorted((e.status, e.actual) for e in router.ledger.entries()) == [
        ("released", D(0)),
        ("settled", D("0.005")),
    ]


async def test_a_provider_that_cannot_be_asked_is_reported_and_its_job_left_pending(setup) -> None:  # type: ignore[no-untyped-def]
    router, _, _ = setup  # Hooked: the default fetch_job, which cannot ask
    job = await router.asubmit(_request(), webhook_url="https://example.test/hook")
    [synced] = await router.areconcile_jobs()
    assert synced.action == "unsupported" and not synced.ok and synced.remote_status is None
    assert synced.message == "hooked cannot be asked for the state of its jobs: left pending for its webhook"
    assert router.jobs.get(job.id).status == "pending"  # type: ignore[union-attr]
    assert [r.id for r in router.ledger.open_reservations()] == [job.reservation_id]


@pytest.mark.parametrize(
    ("trouble", "said"),
    [
        (ProviderUnavailable("HTTP 503", provider="hooked"), "could not ask hooked: HTTP 503; left pending"),
        (KeyError("status"), "could not ask hooked: unexpected KeyError: 'status'; left pending"),
    ],
)
async def test_a_provider_that_could_not_answer_leaves_the_job_pending(askable, trouble, said) -> None:  # type: ignore[no-untyped-def]
    router, provider, _ = askable
    job = await router.asubmit(_request(), webhook_url="https://example.test/hook")
    provider.fetch_error = trouble
    [synced] = await router.areconcile_jobs()
    assert (synced.action, synced.message) == ("error", said) and not synced.ok
    assert router.jobs.get(job.id).status == "pending"  # type: ignore[union-attr]
    assert list(router.ledger.entries()) == []


async def test_a_finished_job_whose_outputs_cannot_be_read_now_stays_pending(askable) -> None:  # type: ignore[no-untyped-def]
    router, provider, _ = askable
    job = await router.asubmit(_request(), webhook_url="https://example.test/hook")
    provider.remote["pred-1"] = {"status": "download-503"}
    [synced] = await router.areconcile_jobs()
    assert synced.action == "error" and synced.remote_status == "download-503"
    assert "but completing failed: download of the outputs failed: HTTP 503; left pending" in synced.message
    assert router.jobs.get(job.id).status == "pending"  # type: ignore[union-attr]
    provider.remote["pred-1"] = {"status": "succeeded", "outputs": 1}
    [synced] = await router.areconcile_jobs()  # the claim was given back: the next sync completes it
    assert synced.action == "completed" and synced.job.cost == D("0.02")


async def test_a_sync_and_a_webhook_at_the_same_moment_settle_once(askable, router_factory) -> None:  # type: ignore[no-untyped-def]
    router, provider, settings = askable
    receiver = router_factory(settings, FakePlugin(provider))  # another process's view: the webhook receiver
    job = await router.asubmit(_request(), webhook_url="https://example.test/hook")
    provider.remote["pred-1"] = {"status": "succeeded", "outputs": 2}
    provider.completing.clear()  # the delivery's completion is under way (downloading) while the sync asks
    delivery = asyncio.create_task(receiver.acomplete("hooked", "pred-1", {"status": "succeeded", "outputs": 2}))
    await asyncio.sleep(0.05)

    [synced] = await router.areconcile_jobs()
    assert synced.action == "skipped" and synced.ok
    assert synced.message == "succeeded on hooked pred-1: being completed by a webhook delivery now: left to it"

    provider.completing.set()
    done = await delivery
    assert done.status == "succeeded"
    [after] = await router.areconcile_jobs(job.id)
    assert (after.action, after.message) == ("skipped", "already succeeded: nothing to do")
    assert [(e.status, e.actual) for e in router.ledger.entries()] == [("settled", D("0.04"))]


async def test_sync_settles_a_job_whose_reservation_was_reclaimed_meanwhile(askable) -> None:  # type: ignore[no-untyped-def]
    router, provider, settings = askable
    job = await router.asubmit(_request(), webhook_url="https://example.test/hook")
    running = await router.asubmit(TextToImage(prompt="long"), webhook_url="https://example.test/hook")
    # A day later, another process's ledger reclaims the expired reservations, at $0.
    with Ledger(settings.ledger.path, clock=lambda: time.time() + 86_400) as later:
        assert later.reclaim_expired() == 2
    assert router.ledger.open_reservations() == []

    provider.remote["pred-1"] = {"status": "succeeded", "outputs": 2}
    done, still = await router.areconcile_jobs()

    assert done.action == "completed" and done.reservation_reclaimed and done.job.cost == D("0.04")
    assert done.message.endswith("2 files stored, $0.04 settled (after its reservation had been reclaimed)")
    assert still.action == "running" and still.reservation_reclaimed and still.job.id == running.id
    assert "its reservation was reclaimed at $0 meanwhile: the spend is recorded when it is completed" in still.message
    entries = [(e.id, e.status, e.actual) for e in router.ledger.entries()]
    assert (job.reservation_id, "settled", D("0.04")) in entries  # the money spent is on record, once
    [settled] = [e for e in router.ledger.entries() if e.status == "settled"]
    assert settled.id == job.reservation_id and settled.note.startswith("settled after reclaim")
    assert sum(e.actual for e in router.ledger.entries()) == D("0.04")


async def test_sync_of_one_job_by_id_or_prefix(askable) -> None:  # type: ignore[no-untyped-def]
    router, provider, _ = askable
    first = await router.asubmit(_request(), webhook_url="https://example.test/hook")
    await router.asubmit(TextToImage(prompt="other"), webhook_url="https://example.test/hook")
    provider.remote["pred-1"] = provider.remote["pred-2"] = {"status": "succeeded", "outputs": 1}
    [synced] = await router.areconcile_jobs(first.id[:12])
    assert synced.job.id == first.id and synced.action == "completed" and provider.asked == ["pred-1"]
    with pytest.raises(InvalidRequest, match="no job 'nope'"):
        await router.areconcile_jobs("nope")
    with pytest.raises(InvalidRequest, match="the job id is empty"):
        await router.areconcile_jobs(" ")
    for twin in ("ab12" + first.id[4:], "ab34" + first.id[4:]):
        router.jobs.add(first.model_copy(update={"id": twin, "remote_id": twin}))
    with pytest.raises(InvalidRequest, match="2 jobs have ids starting with 'ab'") as info:
        await router.areconcile_jobs("ab")
    assert info.value.hint == "give more characters of the job id"


def test_sync_facade(askable) -> None:  # type: ignore[no-untyped-def]
    router, provider, _ = askable
    job = router.submit(_request(), webhook_url="https://example.test/hook")
    provider.remote["pred-1"] = {"status": "succeeded", "outputs": 2}
    [synced] = router.reconcile_jobs()
    assert synced.job.id == job.id and synced.job.status == "succeeded"
    assert router.reconcile_jobs() == []
