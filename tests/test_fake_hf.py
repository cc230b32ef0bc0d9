"""The fake hf-inference server (tests/fakes/hf_server.py) driven by the real, unmodified ``InferenceClient``.

These tests pin down both what the fake answers and how ``huggingface_hub`` 2.4.0 reacts to it (request shapes,
errors, no retries), so a provider built on the client can be tested offline against the same fake.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import wave
from collections.abc import Iterator

import httpx2
import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient, constants
from huggingface_hub.errors import (
    BadRequestError,
    HfHubHTTPError,
    InferenceTimeoutError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from PIL import Image, UnidentifiedImageError

from fakes.hf_server import OUT_OF_CREDIT_MESSAGE, FakeHF, fake_hf_routing, make_wav

TOKEN = "hf_test"
MESSAGES = [{"role": "user", "content": "tell me a story"}]


@pytest.fixture(autouse=True)
def _isolated_hf(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No ambient token, cache or offline flag: constants are read at import, so patch them as well as the env."""
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def server() -> Iterator[FakeHF]:
    with FakeHF(token=TOKEN) as fake:
        fake.add_model("org/image", task="text-to-image", latency=0.001, compute_seconds=2.0)
        fake.add_model("org/edit", task="image-to-image", compute_seconds=1.5)
        fake.add_model("org/speech", task="text-to-speech", compute_seconds=1.0)
        fake.add_model("org/whisper", task="automatic-speech-recognition", compute_seconds=0.5)
        fake.add_model("org/chat", task="conversational", compute_seconds=0.25)
        yield fake


def client_for(server: FakeHF, model: str, **kwargs: object) -> InferenceClient:
    return InferenceClient(model=server.model_url(model), token=TOKEN, **kwargs)  # type: ignore[arg-type]


