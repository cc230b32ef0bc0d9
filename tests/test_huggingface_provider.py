"""The Hugging Face provider through genroute.Router, with the real huggingface_hub client against FakeHF.

Every served task and tier, what is stored (real PNG, sniffed audio, transcripts with segments), streaming,
cost settled on the compute time the service reports, loading waits, rate limits and every error mapped onto
genroute's hierarchy. Failure modes that need the exact error class call the provider directly.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from decimal import Decimal
from email.utils import formatdate
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx2
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import InferenceTimeoutError
from PIL import Image

from fakes.hf_server import FakeHF, fake_hf_routing, make_wav
from genroute import errors
from genroute.errors import ConfigError, NoRouteAvailable
from genroute.types import (
    ImageToImage,
    SpeechToText,
    TextGeneration,
    TextToImage,
    TextToSpeech,
    TextToVideo,
    parse_request,
)
from genroute_huggingface.failures import retry_after_seconds, timed_out_after_sending, translate
from hf_helpers import (
    TOKEN,
    config,
    entry,
    isolate_hf,
    offer_for,
    png,
    router,
    run_direct,
    serve_catalogue,
    settings,
    spent,
)

PRICE = Decimal("0.00012")
TIERS = ("fast", "balanced", "quality")


@pytest.fixture(autouse=True)
def _hf_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    isolate_hf(monkeypatch, tmp_path_factory.mktemp("hf_home"))


@pytest.fixture
def server() -> Iterator[FakeHF]:
    with FakeHF(token=TOKEN) as fake:
        serve_catalogue(fake, compute=lambda task, tier: 1.5)  # deliberately not est_seconds
        yield fake


def model(task: str, tier: str) -> str:
    return str(entry(task, tier)["model"])


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    stop = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < stop, "condition not met in time"
        time.sleep(0.02)


def request_for(task: str, tier: str, **extra: object) -> dict[str, object]:
    base: dict[str, dict[str, object]] = {
        "text-to-image": {"prompt": "a lighthouse at dusk", "width": 96, "height": 64},
        "image-to-image": {"prompt": "make it night", "image": png(80, 64)},
        "text-to-speech": {"text": "hello brave new world"},
        "speech-to-text": {"audio": make_wav("hello brave new world")},
        "text-generation": {"prompt": "tell me a story", "max_tokens": 64},
    }
    return {"task": task, "tier": tier, **base[task], **extra}


# ---- every served task and tier ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize(
    "task", ["text-to-image", "image-to-image", "text-to-speech", "speech-to-text", "text-generation"]
)
def test_each_task_and_tier_runs_on_hugging_face_and_settles_free_credit(
    server: FakeHF, tmp_path: Path, task: str, tier: str
) -> None:
    with router(settings(tmp_path, server.base_url)) as r:
        result = r.run(request_for(task, tier))
        assert (result.provider, result.model, result.tier, result.task) == (
            "huggingface",
            model(task, tier),
            tier,
            task,
        )
        # the compute the fake reports (1.5 s), not the catalogue's est_seconds, is what the ledger keeps
        assert result.actual_cost == Decimal("1.5") * PRICE
        assert result.estimated_cost == Decimal(entry(task, tier)["est_seconds"]) * PRICE
        assert spent(r, "free:huggingface") == result.actual_cost
        assert spent(r, "global") == 0  # free credit costs nothing out of pocket
        assert Decimal(str(server.spent_usd)).quantize(Decimal("0.000001")) == result.actual_cost
    call = server.requests[-1]
    assert call.model == model(task, tier) and call.status == 200
    assert call.headers["authorization"] == "Bearer <redacted>"

    if task in ("text-to-image", "image-to-image"):
        (artifact,) = result.artifacts
        assert artifact.media_type == "image/png" and artifact.path.suffix == ".png"
        with Image.open(artifact.path) as image:
            image.load()
            assert image.format == "PNG"
            assert image.size == ((96, 64) if task == "text-to-image" else (80, 64))
        if task == "image-to-image":
            assert Image.open(artifact.path).convert("RGB").getpixel((0, 0)) == (245, 235, 225)  # the fake inverts
    elif task == "text-to-speech":
        (artifact,) = result.artifacts
        assert artifact.media_type == "audio/wav" and artifact.path.suffix == ".wav"
        with wave.open(str(artifact.path)) as wav:
            assert wav.getnframes() / wav.getframerate() == pytest.approx(1.0)  # 0.25 s a word
    elif task == "speech-to-text":
        assert result.text == "hello brave new world"
        assert result.segments is not None and [s.text for s in result.segments] == ["hello", "brave", "new", "world"]
        assert (result.segments[0].start, result.segments[-1].end) == (0.0, 1.0)
        assert result.to_srt().startswith("1\n00:00:00,000 --> 00:00:00,250\nhello\n")
        assert "WEBVTT" in result.to_webvtt()
        assert call.json()["parameters"] == {"return_timestamps": True}  # asks for timed chunks
    else:
        assert result.text == "Echo: tell me a story"
        assert call.path == f"/models/{model(task, tier)}/v1/chat/completions"
        sent = call.json()
        assert sent["messages"] == [{"role": "user", "content": "tell me a story"}]
        assert sent["max_tokens"] == 64 and sent["temperature"] == 0.7


def test_text_to_image_sends_size_seed_and_negative_prompt(server: FakeHF, tmp_path: Path) -> None:
    with router(settings(tmp_path, server.base_url)) as r:
        request = {**request_for("text-to-image", "fast"), "seed": 7, "negative_prompt": "blurry", "num_outputs": 2}
        result = r.run(request)
    assert len(result.artifacts) == 2 and result.artifacts[0].sha256 != result.artifacts[1].sha256
    bodies = [req.json() for req in server.requests]
    assert [b["parameters"]["seed"] for b in bodies] == [7, 8]  # one call per image, consecutive seeds
    assert bodies[0] == {
        "inputs": "a lighthouse at dusk",
        "parameters": {"negative_prompt": "blurry", "height": 64, "width": 96, "seed": 7},
    }
    assert result.actual_cost == 2 * Decimal("1.5") * PRICE  # two calls billed


def test_aspect_ratio_sets_the_generated_size(server: FakeHF, tmp_path: Path) -> None:
    with router(settings(tmp_path, server.base_url)) as r:
        result = r.run({"task": "text-to-image", "prompt": "wide", "aspect_ratio": "16:9", "tier": "fast"})
    assert Image.open(result.artifacts[0].path).size == (1024, 576)


def test_image_to_image_with_a_size_sends_base64_json_with_target_size(server: FakeHF, tmp_path: Path) -> None:
    with router(settings(tmp_path, server.base_url)) as r:
        result = r.run(request_for("image-to-image", "fast", width=128, height=96, negative_prompt="fog"))
    assert Image.open(result.artifacts[0].path).size == (128, 96)
    sent = server.requests[-1].json()
    assert sent["parameters"] == {
        "prompt": "make it night",
        "negative_prompt": "fog",
        "target_size": {"width": 128, "height": 96},
    }


def test_system_prompt_and_seed_reach_the_chat_call(server: FakeHF, tmp_path: Path) -> None:
    with router(settings(tmp_path, server.base_url)) as r:
        r.run(request_for("text-generation", "fast", system_prompt="be brief", seed=3, temperature=0.2))
    sent = server.requests[-1].json()
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert (sent["seed"], sent["temperature"]) == (3, 0.2)


def test_a_second_identical_request_comes_from_the_store(server: FakeHF, tmp_path: Path) -> None:
    with router(settings(tmp_path, server.base_url)) as r:
        first = r.run(request_for("text-to-image", "fast"))
        again = r.run(request_for("text-to-image", "fast"))
        assert again.cached and again.actual_cost == 0 and again.artifacts[0].sha256 == first.artifacts[0].sha256
        assert spent(r, "free:huggingface") == first.actual_cost
    assert server.count(status=200) == 1


# ---- streaming --------------------------------------------------------------------------------------------------


def test_sync_stream_yields_tokens_and_settles_usage(server: FakeHF, tmp_path: Path) -> None:
    with router(settings(tmp_path, server.base_url)) as r:
        stream = r.stream(request_for("text-generation", "balanced"))
        pieces = list(stream)
        assert pieces == ["Echo:", " tell", " me", " a", " story"]
        assert stream.result is not None and stream.result.text == "Echo: tell me a story"
        assert stream.result.actual_cost == Decimal("1.5") * PRICE  # measured compute, not the estimate
        assert spent(r, "free:huggingface") == stream.result.actual_cost
    sent = server.requests[-1].json()
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_async_stream_yields_tokens(server: FakeHF, tmp_path: Path) -> None:
    async with router(settings(tmp_path, server.base_url)) as r:
        stream = r.astream(request_for("text-generation", "quality", prompt="once upon a time"))
        pieces = [piece async for piece in stream]
        assert "".join(pieces) == "Echo: once upon a time"
        assert stream.result is not None and stream.result.model == model("text-generation", "quality")


async def test_stream_waits_for_a_loading_model_before_the_first_token(server: FakeHF, tmp_path: Path) -> None:
    server.loading(model("text-generation", "fast"), times=1, estimated_time=0.2)
    async with router(settings(tmp_path, server.base_url)) as r:
        pieces = [p async for p in r.astream(request_for("text-generation", "fast"))]
    assert "".join(pieces) == "Echo: tell me a story"
    assert server.count(status=503) == 1


async def test_a_stream_cut_short_is_an_error_not_a_short_answer(server: FakeHF, tmp_path: Path) -> None:
    server.malformed(model("text-generation", "fast"), "truncated")  # first event only, no finish, no [DONE]
    async with router(settings(tmp_path, server.base_url)) as r:
        pieces: list[str] = []
        with pytest.raises(errors.ProviderError, match="ended before the model finished") as info:
            async for piece in r.astream(request_for("text-generation", "fast")):
                pieces.append(piece)
        assert pieces == ["Echo:"]
        assert TOKEN not in str(info.value)
        assert spent(r, "free:huggingface") == Decimal("1.5") * PRICE  # the spoiled answer was still billed


async def test_a_stream_failing_before_any_token_falls_back_to_the_mock(server: FakeHF, tmp_path: Path) -> None:
    server.fail(model("text-generation", "fast"), status=500, message="CUDA out of memory")
    async with router(settings(tmp_path, server.base_url, providers=("huggingface", "mock"))) as r:
        stream = r.astream(request_for("text-generation", "fast"))
        text = "".join([p async for p in stream])
    assert stream.result is not None and stream.result.provider == "mock" and text


# ---- model loading (503 with estimated_time) --------------------------------------------------------------------


def test_loading_model_is_waited_for_inside_one_attempt(server: FakeHF, tmp_path: Path) -> None:
    server.loading(model("text-to-image", "fast"), times=2, estimated_time=0.2)
    with router(settings(tmp_path, server.base_url)) as r:
        started = time.monotonic()
        result = r.run(request_for("text-to-image", "fast"))
        elapsed = time.monotonic() - started
    assert result.provider == "huggingface" and result.attempts == 1
    assert elapsed >= 0.4  # slept the service's estimate twice
    assert [req.status for req in server.requests] == [503, 503, 200]


def test_loading_longer_than_the_deadline_gives_up_at_once_and_falls_back(server: FakeHF, tmp_path: Path) -> None:
    server.loading(model("text-to-image", "fast"), times=5, estimated_time=30)
    with router(settings(tmp_path, server.base_url, providers=("huggingface", "mock"))) as r:
        started = time.monotonic()
        result = r.run(request_for("text-to-image", "fast", deadline_seconds=5))
        assert time.monotonic() - started < 3
        assert result.provider == "mock"
        assert spent(r, "free:huggingface") == 0
    assert server.count(status=503) == 1  # no blind retries of a model that cannot be ready in time


async def test_loading_beyond_the_deadline_is_a_typed_unavailable(server: FakeHF, tmp_path: Path) -> None:
    server.loading(model("text-to-image", "fast"), times=1, estimated_time=30)
    request = parse_request(request_for("text-to-image", "fast"))
    with pytest.raises(errors.ProviderUnavailable, match=r"is loading \(estimated 30s\), longer than") as info:
        await run_direct(settings(tmp_path, server.base_url), request, deadline=5)
    assert info.value.retryable is False and info.value.retry_after == 30


async def test_loading_wait_is_capped_by_the_option(server: FakeHF, tmp_path: Path) -> None:
    server.loading(model("text-to-image", "fast"), times=10, estimated_time=0.2)
    s = settings(tmp_path, server.base_url, options={"max_loading_wait_seconds": 0.3})
    with pytest.raises(errors.ProviderUnavailable, match=r"still loading .* max_loading_wait_seconds is 0\.3"):
        await run_direct(s, parse_request(request_for("text-to-image", "fast")))
    assert server.count(status=503) == 2  # waited 0.2 s once; a second wait would pass the cap


# ---- rate limits ------------------------------------------------------------------------------------------------


def test_429_is_retried_after_the_advertised_reset(server: FakeHF, tmp_path: Path) -> None:
    server.rate_limit(model("text-to-image", "fast"), limit=100, reset=1, window=60)
    with router(settings(tmp_path, server.base_url)) as r:
        started = time.monotonic()
        result = r.run(request_for("text-to-image", "fast"))
        elapsed = time.monotonic() - started
    assert result.provider == "huggingface" and result.attempts == 2
    assert elapsed >= 1.0  # the router's backoff honoured the RateLimit reset (backoff itself is ~1 ms)
    assert [req.status for req in server.requests] == [429, 200]


async def test_429_maps_to_rate_limited_with_retry_after(server: FakeHF, tmp_path: Path) -> None:
    server.rate_limit(model("text-to-image", "fast"), limit=100, reset=42, window=300)
    with pytest.raises(errors.RateLimited) as info:
        await run_direct(settings(tmp_path, server.base_url), parse_request(request_for("text-to-image", "fast")))
    assert info.value.retry_after == 42 and info.value.retryable
    assert "Rate limit reached" in info.value.message


def test_rate_limit_headers_are_read_in_every_form() -> None:
    now = 1_800_000_000.0
    assert retry_after_seconds({"RateLimit": '"api";r=0;t=55', "RateLimit-Policy": '"fixed";"api";q=5;w=60'}) == 55
    assert retry_after_seconds({"RateLimit": '"api";r=3;t=55'}) is None  # requests left: not the reason to wait
    assert retry_after_seconds({"ratelimit": "limit=500, remaining=0, reset=5"}) == 5  # draft 6, combined
    assert retry_after_seconds({"Retry-After": "7", "RateLimit": "limit=500, remaining=0, reset=5"}) == 7
    assert retry_after_seconds({"RateLimit-Reset": "9"}) == 9
    assert retry_after_seconds({"RateLimit-Reset": str(int(now) + 12)}, now=now) == 12  # an epoch time
    http_date = formatdate(now + 30, usegmt=True)
    assert retry_after_seconds({"Retry-After": http_date}, now=now) == 30
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({}) is None


# ---- errors, typed ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "error", "retryable"),
    [
        (400, "Input validation error: `width` must be a multiple of 8", errors.ProviderRejectedInput, False),
        (422, "Input validation error: `inputs` too long", errors.ProviderRejectedInput, False),
        (402, "You have exceeded your monthly included credits", errors.OutOfCredit, False),
        (403, "Forbidden: token lacks inference permission", errors.AuthenticationFailed, False),
        (404, "Model black-forest-labs/FLUX.1-schnell does not exist", errors.ModelNotFound, False),
        (500, "CUDA out of memory", errors.ProviderUnavailable, True),
        (503, "Service Unavailable", errors.ProviderUnavailable, True),
        (504, "Gateway Timeout", errors.ProviderTimeout, True),
        (418, "I'm a teapot", errors.ProviderError, False),
    ],
)
async def test_http_errors_map_to_genroute_errors_with_the_server_message(
    server: FakeHF, tmp_path: Path, status: int, message: str, error: type[errors.ProviderError], retryable: bool
) -> None:
    server.fail(model("text-to-image", "fast"), status=status, message=message)
    with pytest.raises(error) as info:
        await run_direct(settings(tmp_path, server.base_url), parse_request(request_for("text-to-image", "fast")))
    assert type(info.value) is error
    assert info.value.retryable is retryable
    assert f"HTTP {status} from black-forest-labs/FLUX.1-schnell: {message}" in info.value.message
    assert info.value.provider == "huggingface" and info.value.incurred is None


async def test_402_on_paid_work_says_the_account_cannot_pay(server: FakeHF, tmp_path: Path) -> None:
    server.credit_usd = 0.0
    s = settings(tmp_path, server.base_url, options={"allow_paid": True})
    with pytest.raises(errors.OutOfCredit) as info:
        await run_direct(s, parse_request(request_for("text-to-image", "fast")), billing="paid")
    assert "payment method" in info.value.hint
    with pytest.raises(errors.OutOfCredit) as info:
        await run_direct(s, parse_request(request_for("text-to-image", "fast")))
    assert "free credit is used up" in info.value.hint


async def test_wrong_token_is_authentication_failed(
    server: FakeHF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    with pytest.raises(errors.AuthenticationFailed, match="Invalid credentials in Authorization header") as info:
        await run_direct(settings(tmp_path, server.base_url), parse_request(request_for("text-to-image", "fast")))
    assert "HF_TOKEN" in info.value.hint and "hf_not_the_right_one" not in str(info.value)


async def test_unknown_model_is_model_not_found(server: FakeHF, tmp_path: Path) -> None:
    server.remove_model(model("speech-to-text", "fast"))
    with pytest.raises(errors.ModelNotFound, match="openai/whisper-small does not exist"):
        await run_direct(settings(tmp_path, server.base_url), parse_request(request_for("speech-to-text", "fast")))


async def test_client_timeout_is_provider_timeout(server: FakeHF, tmp_path: Path) -> None:
    server.slow(model("text-to-image", "fast"), seconds=2.0)
    s = settings(tmp_path, server.base_url, options={"request_timeout_seconds": 0.2})
    with pytest.raises(errors.ProviderTimeout, match="did not answer in time") as info:
        await run_direct(s, parse_request(request_for("text-to-image", "fast")))
    # sent, never answered: the service may have run it and billed it, so it counts at its estimate (3 s)
    assert info.value.incurred == Decimal(entry("text-to-image", "fast")["est_seconds"]) * PRICE
    assert not info.value.retryable  # posting it again would be billed again


async def test_a_timeout_after_answered_outputs_counts_them_and_the_unanswered_call(
    server: FakeHF, tmp_path: Path
) -> None:
    flux = model("text-to-image", "fast")
    server.slow(flux, seconds=0.0)  # the first image answers at once (1.5 s billed, measured)
    server.slow(flux, seconds=2.0)  # the second times out after it was sent
    s = settings(tmp_path, server.base_url, options={"request_timeout_seconds": 0.3})
    with pytest.raises(errors.ProviderTimeout) as info:
        await run_direct(s, parse_request(request_for("text-to-image", "fast", num_outputs=2)))
    estimate = Decimal(entry("text-to-image", "fast")["est_seconds"]) * PRICE
    assert info.value.incurred == Decimal("1.5") * PRICE + estimate


def test_a_timed_out_call_is_recorded_as_billed_and_not_posted_again(server: FakeHF, tmp_path: Path) -> None:
    flux = model("text-to-image", "fast")
    server.slow(flux, seconds=1.0, times=None)  # every call answers after the client gave up
    options = {"request_timeout_seconds": 0.25}
    s = settings(tmp_path, server.base_url, options=options, providers=("huggingface", "mock"))
    with router(s) as r:
        result = r.run(request_for("text-to-image", "fast"))
        assert result.provider == "mock"
        wait_until(lambda: server.billed_seconds > 0)  # the fake finishes, and bills, the work nobody waits for
        assert server.count(method="POST", model=flux) == 1  # not re-posted: each post is billed
        recorded = spent(r, "free:huggingface")
        assert recorded == Decimal(entry("text-to-image", "fast")["est_seconds"]) * PRICE
        assert recorded >= Decimal(str(server.spent_usd))  # the ledger never under-records


def test_a_connection_that_cannot_be_made_costs_nothing_and_is_retried(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = settings(tmp_path, f"http://127.0.0.1:{port}", providers=("huggingface", "mock"))
    with router(s) as r:
        result = r.run(request_for("text-to-image", "fast"))
        assert result.provider == "mock"
        assert spent(r, "free:huggingface") == 0  # nothing reached the service: nothing billed


def test_timeouts_before_sending_are_not_billed() -> None:
    connect = InferenceTimeoutError("Inference call timed out")
    connect.__cause__ = httpx2.ConnectTimeout("timed out")
    error = translate(connect, model="org/m", incurred=None)
    assert isinstance(error, errors.ProviderTimeout) and error.retryable and error.incurred is None
    assert "nothing sent" in error.message
    pooled = httpx2.PoolTimeout("no connection free")
    assert timed_out_after_sending(pooled) is False
    read = InferenceTimeoutError("Inference call timed out")
    read.__cause__ = httpx2.ReadTimeout("timed out")
    assert timed_out_after_sending(read) is True
    assert timed_out_after_sending(InferenceTimeoutError("no cause")) is True  # unknown: may have been sent
    assert timed_out_after_sending(ValueError("no timeout")) is None


def test_errors_reach_the_router_as_reasons_and_only_transient_ones_are_retried(server: FakeHF, tmp_path: Path) -> None:
    server.fail(model("text-to-image", "fast"), status=500, times=3, message="CUDA out of memory")
    server.fail(model("text-to-speech", "fast"), status=401, message="Invalid credentials in Authorization header")
    with router(settings(tmp_path, server.base_url)) as r:
        with pytest.raises(NoRouteAvailable) as info:
            r.run(request_for("text-to-image", "fast"))
        (reason,) = [x.reason for x in info.value.rejections if x.provider == "huggingface" and x.tier == "fast"]
        assert reason.startswith("failed after 3 attempt(s): huggingface: HTTP 500 from black-forest-labs/FLUX.1-sch")
        with pytest.raises(NoRouteAvailable, match=r"failed after 1 attempt\(s\).*HTTP 401"):
            r.run(request_for("text-to-speech", "fast"))
    assert server.count(status=500) == 3 and server.count(status=401) == 1


# ---- malformed answers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "kind", "error", "match"),
    [
        ("speech-to-text", "invalid_json", errors.ProviderError, "malformed answer .* not valid JSON"),
        ("text-generation", "invalid_json", errors.ProviderError, "malformed answer .* not valid JSON"),
        ("text-to-image", "wrong_content_type", errors.OutputRejected, "answered something that is not an image"),
        ("text-to-image", "truncated", errors.OutputRejected, "answered a broken image .*truncated"),
        ("image-to-image", "truncated", errors.OutputRejected, "answered a broken image"),
        ("text-to-speech", "wrong_content_type", errors.OutputRejected, r"not audio \(it starts with b'<html>"),
        ("text-to-speech", "empty", errors.OutputRejected, "answered no audio"),
    ],
)
async def test_malformed_answers_are_typed_and_billed(
    server: FakeHF, tmp_path: Path, task: str, kind: str, error: type[errors.ProviderError], match: str
) -> None:
    request = request_for(task, "fast")
    if task == "text-to-image":
        request.update(width=512, height=512)  # big enough that half the bytes lose pixel data
    server.malformed(model(task, "fast"), kind)
    with pytest.raises(error, match=match) as info:
        await run_direct(settings(tmp_path, server.base_url), parse_request(request))
    assert info.value.retryable  # a spoiled answer is worth another try
    assert info.value.incurred == Decimal("1.5") * PRICE  # the service billed the call all the same


@pytest.mark.parametrize("mid_body", [False, True])
async def test_dropped_connections_are_provider_unavailable(server: FakeHF, tmp_path: Path, mid_body: bool) -> None:
    server.drop(model("text-to-image", "fast"), mid_body=mid_body)
    with pytest.raises(errors.ProviderUnavailable, match="RemoteProtocolError") as info:
        await run_direct(settings(tmp_path, server.base_url), parse_request(request_for("text-to-image", "fast")))
    assert info.value.retryable


def test_a_malformed_answer_is_retried_and_both_calls_are_paid_from_the_credit(server: FakeHF, tmp_path: Path) -> None:
    server.malformed(model("speech-to-text", "fast"), "invalid_json")
    with router(settings(tmp_path, server.base_url)) as r:
        result = r.run(request_for("speech-to-text", "fast"))
        assert result.text == "hello brave new world" and result.attempts == 2
        assert result.actual_cost == 2 * Decimal("1.5") * PRICE
        assert spent(r, "free:huggingface") == result.actual_cost


def test_output_over_max_output_bytes_is_rejected(server: FakeHF, tmp_path: Path) -> None:
    s = settings(tmp_path, server.base_url, options={"max_output_bytes": 2048}, providers=("huggingface", "mock"))
    with router(s) as r:
        result = r.run(request_for("text-to-speech", "fast"))  # 1 s of 16-bit WAV is 32 kB
        assert result.provider == "mock"


# ---- offers: what is and is not served --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_data",
    [
        {"task": "text-to-video", "prompt": "a wave"},
        {"task": "image-to-video", "image": png()},
        {"task": "upscale", "image": png()},
        {"task": "inpaint", "prompt": "a cat", "image": png(), "mask": png()},
        {"task": "remove-background", "image": png()},
    ],
)
def test_no_offers_for_tasks_hf_inference_cannot_serve(server: FakeHF, tmp_path: Path, request_data: dict) -> None:
    with router(settings(tmp_path, server.base_url, providers=("huggingface", "mock"))) as r:
        plan = r.plan(request_data)
    assert {o.provider for o in plan.candidates} == {"mock"}
    task = request_data["task"]
    assert [str(x) for x in plan.rejections if x.provider == "huggingface"] == [
        f"huggingface · - [balanced]: makes no offer for {task}"
    ]


@pytest.mark.parametrize(
    ("task", "extra", "said"),
    [
        ("text-to-speech", {"language": "fr"}, "takes no language (asked for 'fr')"),
        ("text-to-speech", {"voice": "alloy"}, "takes no voice (asked for voice 'alloy')"),
        ("speech-to-text", {"language": "de"}, "takes no language (asked for 'de')"),
    ],
)
def test_fields_hf_inference_cannot_send_go_to_a_provider_that_takes_them(
    server: FakeHF, tmp_path: Path, caplog: pytest.LogCaptureFixture, task: str, extra: dict, said: str
) -> None:
    with router(settings(tmp_path, server.base_url, providers=("huggingface", "mock"))) as r:
        with caplog.at_level("INFO", logger="genroute_huggingface"):
            result = r.run(request_for(task, "fast", **extra))
        assert result.provider == "mock"  # served as asked, not with the field dropped
        plan = r.plan(request_for(task, "fast", **extra))
        assert [str(x) for x in plan.rejections if x.provider == "huggingface"] == [
            f"huggingface · - [fast]: makes no offer for {task}"
        ]
    assert said in caplog.text
    assert server.requests == []  # nothing sent, nothing billed


async def test_a_field_it_cannot_send_is_refused_before_any_call(server: FakeHF, tmp_path: Path) -> None:
    s = settings(tmp_path, server.base_url)
    english = offer_for(s, parse_request(request_for("text-to-speech", "fast")))  # as another plugin might offer
    with pytest.raises(errors.ProviderRejectedInput, match="takes no language"):
        await run_direct(s, parse_request(request_for("text-to-speech", "fast", language="fr")), offer=english)
    copies = parse_request(request_for("image-to-image", "fast", num_outputs=2))
    with pytest.raises(errors.ProviderRejectedInput, match="takes no seed: 2 outputs would be the same image"):
        await run_direct(s, copies, offer=offer_for(s, parse_request(request_for("image-to-image", "fast"))))
    assert server.requests == []


def test_english_speech_is_still_served_on_hugging_face(server: FakeHF, tmp_path: Path) -> None:
    with router(settings(tmp_path, server.base_url, providers=("huggingface", "mock"))) as r:
        assert r.run(request_for("text-to-speech", "fast", language="en-US")).provider == "huggingface"
    assert server.requests[-1].json() == {"inputs": "hello brave new world", "parameters": {}}


def test_image_to_image_makes_one_output_at_most(server: FakeHF, tmp_path: Path) -> None:
    with router(settings(tmp_path, server.base_url, providers=("huggingface", "mock"))) as r:
        result = r.run(request_for("image-to-image", "fast", num_outputs=2))
        assert result.provider == "mock" and len(result.artifacts) == 2
        plan = r.plan(request_for("image-to-image", "fast", num_outputs=2))
        (line,) = [x for x in plan.rejections if x.provider == "huggingface" and x.tier == "fast"]
        assert line.reason == "asks 2 outputs; this model makes at most 1"
        assert r.run(request_for("image-to-image", "fast")).provider == "huggingface"  # one output it makes
    assert server.count(method="POST") == 1


def test_several_images_from_text_are_distinct_with_or_without_a_seed(server: FakeHF, tmp_path: Path) -> None:
    with router(settings(tmp_path, server.base_url)) as r:
        for extra in ({}, {"seed": 11}):
            result = r.run(request_for("text-to-image", "fast", num_outputs=3, **extra))
            assert len({a.sha256 for a in result.artifacts}) == 3  # never the same image paid for twice
    seeds = [req.json()["parameters"]["seed"] for req in server.requests]
    assert len(set(seeds)) == 6 and seeds[3:] == [11, 12, 13]


def test_free_offers_per_tier_and_paid_ones_only_when_allowed(server: FakeHF, tmp_path: Path) -> None:
    request = parse_request(request_for("text-to-image", "fast"))
    from genroute_huggingface.offers import make_offers

    free = make_offers(request, settings(tmp_path, server.base_url))
    assert [(o.tier, o.billing, o.model) for o in free] == [
        (tier, "free", model("text-to-image", tier)) for tier in TIERS
    ]
    assert free[0].estimate == Decimal("3") * PRICE and free[0].entry is not None
    both = make_offers(request, settings(tmp_path, server.base_url, options={"allow_paid": True}))
    assert [o.billing for o in both] == ["free"] * 3 + ["paid"] * 3
    none_free = make_offers(request, settings(tmp_path, server.base_url, options={"monthly_free_credit_usd": "0"}))
    assert none_free == []


def test_paid_hugging_face_is_chosen_once_the_free_credit_is_used_up(server: FakeHF, tmp_path: Path) -> None:
    s = settings(tmp_path, server.base_url, options={"allow_paid": True}, credit="0.0004")  # one fast image
    with router(s) as r:
        first = r.run(request_for("text-to-image", "fast", prompt="one"))
        second = r.run(request_for("text-to-image", "fast", prompt="two"))
        assert spent(r, "free:huggingface") == first.actual_cost
        assert spent(r, "global") == second.actual_cost > 0  # now real money
        plan = r.plan(request_for("text-to-image", "fast", prompt="three"))
        assert plan.chosen is not None and plan.chosen.billing == "paid"
        assert any(x.reason.startswith("over budget") for x in plan.rejections if x.provider == "huggingface")
    assert server.count(status=200) == 2


# ---- token, availability, options -------------------------------------------------------------------------------


def test_without_hf_token_the_provider_is_unavailable_and_the_mock_serves(
    server: FakeHF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    with router(settings(tmp_path, server.base_url, providers=("huggingface", "mock"))) as r:
        assert r.providers["huggingface"].unavailable_reason(r.settings) == "HF_TOKEN is not set"
        plan = r.plan(request_for("text-to-image", "fast"))
        reasons = {x.reason for x in plan.rejections if x.provider == "huggingface"}
        assert reasons == {"unavailable: HF_TOKEN is not set"}
        assert r.run(request_for("text-to-image", "fast")).provider == "mock"
    with router(settings(tmp_path / "alone", server.base_url)) as r, pytest.raises(NoRouteAvailable) as info:
        r.run(request_for("text-to-image", "fast"))
    assert "unavailable: HF_TOKEN is not set" in str(info.value)
    assert server.requests == []


async def test_missing_token_at_run_time_is_authentication_failed(
    server: FakeHF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "   ")
    with pytest.raises(errors.AuthenticationFailed, match="HF_TOKEN is not set"):
        await run_direct(settings(tmp_path, server.base_url), parse_request(request_for("text-to-image", "fast")))


def test_offline_mode_is_reported(server: FakeHF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with router(settings(tmp_path, server.base_url)) as r:
        reason = r.providers["huggingface"].unavailable_reason(r.settings)
    assert reason is not None and reason.startswith("HF_HUB_OFFLINE is set")


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"base_url": "ftp://example.com"}, "providers.huggingface.options.base_url"),
        ({"monthly_free_credit_usd": "-1"}, "providers.huggingface.options.monthly_free_credit_usd"),
        ({"max_loading_wait_seconds": -1}, "providers.huggingface.options.max_loading_wait_seconds"),
        ({"colour": "blue"}, "providers.huggingface.options.colour"),
    ],
)
def test_bad_options_are_refused_naming_the_key(tmp_path: Path, options: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        router(settings(tmp_path, None, options=options))
    assert info.value.key == key


def test_a_token_in_the_options_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="secrets are not read from files"):
        settings(tmp_path, None, options={"hf_token": TOKEN})


_FRESH_PROCESS_RUN = """
import sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from fakes.hf_server import FakeHF
from hf_helpers import TOKEN, router, serve_catalogue, settings
with FakeHF(token=TOKEN) as server:
    serve_catalogue(server)
    with router(settings(Path(tempfile.mkdtemp()), server.base_url)) as r:
        started = time.monotonic()
        result = r.run({"task": "text-to-image", "prompt": "a lamp", "tier": "fast"})
        print(result.provider, round(time.monotonic() - started, 2))
