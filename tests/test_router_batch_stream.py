"""Batches (order, errors in place, bounded concurrency, laziness) and text streaming (pieces, cache, fallback)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from decimal import Decimal
from typing import Any

import pytest

from conftest import FakePlugin, FakeProvider, mock_section, section
from genroute import BatchInterrupted, UnexpectedError, hookimpl
from genroute.errors import (
    AuthenticationFailed,
    DeadlineExceeded,
    GenrouteError,
    InvalidRequest,
    NoRouteAvailable,
    NotABatch,
    ProviderError,
    ProviderRejectedInput,
    ProviderUnavailable,
)
from genroute.router import BatchItem
from genroute.types import ProviderOutput, RequestModel, Result, TextGeneration

D = Decimal


def text_section(name: str, price: str = "0.001") -> dict[str, Any]:
    return section(name, price, task="text-generation", unit="request")


def echo(request: RequestModel) -> ProviderOutput:
    assert isinstance(request, TextGeneration)
    return ProviderOutput(text=f"echo {request.prompt}")


def slower_first(request: RequestModel) -> float:
    """Earlier prompts (``p0``, ``p1`` …) sleep longer, so they finish last."""
    assert isinstance(request, TextGeneration)
    return max(0.0, 0.08 - 0.01 * int(request.prompt.removeprefix("p")))


def gen(prompt: str, **fields: Any) -> dict[str, Any]:
    return {"task": "text-generation", "prompt": prompt, **fields}


@pytest.fixture
def echo_router(settings_factory, router_factory):
    """A router over one provider ``a`` that echoes the prompt; ``router.a`` is the provider."""

    def build(**provider_kwargs: Any) -> Any:
        a = FakeProvider("a", output=echo, **provider_kwargs)
        router = router_factory(settings_factory({"a": text_section("a")}), FakePlugin(a))
        router.a = a
        return router

    return build


# ---------------------------------------------------------------------------------------------- batches


async def test_abatch_keeps_input_order_with_errors_in_place(echo_router):
    router = echo_router(sleep=slower_first)
    requests: list[Any] = [
        gen("p0"),
        gen("p1"),
        {"task": "text-generation", "prompt": "p2", "temprature": 1},
        gen("p3"),
        TextGeneration(prompt="p4"),
    ]

    outcomes = await router.abatch(requests, concurrency=8)

    assert len(outcomes) == 5
    assert isinstance(outcomes[2], InvalidRequest) and outcomes[2].field == "temprature"
    for i in (0, 1, 3, 4):
        assert isinstance(outcomes[i], Result)
        assert outcomes[i].text == f"echo p{i}"
    # the slowest first: completion order differed from input order, yet the list is in input order
    assert [c.request.prompt for c in router.a.calls] == ["p0", "p1", "p3", "p4"]


async def test_abatch_puts_routing_failures_in_place(settings_factory, router_factory):
    a = FakeProvider("a", output=echo, errors=[AuthenticationFailed])
    router = router_factory(settings_factory({"a": text_section("a")}, routing={"max_attempts": 1}), FakePlugin(a))

    outcomes = await router.abatch([gen("p0"), gen("p1")], concurrency=1)

    assert isinstance(outcomes[0], NoRouteAvailable)
    assert isinstance(outcomes[1], Result) and outcomes[1].text == "echo p1"


async def test_abatch_of_nothing_is_empty(echo_router):
    assert await echo_router().abatch([]) == []


def test_sync_batch(echo_router):
    router = echo_router(sleep=slower_first)

    outcomes = router.batch([gen("p0"), gen("p1"), {"task": "text-generation"}, gen("p3")], concurrency=2)

    assert [o.text if isinstance(o, Result) else type(o).__name__ for o in outcomes] == [
        "echo p0",
        "echo p1",
        "InvalidRequest",
        "echo p3",
    ]
    assert router.batch([gen("p0")])[0].cached is True


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_batch_concurrency_is_bounded(echo_router, concurrency):
    router = echo_router(sleep=0.02)

    outcomes = await router.abatch([gen(f"p{n}") for n in range(10)], concurrency=concurrency)

    assert all(isinstance(o, Result) for o in outcomes)
    assert router.a.max_active == concurrency  # never more, and the allowance was used


@pytest.mark.parametrize("concurrency", [0, -1, True, False, 2.5, 2.0, "2", None])
async def test_batch_refuses_a_concurrency_that_is_not_a_whole_number_of_at_least_one(echo_router, concurrency):
    router = echo_router()
    pulled = 0

    def requests() -> Iterator[dict[str, Any]]:
        nonlocal pulled
        pulled += 1
        yield gen("p0")

    with pytest.raises(InvalidRequest) as info:
        await router.abatch(requests(), concurrency=concurrency)
    assert info.value.field == "concurrency"
    assert f"at least 1, not {concurrency!r}" in str(info.value)
    with pytest.raises(InvalidRequest, match=r"^concurrency: "):
        router.aiter_batch(requests(), concurrency=concurrency)  # at the call, before any iteration
    assert pulled == 0 and not router.a.calls
    assert list(router.ledger.entries()) == []


def test_sync_batch_refuses_a_boolean_concurrency(echo_router):
    router = echo_router()
    with pytest.raises(InvalidRequest, match=r"^concurrency: must be a whole number of at least 1, not True"):
        router.batch([gen("p0")], concurrency=True)
    assert not router.a.calls


class Two:
    """A whole number that is not an int, as numpy's integers are (``__index__``)."""

    def __index__(self) -> int:
        return 2


async def test_batch_takes_any_whole_number_type_as_concurrency(echo_router):
    outcomes = await echo_router().abatch([gen("p0"), gen("p1")], concurrency=Two())  # type: ignore[arg-type]
    assert [o.text for o in outcomes if isinstance(o, Result)] == ["echo p0", "echo p1"]


