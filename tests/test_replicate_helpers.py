"""Shared fixtures for the Replicate provider's tests, and unit tests of its pure parts.

The other ``test_replicate_*`` modules import the fixtures from here. Every test runs the real,
unmodified ``replicate`` client against :class:`fakes.FakeReplicate` on 127.0.0.1; nothing patches a
client object. Settings are the repository's ``plugins.toml`` catalogue and prices with a prod-like
profile (``replicate`` first, the mock as the fallback) and the fake as ``base_url``.
"""

from __future__ import annotations

import base64
import io
import tomllib
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import genroute_mock.plugin as mock_plugin
import genroute_replicate.plugin as replicate_plugin
from fakes import FakeReplicate
from genroute import errors
from genroute.config import Settings, settings_from_dict
from genroute.media import MediaInput
from genroute.router import Router
from genroute.types import ImageToImage, TextToImage, TextToSpeech
from genroute_replicate.client import ApiStatusError, parse_retry_after
from genroute_replicate.inputs import map_request
from genroute_replicate.options import ReplicateOptions
from genroute_replicate.outputs import acceptable, host_allowed, sniff, transcript_of
from genroute_replicate.schema import ModelSchema, parse_openapi, validate_inputs
from request_samples import wav_bytes

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "r8_CanaryToken0123456789abcdefXYZ"
FAST_ROUTING: dict[str, Any] = {
    "max_attempts": 3,
    "backoff_initial_seconds": 0.001,
    "backoff_max_seconds": 0.005,
    "deadline_seconds": 20,
    "cooldown_after_failures": 50,
    "cooldown_seconds": 0.2,
}


def repo_config() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "plugins.toml").read_text(encoding="utf-8"))


def fast_options(server: FakeReplicate, **extra: Any) -> dict[str, Any]:
    return {
        "base_url": server.base_url,
        "poll_initial_seconds": 0.01,
        "poll_max_seconds": 0.05,
        "reconcile_interval_seconds": 0.05,
        **extra,
    }


def build_settings(
    tmp_path: Path,
    server: FakeReplicate,
    *,
    options: dict[str, Any] | None = None,
    providers: tuple[str, ...] = ("replicate", "mock"),
    routing: dict[str, Any] | None = None,
    models: dict[str, Any] | None = None,
) -> Settings:
    """The repository's catalogue and budget with a prod-like profile whose Replicate is the fake."""
    raw = repo_config()
    replicate = dict(raw["providers"]["replicate"])
    replicate["options"] = {**replicate.get("options", {}), **fast_options(server, state_dir=str(tmp_path / "rstate")),
                            **(options or {})}  # fmt: skip
    if models is not None:
        replicate["models"] = models
    # The mock is only the fallback here: priced far above Replicate, so Replicate always goes first.
    mock = dict(raw["providers"]["mock"])
    mock["models"] = {
        task: {tier: {**entry, "price": str(Decimal(entry["price"]) * 100)} for tier, entry in tiers.items()}
        for task, tiers in mock["models"].items()
    }
    config = {
        "default_profile": "prod",
        "profiles": {"prod": {"providers": list(providers)}},
        "providers": {"replicate": replicate, "mock": mock},
        "budget": raw["budget"],
        "ledger": {"path": str(tmp_path / "ledger")},
        "store": {"path": str(tmp_path / "store")},
        "jobs": {"path": str(tmp_path / "jobs")},
        "routing": {**FAST_ROUTING, **(routing or {})},
    }
    return settings_from_dict(config, env={})


@pytest.fixture
def fake() -> Iterator[FakeReplicate]:
    with FakeReplicate(prediction_seconds=0.02, token=TOKEN, catalogue=True) as server:
        yield server
    assert server.errors == [], "the fake raised:\n" + "\n".join(server.errors)


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
    monkeypatch.delenv("REPLICATE_WEBHOOK_SECRET", raising=False)
    return TOKEN


@pytest.fixture
def make_router(router_factory: Callable[..., Router]) -> Callable[..., Router]:
    """``make_router(settings, *plugins)``: a Router over the Replicate and mock plugins (no entry points)."""

    def build(settings: Settings, *plugins: object) -> Router:
        return router_factory(settings, *(plugins or (replicate_plugin,)), mock_plugin)

    return build


@pytest.fixture
def router(fake: FakeReplicate, token: str, tmp_path: Path, make_router: Callable[..., Router]) -> Router:
    return make_router(build_settings(tmp_path, fake))


