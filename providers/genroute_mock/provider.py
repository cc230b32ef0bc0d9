"""The mock provider: every task, offline, deterministic, with real files and configurable faults."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from genroute import billing, errors
from genroute.provider import Provider, RunContext
from genroute.types import (
    MIN_SIDE,
    ImageToImage,
    ImageToVideo,
    Inpaint,
    Number,
    Offer,
    OutputFile,
    ProviderOutput,
    RemoveBackground,
    RequestModel,
    Segment,
    SpeechToText,
    TextGeneration,
    TextToImage,
    TextToSpeech,
    TextToVideo,
    Upscale,
    Usage,
    WholeNumber,
)

from . import media

FaultKind = Literal["rate_limit", "unavailable", "timeout", "invalid_input"]
MAX_VIDEO_FRAMES = 96


def _default_fault_kinds() -> list[FaultKind]:
    return ["unavailable"]


class MockOptions(BaseModel):
    """``[providers.mock.options]``: how slow and how unreliable the mock pretends to be."""

    model_config = ConfigDict(extra="forbid")

    latency_seconds: Number = Field(default=0.0, ge=0, description="wait this long before answering")
    token_latency_seconds: Number = Field(default=0.0, ge=0, description="wait between streamed words")
    failure_rate: Number = Field(default=0.0, ge=0, le=1, description="share of attempts that fail")
    failure_kinds: list[FaultKind] = Field(default_factory=_default_fault_kinds, min_length=1)
    retry_after_seconds: Number = Field(default=0.05, ge=0, description="Retry-After sent with rate limits")
    seed: WholeNumber = Field(default=0, description="changes which attempts fail, not what succeeds")
    # Sides are rounded to a multiple of 8 and never below 64 (genroute.types.MIN_SIDE): a smaller long side
    # would come out as 64 anyway, so it is refused rather than silently ignored. An image-to-video request
    # without width/height or aspect_ratio takes its input image's shape, this long.
    video_side: WholeNumber = Field(default=256, ge=64, le=1024, description="long side of generated videos in pixels")


class MockProvider(Provider):
    """Serves every task from the request itself: same request, same bytes."""

    name = "mock"
    options_model = MockOptions

    async def run(self, request: RequestModel, offer: Offer, ctx: RunContext) -> ProviderOutput:
        options = _options(ctx)
        if options.latency_seconds:
            await asyncio.sleep(options.latency_seconds)
        _maybe_fail(options, ctx)
        seed = request.seed if request.seed is not None else int(ctx.request_key[:8], 16)
        try:
            output = _generate(request, seed, options)
        except ValueError as exc:  # undecodable input media
            raise errors.ProviderRejectedInput(str(exc), provider=self.name) from exc
        return output.model_copy(update={"job_id": f"mock-{ctx.request_key[:12]}-{ctx.attempt}"})

    async def stream(self, request: RequestModel, offer: Offer, ctx: RunContext) -> AsyncIterator[str]:
        """The answer word by word. Before each word goes out, ``ctx.extra["incurred"]`` holds what the words
        produced so far cost, so a stream the caller abandons (or cancels, or the deadline cuts) is settled at
        what it produced, not at the ``max_tokens`` estimate; a stream that ends is priced on its whole output."""
        output = await self.run(request, offer, ctx)
        ctx.extra["output"] = output
        delay = _options(ctx).token_latency_seconds
        words = (output.text or "").split(" ")
        sent = ""
        for i, word in enumerate(words):
            if delay:
                await asyncio.sleep(delay)
            piece = word if i == len(words) - 1 else word + " "
            sent += piece
            cost = _cost_of_text(request, offer, sent)
            if cost is not None:
                ctx.extra["incurred"] = cost
            yield piece
        ctx.extra.pop("incurred", None)  # finished: the router prices extra["output"]


def _options(ctx: RunContext) -> MockOptions:
    return ctx.options if isinstance(ctx.options, MockOptions) else MockOptions()


def _maybe_fail(options: MockOptions, ctx: RunContext) -> None:
    if not options.failure_rate:
        return
    rng = random.Random(f"{options.seed}:{ctx.request_key}:{ctx.attempt}")
    if rng.random() >= options.failure_rate:
        return
    kind = rng.choice(options.failure_kinds)
    if kind == "rate_limit":
        raise errors.RateLimited("429 Too Many Requests", provider="mock", retry_after=options.retry_after_seconds)
    if kind == "timeout":
        raise errors.ProviderTimeout("the mock timed out", provider="mock")
    if kind == "invalid_input":
        raise errors.ProviderRejectedInput("the mock refused this input", provider="mock")
    raise errors.ProviderUnavailable("503 Service Unavailable", provider="mock")


def _tokens(text: str) -> int:
    """The tokens the mock bills for ``text``: about four for every three words, at least one."""
    return max(1, round(len(text.split()) * 4 / 3))


def _cost_of_text(request: RequestModel, offer: Offer, text: str) -> Decimal | None:
    """What generating ``text`` costs, priced as the offer's catalogue entry prices tokens; None without one."""
    if offer.entry is None:
        return None
    usage = Usage(outputs=1, output_tokens=_tokens(text))
    return billing.actual(offer.entry, request, ProviderOutput(text=text, usage=usage))