async def test_aiter_batch_pulls_requests_lazily(echo_router):
    router = echo_router(sleep=0.01)
    pulled = 0

    def requests() -> Iterator[dict[str, Any]]:
        nonlocal pulled
        for n in range(40):
            pulled += 1
            yield gen(f"p{n}")

    seen: list[BatchItem] = []
    async with aclosing(router.aiter_batch(requests(), concurrency=2)) as items:
        async for item in items:
            if not seen:
                assert pulled <= 4  # two in flight, plus the refill after the first finished
            seen.append(item)

    assert pulled == 40
    assert sorted(item.index for item in seen) == list(range(40))
    assert all(item.result is not None and item.result.text == f"echo p{item.index}" for item in seen)


async def test_aiter_batch_accepts_an_async_source(echo_router):
    router = echo_router()

    async def requests() -> AsyncIterator[dict[str, Any]]:
        for n in range(5):
            await asyncio.sleep(0)
            yield gen(f"p{n}")

    items = [item async for item in router.aiter_batch(requests(), concurrency=2)]

    assert sorted((i.index, i.result.text) for i in items if i.result) == [(n, f"echo p{n}") for n in range(5)]


async def test_abandoning_a_batch_cancels_work_in_flight_and_releases_reservations(echo_router):
    router = echo_router(sleep=30)
    started = time.monotonic()

    async with aclosing(router.aiter_batch([gen(f"p{n}") for n in range(5)], concurrency=3)) as items:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await anext(items)

    assert time.monotonic() - started < 5
    assert len(router.a.calls) == 3
    assert router.a.cancelled == 3
    assert router.ledger.open_reservations() == []
    assert [e.status for e in router.ledger.entries()] == ["released"] * 3


def breaks_after(*prompts: str) -> Iterator[dict[str, Any]]:
    """A request source that gives ``prompts`` and then breaks, as a reader of a bad file would."""
    for prompt in prompts:
        yield gen(prompt)
    raise RuntimeError("source broke")


def settled_prompts(router: Any) -> int:
    assert router.ledger.open_reservations() == []  # nothing left reserved
    return sum(entry.status == "settled" for entry in router.ledger.entries())


@pytest.mark.parametrize("concurrency", [1, 2, 3])
async def test_aiter_batch_yields_the_paid_requests_before_raising_what_the_source_raised(echo_router, concurrency):
    router = echo_router(sleep=slower_first)  # p0 finishes last
    seen: list[BatchItem] = []

    with pytest.raises(RuntimeError, match="source broke"):
        async for item in router.aiter_batch(breaks_after("p0", "p1"), concurrency=concurrency):
            seen.append(item)

    assert sorted((i.index, i.result.text) for i in seen if i.result) == [(0, "echo p0"), (1, "echo p1")]
    assert router.a.cancelled == 0 and router.a.active == 0  # both ran to their end, nothing still running
    assert settled_prompts(router) == 2


async def test_aiter_batch_with_a_broken_async_source_yields_what_it_started(echo_router):
    router = echo_router(sleep=0.02)

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield gen("p0")
        await asyncio.sleep(0)
        raise ValueError("cannot read line 2")

    items = router.aiter_batch(requests(), concurrency=4)
    first = await anext(items)
    with pytest.raises(ValueError, match="cannot read line 2"):
        await anext(items)

    assert (first.index, first.result and first.result.text) == (0, "echo p0")
    assert settled_prompts(router) == 1


async def test_abatch_with_a_broken_source_raises_with_the_paid_outcomes_in_input_order(echo_router):
    router = echo_router(sleep=slower_first)

    def requests() -> Iterator[dict[str, Any]]:
        yield gen("p0")
        yield {"task": "text-generation"}  # invalid: its error keeps its place
        yield gen("p2")
        raise RuntimeError("source broke")

    with pytest.raises(BatchInterrupted) as info:
        await router.abatch(requests(), concurrency=2)

    err = info.value
    assert isinstance(err.__cause__, RuntimeError) and str(err.__cause__) == "source broke"
    assert "source raised RuntimeError: source broke after giving 3 request(s)" in err.message
    assert ".outcomes" in err.hint
    assert [o.text if isinstance(o, Result) else type(o).__name__ for o in err.outcomes] == [
        "echo p0",
        "InvalidRequest",
        "echo p2",
    ]
    assert settled_prompts(router) == 2
    assert router.a.cancelled == 0


def test_sync_batch_with_a_source_broken_from_the_start_says_so(echo_router):
    router = echo_router()

    with pytest.raises(BatchInterrupted) as info:
        router.batch(breaks_after(), concurrency=2)

    assert info.value.outcomes == []
    assert isinstance(info.value.__cause__, RuntimeError)
    assert not router.a.calls


