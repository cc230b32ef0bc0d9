"""A genroute request as one model's inputs, by the names that model's schema declares.

Every genroute field has a list of the input names models commonly use for it (``image``,
``input_image``, ``init_image`` …); the first one the model's schema declares wins. A field the request
really needs (the input image of an image-to-image request, a count above one …) that the model cannot
take is refused before anything is spent. Fixed inputs from the catalogue (``inputs = {…}`` in
``plugins.toml``) are applied last. Media go as ``data:`` URIs, or are uploaded (``POST /v1/files``)
when larger than ``inline_media_max_bytes``.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from genroute import errors
from genroute.media import MediaInput
from genroute.types import (
    ImageToImage,
    ImageToVideo,
    Inpaint,
    ModelEntry,
    RemoveBackground,
    RequestModel,
    SpeechToText,
    TextGeneration,
    TextToImage,
    TextToSpeech,
    TextToVideo,
    Upscale,
)

from .schema import ModelSchema, allowed_text

log = logging.getLogger("genroute.replicate.inputs")

NAME = "replicate"
PROMPT = ("prompt",)
NEGATIVE = ("negative_prompt", "n_prompt")
SEED = ("seed",)
COUNT = ("num_outputs", "num_images", "number_of_images", "batch_size")
ASPECT = ("aspect_ratio",)
STRENGTH = ("prompt_strength", "strength")
IMAGE = ("image", "input_image", "init_image", "img", "image_path")
VIDEO_IMAGE = ("input_image", "image", "init_image", "first_frame_image", "start_image")
MASK = ("mask", "mask_image")
SCALE = ("scale", "upscale", "scale_factor", "upscale_factor")
FRAMES = ("num_frames", "frames", "video_frames")
FPS = ("fps", "frames_per_second")
DURATION = ("duration", "duration_seconds", "seconds", "video_duration")
SPEECH_TEXT = ("text", "prompt", "input")
VOICE = ("voice", "voice_id", "speaker_id")
SPEAKER_AUDIO = ("speaker", "speaker_wav", "reference_audio")
LANGUAGE = ("language", "lang")
AUDIO = ("audio", "audio_file", "file")
SYSTEM = ("system_prompt", "system_message")
MAX_TOKENS = ("max_tokens", "max_new_tokens", "max_length")
TEMPERATURE = ("temperature",)
UPLOAD_PLACEHOLDER = "data:application/octet-stream;base64,AA=="


@dataclass
class ModelInput:
    """The mapped input: values by model input name, where each came from, and media still to upload."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # model input → genroute field (for messages)
    uploads: dict[str, MediaInput] = field(default_factory=dict)  # inputs to upload before the create
    ignored: list[str] = field(default_factory=list)  # genroute fields this model has no input for


