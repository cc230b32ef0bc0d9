"""A local fake of Replicate's HTTP API, faithful enough for the unmodified ``replicate`` client (1.0.7).

It listens on 127.0.0.1 (a threaded Werkzeug server in a background thread) and answers the endpoints
genroute's Replicate provider uses, with the JSON shapes the client parses::

    with FakeReplicate(prediction_seconds=0.02) as server:
        default_catalogue(server)
        client = replicate.Client(api_token=server.token, base_url=server.base_url)
        client.poll_interval = 0.01
        output = client.run("black-forest-labs/flux-schnell", input={"prompt": "a fox"})

Predictions go starting → processing → succeeded (or failed / canceled) on a clock driven by a ticker
thread; ``Prefer: wait`` holds, cancel, SSE streams, signed webhooks, uploads, faults and a request log
are all here. ``tests/fakes/README.md`` is the user guide; this module docstring only maps the code.

Threads: the HTTP server (one thread per request), a ticker (advances predictions, flushes throttled
webhooks) and a webhook sender. All are daemons, every wait is bounded, and :meth:`FakeReplicate.stop`
releases held requests and joins them.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import functools
import hashlib
import hmac
import io
import json
import math
import queue
import random
import re
import socket
import struct
import threading
import time
import tomllib
import traceback
import wave
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

import httpx
from PIL import Image, ImageChops, ImageDraw
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from .http_serving import KeepAliveHandler, accepted_connections, close_connections

__all__ = [
    "OUTPUT_KINDS",
    "ApiError",
    "Delivery",
    "FakeModel",
    "FakePrediction",
    "FakeReplicate",
    "FakeVersion",
    "Fault",
    "Faults",
    "RequestRecord",
    "default_catalogue",
    "sign_webhook",
]

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
OUTPUT_KINDS = frozenset({"image", "images", "video", "audio", "text", "text-stream", "json-transcript"})
WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
DEFAULT_EVENTS_FILTER = frozenset({"output", "completed"})  # Replicate's documented default
DELIVERY_HOST = "replicate.delivery"
API_HOSTS = frozenset({"api.replicate.com", "stream.replicate.com"})
REPO_ROOT = Path(__file__).resolve().parents[2]

_FAULT_KINDS = frozenset({"slow", "drop-before", "drop-after", "malformed", "timeout"})
_FAULT_ALIASES = {
    "drop": "drop-before",
    "drop-before-processing": "drop-before",
    "drop-after-processing": "drop-after",
    "read-timeout": "timeout",
    "hang": "timeout",
    "malformed-json": "malformed",
}
_MIME = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "gif": "image/gif", "wav": "audio/wav"}
_TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    402: "Insufficient credit",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    422: "Unprocessable entity",
    429: "Request was throttled",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}
_DETAILS = {
    401: "You did not pass a valid authentication token",
    402: (
        "You have insufficient credit to run this model. Go to https://replicate.com/account/billing#billing "
        "to purchase credit. Once you purchase credit, please wait a few minutes before trying again."
    ),
    404: "The requested resource could not be found.",
    500: "An unexpected error occurred.",
    502: "The server received an invalid response from an upstream server.",
    503: "No capacity is available to run this model right now. Try again later.",
    504: "The upstream server did not answer in time.",
}


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------
def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()


def _b32(*parts: object, length: int = 26) -> str:
    return base64.b32encode(_digest(*parts)).decode().lower().rstrip("=")[:length]


def _seed_from(*parts: object) -> int:
    return int.from_bytes(_digest(*parts)[:4], "big") % (2**31)


def sign_webhook(secret: str, webhook_id: str, timestamp: int | str, body: str) -> str:
    """The Standard Webhooks signature ``v1,<base64 HMAC-SHA256>`` over ``"{id}.{timestamp}.{body}"``.

    The key is the base64-decoded part of ``secret`` after ``whsec_`` (as ``replicate.webhooks.validate``
    expects); a secret that is not ``whsec_<base64>`` is used as raw UTF-8 bytes.
    """
    _, _, encoded = secret.partition("_")
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:
        key = secret.encode()
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class ApiError(Exception):
    """An RFC 7807 problem answer (``application/problem+json``) that the client turns into ReplicateError."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        body: str | bytes | None = None,
    ) -> None:
        super().__init__(detail or _TITLES.get(status, str(status)))
        self.status = status
        self.detail = detail if detail is not None else _DETAILS.get(status, _TITLES.get(status, "Error"))
        self.title = title or _TITLES.get(status, "Error")
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        self.body = body

    def payload(self) -> dict[str, Any]:
        return {"type": "about:blank", "title": self.title, "status": self.status, "detail": self.detail, **self.extra}

    def response(self) -> Response:
        if self.body is not None:
            return Response(self.body, status=self.status, headers=self.headers, content_type="text/html")
        body = json.dumps(self.payload())
        return Response(body, status=self.status, headers=self.headers, content_type="application/problem+json")


class _Drop(BaseException):  # BaseException, so that Werkzeug's `except Exception` lets it through
    """Raised inside the WSGI app to close the socket without answering."""

    def __init__(self, reset: bool = False) -> None:
        super().__init__("drop connection")
        self.reset = reset


class _RunError(Exception):
    """A model-side failure: the prediction ends ``failed`` with this message."""


# ------------------------------------------------------------------------------------------------
# Public records
# ------------------------------------------------------------------------------------------------
@dataclass
class RequestRecord:
    """One HTTP request the fake received (the Authorization value is redacted)."""

    index: int
    method: str
    path: str
    query: str
    headers: dict[str, str]
    json: Any
    status: int | None = None  # None: the connection was dropped without an answer
    fault: str | None = None
    dropped: bool = False
    prediction_ids: list[str] = field(default_factory=list)
    response_headers: dict[str, str] = field(default_factory=dict)
    started: float = 0.0
    duration: float | None = None


@dataclass
class Delivery:
    """One webhook POST the fake attempted."""

    webhook_id: str
    prediction_id: str
    event: str  # "start", "output", "logs", "output,logs" or "completed"
    url: str
    body: str
    headers: dict[str, str]
    status_code: int | None
    error: str | None
    attempt: int
    sent_at: float  # wall clock (time.time()) when the POST started
    sent_mono: float  # the same instant on time.monotonic(), the clock the throttle is kept on

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class FakeVersion:
    id: str
    properties: dict[str, dict[str, Any]]
    required: list[str]
    output_schema: dict[str, Any]
    created_wall: float
    cog_version: str = "0.9.4"


@dataclass
class _Failure:
    error: str
    logs: str | None
    remaining: int | None  # None: every prediction fails


@dataclass(eq=False)
class FakeModel:
    name: str
    output: str
    official: bool
    versions: dict[str, FakeVersion]
    latest: str
    predict_time: float | Callable[[dict[str, Any]], float] | None
    start_seconds: float | None
    file_format: str
    transform: str | None
    description: str
    reply_tokens: int
    failure: _Failure | None = None
    run_count: int = 0

    @property
    def latest_version(self) -> FakeVersion:
        return self.versions[self.latest]

    @property
    def dp_version(self) -> str:
        """What an official model's predictions show as ``version`` (``dp-`` + 32 hex)."""
        return "dp-" + _digest("dp", self.name, self.latest).hex()[:32]


@dataclass
class _Deployment:
    name: str
    model: str
    version: str
    hardware: str
    created_wall: float


@dataclass
class _Plan:
    output: Any = None
    tokens: list[str] | None = None
    logs: list[tuple[float, str]] = field(default_factory=list)
    error: str | None = None
    error_logs: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class FakePrediction:
    """Server-side state of one prediction. Read it through ``server.predictions`` / ``server.prediction(id)``."""

    id: str
    seq: int
    model: str
    version: str  # as shown in the JSON ("dp-…" for official-model predictions)
    version_id: str
    input: dict[str, Any] | None
    source: str  # "model", "version" or "deployment"
    deployment: str | None
    request_index: int
    created_wall: float
    created_mono: float
    start_delay: float
    planned_seconds: float
    webhook: str | None = None
    webhook_completed: str | None = None
    webhook_events_filter: frozenset[str] = DEFAULT_EVENTS_FILTER
    stream: bool = False
    ignored_inputs: list[str] = field(default_factory=list)  # input keys the schema does not know (dropped)
    status: str = "starting"
    logs: str = ""
    output: Any = None
    error: str | None = None
    canceled: bool = False
    data_removed: bool = False
    predict_time: float | None = None  # billed seconds: set when the prediction ends (frozen at cancel)
    metrics: dict[str, Any] = field(default_factory=dict)
    started_wall: float | None = None
    started_mono: float | None = None
    completed_wall: float | None = None
    plan: _Plan = field(default_factory=_Plan, repr=False)
    log_cursor: int = 0
    pending_events: set[str] = field(default_factory=set)
    # output/logs webhooks: when the last one was sent (monotonic), and whether one is queued, not yet sent
    last_intermediate: float = -math.inf
    intermediate_queued: bool = False
    # set when the prediction ends (or the fake stops): a blocking create sleeps on its own prediction
    wake: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


# ------------------------------------------------------------------------------------------------
# Faults
# ------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Fault:
    """One fault rule. ``matched`` counts requests it was checked against, ``fired`` those it hit."""

    method: str
    pattern: str
    kind: int | str
    times: int | None = None
    rate: float | None = None
    seed: int = 0
    skip: int = 0
    seconds: float | None = None
    retry_after: int | float | str | None = None
    detail: str | None = None
    body: str | bytes | None = None
    processed: bool = False
    reset: bool = False
    matched: int = 0
    fired: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def matches(self, method: str, path: str) -> bool:
        return (self.method == "*" or self.method == method) and fnmatch.fnmatchcase(path, self.pattern)

    def decide(self) -> bool:
        self.matched += 1
        if self.matched <= self.skip:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        if self.rate is not None and self.rng.random() >= self.rate:
            return False
        self.fired += 1
        return True

    @property
    def label(self) -> str:
        return str(self.kind)


def _split_target(target: str) -> tuple[str, str]:
    method, _, rest = target.strip().partition(" ")
    if rest and (method.isupper() or method == "*"):
        pattern = rest.strip()
    else:
        method, pattern = "*", target.strip()
    return method.upper() if method != "*" else "*", pattern.replace("...", "*") or "*"


class Faults:
    """Fault rules, checked in the order added; the first one that fires wins. Deterministic per seed."""

    def __init__(self) -> None:
        self._rules: list[Fault] = []
        self._lock = threading.Lock()

    def add(
        self,
        target: str,
        kind: int | str,
        *,
        times: int | None = None,
        rate: float | None = None,
        seed: int = 0,
        skip: int = 0,
        seconds: float | None = None,
        retry_after: int | float | str | None = None,
        detail: str | None = None,
        body: str | bytes | None = None,
        processed: bool | None = None,
        reset: bool = False,
    ) -> Fault:
        """Add a rule. ``target`` is ``"METHOD /glob/path"`` or just ``"/glob/path"`` (any method).

        ``kind``: an HTTP status 400–599 (RFC 7807 body; 429 adds ``Retry-After``), ``"slow"`` (sleep
        ``seconds`` then answer normally), ``"drop-before"`` (close the socket, nothing processed),
        ``"drop-after"`` (process the request — a create DOES create the prediction — then close without
        answering), ``"malformed"`` (process, then send a truncated JSON body with the real status) or
        ``"timeout"`` (hold ``seconds`` without answering, then close; ``processed=True`` processes first).
        A status with ``processed=True`` processes the request and then answers the error (a gateway
        error after the backend accepted the work). ``times`` caps how often it fires, ``rate`` fires with
        that probability from ``random.Random(seed)``, ``skip`` lets the first N matches through.
        """
        if isinstance(kind, str) and kind.strip().isdigit():
            kind = int(kind)
        if isinstance(kind, int):
            if not 400 <= kind <= 599:
                raise ValueError(f"fault status must be 400-599, got {kind}")
            if kind == 429 and retry_after is None:
                retry_after = 1
            is_processed = bool(processed)
        else:
            kind = kind.strip().lower().replace("_", "-")
            kind = _FAULT_ALIASES.get(kind, kind)
            if kind not in _FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; use a status or one of {sorted(_FAULT_KINDS)}")
            if seconds is None:
                seconds = {"slow": 1.0, "timeout": 30.0}.get(kind)
            defaults = {"drop-after": True, "malformed": True}
            is_processed = defaults.get(kind, False) if processed is None else bool(processed)
            if kind == "drop-after":
                is_processed = True
            if kind == "drop-before":
                is_processed = False
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within 0..1")
        method, pattern = _split_target(target)
        rule = Fault(
            method=method, pattern=pattern, kind=kind, times=times, rate=rate, seed=seed, skip=skip,
            seconds=seconds, retry_after=retry_after, detail=detail, body=body, processed=is_processed, reset=reset,
        )  # fmt: skip
        with self._lock:
            self._rules.append(rule)
        return rule

    def pick(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path) and rule.decide():
                    return rule
        return None

    def remove(self, rule: Fault) -> None:
        with self._lock:
            self._rules.remove(rule)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def __iter__(self) -> Iterator[Fault]:
        with self._lock:
            return iter(list(self._rules))

    def __len__(self) -> int:
        with self._lock:
            return len(self._rules)


