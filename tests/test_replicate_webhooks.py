"""Completion by webhook: submit → the fake delivers a signed webhook → the receiver settles once.

The receiver (:func:`genroute_replicate.webhooks.create_app`) runs under uvicorn on 127.0.0.1 for the
end-to-end path, and is driven through ``httpx.ASGITransport`` with the fake's own recorded deliveries
(or hand-signed ones) for the refusals. A refused or replayed delivery must leave the ledger unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
import uvicorn

from fakes import FakeReplicate, sign_webhook
from genroute.jobs import Job
from genroute.money import quantize
from genroute.router import Router
from genroute.types import TextToImage, Upscale
from genroute_replicate.plugin import ReplicatePlugin
from genroute_replicate.provider import ReplicateProvider
from genroute_replicate.webhooks import create_app
from test_replicate_helpers import TOKEN, build_settings, png

UNREACHABLE = "http://127.0.0.1:9/hooks"  # the discard port: the fake's delivery fails; tests replay it by hand
OTHER_SECRET = "whsec_" + base64.b64encode(b"not the account's signing secret").decode()

PROCESSES = 3
pytest_plugins = ["test_replicate_helpers"]  # its fixtures: fake, token, router, make_router


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread on 127.0.0.1; yield its base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _wait_for(check: Callable[[], Job | None], timeout: float = 10) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = check()
        if job is not None:
            return job
        time.sleep(0.02)
    raise AssertionError("timed out")


def _ledger(router: Router) -> list[tuple[str, str, Decimal, str | None]]:
    return sorted((e.id, e.status, e.actual, e.job_id) for e in router.ledger.entries())


@pytest.fixture
def routers(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> tuple[Router, Router]:
    """(submitter, receiver): two Routers over the same directories, as two processes would be."""
    settings = build_settings(tmp_path, fake)
    return make_router(settings), make_router(settings)


def test_submit_then_signed_webhook_settles_once_and_stores(
    fake: FakeReplicate, routers: tuple[Router, Router]
) -> None:
    submitter, receiver = routers
    app = create_app(receiver, tolerance=300, close_router_on_shutdown=True)
    with serving(app) as url:
        request = TextToImage(prompt="hooked fox", tier="fast", num_outputs=2)
        job = submitter.submit(request, webhook_url=f"{url}/hooks/replicate")
        assert job.status == "pending" and job.remote_id and job.provider == "replicate"
        done = _wait_for(lambda: j if (j := submitter.jobs.get(job.id)) and j.status != "pending" else None)
        assert fake.wait_until_idle(5)
        ok = [d for d in fake.deliveries if d.ok]
        assert len(ok) == 1 and ok[0].event == "completed"
        before = _ledger(submitter)
        replay = fake.redeliver(ok[0].webhook_id)  # the same message again: acknowledged, nothing changes
        assert replay.status_code == 200 and _ledger(submitter) == before
    prediction = fake.prediction(job.remote_id)
    assert prediction.webhook_events_filter == frozenset({"completed"})
    assert done.status == "succeeded" and done.cost == Decimal("0.006")
    assert done.result is not None and len(done.result.artifacts) == 2 and done.result.job_id == job.remote_id
    assert all(a.media_type == "image/webp" for a in done.result.artifacts)
    settled = [e for e in submitter.ledger.entries() if e.status == "settled"]
    assert len(settled) == 1 and settled[0].actual == Decimal("0.006") == settled[0].estimate
    assert settled[0].job_id == job.remote_id and submitter.ledger.open_reservations() == []
    stored = submitter.store.get(job.request_key) if submitter.store else None
    assert stored is not None and stored.job_id == job.remote_id
    assert fake.count("GET", "/v1/webhooks/default/secret") == 1  # the secret came from the API, once
    assert submitter.run(request).cached  # the stored bytes now serve the same request


async def _post(app: Any, body: str, headers: dict[str, str], method: str = "POST") -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://receiver") as client:
        return await client.request(method, "/hooks", content=body.encode(), headers=headers)


def _replay(app: Any, fake: FakeReplicate, prediction_id: str) -> httpx.Response:
    assert fake.wait_until_idle(5)
    delivery = next(d for d in fake.deliveries if d.prediction_id == prediction_id and d.event == "completed")
    return asyncio.run(_post(app, delivery.body, delivery.headers))


def test_bad_signature_and_stale_timestamp_are_refused_without_touching_the_ledger(
    fake: FakeReplicate, routers: tuple[Router, Router]
) -> None:
    submitter, receiver = routers
    app = create_app(receiver, secret=fake.webhook_secret, tolerance=300)
    fake.sign_with = OTHER_SECRET  # the fake signs (and dates) each delivery when it sends it
    forged = submitter.submit(TextToImage(prompt="forged", tier="fast"), webhook_url=UNREACHABLE)
    assert fake.wait_until_idle(5)
    fake.sign_with, fake.timestamp_offset = None, -3600
    stale = submitter.submit(TextToImage(prompt="stale", tier="fast"), webhook_url=UNREACHABLE)
    assert fake.wait_until_idle(5)
    fake.timestamp_offset = 0
    before = _ledger(submitter)
    for job, error in ((forged, "invalid signature"), (stale, "stale or invalid timestamp")):
        answer = _replay(app, fake, job.remote_id or "")
        assert answer.status_code == 401 and answer.json() == {"error": error}
    assert _ledger(submitter) == before and len(submitter.ledger.open_reservations()) == 2
    assert all(j.status == "pending" for j in submitter.jobs.list())
    # Properly signed now (the sender's retry): accepted and settled once.
    good = fake.redeliver(next(d.webhook_id for d in fake.deliveries if d.prediction_id == forged.remote_id))
    answer = asyncio.run(_post(app, good.body, good.headers))
    assert answer.status_code == 200 and answer.json()["status"] == "succeeded"
    assert len([e for e in submitter.ledger.entries() if e.status == "settled"]) == 1


def test_replayed_intermediate_and_unknown_deliveries(fake: FakeReplicate, routers: tuple[Router, Router]) -> None:
    submitter, receiver = routers
    secret = fake.webhook_secret
    app = create_app(receiver, secret=secret, tolerance=300)
    job = submitter.submit(TextToImage(prompt="replayed", tier="fast"), webhook_url=UNREACHABLE)
    assert fake.wait_until_idle(5)
    delivery = next(d for d in fake.deliveries if d.prediction_id == job.remote_id)
    now = str(int(time.time()))

    def signed(body: str, webhook_id: str) -> dict[str, str]:
        return {"webhook-id": webhook_id, "webhook-timestamp": now, "content-type": "application/json",
                "webhook-signature": sign_webhook(secret, webhook_id, now, body)}  # fmt: skip

    running = json.dumps({**json.loads(delivery.body), "status": "processing", "output": None})
    answer = asyncio.run(_post(app, running, signed(running, "msg_intermediate")))
    assert answer.status_code == 200 and "intermediate" in answer.json()["ignored"]
    before = _ledger(submitter)
    unknown = json.dumps({**json.loads(delivery.body), "id": "not-ours"})
    assert asyncio.run(_post(app, unknown, signed(unknown, "msg_unknown"))).status_code == 404
    assert asyncio.run(_post(app, "{}", {}, method="GET")).status_code == 405
    assert asyncio.run(_post(app, delivery.body, {"content-type": "application/json"})).status_code == 401
    assert _ledger(submitter) == before

    first = asyncio.run(_post(app, delivery.body, delivery.headers))
    assert first.status_code == 200 and first.json()["status"] == "succeeded"
    after = _ledger(submitter)
    assert after != before
    for headers in (delivery.headers, signed(delivery.body, "msg_new_id_same_prediction")):
        again = asyncio.run(_post(app, delivery.body, headers))
        assert again.status_code == 200 and again.json()["duplicate"] is True
    assert _ledger(submitter) == after
    assert [e.status for e in submitter.ledger.entries()].count("settled") == 1


def test_a_failed_prediction_by_webhook_settles_its_compute(
    fake: FakeReplicate, routers: tuple[Router, Router]
) -> None:
    submitter, receiver = routers
    app = create_app(receiver, secret=fake.webhook_secret, tolerance=300)
    fake.set_predict_time("nightmareai/real-esrgan", 0.1)
    fake.fail_model("nightmareai/real-esrgan", "weights corrupted", logs="loading\nweights corrupted\n")
    job = submitter.submit(Upscale(image=png(), tier="fast"), webhook_url=UNREACHABLE)
    answer = _replay(app, fake, job.remote_id or "")
    assert answer.status_code == 200 and answer.json()["status"] == "failed"
    failed = submitter.jobs.get(job.id)
    assert failed is not None and failed.status == "failed" and "weights corrupted" in (failed.error or "")
    (entry,) = list(submitter.ledger.entries())
    assert entry.status == "settled" and entry.actual == quantize(Decimal("0.000225") * Decimal("0.1"))


def test_a_completion_whose_download_fails_for_now_is_answered_503_and_completes_on_redelivery(
    token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    """The prediction succeeded but its output could not be fetched this time: nothing is decided, the
    receiver answers 503 so that Replicate delivers again, and the redelivery settles and stores once."""
    with FakeReplicate(prediction_seconds=0.02, token=TOKEN, catalogue=True, output_mode="url") as server:
        settings = build_settings(tmp_path, server)

        def router() -> Router:
            return make_router(settings, ReplicatePlugin(ReplicateProvider(transport_factory=server.transport)))

        submitter, receiver = router(), router()
        app = create_app(receiver, secret=server.webhook_secret, tolerance=300)
        job = submitter.submit(TextToImage(prompt="late bytes", tier="fast"), webhook_url=UNREACHABLE)
        server.faults.add("GET /files/*", 503, times=1)

        first = _replay(app, server, job.remote_id or "")
        assert first.status_code == 503 and first.json()["retry"] is True
        assert "HTTP 503" in first.json()["error"]
        pending = submitter.jobs.get(job.id)
        assert pending is not None and pending.status == "pending"
        assert list(submitter.ledger.entries()) == [] and len(submitter.ledger.open_reservations()) == 1

        again = _replay(app, server, job.remote_id or "")  # Replicate's retry of the same delivery
        assert again.status_code == 200 and again.json()["status"] == "succeeded"
        done = submitter.jobs.get(job.id)
        assert done is not None and done.status == "succeeded" and done.result is not None
        assert [(e.status, e.actual) for e in submitter.ledger.entries()] == [("settled", Decimal("0.003"))]
    assert server.errors == []


def test_tolerance_is_required() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        create_app(object(), tolerance=None)  # type: ignore[arg-type]


def test_a_prediction_canceled_on_replicate_ends_its_job_as_canceled(
    fake: FakeReplicate, routers: tuple[Router, Router]
) -> None:
    submitter, receiver = routers
    app = create_app(receiver, secret=fake.webhook_secret, tolerance=300)
    fake.set_predict_time("nightmareai/real-esrgan", 5.0)
    job = submitter.submit(Upscale(image=png(), tier="fast"), webhook_url=UNREACHABLE)
    client = replicate.Client(api_token=fake.token, base_url=fake.base_url)
    client.predictions.cancel(job.remote_id or "")  # say, from Replicate's dashboard
    answer = _replay(app, fake, job.remote_id or "")
    assert answer.status_code == 200 and answer.json()["status"] == "canceled"
    canceled = submitter.jobs.get(job.id)
    assert canceled is not None and canceled.status == "canceled" and "canceled" in (canceled.error or "")
    assert submitter.ledger.open_reservations() == []  # the reservation is closed (settled at what ran)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"status": {"a": 1}}, "status is not one of"),
        ({"status": ["succeeded"]}, "status is not one of"),
        ({"status": "done"}, "status is not one of"),
        ({"status": None}, "status is not one of"),
        ({"id": ""}, "id is not a non-empty string"),
        ({"id": 7}, "id is not a non-empty string"),
        ({"output": 5}, "output is not"),
        ({"metrics": "fast"}, "metrics is not"),
        ({"metrics": [1]}, "metrics is not"),
        ({"error": 3}, "error is not"),
    ],
)
def test_a_signed_body_that_is_not_a_prediction_is_answered_400_without_touching_the_ledger(
    fake: FakeReplicate, routers: tuple[Router, Router], change: dict[str, Any], reason: str
) -> None:
    submitter, receiver = routers
    secret = fake.webhook_secret
    app = create_app(receiver, secret=secret, tolerance=300)
    job = submitter.submit(TextToImage(prompt="misshapen", tier="fast"), webhook_url=UNREACHABLE)
    assert fake.wait_until_idle(5)
    delivery = next(d for d in fake.deliveries if d.prediction_id == job.remote_id)
    before = _ledger(submitter)
    body = json.dumps({**json.loads(delivery.body), **change})
    now = str(int(time.time()))
    headers = {"webhook-id": "msg_misshapen", "webhook-timestamp": now, "content-type": "application/json",
               "webhook-signature": sign_webhook(secret, "msg_misshapen", now, body)}  # fmt: skip
    answer = asyncio.run(_post(app, body, headers))
    assert answer.status_code == 400 and answer.json()["error"].startswith("body is not a prediction: " + reason)
    assert _ledger(submitter) == before and submitter.jobs.get(job.id).status == "pending"  # type: ignore[union-attr]
    # The proper delivery is still handled: the refusal did not remember its id or touch the job.
    assert asyncio.run(_post(app, delivery.body, delivery.headers)).json()["status"] == "succeeded"


def test_a_failed_or_canceled_job_records_the_cost_the_ledger_settled(
    fake: FakeReplicate, routers: tuple[Router, Router]
) -> None:
    submitter, receiver = routers
    app = create_app(receiver, secret=fake.webhook_secret, tolerance=300)
    fake.set_predict_time("nightmareai/real-esrgan", 2.357)  # T4 $0.000225/s × 2.357 s = $0.000530325
    fake.fail_model("nightmareai/real-esrgan", "out of memory", times=1)
    failed = submitter.submit(Upscale(image=png(), tier="fast"), webhook_url=UNREACHABLE)
    assert _replay(app, fake, failed.remote_id or "").json()["status"] == "failed"
    fake.set_predict_time("nightmareai/real-esrgan", 5.0)
    canceled = submitter.submit(Upscale(image=png(), scale=4, tier="fast"), webhook_url=UNREACHABLE)
    time.sleep(0.3)  # some compute time to pay for
    replicate.Client(api_token=fake.token, base_url=fake.base_url).predictions.cancel(canceled.remote_id or "")
    assert _replay(app, fake, canceled.remote_id or "").json()["status"] == "canceled"
    settled = {e.id: e.actual for e in submitter.ledger.entries() if e.status == "settled"}
    for job in (failed, canceled):
        done = submitter.jobs.get(job.id)
        assert done is not None and done.cost is not None and done.cost == quantize(done.cost)
        assert done.cost == settled[job.reservation_id or ""]
    assert submitter.jobs.get(failed.id).cost == Decimal("0.000530")  # type: ignore[union-attr]
    assert submitter.ledger.open_reservations() == []


def _creates(fake: FakeReplicate) -> int:
    return fake.count("POST", "/v1/models/*/predictions") + fake.count("POST", "/v1/predictions")


def test_the_same_request_submitted_again_while_pending_creates_one_prediction(
    fake: FakeReplicate, routers: tuple[Router, Router]
) -> None:
    submitter, other = routers  # two processes' views of the same directories
    app = create_app(other, secret=fake.webhook_secret, tolerance=300)
    fake.set_predict_time("nightmareai/real-esrgan", 5.0)  # still running while it is submitted again
    request = Upscale(image=png(), tier="fast")
    job = submitter.submit(request, webhook_url=UNREACHABLE)
    assert submitter.submit(request, webhook_url=UNREACHABLE) == job
    assert other.submit(request, webhook_url=UNREACHABLE) == job

    assert _creates(fake) == 1 and len(fake.predictions) == 1
    [reservation] = other.ledger.open_reservations()
    assert reservation.id == job.reservation_id
    # A different request is new work, as before.
    different = other.submit(Upscale(image=png(colour=(1, 2, 3)), tier="fast"), webhook_url=UNREACHABLE)
    assert different.id != job.id and _creates(fake) == 2

    client = replicate.Client(api_token=fake.token, base_url=fake.base_url)
    for prediction_id in (job.remote_id, different.remote_id):
        client.predictions.cancel(prediction_id or "")  # say, from Replicate's dashboard
    assert _replay(app, fake, job.remote_id or "").json()["status"] == "canceled"
    again = submitter.submit(request, webhook_url=UNREACHABLE)  # the job is over: this is new work
    assert again.id != job.id and again.status == "pending" and _creates(fake) == 3


def _submit_in_a_process(settings: Any, token: str, start: Any, results: Any) -> None:
    """One process: a Router over the shared directories (plugins from entry points) submits the request."""
    os.environ["REPLICATE_API_TOKEN"] = token
    with Router(settings) as router:
        start.wait(60)
        job = router.submit(Upscale(image=png(), tier="fast"), webhook_url=UNREACHABLE)
        results.put(job.id)


@pytest.mark.slow
def test_identical_submissions_from_several_processes_create_one_prediction(
    fake: FakeReplicate, token: str, tmp_path: Path
) -> None:
    settings = build_settings(tmp_path, fake)
    fake.set_predict_time("nightmareai/real-esrgan", 5.0)
    fake.faults.add("POST /v1/*predictions", "slow", seconds=0.5)  # the others arrive while it is under way
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(target=_submit_in_a_process, args=(settings, token, start, results), daemon=True)
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    ids = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert all(proc.exitcode == 0 for proc in procs)
    assert len(set(ids)) == 1  # every process got the same job
    assert _creates(fake) == 1 and len(fake.predictions) == 1  # and Replicate was asked once: paid once


async def test_a_receiver_whose_secret_cannot_be_fetched_says_what_failed(fake: FakeReplicate, router: Router) -> None:
    fake.faults.add("GET /v1/webhooks/default/secret", 500)
    app = create_app(router, tolerance=300)
    incoming: list[dict[str, Any]] = [{"type": "lifespan.startup"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    (failed,) = sent
    assert failed["type"] == "lifespan.startup.failed"
    why = failed["message"]
    assert "Replicate answered HTTP 500 on GET /v1/webhooks/default/secret (3 tries)" in why
    assert "REPLICATE_API_TOKEN is set; try again later, or set REPLICATE_WEBHOOK_SECRET" in why
    assert "falls back" not in why and TOKEN not in why
    assert fake.count("GET", "/v1/webhooks/default/secret") == 3