def png(width: int = 48, height: int = 32, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


def mask_png(width: int = 48, height: int = 32) -> bytes:
    img = Image.new("L", (width, height), 0)
    img.paste(255, (0, 0, width // 2, height))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def wav(seconds: float, rate: int = 8000) -> bytes:
    """A mono 16-bit WAV file whose samples are not all zero."""
    return wav_bytes(seconds, rate, frame=b"\x01\x00")


def image_of(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def creates(server: FakeReplicate) -> int:
    """Prediction-creating requests the fake received (by model, by version, by deployment)."""
    return (
        server.count("POST", "/v1/models/*/predictions")
        + server.count("POST", "/v1/predictions")
        + server.count("POST", "/v1/deployments/*/predictions")
    )


# --------------------------------------------------------------------------------------------------
# Unit tests of the pure parts
# --------------------------------------------------------------------------------------------------
def _schema(properties: dict[str, Any], required: list[str] | None = None, model: str = "acme/m") -> ModelSchema:
    return ModelSchema(ref=model, model=model, version="v1", properties=properties, required=required or [])


def test_schema_resolves_enum_references_like_real_cog() -> None:
    openapi = {
        "components": {
            "schemas": {
                "Input": {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {
                        "prompt": {"type": "string"},
                        "scheduler": {"allOf": [{"$ref": "#/components/schemas/scheduler"}], "default": "DDIM"},
                        "steps": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
                    },
                },
                "scheduler": {"type": "string", "enum": ["DDIM", "K_EULER"]},
                "Output": {"type": "string"},
            }
        }
    }
    props, required, output = parse_openapi(openapi)
    assert props["scheduler"] == {"default": "DDIM", "type": "string", "enum": ["DDIM", "K_EULER"]}
    assert props["steps"] == {"type": "integer", "minimum": 1}
    assert required == ["prompt"] and output == {"type": "string"}


def test_validation_names_the_genroute_field_and_the_allowed_range() -> None:
    schema = _schema({"num_outputs": {"type": "integer", "minimum": 1, "maximum": 4}})
    with pytest.raises(errors.ProviderRejectedInput, match=r"num_outputs: 5 .*allowed from 1 to 4"):
        validate_inputs(schema, {"num_outputs": 5}, {"num_outputs": "num_outputs"}, provider="replicate")
    enum = _schema({"voice": {"type": "string", "enum": ["af_bella", "am_adam"]}})
    with pytest.raises(errors.ProviderRejectedInput, match=r'voice: "zz" .*allowed one of "af_bella", "am_adam"'):
        validate_inputs(enum, {"voice": "zz"}, {"voice": "voice"}, provider="replicate")
    needs = _schema({"speaker": {"type": "string", "format": "uri"}}, required=["speaker"])
    with pytest.raises(errors.ProviderRejectedInput, match=r"voice: acme/m requires input 'speaker'"):
        validate_inputs(needs, {}, {"speaker": "voice"}, provider="replicate")
    kinds = _schema({"seed": {"type": "integer"}})
    with pytest.raises(errors.ProviderRejectedInput, match="expected integer"):
        validate_inputs(kinds, {"seed": "x"}, {}, provider="replicate")


def test_mapping_picks_the_names_the_model_declares() -> None:
    flux = _schema({"prompt": {"type": "string"}, "aspect_ratio": {"type": "string", "enum": ["1:1", "16:9"]},
                    "num_outputs": {"type": "integer"}, "seed": {"type": "integer"}})  # fmt: skip
    mapped = map_request(TextToImage(prompt="x", aspect_ratio="16:9", num_outputs=2, seed=7), flux, None,
                         inline_max=1024)  # fmt: skip
    assert mapped.values == {"prompt": "x", "aspect_ratio": "16:9", "num_outputs": 2, "seed": 7}
    sd = _schema({"prompt": {"type": "string"}, "width": {"type": "integer", "enum": [256, 512, 768]},
                  "height": {"type": "integer", "enum": [256, 512, 768]}, "image": {"type": "string"},
                  "prompt_strength": {"type": "number"}})  # fmt: skip
    mapped = map_request(ImageToImage(prompt="x", image=png(), aspect_ratio="16:9"), sd, None, inline_max=10**6)
    assert mapped.values["width"] == 768 and mapped.values["height"] == 512  # 16:9 on 1024, snapped to the enum
    assert mapped.values["image"].startswith("data:image/png;base64,") and mapped.values["prompt_strength"] == 0.6
    big = map_request(ImageToImage(prompt="x", image=png()), sd, None, inline_max=10)
    assert "image" in big.uploads  # larger than inline_media_max_bytes: uploaded before the create
    no_image = _schema({"prompt": {"type": "string"}})
    with pytest.raises(errors.ProviderRejectedInput, match="image: acme/m has no input for it"):
        map_request(ImageToImage(prompt="x", image=png()), no_image, None, inline_max=1024)
    with pytest.raises(errors.ProviderRejectedInput, match=r"num_outputs: 2 .*allowed 1"):
        map_request(TextToImage(prompt="x", num_outputs=2), no_image, None, inline_max=1024)
    ratio_only = _schema({"prompt": {"type": "string"}, "aspect_ratio": {"type": "string", "enum": ["1:1", "16:9"]}})
    ok = map_request(TextToImage(prompt="x", width=1024, height=576), ratio_only, None, inline_max=1024)
    assert ok.values["aspect_ratio"] == "16:9"
    with pytest.raises(errors.ProviderRejectedInput, match="width/height: 1000x700"):
        map_request(TextToImage(prompt="x", width=1000, height=700), ratio_only, None, inline_max=1024)
    xtts = _schema({"text": {"type": "string"}, "speaker": {"type": "string", "format": "uri"}}, required=["speaker"])
    spoken = map_request(TextToSpeech(text="hi", voice="https://example.org/me.wav"), xtts, None, inline_max=1024)
    assert spoken.values == {"text": "hi", "speaker": "https://example.org/me.wav"}


def test_retry_after_parsing_and_problem_documents() -> None:
    assert parse_retry_after("7") == 7.0 and parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    request = httpx.Request("POST", "https://api.replicate.com/v1/predictions")
    answer = httpx.Response(429, headers={"Retry-After": "3"}, json={"title": "Throttled", "detail": "slow down"},
                            request=request)  # fmt: skip
    err = ApiStatusError.from_response(answer)
    assert err.status == 429 and err.retry_after == 3.0 and "slow down" in str(err)


def test_output_checks_sniff_content_and_hosts() -> None:
    assert sniff(png()) == "image/png" and sniff(wav(0.1)) == "audio/wav"
    assert sniff(b"  <!DOCTYPE html><html>") == "text/html" and sniff(b'{"error": 1}') == "application/json"
    assert (
        acceptable("image", "image/webp") and acceptable("video", "image/gif") and not acceptable("image", "text/html")
    )
    options = ReplicateOptions(base_url="http://127.0.0.1:9999")
    assert host_allowed("https://replicate.delivery/x/out.png", options)
    assert host_allowed("https://pbxt.replicate.delivery/x/out.png", options)
    assert host_allowed("http://127.0.0.1:9999/files/x.png", options)
    assert not host_allowed("http://replicate.delivery/x.png", options)  # https only
    assert not host_allowed("https://evil.example/replicate.delivery/x.png", options)
    assert not host_allowed("https://notreplicate.delivery/x.png", options)
    assert not host_allowed("http://127.0.0.1:9998/files/x.png", options)


def test_transcripts_of_either_shape() -> None:
    text, segments = transcript_of({"transcription": "1\n00:00:00,000 --> 00:00:01,000\nHi\n",
                                    "segments": [{"start": 0, "end": 1.5, "text": " Hi there."}]})  # fmt: skip
    assert text == "Hi there." and segments[0].end == 1.5
    text, segments = transcript_of({"text": "a b", "chunks": [{"timestamp": [0.0, 2.0], "text": "a b"}]})
    assert text == "a b" and segments[0].start == 0.0


def test_options_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="http"):
        ReplicateOptions(base_url="ftp://x")
    with pytest.raises(ValueError, match="less than or equal to 60"):
        ReplicateOptions(wait_seconds=61)
    with pytest.raises(ValueError, match="host name"):
        ReplicateOptions(allowed_output_hosts=["https://replicate.delivery"])


def data_uri_bytes(uri: str) -> bytes:
    return base64.b64decode(uri.split(",", 1)[1])


__all__ = [
    "TOKEN",
    "Decimal",
    "MediaInput",
    "build_settings",
    "creates",
    "data_uri_bytes",
    "fake",
    "fast_options",
    "image_of",
    "make_router",
    "mask_png",
    "png",
    "repo_config",
    "router",
    "token",
    "wav",
]