class _Mapper:
    def __init__(self, request: RequestModel, schema: ModelSchema, inline_max: int) -> None:
        self.request = request
        self.schema = schema
        self.inline_max = inline_max
        self.out = ModelInput()

    # -- helpers -----------------------------------------------------------------------------------
    def pick(self, names: tuple[str, ...]) -> str | None:
        if not self.schema.known:
            return names[0]
        return self.schema.first_declared(names)

    def put(self, names: tuple[str, ...], value: Any, origin: str, *, needed: bool = False) -> str | None:
        """Set ``value`` under the first declared name; refuse if ``needed`` and none is declared."""
        if value is None:
            return None
        name = self.pick(names)
        if name is None:
            if needed:
                raise errors.ProviderRejectedInput(
                    f"{origin}: {self.schema.model} has no input for it (declares none of {', '.join(names)})",
                    provider=NAME,
                    hint="pick a model that takes this input (plugins.toml), or another tier",
                )
            self.out.ignored.append(origin)
            return None
        self.out.values[name] = value
        self.out.origins[name] = origin
        return name

    def media(self, names: tuple[str, ...], media: MediaInput, origin: str) -> None:
        name = self.put(names, UPLOAD_PLACEHOLDER, origin, needed=True)
        assert name is not None
        data = media.data
        if len(data) > self.inline_max:
            self.out.uploads[name] = media
        else:
            self.out.values[name] = data_uri(data, media.media_type)

    def spec(self, name: str) -> Mapping[str, Any]:
        return self.schema.properties.get(name, {})

    # -- shared pieces -----------------------------------------------------------------------------
    def common(self) -> None:
        self.put(SEED, self.request.seed, "seed")

    def count(self, n: int) -> None:
        name = self.pick(COUNT)
        if name is not None:
            self.out.values[name] = n
            self.out.origins[name] = "num_outputs"
        elif n > 1:
            raise errors.ProviderRejectedInput(
                f"num_outputs: {n} does not fit {self.schema.model}, which makes one output per run: allowed 1",
                provider=NAME,
                hint="ask for num_outputs=1, or set max_outputs = 1 for this model in plugins.toml",
            )

    def size(self, width: int | None, height: int | None, ratio: str | None, dimensions: Any) -> None:
        aspect = self.pick(ASPECT)
        has_wh = not self.schema.known or (self.schema.declares("width") and self.schema.declares("height"))
        if not self.schema.known:
            aspect = "aspect_ratio" if ratio is not None else None
        aspect_enum = self.spec(aspect).get("enum") if aspect else None
        if width is not None and height is not None:
            if has_wh:
                if aspect and isinstance(aspect_enum, list) and "custom" in aspect_enum:
                    self.out.values[aspect] = "custom"
                    self.out.origins[aspect] = "width"
                self.out.values["width"], self.out.origins["width"] = width, "width"
                self.out.values["height"], self.out.origins["height"] = height, "height"
                return
            reduced = _ratio(width, height)
            if aspect and (not isinstance(aspect_enum, list) or reduced in aspect_enum):
                self.out.values[aspect], self.out.origins[aspect] = reduced, "width"
                return
            allowed = allowed_text(self.spec(aspect)) if aspect else "no size input at all"
            raise errors.ProviderRejectedInput(
                f"width/height: {width}x{height} does not fit {self.schema.model}, which takes only an aspect "
                f"ratio: allowed {allowed}",
                provider=NAME,
                hint="give aspect_ratio instead of width/height, or pick another model",
            )
        if ratio is None:
            return
        if aspect and (not isinstance(aspect_enum, list) or ratio in aspect_enum):
            self.out.values[aspect], self.out.origins[aspect] = ratio, "aspect_ratio"
            return
        if has_wh:
            base = max(_int(self.spec("width").get("default")) or 0, _int(self.spec("height").get("default")) or 0)
            w, h = dimensions(base or 1024)
            self.out.values["width"], self.out.origins["width"] = self._fit("width", w), "aspect_ratio"
            self.out.values["height"], self.out.origins["height"] = self._fit("height", h), "aspect_ratio"
            return
        if aspect:
            raise errors.ProviderRejectedInput(
                f"aspect_ratio: {ratio!r} does not fit {self.schema.model}: allowed {allowed_text(self.spec(aspect))}",
                provider=NAME,
            )
        self.out.ignored.append("aspect_ratio")

    def _fit(self, name: str, value: int) -> int:
        """A side derived from an aspect ratio, moved to the nearest size the model allows."""
        spec = self.spec(name)
        choices = [v for v in spec.get("enum", []) if isinstance(v, int)]
        if choices:
            return min(choices, key=lambda c: (abs(c - value), c))
        low, high = _int(spec.get("minimum")), _int(spec.get("maximum"))
        if low is not None:
            value = max(low, value)
        if high is not None:
            value = min(high, value)
        return value

    def video_length(self, duration: float, fps: int) -> None:
        frames = max(1, round(duration * fps))
        length = self.schema.first_declared(("video_length",)) if self.schema.known else None
        choices = self.spec(length).get("enum") if length else None
        if length and isinstance(choices, list):
            counted = [(int(m.group(1)), c) for c in choices if isinstance(c, str) and (m := re.match(r"(\d+)", c))]
            if counted:
                best = min(counted, key=lambda pair: (abs(pair[0] - frames), pair[0]))[1]
                self.out.values[length], self.out.origins[length] = best, "duration_seconds"
        elif self.put(FRAMES, frames, "duration_seconds × fps") is None:
            name = self.pick(DURATION)
            if name is not None:
                kind = self.spec(name).get("type")
                self.out.values[name] = math.ceil(duration) if kind == "integer" else duration
                self.out.origins[name] = "duration_seconds"
                self.out.ignored.remove("duration_seconds × fps")
        self.put(FPS, fps, "fps")

    # -- per task ----------------------------------------------------------------------------------
    def build(self) -> ModelInput:
        r = self.request
        match r:
            case TextToImage():
                self.put(PROMPT, r.prompt, "prompt", needed=True)
                self.put(NEGATIVE, r.negative_prompt, "negative_prompt")
                self.count(r.num_outputs)
                self.size(r.width, r.height, r.aspect_ratio, r.dimensions)
            case ImageToImage():
                self.media(IMAGE, r.image, "image")
                self.put(PROMPT, r.prompt, "prompt", needed=True)
                self.put(NEGATIVE, r.negative_prompt, "negative_prompt")
                self.put(STRENGTH, r.strength, "strength")
                self.count(r.num_outputs)
                self.size(r.width, r.height, r.aspect_ratio, r.dimensions)
            case Inpaint():
                self.media(IMAGE, r.image, "image")
                self.media(MASK, r.mask, "mask")
                self.put(PROMPT, r.prompt, "prompt", needed=True)
                self.put(NEGATIVE, r.negative_prompt, "negative_prompt")
                self.count(r.num_outputs)
                self.size(r.width, r.height, r.aspect_ratio, r.dimensions)
            case Upscale():
                self.media(IMAGE, r.image, "image")
                self.put(SCALE, r.scale, "scale", needed=True)
            case RemoveBackground():
                self.media(IMAGE, r.image, "image")
            case TextToVideo():
                self.put(PROMPT, r.prompt, "prompt", needed=True)
                self.put(NEGATIVE, r.negative_prompt, "negative_prompt")
                self.count(r.num_outputs)
                self.size(r.width, r.height, r.aspect_ratio, r.dimensions)
                self.video_length(r.duration_seconds, r.fps)
            case ImageToVideo():
                self.media(VIDEO_IMAGE, r.image, "image")
                self.put(PROMPT, r.prompt, "prompt")
                self.put(NEGATIVE, r.negative_prompt, "negative_prompt")
                self.count(r.num_outputs)
                self.size(r.width, r.height, r.aspect_ratio, r.dimensions)
                self.video_length(r.duration_seconds, r.fps)
            case TextToSpeech():
                self.put(SPEECH_TEXT, r.text, "text", needed=True)
                self.voice(r.voice)
                self.put(LANGUAGE, r.language, "language")
            case SpeechToText():
                self.media(AUDIO, r.audio, "audio")
                self.put(LANGUAGE, r.language, "language")
            case TextGeneration():
                self.put(PROMPT, r.prompt, "prompt", needed=True)
                self.put(SYSTEM, r.system_prompt, "system_prompt")
                self.put(MAX_TOKENS, r.max_tokens, "max_tokens")
                self.put(TEMPERATURE, r.temperature, "temperature")
            case _:
                raise errors.ProviderRejectedInput(f"cannot serve task {r.task_name}", provider=NAME)
        self.common()
        return self.out

    def voice(self, voice: str | None) -> None:
        speaker = self.schema.first_declared(SPEAKER_AUDIO) if self.schema.known else None
        if speaker is not None:
            self.out.origins.setdefault(speaker, "voice")  # a required speaker sample is asked for as `voice`
        if voice is None:
            return
        if speaker is not None and re.match(r"^(https?|data):", voice):
            self.out.values[speaker], self.out.origins[speaker] = voice, "voice"
            return
        self.put(VOICE, voice, "voice", needed=True)


