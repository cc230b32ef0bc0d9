"""Requests, offers and results: the pydantic models at genroute's boundaries."""

from __future__ import annotations

import filecmp
import hashlib
import json
import math
import re
import shutil
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_args, overload

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .errors import ArtifactMissing, InvalidRequest, StoreError
from .media import MediaCheck, MediaInput, media_kind_problem

Task = Literal[
    "text-to-image",
    "image-to-image",
    "inpaint",
    "upscale",
    "remove-background",
    "text-to-video",
    "image-to-video",
    "text-to-speech",
    "speech-to-text",
    "text-generation",
]
TASKS: tuple[Task, ...] = get_args(Task)

Tier = Literal["fast", "balanced", "quality"]
TIERS: tuple[Tier, ...] = get_args(Tier)

CacheMode = Literal["use", "refresh", "bypass"]
"""``use``: serve from the store when possible; ``refresh``: always call a provider, then store;
``bypass``: call a provider and leave the store untouched."""

AspectRatio = Literal["1:1", "16:9", "9:16", "21:9", "4:3", "3:4"]
ASPECT_RATIOS: tuple[AspectRatio, ...] = get_args(AspectRatio)

Billing = Literal["free", "paid", "simulated"]
"""Who pays: ``paid`` is real money (scope ``global``), ``free`` spends a provider's free credit (scope
``free:<provider>``), ``simulated`` is the mock's pretend money (scope ``simulated``)."""

MIN_SIDE, MAX_SIDE = 64, 2048


def _no_bool_or_text(kind: str) -> Any:
    """A before-validator refusing what pydantic's lax mode would coerce into a number: ``true``, ``"2"``.

    Whole floats (``2.0``) stay accepted for integer fields, as lax mode has it; ``2.5`` is still refused.
    """

    def check(value: Any) -> Any:
        if isinstance(value, bool):
            got = json.dumps(value)
        elif isinstance(value, str):
            got = f"the string {json.dumps(value)} (write the number without quotes)"
        elif isinstance(value, bytes | bytearray):
            got = "bytes"
        elif isinstance(value, float) and not math.isfinite(value):
            # TOML's inf and nan are numbers to it, never a sensible setting or parameter.
            raise PydanticCustomError("finite_number", "must be a finite number, not {got}", {"got": str(value)})
        else:
            return value
        raise PydanticCustomError("json_type", "must be {kind}, not {got}", {"kind": kind, "got": got})

    return BeforeValidator(check)


_WHOLE, _NUMBER = _no_bool_or_text("a whole number"), _no_bool_or_text("a number")
# Numbers as requests, configuration models (``plugins.toml`` gives real numbers) and plugins' ``options_model``
# take them: ``max_attempts = true`` or ``"seed": "2"`` is refused, not coerced. The check sits on the whole
# annotation (not inside ``| None``), so the fields' annotations stay plain types.
WholeNumber = Annotated[int, _WHOLE]
OptionalWholeNumber = Annotated[int | None, _WHOLE]
Number = Annotated[float, _NUMBER]
OptionalNumber = Annotated[float | None, _NUMBER]