async def test_a_batch_of_something_not_iterable_fails_at_the_call(echo_router):
    router = echo_router()
    with pytest.raises(TypeError):
        router.aiter_batch(42, concurrency=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await router.abatch(42)  # type: ignore[arg-type]


async def test_a_bug_raised_while_running_a_batch_is_not_taken_for_a_broken_source(echo_router, monkeypatch):
    router = echo_router()

    async def broken_run(request: Any) -> Result:
        raise KeyError("bug")

    monkeypatch.setattr(router, "arun", broken_run)
    # not BatchInterrupted (the source did not fail): the bug is that request's error, the batch carries on
    [outcome] = await router.abatch([gen("p0")])
    assert isinstance(outcome, UnexpectedError) and isinstance(outcome.__cause__, KeyError)


NOT_A_BATCH = [
    ("abc", "not a str, whose every character would be taken for a request"),
    (b"abc", "not a bytes, whose every byte would be taken for a request"),
    (TextGeneration(prompt="p0"), "not one request (TextGeneration), whose every field would be taken for a request"),
    (gen("p0"), "not one mapping, whose every key would be taken for a request"),
]


@pytest.mark.parametrize(("requests", "said"), NOT_A_BATCH)
def test_a_batch_of_a_string_or_one_request_is_refused_before_anything_runs(echo_router, requests, said):
    router = echo_router()
    with pytest.raises(NotABatch) as info:
        router.batch(requests)
    assert isinstance(info.value, TypeError) and isinstance(info.value, InvalidRequest)
    assert said in info.value.message
    assert "pass an iterable of requests" in info.value.hint
    assert not router.a.calls and list(router.ledger.entries()) == []


@pytest.mark.parametrize(("requests", "said"), NOT_A_BATCH)
async def test_an_async_batch_of_a_string_or_one_request_is_refused(echo_router, requests, said):
    router = echo_router()
    with pytest.raises(NotABatch, match=re.escape(said)):
        await router.abatch(requests)
    with pytest.raises(NotABatch, match=re.escape(said)):
        router.aiter_batch(requests)
    assert not router.a.calls


# ---------------------------------------------------------------------------------------------- streaming


@pytest.fixture
def stream_router(settings_factory, router_factory):
    """Providers ``a`` (cheaper) and ``b`` streaming scripted pieces; ``router.a``/``router.b``."""

    def build(a_kwargs: dict[str, Any] | None = None, b_kwargs: dict[str, Any] | None = None) -> Any:
        a = FakeProvider("a", stream_pieces=["Hel", "lo, ", "world"], **(a_kwargs or {}))
        b = FakeProvider("b", stream_pieces=["from ", "b"], **(b_kwargs or {}))
        config = settings_factory({"a": text_section("a", "0.001"), "b": text_section("b", "0.002")})
        router = router_factory(config, FakePlugin(a, b))
        router.a, router.b = a, b
        return router

    return build


async def test_astream_pieces_make_the_result_then_the_request_is_cached(stream_router):
    router = stream_router()
    request = TextGeneration(prompt="say hello")

    stream = router.astream(request)
    pieces = [piece async for piece in stream]

    assert pieces == ["Hel", "lo, ", "world"]
    assert stream.result is not None
    assert stream.result.text == "".join(pieces) == "Hello, world"
    assert (stream.result.provider, stream.result.cached, stream.result.actual_cost) == ("a", False, D("0.001"))
    assert [(e.provider, e.status) for e in router.ledger.entries()] == [("a", "settled")]

    again = router.astream(request)
    assert "".join([piece async for piece in again]) == "Hello, world"
    assert again.result is not None and again.result.cached is True and again.result.actual_cost == 0
    assert (await router.arun(request)).cached is True
    assert router.a.stream_calls == 1 and not router.b.calls


async def test_astream_with_the_real_mock(settings_factory, router_factory):
    config = settings_factory({"mock": mock_section()}, profiles={"offline": ["mock"]})
    router = router_factory(config, entry_points=True)
    request = TextGeneration(prompt="Tell me about the sea", tier="fast", max_tokens=80)

    stream = router.astream(request)
    pieces = [piece async for piece in stream]

    assert len(pieces) > 3
    assert stream.result is not None and stream.result.text == "".join(pieces)
    assert stream.result.provider == "mock" and stream.result.actual_cost > 0
    assert (await router.arun(request)).text == stream.result.text


def test_sync_stream(stream_router):
    router = stream_router()

    pieces = list(router.stream(TextGeneration(prompt="say hello")))

    assert pieces == ["Hel", "lo, ", "world"]
    assert list(router.stream(TextGeneration(prompt="say hello"))) == ["Hello, world"]  # now from the store
    assert router.a.stream_calls == 1


@pytest.mark.parametrize("cache", ["bypass", "use"])
def test_iterating_a_complete_sync_stream_again_replays_it_without_paying_again(stream_router, cache):
    router = stream_router()
    stream = router.stream(TextGeneration(prompt="say hello", cache=cache))

    first = list(stream)
    result = stream.result
    assert stream.complete and result is not None and result.actual_cost == D("0.001")
    assert list(stream) == first == ["Hel", "lo, ", "world"]  # the same pieces, not one stored text

    assert stream.result is result and not result.cached  # not replaced by a store hit at $0
    assert router.a.stream_calls == 1
    assert [e.status for e in router.ledger.entries()] == ["settled"]


@pytest.mark.parametrize("cache", ["bypass", "use"])
async def test_iterating_a_complete_async_stream_again_replays_it_without_paying_again(stream_router, cache):
    router = stream_router()
    stream = router.astream(TextGeneration(prompt="say hello", cache=cache))

    first = [piece async for piece in stream]
    result = stream.result
    assert [piece async for piece in stream] == first == ["Hel", "lo, ", "world"]

    assert stream.result is result and result is not None and result.actual_cost == D("0.001")
    assert router.a.stream_calls == 1
    assert [e.status for e in router.ledger.entries()] == ["settled"]


def test_iterating_a_sync_stream_left_early_again_says_a_stream_is_consumed_once(stream_router):
    router = stream_router()
    stream = router.stream(TextGeneration(prompt="say hello", cache="bypass"))
    for _ in stream:
        break

    with pytest.raises(GenrouteError, match="a stream can be consumed once") as info:
        list(stream)
    assert "start a new stream" in info.value.hint
    assert not stream.complete and stream.result is None
    assert router.a.stream_calls == 1 and len(list(router.ledger.entries())) == 1


async def test_iterating_a_failed_async_stream_again_says_a_stream_is_consumed_once(stream_router):
    router = stream_router(a_kwargs={"errors": [AuthenticationFailed]}, b_kwargs={"errors": [AuthenticationFailed]})
    stream = router.astream(TextGeneration(prompt="say hello"))
    with pytest.raises(NoRouteAvailable):
        [piece async for piece in stream]

    with pytest.raises(GenrouteError, match="a stream can be consumed once"):
        [piece async for piece in stream]
    assert router.a.stream_calls == 1 and router.b.stream_calls == 1


async def test_identical_streams_at_once_are_paid_once_the_others_replay_it_from_the_store(stream_router):
    router = stream_router(a_kwargs={"sleep": 0.02})
    request = TextGeneration(prompt="say hello")
    streams = [router.astream(request) for _ in range(3)]

    async def read(stream: Any) -> list[str]:
        return [piece async for piece in stream]

    texts = await asyncio.gather(*(read(stream) for stream in streams))

    assert sorted(texts) == [["Hel", "lo, ", "world"], ["Hello, world"], ["Hello, world"]]
    assert sorted(stream.result.cached for stream in streams) == [False, True, True]
    assert router.a.stream_calls == 1
    assert sorted(e.status for e in router.ledger.entries()) == ["saving", "saving", "settled"]


async def test_a_run_while_the_same_request_streams_waits_and_is_served_from_the_store(stream_router):
    router = stream_router(a_kwargs={"sleep": 0.02})
    request = TextGeneration(prompt="say hello")
    stream = router.astream(request)

    async def read() -> str:
        return "".join([piece async for piece in stream])

    text, result = await asyncio.gather(read(), router.arun(request))

    assert text == result.text == "Hello, world" and result.cached
    assert router.a.stream_calls == 1 and not router.a.calls[1:]


async def test_the_same_request_asked_while_reading_its_stream_runs_rather_than_wait_for_itself(stream_router):
    router = stream_router()
    request = TextGeneration(prompt="say hello", deadline_seconds=2)
    inside: list[Any] = []
    async for _ in router.astream(request):
        if not inside:
            inside.append(await router.arun(request))  # the stream waits for this task: no wait, it runs
    assert inside[0].cached is False


def test_the_same_request_asked_while_reading_a_sync_stream_runs_rather_than_wait_for_itself(stream_router):
    router = stream_router()
    request = TextGeneration(prompt="say hello", deadline_seconds=2)
    started = time.monotonic()
    inside = [router.run(request) for i, _ in enumerate(router.stream(request)) if i == 0]
    assert inside[0].cached is False and time.monotonic() - started < 1


TOKEN_ADVICE = "set A_TOKEN to a valid token (see docs/providers.md)"


async def test_a_refused_token_in_a_pinned_stream_ends_with_the_providers_advice(stream_router, caplog):
    refused = AuthenticationFailed("401 Unauthorized", provider="a", hint=TOKEN_ADVICE)
    router = stream_router(a_kwargs={"errors": [refused]})

    with caplog.at_level(logging.INFO, logger="genroute.router"), pytest.raises(NoRouteAvailable) as info:
        [piece async for piece in router.astream(TextGeneration(prompt="say hello", provider="a"))]

    assert info.value.hint.startswith(TOKEN_ADVICE)  # as run() says, not "change the tier, profile or budget"
    assert [(r.levelno, r.getMessage()) for r in caplog.records if "failed, falling back" in r.getMessage()] == [
        (logging.WARNING, f"a/a/balanced failed, falling back: failed: a: 401 Unauthorized ({TOKEN_ADVICE})")
    ]


async def test_a_refused_token_in_a_stream_that_falls_back_is_still_a_warning(stream_router, caplog):
    refused = AuthenticationFailed("401 Unauthorized", provider="a", hint=TOKEN_ADVICE)
    router = stream_router(a_kwargs={"errors": [refused]})

    with caplog.at_level(logging.WARNING, logger="genroute.router"):
        stream = router.astream(TextGeneration(prompt="say hello"))
        assert [piece async for piece in stream] == ["from ", "b"]

    assert stream.result is not None and stream.result.provider == "b"
    assert any(r.levelno == logging.WARNING and TOKEN_ADVICE in r.getMessage() for r in caplog.records)


async def test_a_stream_and_a_run_refused_the_same_way_give_the_same_hint(stream_router):
    def refusing() -> AuthenticationFailed:
        return AuthenticationFailed("401 Unauthorized", provider="a", hint=TOKEN_ADVICE)

    router = stream_router(a_kwargs={"errors": [refusing(), refusing()]})
    request = TextGeneration(prompt="say hello", provider="a", cache="bypass")
    with pytest.raises(NoRouteAvailable) as streamed:
        [piece async for piece in router.astream(request)]
    with pytest.raises(NoRouteAvailable) as ran:
        await router.arun(request)
    assert streamed.value.hint == ran.value.hint


async def test_a_stream_failing_before_the_first_piece_falls_back(stream_router):
    router = stream_router(a_kwargs={"errors": [ProviderUnavailable]})

    stream = router.astream(TextGeneration(prompt="say hello"))
    pieces = [piece async for piece in stream]

    assert pieces == ["from ", "b"]
    assert stream.result is not None and stream.result.provider == "b"
    assert [(e.provider, e.status) for e in router.ledger.entries()] == [("a", "released"), ("b", "settled")]


CUT_SHORT_AFTER_1 = (
    "the stream was cut short after 1 piece(s): genroute does not retry or switch provider once text has reached "
    "you, so ask again for a whole answer (the partial text was charged: what the provider billed, else the estimate)"
)


async def test_a_stream_failing_after_the_first_piece_raises(stream_router):
    boom = ProviderUnavailable("connection reset", provider="a")
    router = stream_router(a_kwargs={"stream_error_after": (1, boom)})

    stream = router.astream(TextGeneration(prompt="say hello"))
    pieces: list[str] = []
    with pytest.raises(ProviderError) as info:
        async for piece in stream:
            pieces.append(piece)

    assert info.value is boom
    assert pieces == ["Hel"]
    # not the class's "genroute retries and falls back automatically": it did neither, the caller holds part of it
    assert info.value.hint == CUT_SHORT_AFTER_1
    assert str(info.value) == f"a: connection reset — {CUT_SHORT_AFTER_1}"
    assert stream.result is None
    assert not router.b.calls  # no silent switch of provider mid-answer
    # The piece the caller holds was generated, so probably billed: settled at the estimate, as when a
    # stream is abandoned, not released at $0.
    (entry,) = router.ledger.entries()
    assert (entry.provider, entry.status, entry.actual) == ("a", "settled", entry.estimate)
    assert "connection reset" in entry.note and entry.estimate > 0
    assert router.store.stats().entries == 0


async def test_a_stream_with_no_usable_offer_raises_no_route(stream_router):
    router = stream_router(a_kwargs={"errors": [AuthenticationFailed]}, b_kwargs={"errors": [AuthenticationFailed]})

    with pytest.raises(NoRouteAvailable) as info:
        [piece async for piece in router.astream(TextGeneration(prompt="x"))]

    assert {r.provider for r in info.value.rejections} == {"a", "b"}
    # worded like run's: which task and tier could not be served
    assert info.value.message.startswith("no provider could stream this text-generation request (tier balanced, ")


async def test_only_text_generation_streams(stream_router):
    router = stream_router()
    with pytest.raises(InvalidRequest) as info:
        [piece async for piece in router.astream({"task": "text-to-image", "prompt": "x"})]
    assert info.value.field == "task"


async def test_a_stream_past_its_deadline_raises_and_releases(stream_router):
    router = stream_router(a_kwargs={"sleep": 30})

    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        [piece async for piece in router.astream(TextGeneration(prompt="x", deadline_seconds=0.2))]

    assert time.monotonic() - started < 5
    # worded like run's: how long, and which provider's call the deadline cut short
    assert info.value.message.startswith("stream did not finish within 0.2s (offers: a · ")
    assert info.value.message.endswith(": cut short by the deadline)")
    assert [(e.provider, e.status) for e in router.ledger.entries()] == [("a", "released")]


def test_sync_stream_enforces_the_deadline_after_the_first_piece(settings_factory, router_factory):
    a = FakeProvider("a", stream_pieces=["one ", "two ", "three ", "four"], sleep=0.15)  # 0.6 s in all
    router = router_factory(settings_factory({"a": text_section("a")}), FakePlugin(a))

    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        list(router.stream(TextGeneration(prompt="x", deadline_seconds=0.2)))
    assert time.monotonic() - started < 5


async def test_a_slow_consumer_gets_deadline_exceeded_not_a_cancelled_task(stream_router):
    router = stream_router()

    async def consume() -> list[str]:
        pieces = []
        async for piece in router.astream(TextGeneration(prompt="x", deadline_seconds=0.1)):
            pieces.append(piece)
            await asyncio.sleep(0.3)  # the caller's own work, e.g. sending the piece to a client
        return pieces

    task = asyncio.ensure_future(consume())
    try:
        with pytest.raises(DeadlineExceeded):
            await task
    except asyncio.CancelledError:
        pytest.fail("the stream's deadline cancelled the consumer's own await")


async def test_rejected_input_in_a_stream_does_not_cool_the_provider_down(settings_factory, router_factory):
    a = FakeProvider("a", stream_pieces=["ok"], errors=[ProviderRejectedInput])
    config = settings_factory({"a": text_section("a")}, routing={"cooldown_after_failures": 1, "cooldown_seconds": 30})
    router = router_factory(config, FakePlugin(a))

    with pytest.raises(NoRouteAvailable):
        [piece async for piece in router.astream(TextGeneration(prompt="too long"))]
    pieces = [piece async for piece in router.astream(TextGeneration(prompt="fine"))]

    assert pieces == ["ok"]


def test_breaking_out_of_a_sync_stream_closes_its_reservation_at_once(stream_router):
    router = stream_router()
    stream = router.stream(TextGeneration(prompt="say hello"))
    for piece in stream:
        assert piece == "Hel"
        break
    # no garbage collection awaited: the loop's end closes the stream and settles what it used
    assert router.ledger.open_reservations() == []
    (entry,) = [e for e in router.ledger.entries() if e.status != "saving"]
    assert entry.status == "settled" and "abandoned" in entry.note
    assert stream.result is None


async def test_leaving_an_async_stream_early_in_async_with_closes_its_reservation(stream_router):
    router = stream_router()
    async with router.astream(TextGeneration(prompt="say hello")) as stream:
        async for piece in stream:
            assert piece == "Hel"
            break
    assert router.ledger.open_reservations() == []
    (entry,) = [e for e in router.ledger.entries() if e.status != "saving"]
    assert entry.status == "settled" and "abandoned" in entry.note


class _StreamNeverStarts(FakeProvider):
    """A plugin's mistake: ``stream`` as a coroutine (``async def`` without ``yield``), not an async generator."""

    async def stream(self, request: RequestModel, offer: Any, ctx: Any) -> AsyncIterator[str]:  # type: ignore[override]
        raise NotImplementedError("no streaming here")


class _StreamRaisesAtCall(FakeProvider):
    """A plain ``def stream`` that raises before returning any iterator."""

    def stream(self, request: RequestModel, offer: Any, ctx: Any) -> AsyncIterator[str]:  # type: ignore[override]
        raise NotImplementedError("no streaming here")


@pytest.mark.parametrize("broken", [_StreamNeverStarts, _StreamRaisesAtCall])
async def test_a_stream_that_cannot_start_falls_back_and_closes_its_reservation(
    broken: type[FakeProvider], settings_factory, router_factory
) -> None:
    a = broken("a")
    b = FakeProvider("b", stream_pieces=["from ", "b"])
    config = settings_factory({"a": text_section("a", "0.001"), "b": text_section("b", "0.002")})
    router = router_factory(config, FakePlugin(a, b))

    stream = router.astream(TextGeneration(prompt="say hello"))
    assert "".join([piece async for piece in stream]) == "from b"

    assert stream.result is not None and stream.result.provider == "b"
    assert [(e.provider, e.status) for e in router.ledger.entries()] == [("a", "released"), ("b", "settled")]
    assert router.ledger.open_reservations() == []


async def test_another_genroute_error_from_a_stream_fails_the_offer_as_in_run(stream_router) -> None:
    router = stream_router(a_kwargs={"errors": [InvalidRequest("the model refuses this prompt", field="prompt")]})
    stream = router.astream(TextGeneration(prompt="say hello"))
    assert "".join([piece async for piece in stream]) == "from b"
    assert [(e.provider, e.status) for e in router.ledger.entries()] == [("a", "released"), ("b", "settled")]


async def test_an_unexpected_stream_error_never_carries_a_token(stream_router, monkeypatch) -> None:
    token = "r8_" + "S3cr3tT0k3n" * 3
    monkeypatch.setenv("REPLICATE_API_TOKEN", token)
    leak = RuntimeError(f"401 for a request with Authorization: Bearer {token}")
    router = stream_router(a_kwargs={"stream_error_after": (1, leak)})
    stream = router.astream(TextGeneration(prompt="say hello"))
    with pytest.raises(ProviderError) as info:
        async for _piece in stream:
            pass
    assert "unexpected RuntimeError" in str(info.value) and token not in str(info.value)
    assert all(token not in e.note for e in router.ledger.entries())


def streams_of(settings_factory: Any, router_factory: Any, a_pieces: list[Any]) -> Any:
    """Providers ``a`` (cheaper, streaming ``a_pieces``) and ``b`` (streaming text); ``router.a``/``router.b``."""
    a = FakeProvider("a", stream_pieces=a_pieces)
    b = FakeProvider("b", stream_pieces=["from ", "b"])
    config = settings_factory({"a": text_section("a", "0.001"), "b": text_section("b", "0.002")})
    router = router_factory(config, FakePlugin(a, b))
    router.a, router.b = a, b
    return router


async def test_a_stream_piece_that_is_not_text_falls_back_before_the_caller_sees_it(
    settings_factory, router_factory
) -> None:
    router = streams_of(settings_factory, router_factory, [b"Hel", b"lo"])

    stream = router.astream(TextGeneration(prompt="say hello"))
    pieces = [piece async for piece in stream]

    assert pieces == ["from ", "b"]  # never the bytes
    assert stream.result is not None and stream.result.provider == "b"
    assert [(e.provider, e.status) for e in router.ledger.entries()] == [("a", "released"), ("b", "settled")]
    assert router.ledger.open_reservations() == []


async def test_a_stream_of_bytes_alone_says_so_and_leaves_nothing_reserved(settings_factory, router_factory) -> None:
    a = FakeProvider("a", stream_pieces=[b"raw"])  # type: ignore[list-item]  # a plugin's mistake
    router = router_factory(settings_factory({"a": text_section("a")}), FakePlugin(a))

    with pytest.raises(NoRouteAvailable) as info:
        [piece async for piece in router.astream(TextGeneration(prompt="x"))]

    (rejection,) = info.value.rejections
    assert rejection.reason == "failed: a: stream piece was bytes, not text"
    assert router.ledger.open_reservations() == []
    assert [e.status for e in router.ledger.entries()] == ["released"]


async def test_a_stream_piece_that_is_not_text_after_text_fails_the_stream_and_settles_it(
    settings_factory, router_factory
) -> None:
    router = streams_of(settings_factory, router_factory, ["Hel", b"lo", "world"])

    stream = router.astream(TextGeneration(prompt="say hello"))
    pieces: list[Any] = []
    with pytest.raises(ProviderError) as info:
        async for piece in stream:
            pieces.append(piece)

    assert pieces == ["Hel"]  # the bytes never reached the caller
    assert info.value.message == "a: stream piece was bytes, not text"
    assert stream.result is None and not router.b.calls  # no switch of provider mid-answer
    assert router.ledger.open_reservations() == []
    (entry,) = router.ledger.entries()
    assert (entry.provider, entry.status, entry.actual) == ("a", "settled", entry.estimate)


async def test_a_stream_that_cannot_be_priced_still_closes_its_reservation(stream_router, monkeypatch) -> None:
    router = stream_router()

    def broken_cost(*args: Any) -> Decimal:
        raise ArithmeticError("a bug in pricing")

    monkeypatch.setattr("genroute.streaming.call_cost", broken_cost)
    with pytest.raises(ArithmeticError):
        [piece async for piece in router.astream(TextGeneration(prompt="say hello"))]

    assert router.ledger.open_reservations() == []
    (entry,) = router.ledger.entries()
    assert (entry.status, entry.actual) == ("settled", entry.estimate)  # the text was delivered: probably billed
    assert "could not be priced" in entry.note


async def test_a_bug_cutting_a_stream_short_says_how_far_it_got_not_that_it_fell_through(stream_router) -> None:
    router = stream_router(a_kwargs={"stream_error_after": (2, RuntimeError("socket closed"))})

    pieces: list[str] = []
    with pytest.raises(ProviderError) as info:
        async for piece in router.astream(TextGeneration(prompt="say hello")):
            pieces.append(piece)

    assert pieces == ["Hel", "lo, "]
    assert info.value.message == "a: unexpected RuntimeError: socket closed"
    assert info.value.hint.startswith("the stream was cut short after 2 piece(s): ")
    assert "fell through every provider" not in str(info.value)
    assert not router.b.calls and router.ledger.open_reservations() == []


class _ReportingOnStop(FakeProvider):
    """Streams one piece; stopped (by the caller or the deadline) it reports ``incurred`` as a cancel does."""

    def __init__(self, name: str, incurred: object) -> None:
        super().__init__(name, stream_pieces=["Hel"])
        self.incurred = incurred

    async def stream(self, request: RequestModel, offer: Any, ctx: Any) -> AsyncIterator[str]:
        try:
            yield "Hel"
            await asyncio.sleep(30)
        except (asyncio.CancelledError, GeneratorExit):
            ctx.extra["incurred"] = self.incurred
            raise


@pytest.mark.parametrize(
    ("reported", "status", "actual"),
    [
        (D("0.0000475"), "settled", D("0.000048")),  # what the stopped call produced, rounded as the ledger rounds
        (D(0), "released", None),  # known to have cost nothing: not the estimate, though text was delivered
        (0, "released", None),
        ("-1", "settled", D("0.001")),  # no amount (logged): as if nothing were reported, the estimate
        (None, "settled", D("0.001")),
    ],
)
async def test_a_stream_stopped_by_its_deadline_settles_what_the_provider_reported(
    settings_factory, router_factory, reported, status, actual
):
    provider = _ReportingOnStop("a", reported)
    router = router_factory(settings_factory({"a": text_section("a")}), FakePlugin(provider))
    pieces: list[str] = []
    with pytest.raises(DeadlineExceeded):
        async for piece in router.astream(TextGeneration(prompt="x", deadline_seconds=0.3)):
            pieces.append(piece)
    assert pieces == ["Hel"]
    (entry,) = list(router.ledger.entries())
    assert (entry.status, entry.actual if status == "settled" else None) == (status, actual)
    assert router.ledger.open_reservations() == []


class _HangsOnClose(FakeProvider):
    """Streams two pieces; closed early, its clean-up reports ``incurred`` (unless None), then hangs (``hang``) or
    raises (``fail``) — a remote cancel that never returns, or that breaks."""

    def __init__(self, name: str, incurred: object = None, *, fail: bool = False) -> None:
        super().__init__(name, stream_pieces=["Hel", "lo"])
        self.incurred, self.fail = incurred, fail
        self.cleanup_started = self.cleanup_cancelled = False

    async def stream(self, request: RequestModel, offer: Any, ctx: Any) -> AsyncIterator[str]:
        self.stream_calls += 1
        try:
            yield "Hel"
            yield "lo"
        except GeneratorExit:
            self.cleanup_started = True
            if self.incurred is not None:
                ctx.extra["incurred"] = self.incurred
            if self.fail:
                raise RuntimeError("the cancel request broke") from None
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cleanup_cancelled = True
                raise


class _FinishedRequests:
    """An observer: the error (or None) of every request reported finished."""

    def __init__(self) -> None:
        self.errors: list[BaseException | None] = []

    @hookimpl
    def genroute_request_finished(
        self, request: RequestModel, key: str, result: Result | None, error: BaseException | None
    ) -> None:
        self.errors.append(error)


CLOSE_BOUND = 0.2  # PROVIDER_CLOSE_SECONDS in these tests


@pytest.fixture
def hang_router(settings_factory, router_factory, monkeypatch):
    """``hang_router(incurred, fail=False)``: a router over one ``_HangsOnClose`` provider ``a`` (``router.a``),
    its close bounded at ``CLOSE_BOUND``; ``router.finished`` sees the requests reported finished."""
    monkeypatch.setattr("genroute.streaming.PROVIDER_CLOSE_SECONDS", CLOSE_BOUND)

    def build(incurred: object = None, *, fail: bool = False) -> Any:
        a, finished = _HangsOnClose("a", incurred, fail=fail), _FinishedRequests()
        router = router_factory(settings_factory({"a": text_section("a", "0.001")}), FakePlugin(a), finished)
        router.a, router.finished = a, finished
        return router

    return build


def closed_once(router: Any) -> tuple[str, Decimal | None]:
    assert router.ledger.open_reservations() == []
    (entry,) = router.ledger.entries()
    assert "abandoned" in entry.note
    return entry.status, entry.actual


HANGING_REPORTS = [
    (None, ("settled", D("0.001"))),  # nothing reported before the hang: the estimate, text having been delivered
    (D("0.0004"), ("settled", D("0.0004"))),  # reported before it hung: that amount
    (D(0), ("released", D(0))),  # known to have cost nothing
]


@pytest.mark.parametrize(("incurred", "closed"), HANGING_REPORTS)
def test_a_sync_stream_whose_provider_hangs_in_clean_up_gives_control_back_within_the_bound(
    hang_router, incurred, closed
) -> None:
    router = hang_router(incurred)
    started = time.monotonic()
    for piece in router.stream(TextGeneration(prompt="say hello")):
        assert piece == "Hel"
        break
    waited = time.monotonic() - started

    assert router.a.cleanup_started and router.a.cleanup_cancelled  # the hanging clean-up was cut at the bound
    assert CLOSE_BOUND <= waited < CLOSE_BOUND + 2
    assert closed_once(router) == closed


@pytest.mark.parametrize(("incurred", "closed"), HANGING_REPORTS)
async def test_an_async_stream_whose_provider_hangs_in_clean_up_gives_control_back_within_the_bound(
    hang_router, caplog, incurred, closed
) -> None:
    router = hang_router(incurred)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="genroute.router"):
        async with router.astream(TextGeneration(prompt="say hello")) as stream:
            async for piece in stream:
                assert piece == "Hel"
                break
    waited = time.monotonic() - started

    assert router.a.cleanup_cancelled and CLOSE_BOUND <= waited < CLOSE_BOUND + 2
    assert closed_once(router) == closed
    assert len(router.finished.errors) == 1
    assert f"provider a stream did not close within {CLOSE_BOUND:g}s" in caplog.text


