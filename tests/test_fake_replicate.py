"""The local Replicate fake, exercised with the real, unmodified ``replicate`` client (1.0.7).

Each test points ``replicate.Client(api_token=…, base_url=server.base_url)`` at a fresh
:class:`fakes.replicate_server.FakeReplicate` and checks what the client does with the fake's answers:
blocking creates, polling, file outputs, version-pinned runs, deployments, cancel, SSE streams, signed
webhooks, uploads, and every injected fault. Models run for 20 ms, so the whole file takes seconds.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import threading
import time
import wave
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import replicate
from PIL import Image
from pytest_httpserver import HTTPServer
from replicate.exceptions import ModelError, ReplicateError
from replicate.helpers import FileOutput
from replicate.webhook import InvalidSignatureError, InvalidTimestampError, WebhookSigningSecret
from werkzeug.wrappers import Response

from fakes import FakeReplicate, default_catalogue
from request_samples import wav_bytes

TOKEN = "r8_test"
SCHNELL = "black-forest-labs/flux-schnell"
FLUX_DEV = "black-forest-labs/flux-dev"
ESRGAN = "nightmareai/real-esrgan"
LLAMA = "meta/meta-llama-3-8b-instruct"
CREATE_ON_MODEL = "/v1/models/*/predictions"


def _png(width: int = 40, height: int = 30, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _open_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.fixture
def server() -> Iterator[FakeReplicate]:
    with FakeReplicate(prediction_seconds=0.02, token=TOKEN) as fake:
        default_catalogue(fake)
        yield fake
    assert fake.errors == [], "the fake raised unexpected exceptions:\n" + "\n".join(fake.errors)


def _client(server: FakeReplicate, **kwargs: Any) -> replicate.Client:
    client = replicate.Client(api_token=TOKEN, base_url=server.base_url, **kwargs)
    client.poll_interval = 0.01
    return client


@pytest.fixture
def client(server: FakeReplicate) -> replicate.Client:
    return _client(server)


# --------------------------------------------------------------------------------------------------
# Creating, waiting, polling
# --------------------------------------------------------------------------------------------------
def test_blocking_create_succeeds_in_one_request(server: FakeReplicate, client: replicate.Client) -> None:
    started = time.monotonic()
    prediction = client.models.predictions.create(
        model=SCHNELL, input={"prompt": "a red fox", "num_outputs": 2, "output_format": "png"}, wait=5
    )
    assert time.monotonic() - started < 5
    assert prediction.status == "succeeded"
    assert prediction.model == SCHNELL and prediction.version.startswith("dp-")
    assert prediction.metrics is not None and prediction.metrics["predict_time"] == pytest.approx(0.02)
    assert prediction.metrics["image_count"] == 2
    assert prediction.started_at and prediction.completed_at and prediction.error is None
    assert len(prediction.output) == 2
    for uri in prediction.output:
        assert uri.startswith("data:image/png;base64,")
        assert _open_image(base64.b64decode(uri.split(",", 1)[1])).size == (1024, 1024)
    assert server.count() == 1  # the blocking create was the only HTTP request
    (record,) = server.requests
    assert record.status == 201 and record.headers["prefer"] == "wait=5"
    assert record.response_headers["Preference-Applied"] == "wait"
    assert record.headers["authorization"] == "<redacted>" and record.json["input"]["prompt"] == "a red fox"
    assert [p.status for p in server.predictions] == ["succeeded"]


def test_slow_model_answers_starting_then_polling_reaches_success(
    server: FakeReplicate, client: replicate.Client
) -> None:
    server.set_predict_time(FLUX_DEV, 1.3)
    started = time.monotonic()
    prediction = client.models.predictions.create(model=FLUX_DEV, input={"prompt": "slow"}, wait=1)
    assert 0.9 < time.monotonic() - started < 1.3
    # Replicate answers a blocking create that ran out of time with "starting", even while processing.
    assert prediction.status == "starting" and prediction.output is None
    assert server.prediction(prediction.id).status == "processing"
    assert server.requests[0].response_headers["Preference-Applied"] == "wait"
    prediction.reload()
    assert prediction.status == "processing" and prediction.progress is not None
    prediction.wait()
    assert prediction.status == "succeeded" and prediction.metrics["predict_time"] == pytest.approx(1.3)
    assert server.count("GET", "/v1/predictions/*") >= 2


def test_states_go_starting_processing_succeeded(server: FakeReplicate, client: replicate.Client) -> None:
    server.add_model("acme/queued", output="image", predict_time=0.15, start_seconds=0.1)
    prediction = client.models.predictions.create(model="acme/queued", input={"prompt": "queue"})
    assert prediction.status == "starting" and prediction.started_at is None
    prediction.reload()
    assert prediction.status == "starting"
    time.sleep(0.12)
    prediction.reload()
    assert prediction.status == "processing" and prediction.started_at is not None
    assert prediction.logs.startswith("Using seed:")
    prediction.wait()
    assert prediction.status == "succeeded"
    assert prediction.created_at < prediction.started_at < prediction.completed_at
    assert isinstance(prediction.output, str) and prediction.output.startswith("data:image/png")


def test_run_returns_file_outputs_with_real_image_bytes(server: FakeReplicate, client: replicate.Client) -> None:
    output = client.run(SCHNELL, input={"prompt": "a lighthouse", "output_format": "png", "aspect_ratio": "16:9"})
    assert isinstance(output, list) and len(output) == 1 and isinstance(output[0], FileOutput)
    image = _open_image(output[0].read())
    assert image.format == "PNG" and image.width > image.height
    # flux-schnell's real default format is webp; flux-pro returns one URI, not a list
    (webp,) = client.run(SCHNELL, input={"prompt": "a lighthouse"})
    assert _open_image(webp.read()).format == "WEBP"
    single = client.run("black-forest-labs/flux-pro", input={"prompt": "a lighthouse", "output_format": "jpg"})
    assert isinstance(single, FileOutput) and _open_image(single.read()).format == "JPEG"
    # Same input and seed → byte-identical output
    first = client.run(SCHNELL, input={"prompt": "seeded", "seed": 7, "output_format": "png"})[0].read()
    again = client.run(SCHNELL, input={"prompt": "seeded", "seed": 7, "output_format": "png"})[0].read()
    assert first == again
    assert server.count("POST") == 5 and server.count("GET") == 0


def test_version_pinned_run_and_community_models(server: FakeReplicate, client: replicate.Client) -> None:
    version = server.model(ESRGAN).latest
    # Community models cannot be run by name: the models endpoint answers 404, as Replicate does.
    with pytest.raises(ReplicateError) as info:
        client.run(ESRGAN, input={"image": _data_uri(_png(), "image/png")})
    assert info.value.status == 404
    assert server.predictions == []

    output = client.run(f"{ESRGAN}:{version}", input={"image": _data_uri(_png(40, 30), "image/png"), "scale": 2})
    assert isinstance(output, FileOutput)
    assert _open_image(output.read()).size == (80, 60)
    pinned = [r for r in server.requests if r.status != 404]
    assert [(r.method, r.path) for r in pinned] == [
        ("POST", "/v1/predictions"),
        ("GET", f"/v1/models/{ESRGAN}/versions/{version}"),
    ]  # ≤ 3 HTTP requests for the prediction
    (prediction,) = server.predictions
    assert prediction.version == version and prediction.source == "version"

    with pytest.raises(ReplicateError) as info:
        client.run(f"{ESRGAN}:{'0' * 64}", input={"image": _data_uri(_png(), "image/png")})
    assert info.value.status == 422 and info.value.title == "Invalid version or not permitted"


def test_uploaded_file_inputs_reach_the_model(server: FakeReplicate, client: replicate.Client) -> None:
    version = server.model(ESRGAN).latest
    output = client.run(f"{ESRGAN}:{version}", input={"image": io.BytesIO(_png(10, 8)), "scale": 3})
    assert _open_image(output.read()).size == (30, 24)
    (upload,) = client.files.list()
    assert upload.size == len(_png(10, 8)) and upload.urls["get"].startswith(server.base_url)
    assert server.count("POST", "/v1/files") == 1
    assert server.predictions[0].input["image"] == upload.urls["get"]


def test_transcripts_and_text_outputs(server: FakeReplicate, client: replicate.Client) -> None:
    whisper = server.model("openai/whisper").latest
    result = client.run(f"openai/whisper:{whisper}", input={"audio": _data_uri(wav_bytes(7.0), "audio/wav")})
    assert set(result) >= {"transcription", "segments", "detected_language"}
    assert [(s["start"], s["end"]) for s in result["segments"]] == [(0.0, 3.0), (3.0, 6.0), (6.0, 7.0)]
    assert result["transcription"] == "".join(s["text"] for s in result["segments"]).strip()
    srt = client.run(f"openai/whisper:{whisper}", input={"audio": _data_uri(wav_bytes(2.0), "audio/wav"),
                                                         "transcription": "srt"})  # fmt: skip
    assert srt["transcription"].startswith("1\n00:00:00,000 --> 00:00:02,000\n")

    server.add_model("acme/echo", output="text", official=True)
    text = client.run("acme/echo", input={"prompt": "tell me about rivers", "max_tokens": 6})
    assert isinstance(text, str) and text.startswith("Here is a reply about")

    kokoro = server.model("jaaari/kokoro-82m").latest
    audio = client.run(f"jaaari/kokoro-82m:{kokoro}", input={"text": "Hello there, general."})
    with wave.open(io.BytesIO(audio.read())) as w:
        assert w.getnframes() > 0

    svd = server.model("stability-ai/stable-video-diffusion").latest
    frame = _data_uri(_png(), "image/png")
    video = client.run(f"stability-ai/stable-video-diffusion:{svd}", input={"input_image": frame})
    clip = _open_image(video.read())
    assert clip.format == "GIF" and clip.n_frames == 14


def test_text_generation_output_shape_depends_on_pinning(server: FakeReplicate, client: replicate.Client) -> None:
    by_name = client.run(LLAMA, input={"prompt": "hi", "max_tokens": 5})
    assert isinstance(by_name, list) and len(by_name) == 5  # no version fetched → a plain list
    pinned = client.run(f"{LLAMA}:{server.model(LLAMA).latest}", input={"prompt": "hi", "max_tokens": 5})
    assert not isinstance(pinned, list)  # the version's x-cog-array-type=iterator → a generator
    assert "".join(pinned) == "".join(by_name)
    metrics = server.predictions[-1].metrics
    assert metrics["output_token_count"] == 5 and metrics["input_token_count"] >= 1


def test_deployments(server: FakeReplicate, client: replicate.Client) -> None:
    server.add_deployment("genroute/upscaler", model=ESRGAN, hardware="gpu-t4")
    prediction = client.deployments.predictions.create(
        "genroute/upscaler", input={"image": _data_uri(_png(), "image/png"), "scale": 2}, wait=5
    )
    assert prediction.status == "succeeded" and prediction.model == ESRGAN
    assert prediction.version == server.model(ESRGAN).latest
    deployment = client.deployments.get("genroute/upscaler")
    assert deployment.current_release is not None and deployment.current_release.model == ESRGAN
    again = deployment.predictions.create(input={"image": _data_uri(_png(), "image/png")})
    again.wait()
    assert again.status == "succeeded"
    assert [p.deployment for p in server.predictions] == ["genroute/upscaler"] * 2
    with pytest.raises(ReplicateError) as info:
        client.deployments.predictions.create("genroute/missing", input={})
    assert info.value.status == 404


def test_cancel_stops_the_clock(server: FakeReplicate, client: replicate.Client) -> None:
    server.set_predict_time(SCHNELL, 5.0)
    prediction = client.models.predictions.create(model=SCHNELL, input={"prompt": "long"})
    time.sleep(0.15)
    prediction.cancel()
    assert prediction.status == "canceled" and prediction.output is None and prediction.completed_at
    billed = prediction.metrics["predict_time"]
    assert 0.1 <= billed < 1.0
    time.sleep(0.1)
    prediction.reload()
    assert prediction.status == "canceled" and prediction.metrics["predict_time"] == billed
    (fake,) = server.predictions
    assert fake.canceled and fake.predict_time == billed and server.billed_seconds() == pytest.approx(billed)
    prediction.cancel()  # cancelling a finished prediction changes nothing
    assert prediction.metrics["predict_time"] == billed


def test_concurrent_blocking_creates_are_served_in_parallel(server: FakeReplicate) -> None:
    server.set_predict_time(SCHNELL, 0.3)
    statuses: list[str] = []

    def one() -> None:
        statuses.append(_client(server).models.predictions.create(model=SCHNELL, input={"prompt": "p"}, wait=5).status)

    threads = [threading.Thread(target=one) for _ in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert statuses == ["succeeded"] * 8
    assert time.monotonic() - started < 2.0  # 8 × 0.3 s held at once, not one after another
    assert server.count("POST") == 8 and len(server.predictions) == 8


# --------------------------------------------------------------------------------------------------
# Validation, models, schema
# --------------------------------------------------------------------------------------------------
def test_model_json_carries_the_input_schema(server: FakeReplicate, client: replicate.Client) -> None:
    model = client.models.get(SCHNELL)
    assert model.latest_version is not None
    schema = model.latest_version.openapi_schema["components"]["schemas"]
    props = schema["Input"]["properties"]
    assert props["num_outputs"]["minimum"] == 1 and props["num_outputs"]["maximum"] == 4
    assert "16:9" in props["aspect_ratio"]["enum"] and props["aspect_ratio"]["default"] == "1:1"
    assert schema["Input"]["required"] == ["prompt"] and schema["Output"]["type"] == "array"
    version = client.models.get(ESRGAN).versions.get(server.model(ESRGAN).latest)
    assert version.openapi_schema["components"]["schemas"]["Input"]["properties"]["scale"]["maximum"] == 10
    assert [v.id for v in client.models.get(ESRGAN).versions.list().results] == [server.model(ESRGAN).latest]
    with pytest.raises(ReplicateError) as info:  # official models publish no version list
        client.models.get(SCHNELL).versions.list()
    assert info.value.status == 404
    with pytest.raises(ReplicateError) as info:
        client.models.get("nobody/nothing")
    assert info.value.status == 404


def test_cog_style_enum_refs() -> None:
    with FakeReplicate(enum_style="ref", catalogue=True) as fake:
        schema = fake.client().models.get(SCHNELL).latest_version.openapi_schema["components"]["schemas"]
    aspect = schema["Input"]["properties"]["aspect_ratio"]
    assert aspect["allOf"] == [{"$ref": "#/components/schemas/aspect_ratio"}] and "enum" not in aspect
    assert "16:9" in schema["aspect_ratio"]["enum"]


@pytest.mark.parametrize(
    ("model", "bad_input", "words"),
    [
        (SCHNELL, {"prompt": "x", "num_outputs": 9}, "input.num_outputs: Must be less than or equal to 4"),
        (SCHNELL, {"prompt": "x", "aspect_ratio": "7:3"}, "input.aspect_ratio must be one of the following"),
        (SCHNELL, {"prompt": "x", "num_outputs": "two"}, "input.num_outputs: Invalid type. Expected: integer"),
        (SCHNELL, {"num_outputs": 1}, "input: prompt is required"),
        (FLUX_DEV, {"prompt": "x", "image": "/tmp/local.png"}, "input.image: Does not match format 'uri'"),
        (FLUX_DEV, {"prompt": "x", "prompt_strength": 1.5}, "input.prompt_strength: Must be less than or equal to 1"),
    ],
)
def test_invalid_input_is_a_422_naming_the_field(
    server: FakeReplicate, client: replicate.Client, model: str, bad_input: dict[str, Any], words: str
) -> None:
    with pytest.raises(ReplicateError) as info:
        client.models.predictions.create(model=model, input=bad_input, wait=5)
    assert info.value.status == 422 and info.value.title == "Input validation failed"
    assert words in (info.value.detail or "")
    assert server.predictions == []


def test_unknown_inputs_are_dropped_like_cog_does(server: FakeReplicate, client: replicate.Client) -> None:
    sd = server.model("stability-ai/stable-diffusion").latest
    with pytest.raises(ReplicateError) as info:  # width/height are integer enums on this model
        client.run(f"stability-ai/stable-diffusion:{sd}", input={"prompt": "x", "width": 1000})
    assert info.value.status == 422
    client.run(f"stability-ai/stable-diffusion:{sd}", input={"prompt": "x", "image": _data_uri(_png(), "image/png")})
    assert server.predictions[-1].ignored_inputs == ["image"]  # this model has no image input


# --------------------------------------------------------------------------------------------------
# Errors and faults
# --------------------------------------------------------------------------------------------------
def test_wrong_or_missing_token_is_401(server: FakeReplicate) -> None:
    bad = replicate.Client(api_token="r8_wrong", base_url=server.base_url)
    with pytest.raises(ReplicateError) as info:
        bad.models.get(SCHNELL)
    assert info.value.status == 401 and info.value.title == "Unauthenticated" and info.value.type == "about:blank"
    answer = httpx.get(f"{server.base_url}/v1/models/{SCHNELL}")
    assert answer.status_code == 401 and answer.headers["content-type"] == "application/problem+json"
    assert set(answer.json()) >= {"type", "title", "status", "detail"}


@pytest.mark.parametrize("status", [401, 402, 404, 422, 429, 500, 503])
def test_injected_status_on_create_raises_replicate_error_once(server: FakeReplicate, status: int) -> None:
    seen_retry_after: list[str | None] = []
    hook = lambda response: seen_retry_after.append(response.headers.get("Retry-After"))  # noqa: E731
    client = _client(server, event_hooks={"response": [hook]})
    rule = server.faults.add(f"POST {CREATE_ON_MODEL}", status, times=1)
    with pytest.raises(ReplicateError) as info:
        client.models.predictions.create(model=SCHNELL, input={"prompt": "x"}, wait=5)
    assert info.value.status == status and info.value.title
    assert rule.fired == 1 and server.count("POST") == 1  # creates are never retried by the client
    assert server.predictions == []  # nothing was processed
    if status == 429:
        # ReplicateError has no retry_after: the header is only visible to an httpx response hook
        assert not hasattr(info.value, "retry_after") and seen_retry_after == ["1"]
        assert "Expected available in 1 second" in (info.value.detail or "")
    # the rule fired once; the next create goes through
    assert client.models.predictions.create(model=SCHNELL, input={"prompt": "x"}, wait=5).status == "succeeded"


def test_gets_are_retried_on_429_and_503(server: FakeReplicate, client: replicate.Client) -> None:
    prediction = client.models.predictions.create(model=SCHNELL, input={"prompt": "x"}, wait=5)
    server.faults.add("GET /v1/predictions/*", 503, times=1, retry_after=0)
    server.faults.add("GET /v1/predictions/*", 429, times=1, retry_after=0)
    prediction.reload()
    assert prediction.status == "succeeded"
    assert [r.status for r in server.requests if r.method == "GET"] == [503, 429, 200]


def test_failed_prediction_raises_model_error(server: FakeReplicate, client: replicate.Client) -> None:
    server.fail_model(SCHNELL, "CUDA out of memory", times=1)
    with pytest.raises(ModelError) as info:
        client.run(SCHNELL, input={"prompt": "x"})
    failed = info.value.prediction
    assert failed.status == "failed" and failed.error == "CUDA out of memory"
    assert "RuntimeError: CUDA out of memory" in (failed.logs or "") and failed.output is None
    assert client.run(SCHNELL, input={"prompt": "x"})  # only the first one failed
    # An input URL the model cannot download fails the prediction, as on Replicate
    with pytest.raises(ModelError) as info:
        client.run(FLUX_DEV, input={"prompt": "x", "image": "https://example.invalid/cat.png"})
    assert "Failed to download image" in str(info.value)


@pytest.mark.parametrize("reset", [False, True])
def test_drop_before_processing_creates_nothing(server: FakeReplicate, client: replicate.Client, reset: bool) -> None:
    server.faults.add(f"POST {CREATE_ON_MODEL}", "drop-before", times=1, reset=reset)
    with pytest.raises(httpx.TransportError):  # RemoteProtocolError, or ReadError on a reset
        client.models.predictions.create(model=SCHNELL, input={"prompt": "x"}, wait=5)
    assert server.predictions == [] and server.requests[0].dropped and server.requests[0].status is None


def test_drop_after_processing_leaves_exactly_one_prediction(server: FakeReplicate, client: replicate.Client) -> None:
    server.faults.add(f"POST {CREATE_ON_MODEL}", "drop-after", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        client.models.predictions.create(model=SCHNELL, input={"prompt": "charged"}, wait=5)
    (prediction,) = server.predictions  # the client saw an error, yet a paid prediction exists
    assert server.requests[0].prediction_ids == [prediction.id]
    assert server.wait_until_idle() and server.prediction(prediction.id).status == "succeeded"
    # Reconciling instead of re-POSTing: the prediction is listed
    listed = client.predictions.list().results
    assert [p.id for p in listed] == [prediction.id] and listed[0].input == {"prompt": "charged"}
    assert all(len(r.prediction_ids) <= 1 for r in server.requests)


def test_read_timeouts(server: FakeReplicate) -> None:
    client = _client(server, timeout=httpx.Timeout(0.2))
    prediction = client.models.predictions.create(model=SCHNELL, input={"prompt": "x"})
    server.faults.add("GET /v1/predictions/*", "timeout", seconds=2, times=1)
    with pytest.raises(httpx.ReadTimeout):
        client.predictions.get(prediction.id)

    # A create with wait=N reads for N + 0.5 s; the fake processed it, then held past that.
    server.faults.add(f"POST {CREATE_ON_MODEL}", "timeout", seconds=3, processed=True, times=1)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.models.predictions.create(model=SCHNELL, input={"prompt": "y"}, wait=1)
    assert 1.4 < time.monotonic() - started < 2.5
    assert len(server.predictions) == 2  # the timed-out create did create a prediction

    # Quirk: without wait the client sends timeout=None, so its own 0.2 s timeout does not apply.
    server.faults.add(f"POST {CREATE_ON_MODEL}", "timeout", seconds=0.6, times=1)
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        client.models.predictions.create(model=SCHNELL, input={"prompt": "z"})
    assert time.monotonic() - started >= 0.55


def test_malformed_and_slow_answers(server: FakeReplicate, client: replicate.Client) -> None:
    server.faults.add(f"POST {CREATE_ON_MODEL}", "malformed", times=1)
    with pytest.raises(json.JSONDecodeError):
        client.models.predictions.create(model=SCHNELL, input={"prompt": "x"}, wait=5)
    assert len(server.predictions) == 1  # processed before the body was mangled

    server.faults.add("GET /v1/models/*/*", 502, times=1, body="<html>bad gateway</html>")
    with pytest.raises(ReplicateError) as info:
        client.models.get(SCHNELL)
    assert info.value.status == 502 and info.value.title is None  # non-JSON error body

    server.faults.add(f"POST {CREATE_ON_MODEL}", "slow", seconds=0.3, times=1)
    started = time.monotonic()
    assert client.models.predictions.create(model=SCHNELL, input={"prompt": "x"}, wait=5).status == "succeeded"
    assert time.monotonic() - started >= 0.3

    server.faults.add(f"POST {CREATE_ON_MODEL}", 504, processed=True, times=1)  # gateway error after acceptance
    with pytest.raises(ReplicateError) as info:
        client.models.predictions.create(model=SCHNELL, input={"prompt": "x"}, wait=5)
    assert info.value.status == 504 and len(server.predictions) == 3


def test_fault_rates_are_deterministic_per_seed() -> None:
    def statuses(seed: int) -> list[int]:
        with FakeReplicate() as fake:
            fake.faults.add("GET /v1/account", 503, rate=0.5, seed=seed)
            headers = {"Authorization": f"Bearer {fake.token}"}
            return [httpx.get(f"{fake.base_url}/v1/account", headers=headers).status_code for _ in range(16)]

    first = statuses(7)
    assert first == statuses(7) and {200, 503} <= set(first)
    assert first != statuses(8)


# --------------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------------
def test_stream_yields_the_tokens(server: FakeReplicate, client: replicate.Client) -> None:
    server.set_predict_time(LLAMA, 0.2)
    events = list(client.stream(LLAMA, input={"prompt": "tell me about rivers", "max_tokens": 8}))
    outputs = [e for e in events if e.event.value == "output"]
    assert len(outputs) == 8 and events[-1].event.value == "done"
    (prediction,) = server.predictions
    assert "".join(str(e) for e in outputs) == "".join(prediction.output)
    assert server.count("GET", "/stream/*") == 1


def test_module_level_replicate_stream_reads_the_environment(
    server: FakeReplicate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
    monkeypatch.setenv("REPLICATE_BASE_URL", server.base_url)
    monkeypatch.setattr(replicate.default_client, "_Client__client", None)  # rebuilt from the environment
    text = "".join(str(e) for e in replicate.stream(LLAMA, input={"prompt": "hello", "max_tokens": 4}))
    assert text == "Here is a reply."


def test_canceled_stream_ends_with_done(server: FakeReplicate, client: replicate.Client) -> None:
    server.set_predict_time(LLAMA, 5.0)
    prediction = client.models.predictions.create(model=LLAMA, input={"prompt": "long story"}, stream=True)
    threading.Timer(0.2, lambda: client.predictions.cancel(prediction.id)).start()
    events = list(prediction.stream())
    assert events[-1].event.value == "done" and json.loads(events[-1].data) == {"reason": "canceled"}


# --------------------------------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------------------------------
def _validate(request: Any, secret: WebhookSigningSecret) -> None:
    replicate.webhooks.validate(
        headers=dict(request.headers), body=request.get_data(as_text=True), secret=secret, tolerance=300
    )


def test_webhooks_are_signed_and_replayable(
    server: FakeReplicate, client: replicate.Client, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    secret = client.webhooks.default.secret()
    assert secret.key == server.webhook_secret and secret.key.startswith("whsec_")
    prediction = client.models.predictions.create(
        model=SCHNELL, input={"prompt": "x"}, webhook=httpserver.url_for("/hook"),
        webhook_events_filter=["start", "completed"],
    )  # fmt: skip
    deliveries = server.wait_for_deliveries(2)
    assert [d.event for d in deliveries] == ["start", "completed"] and all(d.ok for d in deliveries)
    assert len(httpserver.log) == 2
    for request, _ in httpserver.log:
        _validate(request, secret)  # raises if the signature or timestamp is wrong
    bodies = [json.loads(request.get_data()) for request, _ in httpserver.log]
    assert [b["status"] for b in bodies] == ["starting", "succeeded"] and bodies[1]["id"] == prediction.id

    completed = deliveries[1]
    server.sign_with = "whsec_" + base64.b64encode(b"not-the-real-secret-at-all-12345").decode()
    replay = server.redeliver(completed.webhook_id)
    assert replay.webhook_id == completed.webhook_id and replay.body == completed.body and replay.attempt == 2
    with pytest.raises(InvalidSignatureError):
        _validate(httpserver.log[-1][0], secret)

    server.sign_with = None
    server.timestamp_offset = -3600
    server.redeliver(completed.webhook_id)
    with pytest.raises(InvalidTimestampError):
        _validate(httpserver.log[-1][0], secret)
    assert httpserver.log[-1][0].headers["webhook-id"] == completed.webhook_id


def test_webhook_default_filter_throttling_and_retries(
    server: FakeReplicate, client: replicate.Client, httpserver: HTTPServer
) -> None:
    server.webhook_throttle = 0.1
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    # Default filter: output + completed. An image model has no intermediate output → one delivery.
    client.models.predictions.create(model=SCHNELL, input={"prompt": "x"}, webhook=httpserver.url_for("/hook"))
    assert server.wait_until_idle()
    assert [d.event for d in server.deliveries] == ["completed"]

    # A streaming model with every event: throttled intermediate deliveries, then completed. At most one
    # output/logs webhook per throttle period as sent, so at most ceil(0.45 s / 0.1 s) = 5 of them.
    server.set_predict_time(LLAMA, 0.45)
    client.models.predictions.create(
        model=LLAMA, input={"prompt": "x", "max_tokens": 20}, webhook=httpserver.url_for("/hook"),
        webhook_events_filter=["output", "logs", "completed"],
    )  # fmt: skip
    assert server.wait_until_idle()
    later = server.deliveries[1:]
    intermediate = later[:-1]
    assert later[-1].event == "completed" and 1 <= len(intermediate) <= math.ceil(0.45 / server.webhook_throttle)
    assert all(set(d.event.split(",")) <= {"output", "logs"} for d in intermediate)
    gaps = [b.sent_mono - a.sent_mono for a, b in itertools.pairwise(intermediate)]
    assert all(gap >= server.webhook_throttle for gap in gaps)

    # A failing receiver: completed is retried with the same webhook-id
    httpserver.clear()
    httpserver.expect_request("/broken", method="POST").respond_with_data("nope", status=500)
    client.models.predictions.create(model=SCHNELL, input={"prompt": "x"}, webhook=httpserver.url_for("/broken"))
    assert server.wait_until_idle()
    failed = [d for d in server.deliveries if d.url.endswith("/broken")]
    assert [d.attempt for d in failed] == [1, 2, 3] and len({d.webhook_id for d in failed}) == 1
    assert all(d.status_code == 500 for d in failed)


def test_throttle_holds_on_the_wire_when_the_receiver_was_slow(
    server: FakeReplicate, client: replicate.Client, httpserver: HTTPServer
) -> None:
    # Replicate sends at most one output/logs webhook per throttle period. A receiver that answers the
    # first one late must not get the ones that piled up meanwhile back to back.
    server.webhook_throttle = 0.1
    first = threading.Event()

    def answer(request: Any) -> Response:
        if not first.is_set():
            first.set()
            time.sleep(0.3)
        return Response("ok")

    httpserver.expect_request("/hook", method="POST").respond_with_handler(answer)
    server.set_predict_time(LLAMA, 0.6)
    client.models.predictions.create(
        model=LLAMA, input={"prompt": "x", "max_tokens": 20}, webhook=httpserver.url_for("/hook"),
        webhook_events_filter=["output", "logs", "completed"],
    )  # fmt: skip
    assert server.wait_until_idle()
    deliveries = server.deliveries
    intermediate = deliveries[:-1]
    assert deliveries[-1].event == "completed" and len(intermediate) >= 2
    sent = [d.sent_mono for d in intermediate]
    assert all(b - a >= server.webhook_throttle for a, b in itertools.pairwise(sent))


def test_wait_until_idle_waits_for_a_webhook_the_sender_has_just_taken(
    server: FakeReplicate, client: replicate.Client, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    taken = server._webhook_queue.get

    def get_then_pause(*args: Any, **kwargs: Any) -> Any:
        item = taken(*args, **kwargs)
        time.sleep(0.05)  # the sender thread descheduled between taking a webhook and sending it
        return item

    monkeypatch.setattr(server._webhook_queue, "get", get_then_pause)
    client.models.predictions.create(model=SCHNELL, input={"prompt": "x"}, webhook=httpserver.url_for("/hook"))
    assert server.wait_until_idle()
    assert [d.event for d in server.deliveries] == ["completed"]


def test_invalid_webhook_filter_is_422(server: FakeReplicate, client: replicate.Client) -> None:
    with pytest.raises(ReplicateError) as info:
        client.models.predictions.create(
            model=SCHNELL, input={"prompt": "x"}, webhook="https://example.com/h", webhook_events_filter=["done"]
        )
    assert info.value.status == 422 and "webhook_events_filter.0" in (info.value.detail or "")


# --------------------------------------------------------------------------------------------------
# Output URLs served by the fake, host-rewriting transport, async client
# --------------------------------------------------------------------------------------------------
def test_delivery_urls_through_a_rewriting_transport() -> None:
    with FakeReplicate(prediction_seconds=0.02, output_mode="url", catalogue=True) as fake:
        # No base_url: api.replicate.com and replicate.delivery are both rewritten to the fake.
        client = replicate.Client(api_token=fake.token, transport=fake.transport())
        (output,) = client.run(SCHNELL, input={"prompt": "x", "output_format": "png"})
        assert output.url.startswith("https://replicate.delivery/") and output.url.endswith("/out-0.png")
        data = output.read()
        assert _open_image(data).format == "PNG"
        assert httpx.get(fake.files_url_for(output.url)).content == data  # public, no token needed
        assert fake.count("GET", "/files/*") == 2

        # Outputs chain: a delivery URL is a valid input for the next model
        upscaled = client.run(f"{ESRGAN}:{fake.model(ESRGAN).latest}", input={"image": output.url, "scale": 0.5})
        assert _open_image(upscaled.read()).size == (512, 512)

        fake.expire_outputs()
        assert httpx.get(fake.files_url_for(output.url)).status_code == 404
        assert all(p.data_removed and p.output is None for p in fake.predictions)
        assert fake.errors == []


async def test_async_client(server: FakeReplicate, client: replicate.Client) -> None:
    prediction = await client.models.predictions.async_create(model=SCHNELL, input={"prompt": "x"}, wait=5)
    assert prediction.status == "succeeded"
    (output,) = await client.async_run(SCHNELL, input={"prompt": "y", "output_format": "png"})
    assert _open_image(await output.aread()).format == "PNG"
    slow = await client.models.predictions.async_create(model=LLAMA, input={"prompt": "z"})
    await slow.async_wait()
    assert slow.status == "succeeded" and server.count("POST") == 3


def test_listing_lag_lists_a_prediction_only_a_while_after_its_creation(
    server: FakeReplicate, client: replicate.Client
) -> None:
    server.listing_lag = 0.3
    made = client.models.predictions.create(model="black-forest-labs/flux-schnell", input={"prompt": "a fox"})
    assert made.id not in [p.id for p in client.predictions.list().results]
    time.sleep(0.35)
    assert made.id in [p.id for p in client.predictions.list().results]