def _only_bool(value: Any) -> Any:
    """A before-validator refusing what pydantic's lax mode would coerce into a boolean: ``1``, ``"yes"``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        got = f"the string {json.dumps(value)} (write true or false without quotes)"
    else:
        got = repr(value)
    raise PydanticCustomError("flag_type", "must be true or false, not {got}", {"got": got})


# A boolean as configuration models take it: ``enabled = "yes"`` is refused, not coerced.
Flag = Annotated[bool, BeforeValidator(_only_bool)]
if TYPE_CHECKING:

    class _MediaField:
        """What a type checker sees of a media field: it is given anything :meth:`MediaInput.parse` takes (a
        :data:`MediaSource`) and read as the :class:`MediaInput` validation made of it.

        A descriptor's ``__set__`` gives the type of a model's ``__init__`` parameter, both under plain
        ``dataclass_transform`` (how ``mypy --strict`` reads a pydantic model without a plugin) and under the pydantic
        mypy plugin; ``__get__`` gives the type of the attribute. Pydantic itself never sees this class: at run time
        the fields are the ``Annotated`` types below.
        """

        @overload
        def __get__(self, instance: None, owner: type[Any], /) -> _MediaField: ...
        @overload
        def __get__(self, instance: object, owner: type[Any], /) -> MediaInput: ...
        def __get__(self, instance: object, owner: type[Any], /) -> MediaInput | _MediaField: ...
        def __set__(self, instance: object, value: MediaSource, /) -> None: ...

    ImageInput = _MediaField
    AudioInput = _MediaField
else:
    ImageInput = Annotated[MediaInput, MediaCheck("image")]
    """A media field that must hold an image (PNG, JPEG, WEBP or GIF)."""
    AudioInput = Annotated[MediaInput, MediaCheck("audio")]
    """A media field that must hold audio (WAV, MP3, FLAC, OGG, M4A/MP4 or WEBM)."""


class _Request(BaseModel):
    """Fields every request has."""

    # A number field (deadline_seconds, strength, temperature, duration_seconds…) takes finite numbers only:
    # NaN or infinity is refused as such ("should be a finite number"), not as out of range.
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, allow_inf_nan=False)

    task: Task
    tier: Tier = "balanced"
    seed: OptionalWholeNumber = Field(default=None, ge=0, le=2**32 - 1)
    provider: str | None = Field(default=None, description="pin one provider by name")
    model: str | None = Field(default=None, description="pin one model by name")
    cache: CacheMode = "use"
    deadline_seconds: OptionalNumber = Field(default=None, gt=0, le=24 * 3600)

    # Fields that change how a request is carried out but not what it produces: left out of the key.
    NON_KEY_FIELDS: ClassVar[tuple[str, ...]] = ("cache", "deadline_seconds")

    @property
    def task_name(self) -> Task:
        return self.task

    def media_fields(self) -> dict[str, MediaInput]:
        """The request's media inputs by field name."""
        return {name: value for name, value in self if isinstance(value, MediaInput)}

    def check_media(self) -> None:
        """Refuse a media input whose bytes are not the kind its field needs (an image, audio).

        Validation checks paths, bytes and ``data:`` URIs; a URL input can only be checked once fetched,
        so the router calls this after fetching, before anything is reserved.
        """
        for name, media in self.media_fields().items():
            for check in type(self).model_fields[name].metadata:
                problem = media_kind_problem(media, check.kind) if isinstance(check, MediaCheck) else None
                if problem:
                    raise InvalidRequest(problem, field=name)

    @model_validator(mode="before")
    @classmethod
    def _fields_of_other_tasks(cls, data: Any) -> Any:
        """A field that belongs to other tasks is refused as not applying to this one (not as a misspelling)."""
        if not isinstance(data, dict):
            return data
        task = cls.model_fields["task"].default
        misplaced = [
            InitErrorDetails(
                type=PydanticCustomError("field_not_for_task", not_for_task(task, key)),
                loc=(key,),
                input=value,
            )
            for key, value in data.items()
            if isinstance(key, str) and key not in cls.model_fields and tasks_with_field(key)
        ]
        if misplaced:
            raise ValidationError.from_exception_data(cls.__name__, misplaced)
        return data


class _Visual(_Request):
    """Common fields of image and video generation."""

    negative_prompt: str | None = Field(default=None, max_length=4000)
    num_outputs: WholeNumber = Field(default=1, ge=1, le=4)
    width: OptionalWholeNumber = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE)
    height: OptionalWholeNumber = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE, validate_default=True)
    aspect_ratio: AspectRatio | None = Field(default=None, validate_default=True)

    # Field validators (not a model validator) so the error names the field; order of declaration matters.
    @field_validator("height")
    @classmethod
    def _both_sides(cls, height: int | None, info: ValidationInfo) -> int | None:
        width = info.data.get("width")
        if "width" in info.data and (width is None) != (height is None):
            raise ValueError("give both width and height, or neither (then aspect_ratio applies)")
        return height

    @field_validator("aspect_ratio")
    @classmethod
    def _ratio_or_size(cls, ratio: AspectRatio | None, info: ValidationInfo) -> AspectRatio | None:
        if ratio is not None and info.data.get("width") is not None:
            raise ValueError("give aspect_ratio or width/height, not both")
        return ratio

    def dimensions(self, base: int = 1024) -> tuple[int, int]:
        """Width and height in pixels: explicit, or from the aspect ratio with ``base`` on the long side."""
        if self.width is not None and self.height is not None:
            return self.width, self.height
        w, h = (int(x) for x in (self.aspect_ratio or "1:1").split(":"))
        scale = base / max(w, h)
        return _round8(w * scale), _round8(h * scale)


