"""One Router shared by threads (a Flask/Django/gunicorn thread worker): the sync facade runs each thread's calls
on that thread's own event loop; identical requests from two threads are paid once; close() closes every loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import FakePlugin, FakeProvider, mock_section, section
from genroute.errors import GenrouteError, ProviderError
from genroute.router import Router
from genroute.types import TextGeneration, TextToImage


def in_threads(count: int, call: Callable[[int], Any]) -> list[Any]:
    """``call(i)`` on ``count`` threads started together; what each returned or raised, in order."""
    outcomes: list[Any] = [None] * count
    barrier = threading.Barrier(count)

    def work(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = call(i)
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


@pytest.fixture
def slow_router(settings_factory, router_factory) -> Callable[..., Router]:
    def build(sleep: float = 0.3, **kwargs: Any) -> Router:
        fake = FakeProvider("fake", sleep=sleep, **kwargs)
        router = router_factory(settings_factory({"fake": section("fake")}), FakePlugin(fake))
        router.fake = fake  # type: ignore[attr-defined]
        return router

    return build


def test_threads_sharing_a_router_each_get_their_result_and_pay_once(slow_router) -> None:
    router = slow_router()
    outcomes = in_threads(4, lambda i: router.run(TextToImage(prompt=f"t3 {i}", tier="balanced")))
    assert [type(o).__name__ for o in outcomes] == ["Result"] * 4
    assert {o.request_key for o in outcomes} == {o.request_key for o in outcomes}
    assert len({o.request_key for o in outcomes}) == 4
    assert len(router.fake.calls) == 4
    entries = list(router.ledger.entries())
    assert sorted(e.status for e in entries) == ["settled"] * 4
    assert sum(e.actual for e in entries) == Decimal("0.08")
    assert router.ledger.open_reservations() == []


def test_the_mock_with_latency_serves_threads_at_once(settings_factory, router_factory) -> None:
    """The testers' case: four threads calling run() on one router over the mock (0.3 s latency) at once."""
    config = settings_factory({"mock": mock_section(latency_seconds=0.3)}, profiles={"offline": ["mock"]})
    router = router_factory(config, entry_points=True)
    started = time.monotonic()
    outcomes = in_threads(4, lambda i: router.run(TextToImage(prompt=f"t3 {i}", tier="fast")))
    assert [type(o).__name__ for o in outcomes] == ["Result"] * 4, outcomes
    assert time.monotonic() - started < 1.1  # at once, each on its own loop, not one after the other
    entries = list(router.ledger.entries())
    assert [e.status for e in entries] == ["settled"] * 4
    assert router.ledger.open_reservations() == []


def test_identical_requests_from_two_threads_are_paid_once(slow_router) -> None:
    router = slow_router()
    outcomes = in_threads(2, lambda i: router.run(TextToImage(prompt="same", tier="balanced")))
    assert [type(o).__name__ for o in outcomes] == ["Result"] * 2, outcomes
    assert len(router.fake.calls) == 1
    assert sorted(o.cached for o in outcomes) == [False, True]
    assert sorted(o.actual_cost for o in outcomes) == [Decimal(0), Decimal("0.02")]
    assert sorted(e.status for e in router.ledger.entries()) == ["saving", "settled"]
    assert router.ledger.open_reservations() == []


def test_identical_requests_bypassing_the_cache_are_each_run(slow_router) -> None:
    router = slow_router()
    request = TextToImage(prompt="same", tier="balanced", cache="bypass")
    outcomes = in_threads(3, lambda i: router.run(request))
    assert [o.cached for o in outcomes] == [False] * 3
    assert len(router.fake.calls) == 3


def test_a_waiting_thread_runs_the_request_itself_when_the_first_one_failed(slow_router) -> None:
    router = slow_router(errors=[ProviderError("down", provider="fake", retryable=False)])
    outcomes = in_threads(2, lambda i: router.run(TextToImage(prompt="same", tier="balanced")))
    assert sorted(type(o).__name__ for o in outcomes) == ["NoRouteAvailable", "Result"], outcomes
    assert len(router.fake.calls) == 2
    assert router.ledger.open_reservations() == []


