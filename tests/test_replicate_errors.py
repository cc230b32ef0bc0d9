"""The Replicate provider's failure paths: each HTTP error, failed predictions, deadlines, and creates
whose outcome is unknown (which must never turn into two paid predictions)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from fakes import FakeReplicate
from genroute import errors
from genroute.money import quantize
from genroute.router import Router
from genroute.types import TextGeneration, TextToImage, Upscale
from genroute_replicate import provider as replicate_provider
from genroute_replicate.options import ReplicateOptions
from genroute_replicate.outputs import download, parse
from genroute_replicate.plugin import ReplicatePlugin
from genroute_replicate.provider import ReplicateProvider
from test_replicate_helpers import TOKEN, build_settings, creates, png

CREATE = "POST /v1/models/*/predictions"
SCHNELL = "black-forest-labs/flux-schnell"
ESRGAN = "nightmareai/real-esrgan"

pytest_plugins = ["test_replicate_helpers"]  # its fixtures: fake, token, router, make_router


def _pinned(prompt: str = "a fox", **kw: object) -> TextToImage:
    return TextToImage(prompt=prompt, tier="fast", provider="replicate", **kw)  # type: ignore[arg-type]


def _reasons(exc: pytest.ExceptionInfo[errors.NoRouteAvailable]) -> str:
    return "\n".join(r.reason for r in exc.value.rejections)


@pytest.fixture
def settings_for(fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]):  # type: ignore[no-untyped-def]
    def build(**options: object) -> Router:
        return make_router(build_settings(tmp_path, fake, options=dict(options)))

    return build


# -- plain HTTP errors --------------------------------------------------------------------------------
def test_401_is_authentication_failed_and_not_retried(fake: FakeReplicate, router: Router) -> None:
    fake.faults.add(CREATE, 401)
    with pytest.raises(errors.NoRouteAvailable) as failure:
        router.run(_pinned())
    assert "failed after 1 attempt(s)" in _reasons(failure) and "HTTP 401" in _reasons(failure)
    assert creates(fake) == 1 and fake.predictions == []


def test_402_withdraws_the_provider_until_the_cooldown_ends(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    settings = build_settings(tmp_path, fake, options={"credit_cooldown_seconds": 600})
    router = make_router(settings)
    fake.faults.add(CREATE, 402, times=1)
    result = router.run(TextToImage(prompt="no credit", tier="fast"))
    assert result.provider == "mock"  # the fallback served it
    reason = router.providers["replicate"].unavailable_reason(settings)
    assert reason is not None and reason.startswith("out of credit (HTTP 402); withdrawn until")
    before = fake.count()
    again = router.run(TextToImage(prompt="still no credit", tier="fast"))
    assert again.provider == "mock" and fake.count() == before  # no request while withdrawn
    plan = router.plan(TextToImage(prompt="plan", tier="fast"))
    assert any(r.provider == "replicate" and r.reason.startswith("unavailable: out of credit") for r in plan.rejections)
    other = make_router(settings)  # another process sees the withdrawal too (kept beside the store)
    assert other.providers["replicate"].unavailable_reason(settings) == reason
    short = build_settings(tmp_path / "b", fake, options={"credit_cooldown_seconds": 0.3})
    brief = make_router(short)
    fake.faults.add(CREATE, 402, times=1)
    brief.run(TextToImage(prompt="blip", tier="fast"))
    assert brief.providers["replicate"].unavailable_reason(short) is not None
    time.sleep(0.35)
    assert brief.providers["replicate"].unavailable_reason(short) is None  # credit may be back: offers again
    assert brief.run(TextToImage(prompt="credit back", tier="fast")).provider == "replicate"


def test_a_withdrawal_reaches_a_process_that_had_already_looked(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replicate_provider, "_CREDIT_RECHECK", 0.05)  # the file is looked at again after this
    settings = build_settings(tmp_path, fake, options={"credit_cooldown_seconds": 600})
    watcher = make_router(settings)  # stands for a long-running process that checked before the 402
    assert watcher.providers["replicate"].unavailable_reason(settings) is None
    hit = make_router(settings)
    fake.faults.add(CREATE, 402, times=1)
    assert hit.run(TextToImage(prompt="no credit", tier="fast")).provider == "mock"
    time.sleep(0.06)
    reason = watcher.providers["replicate"].unavailable_reason(settings)
    assert reason is not None and reason.startswith("out of credit (HTTP 402)")
    before = fake.count()
    assert watcher.run(TextToImage(prompt="elsewhere", tier="fast")).provider == "mock"
    assert fake.count() == before


def test_404_unknown_model_is_model_not_found(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    entry = {"model": "acme/does-not-exist", "unit": "output", "price": "0.01"}
    router = make_router(build_settings(tmp_path, fake, models={"text-to-image": {"fast": entry}}))
    with pytest.raises(errors.NoRouteAvailable, match=r"not found on Replicate \(HTTP 404\)"):
        router.run(_pinned())
    assert creates(fake) == 0 and fake.count("GET", "/v1/models/acme/does-not-exist") == 1


def test_422_names_the_genroute_field(fake: FakeReplicate, router: Router) -> None:
    fake.faults.add(CREATE, 422, detail="- input.num_outputs: Must be less than or equal to 1\n")
    with pytest.raises(errors.NoRouteAvailable) as failure:
        router.run(_pinned(num_outputs=2))
    reasons = _reasons(failure)
    assert "Replicate rejected the input (HTTP 422)" in reasons
    assert "num_outputs: Must be less than or equal to 1" in reasons and "failed after 1 attempt(s)" in reasons


def test_429_waits_for_retry_after_then_succeeds_with_one_prediction(fake: FakeReplicate, router: Router) -> None:
    fake.faults.add(CREATE, 429, times=1, retry_after=0.4)
    result = router.run(TextToImage(prompt="throttled", tier="fast"))
    assert result.provider == "replicate" and result.attempts == 2
    first, second = (r for r in fake.requests if r.method == "POST")
    assert first.status == 429 and first.response_headers["Retry-After"] == "0.4"
    assert second.started - first.started >= 0.4  # the router's own backoff is 5 ms at most: this is Retry-After
    assert len(fake.predictions) == 1


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_is_retried_then_falls_back_to_the_mock(status: int, fake: FakeReplicate, router: Router) -> None:
    fake.faults.add(CREATE, status)
    result = router.run(TextToImage(prompt="overloaded", tier="fast"))
    assert result.provider == "mock"
    assert creates(fake) == 3 and fake.predictions == []  # max_attempts creates, each found to have made nothing
    # Each 5xx was reconciled before the retry: reconcile_attempts (3) listings, in case the listing lags.
    assert fake.count("GET", "/v1/predictions") == 3 * 3
    replicate_entry = next(e for e in router.ledger.entries() if e.provider == "replicate")
    assert replicate_entry.status == "released" and replicate_entry.actual == 0


def test_5xx_after_the_prediction_was_made_is_reconciled_not_reposted(fake: FakeReplicate, router: Router) -> None:
    fake.faults.add(CREATE, 500, times=1, processed=True)
    result = router.run(TextToImage(prompt="made anyway", tier="fast"))
    assert result.provider == "replicate" and result.attempts == 1
    assert creates(fake) == 1 and len(fake.predictions) == 1 and result.job_id == fake.predictions[0].id


# -- failed predictions ---------------------------------------------------------------------------------
def test_a_failed_prediction_is_model_failed_with_logs_and_its_compute_settled(
    fake: FakeReplicate, router: Router
) -> None:
    fake.set_predict_time(ESRGAN, 0.2)
    fake.fail_model(ESRGAN, "CUDA out of memory", logs="loading weights\ntile 3/4\nCUDA out of memory\n")
    with pytest.raises(errors.NoRouteAvailable) as failure:
        router.run(Upscale(image=png(), tier="fast", provider="replicate"))
    reasons = _reasons(failure)
    assert "failed after 1 attempt(s)" in reasons and "CUDA out of memory" in reasons and "tile 3/4" in reasons
    (entry,) = list(router.ledger.entries())
    assert entry.status == "settled" and entry.actual == quantize(Decimal("0.000225") * Decimal("0.2"))
    assert len(fake.predictions) == 1  # ModelFailed is final: not retried


# -- deadlines ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("deadline", [0.8, 2.4])
def test_deadline_cancels_the_remote_prediction_and_releases(
    deadline: float, fake: FakeReplicate, router: Router
) -> None:
    # 0.8 s: the deadline falls inside the held create (wait=1); 2.4 s: while polling after wait=2.
    fake.set_predict_time("black-forest-labs/flux-dev", 30)
    started = time.monotonic()
    with pytest.raises(errors.DeadlineExceeded):
        router.run(TextToImage(prompt="too slow", tier="balanced", deadline_seconds=deadline, provider="replicate"))
    assert time.monotonic() - started < deadline + 1.5
    (prediction,) = fake.predictions
    assert prediction.status == "canceled" and prediction.canceled
    assert prediction.predict_time is not None and prediction.predict_time < deadline + 0.5  # billing stopped
    assert fake.count("POST", "/v1/predictions/*/cancel") == 1
    assert router.ledger.open_reservations() == []
    (entry,) = list(router.ledger.entries())
    assert entry.status == "released"


# -- creates with an unknown outcome: never two predictions ----------------------------------------------
def test_drop_after_processing_is_reconciled(fake: FakeReplicate, router: Router) -> None:
    fake.faults.add(CREATE, "drop-after", times=1)
    result = router.run(TextToImage(prompt="dropped", tier="fast", num_outputs=2))
    assert result.provider == "replicate" and len(result.artifacts) == 2 and result.attempts == 1
    assert creates(fake) == 1 and len(fake.predictions) == 1 and result.job_id == fake.predictions[0].id


def test_read_timeout_after_processing_is_reconciled(fake: FakeReplicate, settings_for: Callable[..., Router]) -> None:
    router = settings_for(wait_seconds=1)  # the client's read timeout is then 1.5 s
    fake.faults.add(CREATE, "timeout", times=1, seconds=3, processed=True)
    result = router.run(TextToImage(prompt="slow answer", tier="fast"))
    assert result.provider == "replicate" and result.job_id == fake.predictions[0].id
    assert creates(fake) == 1 and len(fake.predictions) == 1


def test_malformed_answer_is_reconciled(fake: FakeReplicate, router: Router) -> None:
    fake.faults.add(CREATE, "malformed", times=1)
    result = router.run(TextToImage(prompt="garbled", tier="fast"))
    assert result.provider == "replicate" and creates(fake) == 1 and len(fake.predictions) == 1


@pytest.mark.parametrize("kind", ["drop-before", "timeout"])
def test_an_unreconcilable_create_fails_typed_and_is_never_reposted(
    kind: str, fake: FakeReplicate, settings_for: Callable[..., Router]
) -> None:
    router = settings_for(wait_seconds=1, reconcile_attempts=2)
    fake.faults.add(CREATE, kind, times=1, seconds=2)
    with pytest.raises(errors.NoRouteAvailable) as failure:
        router.run(_pinned("lost"))
    reasons = _reasons(failure)
    assert "may exist but could not be found" in reasons and "failed after 1 attempt(s)" in reasons
    assert creates(fake) == 1 and fake.predictions == []
    # The same request again soon after: the record makes it look again first; still nothing is posted.
    with pytest.raises(errors.NoRouteAvailable, match="may exist"):
        router.run(_pinned("lost"))
    assert creates(fake) == 1
    # A different request (unpinned) has its own record: it is created normally.
    assert router.run(TextToImage(prompt="lost", tier="fast")).provider == "replicate"
    assert creates(fake) == 2
    # Unpinned, the fallback serves it; a refresh of it looks for the lost create again and never posts.
    fake.faults.add(CREATE, kind, times=1, seconds=2)
    assert router.run(TextToImage(prompt="elsewhere", tier="fast")).provider == "mock"
    assert router.run(TextToImage(prompt="elsewhere", tier="fast", cache="refresh")).provider == "mock"
    assert creates(fake) == 3 and len(fake.predictions) == 1


def test_an_ambiguous_create_that_never_appears_may_be_created_after_the_settle_time(
    fake: FakeReplicate, settings_for: Callable[..., Router]
) -> None:
    router = settings_for(reconcile_attempts=1, reconcile_settle_seconds=0.2)
    fake.faults.add(CREATE, "drop-before", times=1)
    with pytest.raises(errors.NoRouteAvailable, match="may exist"):
        router.run(_pinned("later"))
    time.sleep(0.25)
    result = router.run(_pinned("later"))  # listed again first: still absent after the settle time → create
    assert result.provider == "replicate" and creates(fake) == 2 and len(fake.predictions) == 1


def test_connection_refused_is_retried_because_nothing_was_sent(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    import socket

    make_router(build_settings(tmp_path, fake)).run(TextToImage(prompt="warm the schema cache", tier="fast"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = build_settings(tmp_path, fake, options={"base_url": f"http://127.0.0.1:{port}"})
    with pytest.raises(errors.NoRouteAvailable) as failure:
        make_router(closed).run(_pinned("nobody home"))
    reasons = _reasons(failure)
    assert "failed after 3 attempt(s)" in reasons and "ConnectError" in reasons  # the create never left: retried
    assert make_router(closed).run(TextToImage(prompt="nobody home", tier="fast")).provider == "mock"


def test_a_failed_poll_is_retried_by_adopting_the_same_prediction(
    fake: FakeReplicate, settings_for: Callable[..., Router]
) -> None:
    router = settings_for(wait_seconds=1, poll_error_limit=1)
    fake.set_predict_time("black-forest-labs/flux-dev", 1.3)
    fake.faults.add("GET /v1/predictions/*", 500, times=1)
    result = router.run(TextToImage(prompt="poll trouble", tier="balanced"))
    assert result.provider == "replicate" and result.attempts == 2  # the router retried run() …
    assert creates(fake) == 1 and len(fake.predictions) == 1  # … which adopted the prediction instead of posting


# -- outputs: hosts, types, sizes -----------------------------------------------------------------------
def test_outputs_from_urls_are_downloaded_through_allowed_hosts(
    token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    with FakeReplicate(prediction_seconds=0.02, token=TOKEN, catalogue=True, output_mode="url") as server:
        provider = ReplicateProvider(transport_factory=server.transport)
        router = make_router(build_settings(tmp_path, server), ReplicatePlugin(provider))
        result = router.run(TextToImage(prompt="urls", tier="fast", num_outputs=2))
        assert result.provider == "replicate" and [a.media_type for a in result.artifacts] == ["image/webp"] * 2
        assert all((a.source_url or "").startswith("https://replicate.delivery/") for a in result.artifacts)
        downloads = [r for r in server.requests if r.path.startswith("/files/")]
        assert len(downloads) == 2 and all("authorization" not in r.headers for r in downloads)  # no token there
        assert all(r.headers.get("authorization") for r in server.requests if r.path.startswith("/v1/"))

        strict = build_settings(tmp_path / "strict", server, options={"allowed_output_hosts": ["example.org"]})
        router = make_router(strict, ReplicatePlugin(ReplicateProvider(transport_factory=server.transport)))
        refused = router.run(TextToImage(prompt="elsewhere", tier="fast"))
        assert refused.provider == "mock"
        entry = next(e for e in router.ledger.entries() if e.provider == "replicate")
        assert entry.status == "settled" and entry.actual == Decimal("0.003")  # the image was made and billed
        assert "host 'replicate.delivery' is not allowed" in entry.note
    assert server.errors == []


async def test_downloads_refuse_html_oversize_and_foreign_redirects() -> None:
    options = ReplicateOptions(max_output_bytes=2048)
    html = b"<!DOCTYPE html><html><body>Access denied</body></html>"

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/page.png":
            return httpx.Response(200, content=html, headers={"content-type": "image/png"})
        if request.url.path == "/big.png":
            return httpx.Response(200, content=png(400, 400) * 4)
        if request.url.path == "/hop.png":
            return httpx.Response(302, headers={"location": "https://evil.example/x.png"})
        if request.url.path == "/gone.png":
            return httpx.Response(404)
        return httpx.Response(200, content=png())

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        ok = await parse("text-to-image", {"id": "p", "output": ["https://replicate.delivery/ok.png"]}, http, options)
        assert ok.files[0].media_type == "image/png"
        with pytest.raises(errors.OutputRejected, match="is text/html"):
            await parse("text-to-image", {"id": "p", "output": "https://replicate.delivery/page.png"}, http, options)
        with pytest.raises(errors.OutputRejected, match="over max_output_bytes"):
            await download("https://replicate.delivery/big.png", http, options)
        with pytest.raises(errors.OutputRejected, match=r"'evil\.example' is not allowed"):
            await download("https://replicate.delivery/hop.png", http, options)
        with pytest.raises(errors.ProviderError, match="no longer available"):
            await download("https://replicate.delivery/gone.png", http, options)
        with pytest.raises(errors.OutputRejected, match="is audio/wav"):
            riff = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40
            await parse("text-to-image", {"id": "p", "output": ["data:image/png;base64," +
                                                                __import__("base64").b64encode(riff).decode()]},
                        http, options)  # fmt: skip


def test_concurrent_identical_requests_do_not_share_one_create(fake: FakeReplicate, router: Router) -> None:
    async def both() -> list[object]:
        request = TextToImage(prompt="twins", tier="fast", cache="bypass")
        return await asyncio.gather(router.arun(request), router.arun(request))

    first, second = asyncio.run(both())
    assert len(fake.predictions) == 2 and first.job_id != second.job_id  # type: ignore[attr-defined]


def test_a_stream_past_its_deadline_cancels_the_prediction(fake: FakeReplicate, router: Router) -> None:
    fake.set_predict_time("meta/meta-llama-3-8b-instruct", 3.0)  # 24 tokens over 3 s
    stream = router.stream(TextGeneration(prompt="long story", tier="fast", deadline_seconds=0.8))
    pieces: list[str] = []
    with pytest.raises(errors.DeadlineExceeded):
        for piece in stream:
            pieces.append(piece)
    assert pieces  # some text arrived before the deadline
    (prediction,) = fake.predictions
    assert prediction.status == "canceled" and (prediction.predict_time or 0) < 1.5
    assert fake.count("POST", "/v1/predictions/*/cancel") == 1
    (entry,) = list(router.ledger.entries())
    # Text was already delivered: settled at the tokens the canceled prediction reports, not the estimate.
    tokens = prediction.metrics["output_token_count"]
    assert tokens == len(prediction.output or []) > 0
    assert entry.status == "settled" and entry.actual == quantize(Decimal("0.00025") * tokens / 1000)
