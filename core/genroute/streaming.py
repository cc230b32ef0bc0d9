"""Text streaming: a text-generation request's pieces as the provider makes them, then its Result.

The router prepares the request and picks the offers; this module reads a provider's stream under the
request's deadline, falls back only while the caller holds nothing yet, and settles the reservation.

A stream that does not run to its end (the caller stops reading or cancels, the deadline cuts it, it fails)
has its provider's generator closed first and its reservation closed after: a provider that stops its remote
work in its clean-up (the Replicate provider cancels the prediction on ``GeneratorExit``) reports what that
work cost in ``ctx.extra["incurred"]`` there, and the reservation is settled at that amount. Closing is bounded
by :data:`PROVIDER_CLOSE_SECONDS`, so a provider hanging in its clean-up cannot hold the caller: past the bound
its clean-up is cancelled and the reservation is settled with whatever it reported by then (else the estimate
once text was delivered). The reservation is closed exactly once, whatever the clean-up raises.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import traceback
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .errors import (
    BudgetExceeded,
    GenrouteError,
    InvalidRequest,
    OutputRejected,
    ProviderError,
    ProviderTimeout,
    Rejection,
)
from .inflight import Claim
from .ledger import Reservation
from .money import quantize
from .outcomes import (
    call_cost,
    deadline_exceeded,
    failed_offer,
    make_result,
    no_route,
    provider_failure,
    reported_incurred,
)
from .provider import Provider, RunContext
from .secrets import redact
from .types import Offer, ProviderOutput, Result, TextGeneration

if TYPE_CHECKING:
    from .router import RequestLike, Router

# The router's logger: a stream is one request's way through the router.
log = logging.getLogger("genroute.router")

T = TypeVar("T")

# How long closing a provider's stream that did not run to its end may take (its generator's clean-up, say a
# remote cancel) before genroute cancels that clean-up and settles the reservation with what was reported by then.
# One cancel request over a slow network fits: above the 10 s the bundled Replicate provider gives its own cancel,
# so a slow cancel still lands (and stops the billing) and its amount is read; short enough that a caller who
# stops reading gets control back soon even from a provider that hangs in its clean-up.
PROVIDER_CLOSE_SECONDS = 15.0


class LoopRunner(Protocol):
    """Runs a coroutine to its end on an event loop of its own: the router's loop for the calling thread."""

    def run(self, coro: Coroutine[Any, Any, T]) -> T: ...


class TextStream:
    """Async iterator of generated text; ``result`` is set once the stream is complete.

    To stop reading early, use it as ``async with router.astream(req) as stream:`` (or call
    :meth:`aclose`): the call's reservation is then settled or released at once.

    A stream runs its request once. Iterating it again once it is complete replays the same pieces (no provider
    is called, nothing is paid, ``result`` stays as it was); iterating it again after it failed or was left early
    (or while it is being read) raises :class:`GenrouteError`: start a new stream for a new answer.
    """

    def __init__(self, router: Router, request: RequestLike) -> None:
        self.request = request
        self.result: Result | None = None
        self._router = router
        self._iterator: AsyncGenerator[str, None] | None = None
        self._delivered: list[str] | None = None  # the pieces handed out, once the stream is complete

    @property
    def complete(self) -> bool:
        """Whether the stream was read to its end (``result`` is set); iterating it again replays its pieces."""
        return self._delivered is not None

    def __aiter__(self) -> AsyncIterator[str]:
        if self._delivered is not None:
            return _replay(self._delivered)
        if self._iterator is not None:
            raise consumed_once()
        iterator = stream_text(self._router, self)
        self._iterator = iterator
        return iterator

    async def aclose(self) -> None:
        """Stop the stream (if started and not finished) and close its ledger reservation."""
        if self._iterator is not None:
            await self._iterator.aclose()

    async def __aenter__(self) -> TextStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class SyncTextStream:
    """Iterator of generated text for sync code; ``result`` is set once the stream is complete."""

    def __init__(self, runner: Callable[[], LoopRunner], stream: TextStream) -> None:
        self._runner = runner  # the reading thread's loop (the router's, for that thread), asked when reading starts
        self._stream = stream

    @property
    def result(self) -> Result | None:
        return self._stream.result

    @property
    def complete(self) -> bool:
        """Whether the stream was read to its end (``result`` is set); iterating it again replays its pieces."""
        return self._stream.complete

    def __iter__(self) -> Iterator[str]:
        if self._stream._delivered is not None:  # complete: replay, no event loop needed
            yield from list(self._stream._delivered)
            return
        runner = self._runner()  # every piece on this one loop: the provider's stream belongs to it
        pieces = self._stream.__aiter__()

        async def next_piece() -> str:
            return await anext(pieces)

        finished = False
        try:
            while True:
                try:
                    yield runner.run(next_piece())
                except StopAsyncIteration:
                    finished = True
                    return
        finally:
            if not finished:
                # Left early (a break, an exception in the caller's loop): close the stream now, so its
                # reservation is settled or released at once rather than whenever the generator is collected.
                try:
                    runner.run(_aclose(pieces))
                except RuntimeError:
                    log.debug("stream closed inside a running event loop; its loop will finalize it")
                except GenrouteError:  # the router was closed, and its loop with this stream: nothing left open
                    log.debug("stream closed after its router: already closed with the router's event loop")


