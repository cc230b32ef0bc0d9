"""Completion by webhook: a request handed to a provider that answers later, and its completion.

``submit`` reserves the estimate and records a :class:`~genroute.jobs.Job`; ``complete``, called by the
webhook receiver in whichever process gets the delivery, settles the reservation and stores the result.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from . import billing
from .errors import (
    BudgetExceeded,
    DeadlineExceeded,
    GenrouteError,
    InvalidRequest,
    LedgerError,
    ProviderError,
    ProviderRejectedInput,
    Rejection,
    RemoteCanceled,
    StoreError,
)
from .jobs import Job, JobSync, now_utc
from .ledger import Reservation
from .money import fmt_usd, quantize
from .outcomes import call_cost, log_provider_bug, make_result, no_route, provider_failure, scratch_artifacts
from .provider import Provider, RemoteJob, RunContext
from .secrets import redact
from .types import Offer, ProviderOutput, RequestModel, Usage

if TYPE_CHECKING:
    from .router import RequestLike, Router

# The router's logger: a job is one request's way through the router.
log = logging.getLogger("genroute.router")

_SUBMITTING_POLL_SECONDS = 0.05  # how often a submission waiting for an identical one looks for its job
_FETCH_SECONDS = 60.0  # how long a sync waits for a provider's answer about one job


async def submit(router: Router, request: RequestLike, *, webhook_url: str) -> Job:
    """:meth:`Router.asubmit <genroute.router.Router.asubmit>`: reserve, hand the request over, record the job.

    The same request (same request key) submitted again while its job is pending gets that job back: no
    second remote job, no second reservation, in any process sharing ``jobs.path``. A submission arriving
    while the first is still being handed to its provider waits for it to be recorded. ``cache = "refresh"``
    or ``"bypass"`` asks for new work, so such a request never joins a pending job.
    """
    started = time.perf_counter()
    model, key = await router._prepare(request)
    deadline_seconds = model.deadline_seconds or router.settings.routing.deadline_seconds
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_seconds
    job_id = uuid.uuid4().hex
    while True:
        # Marked before the store is looked at: a job finishing meanwhile stores its result before its mark goes.
        holder = router.jobs.start_submission(key, job_id, expire=deadline_seconds + 60)
        if holder is None or model.cache != "use":
            break
        earlier = router.jobs.get(holder)
        if earlier is not None and earlier.status == "pending":
            log.info("job %s: the same request is already pending as job %s; not submitted again", job_id, holder)
            return earlier
        if earlier is not None:  # finished, yet still marked: stale, the store decides below
            router.jobs.drop_submission(key, holder)
            continue
        if loop.time() >= deadline:  # being handed to its provider (here or in another process) for too long
            raise DeadlineExceeded(
                f"the same request is being submitted by another caller (job {holder}), and it was not recorded "
                f"within {deadline_seconds:g}s",
                hint="look for it with `genroute jobs --status pending` and submit again, or submit with "
                'cache = "refresh" to start new work regardless',
            )
        await asyncio.sleep(_SUBMITTING_POLL_SECONDS)
    marked = holder is None
    try:
        return await _submit(router, model, key, job_id, webhook_url, started, deadline, deadline_seconds)
    except BaseException:
        if marked:  # nothing recorded: let the next identical submission start its own
            _unmark(router, key, job_id)
        raise


async def _submit(
    router: Router,
    model: RequestModel,
    key: str,
    job_id: str,
    webhook_url: str,
    started: float,
    deadline: float,
    deadline_seconds: float,
) -> Job:
    hit = router._lookup(model, key, started)
    if hit is not None:
        job = Job(
            id=job_id,
            request_key=key,
            task=model.task_name,
            tier=hit.tier,
            provider=hit.provider,
            model=hit.model,
            offer=Offer(provider=hit.provider, model=hit.model, task=hit.task, tier=hit.tier, estimate=Decimal(0)),
            reservation_id=None,
            status="succeeded",
            created_at=now_utc(),
            finished_at=now_utc(),
            result=hit,
            cost=Decimal(0),
        )
        router.jobs.add(job)  # finished: its submission mark goes with it
        return job
    other_tiers: list[Offer] = []
    candidates, rejections = router._candidates(model, other_tiers=other_tiers)
    for offer in candidates:
        provider = router.providers[offer.provider]
        if not provider.supports_webhooks:
            rejections.append(Rejection(offer.provider, offer.model, offer.tier, "does not complete by webhook"))
            continue
        try:
            reservation = router._reserve(offer, key, deadline_seconds, job=True)
        except BudgetExceeded as exc:
            rejections.append(Rejection(offer.provider, offer.model, offer.tier, f"over budget: {exc.message}"))
            continue
        ctx = router._context(offer, key, 1, deadline)
        try:
            remote_id = await _call_submit(provider, model, offer, ctx, webhook_url)
        except ProviderError as exc:
            router._close_failed(reservation, exc)
            refused = isinstance(exc, ProviderRejectedInput)
            reason = f"failed: {redact(exc.message)}"
            rejections.append(Rejection(offer.provider, offer.model, offer.tier, reason, refused_input=refused))
            continue
        except BaseException:
            router.ledger.release(reservation, note="submission cancelled")
            raise
        job = Job(
            id=job_id,
            request_key=key,
            task=model.task_name,
            tier=offer.tier,
            provider=offer.provider,
            model=offer.model,
            offer=offer,
            reservation_id=reservation.id,
            remote_id=remote_id,
            usage_hint=billing.usage_hint(offer.entry, model) if offer.entry else Usage(),
            keep=model.cache != "bypass",
            created_at=now_utc(),
        )
        router.jobs.add(job)  # pending: its submission mark now points identical submissions at it
        return job
    # as Router._serve does, but a cheaper tier is worth suggesting only where a provider completes by webhook
    by_webhook = [o for o in other_tiers if router.providers[o.provider].supports_webhooks]  # all registered
    raise no_route(
        f"no provider could take this request by webhook (profile {router.settings.profile!r}):",
        rejections,
        pinned=model.provider,
        cheaper_tiers=router._lower_tiers(model, by_webhook),
    )


def _unmark(router: Router, key: str, job_id: str) -> None:
    try:
        router.jobs.drop_submission(key, job_id)
    except StoreError as exc:  # the mark lapses by itself after the deadline; the original error matters more
        log.warning("job %s: could not remove its submission mark: %s", job_id, exc.message)


async def complete(router: Router, provider: str, remote_id: str, payload: Any) -> Job:
    """:meth:`Router.acomplete <genroute.router.Router.acomplete>`: settle and store a job once, from its webhook."""
    job = router.jobs.find(provider, remote_id)
    if job is None:
        raise InvalidRequest(f"no job for {provider} id {remote_id}", hint="was it submitted by this genroute?")
    if job.status != "pending":
        return job
    if provider not in router.providers:
        raise InvalidRequest(f"provider {provider!r} is not installed", hint="install its plugin")
    return (await _claim_and_complete(router, job, payload))[0]


async def _claim_and_complete(router: Router, job: Job, payload: Any) -> tuple[Job, bool]:
    """Complete pending ``job`` from ``payload`` unless another completion (a webhook delivery, a sync, in any
    process) has it: (the job as it is now, whether this call completed it)."""
    if not router.jobs.claim(job.id):  # a concurrent delivery of the same completion is handling it
        return router.jobs.get(job.id) or job, False
    try:
        current = router.jobs.get(job.id) or job
        if current.status != "pending":  # completed since it was read, and that claim has lapsed since
            return current, False
        return await _complete(router, current, payload), True
    except BaseException:
        router.jobs.unclaim(job.id)  # nothing recorded: let a redelivery try again
        raise


async def _complete(router: Router, job: Job, payload: Any) -> Job:
    reservation = router.ledger.reservation(job.reservation_id) if job.reservation_id else None
    ctx = router._context(job.offer, job.request_key, 1, asyncio.get_running_loop().time() + 600)
    remote_id = job.remote_id or ""
    try:
        output = await _call_complete(router.providers[job.provider], job, payload, ctx)
        merged = output.model_copy(update={"usage": _merge_usage(output.usage, job.usage_hint)})
        cost = quantize(call_cost(job.offer, None, merged))
        router._check_output(job.offer, output, billed=cost)
    except ProviderError as exc:
        if exc.retryable:
            # Say the outputs' download failed, or the prediction has not finished: nothing is decided yet.
            # The job stays pending and the error reaches the webhook receiver, whose non-2xx answer makes
            # the provider deliver again.
            raise
        # Rounded to the micro-dollar as the ledger settles it: the job's cost is what was settled.
        incurred = quantize(exc.incurred) if exc.incurred is not None else None
        _settle_job(router, job, reservation, incurred or Decimal(0), note=redact(exc.message)[:200])
        failed = job.model_copy(
            update={
                "status": "canceled" if isinstance(exc, RemoteCanceled) else "failed",
                "error": redact(exc.message),
                "finished_at": now_utc(),
                "cost": incurred,
            }
        )
        router.jobs.update(failed)
        return failed
    _settle_job(router, job, reservation, cost, job_id=output.job_id or remote_id)
    latency = (now_utc() - job.created_at).total_seconds()
    result = make_result(
        job.request_key, job.offer, output.model_copy(update={"job_id": output.job_id or remote_id}), cost, latency
    )
    if router.store is not None and job.keep:
        result = router.store.put(job.request_key, result, output.files)
    else:
        result = result.model_copy(update={"artifacts": scratch_artifacts(router.settings.store, output.files)})
    done = job.model_copy(update={"status": "succeeded", "result": result, "cost": cost, "finished_at": now_utc()})
    router.jobs.update(done)
    return done


def _settle_job(
    router: Router,
    job: Job,
    reservation: Reservation | None,
    cost: Decimal,
    *,
    job_id: str | None = None,
    note: str = "",
) -> None:
    if reservation is not None:
        if cost:
            router.ledger.settle(reservation, cost, job_id=job_id, note=note)
        else:
            router.ledger.release(reservation, note=note)
        return
    if job.reservation_id is None or not cost:
        return
    # The reservation was reclaimed while the job ran: the ledger kept its record and settles it once.
    stub = Reservation(
        id=job.reservation_id,
        amount=Decimal(0),
        scopes=(),
        provider=job.provider,
        model=job.model,
        task=job.task,
        request_key=job.request_key,
        created_at=0.0,
        expires_at=0.0,
        period_keys=(),
    )
    try:
        router.ledger.settle(stub, cost, job_id=job_id, note="completion after the reservation expired")
    except LedgerError:
        log.warning("job %s: its reservation %s was already settled; not charged again", job.id, stub.id)


async def reconcile(router: Router, job_id: str | None = None) -> list[JobSync]:
    """:meth:`Router.areconcile_jobs <genroute.router.Router.areconcile_jobs>`: ask each pending job's provider
    for its remote state and complete the finished ones as their webhook delivery would have."""
    jobs = [_job_by_id(router, job_id)] if job_id is not None else router.jobs.list("pending")
    return [await _reconcile_one(router, job) for job in jobs]


def _job_by_id(router: Router, job_id: str) -> Job:
    """The job with this id, or the one job whose id starts with it (``genroute jobs`` shows 12 characters)."""
    wanted = job_id.strip().lower()
    if not wanted:
        raise InvalidRequest("the job id is empty", hint="`genroute jobs` lists the jobs and their ids")
    job = router.jobs.get(wanted)
    if job is not None:
        return job
    matches = [j for j in router.jobs.list() if j.id.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise InvalidRequest(
            f"no job {job_id!r} in {router.jobs.path}", hint="`genroute jobs` lists the jobs and their ids"
        )
    raise InvalidRequest(
        f"{len(matches)} jobs have ids starting with {job_id!r}", hint="give more characters of the job id"
    )


async def _reconcile_one(router: Router, job: Job) -> JobSync:
    if job.status != "pending":
        return JobSync(job=job, action="skipped", message=f"already {job.status}: nothing to do")
    reclaimed = job.reservation_id is not None and router.ledger.reservation(job.reservation_id) is None
    provider = router.providers.get(job.provider)
    if provider is None:
        return JobSync(
            job=job,
            action="unsupported",
            reservation_reclaimed=reclaimed,
            message=f"provider {job.provider!r} is not installed: left pending (install its plugin)",
        )
    where = f"{job.provider} {job.remote_id}" if job.remote_id else job.provider
    ctx = router._context(job.offer, job.request_key, 1, asyncio.get_running_loop().time() + _FETCH_SECONDS)
    try:
        state = await _call_fetch(provider, job, ctx)
    except ProviderError as exc:
        return JobSync(
            job=job,
            action="error",
            reservation_reclaimed=reclaimed,
            message=f"could not ask {job.provider}: {_said(exc)}; left pending",
        )
    if state is None:
        return JobSync(
            job=job,
            action="unsupported",
            reservation_reclaimed=reclaimed,
            message=f"{job.provider} cannot be asked for the state of its jobs: left pending for its webhook",
        )
    if not state.finished:
        note = (
            "; its reservation was reclaimed at $0 meanwhile: the spend is recorded when it is completed"
            if reclaimed
            else ""
        )
        return JobSync(
            job=job,
            action="running",
            remote_status=state.status,
            reservation_reclaimed=reclaimed,
            message=f"{state.status} on {where}: still running, left pending{note}",
        )
    try:
        done, mine = await _claim_and_complete(router, job, state.payload)
    except ProviderError as exc:  # retryable: nothing was decided
        return JobSync(
            job=router.jobs.get(job.id) or job,
            action="error",
            remote_status=state.status,
            reservation_reclaimed=reclaimed,
            message=f"{state.status} on {where}, but completing failed: {_said(exc)}; left pending",
        )
    if not mine:
        what = (
            f"completed meanwhile by a webhook delivery ({done.status})"
            if done.status != "pending"
            else "being completed by a webhook delivery now: left to it"
        )
        return JobSync(
            job=done, action="skipped", remote_status=state.status, message=f"{state.status} on {where}: {what}"
        )
    return JobSync(
        job=done,
        action="completed",
        remote_status=state.status,
        reservation_reclaimed=reclaimed,
        message=f"{state.status} on {where}: {_what_was_done(done, reclaimed)}",
    )


def _said(exc: ProviderError) -> str:
    """The error's message without the provider's name in front (the sync line names it already)."""
    return redact(exc.message.removeprefix(f"{exc.provider}: ") if exc.provider else exc.message)


def _what_was_done(job: Job, reclaimed: bool) -> str:
    cost = job.cost or Decimal(0)
    after = " (after its reservation had been reclaimed)" if reclaimed else ""
    money = f"{fmt_usd(cost)} settled{after}" if cost or not reclaimed else "nothing billed"
    if job.status == "succeeded":
        count = len(job.result.artifacts) if job.result is not None else 0
        kept = "stored" if job.keep else "kept in scratch (cache bypass)"
        files = f"{count} file{'s' if count != 1 else ''} {kept}"
        return f"completed as succeeded, {files}, {money}"
    if not cost and not reclaimed:
        money = "reservation released"
    error = f": {job.error.removeprefix(f'{job.provider}: ')[:160]}" if job.error else ""
    return f"recorded as {job.status}, {money}{error}"


async def _call_fetch(provider: Provider, job: Job, ctx: RunContext) -> RemoteJob | None:
    try:
        async with asyncio.timeout(_FETCH_SECONDS):
            state = await provider.fetch_job(job, ctx)
    except ProviderError:
        raise
    except TimeoutError as exc:
        raise ProviderError(f"no answer within {_FETCH_SECONDS:g}s", provider=job.provider) from exc
    except Exception as exc:  # a provider bug: reported for this job, the others are still synced
        raise provider_failure(exc, job.provider, "fetch_job", bug_retryable=True) from exc
    if state is not None and not isinstance(state, RemoteJob):
        log_provider_bug(job.provider, "fetch_job", TypeError(f"returned {type(state).__name__}, not a RemoteJob"))
        raise ProviderError(
            f"fetch_job returned {type(state).__name__}, not a RemoteJob or None", provider=job.provider
        )
    return state


async def _call_complete(provider: Provider, job: Job, payload: Any, ctx: RunContext) -> ProviderOutput:
    try:
        return await provider.complete(job, payload, ctx)
    except ProviderError:
        raise
    except Exception as exc:  # a provider bug keeps the job pending, so a fixed version can still complete it
        raise provider_failure(exc, job.provider, "complete", bug_retryable=True) from exc


async def _call_submit(
    provider: Provider, request: RequestModel, offer: Offer, ctx: RunContext, webhook_url: str
) -> str:
    try:
        return await provider.submit(request, offer, ctx, webhook_url)
    except (GenrouteError, asyncio.CancelledError):
        raise
    except Exception as exc:
        log_provider_bug(offer.provider, "submit", exc)
        raise ProviderError(f"unexpected {type(exc).__name__}: {exc}", provider=offer.provider) from exc


def _merge_usage(measured: Usage, hint: Usage) -> Usage:
    """Measured quantities win; what the provider did not report comes from what was known at submit."""
    return Usage(
        **{
            name: getattr(measured, name) if getattr(measured, name) is not None else getattr(hint, name)
            for name in Usage.model_fields
        }
    )


__all__ = ["complete", "reconcile", "submit"]