async def test_a_clean_up_that_raises_still_settles_what_it_reported_and_the_caller_sees_nothing(hang_router) -> None:
    router = hang_router(D("0.0004"), fail=True)
    async with router.astream(TextGeneration(prompt="say hello")) as stream:
        async for _piece in stream:
            break

    assert router.a.cleanup_started and not router.a.cleanup_cancelled
    assert closed_once(router) == ("settled", D("0.0004"))


async def test_a_caller_cancelling_again_while_the_clean_up_hangs_still_closes_the_reservation_once(
    hang_router, monkeypatch
) -> None:
    router = hang_router(D("0.0004"))
    monkeypatch.setattr("genroute.streaming.PROVIDER_CLOSE_SECONDS", 30)  # the caller's second cancel comes first
    read = asyncio.Event()

    async def consume() -> None:
        async with router.astream(TextGeneration(prompt="say hello")) as stream:
            async for _piece in stream:
                read.set()
                await asyncio.Event().wait()

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(read.wait(), 5)
    task.cancel()  # the stream is closed: its clean-up hangs
    for _ in range(100):
        if router.a.cleanup_started:
            break
        await asyncio.sleep(0.01)
    assert router.a.cleanup_started and router.ledger.open_reservations() != []
    task.cancel()  # the caller gives up on the clean-up too
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)

    assert router.a.cleanup_cancelled
    assert closed_once(router) == ("settled", D("0.0004"))
    (error,) = router.finished.errors  # the request is still reported finished, once
    assert isinstance(error, GeneratorExit)


