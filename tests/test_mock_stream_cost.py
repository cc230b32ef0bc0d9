"""What the mock's text stream costs when it does not run to its end: the words it produced, not the estimate."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from conftest import mock_section
from genroute.errors import DeadlineExceeded
from genroute.ledger import LedgerEntry
from genroute.money import quantize
from genroute.router import Router
from genroute.types import TextGeneration

# The mock's catalogue price for balanced text generation, per 1k tokens (the repository's plugins.toml).
PRICE = Decimal(mock_section()["models"]["text-generation"]["balanced"]["price"])
REQUEST = TextGeneration(prompt="tell me about rivers and the cities beside them", max_tokens=512)


def price_of(pieces: list[str]) -> Decimal:
    """What the mock's catalogue asks for these words: about four tokens for every three words."""
    tokens = max(1, round(len("".join(pieces).split()) * 4 / 3))
    return quantize(PRICE * tokens / 1000)


@pytest.fixture
def make_router(settings_factory, router_factory) -> Callable[..., Router]:  # type: ignore[no-untyped-def]
    def build(**options: Any) -> Router:
        return router_factory(settings_factory({"mock": mock_section(**options)}), entry_points=True)

    return build


def closed_entry(router: Router) -> LedgerEntry:
    assert router.ledger.open_reservations() == []
    (entry,) = [e for e in router.ledger.entries() if e.status != "saving"]
    return entry


def test_a_stream_the_caller_stops_reading_is_settled_at_the_words_produced(make_router) -> None:  # type: ignore[no-untyped-def]
    router = make_router()
    pieces: list[str] = []
    for piece in router.stream(REQUEST):
        pieces.append(piece)
        if len(pieces) == 3:
            break

    entry = closed_entry(router)
    assert entry.status == "settled" and "abandoned" in entry.note
    assert entry.actual == price_of(pieces) > 0  # 3 words, 4 tokens
    assert entry.actual < entry.estimate == quantize(PRICE * 512 / 1000)  # not the max_tokens estimate


async def test_a_cancelled_stream_is_settled_at_the_words_produced(make_router) -> None:  # type: ignore[no-untyped-def]
    router = make_router()
    pieces: list[str] = []
    two_read = asyncio.Event()

    async def consume() -> None:
        async with router.astream(REQUEST) as stream:
            async for piece in stream:
                pieces.append(piece)
                if len(pieces) == 2:
                    two_read.set()
                    await asyncio.Event().wait()  # the caller's own work, until it is cancelled

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(two_read.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    entry = closed_entry(router)
    assert entry.status == "settled"
    assert entry.actual == price_of(pieces) > 0


def test_a_stream_cut_by_its_deadline_is_settled_at_the_words_produced(make_router) -> None:  # type: ignore[no-untyped-def]
    router = make_router(token_latency_seconds=0.3)
    pieces: list[str] = []
    with pytest.raises(DeadlineExceeded):
        for piece in router.stream(REQUEST.model_copy(update={"deadline_seconds": 0.75})):
            pieces.append(piece)

    assert pieces  # the deadline fell between words, after the first ones
    entry = closed_entry(router)
    assert entry.status == "settled"
    assert entry.actual == price_of(pieces)


def test_a_finished_stream_is_still_priced_on_its_whole_answer(make_router) -> None:  # type: ignore[no-untyped-def]
    router = make_router()
    stream = router.stream(REQUEST)
    pieces = list(stream)

    assert stream.result is not None and stream.result.text == "".join(pieces)
    assert stream.result.actual_cost == price_of(pieces) == closed_entry(router).actual