def _round8(value: float) -> int:
    return max(MIN_SIDE, round(value / 8) * 8)


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be blank")
    return text


_Prompt = Annotated[str, Field(min_length=1, max_length=10_000), AfterValidator(_not_blank)]

VOICE_NAME_MAX = 100
VOICE_SAMPLE_MAX = 16 * 2**20  # characters of a speaker sample's URL or data: URI


def _voice(value: str) -> str:
    """A voice's name, or a speaker sample to clone as an http(s) URL or ``data:`` URI (much longer)."""
    if re.match(r"^(https?|data):", value, flags=re.IGNORECASE):
        if len(value) > VOICE_SAMPLE_MAX:
            raise ValueError(f"a speaker sample's URL or data: URI is at most {VOICE_SAMPLE_MAX:,} characters")
        return value
    if len(value) > VOICE_NAME_MAX:
        raise ValueError(
            f"a voice name is at most {VOICE_NAME_MAX} characters; give a speaker sample to clone as an https URL "
            "or data: URI"
        )
    return value


class TextToImage(_Visual):
    task: Literal["text-to-image"] = "text-to-image"
    prompt: _Prompt


class ImageToImage(_Visual):
    task: Literal["image-to-image"] = "image-to-image"
    image: ImageInput
    prompt: _Prompt
    strength: Number = Field(default=0.6, ge=0.0, le=1.0)


class Inpaint(_Visual):
    task: Literal["inpaint"] = "inpaint"
    image: ImageInput
    mask: ImageInput
    prompt: _Prompt


class Upscale(_Request):
    task: Literal["upscale"] = "upscale"
    image: ImageInput
    scale: WholeNumber = Field(default=2, ge=2, le=8)


class RemoveBackground(_Request):
    task: Literal["remove-background"] = "remove-background"
    image: ImageInput


class TextToVideo(_Visual):
    task: Literal["text-to-video"] = "text-to-video"
    prompt: _Prompt
    duration_seconds: Number = Field(default=4.0, gt=0, le=30)
    fps: WholeNumber = Field(default=8, ge=1, le=60)


class ImageToVideo(_Visual):
    task: Literal["image-to-video"] = "image-to-video"
    image: ImageInput
    prompt: str | None = Field(default=None, max_length=10_000)
    duration_seconds: Number = Field(default=4.0, gt=0, le=30)
    fps: WholeNumber = Field(default=8, ge=1, le=60)


class TextToSpeech(_Request):
    task: Literal["text-to-speech"] = "text-to-speech"
    text: Annotated[str, Field(min_length=1, max_length=20_000), AfterValidator(_not_blank)]
    voice: str | None = Field(default=None, min_length=1)
    language: str | None = Field(default=None, min_length=2, max_length=10)

    @field_validator("voice")
    @classmethod
    def _voice_or_sample(cls, value: str | None) -> str | None:
        return None if value is None else _voice(_not_blank(value))


class SpeechToText(_Request):
    task: Literal["speech-to-text"] = "speech-to-text"
    audio: AudioInput
    language: str | None = Field(default=None, min_length=2, max_length=10)


class TextGeneration(_Request):
    task: Literal["text-generation"] = "text-generation"
    prompt: _Prompt
    system_prompt: str | None = Field(default=None, max_length=20_000)
    max_tokens: WholeNumber = Field(default=512, ge=1, le=32_000)
    temperature: Number = Field(default=0.7, ge=0.0, le=2.0)


Request = Annotated[
    TextToImage
    | ImageToImage
    | Inpaint
    | Upscale
    | RemoveBackground
    | TextToVideo
    | ImageToVideo
    | TextToSpeech
    | SpeechToText
    | TextGeneration,
    Field(discriminator="task"),
]
"""Any request; the ``task`` field picks the model."""

RequestModel = _Request
REQUEST_ADAPTER: TypeAdapter[Request] = TypeAdapter(Request)