# ------------------------------------------------------------------------------------- empty stream output


class _EmptyStream(FakeProvider):
    """A stream that ends without any text; ``reported`` is the ProviderOutput it leaves in ``ctx.extra``."""

    def __init__(self, name: str, pieces: list[str], reported: ProviderOutput | None = None) -> None:
        super().__init__(name, stream_pieces=pieces)
        self.reported = reported

    async def stream(self, request: RequestModel, offer: Any, ctx: Any) -> AsyncIterator[str]:
        self.stream_calls += 1
        for piece in self.stream_pieces or []:
            yield piece
        if self.reported is not None:
            ctx.extra["output"] = self.reported


@pytest.mark.parametrize("pieces", [[], ["", ""]])
async def test_a_stream_ending_without_text_fails_that_offer_and_falls_back(
    settings_factory, router_factory, pieces
) -> None:
    a, b = _EmptyStream("a", pieces), FakeProvider("b", stream_pieces=["from ", "b"])
    config = settings_factory({"a": text_section("a", "0.001"), "b": text_section("b", "0.002")})
    router = router_factory(config, FakePlugin(a, b))

    stream = router.astream(TextGeneration(prompt="say hello"))
    text = "".join([piece async for piece in stream])

    assert text == "from b"
    assert stream.result is not None and stream.result.provider == "b"
    # a's empty answer was priced as run() prices it (its catalogue price per request): billed, so settled
    entries = [(e.provider, e.status, e.actual) for e in router.ledger.entries()]
    assert entries == [("a", "settled", D("0.001")), ("b", "settled", D("0.002"))]
    assert router.store.stats().entries == 1  # b's answer alone; a's empty one is not kept
    again = router.astream(TextGeneration(prompt="say hello"))
    assert "".join([piece async for piece in again]) == "from b"
    assert again.result is not None and again.result.cached