def png_bytes(size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


# ---- successful calls and the request shapes the client uses --------------------------------------------------------


def test_text_to_image_returns_pil_image_of_requested_size(server: FakeHF) -> None:
    client = client_for(server, "org/image")
    image = client.text_to_image("a red fox", width=48, height=32, seed=7, negative_prompt="blurry")
    assert isinstance(image, Image.Image)
    assert image.size == (48, 32)
    assert image.format == "PNG"

    again = client.text_to_image("a red fox", width=48, height=32, seed=7, negative_prompt="blurry")
    other = client.text_to_image("a red fox", width=48, height=32, seed=8, negative_prompt="blurry")
    assert again.tobytes() == image.tobytes()
    assert other.tobytes() != image.tobytes()
    assert client.text_to_image("default size").size == (64, 64)

    first = server.requests[0]
    assert (first.method, first.path, first.status, first.model, first.task) == (
        "POST",
        "/models/org/image",
        200,
        "org/image",
        "text-to-image",
    )
    assert first.json() == {
        "inputs": "a red fox",
        "parameters": {"negative_prompt": "blurry", "height": 32, "width": 48, "seed": 7},
    }
    assert first.headers["accept"] == "image/png"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["authorization"] == "Bearer <redacted>"
    assert TOKEN not in json.dumps([r.headers for r in server.requests])
    assert server.billed_seconds == pytest.approx(8.0)
    assert server.count(model="org/image", status=200) == 4


def test_image_to_image_raw_bytes_and_base64_json(server: FakeHF) -> None:
    client = client_for(server, "org/edit")
    out = client.image_to_image(png_bytes())
    assert out.size == (8, 6)
    assert out.convert("RGB").getpixel((0, 0)) == (245, 235, 225)  # the fake inverts the input
    raw = server.requests[-1]
    assert raw.body[:8] == b"\x89PNG\r\n\x1a\n"
    assert "content-type" not in raw.headers  # raw bytes go without a content type

    resized = client.image_to_image(png_bytes(), prompt="make it night", target_size={"width": 20, "height": 10})
    assert resized.size == (20, 10)
    sent = server.requests[-1]
    assert sent.headers["content-type"] == "application/json"
    assert sent.json()["parameters"] == {"prompt": "make it night", "target_size": {"width": 20, "height": 10}}

    with pytest.raises(ValueError, match="Expected binary inputs"):  # hf-inference refuses a PIL image input
        client.image_to_image(Image.new("RGB", (4, 4)))


def test_text_to_speech_returns_wav_that_speech_recognition_reads_back(server: FakeHF) -> None:
    audio = client_for(server, "org/speech").text_to_speech("hello brave new world")
    assert isinstance(audio, bytes)
    with wave.open(io.BytesIO(audio)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16_000)
        assert wav.getnframes() == 16_000  # 0.25 s a word
    assert server.requests[-1].json() == {"inputs": "hello brave new world", "parameters": {}}

    result = client_for(server, "org/whisper").automatic_speech_recognition(audio)
    assert result.text == "hello brave new world"
    assert [c.text for c in result.chunks] == ["hello", "brave", "new", "world"]
    assert result.chunks[0].timestamp == [0.0, 0.25]
    assert result.chunks[-1].timestamp == [0.75, 1.0]
    assert server.requests[-1].body == audio  # raw audio body


def test_speech_recognition_of_unknown_audio_and_with_parameters(server: FakeHF) -> None:
    client = client_for(server, "org/whisper")
    result = client.automatic_speech_recognition(b"\x01\x02" * 16_000)
    assert result.text.startswith("fake transcript ")
    assert result.chunks is not None and result.chunks[-1].timestamp[1] == 1.0  # 32000 bytes: 1 s at 16 kHz

    no_chunks = client.automatic_speech_recognition(make_wav("a b"), extra_body={"return_timestamps": False})
    assert no_chunks.text == "a b" and no_chunks.chunks is None
    assert set(server.requests[-1].json()) == {"inputs", "parameters"}  # parameters force base64 JSON


def test_chat_completion_plain(server: FakeHF) -> None:
    out = client_for(server, "org/chat").chat_completion(MESSAGES, max_tokens=64)
    assert out.choices[0].message.content == "Echo: tell me a story"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens == 5
    sent = server.requests[-1]
    assert sent.path == "/models/org/chat/v1/chat/completions"
    # A URL model sends "model": "dummy" in the body: the URL, not the body, names the model.
    assert sent.json() == {"model": "dummy", "messages": MESSAGES, "max_tokens": 64, "stream": False}

    short = client_for(server, "org/chat").chat_completion(MESSAGES, max_tokens=2)
    assert short.choices[0].message.content == "Echo: tell"
    assert short.choices[0].finish_reason == "length"


def test_chat_completion_streaming_yields_tokens(server: FakeHF) -> None:
    client = client_for(server, "org/chat")  # keep the client alive while the stream is read (see below)
    chunks = list(client.chat_completion(MESSAGES, stream=True, stream_options={"include_usage": True}))
    tokens = [c.choices[0].delta.content for c in chunks if c.choices]
    assert tokens == ["Echo:", " tell", " me", " a", " story", ""]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == 5
    assert server.requests[-1].json()["stream"] is True
    assert server.count("/models/org/chat/v1/chat/completions", status=200) == 1


def test_text_generation_plain_and_streaming(server: FakeHF) -> None:
    client = client_for(server, "org/chat")
    assert client.text_generation("once upon", max_new_tokens=3) == " and so on:"
    assert server.requests[-1].json() == {"inputs": "once upon", "parameters": {"max_new_tokens": 3}}
    assert server.requests[-1].path == "/models/org/chat"
    streamed = list(client.text_generation("once upon", stream=True))
    assert "".join(streamed) == " and so on: once upon"
    assert server.requests[-1].json()["stream"] is True


def test_concurrent_requests_are_served_in_parallel(server: FakeHF) -> None:
    server.add_model("org/slow", task="text-to-image", latency=0.3)
    client = client_for(server, "org/slow")
    sizes: list[tuple[int, int]] = []
    threads = [
        threading.Thread(target=lambda: sizes.append(client.text_to_image("x", width=8, height=8).size))
        for _ in range(8)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sizes == [(8, 8)] * 8
    assert time.monotonic() - started < 1.5  # 8 × 0.3 s one after the other would be 2.4 s


def test_health_and_info_need_the_provider_named(server: FakeHF) -> None:
    with pytest.raises(ValueError, match="not supported on 'None'"):  # a URL model alone leaves provider None
        client_for(server, "org/chat").health_check()
    client = client_for(server, "org/chat", provider="hf-inference")
    assert client.health_check() is True
    assert client.get_endpoint_info()["model_id"] == "org/chat"
    assert [r.path for r in server.requests] == ["/models/org/chat/health", "/models/org/chat/info"]


# ---- errors as the client surfaces them -----------------------------------------------------------------------------


def test_model_loading_503_carries_estimated_time_and_is_not_retried(server: FakeHF) -> None:
    server.loading("org/image", times=2, estimated_time=20)
    client = client_for(server, "org/image")
    for _ in range(2):
        with pytest.raises(HfHubHTTPError) as info:
            client.text_to_image("a cat")
        assert info.value.response.status_code == 503
        assert info.value.server_message == "Model org/image is currently loading"
        assert info.value.response.json() == {"error": "Model org/image is currently loading", "estimated_time": 20.0}
    assert server.count(model="org/image") == 2  # one request per call: the client neither waits nor retries
    assert client.text_to_image("a cat").size == (64, 64)
    assert server.billed_seconds == pytest.approx(2.0)  # only the answered call bills


def test_rate_limit_429_exposes_ietf_headers(server: FakeHF) -> None:
    server.rate_limit("org/chat", limit=100, reset=42, window=300)
    with pytest.raises(HfHubHTTPError) as info:
        client_for(server, "org/chat").chat_completion(MESSAGES)
    err = info.value
    headers = err.response.headers
    assert err.response.status_code == 429
    assert headers["RateLimit"] == '"api";r=0;t=42'
    assert headers["RateLimit-Policy"] == '"fixed window";"api";q=100;w=300'
    assert (headers["RateLimit-Limit"], headers["RateLimit-Remaining"], headers["RateLimit-Reset"]) == (
        "100",
        "0",
        "42",
    )
    assert headers["Retry-After"] == "42"
    assert "Retry after 42 seconds (0/100 requests remaining in current 300s window)" in str(err)
    assert server.count(status=429) == 1

    server.rate_limit(style="combined", reset=5, retry_after=7)
    with pytest.raises(HfHubHTTPError) as info:
        client_for(server, "org/image").text_to_image("x")
    assert info.value.response.headers["RateLimit"] == "limit=500, remaining=0, reset=5"
    assert info.value.response.headers["Retry-After"] == "7"
    assert "429 Too Many Requests for url" in str(info.value)  # the client only parses the draft-9 form


def test_quota_counts_down_then_429s(server: FakeHF) -> None:
    server.set_quota(2, window=60)
    client = client_for(server, "org/image")
    client.text_to_image("one")
    client.text_to_image("two")
    with pytest.raises(HfHubHTTPError) as info:
        client.text_to_image("three")
    assert info.value.response.status_code == 429
    assert info.value.response.headers["RateLimit-Remaining"] == "0"
    assert server.count(status=200) == 2


def test_402_once_the_free_credit_is_spent(server: FakeHF) -> None:
    server.credit_usd = 0.0005
    server.rate_usd_per_second = 0.0001  # org/image bills 2 s = $0.0002 a call
    client = client_for(server, "org/image")
    for _ in range(3):  # $0.0002, $0.0004, then $0.0006: the call that crosses the credit is still served
        client.text_to_image("spend")
    with pytest.raises(HfHubHTTPError) as info:
        client.text_to_image("one too many")
    assert info.value.response.status_code == 402
    assert info.value.server_message == OUT_OF_CREDIT_MESSAGE
    assert server.billed_seconds == pytest.approx(6.0)
    assert server.spent_usd == pytest.approx(0.0006)
    assert [r.billed_seconds for r in server.requests] == [2.0, 2.0, 2.0, 0.0]


def test_401_on_wrong_token_and_404_on_unknown_model(server: FakeHF) -> None:
    bad = InferenceClient(model=server.model_url("org/image"), token="hf_wrong")
    with pytest.raises(HfHubHTTPError) as info:
        bad.text_to_image("x")
    assert info.value.response.status_code == 401
    assert info.value.server_message == "Invalid credentials in Authorization header"
    assert server.requests[-1].headers["authorization"] == "Bearer <redacted>"

    with pytest.raises(HfHubHTTPError) as info:
        client_for(server, "org/missing").text_to_image("x")
    assert info.value.response.status_code == 404
    assert info.value.server_message == "Model org/missing does not exist"

    with pytest.raises(BadRequestError):  # a 400 becomes BadRequestError
        client_for(server, "org/image").text_to_image("x", width=99_999)
    assert server.billed_seconds == 0


def test_server_errors_carry_x_error_message(server: FakeHF) -> None:
    server.fail("org/image", status=500, message="CUDA out of memory")
    server.fail("org/image", status=503, message="Service Unavailable", json_body=False)
    client = client_for(server, "org/image")
    with pytest.raises(HfHubHTTPError) as info:
        client.text_to_image("x")
    assert info.value.response.status_code == 500
    assert info.value.response.headers["X-Error-Message"] == "CUDA out of memory"
    assert info.value.server_message == "CUDA out of memory"  # header and JSON body, deduplicated
    with pytest.raises(HfHubHTTPError) as info:
        client.text_to_image("x")
    assert info.value.response.status_code == 503
    assert info.value.server_message == "Service Unavailable"
    assert client.text_to_image("x").size == (64, 64)
    assert [r.fault for r in server.requests] == ["error", "error", None]


def test_malformed_json_raises_a_json_error(server: FakeHF) -> None:
    server.malformed("org/whisper", "invalid_json")
    with pytest.raises(json.JSONDecodeError):  # the client parses without checking: a bare JSONDecodeError
        client_for(server, "org/whisper").automatic_speech_recognition(make_wav("hi"))
    server.malformed("org/chat", "invalid_json")
    with pytest.raises(json.JSONDecodeError):
        client_for(server, "org/chat").chat_completion(MESSAGES)
    server.malformed("org/chat", "invalid_json")
    chat = client_for(server, "org/chat")
    with pytest.raises(json.JSONDecodeError):
        list(chat.chat_completion(MESSAGES, stream=True))
    assert server.billed_seconds == pytest.approx(1.0)  # spoiled answers still billed


def test_wrong_content_type_and_truncated_images(server: FakeHF) -> None:
    client = client_for(server, "org/image")
    server.malformed("org/image", "wrong_content_type")
    with pytest.raises(UnidentifiedImageError):
        client.text_to_image("x")

    server.malformed("org/image", "truncated")
    image = client.text_to_image("x", width=256, height=256)  # PIL opens lazily: the header is intact...
    with pytest.raises(OSError, match="image file is truncated"):
        image.load()  # ...and only decoding the pixels fails

    server.malformed("org/speech", "wrong_content_type")
    audio = client_for(server, "org/speech").text_to_speech("hello")  # raw bytes: content type never checked
    assert audio.startswith(b"<html>")


def test_slow_answer_times_out_and_dropped_connections_raise_httpx2_errors(server: FakeHF) -> None:
    server.slow("org/image", seconds=2.0)
    with pytest.raises(InferenceTimeoutError):
        client_for(server, "org/image", timeout=0.2).text_to_image("x")

    server.drop("org/image")
    with pytest.raises(httpx2.RemoteProtocolError):  # not wrapped by the client
        client_for(server, "org/image").text_to_image("x")
    assert server.requests[-1].status is None and server.requests[-1].fault == "drop"

    server.drop("org/image", mid_body=True)
    with pytest.raises(httpx2.RemoteProtocolError, match="without sending complete message body"):
        client_for(server, "org/image").text_to_image("x")

    server.drop("org/chat", mid_body=True)
    chat = client_for(server, "org/chat")
    with pytest.raises(httpx2.RemoteProtocolError):
        list(chat.chat_completion(MESSAGES, stream=True))


def test_stream_ending_without_done_is_silently_short(server: FakeHF) -> None:
    server.malformed("org/chat", "truncated")
    client = client_for(server, "org/chat")
    chunks = list(client.chat_completion(MESSAGES, stream=True))
    assert [c.choices[0].delta.content for c in chunks] == ["Echo:"]  # no error, no finish_reason: check it


def test_stream_dies_with_its_client(server: FakeHF) -> None:
    # The streamed response lives in the InferenceClient's ExitStack: once the client is garbage collected the
    # response is closed, so a stream from a temporary client cannot be read.
    stream = client_for(server, "org/chat").chat_completion(MESSAGES, stream=True)
    with pytest.raises(httpx2.StreamClosed):
        list(stream)


def test_offline_flag_blocks_loopback_too(server: FakeHF, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineModeIsEnabled):
        client_for(server, "org/image").text_to_image("x")
    assert server.requests == []


# ---- the async client -----------------------------------------------------------------------------------------------


async def test_async_client(server: FakeHF) -> None:
    async with AsyncInferenceClient(model=server.model_url("org/image"), token=TOKEN) as client:
        images = await asyncio.gather(*(client.text_to_image(f"p{i}", width=16, height=12) for i in range(3)))
        assert [im.size for im in images] == [(16, 12)] * 3
        server.loading("org/image", estimated_time=5)
        with pytest.raises(HfHubHTTPError) as info:
            await client.text_to_image("x")
        assert info.value.response.status_code == 503
        assert info.value.response.json()["estimated_time"] == 5.0
    async with AsyncInferenceClient(model=server.model_url("org/chat"), token=TOKEN) as chat:
        stream = await chat.chat_completion(MESSAGES, stream=True)
        tokens = [c.choices[0].delta.content async for c in stream]
        assert "".join(tokens) == "Echo: tell me a story"


# ---- the client's own provider routing through the host-rewriting factory ------------------------------------------


def test_routed_provider_hf_inference_text_to_image(server: FakeHF) -> None:
    with fake_hf_routing(server):
        client = InferenceClient(provider="hf-inference", token=TOKEN)
        image = client.text_to_image("a lighthouse", model="org/image", width=24, height=16)
        assert image.size == (24, 16)
        client.text_to_image("again", model="org/image")  # the model look-up is lru_cached per process
    lookup, first, second = server.requests
    assert (lookup.method, lookup.host, lookup.path) == ("GET", "huggingface.co", "/api/models/org/image")
    assert "authorization" not in lookup.headers  # the Hub look-up uses the ambient token, not the client's
    assert (first.method, first.host, first.path) == ("POST", "router.huggingface.co", "/hf-inference/models/org/image")
    assert first.json() == {"inputs": "a lighthouse", "parameters": {"height": 16, "width": 24}}
    assert second.path == "/hf-inference/models/org/image"


def test_routed_auto_provider_and_chat(server: FakeHF) -> None:
    with fake_hf_routing(server):
        assert InferenceClient(token=TOKEN).text_to_image("x", model="org/image").size == (64, 64)
        out = InferenceClient(token=TOKEN).chat_completion(MESSAGES, model="org/chat")
        assert out.choices[0].message.content == "Echo: tell me a story"
        out = InferenceClient(provider="hf-inference", token=TOKEN).chat_completion(MESSAGES, model="org/chat")
        assert out.choices[0].message.content == "Echo: tell me a story"
        with pytest.raises(httpx2.ConnectError, match="refuses"):  # nothing leaves the machine
            InferenceClient(model="https://example.com/models/x", token=TOKEN).text_to_image("x")
        with pytest.raises(RepositoryNotFoundError):
            InferenceClient(provider="hf-inference", token=TOKEN).text_to_image("x", model="org/unknown")
    paths = [(r.method, r.path, r.query) for r in server.requests]
    assert paths[:2] == [
        ("GET", "/api/models/org/image", "expand=inferenceProviderMapping"),
        ("GET", "/api/models/org/image", ""),
    ]
    assert ("POST", "/v1/chat/completions", "") in paths  # provider auto: the router picks, no look-up
    assert ("POST", "/hf-inference/models/org/chat/v1/chat/completions", "") in paths
    auto_chat = next(r for r in server.requests if r.path == "/v1/chat/completions")
    assert auto_chat.json()["model"] == "org/chat"


async def test_routed_async_client(server: FakeHF) -> None:
    with fake_hf_routing(server):
        async with AsyncInferenceClient(provider="hf-inference", token=TOKEN) as client:
            image = await client.text_to_image("x", model="org/image", width=10, height=10)
    assert image.size == (10, 10)
    assert [r.host for r in server.requests] == ["huggingface.co", "router.huggingface.co"]