def _png(data: bytes) -> OutputFile:
    return OutputFile(data=data, media_type="image/png")


def _generate(request: RequestModel, seed: int, options: MockOptions) -> ProviderOutput:
    match request:
        case TextToImage():
            width, height = request.dimensions()
            files = [
                _png(media.png_image(width, height, seed=seed + i, label=request.prompt))
                for i in range(request.num_outputs)
            ]
            return ProviderOutput(files=files, usage=Usage(outputs=len(files)))
        case ImageToImage() | Inpaint():
            mask = request.mask.data if isinstance(request, Inpaint) else None
            files = [
                _png(media.transform_image(request.image.data, seed=seed + i, mask=mask))
                for i in range(request.num_outputs)
            ]
            return ProviderOutput(files=files, usage=Usage(outputs=len(files)))
        case Upscale():
            data = media.transform_image(request.image.data, seed=seed, scale=request.scale)
            return ProviderOutput(files=[_png(data)], usage=Usage(outputs=1))
        case RemoveBackground():
            data = media.transform_image(request.image.data, seed=seed, remove_background=True)
            return ProviderOutput(files=[_png(data)], usage=Usage(outputs=1))
        case TextToVideo() | ImageToVideo():
            width, height = request.dimensions(base=options.video_side)
            if isinstance(request, ImageToVideo):
                # The still's shape unless a size or aspect ratio is asked for; refuses undecodable input.
                shaped = media.video_size(request.image.data, options.video_side, min_side=MIN_SIDE)
                if request.width is None and request.aspect_ratio is None:
                    width, height = shaped
            frames = max(1, min(MAX_VIDEO_FRAMES, round(request.duration_seconds * request.fps)))
            files = [
                OutputFile(
                    data=media.animated_gif(width, height, frames=frames, fps=request.fps, seed=seed + i),
                    media_type="image/gif",
                )
                for i in range(request.num_outputs)
            ]
            seconds = request.duration_seconds * len(files)
            return ProviderOutput(files=files, usage=Usage(outputs=len(files), media_seconds=seconds))
        case TextToSpeech():
            seconds = media.speech_duration_seconds(request.text)
            data = media.wav_audio(seconds, seed=seed)
            files = [OutputFile(data=data, media_type="audio/wav")]
            return ProviderOutput(files=files, usage=Usage(outputs=1, media_seconds=seconds))
        case SpeechToText():
            audio = request.audio.data
            measured = media.wav_duration_seconds(audio)
            seconds = measured if measured is not None else len(audio) / 16_000
            pieces = media.transcript_segments(seconds, seed=seed, language=request.language)
            segments = [Segment(start=start, end=end, text=text) for start, end, text in pieces]
            text = " ".join(s.text for s in segments)
            return ProviderOutput(text=text, segments=segments, usage=Usage(outputs=1, input_seconds=seconds))
        case TextGeneration():
            max_words = max(1, request.max_tokens * 3 // 4)
            text = media.plausible_text(request.prompt, seed=seed, max_words=min(max_words, 400))
            return ProviderOutput(text=text, usage=Usage(outputs=1, output_tokens=_tokens(text)))
    raise errors.InvalidRequest(f"the mock does not know task {request.task_name}")