@pytest.mark.parametrize(
    ("reported", "status", "actual"),
    [
        (ProviderOutput(text="", actual_cost=D("0.0003")), "settled", D("0.0003")),  # what the provider billed
        (ProviderOutput(text="", actual_cost=D(0)), "released", D(0)),  # known to have cost nothing
    ],
)
async def test_a_stream_without_text_is_an_error_settled_as_the_provider_reported(
    settings_factory, router_factory, reported, status, actual
) -> None:
    a = _EmptyStream("a", [], reported)
    router = router_factory(settings_factory({"a": text_section("a", "0.001")}), FakePlugin(a))

    stream = router.astream(TextGeneration(prompt="say hello"))
    with pytest.raises(NoRouteAvailable) as info:
        [piece async for piece in stream]

    (rejection,) = info.value.rejections
    assert rejection.reason == "failed: a: answered a text-generation request without text"
    assert stream.result is None
    assert [(e.status, e.actual) for e in router.ledger.entries()] == [(status, actual)]
    assert router.ledger.open_reservations() == []
    assert router.store.stats().entries == 0


async def test_a_blank_stream_already_delivered_fails_without_switching_provider(settings_factory, router_factory):
    a, b = _EmptyStream("a", [" ", "\n"]), FakeProvider("b", stream_pieces=["from ", "b"])
    config = settings_factory({"a": text_section("a", "0.001"), "b": text_section("b", "0.002")})
    router = router_factory(config, FakePlugin(a, b))

    pieces: list[str] = []
    with pytest.raises(ProviderError) as info:
        async for piece in router.astream(TextGeneration(prompt="say hello")):
            pieces.append(piece)

    assert pieces == [" ", "\n"] and not b.stream_calls  # no other answer glued after the blank one
    assert str(info.value) == (
        "a: answered a text-generation request without text — "
        "the answer was blank (whitespace only); ask again, or pin another provider"
    )
    assert [(e.status, e.actual) for e in router.ledger.entries()] == [("settled", D("0.001"))]
    assert router.store.stats().entries == 0