def test_batches_and_streams_on_threads_at_once(settings_factory, router_factory) -> None:
    fake = FakeProvider("fake", sleep=0.05, stream_pieces=["a", "b", "c"])
    router = router_factory(settings_factory({"fake": section("fake", task="text-generation")}), FakePlugin(fake))

    def work(i: int) -> Any:
        if i % 2:
            return "".join(router.stream(TextGeneration(prompt=f"s{i}", tier="balanced")))
        return router.batch([TextGeneration(prompt=f"b{i} {j}", tier="balanced") for j in range(3)])

    outcomes = in_threads(4, work)
    assert outcomes[1] == outcomes[3] == "abc"
    assert all(type(r).__name__ == "Result" for i in (0, 2) for r in outcomes[i]), outcomes
    assert sorted(e.status for e in router.ledger.entries()) == ["settled"] * 8
    assert router.ledger.open_reservations() == []


def test_close_closes_every_threads_event_loop(slow_router) -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    router = slow_router(sleep=lambda request: loops.append(asyncio.get_running_loop()) or 0.01)
    returned, closed = threading.Semaphore(0), threading.Event()

    def call_then_stay(i: int) -> None:  # the thread outlives its call (a pooled worker thread), idle
        router.run(TextToImage(prompt=f"c{i}", tier="balanced"))
        returned.release()
        closed.wait(timeout=10)

    threads = [threading.Thread(target=call_then_stay, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert returned.acquire(timeout=10)
    router.run(TextToImage(prompt="main", tier="balanced"))
    assert len(set(loops)) == 4 and not any(loop.is_closed() for loop in loops)
    router.close()
    closed.set()
    for thread in threads:
        thread.join(timeout=10)
    assert all(loop.is_closed() for loop in loops)
    assert router.fake.closed
    assert len(router._loops) == 0


def test_a_finished_threads_loop_is_closed_when_a_new_thread_makes_its_first_call(slow_router) -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    router = slow_router(sleep=lambda request: loops.append(asyncio.get_running_loop()) or 0.0)
    in_threads(1, lambda i: router.run(TextToImage(prompt="first", tier="balanced")))
    in_threads(1, lambda i: router.run(TextToImage(prompt="second", tier="balanced")))
    assert len(loops) == 2
    assert loops[0].is_closed() and not loops[1].is_closed()
    assert len(router._loops) == 1


def test_close_while_another_thread_is_inside_a_call_refuses_and_closes_nothing(slow_router) -> None:
    router = slow_router(sleep=0.3)
    worker = threading.Thread(target=lambda: router.run(TextToImage(prompt="busy", tier="balanced")))
    worker.start()
    deadline = time.monotonic() + 5
    while not router.fake.calls and time.monotonic() < deadline:
        time.sleep(0.005)
    with pytest.raises(GenrouteError, match="still running a call") as caught:
        router.close()
    assert "join the threads" in caught.value.hint
    worker.join(timeout=5)
    assert [e.status for e in router.ledger.entries()] == ["settled"]  # the call finished, the ledger still open
    router.close()


def test_a_router_can_be_used_again_after_close(slow_router) -> None:
    router = slow_router(sleep=0.0)
    router.run(TextToImage(prompt="before", tier="balanced"))
    router.close()
    assert router.run(TextToImage(prompt="after", tier="balanced")).provider == "fake"


def test_a_sync_stream_still_open_when_its_router_closes_is_closed_with_it(settings_factory, router_factory) -> None:
    fake = FakeProvider("fake", stream_pieces=["a", "b", "c"])
    router = router_factory(settings_factory({"fake": section("fake", task="text-generation")}), FakePlugin(fake))
    pieces = iter(router.stream(TextGeneration(prompt="left open", tier="balanced")))
    assert next(pieces) == "a"

    router.close()  # closes the thread's loop, and with it the stream: its reservation is closed
    pieces.close()  # the caller's loop ends later: nothing left to do, nothing raised

    assert router.ledger.open_reservations() == []
    assert [e.status for e in router.ledger.entries()] == ["settled"]


def test_thread_pools_made_one_after_another_do_not_pile_up_open_files(settings_factory, router_factory) -> None:
    """Each thread opens its own ledger and store connections; once its thread has ended they must be let go
    (Python 3.11 frees an unclosed SQLite connection only in a garbage collection), or a server making a pool
    per batch runs out of file descriptors."""
    router = router_factory(
        settings_factory({"mock": mock_section()}, profiles={"offline": ["mock"]}), entry_points=True
    )

    def open_files() -> int:
        return len(list(Path("/proc/self/fd").iterdir()))

    def one_round(n: int) -> None:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: router.run(TextToImage(prompt=f"pool {n}-{i}", tier="fast")), range(4)))

    one_round(0)
    one_round(1)
    before = open_files()
    for n in range(2, 26):
        one_round(n)
    grown = open_files() - before
    assert grown < 40, grown  # 24 rounds × 4 threads, each holding database files if kept
