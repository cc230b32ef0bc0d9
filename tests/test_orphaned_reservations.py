"""A process killed mid-call leaves its reservation open: the next run of the same request learns of it.

The ledger records the process behind each open reservation; a reservation of the same request key on the
same provider whose process died is reported as ``Reservation.orphaned_since``, and the Replicate provider
then looks for that process's prediction and adopts it instead of creating a second paid one.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import genroute.ledger as ledger_module
import genroute_mock.plugin as mock_plugin
import genroute_replicate.plugin as replicate_plugin
from fakes import FakeReplicate
from genroute import errors
from genroute.config import BudgetLimit, Settings
from genroute.errors import BudgetExceeded
from genroute.keys import request_key
from genroute.ledger import Ledger, Reservation
from genroute.plugins import make_plugin_manager
from genroute.router import Router
from genroute.types import Result, TextGeneration, TextToImage
from test_replicate_helpers import TOKEN, build_settings, creates

pytest_plugins = ["test_replicate_helpers"]  # its fixtures: token, make_router

PRICE = Decimal("0.003")  # plugins.toml: replicate text-to-image fast (flux-schnell), per output
D1 = Decimal("0.01")


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    return child.pid


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger") as opened:
        yield opened


def reserve_as(
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    owner: tuple[int, str] | None,
    *,
    key: str = "k1",
    provider: str = "replicate",
) -> Reservation:
    """A reservation recorded as made by ``owner`` (None: by this process)."""
    with monkeypatch.context() as patch:
        if owner is not None:
            patch.setattr(ledger_module, "_owner", lambda: owner)
        return ledger.reserve(D1, scopes=["global"], provider=provider, model="m", task="t", request_key=key)


# -- the ledger -----------------------------------------------------------------------------------------------
def test_a_dead_process_s_reservation_is_reported_for_the_same_key_and_provider(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = reserve_as(ledger, monkeypatch, (dead_pid(), ledger_module._host()))
    assert dead.orphaned_since is None
    again = reserve_as(ledger, monkeypatch, None)
    assert again.orphaned_since == dead.created_at
    assert ledger.reservation(again.id) == dataclasses.replace(again, orphaned_since=None)  # nothing stored


def test_the_dead_reservation_is_taken_over_so_its_work_is_adopted_once(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = reserve_as(ledger, monkeypatch, (dead_pid(), ledger_module._host()))
    again = reserve_as(ledger, monkeypatch, None)
    assert again.orphaned_since == dead.created_at
    assert [r.id for r in ledger.open_reservations()] == [again.id]  # one reservation holds the money now
    (closed,) = [e for e in ledger.entries() if e.id == dead.id]
    assert closed.status == "reclaimed" and closed.actual == 0 and again.id in closed.note
    (usage,) = [u for u in ledger.usage() if u.scope == "global" and u.period == "total"]
    assert usage.reserved == D1
    # A second re-run of the same request finds nothing left to adopt: it would start (and pay for) new work.
    assert reserve_as(ledger, monkeypatch, None).orphaned_since is None
    # Should the dead process not be dead after all, its late settlement is still recorded.
    ledger.settle(dead, D1)
    assert [e.status for e in ledger.entries() if e.id == dead.id] == ["reclaimed", "settled"]


def test_a_refused_reservation_takes_nothing_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limited = Ledger(tmp_path / "limited", [BudgetLimit(scope="global", period="total", usd=D1 + D1 / 2)])
    with limited:
        dead = reserve_as(limited, monkeypatch, (dead_pid(), ledger_module._host()))
        with pytest.raises(BudgetExceeded):
            reserve_as(limited, monkeypatch, None)
        assert [r.id for r in limited.open_reservations()] == [dead.id]  # left for its expiry, as before


def test_the_earliest_dead_reservation_is_reported(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    first = reserve_as(ledger, monkeypatch, (dead_pid(), ledger_module._host()))
    time.sleep(0.01)
    # A second process took the first one's work over, then died too: it may have adopted the first one's
    # prediction, so whoever comes next must look back to the first one's time, not to the second's.
    second = reserve_as(ledger, monkeypatch, (dead_pid(), ledger_module._host()))
    assert second.orphaned_since == first.created_at and [r.id for r in ledger.open_reservations()] == [second.id]
    assert reserve_as(ledger, monkeypatch, None).orphaned_since == first.created_at


def test_nothing_is_reported_for_another_key_provider_or_an_empty_key(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    reserve_as(ledger, monkeypatch, (dead_pid(), ledger_module._host()))
    assert reserve_as(ledger, monkeypatch, None, key="k2").orphaned_since is None
    assert reserve_as(ledger, monkeypatch, None, provider="huggingface").orphaned_since is None
    reserve_as(ledger, monkeypatch, (dead_pid(), ledger_module._host()), key="")
    assert reserve_as(ledger, monkeypatch, None, key="").orphaned_since is None


def test_live_processes_and_other_hosts_are_never_orphans(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    # This process (another thread, another request of a batch): the provider's own records cover it.
    reserve_as(ledger, monkeypatch, None)
    assert reserve_as(ledger, monkeypatch, None).orphaned_since is None
    # Another host (or boot, or pid namespace): its pid means nothing here, whatever it names.
    reserve_as(ledger, monkeypatch, (dead_pid(), "another-host"), key="k2")
    assert reserve_as(ledger, monkeypatch, None, key="k2").orphaned_since is None
    # A reservation meant to outlive its process (a webhook job) has no owner.
    with monkeypatch.context() as patch:
        patch.setattr(ledger_module, "_owner", lambda: (dead_pid(), ledger_module._host()))
        ledger.reserve(D1, scopes=["global"], provider="replicate", model="m", task="t", request_key="k3",
                       outlives_process=True)  # fmt: skip
    assert reserve_as(ledger, monkeypatch, None, key="k3").orphaned_since is None


def test_a_live_other_process_blocks_adoption_even_beside_a_dead_one(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two live workers running one request never take over each other's work: with a live holder besides the
    dead one, whatever was started since could be the live one's, so nothing is reported."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        reserve_as(ledger, monkeypatch, (sleeper.pid, ledger_module._host()))
        assert reserve_as(ledger, monkeypatch, None).orphaned_since is None  # the control: nothing adopted
        reserve_as(ledger, monkeypatch, (dead_pid(), ledger_module._host()))
        assert reserve_as(ledger, monkeypatch, None).orphaned_since is None
    finally:
        sleeper.kill()
        sleeper.wait(30)
    # Once that worker is dead too, the earliest of the two is reported.
    assert reserve_as(ledger, monkeypatch, None).orphaned_since is not None


def test_a_closed_dead_reservation_is_no_longer_reported(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    owner = (dead_pid(), ledger_module._host())
    settled = reserve_as(ledger, monkeypatch, owner, key="settled")
    ledger.settle(settled, D1)
    assert reserve_as(ledger, monkeypatch, None, key="settled").orphaned_since is None
    released = reserve_as(ledger, monkeypatch, owner, key="released")
    ledger.release(released)
    assert reserve_as(ledger, monkeypatch, None, key="released").orphaned_since is None


def test_reservations_packed_without_an_owner_still_read() -> None:
    packed = (10, 2.0, 1.0, ("global",), "replicate", "m", "t", "k")  # as written before owners were recorded
    rec = ledger_module._unpack(packed)
    assert rec["owner"] is None and rec["request_key"] == "k"
    assert ledger_module._owner_state(rec["owner"], ledger_module._owner()) == "live"


def test_owner_states() -> None:
    me = ledger_module._owner()
    host = ledger_module._host()
    assert ledger_module._owner_state(me, me) == "mine"
    assert ledger_module._owner_state((dead_pid(), host), me) == "dead"
    assert ledger_module._owner_state((dead_pid(), "elsewhere"), me) == "live"
    assert ledger_module._owner_state((os.getppid(), host), me) == "live"
    assert ledger_module._owner_state((0, host), me) == "live"


# -- end to end: kill -9 after the create, then the same request in another process ------------------------------
def image() -> TextToImage:
    return TextToImage(prompt="a lighthouse at dusk, killed mid-prediction", tier="fast")


def run_and_get_killed(settings: Settings) -> None:
    """In a spawned child: run the request (it is killed with SIGKILL while the prediction runs)."""
    os.environ["REPLICATE_API_TOKEN"] = TOKEN
    pm = make_plugin_manager(entry_points=False, plugins=[replicate_plugin, mock_plugin])
    with Router(settings, plugin_manager=pm) as router:
        router.run(image())


@pytest.fixture
def slow_fake() -> Iterator[FakeReplicate]:
    with FakeReplicate(prediction_seconds=4.0, token=TOKEN, catalogue=True) as server:
        yield server
    assert server.errors == [], "the fake raised:\n" + "\n".join(server.errors)


@pytest.mark.slow
def test_a_prediction_of_a_killed_process_is_adopted_not_created_again(
    slow_fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    settings = build_settings(tmp_path, slow_fake, providers=("replicate",), routing={"deadline_seconds": 60})
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=run_and_get_killed, args=(settings,), daemon=True)
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not slow_fake.predictions and child.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert slow_fake.predictions, f"the child made no prediction (exit code {child.exitcode})"
        child.kill()  # SIGKILL: no finally, no atexit
    finally:
        if child.is_alive():
            child.kill()
        child.join(30)
    assert child.exitcode == -9
    (first,) = slow_fake.predictions
    assert first.status not in ("succeeded", "failed", "canceled"), "the prediction ended before the kill"

    router = make_router(settings)
    with Ledger(settings.ledger.path) as peek:
        (orphan,) = peek.open_reservations()
    result = router.run(image())

    assert isinstance(result, Result) and result.provider == "replicate"
    assert creates(slow_fake) == 1 and len(slow_fake.predictions) == 1, "a second prediction was created"
    assert result.job_id == first.id and result.actual_cost == PRICE and result.artifacts
    ledger = router.ledger
    mine = [e for e in ledger.entries() if e.request_key == orphan.request_key]
    # The dead process's reservation was taken over (closed, nothing spent); the adopted prediction is
    # settled once, by the reservation that took it over.
    assert [(e.id, e.status, e.actual, e.job_id) for e in mine] == [
        (orphan.id, "reclaimed", 0, None),
        (mine[1].id, "settled", PRICE, first.id),
    ]
    assert ledger.open_reservations() == []

    # Running it again past the store finds nothing to adopt: a new prediction, paid once more, as asked.
    again = router.run(image().model_copy(update={"cache": "bypass"}))
    assert again.job_id not in (None, first.id) and creates(slow_fake) == 2
    paid = [(e.status, e.job_id) for e in ledger.entries() if e.request_key == orphan.request_key][1:]
    assert paid == [("settled", first.id), ("settled", again.job_id)]


def run_to_the_end(settings: Settings, results: Any) -> None:
    """In a spawned child: run the request and report the prediction that served it."""
    os.environ["REPLICATE_API_TOKEN"] = TOKEN
    pm = make_plugin_manager(entry_points=False, plugins=[replicate_plugin, mock_plugin])
    with Router(settings, plugin_manager=pm) as router:
        results.put(router.run(image()).job_id)


@pytest.mark.slow
def test_a_live_process_s_prediction_is_never_adopted(
    slow_fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    """The control: the same request running in another live process is not an orphan. Asked afresh (cache
    refresh) it gets (and pays for) its own prediction, neither takes over the other's; asked with cache use it
    waits for the other's result instead (tests/test_cross_process_sharing.py)."""
    slow_fake.prediction_seconds = 2.0
    settings = build_settings(tmp_path, slow_fake, providers=("replicate",), routing={"deadline_seconds": 60})
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=run_to_the_end, args=(settings, results), daemon=True)
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not slow_fake.predictions and child.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        (first,) = slow_fake.predictions
        result = make_router(settings).run(image().model_copy(update={"cache": "refresh"}))
        theirs = results.get(timeout=60)
    finally:
        child.join(60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert creates(slow_fake) == 2 and theirs == first.id and result.job_id not in (None, first.id)
    with Ledger(settings.ledger.path) as ledger:
        assert sorted(e.status for e in ledger.entries()) == ["settled", "settled"]
        assert ledger.open_reservations() == []


# -- the Replicate provider, in one process: a dead owner faked in the ledger ------------------------------------
def fake_dead_reservation(settings: Settings, request: Any, monkeypatch: pytest.MonkeyPatch) -> Reservation:
    """What a process killed while running ``request`` on Replicate leaves in the ledger."""
    with Ledger(settings.ledger.path) as ledger:
        return reserve_as(ledger, monkeypatch, (dead_pid(), ledger_module._host()), key=request_key(request))


@pytest.fixture
def fake(slow_fake: FakeReplicate) -> FakeReplicate:
    slow_fake.prediction_seconds = 0.02
    return slow_fake


def test_a_run_and_a_stream_adopt_the_dead_process_s_finished_prediction(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = build_settings(tmp_path, fake, providers=("replicate",))
    for request in (image(), TextGeneration(prompt="adopt me", tier="fast")):
        if isinstance(request, TextGeneration):
            first_stream = make_router(settings).stream(request)
            assert list(first_stream) and first_stream.result is not None
            first_id = first_stream.result.job_id
        else:
            first_id = make_router(settings).run(request).job_id
        made = creates(fake)
        fake_dead_reservation(settings, request, monkeypatch)
        again = make_router(settings)  # a new process, as far as the provider's records go
        if isinstance(request, TextGeneration):
            stream = again.stream(request.model_copy(update={"cache": "bypass"}))
            text = "".join(stream)
            assert stream.result is not None and text == stream.result.text and stream.result.job_id == first_id
        else:
            assert again.run(request.model_copy(update={"cache": "bypass"})).job_id == first_id
        assert creates(fake) == made, "a second prediction was created"


def test_when_no_listing_succeeds_nothing_is_created(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = build_settings(tmp_path, fake, providers=("replicate",))
    fake_dead_reservation(settings, image(), monkeypatch)
    fake.faults.add("GET /v1/predictions", 500)
    with pytest.raises(errors.NoRouteAvailable) as failure:
        make_router(settings).run(image())
    assert "a process that died" in "\n".join(r.reason for r in failure.value.rejections)
    assert creates(fake) == 0


def test_with_no_prediction_to_find_the_request_is_created_once(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dead process died before its create reached Replicate: one listing, then one create."""
    settings = build_settings(tmp_path, fake, providers=("replicate",))
    fake_dead_reservation(settings, image(), monkeypatch)
    result = make_router(settings).run(image())
    assert creates(fake) == 1 and result.job_id == fake.predictions[0].id
    assert fake.count("GET", "/v1/predictions") >= 1
