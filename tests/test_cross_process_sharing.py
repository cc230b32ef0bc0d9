"""Workers sharing one ledger and store pay once for a request they ask at the same time.

A process about to serve a request (cache ``use``) that another live process is already serving waits for
that process and takes the result from the store; if that process fails, dies or is cut short, it serves the
request itself. Processes here are real (spawned) or, for the failure paths, a sleeping child process stands
in as the other worker's owner.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import genroute.ledger as ledger_module
from conftest import mock_section
from genroute.config import Settings, settings_from_dict
from genroute.errors import DeadlineExceeded
from genroute.router import Router
from genroute.types import TextToImage

PROCESSES = 3
PROMPTS = [f"shared request {i}" for i in range(5)]


def _raw(tmp_path: Path, *, latency: float) -> dict[str, Any]:
    return {
        "default_profile": "test",
        "profiles": {"test": {"providers": ["mock"]}},
        "providers": {"mock": mock_section(latency_seconds=latency)},
        "budget": {"limits": []},
        "ledger": {"path": str(tmp_path / "ledger")},
        "store": {"path": str(tmp_path / "store")},
        "jobs": {"path": str(tmp_path / "jobs")},
    }


def _worker(raw: dict[str, Any], start: Any, results: Any) -> None:
    with Router(settings_from_dict(raw, env={})) as router:
        start.wait(60)  # every worker asks at the same moment
        outcomes = router.batch([TextToImage(prompt=p, tier="fast") for p in PROMPTS], concurrency=len(PROMPTS))
    results.put([(o.request_key, o.cached, str(o.actual_cost)) if hasattr(o, "cached") else repr(o) for o in outcomes])


@pytest.mark.slow
def test_workers_asking_the_same_requests_at_once_pay_once(tmp_path: Path) -> None:
    raw = _raw(tmp_path, latency=0.5)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(raw, start, results), daemon=True) for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    answers = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0

    for answer in answers:
        assert all(isinstance(item, tuple) for item in answer), answer  # every worker got every result
    served = [(key, cost) for answer in answers for key, cached, cost in answer if not cached]
    assert sorted(key for key, _ in served) == sorted({key for key, _, _ in answers[0]})  # each made once
    with Router(settings_from_dict(raw, env={})) as router:
        settled = [e for e in router.ledger.entries() if e.status == "settled"]
        assert len(settled) == len(PROMPTS)
        assert sum((e.actual for e in settled), Decimal(0)) == sum((Decimal(c) for _, c in served), Decimal(0))
        assert router.ledger.open_reservations() == []


@pytest.fixture
def other_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Make the next reservations belong to a live child process: the "other worker" holding the request."""
    children: list[subprocess.Popen[bytes]] = []
    real_owner = ledger_module._owner

    def become() -> subprocess.Popen[bytes]:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        children.append(child)
        monkeypatch.setattr(ledger_module, "_owner", lambda: (child.pid, real_owner()[1]))
        return child

    yield become
    for child in children:
        child.kill()
        child.wait()


def _settings(tmp_path: Path, **routing: Any) -> Settings:
    raw = _raw(tmp_path, latency=0)
    raw["routing"] = {"backoff_initial_seconds": 0.01, **routing}
    return settings_from_dict(raw, env={})


def _hold(router: Router, request: TextToImage) -> Any:
    """Reserve ``request`` the way a worker serving it does (a shared reservation of its key)."""
    model = router.parse(request)
    (offer, *_) = router.plan(model).candidates
    key = router.plan(model).request_key
    return router._reserve(offer, key, 60, shared=True)


def test_a_waiting_worker_serves_the_request_itself_when_the_other_gives_up(
    tmp_path: Path, other_worker: Callable[[], subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    request = TextToImage(prompt="held elsewhere, then released", tier="fast")
    with Router(_settings(tmp_path)) as router:
        other_worker()
        held = _hold(router, request)
        monkeypatch.undo()  # this process is itself again

        async def scenario() -> tuple[Any, float]:
            async def other_fails() -> None:
                await asyncio.sleep(0.4)
                router.ledger.release(held, note="the other worker failed")

            releasing = asyncio.create_task(other_fails())
            began = time.perf_counter()
            result = await router.arun(request)
            await releasing
            return result, time.perf_counter() - began

        result, waited = asyncio.run(scenario())
        assert waited >= 0.4  # it waited instead of paying beside the other worker
        assert not result.cached and result.actual_cost > 0  # then served it itself
        statuses = [e.status for e in router.ledger.entries()]
        assert statuses == ["released", "settled"]


def test_a_waiting_worker_takes_the_result_the_other_stored(
    tmp_path: Path, other_worker: Callable[[], subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    request = TextToImage(prompt="held elsewhere, then stored", tier="fast")
    with Router(_settings(tmp_path)) as router, Router(_settings(tmp_path)) as other:
        other_worker()
        held = _hold(router, request)
        monkeypatch.undo()

        async def scenario() -> Any:
            async def other_succeeds() -> None:
                await asyncio.sleep(0.3)
                made = await other.arun(request.model_copy(update={"cache": "refresh"}))  # stores it
                other.ledger.release(held)
                assert not made.cached

            finishing = asyncio.create_task(other_succeeds())
            result = await router.arun(request)
            await finishing
            return result

        result = asyncio.run(scenario())
        assert result.cached and result.actual_cost == 0
        assert [e.status for e in router.ledger.entries()] == ["settled", "released", "saving"]  # paid once


def test_a_waiting_worker_goes_on_when_the_other_process_dies(
    tmp_path: Path, other_worker: Callable[[], subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    request = TextToImage(prompt="held by a process that dies", tier="fast")
    with Router(_settings(tmp_path)) as router:
        child = other_worker()
        _hold(router, request)
        monkeypatch.undo()

        async def scenario() -> Any:
            async def die() -> None:
                await asyncio.sleep(0.3)
                child.kill()
                child.wait()

            dying = asyncio.create_task(die())
            result = await router.arun(request)
            await dying
            return result

        result = asyncio.run(scenario())
        assert not result.cached
        statuses = [e.status for e in router.ledger.entries()]
        assert statuses == ["reclaimed", "settled"]  # the dead worker's reservation taken over, paid once
        assert router.ledger.open_reservations() == []


def test_waiting_for_another_worker_ends_at_the_deadline_naming_it(
    tmp_path: Path, other_worker: Callable[[], subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    request = TextToImage(prompt="held forever", tier="fast", deadline_seconds=0.5)
    with Router(_settings(tmp_path)) as router:
        child = other_worker()
        _hold(router, request)
        monkeypatch.undo()
        began = time.perf_counter()
        with pytest.raises(DeadlineExceeded) as caught:
            router.run(request)
        assert time.perf_counter() - began < 5
        assert f"another process: pid {child.pid}" in str(caught.value)
        assert [e.status for e in router.ledger.entries()] == []  # nothing paid here


@pytest.mark.parametrize("cache", ["refresh", "bypass"])
def test_refresh_and_bypass_do_not_wait_for_another_worker(
    tmp_path: Path, other_worker: Callable[[], subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch, cache: str
) -> None:
    request = TextToImage(prompt="held, asked fresh", tier="fast")
    with Router(_settings(tmp_path)) as router:
        other_worker()
        _hold(router, request)
        monkeypatch.undo()
        result = router.run(request.model_copy(update={"cache": cache}))
        assert not result.cached and result.actual_cost > 0