REQUEST_TYPES: dict[Task, type[_Request]] = {
    cls.model_fields["task"].default: cls
    for cls in (
        TextToImage,
        ImageToImage,
        Inpaint,
        Upscale,
        RemoveBackground,
        TextToVideo,
        ImageToVideo,
        TextToSpeech,
        SpeechToText,
        TextGeneration,
    )
}


def tasks_with_field(name: str) -> list[Task]:
    """The tasks whose requests have a field called ``name``."""
    return [task for task, cls in REQUEST_TYPES.items() if name in cls.model_fields]


def not_for_task(task: Task, name: str) -> str:
    """Why field ``name``, which other tasks have, is refused in a ``task`` request."""
    common = [field for field in _Request.model_fields if field != "task"]
    own = [field for field in REQUEST_TYPES[task].model_fields if field not in _Request.model_fields]
    return (
        f"does not apply to {task}, only to {', '.join(tasks_with_field(name))}; {task} takes "
        f"{', '.join(own)} and the fields every task takes ({', '.join(common)})"
    )


def parse_request(data: dict[str, Any]) -> RequestModel:
    """Validate a plain dict (say, a JSONL line) into the request model its ``task`` names."""
    return REQUEST_ADAPTER.validate_python(data)


BillingUnit = Literal["output", "request", "media_second", "audio_minute", "compute_second", "1k_tokens"]
"""How a model is billed: per output file, per request, per second of generated video or audio (media_second), per
minute of input audio, per second of compute on named hardware, or per thousand generated tokens."""


class ModelEntry(BaseModel):
    """One catalogue entry: a model a provider offers for one task and tier, with its price."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    unit: BillingUnit
    price: Decimal = Field(ge=0, description="USD per unit")
    hardware: str | None = None
    est_seconds: Decimal | None = Field(default=None, gt=0, description="expected compute seconds per output")
    deployment: str | None = None
    max_outputs: OptionalWholeNumber = Field(default=None, ge=1)
    inputs: dict[str, Any] = Field(default_factory=dict, description="fixed model inputs")

    @model_validator(mode="after")
    def _compute_needs_seconds(self) -> ModelEntry:
        if self.unit == "compute_second" and self.est_seconds is None:
            raise ValueError("unit 'compute_second' needs est_seconds (expected compute seconds per output)")
        return self


class Offer(BaseModel):
    """What one provider proposes for one request: a model, a tier and an estimated price."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    model: str
    task: Task
    tier: Tier
    estimate: Decimal | None = Field(description="estimated USD; None means unpriced")
    billing: Billing = "paid"
    priority: int = Field(default=100, description="lower goes first among equal prices")
    entry: ModelEntry | None = Field(default=None, description="the catalogue entry, for settling the cost")
    note: str = ""
    detail: dict[str, Any] = Field(default_factory=dict, description="provider-private data for run()")

    @field_validator("estimate")
    @classmethod
    def _estimate_not_negative(cls, value: Decimal | None) -> Decimal | None:
        # The ledger reserves the estimate; a negative one would sort first and then fail every call it is chosen for.
        if value is not None and value < 0:
            raise ValueError(f"estimate cannot be negative (an offer's estimated USD is 0 or more), not {value}")
        return value


class Segment(BaseModel):
    """One timed piece of a transcription: ``start`` and ``end`` in seconds, finite, zero or more, ``end`` not before
    ``start``. Anything else is refused naming the field: an infinite time would break SRT and WebVTT export, and a
    stored result holding one could not be read back."""

    # allow_inf_nan=False: inf and NaN are refused as "Input should be a finite number", naming start or end.
    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    start: float = Field(ge=0)
    end: float = Field(ge=0)
    text: str

    @field_validator("end")
    @classmethod
    def _not_before_start(cls, end: float, info: ValidationInfo) -> float:
        start = info.data.get("start")  # absent when start itself was refused
        if start is not None and end < start:
            raise ValueError(f"segment ends ({end}) before it starts ({start})")
        return end