"""


_HUB_SWITCHES = {
    "HF_HUB_DISABLE_TELEMETRY",
    "DISABLE_TELEMETRY",
    "DO_NOT_TRACK",
    "HF_HUB_OFFLINE",
    "HF_INFERENCE_ENDPOINT",
}
"""Variables that would turn the Hub look-up off (or send calls elsewhere) before the provider does."""


def test_with_a_base_url_no_call_waits_on_the_hub(tmp_path: Path) -> None:
    """huggingface_hub fetches an "agent harnesses" registry from the Hub the first time a process builds request
    headers (a blocking GET of up to 3 s). In a fresh process whose Hub (HF_ENDPOINT) accepts connections and never
    answers, a call under base_url must neither connect there nor wait."""
    hub = socket.socket()
    hub.bind(("127.0.0.1", 0))
    hub.listen(16)
    hub.settimeout(0.05)
    connections: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connections.append(hub.accept()[0])  # and never answer
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    env = {k: v for k, v in os.environ.items() if k not in _HUB_SWITCHES and not k.startswith("GENROUTE_")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{hub.getsockname()[1]}", HF_HOME=str(tmp_path / "hf"), HF_TOKEN=TOKEN)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _FRESH_PROCESS_RUN, str(Path(__file__).parent)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in connections:
            conn.close()
        hub.close()
    assert done.returncode == 0, done.stderr[-2000:]
    provider, seconds = done.stdout.split()
    assert provider == "huggingface"
    assert connections == []  # nothing reached the Hub
    assert float(seconds) < 2.5  # and nothing waited on it (the registry fetch times out after 3 s)
    assert TOKEN not in done.stdout + done.stderr


def test_the_plugin_is_installed_under_the_genroute_entry_point_group() -> None:
    found = {ep.name: ep.value for ep in entry_points(group="genroute")}
    assert found.get("huggingface") == "genroute_huggingface.plugin"


# ---- the client's own provider routing --------------------------------------------------------------------------


async def test_client_routing_reaches_hf_inference_without_a_base_url(server: FakeHF, tmp_path: Path) -> None:
    with fake_hf_routing(server):
        async with router(settings(tmp_path, None)) as r:
            image = await r.arun(request_for("text-to-image", "fast"))
            text = await r.arun(request_for("text-generation", "fast"))
    assert Image.open(image.artifacts[0].path).size == (96, 64)
    assert text.text == "Echo: tell me a story"
    hosts_paths = [(q.method, q.host, q.path) for q in server.requests]
    assert ("GET", "huggingface.co", f"/api/models/{model('text-to-image', 'fast')}") in hosts_paths
    assert ("POST", "router.huggingface.co", f"/hf-inference/models/{model('text-to-image', 'fast')}") in hosts_paths
    assert (
        "POST",
        "router.huggingface.co",
        f"/hf-inference/models/{model('text-generation', 'fast')}/v1/chat/completions",
    ) in hosts_paths


# ---- batches share one client per event loop ---------------------------------------------------------------------


async def test_concurrent_requests_share_the_client_and_each_settles_its_own_compute(
    server: FakeHF, tmp_path: Path
) -> None:
    server.add_model(model("text-to-image", "fast"), task="text-to-image", latency=0.2, compute_seconds=2.0)
    server.add_model(model("text-to-image", "balanced"), task="text-to-image", latency=0.2, compute_seconds=5.0)
    requests = [request_for("text-to-image", tier, prompt=f"p{i}") for i in range(4) for tier in ("fast", "balanced")]
    async with router(settings(tmp_path, server.base_url)) as r:
        started = time.monotonic()
        results = await r.abatch(requests, concurrency=8)
        assert time.monotonic() - started < 1.2  # served in parallel (8 × 0.2 s one by one would be 1.6 s)
        costs = sorted({(res.tier, res.actual_cost) for res in results if not isinstance(res, Exception)})
        assert costs == [("balanced", Decimal("5") * PRICE), ("fast", Decimal("2") * PRICE)]
        assert spent(r, "free:huggingface") == 4 * Decimal("7") * PRICE
    assert server.count(status=200) == 8


def test_config_helper_keeps_the_shipped_catalogue(tmp_path: Path) -> None:
    raw = config(tmp_path, "http://127.0.0.1:1")
    assert set(raw["providers"]["huggingface"]["models"]) == {
        "text-to-image",
        "image-to-image",
        "text-to-speech",
        "speech-to-text",
        "text-generation",
    }
    for request_type in (TextToImage, ImageToImage, TextToSpeech, SpeechToText, TextGeneration):
        assert request_type.model_fields["task"].default in raw["providers"]["huggingface"]["models"]
    assert TextToVideo.model_fields["task"].default not in raw["providers"]["huggingface"]["models"]


def _credit_limits(settings_: Any) -> list[tuple[str, str, Decimal]]:
    with router(settings_) as r:
        return [(lim.scope, lim.period, lim.usd) for lim in r.ledger.limits if lim.scope == "free:huggingface"]


def test_the_free_credit_option_is_the_monthly_limit_unless_one_is_configured(tmp_path: Path) -> None:
    # No limit on free:huggingface in the file: the plugin brings the option's credit as the monthly limit.
    brought = settings(tmp_path, "http://127.0.0.1:9", credit=None, options={"monthly_free_credit_usd": "0.25"})
    assert _credit_limits(brought) == [("free:huggingface", "monthly", Decimal("0.25"))]
    # A limit in the file on that scope and period replaces it (here, keeping some credit aside).
    configured = settings(tmp_path, "http://127.0.0.1:9", credit="0.05", options={"monthly_free_credit_usd": "0.25"})
    assert _credit_limits(configured) == [("free:huggingface", "monthly", Decimal("0.05"))]
    # No free credit: no free offers, nothing to cap.
    none = settings(tmp_path, "http://127.0.0.1:9", credit=None, options={"monthly_free_credit_usd": "0"})
    assert _credit_limits(none) == []


def test_the_brought_limit_caps_free_work_and_shows_in_the_budget(server: FakeHF, tmp_path: Path) -> None:
    one_image = "0.00036"  # the credit covers exactly one fast image (3 s estimated at $0.00012)
    s = settings(
        tmp_path,
        server.base_url,
        credit=None,
        options={"monthly_free_credit_usd": one_image},
        providers=("huggingface", "mock"),
    )
    with router(s) as r:
        first = r.run(parse_request(request_for("text-to-image", "fast")))
        second = r.run(parse_request({**request_for("text-to-image", "fast"), "prompt": "another"}))
        usage = {(u.scope, u.period): u for u in r.ledger.usage()}
    assert (first.provider, second.provider) == ("huggingface", "mock")  # the credit, then the fallback
    monthly = usage[("free:huggingface", "monthly")]
    assert monthly.limit == Decimal(one_image) and 0 < monthly.spent <= monthly.limit
    assert monthly.left is not None and monthly.left < Decimal(one_image)  # not enough for another estimate


# ---- what is kept: images, audio, transcripts (units) -----------------------------------------------------------


def _flac(sample_rate: int, samples: int) -> bytes:
    info = bytearray(34)
    info[10] = (sample_rate >> 12) & 0xFF
    info[11] = (sample_rate >> 4) & 0xFF
    info[12] = (sample_rate & 0x0F) << 4 | (0 << 1)  # channels-1 and bits-per-sample high bit: 0
    info[13] = (samples >> 32) & 0x0F
    info[14:18] = (samples & 0xFFFFFFFF).to_bytes(4, "big")
    return b"fLaC" + bytes([0x80, 0, 0, 34]) + bytes(info) + b"\0" * 64


# An MPEG-1 layer III frame at 128 kbit/s, 44.1 kHz, no padding: 144 * 128000 // 44100 = 417 bytes.
MP3_FRAME = b"\xff\xfb\x90\x64" + b"\x00" * 413
TWO_MP3_FRAMES = MP3_FRAME * 2
TEXT_BODY = "Model is overloaded, please retry later.".encode("utf-16")  # starts FF FE: one "MPEG frame header"


def test_a_text_body_is_not_taken_for_mp3_audio() -> None:
    from genroute_huggingface import media

    assert TEXT_BODY[:2] == b"\xff\xfe"  # what the old two-byte check took for an MPEG audio frame
    assert media.sniff_audio(TEXT_BODY) is None
    with pytest.raises(errors.OutputRejected, match=r"answered something that is not audio") as info:
        media.checked_audio(TEXT_BODY, model="m", max_bytes=10_000)
    assert info.value.retryable
    assert media.checked_audio(TWO_MP3_FRAMES, model="m", max_bytes=10_000) == "audio/mpeg"


async def test_a_speech_answer_that_is_text_is_rejected_not_stored_as_mp3(
    server: FakeHF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "_text_to_speech", lambda request: (TEXT_BODY, "audio/mpeg"))  # a lying header
    with pytest.raises(errors.OutputRejected, match="answered something that is not audio") as info:
        await run_direct(settings(tmp_path, server.base_url), parse_request(request_for("text-to-speech", "fast")))
    assert info.value.retryable


def test_audio_is_sniffed_and_measured() -> None:
    from genroute_huggingface import media

    wav = make_wav("one two three four")
    assert media.sniff_audio(wav) == "audio/wav" and media.audio_seconds(wav) == 1.0
    flac = _flac(16_000, 48_000)
    assert media.sniff_audio(flac) == "audio/flac" and media.audio_seconds(flac) == 3.0
    assert media.sniff_audio(b"ID3\x04\x00rest") == "audio/mpeg"
    assert media.sniff_audio(TWO_MP3_FRAMES) == "audio/mpeg"  # MPEG-1 layer III, without an ID3 tag
    assert media.sniff_audio(MP3_FRAME[:4] + b"rest") is None  # one frame header alone is not enough
    assert media.sniff_audio(b"\xff\xf1\x50\x80rest") is None  # AAC (ADTS) is not MP3
    assert media.sniff_audio(b"OggS\x00\x02") == "audio/ogg"
    assert media.sniff_audio(b"<html><body>502</body></html>") is None
    with pytest.raises(errors.OutputRejected, match="broken WAV"):
        media.checked_audio(b"RIFF\x00\x00\x00\x00WAVEjunk", model="m", max_bytes=10_000)
    with pytest.raises(errors.OutputRejected, match="over max_output_bytes"):
        media.checked_audio(wav, model="m", max_bytes=1024)


def test_images_are_stored_as_png_whatever_the_service_sent() -> None:
    from genroute_huggingface import media

    buffer = io.BytesIO()
    Image.new("CMYK", (70, 50), (0, 50, 100, 0)).save(buffer, format="JPEG")
    data = media.png_bytes(Image.open(io.BytesIO(buffer.getvalue())), model="m", max_bytes=10**6)
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (70, 50))
    with pytest.raises(errors.OutputRejected, match="over max_output_bytes") as info:
        media.png_bytes(Image.effect_noise((256, 256), 80), model="m", max_bytes=2048)
    assert info.value.retryable is False


def test_transcript_segments_from_chunks() -> None:
    from types import SimpleNamespace

    from genroute_huggingface import media

    chunks = [
        SimpleNamespace(text=" Hello there.", timestamp=[0.0, 1.5]),
        SimpleNamespace(text="", timestamp=[1.5, 1.6]),  # empty chunks are dropped
        SimpleNamespace(text="General Kenobi", timestamp=[2.0, None]),  # whisper leaves the last end open
    ]
    found = media.segments("Hello there. General Kenobi", chunks, duration=3.25)  # type: ignore[arg-type]
    assert [(s.start, s.end, s.text) for s in found] == [(0.0, 1.5, "Hello there."), (2.0, 3.25, "General Kenobi")]
    middle = [SimpleNamespace(text="a", timestamp=[0.0, None]), SimpleNamespace(text="b", timestamp=[1.0, 2.0])]
    assert [s.end for s in media.segments("a b", middle, None)] == [1.0, 2.0]  # type: ignore[arg-type]
    (whole,) = media.segments(" no chunks at all ", None, 4.0)
    assert (whole.start, whole.end, whole.text) == (0.0, 4.0, "no chunks at all")
    assert media.segments("", None, 4.0) == []
