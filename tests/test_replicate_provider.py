"""The Replicate provider through ``genroute.Router``: every task and tier, costs, streaming, deployments.

The real ``replicate`` client talks to :class:`fakes.FakeReplicate`; settings are the repository's
catalogue with a prod-like profile (Replicate first, the mock as fallback). Each case checks the bytes
(real PNG/WebP/GIF/WAV of the asked count), and that the ledger holds the estimate and the actual cost
settled from what the fake reports (outputs, ``predict_time``, audio length, tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fakes import FakeReplicate
from genroute import errors
from genroute.money import quantize
from genroute.router import Router
from genroute.types import (
    ImageToImage,
    ImageToVideo,
    Inpaint,
    RemoveBackground,
    RequestModel,
    Result,
    SpeechToText,
    TextGeneration,
    TextToImage,
    TextToSpeech,
    TextToVideo,
    Upscale,
)
from test_replicate_helpers import TOKEN, build_settings, creates, image_of, mask_png, png, wav

SPEAKER_PATH = "/speaker.wav"
PER_SECOND_TIME = 0.05  # predict_time given to per-second models, so their cost is visible in micro-dollars

pytest_plugins = ["test_replicate_helpers"]  # its fixtures: fake, token, router, make_router


def _request(task: str, tier: str, speaker_url: str) -> RequestModel:
    image = png(48, 32)
    match task:
        case "text-to-image":
            count = {"fast": 2, "balanced": 3, "quality": 1}[tier]
            return TextToImage(prompt="a red fox", tier=tier, num_outputs=count, aspect_ratio="16:9")  # type: ignore[arg-type]
        case "image-to-image":
            return ImageToImage(prompt="as a watercolour", image=image, tier=tier, num_outputs=2)  # type: ignore[arg-type]
        case "inpaint":
            return Inpaint(prompt="a cat", image=image, mask=mask_png(48, 32), tier=tier)  # type: ignore[arg-type]
        case "upscale":
            return Upscale(image=image, scale=2, tier=tier)  # type: ignore[arg-type]
        case "remove-background":
            return RemoveBackground(image=image, tier=tier)  # type: ignore[arg-type]
        case "text-to-video":
            return TextToVideo(prompt="waves", tier=tier, duration_seconds=2, fps=8)  # type: ignore[arg-type]
        case "image-to-video":
            return ImageToVideo(image=image, tier=tier, duration_seconds=2, fps=8)  # type: ignore[arg-type]
        case "text-to-speech":
            voice = speaker_url if tier == "quality" else None  # xtts-v2 clones the voice of a sample
            return TextToSpeech(text="Hello from genroute, this is a test.", voice=voice, tier=tier)  # type: ignore[arg-type]
        case "speech-to-text":
            return SpeechToText(audio=wav(7.5), tier=tier)  # type: ignore[arg-type]
        case _:
            return TextGeneration(prompt="Say hello", tier=tier, max_tokens=64)  # type: ignore[arg-type]


def _check_content(task: str, tier: str, request: RequestModel, result: Result) -> None:
    types = [a.media_type for a in result.artifacts]
    if task in ("text-to-image", "image-to-image", "inpaint"):
        expected = getattr(request, "num_outputs", 1)
        assert len(result.artifacts) == expected
        for artifact in result.artifacts:
            assert artifact.media_type in ("image/png", "image/webp", "image/jpeg")
            image_of(artifact.read_bytes())  # real, decodable pictures
    elif task == "upscale":
        assert types == ["image/png"] and image_of(result.artifacts[0].read_bytes()).size == (96, 64)
    elif task == "remove-background":
        assert types == ["image/png"] and image_of(result.artifacts[0].read_bytes()).mode == "RGBA"
    elif task in ("text-to-video", "image-to-video"):
        assert types == ["image/gif"] and getattr(image_of(result.artifacts[0].read_bytes()), "n_frames", 1) > 1
    elif task == "text-to-speech":
        assert types == ["audio/wav"] and result.artifacts[0].read_bytes()[:4] == b"RIFF"
    elif task == "speech-to-text":
        assert result.text and result.segments and result.segments[-1].end == pytest.approx(7.5)
        assert [s.start for s in result.segments] == [0.0, 3.0, 6.0]
        assert "00:00:03,000 --> 00:00:06,000" in result.to_srt() and result.to_webvtt().startswith("WEBVTT")
    else:
        assert result.text and result.text.startswith("Here is a reply") and result.artifacts == []


def _expected_cost(router: Router, fake: FakeReplicate, task: str, tier: str, result: Result) -> Decimal:
    entry = router.settings.provider("replicate").models[task][tier]  # type: ignore[index]
    prediction = fake.prediction(result.job_id or "")
    match entry.unit:
        case "output":
            quantity = Decimal(len(result.artifacts))
        case "compute_second":
            assert prediction.predict_time == pytest.approx(PER_SECOND_TIME)
            quantity = Decimal(str(prediction.predict_time))
        case "audio_minute":
            quantity = Decimal("7.5") / 60
        case "1k_tokens":
            quantity = Decimal(prediction.metrics["output_token_count"]) / 1000
        case _:
            raise AssertionError(entry.unit)
    return quantize(entry.price * quantity)


TASKS = ["text-to-image", "image-to-image", "inpaint", "upscale", "remove-background", "text-to-video",
         "image-to-video", "text-to-speech", "speech-to-text", "text-generation"]  # fmt: skip


@pytest.mark.parametrize("task", TASKS)
def test_every_task_and_tier_through_the_router(
    task: str, fake: FakeReplicate, router: Router, httpserver: Any
) -> None:
    httpserver.expect_request(SPEAKER_PATH).respond_with_data(wav(1.0), content_type="audio/wav")
    for name, model in fake.models.items():
        if not model.official:  # community models bill per second: give them a visible predict_time
            fake.set_predict_time(name, PER_SECOND_TIME)
    for tier in ("fast", "balanced", "quality"):
        request = _request(task, tier, httpserver.url_for(SPEAKER_PATH))
        result = router.run(request)
        assert (result.provider, result.tier, result.task) == ("replicate", tier, task), result
        assert result.job_id and fake.prediction(result.job_id).status == "succeeded"
        _check_content(task, tier, request, result)
        entry = next(e for e in router.ledger.entries() if e.job_id == result.job_id)
        assert entry.status == "settled" and entry.provider == "replicate" and entry.task == task
        assert entry.estimate == quantize(result.estimated_cost) and entry.estimate > 0
        assert entry.actual == result.actual_cost == _expected_cost(router, fake, task, tier, result)
        stored = router.store.get(result.request_key) if router.store else None
        assert stored is not None and stored.job_id == result.job_id
    assert router.ledger.open_reservations() == []
    assert len(fake.predictions) == 3  # one prediction per request: no retries, no duplicates


def test_inputs_reach_the_model_under_its_own_names(fake: FakeReplicate, router: Router) -> None:
    router.run(TextToImage(prompt="fox", tier="quality", width=1024, height=768, seed=42))
    router.run(ImageToVideo(image=png(), tier="fast", duration_seconds=3, fps=8, seed=1))
    router.run(ImageToImage(image=png(), prompt="ink", tier="fast", strength=0.3))
    router.run(TextGeneration(prompt="hi", system_prompt="be brief", max_tokens=33, temperature=0.2, tier="fast"))
    pro, svd, sdxl, llama = (p.input for p in fake.predictions)
    assert pro == {"prompt": "fox", "aspect_ratio": "custom", "width": 1024, "height": 768, "seed": 42}
    assert svd["video_length"] == "25_frames_with_svd_xt" and svd["frames_per_second"] == 8
    assert svd["input_image"].startswith("data:image/png;base64,") and svd["seed"] == 1
    assert sdxl["prompt_strength"] == 0.3 and sdxl["num_inference_steps"] == 25  # the catalogue's fixed input
    assert llama == {"prompt": "hi", "system_prompt": "be brief", "max_tokens": 33, "temperature": 0.2}
    assert all(p.ignored_inputs == [] for p in fake.predictions)  # every key sent is one the model declares


def test_multi_output_settles_per_output(fake: FakeReplicate, router: Router) -> None:
    result = router.run(TextToImage(prompt="four foxes", tier="balanced", num_outputs=4))
    assert len(result.artifacts) == 4 and len({a.sha256 for a in result.artifacts}) == 4
    assert result.actual_cost == Decimal("0.1") == result.estimated_cost  # 4 × $0.025
    assert fake.prediction(result.job_id or "").input["num_outputs"] == 4


def test_out_of_range_input_is_refused_before_any_prediction(fake: FakeReplicate, router: Router) -> None:
    cases: list[tuple[RequestModel, str]] = [
        (TextToImage(prompt="x", tier="quality", width=2048, height=1024, provider="replicate"),
         r"width: 2048 does not fit black-forest-labs/flux-pro .*allowed from 256 to 1440"),
        (Inpaint(prompt="x", image=png(), mask=mask_png(), width=1000, height=512, tier="fast", provider="replicate"),
         r"width: 1000 .*allowed one of 128, 256"),
        (TextToSpeech(text="hi", voice="nobody", tier="fast", provider="replicate"),
         r'voice: "nobody" does not fit jaaari/kokoro-82m .*allowed one of "af_bella"'),
        (TextToSpeech(text="hi", tier="quality", provider="replicate"),
         r"voice: lucataco/xtts-v2 requires input 'speaker'"),
        (TextToVideo(prompt="x", num_outputs=2, tier="fast", provider="replicate"),
         r"asks 2 outputs; this model makes at most 1"),
        (SpeechToText(audio=wav(1), language="xx", tier="fast", provider="replicate"),
         r'language: "xx" does not fit openai/whisper'),
    ]  # fmt: skip
    for request, message in cases:
        with pytest.raises(errors.NoRouteAvailable, match=message):
            router.run(request)
    assert creates(fake) == 0 and fake.predictions == []
    assert router.ledger.open_reservations() == []
    assert all(e.status == "released" for e in router.ledger.entries())


def test_a_fast_model_takes_at_most_three_requests_per_prediction(fake: FakeReplicate, router: Router) -> None:
    router.run(TextToImage(prompt="cold start", tier="fast"))
    assert fake.count() == 2  # GET the model's schema once, then one blocking create
    before = fake.count()
    router.run(TextToImage(prompt="warm", tier="fast"))
    assert fake.count() - before == 1  # schema cached on disk: the create is the only request
    before = fake.count()
    router.run(ImageToImage(prompt="community, cold", image=png(), tier="balanced"))
    # sdxl is a community model: the by-name create 404s once (nothing is created), then it runs by version.
    assert fake.count() - before == 3 and len(fake.predictions) == 3
    assert fake.predictions[-1].source == "version"
    before = fake.count()
    router.run(ImageToImage(prompt="community, warm", image=png(), tier="balanced"))
    assert fake.count() - before == 1  # what was learned is kept with the schema
    before = fake.count()
    router.run(Upscale(image=png(), tier="fast"))
    assert fake.count() - before == 2  # per-second models are tried by version first: no 404 at all


def test_schema_cache_survives_a_new_router(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    settings = build_settings(tmp_path, fake)
    make_router(settings).run(TextToImage(prompt="one", tier="fast"))
    assert list((tmp_path / "rstate" / "schemas").glob("*.json"))
    before = fake.count("GET", "/v1/models/*")
    make_router(settings).run(TextToImage(prompt="two", tier="fast"))  # another process's view
    assert fake.count("GET", "/v1/models/*") == before


def test_a_slow_prediction_is_polled_with_backoff(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    fake.set_predict_time("black-forest-labs/flux-dev", 1.4)
    settings = build_settings(tmp_path, fake, options={"wait_seconds": 1, "poll_initial_seconds": 0.05,
                                                       "poll_max_seconds": 0.2})  # fmt: skip
    result = make_router(settings).run(TextToImage(prompt="slow", tier="balanced"))
    assert result.provider == "replicate" and len(result.artifacts) == 1
    create = fake.requests[1]
    assert create.headers["prefer"] == "wait=1" and create.response_headers["Preference-Applied"] == "wait"
    polls = fake.count("GET", "/v1/predictions/*")
    assert 1 <= polls <= 5  # 0.05, 0.075, 0.11, 0.17, 0.2 … not a busy loop


def test_streaming_sync_and_async_lands_in_store_and_ledger(fake: FakeReplicate, router: Router) -> None:
    stream = router.stream(TextGeneration(prompt="stream me", tier="fast"))
    pieces = list(stream)
    assert len(pieces) > 5 and stream.result is not None
    assert "".join(pieces) == stream.result.text
    stored = router.store.get(stream.result.request_key) if router.store else None
    assert stored is not None and stored.text == stream.result.text and stored.provider == "replicate"
    prediction = fake.prediction(stream.result.job_id or "")
    tokens = prediction.metrics["output_token_count"]
    assert stream.result.actual_cost == quantize(Decimal("0.00025") * tokens / 1000)
    assert fake.count("GET", "/stream/*") == 1

    async def consume() -> tuple[list[str], Result | None]:
        text_stream = router.astream(TextGeneration(prompt="async stream", tier="balanced"))
        return [piece async for piece in text_stream], text_stream.result

    import asyncio

    got, result = asyncio.run(consume())
    assert result is not None and "".join(got) == result.text and result.model == "meta/meta-llama-3-70b-instruct"
    settled = [e for e in router.ledger.entries() if e.status == "settled"]
    assert len(settled) == 2 and {e.job_id for e in settled} == {stream.result.job_id, result.job_id}


def test_a_deployment_entry_runs_through_the_deployments_api(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    fake.add_deployment("acme/esrgan-prod", model="nightmareai/real-esrgan", hardware="gpu-t4")
    fake.set_predict_time("nightmareai/real-esrgan", 0.1)
    entry = {"model": "nightmareai/real-esrgan", "deployment": "acme/esrgan-prod", "unit": "compute_second",
             "hardware": "T4", "price": "0.000225", "est_seconds": "4"}  # fmt: skip
    settings = build_settings(tmp_path, fake, models={"upscale": {"fast": entry}})
    result = make_router(settings).run(Upscale(image=png(40, 30), scale=3, tier="fast"))
    prediction = fake.prediction(result.job_id or "")
    assert prediction.source == "deployment" and prediction.deployment == "acme/esrgan-prod"
    assert image_of(result.artifacts[0].read_bytes()).size == (120, 90)
    assert result.actual_cost == quantize(Decimal("0.000225") * Decimal("0.1"))
    assert fake.count("POST", "/v1/deployments/acme/esrgan-prod/predictions") == 1


def test_without_a_token_nothing_is_offered_and_the_error_names_the_variable(
    fake: FakeReplicate, tmp_path: Path, make_router: Callable[..., Router], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    router = make_router(build_settings(tmp_path, fake, providers=("replicate",)))
    assert router.providers["replicate"].unavailable_reason(router.settings) == "REPLICATE_API_TOKEN is not set"
    plan = router.plan(TextToImage(prompt="x", tier="fast"))
    assert plan.chosen is None
    assert any("unavailable: REPLICATE_API_TOKEN is not set" in r.reason for r in plan.rejections)
    with pytest.raises(errors.NoRouteAvailable, match="REPLICATE_API_TOKEN is not set"):
        router.run(TextToImage(prompt="x", tier="fast"))
    assert fake.count() == 0


def test_the_token_never_appears_in_logs_errors_or_files(
    fake: FakeReplicate, router: Router, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    router.run(TextToImage(prompt="logged", tier="fast"))
    fake.faults.add("POST /v1/models/*/predictions", 401, times=1)
    fake.faults.add("POST /v1/models/*/predictions", 503, times=1)
    with pytest.raises(errors.NoRouteAvailable) as failure:
        router.run(TextToImage(prompt="refused", tier="fast", provider="replicate"))
    router.run(TextToImage(prompt="after a 503", tier="fast"))
    assert "HTTP 401" in str(failure.value)
    assert TOKEN not in caplog.text and TOKEN not in str(failure.value) and TOKEN not in repr(failure.value)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert all(r.headers.get("authorization") == "<redacted>" for r in fake.requests)  # it was sent, though


def test_large_media_inputs_are_uploaded_once_and_reused_on_a_retry(
    fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]
) -> None:
    settings = build_settings(
        tmp_path, fake, options={"inline_media_max_bytes": 64, "wait_seconds": 1, "poll_error_limit": 1}
    )
    fake.set_predict_time("nightmareai/real-esrgan", 1.2)
    fake.faults.add("GET /v1/predictions/*", 500, times=1)  # the first attempt fails while polling
    result = make_router(settings).run(Upscale(image=png(40, 30), scale=2, tier="fast"))
    assert result.provider == "replicate" and result.attempts == 2
    assert image_of(result.artifacts[0].read_bytes()).size == (80, 60)
    assert fake.count("POST", "/v1/files") == 1  # uploaded once, not once per attempt
    (prediction,) = fake.predictions
    assert prediction.input["image"].startswith(f"{fake.base_url}/v1/files/")