class Artifact(BaseModel):
    """One output file, kept as bytes in the result store."""

    model_config = ConfigDict(frozen=True)

    media_type: str
    path: Path
    sha256: str
    size: int
    source_url: str | None = None

    def read_bytes(self) -> bytes:
        """The file's bytes; :class:`~genroute.errors.ArtifactMissing` when the file is gone (evicted, deleted),
        :class:`~genroute.errors.StoreError` when they no longer match :attr:`sha256` (changed on disk)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise self._missing() from None
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise self._corrupted()
        return data

    def _corrupted(self) -> StoreError:
        return StoreError(
            f"the artifact's file {self.path} is corrupted: its bytes no longer match their sha256 {self.sha256} "
            "(the file was changed on disk after genroute wrote it)",
            hint='run the request again with cache = "refresh" (genroute run --cache refresh): the store will '
            "replace the file",
        )

    def _missing(self) -> ArtifactMissing:
        return ArtifactMissing(
            f"the artifact's file {self.path} is gone: probably evicted from the result store to keep it under "
            "store.max_bytes, or deleted"
        )

    def suffix(self) -> str:
        return MEDIA_SUFFIXES.get(self.media_type, ".bin")

    def save(self, directory: str | Path, stem: str, *, overwrite: bool = True) -> Path:
        """Copy the bytes to ``directory/<stem><suffix>`` (making ``directory`` if need be); return that path.

        ``stem`` is a file name, not a path: an empty one, one with a path separator (``/``, ``\\``) or one
        starting with ``.`` (``..``, a hidden file) raises :class:`InvalidRequest` naming ``stem``, before
        anything is written. A stem already ending in the artifact's suffix (``fox.png`` for a PNG; ``.jpeg``
        too for a JPEG) gets no second one; one ending in another media type's (``fox.jpg`` for a PNG) is
        refused, rather than saved under a name that lies about the format.

        A file already at the path is replaced (``genroute run`` saves a request's output under one name
        each time). With ``overwrite=False`` a file with other contents is refused instead
        (:class:`InvalidRequest` naming ``stem``), and one with the same bytes is left as it is.

        When the artifact's own file is gone (evicted from the result store, or deleted), raises
        :class:`~genroute.errors.ArtifactMissing`, writing nothing and making no directory; when its bytes no
        longer match :attr:`sha256` (changed on disk), :class:`~genroute.errors.StoreError`, the same way.
        """
        target = Path(directory) / self._file_name(stem)
        if target.is_dir():
            raise InvalidRequest(f"{target} is a directory", field="stem", hint="give another stem or directory")
        try:
            with self.path.open("rb") as source:  # the bytes are checked before any is copied out
                if hashlib.file_digest(source, "sha256").hexdigest() != self.sha256:
                    raise self._corrupted()
        except FileNotFoundError:
            raise self._missing() from None
        Path(directory).mkdir(parents=True, exist_ok=True)
        try:
            return self._copy_to(target, overwrite=overwrite)
        except FileNotFoundError:
            if self.path.exists():  # the target's side (its directory removed meanwhile): not ours to explain
                raise
            raise self._missing() from None  # evicted between the check above and the copy

    def _copy_to(self, target: Path, *, overwrite: bool) -> Path:
        if target.exists() and target.samefile(self.path):
            return target  # saving the stored file onto itself
        if overwrite:
            shutil.copyfile(self.path, target)
            return target
        try:
            with self.path.open("rb") as source, target.open("xb") as out:  # "x": never replaces a file
                shutil.copyfileobj(source, out)
        except FileExistsError:
            if not filecmp.cmp(target, self.path, shallow=False):
                raise InvalidRequest(
                    f"{target} already exists with other contents",
                    field="stem",
                    hint="give another stem or directory, or pass overwrite=True to replace the file",
                ) from None
        return target

    def _file_name(self, stem: str) -> str:
        """``stem`` plus this artifact's suffix unless it ends in it already; refuses a stem that is no file name."""
        suffix = self.suffix()
        hint = (
            f"give a file name without directories, say 'output' (saved as output{suffix}), and the folder as directory"
        )
        if not isinstance(stem, str) or not stem.strip():
            raise InvalidRequest(f"must be a file name, not {stem!r}", field="stem", hint=hint)
        if any(sep in stem for sep in ("/", "\\", "\0")):
            raise InvalidRequest(f"{stem!r} is a path, not a file name", field="stem", hint=hint)
        if stem.startswith("."):
            raise InvalidRequest(f"{stem!r} starts with '.': the file would be hidden", field="stem", hint=hint)
        given = Path(stem).suffix.lower()
        if given in _SUFFIX_SPELLINGS.get(suffix, {suffix}):
            return stem
        if given in _KNOWN_SUFFIXES:
            raise InvalidRequest(
                f"{stem!r} ends in {given}, but this artifact is {self.media_type} ({suffix})",
                field="stem",
                hint=f"leave the suffix out ({suffix} is added) or write {suffix}",
            )
        return stem + suffix