# ------------------------------------------------------------------------------------------------
# Input schemas (Cog-style OpenAPI) and validation
# ------------------------------------------------------------------------------------------------
_UNSET: Any = object()


def _prop(
    type_: str,
    description: str = "",
    default: Any = _UNSET,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    enum: list[Any] | None = None,
    fmt: str | None = None,
    items: dict[str, Any] | None = None,
    required: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": type_}
    if description:
        spec["description"] = description
    if default is not _UNSET:
        spec["default"] = default
    if minimum is not None:
        spec["minimum"] = minimum
    if maximum is not None:
        spec["maximum"] = maximum
    if enum is not None:
        spec["enum"] = list(enum)
    if fmt is not None:
        spec["format"] = fmt
    if items is not None:
        spec["items"] = items
    if required:
        spec["required"] = True  # lifted into the schema's "required" list by add_model
    return spec


def _uri(description: str, *, required: bool = False) -> dict[str, Any]:
    return _prop("string", description, fmt="uri", required=required)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _type_ok(value: Any, expected: str) -> bool:
    if expected == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected == "string":
        return isinstance(value, str)
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "array":
        return isinstance(value, list)
    if expected == "object":
        return isinstance(value, dict)
    return True


_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//[^\s/?#]+[^\s]*|[^\s]+)$")


def _fmt_enum(values: list[Any]) -> str:
    return ", ".join(json.dumps(v) for v in values)


def _check_value(name: str, value: Any, spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Errors as (field, error type, description), phrased like Replicate's 422 answers."""
    field_name = f"input.{name}"
    expected = spec.get("type")
    if value is None:
        return []
    if expected and not _type_ok(value, expected):
        return [(field_name, "invalid_type", f"Invalid type. Expected: {expected}, given: {_type_name(value)}")]
    errors: list[tuple[str, str, str]] = []
    if "enum" in spec and value not in spec["enum"]:
        errors.append((field_name, "enum", f"{field_name} must be one of the following: {_fmt_enum(spec['enum'])}"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in spec and value < spec["minimum"]:
            errors.append((field_name, "number_gte", f"Must be greater than or equal to {spec['minimum']}"))
        if "maximum" in spec and value > spec["maximum"]:
            errors.append((field_name, "number_lte", f"Must be less than or equal to {spec['maximum']}"))
    if isinstance(value, str):
        if spec.get("format") == "uri" and not _URI_RE.match(value):
            errors.append((field_name, "format", "Does not match format 'uri'"))
        if "maxLength" in spec and len(value) > spec["maxLength"]:
            limit = spec["maxLength"]
            errors.append((field_name, "string_lte", f"String length must be less than or equal to {limit}"))
    if isinstance(value, list) and isinstance(spec.get("items"), dict):
        for i, item in enumerate(value):
            errors.extend(_check_value(f"{name}.{i}", item, spec["items"]))
    return errors


def validate_input(version: FakeVersion, inputs: Any) -> list[tuple[str, str, str]]:
    """Validate a prediction's ``input`` against a version's schema. Unknown keys are ignored (as Cog does)."""
    if not isinstance(inputs, dict):
        return [("input", "invalid_type", f"Invalid type. Expected: object, given: {_type_name(inputs)}")]
    errors: list[tuple[str, str, str]] = []
    for name in version.required:
        if inputs.get(name) is None:
            errors.append(("input", "required", f"{name} is required"))
    for name, value in inputs.items():
        spec = version.properties.get(name)
        if spec is not None:
            errors.extend(_check_value(name, value, spec))
    return errors


def _openapi(version: FakeVersion, enum_style: str) -> dict[str, Any]:
    """The version's ``openapi_schema``: Cog's layout, with enums inline or as ``allOf``/``$ref`` (real Cog)."""
    schemas: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    for order, (name, spec) in enumerate(version.properties.items()):
        prop = {"title": name.replace("_", " ").title(), "x-order": order, **spec}
        if enum_style == "ref" and "enum" in spec:
            ref_name = name
            schemas[ref_name] = {
                "title": ref_name, "description": "An enumeration.", "type": spec.get("type", "string"),
                "enum": spec["enum"],
            }  # fmt: skip
            prop = {key: value for key, value in prop.items() if key not in ("enum", "type")} | {
                "allOf": [{"$ref": f"#/components/schemas/{ref_name}"}]
            }
        properties[name] = prop
    input_schema: dict[str, Any] = {"type": "object", "title": "Input", "properties": properties}
    if version.required:
        input_schema["required"] = list(version.required)
    schemas["Input"] = input_schema
    schemas["Output"] = version.output_schema
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {},
        "components": {"schemas": schemas},
    }


def _output_schema(kind: str) -> dict[str, Any]:
    uri = {"type": "string", "format": "uri"}
    if kind == "images":
        return {"type": "array", "items": uri, "title": "Output"}
    if kind in ("image", "video", "audio"):
        return {**uri, "title": "Output"}
    if kind == "text":
        return {"type": "string", "title": "Output"}
    if kind == "text-stream":
        return {
            "type": "array", "items": {"type": "string"}, "title": "Output",
            "x-cog-array-type": "iterator", "x-cog-array-display": "concatenate",
        }  # fmt: skip
    return {
        "type": "object",
        "title": "ModelOutput",
        "required": ["detected_language", "transcription"],
        "properties": {
            "segments": {"title": "Segments"},
            "srt_file": {"type": "string", "title": "Srt File", "format": "uri"},
            "txt_file": {"type": "string", "title": "Txt File", "format": "uri"},
            "translation": {"type": "string", "title": "Translation"},
            "transcription": {"type": "string", "title": "Transcription"},
            "detected_language": {"type": "string", "title": "Detected Language"},
        },
    }


def _generic_properties(kind: str) -> dict[str, dict[str, Any]]:
    if kind in ("image", "images"):
        props = {
            "prompt": _prop("string", "Input prompt", required=True),
            "negative_prompt": _prop("string", "Things not to see in the output", ""),
            "image": _uri("Input image for img2img or inpaint mode"),
            "mask": _uri("Input mask for inpaint mode. White areas are inpainted."),
            "width": _prop("integer", "Width of output image", 1024, minimum=64, maximum=2048),
            "height": _prop("integer", "Height of output image", 1024, minimum=64, maximum=2048),
            "num_outputs": _prop("integer", "Number of images to output.", 1, minimum=1, maximum=4),
            "prompt_strength": _prop("number", "Prompt strength for img2img", 0.8, minimum=0, maximum=1),
            "seed": _prop("integer", "Random seed. Leave blank to randomize the seed"),
            "output_format": _prop("string", "Format of the output images", "png", enum=["png", "jpg", "webp"]),
        }
        if kind == "image":
            del props["num_outputs"]
        return props
    if kind == "video":
        return {
            "prompt": _prop("string", "Input prompt", required=True),
            "input_image": _uri("Optional first frame"),
            "num_frames": _prop("integer", "Number of frames", 16, minimum=2, maximum=64),
            "fps": _prop("integer", "Frames per second", 8, minimum=1, maximum=30),
            "seed": _prop("integer", "Random seed"),
        }
    if kind == "audio":
        return {
            "text": _prop("string", "Text to speak", required=True),
            "voice": _prop("string", "Voice", "af_bella", enum=["af_bella", "af_sarah", "am_adam", "bf_emma"]),
            "speed": _prop("number", "Speech speed", 1.0, minimum=0.1, maximum=5),
        }
    if kind in ("text", "text-stream"):
        return {
            "prompt": _prop("string", "Prompt", required=True),
            "system_prompt": _prop("string", "System prompt", "You are a helpful assistant."),
            "max_tokens": _prop("integer", "Maximum number of tokens to generate", 512, minimum=1, maximum=8192),
            "temperature": _prop("number", "Sampling temperature", 0.7, minimum=0, maximum=5),
            "top_p": _prop("number", "Nucleus sampling", 0.9, minimum=0, maximum=1),
            "seed": _prop("integer", "Random seed"),
        }
    return {
        "audio": _uri("Audio file", required=True),
        "language": _prop("string", "Language spoken in the audio, or auto", "auto"),
        "temperature": _prop("number", "Temperature to use for sampling", 0, minimum=0, maximum=1),
    }


# ------------------------------------------------------------------------------------------------
# Deterministic media
# ------------------------------------------------------------------------------------------------
_WORDS = (
    "river", "garden", "signal", "window", "mountain", "library", "quiet", "bright", "ancient", "golden",
    "machine", "story", "carries", "reveals", "follows", "across", "beyond", "within", "gentle", "vivid",
)  # fmt: skip


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _pattern(width: int, height: int, seed: int, prompt: str, frame: int = 0) -> Image.Image:
    rng = random.Random(f"{seed}:{prompt}")
    img = Image.new("RGB", (width, height), _colour(rng))
    draw = ImageDraw.Draw(img)
    for i in range(4):
        x0, x1 = sorted(rng.randrange(width) for _ in range(2))
        y0, y1 = sorted(rng.randrange(height) for _ in range(2))
        dx = (frame * (i + 1) * max(1, width // 32)) % max(1, width)
        box = (x0 + dx, y0, max(x0 + dx, x1 + dx), max(y0, y1))
        (draw.ellipse if i % 2 else draw.rectangle)(box, fill=_colour(rng))
    return img


def _encode_image(img: Image.Image, fmt: str, quality: int | None) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        img.convert("RGB").save(buf, "JPEG", quality=int(quality or 80))
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=int(quality or 80))
    else:
        img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _cut_background(img: Image.Image, tolerance: int = 40) -> Image.Image:
    rgb = img.convert("RGB")
    corner = rgb.getpixel((0, 0))
    diff = ImageChops.difference(rgb, Image.new("RGB", rgb.size, corner)).convert("L")
    alpha = diff.point(lambda v: 255 if v > tolerance else 0)
    out = rgb.convert("RGBA")
    out.putalpha(alpha)
    return out


def _gif(frames: list[Image.Image], fps: int) -> bytes:
    buf = io.BytesIO()
    palette = [f.convert("P", palette=Image.Palette.ADAPTIVE, colors=32) for f in frames]
    palette[0].save(buf, "GIF", save_all=True, append_images=palette[1:], duration=max(20, 1000 // max(1, fps)), loop=0)
    return buf.getvalue()


def _wav(duration: float, seed: int, sample_rate: int = 16000) -> bytes:
    rng = random.Random(seed)
    freqs = [rng.choice((220.0, 262.0, 330.0, 392.0, 440.0)) for _ in range(max(1, int(duration * 4)))]
    samples = array("h")
    total = int(duration * sample_rate)
    per = max(1, total // len(freqs))
    for i in range(total):
        f = freqs[min(i // per, len(freqs) - 1)]
        samples.append(int(8000 * math.sin(2 * math.pi * f * i / sample_rate)))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def _wav_seconds(data: bytes) -> float | None:
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            return w.getnframes() / float(w.getframerate())
    except (wave.Error, EOFError, ZeroDivisionError):
        return None


def _reply_tokens(prompt: str, seed: int, count: int) -> list[str]:
    rng = random.Random(f"{seed}:{prompt}")
    topic = re.findall(r"[A-Za-z0-9']+", prompt)[:5]
    words = ["Here", "is", "a", "reply", "about", *topic, ":"]
    while len(words) < count:
        words.append(rng.choice(_WORDS))
    words = words[:count]
    tokens = [words[0]] + [w if w == ":" else " " + w for w in words[1:]]
    tokens[-1] += "."
    return tokens


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _transcript(duration: float, seed: int, language: str, style: str, translate: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    segments: list[dict[str, Any]] = []
    start = 0.0
    while start < duration - 1e-9:
        end = min(duration, start + 3.0)
        text = " " + " ".join(rng.choice(_WORDS) for _ in range(4)).capitalize() + "."
        segments.append({
            "id": len(segments), "seek": int(start * 100), "start": round(start, 3), "end": round(end, 3),
            "text": text, "tokens": [], "temperature": 0.0, "avg_logprob": -0.25,
            "compression_ratio": 1.2, "no_speech_prob": 0.01,
        })  # fmt: skip
        start = end
    plain = "".join(s["text"] for s in segments).strip()
    if style == "srt":
        text = "\n".join(
            f"{i + 1}\n{_timestamp(s['start'], ',')} --> {_timestamp(s['end'], ',')}\n{s['text'].strip()}\n"
            for i, s in enumerate(segments)
        )
    elif style == "vtt":
        text = "WEBVTT\n\n" + "\n".join(
            f"{_timestamp(s['start'], '.')} --> {_timestamp(s['end'], '.')}\n{s['text'].strip()}\n" for s in segments
        )
    else:
        text = plain
    return {
        "segments": segments,
        "transcription": text,
        "translation": plain if translate else None,
        "txt_file": None,
        "srt_file": None,
        "detected_language": "english" if language in ("auto", "", None, "en") else language,
    }


def _aspect_size(aspect: str, megapixels: Any) -> tuple[int, int]:
    try:
        a, b = (float(x) for x in aspect.split(":"))
        ratio = a / b
    except ValueError:
        ratio = 1.0
    try:
        mp = float(megapixels) if megapixels is not None else 1.0
    except ValueError:
        mp = 1.0
    area = mp * 1024 * 1024
    width = math.sqrt(area * ratio)
    height = width / ratio
    return max(16, round(width / 16) * 16), max(16, round(height / 16) * 16)


# ------------------------------------------------------------------------------------------------
# Transports that send replicate.delivery / api.replicate.com to the fake
# ------------------------------------------------------------------------------------------------
class RewritingTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Sends ``https://replicate.delivery/…`` to the fake's ``/files/…`` and ``api.replicate.com`` to the fake.

    It implements both the sync and the async interface: ``replicate.Client(transport=…)`` hands the
    same transport object to its sync *and* its async httpx client.
    """

    def __init__(self, server: FakeReplicate) -> None:
        self._server = server
        self._sync = httpx.HTTPTransport()
        self._async = httpx.AsyncHTTPTransport()

    def _rewrite(self, request: httpx.Request) -> None:
        host = request.url.host
        if host == DELIVERY_HOST:
            request.url = httpx.URL(self._server.files_url_for(str(request.url)))
        elif host in API_HOSTS:
            request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self._server.port)
        else:
            return
        request.headers["Host"] = request.url.netloc.decode("ascii")

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._rewrite(request)
        return self._sync.handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._rewrite(request)
        return await self._async.handle_async_request(request)

    def close(self) -> None:
        self._sync.close()

    async def aclose(self) -> None:
        await self._async.aclose()


# ------------------------------------------------------------------------------------------------
# HTTP plumbing
# ------------------------------------------------------------------------------------------------
class _Request(Request):
    max_form_memory_size = None


class _Handler(KeepAliveHandler):
    def run_wsgi(self) -> None:
        try:
            super().run_wsgi()
        except _Drop as drop:
            self.close_connection = True
            if drop.reset:
                with contextlib.suppress(OSError):
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return

    def log(self, type: str, message: str, *args: Any) -> None:
        return


_Route = tuple[str, re.Pattern[str], str, bool]  # method, path regex, handler name, needs auth
_SEG = r"(?P<{}>[^/]+)"


def _route(method: str, pattern: str, handler: str, *, auth: bool = True) -> _Route:
    regex = re.sub(r"\{(\w+)\}", lambda m: _SEG.format(m.group(1)), pattern)
    return method, re.compile(f"^{regex}$"), handler, auth


_ROUTES: list[_Route] = [
    _route("GET", "/v1/account", "_get_account"),
    _route("GET", "/v1/hardware", "_list_hardware"),
    _route("GET", "/v1/models", "_list_models"),
    _route("GET", "/v1/models/{owner}/{name}", "_get_model"),
    _route("GET", "/v1/models/{owner}/{name}/versions", "_list_versions"),
    _route("GET", "/v1/models/{owner}/{name}/versions/{version}", "_get_version"),
    _route("POST", "/v1/models/{owner}/{name}/predictions", "_create_model_prediction"),
    _route("POST", "/v1/predictions", "_create_version_prediction"),
    _route("GET", "/v1/predictions", "_list_predictions"),
    _route("GET", "/v1/predictions/{pid}", "_get_prediction"),
    _route("POST", "/v1/predictions/{pid}/cancel", "_cancel_prediction"),
    _route("GET", "/v1/deployments/{owner}/{name}", "_get_deployment"),
    _route("POST", "/v1/deployments/{owner}/{name}/predictions", "_create_deployment_prediction"),
    _route("POST", "/v1/files", "_create_file"),
    _route("GET", "/v1/files", "_list_files"),
    _route("GET", "/v1/files/{fid}", "_get_file"),
    _route("DELETE", "/v1/files/{fid}", "_delete_file"),
    _route("GET", "/v1/webhooks/default/secret", "_get_webhook_secret"),
    _route("GET", "/stream/{pid}", "_stream_prediction", auth=False),
    (("GET", re.compile(r"^/files/(?P<key>.+)$"), "_get_output_file", False)),
]


def _json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload), status=status, headers=headers or {}, content_type="application/json")


# ------------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------------
class FakeReplicate:
    """A threaded fake of ``api.replicate.com`` on 127.0.0.1. See the module docstring and the README.

    ``listing_lag`` (seconds, also settable as ``server.listing_lag``): ``GET /v1/predictions`` lists a
    prediction only that long after its creation, as a search index that lags behind would.
    """

    def __init__(
        self,
        *,
        token: str = "r8_test",
        prediction_seconds: float = 0.05,
        start_seconds: float = 0.0,
        output_mode: str = "data-uri",
        enum_style: str = "inline",
        seed: int = 0,
        webhook_secret: str | None = None,
        webhook_throttle: float = 0.5,
        webhook_attempts: int = 3,
        webhook_timeout: float = 5.0,
        max_side: int = 2048,
        catalogue: bool = False,
        host: str = "127.0.0.1",
        tick: float = 0.002,
        listing_lag: float = 0.0,
    ) -> None:
        if output_mode not in ("data-uri", "url"):
            raise ValueError("output_mode must be 'data-uri' or 'url'")
        if enum_style not in ("inline", "ref"):
            raise ValueError("enum_style must be 'inline' or 'ref'")
        self.tokens: set[str] = {token}
        self.token = token
        self.prediction_seconds = prediction_seconds
        self.start_seconds = start_seconds
        self.output_mode = output_mode
        self.enum_style = enum_style
        self.seed = seed
        self.webhook_secret = webhook_secret or "whsec_" + base64.b64encode(_digest("whsec", seed)).decode()
        self.sign_with: str | None = None
        self.timestamp_offset: float = 0.0
        self.webhook_throttle = webhook_throttle
        self.webhook_attempts = max(1, webhook_attempts)
        self.webhook_timeout = webhook_timeout
        self.max_side = max_side
        self.host = host
        self.tick = tick
        # GET /v1/predictions shows a prediction only this many seconds after its creation (an index that lags)
        self.listing_lag = listing_lag
        self.faults = Faults()
        self.errors: list[str] = []  # tracebacks of unexpected exceptions inside the fake: should stay empty

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._models: dict[str, FakeModel] = {}
        self._deployments: dict[str, _Deployment] = {}
        self._predictions: list[FakePrediction] = []
        self._by_id: dict[str, FakePrediction] = {}
        self._active: list[FakePrediction] = []
        self._requests: list[RequestRecord] = []
        self._deliveries: list[Delivery] = []
        self._uploads: dict[str, dict[str, Any]] = {}
        self._upload_bytes: dict[str, bytes] = {}
        self._outputs: dict[str, tuple[bytes, str]] = {}
        self._expired: set[str] = set()
        self._counter = 0  # predictions
        self._file_counter = 0
        self._webhook_counter = 0
        self._webhook_queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._webhook_unsent = 0  # enqueued and not yet attempted to the end (queued, taken or being sent)
        self._inflight = 0
        self._server: BaseWSGIServer | None = None
        self._threads: list[threading.Thread] = []
        self.port = 0
        if catalogue:
            default_catalogue(self)

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("FakeReplicate is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeReplicate:
        if self._server is not None:
            raise RuntimeError("already started")
        if self._stopping.is_set():
            raise RuntimeError("a stopped FakeReplicate cannot be restarted; make a new one")
        self._server = make_server(self.host, 0, self._wsgi, threaded=True, request_handler=_Handler)
        self.port = self._server.server_port
        for target, name in (
            (functools.partial(self._server.serve_forever, poll_interval=0.02), "fake-replicate-http"),
            (self._ticker, "fake-replicate-ticker"),
            (self._webhook_sender, "fake-replicate-webhooks"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
            for p in self._active:
                p.wake.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            close_connections(self._server)
        deadline = time.monotonic() + 5.0
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline:  # let handler threads holding requests finish
            with self._lock:
                if self._inflight == 0:
                    break
            time.sleep(0.01)

    def __enter__(self) -> FakeReplicate:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- conveniences for tests -------------------------------------------------------------------
    def client(self, *, poll_interval: float = 0.01, **kwargs: Any) -> Any:
        """A real ``replicate.Client`` pointed at this fake (``poll_interval`` shortened for tests)."""
        import replicate

        kwargs.setdefault("api_token", self.token)
        kwargs.setdefault("base_url", self.base_url)
        client = replicate.Client(**kwargs)
        client.poll_interval = poll_interval
        return client

    def transport(self) -> RewritingTransport:
        """A transport (sync and async) sending replicate.delivery and api.replicate.com here."""
        return RewritingTransport(self)

    def files_url_for(self, url_or_key: str) -> str:
        """The local address of a ``https://replicate.delivery/…`` output URL (or of a bare key)."""
        parts = urlsplit(url_or_key)
        key = parts.path if parts.scheme else "/" + url_or_key.lstrip("/")
        return f"{self.base_url}/files{key}"

    # -- registry ---------------------------------------------------------------------------------
    def add_model(
        self,
        name: str,
        *,
        input_schema: dict[str, Any] | None = None,
        output: str = "image",
        predict_time: float | Callable[[dict[str, Any]], float] | None = None,
        start_seconds: float | None = None,
        version: str | None = None,
        official: bool = True,
        output_schema: dict[str, Any] | None = None,
        file_format: str = "png",
        transform: str | None = None,
        description: str | None = None,
        reply_tokens: int = 24,
        cog_version: str = "0.9.4",
    ) -> FakeModel:
        """Register a model (or a new latest version of it). See the README for every option."""
        if output not in OUTPUT_KINDS:
            raise ValueError(f"output must be one of {sorted(OUTPUT_KINDS)}")
        if "/" not in name:
            raise ValueError("model names are 'owner/name'")
        schema = json.loads(json.dumps(input_schema)) if input_schema is not None else _generic_properties(output)
        if "properties" in schema and isinstance(schema["properties"], dict):
            properties = dict(schema["properties"])
            required = list(schema.get("required", []))
        else:
            properties, required = dict(schema), []
        for prop_name, spec in properties.items():
            if spec.pop("required", False) is True and prop_name not in required:
                required.append(prop_name)
        vid = version or _digest("version", name, json.dumps(properties, sort_keys=True), output).hex()
        fake_version = FakeVersion(
            id=vid, properties=properties, required=required,
            output_schema=output_schema or _output_schema(output), created_wall=time.time(), cog_version=cog_version,
        )  # fmt: skip
        with self._lock:
            model = self._models.get(name)
            if model is None:
                model = FakeModel(
                    name=name, output=output, official=official, versions={}, latest=vid, predict_time=predict_time,
                    start_seconds=start_seconds, file_format=file_format, transform=transform,
                    description=description or f"Fake {output} model {name}", reply_tokens=reply_tokens,
                )  # fmt: skip
                self._models[name] = model
            else:
                model.output, model.official, model.predict_time = output, official, predict_time
                model.start_seconds, model.file_format, model.transform = start_seconds, file_format, transform
                model.reply_tokens = reply_tokens
                if description:
                    model.description = description
            model.versions[vid] = fake_version
            model.latest = vid
        return model

    def model(self, name: str) -> FakeModel:
        with self._lock:
            return self._models[name]

    @property
    def models(self) -> dict[str, FakeModel]:
        with self._lock:
            return dict(self._models)

    def set_predict_time(self, name: str, seconds: float | Callable[[dict[str, Any]], float] | None) -> None:
        with self._lock:
            self._models[name].predict_time = seconds

    def fail_model(self, name: str, error: str = "Prediction failed", *, logs: str | None = None,
                   times: int | None = None) -> None:  # fmt: skip
        """Make the next ``times`` predictions of ``name`` (all when None) end ``failed`` with ``error``."""
        with self._lock:
            self._models[name].failure = _Failure(error=error, logs=logs, remaining=times)

    def heal_model(self, name: str) -> None:
        with self._lock:
            self._models[name].failure = None

    def add_deployment(self, name: str, *, model: str, version: str | None = None, hardware: str = "gpu-t4") -> None:
        with self._lock:
            target = self._models[model]
            vid = version or target.latest
            if vid not in target.versions:
                raise KeyError(f"{model} has no version {vid}")
            self._deployments[name] = _Deployment(name, model, vid, hardware, time.time())

    # -- observation ------------------------------------------------------------------------------
    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted so far (clients reuse kept-alive ones, as with the real API)."""
        return 0 if self._server is None else accepted_connections(self._server)

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def count(self, method: str = "*", path: str = "*") -> int:
        """How many requests matched ``method`` and the glob ``path`` (``...`` works as ``*``)."""
        method = method.upper()
        pattern = path.replace("...", "*")
        with self._lock:
            return sum(
                1
                for r in self._requests
                if (method == "*" or r.method == method) and fnmatch.fnmatchcase(r.path, pattern)
            )

    @property
    def predictions(self) -> list[FakePrediction]:
        with self._lock:
            self._advance_all(time.monotonic())
            return list(self._predictions)

    def prediction(self, pid: str) -> FakePrediction:
        with self._lock:
            p = self._by_id[pid]
            self._advance(p, time.monotonic())
            return p

    def billed_seconds(self) -> float:
        """Sum of ``metrics.predict_time`` over finished predictions (what per-second billing would charge)."""
        return sum(p.predict_time or 0.0 for p in self.predictions)

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def wait_for_deliveries(self, count: int = 1, *, event: str | None = None, timeout: float = 5.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            found = [d for d in self.deliveries if event is None or event in d.event.split(",")]
            if len(found) >= count or time.monotonic() >= deadline:
                return found
            time.sleep(0.005)

    def wait_until_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every prediction has ended and every queued webhook was attempted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                self._advance_all(time.monotonic())
                idle = not self._active and self._webhook_unsent == 0
            if idle:
                return True
            time.sleep(0.005)
        return False

    def expire_outputs(self, prediction_id: str | None = None) -> None:
        """Simulate Replicate's data removal: output URLs answer 404, predictions show ``data_removed``."""
        with self._lock:
            for p in self._predictions:
                if prediction_id is not None and p.id != prediction_id:
                    continue
                self._advance(p, time.monotonic())
                if not p.terminal:
                    continue
                self._expired.update(k for k in self._outputs if k.split("/")[2] == p.id)
                p.data_removed, p.output, p.input = True, None, None

    # -- webhooks: replay ---------------------------------------------------------------------------
    def redeliver(self, webhook_id: str) -> Delivery:
        """Send the message ``webhook_id`` again (same id and body, fresh timestamp and signature). Synchronous."""
        with self._lock:
            earlier = [d for d in self._deliveries if d.webhook_id == webhook_id]
        if not earlier:
            raise KeyError(webhook_id)
        last = earlier[-1]
        item = {"webhook_id": webhook_id, "prediction_id": last.prediction_id, "event": last.event,
                "url": last.url, "body": last.body, "retry": False}  # fmt: skip
        with httpx.Client(timeout=self.webhook_timeout, trust_env=False) as http:
            return self._post_webhook(http, item, attempt=last.attempt + 1)

    # ==============================================================================================
    # WSGI entry point
    # ==============================================================================================
    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = _Request(environ)
        headers = {k.lower(): v for k, v in request.headers.items()}
        if "authorization" in headers:
            headers["authorization"] = "<redacted>"
        body_json: Any = None
        if request.mimetype == "application/json":
            with contextlib.suppress(ValueError):
                body_json = json.loads(request.get_data(cache=True) or b"null")
        with self._lock:
            rec = RequestRecord(
                index=len(self._requests), method=request.method, path=request.path,
                query=request.query_string.decode("latin-1"), headers=headers, json=body_json, started=time.monotonic(),
            )  # fmt: skip
            self._requests.append(rec)
            self._inflight += 1
        try:
            try:
                response = self._handle(request, rec)
            except ApiError as exc:
                response = exc.response()
            except _Drop:
                raise
            except Exception:
                self.errors.append(traceback.format_exc())
                response = ApiError(500, "The fake raised an unexpected exception (see server.errors)").response()
            rec.status = response.status_code
            rec.response_headers = dict(response.headers)
            return response(environ, start_response)
        except _Drop:
            rec.dropped, rec.status = True, None
            raise
        finally:
            rec.duration = time.monotonic() - rec.started
            with self._lock:
                self._inflight -= 1

    def _handle(self, request: Request, rec: RequestRecord) -> Response:
        fault = self.faults.pick(request.method, request.path)
        if fault is not None:
            rec.fault = fault.label
            if not fault.processed:
                self._fault_before(fault)  # answers (raises) or sleeps
        response = self._dispatch(request, rec)
        if fault is not None:
            response = self._fault_after(fault, response)
        return response

    def _sleep(self, seconds: float | None) -> None:
        if seconds:
            self._stopping.wait(seconds)

    def _fault_error(self, fault: Fault) -> ApiError:
        status = int(fault.kind)
        headers = {}
        detail = fault.detail
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
            if status == 429 and detail is None:
                detail = f"Request was throttled. Expected available in {fault.retry_after} second(s)."
        return ApiError(status, detail, headers=headers, body=fault.body)

    def _fault_before(self, fault: Fault) -> None:
        if isinstance(fault.kind, int):
            raise self._fault_error(fault)
        if fault.kind == "drop-before":
            raise _Drop(fault.reset)
        if fault.kind == "slow":
            self._sleep(fault.seconds)
        elif fault.kind == "timeout":
            self._sleep(fault.seconds)
            raise _Drop(fault.reset)

    def _fault_after(self, fault: Fault, response: Response) -> Response:
        if not fault.processed:
            return response
        if isinstance(fault.kind, int):
            raise self._fault_error(fault)
        if fault.kind == "drop-after":
            raise _Drop(fault.reset)
        if fault.kind == "slow":
            self._sleep(fault.seconds)
        if fault.kind == "timeout":
            self._sleep(fault.seconds)
            raise _Drop(fault.reset)
        if fault.kind == "malformed":
            data = response.get_data()
            cut = data[: max(1, len(data) // 2)] if data else b"{"
            response.set_data(cut)
        return response

    def _dispatch(self, request: Request, rec: RequestRecord) -> Response:
        path = request.path
        allowed = False
        for method, regex, handler, needs_auth in _ROUTES:
            match = regex.match(path)
            if not match:
                continue
            if method != request.method:
                allowed = True
                continue
            if needs_auth:
                self._check_auth(request)
            result: Response = getattr(self, handler)(request, rec, **match.groupdict())
            return result
        if allowed:
            raise ApiError(405, f"Method {request.method} not allowed on {path}")
        raise ApiError(404)

    def _check_auth(self, request: Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise ApiError(401, "You did not pass an authentication token")
        if scheme.lower() not in ("bearer", "token") or token.strip() not in self.tokens:
            raise ApiError(401)

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(request.get_data(cache=True) or b"{}")
        except ValueError as exc:
            raise ApiError(400, f"Request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object")
        return body

    # ==============================================================================================
    # Handlers: account, models, versions, deployments
    # ==============================================================================================
    def _get_account(self, request: Request, rec: RequestRecord) -> Response:
        return _json_response({"type": "organization", "username": "genroute-test", "name": "genroute test",
                               "github_url": None})  # fmt: skip

    def _list_hardware(self, request: Request, rec: RequestRecord) -> Response:
        return _json_response([
            {"sku": "cpu", "name": "CPU"},
            {"sku": "gpu-t4", "name": "Nvidia T4 GPU"},
            {"sku": "gpu-a40-large", "name": "Nvidia A40 (Large) GPU"},
            {"sku": "gpu-l40s", "name": "Nvidia L40S GPU"},
            {"sku": "gpu-a100-large", "name": "Nvidia A100 (80GB) GPU"},
            {"sku": "gpu-h100", "name": "Nvidia H100 GPU"},
        ])  # fmt: skip

    def _version_json(self, version: FakeVersion) -> dict[str, Any]:
        return {
            "id": version.id,
            "created_at": _iso(version.created_wall),
            "cog_version": version.cog_version,
            "openapi_schema": _openapi(version, self.enum_style),
        }

    def _model_json(self, model: FakeModel) -> dict[str, Any]:
        owner, name = model.name.split("/", 1)
        return {
            "url": f"https://replicate.com/{model.name}",
            "owner": owner,
            "name": name,
            "description": model.description,
            "visibility": "public",
            "github_url": None,
            "paper_url": None,
            "license_url": None,
            "run_count": model.run_count,
            "cover_image_url": None,
            "default_example": None,
            "latest_version": self._version_json(model.latest_version),
        }

    def _find_model(self, owner: str, name: str) -> FakeModel:
        model = self._models.get(f"{owner}/{name}")
        if model is None:
            raise ApiError(404)
        return model

    def _list_models(self, request: Request, rec: RequestRecord) -> Response:
        with self._lock:
            results = [self._model_json(m) for m in self._models.values()]
        return _json_response({"next": None, "previous": None, "results": results})

    def _get_model(self, request: Request, rec: RequestRecord, owner: str, name: str) -> Response:
        with self._lock:
            return _json_response(self._model_json(self._find_model(owner, name)))

    def _list_versions(self, request: Request, rec: RequestRecord, owner: str, name: str) -> Response:
        with self._lock:
            model = self._find_model(owner, name)
            if model.official:  # official models have no public version list
                raise ApiError(404)
            results = [self._version_json(v) for v in reversed(model.versions.values())]
        return _json_response({"next": None, "previous": None, "results": results})

    def _get_version(self, request: Request, rec: RequestRecord, owner: str, name: str, version: str) -> Response:
        with self._lock:
            found = self._find_model(owner, name).versions.get(version)
            if found is None:
                raise ApiError(404)
            return _json_response(self._version_json(found))

    def _get_deployment(self, request: Request, rec: RequestRecord, owner: str, name: str) -> Response:
        with self._lock:
            dep = self._deployments.get(f"{owner}/{name}")
            if dep is None:
                raise ApiError(404)
            return _json_response({
                "owner": owner,
                "name": name,
                "current_release": {
                    "number": 1, "model": dep.model, "version": dep.version, "created_at": _iso(dep.created_wall),
                    "created_by": {"type": "organization", "username": owner, "name": owner, "github_url": None},
                    "configuration": {"hardware": dep.hardware, "min_instances": 0, "max_instances": 1},
                },
            })  # fmt: skip

    # ==============================================================================================
    # Handlers: predictions
    # ==============================================================================================
    def _create_model_prediction(self, request: Request, rec: RequestRecord, owner: str, name: str) -> Response:
        with self._lock:
            model = self._find_model(owner, name)
            if not model.official:  # community models must be run by version
                raise ApiError(404)
            version = model.latest_version
        return self._create(request, rec, model, version, shown_version=model.dp_version, source="model")

    def _create_version_prediction(self, request: Request, rec: RequestRecord) -> Response:
        body = self._body(request)
        ref = body.get("version")
        if not isinstance(ref, str) or not ref:
            raise ApiError(422, "- version: version is required", title="Input validation failed")
        vid = ref.rsplit(":", 1)[-1]
        with self._lock:
            for model in self._models.values():
                if vid in model.versions and (":" not in ref or ref.split(":", 1)[0] == model.name):
                    version = model.versions[vid]
                    break
            else:
                raise ApiError(
                    422,
                    "The specified version does not exist (or perhaps you don't have permission to use it?)",
                    title="Invalid version or not permitted",
                )
        return self._create(request, rec, model, version, shown_version=version.id, source="version")

    def _create_deployment_prediction(self, request: Request, rec: RequestRecord, owner: str, name: str) -> Response:
        with self._lock:
            dep = self._deployments.get(f"{owner}/{name}")
            if dep is None:
                raise ApiError(404)
            model = self._models[dep.model]
            version = model.versions[dep.version]
        return self._create(request, rec, model, version, shown_version=version.id, source="deployment",
                            deployment=dep.name)  # fmt: skip

    def _create(
        self,
        request: Request,
        rec: RequestRecord,
        model: FakeModel,
        version: FakeVersion,
        *,
        shown_version: str,
        source: str,
        deployment: str | None = None,
    ) -> Response:
        body = self._body(request)
        raw_input = body.get("input")
        errors = validate_input(version, raw_input)
        webhook = body.get("webhook")
        if webhook is not None and not (isinstance(webhook, str) and re.match(r"^https?://", webhook)):
            errors.append(("webhook", "format", "Does not match format 'uri'"))
        webhook_completed = body.get("webhook_completed")
        if webhook_completed is not None and not (
            isinstance(webhook_completed, str) and re.match(r"^https?://", webhook_completed)
        ):
            errors.append(("webhook_completed", "format", "Does not match format 'uri'"))
        events = body.get("webhook_events_filter")
        if events is not None:
            if not isinstance(events, list):
                errors.append(("webhook_events_filter", "invalid_type", "Invalid type. Expected: array"))
            else:
                for i, event in enumerate(events):
                    if event not in WEBHOOK_EVENTS:
                        field_name = f"webhook_events_filter.{i}"
                        allowed = _fmt_enum(list(WEBHOOK_EVENTS))
                        errors.append((field_name, "enum", f"{field_name} must be one of the following: {allowed}"))
        if errors:
            raise ApiError(
                422,
                "".join(f"- {f}: {d}\n" for f, _, d in errors),
                title="Input validation failed",
                extra={"invalid_fields": [{"type": t, "field": f, "description": d} for f, t, d in errors]},
            )
        assert isinstance(raw_input, dict)
        params = {k: spec["default"] for k, spec in version.properties.items() if "default" in spec}
        params.update({k: v for k, v in raw_input.items() if v is not None and k in version.properties})
        ignored = sorted(k for k in raw_input if k not in version.properties)
        now_wall, now_mono = time.time(), time.monotonic()
        with self._lock:
            self._counter += 1
            seq = self._counter
            pid = _b32("prediction", self.seed, seq)
            failure = model.failure
            fail: _Failure | None = None
            if failure is not None and (failure.remaining is None or failure.remaining > 0):
                fail = failure
                if failure.remaining is not None:
                    failure.remaining -= 1
            planned = model.predict_time if model.predict_time is not None else self.prediction_seconds
            start_delay = model.start_seconds if model.start_seconds is not None else self.start_seconds
        seed = params.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            seed = _seed_from("seed", self.seed, seq)
        seconds = float(planned(params) if callable(planned) else planned)
        plan = self._plan(pid, model, params, seed)
        if fail is not None:
            plan.error = fail.error
            plan.error_logs = (
                fail.logs
                if fail.logs is not None
                else (
                    f'Traceback (most recent call last):\n  File "predict.py", line 42, in predict\n'
                    f"RuntimeError: {fail.error}\n"
                )
            )
        p = FakePrediction(
            id=pid, seq=seq, model=model.name, version=shown_version, version_id=version.id,
            input=json.loads(json.dumps(raw_input)), source=source, deployment=deployment, request_index=rec.index,
            created_wall=now_wall, created_mono=now_mono, start_delay=max(0.0, start_delay),
            planned_seconds=max(0.0, seconds), webhook=webhook, webhook_completed=webhook_completed,
            webhook_events_filter=frozenset(events) if events is not None else DEFAULT_EVENTS_FILTER,
            stream=model.output == "text-stream", plan=plan, ignored_inputs=ignored,
        )  # fmt: skip
        with self._cond:
            self._predictions.append(p)
            self._by_id[pid] = p
            self._active.append(p)
            model.run_count += 1
            rec.prediction_ids.append(pid)
            if p.webhook and "start" in p.webhook_events_filter:
                self._enqueue_webhook(p, "start", p.webhook)
            snapshot = self._prediction_json(p)  # a new prediction is always "starting"
            self._cond.notify_all()
        headers: dict[str, str] = {}
        wait = _parse_prefer(request.headers.get("Prefer"))
        if wait is not None:
            headers["Preference-Applied"] = "wait"
            deadline = now_mono + wait
            planned_end = p.created_mono + p.start_delay + p.planned_seconds
            while True:
                with self._lock:
                    now = time.monotonic()
                    self._advance(p, now)
                    if p.terminal or now >= deadline or self._stopping.is_set():
                        snapshot = self._prediction_json(p)
                        break
                # Sleep until the prediction is due to end (its timeline is known), or until it is canceled
                # or the fake stops: being woken at every tick costs the fake most of its CPU at high
                # concurrency, which the client under test would then be charged for.
                p.wake.wait(min(deadline, max(planned_end, now + 0.001)) - now)
            if not p.terminal:
                # Replicate answers a blocking create that ran out of time with status "starting", whatever
                # the real state; replicate.run() relies on it (any other status counts as finished).
                snapshot.update(status="starting", output=None, completed_at=None)
        return _json_response(snapshot, 201, headers)

    def _get_prediction(self, request: Request, rec: RequestRecord, pid: str) -> Response:
        with self._lock:
            p = self._by_id.get(pid)
            if p is None:
                raise ApiError(404)
            self._advance(p, time.monotonic())
            return _json_response(self._prediction_json(p))

    def _list_predictions(self, request: Request, rec: RequestRecord) -> Response:
        page_size = 100
        cursor = parse_qs(request.query_string.decode()).get("cursor", ["0"])[0]
        offset = int(cursor) if cursor.isdigit() else 0
        with self._lock:
            now = time.monotonic()
            self._advance_all(now)
            newest_first = [p for p in reversed(self._predictions) if now - p.created_mono >= self.listing_lag]
            page = newest_first[offset : offset + page_size]
            results = [self._prediction_json(p) for p in page]
            more = offset + page_size < len(newest_first)
        nxt = f"{self.base_url}/v1/predictions?cursor={offset + page_size}" if more else None
        prev = f"{self.base_url}/v1/predictions?cursor={max(0, offset - page_size)}" if offset else None
        return _json_response({"next": nxt, "previous": prev, "results": results})

    def _cancel_prediction(self, request: Request, rec: RequestRecord, pid: str) -> Response:
        with self._cond:
            p = self._by_id.get(pid)
            if p is None:
                raise ApiError(404)
            now = time.monotonic()
            self._advance(p, now)
            if not p.terminal:
                p.status, p.canceled = "canceled", True
                p.completed_wall = time.time()
                ran = 0.0 if p.started_mono is None else min(p.planned_seconds, now - p.started_mono)
                p.predict_time = round(ran, 6)
                # As Replicate does: a canceled prediction reports what it did so far (predict_time is added
                # from p.predict_time); a language model also the tokens it read and the ones it emitted.
                p.metrics = {}
                if p.plan.tokens is None:
                    p.output = None
                else:
                    if "input_token_count" in p.plan.metrics:
                        p.metrics["input_token_count"] = p.plan.metrics["input_token_count"]
                    p.metrics["output_token_count"] = len(p.output or [])
                self._finish(p, now)
            self._cond.notify_all()
            return _json_response(self._prediction_json(p))

    def _stream_prediction(self, request: Request, rec: RequestRecord, pid: str) -> Response:
        with self._lock:
            p = self._by_id.get(pid)
            if p is None or not p.stream:
                raise ApiError(404)

        def events() -> Iterator[bytes]:
            sent, event_id = 0, 0
            while True:
                with self._cond:
                    self._advance(p, time.monotonic())
                    tokens = list(p.output or []) if p.plan.tokens is not None else []
                    status, error = p.status, p.error
                    if sent >= len(tokens) and status not in TERMINAL and not self._stopping.is_set():
                        self._cond.wait(0.05)
                        continue
                for token in tokens[sent:]:
                    data = "".join(f"data: {line}\n" for line in str(token).split("\n"))
                    yield f"event: output\nid: {p.seq}:{event_id}\n{data}\n".encode()
                    event_id += 1
                sent = len(tokens)
                if status in TERMINAL or self._stopping.is_set():
                    break
            if status == "failed":
                yield f"event: error\nid: {p.seq}:{event_id}\ndata: {json.dumps({'detail': error})}\n\n".encode()
                event_id += 1
            done = {"reason": "canceled"} if status == "canceled" else {}
            yield f"event: done\nid: {p.seq}:{event_id}\ndata: {json.dumps(done)}\n\n".encode()

        return Response(events(), status=200, content_type="text/event-stream",
                        headers={"Cache-Control": "no-store"}, direct_passthrough=True)  # fmt: skip

    # ==============================================================================================
    # Handlers: files, webhooks secret, output files
    # ==============================================================================================
    def _file_json(self, fid: str) -> dict[str, Any]:
        meta = self._uploads[fid]
        return {**meta, "urls": {"get": f"{self.base_url}/v1/files/{fid}"}}

    def _create_file(self, request: Request, rec: RequestRecord) -> Response:
        upload = request.files.get("content")
        if upload is None:
            raise ApiError(422, "- content: content is required", title="Input validation failed")
        data = upload.read()
        try:
            metadata = json.loads(request.form.get("metadata") or "{}")
        except ValueError:
            raise ApiError(422, "- metadata: must be a JSON object", title="Input validation failed") from None
        created = time.time()
        with self._lock:
            self._file_counter += 1
            fid = _b32("file", self.seed, self._file_counter, length=22)
            self._upload_bytes[fid] = data
            self._uploads[fid] = {
                "id": fid,
                "name": upload.filename or "file",
                "content_type": upload.mimetype or "application/octet-stream",
                "size": len(data),
                "etag": hashlib.md5(data).hexdigest(),
                "checksums": {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()},
                "metadata": metadata if isinstance(metadata, dict) else {},
                "created_at": _iso(created),
                "expires_at": _iso(created + 86400),
            }
            return _json_response(self._file_json(fid), 201)

    def _list_files(self, request: Request, rec: RequestRecord) -> Response:
        with self._lock:
            results = [self._file_json(fid) for fid in reversed(list(self._uploads))]
        return _json_response({"next": None, "previous": None, "results": results})

    def _get_file(self, request: Request, rec: RequestRecord, fid: str) -> Response:
        with self._lock:
            if fid not in self._uploads:
                raise ApiError(404)
            return _json_response(self._file_json(fid))

    def _delete_file(self, request: Request, rec: RequestRecord, fid: str) -> Response:
        with self._lock:
            if self._uploads.pop(fid, None) is None:
                raise ApiError(404)
            self._upload_bytes.pop(fid, None)
        return Response(status=204)

    def _get_webhook_secret(self, request: Request, rec: RequestRecord) -> Response:
        return _json_response({"key": self.webhook_secret})

    def _get_output_file(self, request: Request, rec: RequestRecord, key: str) -> Response:
        key = "/" + key
        with self._lock:
            found = self._outputs.get(key)
            if found is None or key in self._expired:
                raise ApiError(404)
        data, mime = found
        return Response(data, status=200, content_type=mime)

    # ==============================================================================================
    # Prediction clock
    # ==============================================================================================
    def _advance(self, p: FakePrediction, now: float) -> None:
        """Move ``p`` along its timeline up to ``now`` (caller holds the lock)."""
        if p.terminal:
            return
        events: set[str] = set()
        if p.status == "starting":
            if now - p.created_mono < p.start_delay:
                return
            p.status = "processing"
            p.started_mono = p.created_mono + p.start_delay
            p.started_wall = p.created_wall + p.start_delay
        assert p.started_mono is not None and p.started_wall is not None
        elapsed = now - p.started_mono
        frac = 1.0 if p.planned_seconds <= 0 else min(1.0, elapsed / p.planned_seconds)
        while p.log_cursor < len(p.plan.logs) and p.plan.logs[p.log_cursor][0] <= frac:
            p.logs += p.plan.logs[p.log_cursor][1] + "\n"
            p.log_cursor += 1
            events.add("logs")
        tokens = p.plan.tokens
        if tokens is not None and p.plan.error is None:
            shown = len(tokens) if frac >= 1.0 else int(frac * len(tokens))
            if shown > len(p.output or []):
                p.output = tokens[:shown]
                events.add("output")
        if elapsed >= p.planned_seconds:
            p.completed_wall = p.started_wall + p.planned_seconds
            p.predict_time = p.planned_seconds
            if p.plan.error is not None:
                p.status, p.error = "failed", p.plan.error
                p.logs += p.plan.error_logs
                events.add("logs")
            else:
                p.status = "succeeded"
                p.output = p.plan.output
                p.metrics = dict(p.plan.metrics)
                if p.plan.tokens is not None and p.planned_seconds > 0:
                    p.metrics["tokens_per_second"] = round(len(p.plan.tokens) / p.planned_seconds, 3)
                    p.metrics["time_to_first_token"] = round(p.planned_seconds / max(1, len(p.plan.tokens)), 6)
                events.add("output")
            self._finish(p, now)
            return
        self._note_events(p, events, now)

    def _finish(self, p: FakePrediction, now: float) -> None:
        with contextlib.suppress(ValueError):
            self._active.remove(p)
        p.wake.set()
        p.pending_events.clear()
        if p.webhook and "completed" in p.webhook_events_filter:
            self._enqueue_webhook(p, "completed", p.webhook)
        if p.webhook_completed:
            self._enqueue_webhook(p, "completed", p.webhook_completed)

    def _note_events(self, p: FakePrediction, events: set[str], now: float) -> None:
        if p.webhook:
            p.pending_events |= events & p.webhook_events_filter
            self._flush_intermediate(p, now)

    def _flush_intermediate(self, p: FakePrediction, now: float) -> None:
        """Queue the pending output/logs events as one webhook, at most one per throttle period *as sent*.

        The period counts from when the sender actually POSTed the previous one, and nothing is queued while
        one still waits in the queue: a receiver or a sender that fell behind gets the events merged later,
        never two webhooks closer together than the throttle (Replicate's "at most one every 500 ms").
        """
        if (
            p.pending_events
            and not p.terminal
            and not p.intermediate_queued
            and now - p.last_intermediate >= self.webhook_throttle
        ):
            assert p.webhook is not None
            self._enqueue_webhook(p, ",".join(sorted(p.pending_events)), p.webhook, intermediate=True)
            p.pending_events.clear()
            p.intermediate_queued = True

    def _advance_all(self, now: float) -> None:
        for p in list(self._active):
            self._advance(p, now)
            if not p.terminal:
                self._flush_intermediate(p, now)

    def _ticker(self) -> None:
        """Move along the predictions someone watches without asking: webhook receivers and streams.

        Others advance when a request looks at them (a poll, a blocking create, a listing, ``predictions``);
        their timelines are fixed at creation, so what those requests see is the same.
        """
        while not self._stopping.wait(self.tick):
            with self._cond:
                watched = [p for p in self._active if p.webhook or p.webhook_completed or p.stream]
                if watched:
                    now = time.monotonic()
                    for p in watched:
                        self._advance(p, now)
                        if not p.terminal:
                            self._flush_intermediate(p, now)
                    self._cond.notify_all()

    # ==============================================================================================
    # Webhooks: queue and sender
    # ==============================================================================================
    def _enqueue_webhook(self, p: FakePrediction, event: str, url: str, *, intermediate: bool = False) -> None:
        """Queue one webhook (caller holds the lock); it counts as unsent until its last attempt is recorded."""
        self._webhook_counter += 1
        webhook_id = "msg_" + _b32("webhook", self.seed, self._webhook_counter, length=27)
        body = json.dumps(self._prediction_json(p))
        self._webhook_unsent += 1
        self._webhook_queue.put({"webhook_id": webhook_id, "prediction_id": p.id, "event": event, "url": url,
                                 "body": body, "retry": event == "completed",
                                 "intermediate": intermediate})  # fmt: skip

    def _webhook_sender(self) -> None:
        with httpx.Client(timeout=self.webhook_timeout, trust_env=False) as http:
            while not self._stopping.is_set():
                try:
                    item = self._webhook_queue.get(timeout=0.02)
                except queue.Empty:
                    continue
                try:
                    attempts = self.webhook_attempts if item["retry"] else 1
                    for attempt in range(1, attempts + 1):
                        delivery = self._post_webhook(http, item, attempt)
                        if delivery.ok or self._stopping.wait(0.05 * 2 ** (attempt - 1)):
                            break
                except Exception:
                    self.errors.append(traceback.format_exc())
                finally:
                    with self._lock:
                        self._webhook_unsent -= 1

    def _post_webhook(self, http: httpx.Client, item: dict[str, Any], attempt: int) -> Delivery:
        timestamp = int(time.time() + self.timestamp_offset)
        secret = self.sign_with or self.webhook_secret
        headers = {
            "content-type": "application/json",
            "user-agent": "Replicate-Webhooks/fake",
            "webhook-id": item["webhook_id"],
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_webhook(secret, item["webhook_id"], timestamp, item["body"]),
        }
        status: int | None = None
        error: str | None = None
        sent_wall, sent_mono = time.time(), time.monotonic()
        if item.get("intermediate"):
            with self._lock:  # the next output/logs webhook of this prediction waits a throttle period from now
                p = self._by_id[item["prediction_id"]]
                p.last_intermediate, p.intermediate_queued = sent_mono, False
        try:
            status = http.post(item["url"], content=item["body"].encode(), headers=headers).status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        delivery = Delivery(
            webhook_id=item["webhook_id"], prediction_id=item["prediction_id"], event=item["event"], url=item["url"],
            body=item["body"], headers=headers, status_code=status, error=error, attempt=attempt, sent_at=sent_wall,
            sent_mono=sent_mono,
        )  # fmt: skip
        with self._lock:
            self._deliveries.append(delivery)
        return delivery

    # ==============================================================================================
    # Prediction JSON
    # ==============================================================================================
    def _prediction_json(self, p: FakePrediction) -> dict[str, Any]:
        urls = {
            "get": f"{self.base_url}/v1/predictions/{p.id}",
            "cancel": f"{self.base_url}/v1/predictions/{p.id}/cancel",
            "web": f"https://replicate.com/p/{p.id}",
        }
        if p.stream:
            urls["stream"] = f"{self.base_url}/stream/{p.id}"
        metrics = dict(p.metrics)
        if p.predict_time is not None:
            metrics["predict_time"] = round(p.predict_time, 6)
        if p.completed_wall is not None:
            metrics["total_time"] = round(p.completed_wall - p.created_wall, 6)
        return json.loads(json.dumps({
            "id": p.id,
            "model": p.model,
            "version": p.version,
            "input": p.input,
            "logs": p.logs,
            "output": p.output,
            "data_removed": p.data_removed,
            "error": p.error,
            "source": "api",
            "status": p.status,
            "created_at": _iso(p.created_wall),
            "started_at": _iso(p.started_wall),
            "completed_at": _iso(p.completed_wall),
            "urls": urls,
            "metrics": metrics,
        }))  # fmt: skip

    # ==============================================================================================
    # Running models (deterministic outputs, computed at create time, revealed on the clock)
    # ==============================================================================================
    def _plan(self, pid: str, model: FakeModel, params: dict[str, Any], seed: int) -> _Plan:
        kind = model.output
        try:
            if kind in ("image", "images"):
                return self._plan_images(pid, model, params, seed)
            if kind == "video":
                return self._plan_video(pid, params, seed)
            if kind == "audio":
                return self._plan_audio(pid, params, seed)
            if kind in ("text", "text-stream"):
                return self._plan_text(model, params, seed)
            return self._plan_transcript(params, seed)
        except _RunError as exc:
            return _Plan(logs=[(0.0, f"Using seed: {seed}")], error=str(exc),
                         error_logs=f"Traceback (most recent call last):\n  File \"predict.py\"\n{exc}\n")  # fmt: skip

    def _deliver(self, pid: str, name: str, data: bytes, ext: str) -> str:
        mime = _MIME.get(ext, "application/octet-stream")
        if self.output_mode == "data-uri":
            return f"data:{mime};base64," + base64.b64encode(data).decode()
        key = f"/xezq/{pid}/{name}.{ext}"
        with self._lock:
            self._outputs[key] = (data, mime)
        return f"https://{DELIVERY_HOST}{key}"

    def _fetch(self, uri: str, field_name: str) -> bytes:
        """Bytes of a media input: data: URI, an upload, an earlier output, or a loopback URL."""
        if uri.startswith("data:"):
            header, _, payload = uri.partition(",")
            try:
                return (
                    base64.b64decode(payload, validate=True)
                    if header.endswith(";base64")
                    else unquote_to_bytes(payload)
                )
            except ValueError as exc:
                raise _RunError(f"Could not decode the data URI given as {field_name}: {exc}") from None
        parts = urlsplit(uri)
        host = parts.hostname or ""
        own = host in ("127.0.0.1", "localhost") and parts.port == self.port
        with self._lock:
            if own or host in API_HOSTS:
                m = re.fullmatch(r"/v1/files/([^/]+)(?:/download)?", parts.path)
                if m and m.group(1) in self._upload_bytes:
                    return self._upload_bytes[m.group(1)]
            if own and parts.path.startswith("/files/"):
                key = parts.path[len("/files") :]
            elif host == DELIVERY_HOST:
                key = parts.path
            else:
                key = None
            if key is not None and key in self._outputs and key not in self._expired:
                return self._outputs[key][0]
        if host in ("127.0.0.1", "localhost", "::1") and not own:
            try:
                answer = httpx.get(uri, timeout=5.0, trust_env=False, follow_redirects=True)
            except httpx.HTTPError as exc:
                raise _RunError(f"Failed to download {field_name} from {uri}: {exc}") from None
            if answer.status_code == 200:
                return answer.content
            raise _RunError(f"Failed to download {field_name} from {uri}: HTTP {answer.status_code}")
        raise _RunError(f"Failed to download {field_name} from {uri}: not reachable from the fake")

    def _media(self, params: dict[str, Any], names: tuple[str, ...]) -> bytes | None:
        for name in names:
            value = params.get(name)
            if isinstance(value, str) and value:
                return self._fetch(value, name)
        return None

    def _image(self, params: dict[str, Any], names: tuple[str, ...]) -> Image.Image | None:
        data = self._media(params, names)
        if data is None:
            return None
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except Exception as exc:
            raise _RunError(f"cannot identify image file given as {names[0]}: {exc}") from None
        return img

    def _clamp(self, width: float, height: float) -> tuple[int, int]:
        scale = min(1.0, self.max_side / max(width, height, 1))
        return max(1, round(width * scale)), max(1, round(height * scale))

    def _plan_images(self, pid: str, model: FakeModel, params: dict[str, Any], seed: int) -> _Plan:
        fmt = str(params.get("output_format") or model.file_format).lower()
        fmt = {"jpeg": "jpg"}.get(fmt, fmt)
        if fmt not in ("png", "jpg", "webp"):
            fmt = "png"
        base = self._image(params, ("image", "input_image", "init_image", "img"))
        mask = self._image(params, ("mask", "mask_image"))
        prompt = str(params.get("prompt") or "")
        aspect = params.get("aspect_ratio")
        if model.transform == "upscale" and base is not None:
            factor = float(params.get("scale") or 4)
            width, height = self._clamp(base.width * factor, base.height * factor)
        elif model.transform == "remove-background" and base is not None:
            width, height = base.size
        elif isinstance(aspect, str) and aspect != "custom" and ":" in aspect:
            width, height = self._clamp(*_aspect_size(aspect, params.get("megapixels")))
        elif "width" in params or "height" in params:
            width, height = self._clamp(int(params.get("width") or 1024), int(params.get("height") or 1024))
        elif base is not None:
            width, height = base.size
        else:
            width, height = 1024, 1024
        count = max(1, int(params.get("num_outputs") or 1)) if model.output == "images" else 1
        strength = float(params.get("prompt_strength", params.get("strength", 0.8)) or 0.0)
        outputs = []
        for i in range(count):
            if model.transform == "upscale" and base is not None:
                img = base.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
            elif model.transform == "remove-background" and base is not None:
                img = _cut_background(base)
                fmt = "png"
            else:
                img = _pattern(width, height, seed + i, prompt)
                if base is not None:
                    under = base.convert("RGB").resize((width, height))
                    if mask is not None:
                        m = mask.convert("L").resize((width, height)).point(lambda v: 255 if v > 127 else 0)
                        img = Image.composite(img, under, m)
                    else:
                        img = Image.blend(under, img, max(0.0, min(1.0, strength)))
            data = _encode_image(img, fmt, params.get("output_quality"))
            outputs.append(self._deliver(pid, f"out-{i}" if model.output == "images" else "output", data, fmt))
        steps = 4
        logs = [(0.0, f"Using seed: {seed}")]
        logs += [
            (k / steps, f"{100 * k // steps:3d}%|{'█' * (10 * k // steps):<10}| {k}/{steps} [00:00<00:00, 9.9it/s]")
            for k in range(1, steps + 1)
        ]
        output: Any = outputs if model.output == "images" else outputs[0]
        return _Plan(output=output, logs=logs, metrics={"image_count": count})

    def _plan_video(self, pid: str, params: dict[str, Any], seed: int) -> _Plan:
        base = self._image(params, ("input_image", "image"))
        length = params.get("video_length")
        frames = 16
        if isinstance(length, str) and (m := re.match(r"(\d+)", length)):
            frames = int(m.group(1))
        elif isinstance(params.get("num_frames"), int):
            frames = int(params["num_frames"])
        fps = int(params.get("frames_per_second") or params.get("fps") or 8)
        if base is not None:
            width, height = base.size
        else:
            width, height = int(params.get("width") or 512), int(params.get("height") or 288)
        scale = min(1.0, 256 / max(width, height))
        width, height = max(8, round(width * scale)), max(8, round(height * scale))
        prompt = str(params.get("prompt") or "")
        shown = min(frames, 16)
        pictures = []
        for i in range(shown):
            frame = _pattern(width, height, seed, prompt, frame=i)
            if base is not None:
                frame = Image.blend(base.convert("RGB").resize((width, height)), frame, 0.35)
            pictures.append(frame)
        data = _gif(pictures, fps)
        logs = [(0.0, f"Using seed: {seed}"), (0.5, f"Generating {frames} frames"), (1.0, "Writing output.gif")]
        metrics = {"frames": frames, "fps": fps, "video_seconds": round(frames / max(1, fps), 3)}
        return _Plan(output=self._deliver(pid, "output", data, "gif"), logs=logs, metrics=metrics)

    def _plan_audio(self, pid: str, params: dict[str, Any], seed: int) -> _Plan:
        self._media(params, ("speaker", "speaker_wav", "reference_audio"))  # must be downloadable
        text = str(params.get("text") or params.get("prompt") or "")
        speed = float(params.get("speed") or 1.0)
        duration = max(0.5, min(8.0, 0.06 * len(text) / max(0.1, speed)))
        data = _wav(round(duration, 2), seed)
        logs = [(0.0, f"Synthesising {len(text)} characters"), (1.0, f"Wrote {duration:.2f}s of audio")]
        return _Plan(output=self._deliver(pid, "output", data, "wav"), logs=logs,
                     metrics={"audio_seconds": round(duration, 2)})  # fmt: skip

    def _plan_text(self, model: FakeModel, params: dict[str, Any], seed: int) -> _Plan:
        prompt = str(params.get("prompt") or "")
        limit = params.get("max_tokens") or params.get("max_new_tokens") or params.get("max_length")
        count = max(1, min(int(limit) if limit else model.reply_tokens, model.reply_tokens))
        tokens = _reply_tokens(prompt, seed, count)
        system = str(params.get("system_prompt") or "")
        metrics = {"input_token_count": max(1, math.ceil((len(prompt) + len(system)) / 4)),
                   "output_token_count": len(tokens)}  # fmt: skip
        logs = [(0.0, f"Random seed used: `{seed}`"), (1.0, f"Generated {len(tokens)} tokens")]
        if model.output == "text":
            return _Plan(output="".join(tokens), logs=logs, metrics=metrics)
        return _Plan(output=tokens, tokens=tokens, logs=logs, metrics=metrics)

    def _plan_transcript(self, params: dict[str, Any], seed: int) -> _Plan:
        data = self._media(params, ("audio", "audio_file", "file"))
        if data is None:
            raise _RunError("audio is required")
        duration = _wav_seconds(data) or max(1.0, len(data) / 32000)
        language = str(params.get("language") or "auto")
        out = _transcript(duration, seed, language, str(params.get("transcription") or "plain text"),
                          bool(params.get("translate")))  # fmt: skip
        logs = [(0.0, f"Transcribing {duration:.2f}s of audio"), (1.0, f"Language: {out['detected_language']}")]
        return _Plan(output=out, logs=logs, metrics={"audio_seconds": round(duration, 3)})


def _parse_prefer(value: str | None) -> float | None:
    if not value:
        return None
    for part in value.split(","):
        token = part.strip().lower()
        if token == "wait":
            return 60.0
        m = re.fullmatch(r"wait\s*=\s*(\d+)", token)
        if m:
            return float(min(60, max(1, int(m.group(1)))))
    return None


# ------------------------------------------------------------------------------------------------
# The catalogue genroute's plugins.toml names
# ------------------------------------------------------------------------------------------------
_ASPECTS = ["1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"]
_SD_SIZES = [128, 256, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024]


def _flux(*, img2img: bool, steps: tuple[int, int], guidance: bool) -> dict[str, dict[str, Any]]:
    props: dict[str, dict[str, Any]] = {"prompt": _prop("string", "Prompt for generated image", required=True)}
    if img2img:
        props["image"] = _uri("Input image for image to image mode. The aspect ratio of your output will match it")
        props["prompt_strength"] = _prop("number", "Prompt strength when using img2img", 0.8, minimum=0, maximum=1)
    props |= {
        "aspect_ratio": _prop("string", "Aspect ratio for the generated image", "1:1", enum=_ASPECTS),
        "num_outputs": _prop("integer", "Number of outputs to generate", 1, minimum=1, maximum=4),
        "num_inference_steps": _prop("integer", "Number of denoising steps", steps[1], minimum=1, maximum=steps[0]),
    }
    if guidance:
        props["guidance"] = _prop("number", "Guidance for generated image", 3, minimum=0, maximum=10)
    props |= {
        "seed": _prop("integer", "Random seed. Set for reproducible generation"),
        "output_format": _prop("string", "Format of the output images", "webp", enum=["webp", "jpg", "png"]),
        "output_quality": _prop("integer", "Quality when saving the output images", 80, minimum=0, maximum=100),
        "disable_safety_checker": _prop("boolean", "Disable safety checker for generated images.", False),
        "go_fast": _prop("boolean", "Run faster predictions with an optimised model", True),
        "megapixels": _prop("string", "Approximate number of megapixels for generated image", "1", enum=["1", "0.25"]),
    }
    return props


def _known_models() -> dict[str, dict[str, Any]]:
    """Approximations of the real models' schemas (names, types, ranges, enums, defaults, output shape)."""
    sd_schedulers = ["DDIM", "K_EULER", "DPMSolverMultistep", "K_EULER_ANCESTRAL", "PNDM", "KLMS"]
    sdxl_schedulers = [
        "DDIM",
        "DPMSolverMultistep",
        "HeunDiscrete",
        "KarrasDPM",
        "K_EULER_ANCESTRAL",
        "K_EULER",
        "PNDM",
    ]
    llama = {
        "prompt": _prop("string", "Prompt", required=True),
        "system_prompt": _prop("string", "System prompt to send to the model.", "You are a helpful assistant"),
        "max_tokens": _prop("integer", "The maximum number of tokens the model should generate as output.", 512),
        "min_tokens": _prop("integer", "The minimum number of tokens the model should generate as output.", 0),
        "temperature": _prop("number", "Modulates the next token probabilities.", 0.6, minimum=0, maximum=5),
        "top_p": _prop("number", "Nucleus sampling", 0.9, minimum=0, maximum=1),
        "top_k": _prop("integer", "Top-k sampling", 50, minimum=-1),
        "presence_penalty": _prop("number", "Presence penalty", 0),
        "frequency_penalty": _prop("number", "Frequency penalty", 0.2),
        "stop_sequences": _prop("string", "Comma-separated sequences to stop at.", "<|end_of_text|>,<|eot_id|>"),
        "seed": _prop("integer", "Random seed. Leave blank to randomize the seed"),
    }
    return {
        "black-forest-labs/flux-schnell": {
            "output": "images", "official": True, "file_format": "webp",
            "properties": _flux(img2img=False, steps=(4, 4), guidance=False),
        },
        "black-forest-labs/flux-dev": {
            "output": "images", "official": True, "file_format": "webp",
            "properties": _flux(img2img=True, steps=(50, 28), guidance=True),
        },
        "black-forest-labs/flux-pro": {
            "output": "image", "official": True, "file_format": "webp",
            "properties": {
                "prompt": _prop("string", "Text prompt for image generation", required=True),
                "image_prompt": _uri("Image to use with Flux Redux for image-guided generation"),
                "aspect_ratio": _prop("string", "Aspect ratio; 'custom' uses width and height", "1:1",
                                      enum=[*_ASPECTS, "custom"]),
                "width": _prop("integer", "Width for custom aspect ratio", minimum=256, maximum=1440),
                "height": _prop("integer", "Height for custom aspect ratio", minimum=256, maximum=1440),
                "steps": _prop("integer", "Number of diffusion steps", 25, minimum=1, maximum=50),
                "guidance": _prop("number", "Controls the balance between prompt adherence and quality", 3,
                                  minimum=2, maximum=5),
                "interval": _prop("number", "Variance of possible outputs", 2, minimum=1, maximum=4),
                "safety_tolerance": _prop("integer", "Safety tolerance, 1 is most strict", 2, minimum=1, maximum=6),
                "seed": _prop("integer", "Random seed. Set for reproducible generation"),
                "output_format": _prop("string", "Format of the output images", "webp", enum=["webp", "jpg", "png"]),
                "output_quality": _prop("integer", "Quality when saving the output images", 80, minimum=0,
                                        maximum=100),
                "prompt_upsampling": _prop("boolean", "Automatically modify the prompt", False),
            },
        },
        "black-forest-labs/flux-fill-pro": {
            "output": "image", "official": True, "file_format": "jpg",
            "properties": {
                "prompt": _prop("string", "Text prompt for image generation"),
                "image": _uri("The image to inpaint. Can contain an alpha mask.", required=True),
                "mask": _uri("A black-and-white image describing the part to inpaint. White areas are inpainted."),
                "steps": _prop("integer", "Number of diffusion steps", 50, minimum=15, maximum=50),
                "guidance": _prop("number", "Prompt adherence", 60, minimum=1.5, maximum=100),
                "outpaint": _prop("string", "Outpainting preset", "None",
                                  enum=["None", "Zoom out 1.5x", "Zoom out 2x", "Make square", "Left outpaint",
                                        "Right outpaint", "Top outpaint", "Bottom outpaint"]),
                "safety_tolerance": _prop("integer", "Safety tolerance, 1 is most strict", 2, minimum=1, maximum=6),
                "seed": _prop("integer", "Random seed. Set for reproducible generation"),
                "output_format": _prop("string", "Format of the output images", "jpg", enum=["jpg", "png"]),
                "prompt_upsampling": _prop("boolean", "Automatically modify the prompt", False),
            },
        },
        # Community models: run by version (owner/name:hash). The latest stability-ai/stable-diffusion has no
        # image input at all (an "image" key is silently ignored), and its width/height are integer enums.
        "stability-ai/stable-diffusion": {
            "output": "images", "official": False, "file_format": "png",
            "properties": {
                "prompt": _prop("string", "Input prompt", "a vision of paradise. unreal engine"),
                "height": _prop("integer", "Height of generated image in pixels.", 768, enum=_SD_SIZES),
                "width": _prop("integer", "Width of generated image in pixels.", 768, enum=_SD_SIZES),
                "negative_prompt": _prop("string", "Specify things to not see in the output"),
                "num_outputs": _prop("integer", "Number of images to output.", 1, minimum=1, maximum=4),
                "num_inference_steps": _prop("integer", "Number of denoising steps", 50, minimum=1, maximum=500),
                "guidance_scale": _prop("number", "Scale for classifier-free guidance", 7.5, minimum=1, maximum=20),
                "scheduler": _prop("string", "Choose a scheduler.", "DPMSolverMultistep", enum=sd_schedulers),
                "seed": _prop("integer", "Random seed. Leave blank to randomize the seed"),
            },
        },
        "stability-ai/sdxl": {
            "output": "images", "official": False, "file_format": "png",
            "properties": {
                "prompt": _prop("string", "Input prompt", "An astronaut riding a rainbow unicorn"),
                "negative_prompt": _prop("string", "Input Negative Prompt", ""),
                "image": _uri("Input image for img2img or inpaint mode"),
                "mask": _uri("Input mask for inpaint mode. Black areas will be preserved, white areas inpainted."),
                "width": _prop("integer", "Width of output image", 1024),
                "height": _prop("integer", "Height of output image", 1024),
                "num_outputs": _prop("integer", "Number of images to output.", 1, minimum=1, maximum=4),
                "scheduler": _prop("string", "scheduler", "K_EULER", enum=sdxl_schedulers),
                "num_inference_steps": _prop("integer", "Number of denoising steps", 50, minimum=1, maximum=500),
                "guidance_scale": _prop("number", "Scale for classifier-free guidance", 7.5, minimum=1, maximum=50),
                "prompt_strength": _prop("number", "Prompt strength when using img2img / inpaint.", 0.8, minimum=0,
                                         maximum=1),
                "seed": _prop("integer", "Random seed. Leave blank to randomize the seed"),
                "refine": _prop("string", "Which refine style to use", "no_refiner",
                                enum=["no_refiner", "expert_ensemble_refiner", "base_image_refiner"]),
                "high_noise_frac": _prop("number", "For expert_ensemble_refiner, the fraction of noise to use", 0.8,
                                         minimum=0, maximum=1),
                "apply_watermark": _prop("boolean", "Applies a watermark to generated images", True),
                "lora_scale": _prop("number", "LoRA additive scale.", 0.6, minimum=0, maximum=1),
                "disable_safety_checker": _prop("boolean", "Disable safety checker for generated images.", False),
            },
        },
        "stability-ai/stable-diffusion-inpainting": {
            "output": "images", "official": False, "file_format": "png",
            "properties": {
                "prompt": _prop("string", "Input prompt", "a vision of paradise. unreal engine"),
                "negative_prompt": _prop("string", "Specify things to not see in the output"),
                "image": _uri("Initial image to generate variations of. Resized to width x height", required=True),
                "mask": _uri("Black and white image to use as mask. White pixels are inpainted, black preserved.",
                             required=True),
                "height": _prop("integer", "Height of generated image in pixels.", 512, enum=_SD_SIZES),
                "width": _prop("integer", "Width of generated image in pixels.", 512, enum=_SD_SIZES),
                "num_outputs": _prop("integer", "Number of images to generate.", 1, minimum=1, maximum=4),
                "num_inference_steps": _prop("integer", "Number of denoising steps", 50, minimum=1, maximum=500),
                "guidance_scale": _prop("number", "Scale for classifier-free guidance", 7.5, minimum=1, maximum=20),
                "scheduler": _prop("string", "Choose a scheduler.", "DPMSolverMultistep", enum=sd_schedulers),
                "seed": _prop("integer", "Random seed. Leave blank to randomize the seed"),
                "disable_safety_checker": _prop("boolean", "Disable safety checker for generated images.", False),
            },
        },
        "nightmareai/real-esrgan": {
            "output": "image", "official": False, "file_format": "png", "transform": "upscale",
            "properties": {
                "image": _uri("Input image", required=True),
                "scale": _prop("number", "Factor to scale image by", 4, minimum=0, maximum=10),
                "face_enhance": _prop("boolean", "Run GFPGAN face enhancement along with upscaling", False),
            },
        },
        "cjwbw/rembg": {
            "output": "image", "official": False, "file_format": "png", "transform": "remove-background",
            "properties": {"image": _uri("Input image", required=True)},
        },
        "lucataco/animate-diff": {
            "output": "video", "official": False, "file_format": "gif",
            "properties": {
                "path": _prop("string", "Select a Module", "toonyou_beta3.safetensors",
                              enum=["toonyou_beta3.safetensors", "lyriel_v16.safetensors",
                                    "majicmixRealistic_v5Preview.safetensors", "rcnzCartoon3d_v10.safetensors",
                                    "realisticVisionV40_v20Novae.safetensors"]),
                "prompt": _prop("string", "Input prompt", "masterpiece, best quality, 1girl, solo"),
                "n_prompt": _prop("string", "Negative prompt", ""),
                "steps": _prop("integer", "Number of inference steps", 25, minimum=1, maximum=100),
                "guidance_scale": _prop("number", "guidance scale", 7.5, minimum=1, maximum=10),
                "seed": _prop("integer", "Seed (0 = random, maximum: 2147483647)", 0),
            },
        },
        "stability-ai/stable-video-diffusion": {
            "output": "video", "official": False, "file_format": "gif",
            "properties": {
                "input_image": _uri("Input image", required=True),
                "video_length": _prop("string", "Use svd to generate 14 frames or svd_xt for 25 frames",
                                      "14_frames_with_svd", enum=["14_frames_with_svd", "25_frames_with_svd_xt"]),
                "sizing_strategy": _prop("string", "Decide how to resize the input image", "maintain_aspect_ratio",
                                         enum=["maintain_aspect_ratio", "crop_to_16_9", "use_image_dimensions"]),
                "frames_per_second": _prop("integer", "Number of frames per second", 6, minimum=5, maximum=30),
                "motion_bucket_id": _prop("integer", "Increase overall motion in the generated video", 127,
                                          minimum=1, maximum=255),
                "cond_aug": _prop("number", "Amount of noise to add to input image", 0.02),
                "decoding_t": _prop("integer", "Number of frames to decode at a time", 14, minimum=1, maximum=14),
                "seed": _prop("integer", "Random seed. Leave blank to randomize the seed"),
            },
        },
        "jaaari/kokoro-82m": {
            "output": "audio", "official": False, "file_format": "wav",
            "properties": {
                "text": _prop("string", "Text input (long text is automatically split)", required=True),
                "voice": _prop("string", "Speaker voice", "af_bella",
                               enum=["af_bella", "af_nicole", "af_sarah", "af_sky", "am_adam", "am_michael",
                                     "bf_emma", "bf_isabella", "bm_george", "bm_lewis"]),
                "speed": _prop("number", "Speech speed multiplier (0.5 = half speed, 2.0 = double speed)", 1,
                               minimum=0.1, maximum=5),
            },
        },
        "lucataco/xtts-v2": {
            "output": "audio", "official": False, "file_format": "wav",
            "properties": {
                "text": _prop("string", "Text to synthesize", "Hi there, I'm your new voice clone.", required=True),
                "speaker": _uri("Original speaker audio (wav, mp3, m4a, ogg, or flv). Duration should be at least "
                                "6 seconds.", required=True),
                "language": _prop("string", "Output language for the synthesised speech", "en",
                                  enum=["en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh",
                                        "hu", "ko", "hi"]),
                "cleanup_voice": _prop("boolean", "Whether to apply denoising to the speaker audio", False),
            },
        },
        "openai/whisper": {
            "output": "json-transcript", "official": False, "file_format": "wav",
            "properties": {
                "audio": _uri("Audio file", required=True),
                "transcription": _prop("string", "Choose the format for the transcription", "plain text",
                                       enum=["plain text", "srt", "vtt"]),
                "translate": _prop("boolean", "Translate the text to English when set to True", False),
                "language": _prop("string", "Language spoken in the audio, specify 'auto' for detection", "auto",
                                  enum=["auto", "en", "de", "es", "fr", "it", "ja", "nl", "pt", "zh"]),
                "temperature": _prop("number", "temperature to use for sampling", 0),
                "patience": _prop("number", "optional patience value to use in beam decoding"),
                "suppress_tokens": _prop("string", "comma-separated list of token ids to suppress", "-1"),
                "initial_prompt": _prop("string", "optional text to provide as a prompt for the first window."),
                "condition_on_previous_text": _prop("boolean", "provide the previous output as a prompt", True),
                "temperature_increment_on_fallback": _prop("number", "temperature increase on fallback", 0.2),
                "compression_ratio_threshold": _prop("number", "gzip compression ratio threshold", 2.4),
                "logprob_threshold": _prop("number", "average log probability threshold", -1),
                "no_speech_threshold": _prop("number", "no-speech probability threshold", 0.6),
            },
        },
        "meta/meta-llama-3-8b-instruct": {"output": "text-stream", "official": True, "properties": dict(llama)},
        "meta/meta-llama-3-70b-instruct": {"output": "text-stream", "official": True, "properties": dict(llama)},
        "meta/meta-llama-3.1-405b-instruct": {"output": "text-stream", "official": True, "properties": dict(llama)},
    }  # fmt: skip


_TASK_KINDS = {
    "text-to-image": "images",
    "image-to-image": "images",
    "inpaint": "images",
    "upscale": "image",
    "remove-background": "image",
    "text-to-video": "video",
    "image-to-video": "video",
    "text-to-speech": "audio",
    "speech-to-text": "json-transcript",
    "text-generation": "text-stream",
}


def default_catalogue(server: FakeReplicate, plugins_toml: Path | str | None = None) -> list[str]:
    """Register every model named under ``[providers.replicate.models]`` in genroute's ``plugins.toml``.

    Known names get an approximation of the real schema (inputs, ranges, enums, defaults, output shape,
    official vs community); an unknown name gets a generic schema for its task. Every other model the fake
    knows (say ``stability-ai/stable-diffusion``, which has no image input) is registered too, so tests can
    use it whatever the catalogue names today. Returns the names added.
    """
    path = Path(plugins_toml) if plugins_toml is not None else REPO_ROOT / "plugins.toml"
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    tasks = raw.get("providers", {}).get("replicate", {}).get("models", {})
    known = _known_models()
    names: dict[str, str] = {}
    for task, tiers in tasks.items():
        for offer in tiers.values():
            if isinstance(offer, dict) and "model" in offer:
                names.setdefault(str(offer["model"]).split(":", 1)[0], task)
    for name, task in names.items():
        spec = known.get(name)
        if spec is not None:
            server.add_model(
                name,
                input_schema=spec["properties"],
                output=spec["output"],
                official=spec["official"],
                file_format=spec.get("file_format", "png"),
                transform=spec.get("transform"),
            )
        else:
            kind = _TASK_KINDS.get(task, "images")
            transform = {"upscale": "upscale", "remove-background": "remove-background"}.get(task)
            server.add_model(name, output=kind, official=False, transform=transform)
    for name, spec in known.items():
        if name not in names:
            server.add_model(
                name,
                input_schema=spec["properties"],
                output=spec["output"],
                official=spec["official"],
                file_format=spec.get("file_format", "png"),
                transform=spec.get("transform"),
            )
            names[name] = ""
    return list(names)