# ------------------------------------------------------------------ money for a stream failing after text


class _FailsAfterText(FakeProvider):
    """Streams one piece, then fails; the failure reports ``incurred`` on the error or in ``ctx.extra``."""

    def __init__(self, name: str, *, on_error: object = None, in_extra: object = None) -> None:
        super().__init__(name, stream_pieces=["Hel"])
        self.on_error, self.in_extra = on_error, in_extra

    async def stream(self, request: RequestModel, offer: Any, ctx: Any) -> AsyncIterator[str]:
        self.stream_calls += 1
        yield "Hel"
        if self.in_extra is not None:
            ctx.extra["incurred"] = self.in_extra
        raise ProviderUnavailable("connection reset", provider=self.name, incurred=self.on_error)  # type: ignore[arg-type]


ESTIMATE = D("0.001")


@pytest.mark.parametrize(
    ("on_error", "in_extra", "status", "actual"),
    [
        (0, None, "released", D(0)),  # the provider says the partial answer cost nothing: not the estimate
        (None, D(0), "released", D(0)),
        (D("0.0004"), None, "settled", D("0.0004")),
        (None, "0.0004", "settled", D("0.0004")),
        (D("0.0004"), D("0.0009"), "settled", D("0.0004")),  # the error's own amount first, counted once
        (None, None, "settled", ESTIMATE),  # nothing reported: the text delivered was probably billed
        (None, "-1", "settled", ESTIMATE),  # no amount (logged): as if nothing were reported
    ],
)
async def test_a_stream_failing_after_text_settles_what_the_provider_reported_zero_included(
    settings_factory, router_factory, on_error, in_extra, status, actual
) -> None:
    a = _FailsAfterText("a", on_error=on_error, in_extra=in_extra)
    router = router_factory(settings_factory({"a": text_section("a", str(ESTIMATE))}), FakePlugin(a))

    pieces: list[str] = []
    with pytest.raises(ProviderError) as info:
        async for piece in router.astream(TextGeneration(prompt="say hello")):
            pieces.append(piece)

    assert pieces == ["Hel"] and info.value.message == "a: connection reset"
    (entry,) = router.ledger.entries()
    assert (entry.status, entry.actual) == (status, actual)
    assert "connection reset" in entry.note
    assert router.ledger.open_reservations() == [] and router.store.stats().entries == 0
