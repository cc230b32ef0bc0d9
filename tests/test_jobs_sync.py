"""``genroute jobs sync`` with Replicate: a job whose webhook never arrived is completed by asking for its prediction.

The real ``replicate`` client talks to :class:`fakes.FakeReplicate` on 127.0.0.1: submissions ask for a webhook at
the discard port, so every delivery fails (the receiver was down longer than Replicate retries), and the sync reads
``GET /v1/predictions/{id}``. The receiver app then gets the fake's recorded delivery, as a late redelivery.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from fakes import FakeReplicate
from genroute.config import load_settings
from genroute.jobs import Job
from genroute.money import quantize
from genroute.router import Router
from genroute.types import TextToImage, Upscale
from genroute_replicate.webhooks import create_app
from test_replicate_cli import _config, _environ
from test_replicate_helpers import TOKEN, build_settings, png

UNREACHABLE = "http://127.0.0.1:9/hooks"  # the discard port: every delivery of the fake fails
pytest_plugins = ["test_replicate_helpers"]  # its fixtures: fake, token, make_router


@pytest.fixture
def routers(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> tuple[Router, Router]:
    """(submitter, receiver): two Routers over the same directories, as two processes would be."""
    settings = build_settings(tmp_path, fake)
    return make_router(settings), make_router(settings)


def _undelivered(fake: FakeReplicate, job: Job) -> None:
    """Wait until the fake has given up delivering ``job``'s completion (every attempt failed)."""
    deadline = time.monotonic() + 10
    while True:
        tried = [d for d in fake.deliveries if d.prediction_id == job.remote_id and d.event == "completed"]
        if len(tried) >= fake.webhook_attempts or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(tried) == fake.webhook_attempts and not any(d.ok for d in tried)


def _redeliver(receiver: Router, fake: FakeReplicate, job: Job) -> httpx.Response:
    """Replicate's delivery arriving late, at the receiver app (signed as the fake signed it)."""
    delivery = next(d for d in fake.deliveries if d.prediction_id == job.remote_id and d.event == "completed")
    app = create_app(receiver, secret=fake.webhook_secret, tolerance=3600)

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://receiver") as client:
            return await client.post("/hooks", content=delivery.body.encode(), headers=delivery.headers)

    return asyncio.run(post())


def test_a_job_whose_webhook_never_came_is_completed_by_sync_once(
    fake: FakeReplicate, routers: tuple[Router, Router]
) -> None:
    submitter, receiver = routers
    request = TextToImage(prompt="lost hook", tier="fast", num_outputs=2)
    job = submitter.submit(request, webhook_url=UNREACHABLE)
    _undelivered(fake, job)
    pending = submitter.jobs.get(job.id)
    assert pending is not None and pending.status == "pending"
    assert submitter.submit(request, webhook_url=UNREACHABLE) == job  # without a sync, the same job comes back

    [synced] = receiver.reconcile_jobs()

    assert synced.action == "completed" and synced.remote_status == "succeeded" and synced.ok
    done = synced.job
    assert done.status == "succeeded" and done.cost == Decimal("0.006") and done.result is not None
    assert done.result.job_id == job.remote_id and len(done.result.artifacts) == 2
    assert synced.message == (
        f"succeeded on replicate {job.remote_id}: completed as succeeded, 2 files stored, $0.006 settled"
    )
    assert fake.count("GET", f"/v1/predictions/{job.remote_id}") == 1
    settled = [e for e in submitter.ledger.entries() if e.status == "settled"]
    assert [(e.id, e.actual, e.job_id) for e in settled] == [(job.reservation_id, Decimal("0.006"), job.remote_id)]
    assert submitter.ledger.open_reservations() == []
    stored = submitter.store.get(job.request_key) if submitter.store else None
    assert stored is not None and stored.job_id == job.remote_id

    # The delivery arriving after all is a replay: acknowledged, nothing changes.
    before = list(submitter.ledger.entries())
    late = _redeliver(receiver, fake, job)
    assert late.status_code == 200 and late.json()["duplicate"] is True
    assert list(submitter.ledger.entries()) == before
    assert submitter.reconcile_jobs() == []  # nothing pending any more
    again = submitter.submit(request, webhook_url=UNREACHABLE)  # the same request: served from the store
    assert again.status == "succeeded" and again.result is not None and again.result.cached
    assert len(fake.predictions) == 1


def test_a_prediction_still_running_stays_pending(fake: FakeReplicate, routers: tuple[Router, Router]) -> None:
    submitter, _ = routers
    fake.set_predict_time("nightmareai/real-esrgan", 30.0)
    job = submitter.submit(Upscale(image=png(), tier="fast"), webhook_url=UNREACHABLE)

    [synced] = submitter.reconcile_jobs(job.id[:12])

    assert synced.action == "running" and synced.remote_status in ("starting", "processing") and synced.ok
    assert synced.message == f"{synced.remote_status} on replicate {job.remote_id}: still running, left pending"
    assert submitter.jobs.get(job.id) == job
    assert [r.id for r in submitter.ledger.open_reservations()] == [job.reservation_id]
    assert list(submitter.ledger.entries()) == []