MediaSource = MediaInput | Artifact | str | Path | bytes | bytearray | memoryview
"""What a media field (``image``, ``mask``, ``audio``) takes: a :class:`MediaInput`, an :class:`Artifact` of an earlier
result, a file path (``str`` or ``Path``, or a ``file://`` URL naming a local file), ``bytes``, a ``data:`` URI or an
http(s) URL; another URL scheme (``ftp://``, ``s3://``…) is refused. Read back, the field is always a
:class:`MediaInput`."""

MEDIA_SUFFIXES: dict[str, str] = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "video/mp4": ".mp4",
    "audio/wav": ".wav",
    "audio/mpeg": ".mp3",
    "audio/flac": ".flac",
    "audio/ogg": ".ogg",
    "text/plain": ".txt",
}
# The spellings of a suffix a stem may already end in (``.jpeg`` for ``.jpg``), and the media suffixes a stem
# may not end in when they are another media type's.
_SUFFIX_SPELLINGS: dict[str, set[str]] = {".jpg": {".jpg", ".jpeg"}}
_KNOWN_SUFFIXES: set[str] = {*MEDIA_SUFFIXES.values(), ".jpeg"}


class Result(BaseModel):
    """What a request produced, where it ran, and what it cost."""

    model_config = ConfigDict(frozen=True)

    request_key: str
    task: Task
    provider: str
    model: str
    tier: Tier
    artifacts: list[Artifact] = Field(default_factory=list)
    text: str | None = None
    segments: list[Segment] | None = None
    estimated_cost: Decimal
    actual_cost: Decimal
    cached: bool = False
    latency_seconds: float
    attempts: int = 1
    job_id: str | None = None
    created_at: datetime

    def to_srt(self) -> str:
        """Subtitles in SubRip format (speech-to-text results)."""
        from .subtitles import to_srt

        return to_srt(self._require_segments())

    def to_webvtt(self) -> str:
        """Subtitles in WebVTT format (speech-to-text results)."""
        from .subtitles import to_webvtt

        return to_webvtt(self._require_segments())

    def _require_segments(self) -> list[Segment]:
        if self.segments is None:
            from .errors import InvalidRequest

            raise InvalidRequest(f"a {self.task} result has no timed segments", hint="use a speech-to-text result")
        return self.segments


class OutputFile(BaseModel):
    """One file a provider hands back: the bytes, not a URL that may expire."""

    model_config = ConfigDict(frozen=True)

    data: bytes
    media_type: str
    source_url: str | None = None


class Usage(BaseModel):
    """Measured quantities the billing units settle on; providers fill what they know.

    Each is a finite, non-negative number: the ledger settles on them, so nonsense is refused here, where
    the provider hands them over (the router then treats the call as a failed one).
    """

    model_config = ConfigDict(allow_inf_nan=False)

    outputs: int | None = Field(default=None, ge=0)
    compute_seconds: float | None = Field(default=None, ge=0)
    media_seconds: float | None = Field(default=None, ge=0)
    input_seconds: float | None = Field(default=None, ge=0)
    output_tokens: int | None = Field(default=None, ge=0)


class ProviderOutput(BaseModel):
    """What a provider's ``run`` returns to the router."""

    model_config = ConfigDict(frozen=True)

    files: list[OutputFile] = Field(default_factory=list)
    text: str | None = None
    segments: list[Segment] | None = None
    usage: Usage = Field(default_factory=Usage)
    actual_cost: Decimal | None = Field(default=None, description="provider-reported USD, when known")
    job_id: str | None = None

    @field_validator("actual_cost")
    @classmethod
    def _non_negative(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and value < 0:
            raise ValueError("actual_cost cannot be negative")
        return value
