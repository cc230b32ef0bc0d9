"""What a Replicate prediction cancelled by its deadline, or by its caller, costs: what it produced, streamed or not.

The real ``replicate`` client against :class:`fakes.FakeReplicate`. A language model billed per 1k output
tokens that is cancelled after a few tokens is charged those tokens (never the ``max_tokens`` estimate, never
nothing), the same whether its text was streamed or awaited, and whether the deadline cut the stream or the
caller stopped reading it (a ``break``, an ``async with`` left early, a cancelled task); a cancelled
prediction that produced nothing is reported to the router as ``Decimal(0)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
import replicate

from fakes import FakeReplicate
from genroute import errors
from genroute.money import quantize
from genroute.router import Router
from genroute.types import ModelEntry, TextGeneration, TextToImage
from genroute_replicate import cost
from test_replicate_helpers import TOKEN, build_settings

pytest_plugins = ["test_replicate_helpers"]  # its fixtures: fake, token, router, make_router

LLM = "meta/meta-llama-3.1-405b-instruct"  # the quality tier: $0.0095 per 1k output tokens
PRICE = Decimal("0.0095")
# 24 tokens at one a second, cancelled 2.5 s in: two tokens, half a second either side of the boundaries.
TOKENS_SECONDS = 24.0
DEADLINE = 2.5


def _slow_llm(fake: FakeReplicate) -> None:
    fake.set_predict_time(LLM, TOKENS_SECONDS)


def _request() -> TextGeneration:
    return TextGeneration(prompt="a long story", tier="quality", max_tokens=32000, deadline_seconds=DEADLINE)  # type: ignore[arg-type]


def _settled(router: Router) -> Decimal:
    (entry,) = list(router.ledger.entries())
    assert entry.status == "settled", entry
    assert entry.estimate == Decimal("0.304")  # 32,000 tokens were reserved
    assert router.ledger.open_reservations() == []
    assert entry.actual is not None
    return entry.actual


def _tokens_of_the_canceled_prediction(fake: FakeReplicate) -> int:
    prediction = fake.predictions[-1]
    assert prediction.status == "canceled" and prediction.canceled
    tokens = len(prediction.output or [])
    assert prediction.metrics["output_token_count"] == tokens > 0
    return tokens


def _streamed(fake: FakeReplicate, router: Router) -> tuple[int, Decimal]:
    _slow_llm(fake)
    pieces: list[str] = []
    with pytest.raises(errors.DeadlineExceeded):
        for piece in router.stream(_request()):
            pieces.append(piece)
    assert pieces
    tokens = _tokens_of_the_canceled_prediction(fake)
    return tokens, _settled(router)


def _awaited(fake: FakeReplicate, router: Router) -> tuple[int, Decimal]:
    _slow_llm(fake)
    with pytest.raises(errors.DeadlineExceeded):
        router.run(_request())
    tokens = _tokens_of_the_canceled_prediction(fake)
    return tokens, _settled(router)


def test_a_streamed_deadline_cancel_charges_the_tokens_produced(fake: FakeReplicate, router: Router) -> None:
    tokens, charged = _streamed(fake, router)
    assert charged == quantize(PRICE * tokens / 1000) > 0  # not the $0.304 estimate


def test_an_awaited_deadline_cancel_charges_the_tokens_produced(fake: FakeReplicate, router: Router) -> None:
    tokens, charged = _awaited(fake, router)
    assert charged == quantize(PRICE * tokens / 1000) > 0  # not $0


def test_streamed_and_awaited_cancels_of_the_same_prediction_charge_the_same(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    streamed = _streamed(fake, make_router(build_settings(tmp_path / "s", fake)))
    awaited = _awaited(fake, make_router(build_settings(tmp_path / "a", fake)))
    assert streamed == awaited == (2, quantize(PRICE * 2 / 1000))


def _entry(unit: str, price: str) -> ModelEntry:
    extra = {"est_seconds": Decimal(1), "hardware": "gpu-t4"} if unit == "compute_second" else {}
    return ModelEntry(model="acme/m", unit=unit, price=Decimal(price), **extra)  # type: ignore[arg-type]


def test_incurred_prices_what_a_canceled_prediction_produced(fake: FakeReplicate) -> None:
    client = replicate.Client(api_token=TOKEN, base_url=fake.base_url)
    fake.set_predict_time(LLM, TOKENS_SECONDS)
    fake.set_predict_time("black-forest-labs/flux-schnell", TOKENS_SECONDS)
    text = client.models.predictions.create(model=LLM, input={"prompt": "a long story"})
    image = client.models.predictions.create(model="black-forest-labs/flux-schnell", input={"prompt": "a fox"})
    asyncio.run(asyncio.sleep(1.5))
    text_json = client.predictions.cancel(text.id).dict()
    image_json = client.predictions.cancel(image.id).dict()
    produced = text_json["metrics"]["output_token_count"]
    assert produced == len(text_json["output"]) > 0
    assert cost.incurred(_entry("1k_tokens", "0.0095"), text_json) == Decimal("0.0095") * produced / 1000
    # Nothing made: known to cost nothing (not "unknown"), for every unit but compute time.
    assert image_json["output"] is None
    assert cost.incurred(_entry("output", "0.003"), image_json) == Decimal(0)
    assert cost.incurred(_entry("media_second", "0.01"), image_json) == Decimal(0)
    assert cost.incurred(_entry("audio_minute", "0.006"), image_json) == Decimal(0)
    seconds = Decimal(str(image_json["metrics"]["predict_time"]))
    assert cost.incurred(_entry("compute_second", "0.000225"), image_json) == Decimal("0.000225") * seconds
    # Outputs present are billed; a language model without metrics but with no output made nothing.
    assert cost.incurred(_entry("output", "0.003"), {"output": ["a", "b"]}) == Decimal("0.006")
    assert cost.incurred(_entry("1k_tokens", "0.0095"), {"output": None, "metrics": {}}) == Decimal(0)
    assert cost.incurred(_entry("1k_tokens", "0.0095"), {"output": ["x"], "metrics": {}}) is None
    assert cost.incurred(_entry("media_second", "0.01"), {"output": "u", "metrics": {"audio_seconds": 2.5}}) == Decimal(
        "0.025"
    )
    assert cost.incurred(None, text_json) is None


def test_a_cancel_before_any_output_reports_zero_to_the_router(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    router = make_router(build_settings(tmp_path, fake, options={"wait_seconds": 1}))  # cancelled while polling
    fake.set_predict_time("black-forest-labs/flux-schnell", TOKENS_SECONDS)
    request = TextToImage(prompt="a fox", tier="fast", provider="replicate")  # type: ignore[arg-type]

    async def cancel_midway() -> dict[str, object]:
        prepared, key = await router._prepare(request)
        (offer, *_), _ = router._candidates(prepared)
        loop = asyncio.get_running_loop()
        ctx = router._context(offer, key, 1, loop.time() + 30)
        task = asyncio.create_task(router.providers["replicate"].run(prepared, offer, ctx))
        await asyncio.sleep(1.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return ctx.extra

    extra = asyncio.run(cancel_midway())
    (prediction,) = fake.predictions
    assert prediction.status == "canceled"
    assert "incurred" in extra and extra["incurred"] == Decimal(0)  # known: nothing billed, not "unknown"


def test_a_deadline_inside_the_held_create_charges_the_tokens_produced(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    router = make_router(build_settings(tmp_path, fake, options={"wait_seconds": 10}))
    fake.set_predict_time(LLM, 3.0)  # eight tokens a second; the create is held 1 s, past the 0.8 s deadline
    request = TextGeneration(prompt="a long story", tier="quality", max_tokens=32000, deadline_seconds=0.8)  # type: ignore[arg-type]
    with pytest.raises(errors.DeadlineExceeded):
        router.run(request)
    tokens = _tokens_of_the_canceled_prediction(fake)
    assert _settled(router) == quantize(PRICE * tokens / 1000) > 0


# ------------------------------------------------------------------------- a stream the caller stops reading

CANCEL = "/v1/predictions/*/cancel"
STOP_AFTER = 2  # pieces read before the caller stops
# 24 tokens over 4.8 s, five a second: the caller's two pieces come within about half a second, far from the end.
STOPPED_SECONDS = 4.8


def _stoppable_request() -> TextGeneration:
    return TextGeneration(prompt="a long story", tier="quality", max_tokens=32000)  # type: ignore[arg-type]


def _settled_at_the_tokens_produced(fake: FakeReplicate, router: Router, pieces: list[str]) -> None:
    """The prediction was cancelled once, and the reservation settled at its tokens, not the $0.304 estimate."""
    assert len(pieces) == STOP_AFTER
    assert fake.count("POST", CANCEL) == 1
    tokens = _tokens_of_the_canceled_prediction(fake)
    assert STOP_AFTER <= tokens < 24  # what the model made by the cancel: the pieces read, perhaps one or two more
    charged = _settled(router)
    assert charged == quantize(PRICE * tokens / 1000) > 0
    (entry,) = list(router.ledger.entries())
    assert "abandoned" in entry.note and "as the provider reported" in entry.note


def test_a_sync_stream_the_caller_stops_reading_is_settled_at_the_tokens_produced(
    fake: FakeReplicate, router: Router
) -> None:
    fake.set_predict_time(LLM, STOPPED_SECONDS)
    pieces: list[str] = []
    stream = router.stream(_stoppable_request())
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == STOP_AFTER:
            break

    assert stream.result is None
    _settled_at_the_tokens_produced(fake, router, pieces)


async def test_an_async_stream_left_early_is_settled_at_the_tokens_produced(
    fake: FakeReplicate, router: Router
) -> None:
    fake.set_predict_time(LLM, STOPPED_SECONDS)
    pieces: list[str] = []
    async with router.astream(_stoppable_request()) as stream:
        async for piece in stream:
            pieces.append(piece)
            if len(pieces) == STOP_AFTER:
                break

    assert stream.result is None
    _settled_at_the_tokens_produced(fake, router, pieces)


async def test_a_cancelled_async_stream_is_settled_at_the_tokens_produced(fake: FakeReplicate, router: Router) -> None:
    fake.set_predict_time(LLM, STOPPED_SECONDS)
    pieces: list[str] = []
    read = asyncio.Event()

    async def consume() -> None:
        async with router.astream(_stoppable_request()) as stream:
            async for piece in stream:
                pieces.append(piece)
                if len(pieces) == STOP_AFTER:
                    read.set()
                    await asyncio.Event().wait()  # the caller's own work, until it is cancelled

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(read.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    _settled_at_the_tokens_produced(fake, router, pieces)