async def stream_text(router: Router, stream: TextStream) -> AsyncGenerator[str, None]:
    """The pieces of ``stream``'s request, between the router's request-started and -finished hooks."""
    started = time.perf_counter()
    request, key = await router._prepare(stream.request)
    if not isinstance(request, TextGeneration):
        raise InvalidRequest("only text-generation requests stream", field="task", hint="use run() instead")
    router._notify("genroute_request_started", request=request, key=key)
    error: BaseException | None = None
    deadline_seconds = request.deadline_seconds or router.settings.routing.deadline_seconds
    deadline = asyncio.get_running_loop().time() + deadline_seconds
    pieces = _stream_offers(router, stream, request, key, started, deadline, deadline_seconds)
    delivered: list[str] = []
    claim: Claim | None = None
    try:
        if router.store is not None and request.cache == "use":
            # An identical request (stream or not) already running: wait for it, then replay it from the store.
            late = f"stream did not start within {deadline_seconds:g}s"
            claim = await router._inflight.claim(key, deadline, late, stream=True)
        async for piece in pieces:
            delivered.append(piece)
            if claim is not None:
                claim.reader = asyncio.current_task()  # the task that moves this stream on, now
            yield piece
        stream._delivered = delivered  # complete: iterating the stream again replays these
    except BaseException as exc:
        error = exc
        raise
    finally:
        # Leaving `async for` early does not close the generator it reads: close it now, so the
        # reservation is settled or released before this stream is reported finished.
        try:
            await pieces.aclose()
        finally:  # even when that close is itself cancelled (the caller cancelled again while it ran)
            if claim is not None:
                router._inflight.release(key)  # its twins look in the store: a hit if this one completed, else one runs
            router._notify("genroute_request_finished", request=request, key=key, result=stream.result, error=error)


