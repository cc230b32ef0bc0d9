"""One function per task hf-inference serves: genroute request → client call(s) → :class:`ProviderOutput`.

Compute time and errors are the caller's business (:mod:`.provider`); these functions only shape requests and
answers. hf-inference makes one image per call, so ``num_outputs`` images are that many calls.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from huggingface_hub import AsyncInferenceClient, ImageToImageTargetSize

from genroute import errors
from genroute.billing import input_audio_seconds
from genroute.types import (
    ImageToImage,
    OutputFile,
    ProviderOutput,
    RequestModel,
    SpeechToText,
    TextGeneration,
    TextToImage,
    TextToSpeech,
    Usage,
)

from . import media
from .options import NAME, HuggingFaceOptions

T = TypeVar("T")

SERVED_TASKS = ("text-to-image", "image-to-image", "text-to-speech", "speech-to-text", "text-generation")
"""What hf-inference serves. Video, upscale, inpaint and background removal it does not: no offers for those."""


@dataclass
class Call:
    """Everything one run needs to call the service."""

    client: AsyncInferenceClient
    target: str  # the client's ``model=``: a URL under base_url, or the model id
    model: str  # the catalogue's model id, for messages
    options: HuggingFaceOptions
    seed: int  # the seed of the first output when the request gives none (derived from the request key)
    wait: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]

    async def __call__(self, call: Callable[[], Awaitable[T]]) -> T:
        result: T = await self.wait(call)
        return result


_ENGLISH = re.compile(r"^(en|eng|english)([-_][a-z0-9]+)*$", re.IGNORECASE)


def unserved(request: RequestModel) -> str | None:
    """Why hf-inference cannot carry out ``request`` as asked, or None.

    Its task API (``huggingface_hub`` ``text_to_speech`` / ``automatic_speech_recognition``, the hf-inference task
    parameters) has no field for a voice or a language: text-to-speech speaks in the model's one voice (the
    catalogue's models speak English), and speech recognition detects the language itself. A request asking for
    them is not offered for, rather than served with the field dropped.
    """
    match request:
        case TextToSpeech(voice=str() as voice):
            kind = "a speaker sample" if re.match(r"^(https?|data):", voice, re.IGNORECASE) else f"voice {voice!r}"
            return f"hf-inference text-to-speech takes no voice (asked for {kind}); its models speak in one voice"
        case TextToSpeech(language=str() as language) if not _ENGLISH.match(language):
            return (
                f"hf-inference text-to-speech takes no language (asked for {language!r}); "
                "its models in the catalogue speak English"
            )
        case SpeechToText(language=str() as language):
            return (
                f"hf-inference speech-to-text takes no language (asked for {language!r}); its models guess the "
                "language of the audio"
            )
    return None


def one_output_only(request: RequestModel) -> bool:
    """Whether hf-inference can make only one distinct output for ``request``: image-to-image takes no seed, so
    another call with the same request makes (and bills) the same image again."""
    return isinstance(request, ImageToImage)


async def run_task(call: Call, request: RequestModel) -> ProviderOutput:
    why = unserved(request)
    if why is None and isinstance(request, ImageToImage) and request.num_outputs > 1:  # see one_output_only
        why = f"hf-inference {request.task_name} takes no seed: {request.num_outputs} outputs would be the same image"
    if why is not None:  # no offer is made for it; refused here too, before anything is sent or billed
        raise errors.ProviderRejectedInput(why, provider=NAME)
    match request:
        case TextToImage():
            return await text_to_image(call, request)
        case ImageToImage():
            return await image_to_image(call, request)
        case TextToSpeech():
            return await text_to_speech(call, request)
        case SpeechToText():
            return await speech_to_text(call, request)
        case TextGeneration():
            return await text_generation(call, request)
    raise errors.ProviderRejectedInput(f"Hugging Face does not serve {request.task_name}", provider=NAME)


def _seeds(call: Call, seed: int | None, count: int) -> list[int]:
    first = call.seed if seed is None else seed
    return [(first + i) % 2**32 for i in range(count)]


async def text_to_image(call: Call, request: TextToImage) -> ProviderOutput:
    width, height = request.dimensions()
    files = []
    for seed in _seeds(call, request.seed, request.num_outputs):
        image = await call(
            partial(
                call.client.text_to_image,
                request.prompt,
                negative_prompt=request.negative_prompt,
                width=width,
                height=height,
                seed=seed,
                model=call.target,
            )
        )
        data = media.png_bytes(image, model=call.model, max_bytes=call.options.max_output_bytes)
        files.append(OutputFile(data=data, media_type="image/png"))
    return ProviderOutput(files=files, usage=Usage(outputs=len(files)))


async def image_to_image(call: Call, request: ImageToImage) -> ProviderOutput:
    # hf-inference refuses a PIL image as input: send the bytes. Its parameters have no seed and no strength.
    target_size = None
    if request.width is not None or request.aspect_ratio is not None:
        width, height = request.dimensions()
        target_size = ImageToImageTargetSize(width=width, height=height)
    files = []
    for _ in range(request.num_outputs):
        image = await call(
            partial(
                call.client.image_to_image,
                request.image.data,
                request.prompt,
                negative_prompt=request.negative_prompt,
                target_size=target_size,
                model=call.target,
            )
        )
        data = media.png_bytes(image, model=call.model, max_bytes=call.options.max_output_bytes)
        files.append(OutputFile(data=data, media_type="image/png"))
    return ProviderOutput(files=files, usage=Usage(outputs=len(files)))


async def text_to_speech(call: Call, request: TextToSpeech) -> ProviderOutput:
    audio = await call(partial(call.client.text_to_speech, request.text, model=call.target))
    if not isinstance(audio, bytes):
        raise errors.OutputRejected(f"{call.model} answered {type(audio).__name__}, not audio bytes", provider=NAME)
    media_type = media.checked_audio(audio, model=call.model, max_bytes=call.options.max_output_bytes)
    seconds = media.audio_seconds(audio)
    return ProviderOutput(
        files=[OutputFile(data=audio, media_type=media_type)], usage=Usage(outputs=1, media_seconds=seconds)
    )


async def speech_to_text(call: Call, request: SpeechToText) -> ProviderOutput:
    audio = request.audio.data
    # return_timestamps asks whisper for timed chunks (the real service sends none without it); any parameter
    # makes the client send the audio base64-encoded in JSON instead of raw.
    answer = await call(
        partial(
            call.client.automatic_speech_recognition,
            audio,
            model=call.target,
            extra_body={"return_timestamps": True},
        )
    )
    text = getattr(answer, "text", None)
    if not isinstance(text, str):
        raise errors.OutputRejected(f"{call.model} answered a transcript without text", provider=NAME, retryable=True)
    duration = media.audio_seconds(audio)
    segments = media.segments(text, getattr(answer, "chunks", None), duration)
    seconds = duration if duration is not None else float(input_audio_seconds(request))
    return ProviderOutput(text=text.strip(), segments=segments, usage=Usage(outputs=1, input_seconds=seconds))


def chat_messages(request: TextGeneration) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": request.system_prompt}] if request.system_prompt else []
    return [*messages, {"role": "user", "content": request.prompt}]


def chat_arguments(call: Call, request: TextGeneration) -> dict[str, Any]:
    seed = request.seed if request.seed is not None else call.seed
    return {"model": call.target, "max_tokens": request.max_tokens, "temperature": request.temperature, "seed": seed}


async def text_generation(call: Call, request: TextGeneration) -> ProviderOutput:
    answer = await call(partial(call.client.chat_completion, chat_messages(request), **chat_arguments(call, request)))
    choices: Sequence[Any] = getattr(answer, "choices", None) or []
    content = choices[0].message.content if choices and choices[0].message is not None else None
    if not isinstance(content, str):
        raise errors.OutputRejected(f"{call.model} answered no text", provider=NAME, retryable=True)
    check_text_size(call, len(content.encode()))
    usage = getattr(answer, "usage", None)
    tokens = getattr(usage, "completion_tokens", None)
    counted = tokens if isinstance(tokens, int) else None
    return ProviderOutput(text=content, usage=Usage(outputs=1, output_tokens=counted))


def check_text_size(call: Call, size: int) -> None:
    """Refuse generated text past ``max_output_bytes`` (``size`` in UTF-8 bytes)."""
    if size > call.options.max_output_bytes:
        raise errors.OutputRejected(f"{call.model} answered {size} bytes of text, over max_output_bytes", provider=NAME)