def map_request(request: RequestModel, schema: ModelSchema, entry: ModelEntry | None, *, inline_max: int) -> ModelInput:
    """The model's inputs for ``request``; raises ProviderRejectedInput when it cannot be expressed."""
    mapped = _Mapper(request, schema, inline_max).build()
    for name, value in (entry.inputs if entry is not None else {}).items():
        mapped.values[name] = value
        mapped.origins[name] = f"inputs.{name} (plugins.toml)"
        mapped.uploads.pop(name, None)
    if mapped.ignored:
        log.debug("%s has no input for %s; using its defaults", schema.model, ", ".join(mapped.ignored))
    return mapped


def data_uri(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def upload_stream(media: MediaInput) -> tuple[io.BytesIO, str]:
    """A file object and a name with a fitting suffix for ``files.create``."""
    suffix = {
        "image/png": ".png",
        "image/jpeg": ".jpg",
        "image/webp": ".webp",
        "image/gif": ".gif",
        "audio/wav": ".wav",
        "audio/mpeg": ".mp3",
        "audio/flac": ".flac",
        "audio/ogg": ".ogg",
        "video/mp4": ".mp4",
    }.get(media.media_type, ".bin")
    return io.BytesIO(media.data), f"input{suffix}"


def _ratio(width: int, height: int) -> str:
    divisor = math.gcd(width, height)
    return f"{width // divisor}:{height // divisor}"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