async def _stream_offers(
    router: Router,
    stream: TextStream,
    request: TextGeneration,
    key: str,
    started: float,
    deadline: float,
    deadline_seconds: float,
) -> AsyncGenerator[str, None]:
    hit = router._lookup(request, key, started)
    if hit is not None:
        stream.result = hit
        if hit.text:
            yield hit.text
        return
    other_tiers: list[Offer] = []
    candidates, rejections = router._candidates(request, other_tiers=other_tiers)
    for offer in candidates:
        try:
            reservation = router._reserve(offer, key, deadline_seconds)
        except BudgetExceeded as exc:
            rejections.append(Rejection(offer.provider, offer.model, offer.tier, f"over budget: {exc.message}"))
            continue
        ctx = router._context(offer, key, 1, deadline, reservation.orphaned_since)
        pieces: list[str] = []
        source: AsyncIterator[str] | None = None
        try:
            source = _open_source(router.providers[offer.provider], request, offer, ctx)
            while True:
                # The deadline covers waiting for the provider, never the consumer's time between pieces.
                try:
                    async with asyncio.timeout_at(deadline):
                        piece = await _next_piece(source, offer)
                except StopAsyncIteration:
                    break
                pieces.append(piece)
                yield piece
        except ProviderError as exc:
            # As run() closes a failed call: what the provider reported (zero included). When it reported nothing,
            # the pieces the caller holds were generated, so probably billed: the estimate, as for an abandoned stream.
            # The provider's stream is closed first (over already if it raised; not if it yielded something that is
            # not text), so what its clean-up reports is counted.
            closing, source = source, None
            try:
                await _close_provider_stream(closing, offer)
            finally:
                unreported = reservation.amount if pieces else Decimal(0)
                router._close_failed(reservation, exc, ctx=ctx, unreported=unreported)
            router._count_failure(offer, exc)
            if pieces:  # the caller already holds part of this answer: no silent switch of provider
                exc.hint = _cut_short_hint(len(pieces))
                raise
            # As run(): a refused token or an empty account keeps the provider's advice, logged as a warning.
            rejections.append(failed_offer(offer, exc, f"failed: {redact(exc.message)}"))
            continue
        except TimeoutError:
            # The deadline's cancel already ran the provider's clean-up inside its wait for the next piece.
            closing, source = source, None
            try:
                await _close_provider_stream(closing, offer)
            finally:
                _close_abandoned(router, reservation, pieces, "deadline passed while streaming", ctx)
            faster = router._lower_tiers(request, other_tiers)
            raise deadline_exceeded("stream", deadline_seconds, offer, rejections, faster) from None
        except BaseException:
            # The caller stopped reading (GeneratorExit) or was cancelled: close the provider's generator first, so
            # that what its clean-up reports (say, the tokens of a cancelled prediction) is what gets settled.
            closing, source = source, None
            try:
                await _close_provider_stream(closing, offer)
            finally:
                _close_abandoned(router, reservation, pieces, "stream abandoned by the caller", ctx)
            raise
        finally:
            if source is not None:  # it ran to its end: closing it is a formality
                await _close_provider_stream(source, offer)
        try:
            produced = ctx.extra.get("output")
            output = produced if isinstance(produced, ProviderOutput) else ProviderOutput(text="".join(pieces))
            if not output.text:
                output = output.model_copy(update={"text": "".join(pieces)})
            cost = quantize(call_cost(offer, request, output))
        except BaseException:  # never leave the reservation open, whatever goes wrong in pricing the call
            _close_abandoned(router, reservation, pieces, "stream could not be priced", ctx)
            raise
        try:
            # As run() checks a call's output: a stream that ended without any text is no answer.
            router._check_output(offer, output, billed=cost)
        except OutputRejected as exc:
            # Close the reservation as run() does (settled at what the call cost, released when that is
            # nothing) and keep nothing; fall back unless blank text already reached the caller.
            router._close_failed(reservation, exc)
            router._count_failure(offer, exc)
            if "".join(pieces):  # whitespace alone: the caller holds it, so no silent switch of provider
                exc.hint = "the answer was blank (whitespace only); ask again, or pin another provider"
                raise
            rejections.append(failed_offer(offer, exc, f"failed: {redact(exc.message)}"))
            continue
        router.ledger.settle(reservation, cost, job_id=output.job_id)
        router.cooldowns.success(offer.provider)
        result = make_result(key, offer, output, cost, time.perf_counter() - started)
        stream.result = router._keep(request, key, result, [])
        return
    raise no_route(  # worded as run's, so the CLI reads the same whichever path the request took
        f"no provider could stream this {request.task_name} request "
        f"(tier {request.tier}, profile {router.settings.profile!r}):",
        rejections,
        pinned=request.provider,
        cheaper_tiers=router._lower_tiers(request, other_tiers),
    )


def consumed_once() -> GenrouteError:
    """The error of a stream iterated again after it failed or was left early (or while it is being read)."""
    return GenrouteError(
        "this stream was already read, and did not complete (it failed, was left early, or is being read now): "
        "a stream can be consumed once",
        hint="start a new stream, router.stream(request) or router.astream(request), to ask again",
    )


async def _replay(pieces: list[str]) -> AsyncGenerator[str, None]:
    """A complete stream's pieces again, as they were handed out the first time: no provider call."""
    for piece in pieces:
        yield piece


def _cut_short_hint(delivered: int) -> str:
    """The hint of an error that ended a stream after ``delivered`` pieces had reached the caller."""
    return (
        f"the stream was cut short after {delivered} piece(s): genroute does not retry or switch provider once text "
        "has reached you, so ask again for a whole answer (the partial text was charged: what the provider billed, "
        "else the estimate)"
    )