def test_a_failed_prediction_is_recorded_as_failed_with_its_compute_cost(
    fake: FakeReplicate, routers: tuple[Router, Router]
) -> None:
    submitter, receiver = routers
    fake.set_predict_time("nightmareai/real-esrgan", 2.357)  # T4 $0.000225/s × 2.357 s = $0.000530325
    fake.fail_model("nightmareai/real-esrgan", "out of memory")
    job = submitter.submit(Upscale(image=png(), tier="fast"), webhook_url=UNREACHABLE)
    _undelivered(fake, job)

    [synced] = receiver.reconcile_jobs()

    assert synced.action == "completed" and synced.remote_status == "failed"
    failed = synced.job
    assert failed.status == "failed" and "out of memory" in (failed.error or "")
    assert failed.cost == quantize(Decimal("0.000225") * Decimal("2.357")) == Decimal("0.000530")
    assert "recorded as failed, $0.00053 settled: " in synced.message
    [entry] = list(submitter.ledger.entries())
    assert (entry.status, entry.actual, entry.id) == ("settled", failed.cost, job.reservation_id)
    assert _redeliver(receiver, fake, job).json()["duplicate"] is True
    assert list(submitter.ledger.entries()) == [entry]


def test_outputs_removed_before_the_sync_are_billed_and_the_job_failed(
    fake: FakeReplicate, routers: tuple[Router, Router]
) -> None:
    """Replicate removes an API prediction's outputs after about an hour: the sync came too late for the
    bytes, but the prediction was billed, and the ledger says so."""
    submitter, _ = routers
    job = submitter.submit(TextToImage(prompt="too late", tier="fast"), webhook_url=UNREACHABLE)
    _undelivered(fake, job)
    fake.expire_outputs(job.remote_id)

    [synced] = submitter.reconcile_jobs()

    assert synced.action == "completed" and synced.job.status == "failed"
    assert "output was removed by Replicate before it was read" in (synced.job.error or "")
    assert synced.job.cost == Decimal("0.003")
    assert [(e.status, e.actual) for e in submitter.ledger.entries()] == [("settled", Decimal("0.003"))]


def test_an_unknown_prediction_is_reported_and_the_job_left_pending(
    fake: FakeReplicate, routers: tuple[Router, Router], tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    submitter, _ = routers
    job = submitter.submit(TextToImage(prompt="elsewhere", tier="fast"), webhook_url=UNREACHABLE)
    submitter.jobs.add(job.model_copy(update={"id": "f" * 32, "remote_id": "not-on-this-account"}))

    synced = {s.job.id: s for s in submitter.reconcile_jobs()}

    lost = synced["f" * 32]
    assert lost.action == "error" and not lost.ok
    assert lost.message == (
        "could not ask replicate: prediction not-on-this-account was not found (HTTP 404); left pending"
    )
    assert synced[job.id].action == "completed"
    assert submitter.jobs.get("f" * 32).status == "pending"  # type: ignore[union-attr]


def test_genroute_jobs_sync_completes_the_jobs_and_says_what_it_did(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    config = _config(tmp_path, fake)
    environ = _environ(tmp_path, config, {"REPLICATE_API_TOKEN": TOKEN})
    submitter = make_router(load_settings(config, profile="prod", env=environ))
    fake.set_predict_time("nightmareai/real-esrgan", 30.0)
    running = submitter.submit(Upscale(image=png(), tier="fast"), webhook_url=UNREACHABLE)
    done = submitter.submit(TextToImage(prompt="cli sync", tier="fast"), webhook_url=UNREACHABLE)
    _undelivered(fake, done)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "genroute.cli", "--profile", "prod", "jobs", *args],
                              cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120)  # fmt: skip

    proc = cli("sync")
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert re.fullmatch(
        f"{running.id[:12]}  (starting|processing) on replicate {running.remote_id}: still running, left pending", first
    )
    assert second == (
        f"{done.id[:12]}  succeeded on replicate {done.remote_id}: "
        "completed as succeeded, 1 file stored, $0.003 settled"
    )
    assert TOKEN not in proc.stdout + proc.stderr
    finished = submitter.jobs.get(done.id)
    assert finished is not None and finished.status == "succeeded" and finished.cost == Decimal("0.003")

    proc = cli("sync", done.id[:12], "--json")
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert row["job"] == done.id and row["action"] == "skipped" and row["status"] == "succeeded"
    assert row["cost"] == "0.003000" and row["message"] == "already succeeded: nothing to do"

    environ.pop("REPLICATE_API_TOKEN")  # Replicate cannot be asked now: the job is left pending, exit 10
    proc = cli("sync")
    assert proc.returncode == 10, proc.stderr
    assert proc.stdout.strip() == (
        f"{running.id[:12]}  could not ask replicate: REPLICATE_API_TOKEN is not set; left pending"
    )

    proc = cli("sync", "nope")
    assert proc.returncode == 4 and "no job 'nope'" in proc.stderr