def _close_abandoned(router: Router, reservation: Reservation, pieces: list[str], why: str, ctx: RunContext) -> None:
    # What the provider reported for the stopped work (say, the tokens generated before its cancel), as the
    # non-streamed path takes it (Router._try_offer): an amount, or Decimal(0) when nothing was produced. Popped,
    # so it is counted once whichever path closes the reservation.
    # A value that is no amount of money is logged, naming the offer's provider (reserved for), and counts as none.
    reported = reported_incurred(ctx, reservation.provider)
    ctx.extra.pop("incurred", None)
    if reported is not None:
        if reported:
            router.ledger.settle(reservation, quantize(reported), note=f"{why}; billed as the provider reported")
        else:
            router.ledger.release(reservation, note=f"{why}; the provider reported nothing billed")
    elif pieces:
        # Tokens already generated were probably billed: settle at the estimate rather than guess low.
        router.ledger.settle(reservation, reservation.amount, note=f"{why} after {len(pieces)} piece(s)")
    else:
        router.ledger.release(reservation, note=why)


def _open_source(provider: Provider, request: TextGeneration, offer: Offer, ctx: RunContext) -> AsyncIterator[str]:
    """The provider's stream as an async iterator; what it raises while starting is a provider failure."""
    try:
        produced = provider.stream(request, offer, ctx)
        if not hasattr(produced, "__aiter__"):
            if inspect.iscoroutine(produced):  # an `async def stream` without `yield`
                produced.close()
            raise TypeError(f"stream() returned {type(produced).__name__}, not an async iterator")
        return produced.__aiter__()
    except ProviderError:
        raise
    except Exception as exc:  # say, a plain `def stream` that raises, or an `async def` that never yields
        raise provider_failure(exc, offer.provider, "stream") from exc


async def _next_piece(source: AsyncIterator[str], offer: Offer) -> str:
    """The provider's next piece; one that is not text (say, bytes) fails the offer before the caller sees it."""
    try:
        piece: object = await anext(source)
    except (ProviderError, StopAsyncIteration):
        raise
    except TimeoutError as exc:
        raise ProviderTimeout("timed out while streaming", provider=offer.provider) from exc
    except Exception as exc:  # a provider bug, or another genroute error, fails the offer as in run()
        raise provider_failure(exc, offer.provider, "stream") from exc
    if not isinstance(piece, str):
        log.warning("provider %s stream yielded a %s piece, not text", offer.provider, type(piece).__name__)
        raise ProviderError(f"stream piece was {type(piece).__name__}, not text", provider=offer.provider)
    return piece


async def _aclose(source: AsyncIterator[str]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()


async def _close_provider_stream(source: AsyncIterator[str] | None, offer: Offer) -> None:
    """Close the provider's stream (its generator's clean-up runs now), within :data:`PROVIDER_CLOSE_SECONDS`.

    Never raises what the clean-up raises, nor the bound's expiry: both are logged, and the caller goes on to close
    the reservation with whatever the provider reported by then. Only a cancellation of the calling task itself
    (not the bound's) propagates — after the clean-up it interrupted.
    """
    aclose = getattr(source, "aclose", None)
    if aclose is None:
        return
    bound: asyncio.Timeout | None = None
    try:
        if asyncio.current_task() is None:  # no task to bound (never the case under asyncio's own hooks)
            await aclose()
            return
        async with asyncio.timeout(PROVIDER_CLOSE_SECONDS) as bound:
            await aclose()
    except TimeoutError:
        if bound is None or not bound.expired():  # the clean-up's own timeout (say, its HTTP client's)
            log.debug("closing a provider stream failed: %s", redact(traceback.format_exc()))
            return
        log.warning(
            "provider %s stream did not close within %gs; its clean-up was cancelled and the reservation is settled "
            "with what it reported by then",
            offer.provider,
            PROVIDER_CLOSE_SECONDS,
        )
    except Exception:
        log.debug("closing a provider stream failed: %s", redact(traceback.format_exc()))


__all__ = ["SyncTextStream", "TextStream", "stream_text"]
