"""A local fake of Hugging Face's hf-inference HTTP API, for tests of code that uses the real ``InferenceClient``.

No machine running the tests reaches the internet, so the unmodified ``huggingface_hub`` client (2.4.0, which
uses ``httpx2``) is pointed at this server on 127.0.0.1:

    with FakeHF(token="hf_test") as server:
        server.add_model("org/flux", task="text-to-image", compute_seconds=2.0)
        client = InferenceClient(model=server.model_url("org/flux"), token="hf_test")
        image = client.text_to_image("a cat", width=32, height=24)      # a PIL image, 32x24

A URL as ``model`` makes the client use provider ``hf-inference`` at that URL with no Hub look-ups. To go through
the client's own provider routing instead (``provider="hf-inference"``, ``"auto"`` or none, model given by id),
install a host-rewriting ``httpx2`` client with :func:`fake_hf_routing` (or :func:`hf_client_factory` /
:func:`hf_async_client_factory` and ``huggingface_hub.set_client_factory`` / ``set_async_client_factory``).

Paths served (an optional ``/hf-inference`` prefix, as on ``router.huggingface.co``, is accepted everywhere):

- ``POST /models/{id}`` — the model's task: text-to-image, image-to-image, text-to-speech,
  automatic-speech-recognition, text-generation (TGI-style SSE when ``"stream": true``);
- ``POST /models/{id}/pipeline/{task}`` — the task named in the path;
- ``POST /models/{id}/v1/chat/completions`` and ``POST /v1/chat/completions`` (model from the body) — OpenAI-style
  chat, SSE ``data: {...}`` chunks ending with ``data: [DONE]`` when ``"stream": true``;
- ``GET /models/{id}/health`` and ``/models/{id}/info``;
- Hub look-ups the routing code makes: ``GET /api/models/{id}`` (``pipeline_tag``, ``inferenceProviderMapping``)
  and ``GET /api/tasks``.

Faults (:meth:`FakeHF.loading`, :meth:`~FakeHF.rate_limit`, :meth:`~FakeHF.fail`, :meth:`~FakeHF.slow`,
:meth:`~FakeHF.drop`, :meth:`~FakeHF.malformed`) queue up in the order they are added; each inference call consumes
at most one matching fault. Credit: with ``credit_usd`` set, calls answer 402 once billed compute seconds × rate
reach it. Everything the server sees is in :attr:`FakeHF.requests` (token values redacted).
"""

from __future__ import annotations

import array
import base64
import contextlib
import hashlib
import io
import json
import math
import re
import socket
import struct
import threading
import time
import wave
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx2
from PIL import Image, ImageDraw, ImageOps
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from .http_serving import KeepAliveHandler, accepted_connections, close_connections

__all__ = [
    "OUT_OF_CREDIT_MESSAGE",
    "FakeHF",
    "FakeHFModel",
    "RecordedRequest",
    "clear_hf_lookup_caches",
    "fake_hf_routing",
    "hf_async_client_factory",
    "hf_client_factory",
    "make_wav",
    "wav_transcript",
]

OUT_OF_CREDIT_MESSAGE = (
    "You have exceeded your monthly included credits for Inference Providers. "
    "Subscribe to PRO to get 20x more monthly included credits."
)
INVALID_CREDENTIALS_MESSAGE = "Invalid credentials in Authorization header"

#: The tasks this fake computes, and the aliases accepted by :meth:`FakeHF.add_model`.
TASKS = (
    "text-to-image",
    "image-to-image",
    "text-to-speech",
    "automatic-speech-recognition",
    "text-generation",
    "conversational",
)
_TASK_ALIASES = {
    "chat": "conversational",
    "chat-completion": "conversational",
    "asr": "automatic-speech-recognition",
    "speech-to-text": "automatic-speech-recognition",
    "tts": "text-to-speech",
}
_TEXT_TASKS = ("text-generation", "conversational")

#: Hosts the routing transport sends to the fake (the Hub, the router, the legacy Inference API).
ROUTED_HOSTS = frozenset({"huggingface.co", "router.huggingface.co", "api-inference.huggingface.co", "hf.co"})

_WAV_TEXT_CHUNK = b"gTXT"  # private RIFF chunk after "data": holds the text a fake TTS call spoke
_SAMPLE_RATE = 16_000
_CREATED = 1_700_000_000  # fixed "created" stamp: answers depend only on the request


# --------------------------------------------------------------------------------------------------------------------
# Configuration and records
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class FakeHFModel:
    """One model the fake serves (see :meth:`FakeHF.add_model`)."""

    model_id: str
    task: str
    latency: float = 0.0
    compute_seconds: float = 1.0
    compute_type: str = "gpu"
    size: tuple[int, int] = (64, 64)
    reply: str | Callable[[Any], str] | None = None
    token_interval: float = 0.0
    pipeline_tag: str | None = None
    tags: list[str] = field(default_factory=list)

    @property
    def hub_pipeline_tag(self) -> str:
        if self.pipeline_tag is not None:
            return self.pipeline_tag
        return "text-generation" if self.task == "conversational" else self.task

    def serves(self, task: str) -> bool:
        if task in _TEXT_TASKS:
            return self.task in _TEXT_TASKS
        return task == self.task


@dataclass
class RecordedRequest:
    """A request as the fake saw it (recorded on arrival). ``status`` is None while the request is in flight and
    for a connection dropped before any answer."""

    method: str
    path: str
    query: str
    host: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    model: str | None = None
    task: str | None = None
    billed_seconds: float = 0.0
    fault: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Fault:
    kind: str
    model: str | None
    remaining: int | None  # None: until cleared
    options: dict[str, Any]


class _Reply(Exception):
    """Raised inside a handler to answer at once."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def _json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload), status=status, headers=headers, content_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> _Reply:
    return _Reply(_json_response(status, {"error": message, **extra}, headers))


class _QuietHandler(KeepAliveHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        pass


# --------------------------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------------------------


class FakeHF:
    """A threaded fake of the hf-inference API on 127.0.0.1 (a free port). ``start()``/``stop()`` or ``with``.

    ``token``: the accepted bearer token (None accepts any). ``credit_usd``: None for unlimited, else calls
    answer 402 once ``billed_seconds * rate_usd_per_second`` reaches it (both attributes may be changed live).
    """

    def __init__(
        self,
        token: str | None = "hf_test",
        *,
        credit_usd: float | None = None,
        rate_usd_per_second: float = 0.00012,
    ) -> None:
        self.token = token
        self.credit_usd = credit_usd
        self.rate_usd_per_second = rate_usd_per_second
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._models: dict[str, FakeHFModel] = {}
        self._faults: list[_Fault] = []
        self._requests: list[RecordedRequest] = []
        self._billed_seconds = 0.0
        self._quota: dict[str, Any] | None = None
        self._next_id = 0
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> FakeHF:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"FakeHF:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping for latency or slow faults
        server.shutdown()
        server.server_close()
        close_connections(server)
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeHF:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeHF is not started")
        return int(self._server.port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def model_url(self, model_id: str) -> str:
        """The URL to pass as ``InferenceClient(model=...)`` (or ``base_url=``) for ``model_id``."""
        return f"{self.base_url}/models/{model_id}"

    # ---- configuration ---------------------------------------------------------------------------------------------

    def add_model(
        self,
        model_id: str,
        task: str = "text-to-image",
        *,
        latency: float = 0.0,
        compute_seconds: float = 1.0,
        compute_type: str = "gpu",
        size: tuple[int, int] = (64, 64),
        reply: str | Callable[[Any], str] | None = None,
        token_interval: float = 0.0,
        pipeline_tag: str | None = None,
        tags: Iterable[str] = (),
    ) -> FakeHFModel:
        """Serve ``model_id`` for ``task`` (a text-generation or conversational model serves both).

        ``latency``: seconds slept before answering (wall time); ``compute_seconds``: what each successful call
        bills (``x-compute-time``), independent of latency. ``size``: default (width, height) of generated images.
        ``reply``: the text a chat/text-generation model answers, or a callable given the messages (chat) or
        the prompt (text-generation); default an echo. ``token_interval``: seconds between streamed tokens.
        """
        task = _TASK_ALIASES.get(task, task)
        if task not in TASKS:
            raise ValueError(f"FakeHF does not compute task {task!r}; known: {', '.join(TASKS)}")
        model = FakeHFModel(
            model_id,
            task,
            latency,
            compute_seconds,
            compute_type,
            size,
            reply,
            token_interval,
            pipeline_tag,
            list(tags),
        )
        with self._lock:
            self._models[model_id] = model
        return model

    def remove_model(self, model_id: str) -> None:
        with self._lock:
            self._models.pop(model_id, None)

    def _add_fault(self, kind: str, model: str | None, times: int | None, **options: Any) -> None:
        if times is not None and times < 1:
            return
        with self._lock:
            self._faults.append(_Fault(kind, model, times, options))

    def loading(self, model: str, times: int = 1, estimated_time: float = 20.0) -> None:
        """The next ``times`` calls to ``model`` answer 503 ``{"error": "Model … is currently loading",
        "estimated_time": …}``."""
        self._add_fault("loading", model, times, estimated_time=float(estimated_time))

    def rate_limit(
        self,
        model: str | None = None,
        times: int | None = 1,
        *,
        limit: int = 500,
        reset: int = 60,
        window: int = 300,
        retry_after: int | None = None,
        style: str = "ietf",
    ) -> None:
        """The next ``times`` calls answer 429 with rate-limit headers.

        ``style="ietf"`` sends ``RateLimit: "api";r=0;t=<reset>`` and ``RateLimit-Policy: "fixed window";"api";
        q=<limit>;w=<window>`` (draft 9: the form ``huggingface_hub`` parses into its error message);
        ``style="combined"`` sends ``RateLimit: limit=<limit>, remaining=0, reset=<reset>`` (draft 6) instead.
        Both add ``RateLimit-Limit``/``-Remaining``/``-Reset`` and ``Retry-After`` (``retry_after`` or ``reset``).
        """
        if style not in ("ietf", "combined"):
            raise ValueError("style must be 'ietf' or 'combined'")
        self._add_fault(
            "rate_limit",
            model,
            times,
            limit=limit,
            reset=reset,
            window=window,
            retry_after=reset if retry_after is None else retry_after,
            style=style,
        )

    def set_quota(self, limit: int | None, window: int = 300) -> None:
        """A fixed-window request quota over all inference calls (None removes it): successful answers carry
        ``RateLimit`` headers with the remaining count; past ``limit`` calls answer 429 until the window ends."""
        with self._lock:
            self._quota = None if limit is None else {"limit": limit, "window": window, "start": None, "used": 0}

    def fail(
        self,
        model: str | None = None,
        status: int = 500,
        times: int | None = 1,
        *,
        message: str = "Internal Server Error",
        json_body: bool = True,
        header: bool = True,
    ) -> None:
        """The next ``times`` calls answer ``status``: ``{"error": message}`` (or the text when ``json_body`` is
        False) and, with ``header``, ``X-Error-Message: message``."""
        self._add_fault("error", model, times, status=status, message=message, json_body=json_body, header=header)

    def slow(self, model: str | None = None, seconds: float = 1.0, times: int | None = 1) -> None:
        """The next ``times`` calls sleep ``seconds`` before being handled normally."""
        self._add_fault("slow", model, times, seconds=seconds)

    def drop(self, model: str | None = None, times: int | None = 1, *, mid_body: bool = False) -> None:
        """The next ``times`` calls close the connection: before any answer, or (``mid_body``) after the status,
        headers (with the full Content-Length) and half the body — for a stream, after the first event."""
        self._add_fault("drop_mid_body" if mid_body else "drop", model, times)

    def malformed(self, model: str | None = None, kind: str = "invalid_json", times: int | None = 1) -> None:
        """The answers to the next ``times`` calls are spoiled (the call is computed and billed as usual):

        - ``invalid_json``: 200 ``application/json`` that does not parse (a stream: one event does not parse);
        - ``wrong_content_type``: 200 ``text/html`` page instead of the expected body;
        - ``truncated``: the right headers and a consistent Content-Length, but half the bytes (a stream: ends
          cleanly after the first event, without the final events or ``[DONE]``);
        - ``empty``: 200 with an empty body.
        """
        if kind not in ("invalid_json", "wrong_content_type", "truncated", "empty"):
            raise ValueError(f"unknown malformed kind {kind!r}")
        self._add_fault(kind, model, times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget faults, recorded requests, billing and quota use (models stay)."""
        with self._lock:
            self._faults.clear()
            self._requests.clear()
            self._billed_seconds = 0.0
            if self._quota is not None:
                self._quota.update(start=None, used=0)

    # ---- observability ---------------------------------------------------------------------------------------------

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted so far (clients reuse kept-alive ones, as with the real service)."""
        return 0 if self._server is None else accepted_connections(self._server)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def count(
        self,
        path: str | None = None,
        *,
        method: str | None = None,
        status: int | None = None,
        model: str | None = None,
        task: str | None = None,
        host: str | None = None,
    ) -> int:
        """How many recorded requests match every filter given (``path`` exact, without the query)."""
        return sum(
            1
            for r in self.requests
            if (path is None or r.path == path)
            and (method is None or r.method == method.upper())
            and (status is None or r.status == status)
            and (model is None or r.model == model)
            and (task is None or r.task == task)
            and (host is None or r.host == host)
        )

    @property
    def billed_seconds(self) -> float:
        with self._lock:
            return self._billed_seconds

    @property
    def spent_usd(self) -> float:
        return self.billed_seconds * self.rate_usd_per_second

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    # ---- WSGI ------------------------------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        body = request.get_data(cache=True)
        headers = {k.lower(): v for k, v in request.headers.items()}
        if "authorization" in headers:
            scheme, _, _ = headers["authorization"].partition(" ")
            headers["authorization"] = f"{scheme} <redacted>"
        record = RecordedRequest(
            request.method, request.path, request.query_string.decode(), request.host.split(":")[0], headers, body
        )
        with self._lock:  # recorded on arrival (status None while in flight), so a drop is seen before it happens
            self._next_id += 1
            request_id = f"fake-hf-{self._next_id:06d}"
            self._requests.append(record)
        try:
            response = self._dispatch(request, record, environ)
        except _Reply as reply:
            response = reply.response
        except Exception as exc:  # a bug in the fake: answer 500 and say so
            response = _json_response(500, {"error": f"FakeHF internal error: {exc!r}"})
        if record.fault != "drop":
            record.status = response.status_code
        response.headers.setdefault("x-request-id", request_id)
        return response(environ, start_response)

    def _dispatch(self, request: Request, record: RecordedRequest, environ: dict[str, Any]) -> Response:
        path = request.path.rstrip("/") or "/"
        if path.startswith("/api/"):
            if request.method != "GET":
                raise _error(405, "Method not allowed")
            return self._hub(path, request, record)
        if path.startswith("/hf-inference/"):
            path = path[len("/hf-inference") :]
        if path == "/v1/chat/completions" and request.method == "POST":
            return self._inference(request, record, environ, None, "conversational")
        if not path.startswith("/models/"):
            raise _error(404, f"Not Found: {request.path}")
        rest = path[len("/models/") :]
        if request.method == "GET":
            for suffix in ("/health", "/info"):
                if rest.endswith(suffix):
                    return self._endpoint_get(request, record, rest[: -len(suffix)], suffix[1:])
            raise _error(405, "Method not allowed")
        if request.method != "POST":
            raise _error(405, "Method not allowed")
        with self._lock:
            known = rest in self._models
        if not known and rest.endswith("/v1/chat/completions"):
            return self._inference(request, record, environ, rest[: -len("/v1/chat/completions")], "conversational")
        if not known and "/pipeline/" in rest:
            model_id, task = rest.split("/pipeline/", 1)
            return self._inference(request, record, environ, model_id, task)
        return self._inference(request, record, environ, rest, None)

    # ---- Hub look-ups ----------------------------------------------------------------------------------------------

    def _hub(self, path: str, request: Request, record: RecordedRequest) -> Response:
        auth = request.headers.get("Authorization")
        if auth is not None and self.token is not None and auth != f"Bearer {self.token}":
            raise _error(401, INVALID_CREDENTIALS_MESSAGE, {"X-Error-Message": INVALID_CREDENTIALS_MESSAGE})
        if path == "/api/tasks":
            with self._lock:
                models = list(self._models.values())
            tasks: dict[str, Any] = {}
            for model in models:
                tasks.setdefault(model.task, {"widgetModels": []})["widgetModels"].append(model.model_id)
            return _json_response(200, tasks)
        match = re.fullmatch(r"/api/models/(?P<id>[^/]+(?:/[^/]+)?)(?:/revision/[^/]+)?", path)
        if match is None:
            raise _error(404, f"Not Found: {request.path}")
        model_id = match.group("id")
        record.model = model_id
        with self._lock:
            model = self._models.get(model_id)
        if model is None:
            raise _error(
                404, "Repository not found", {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
            )
        author = model_id.split("/")[0] if "/" in model_id else None
        return _json_response(
            200,
            {
                "_id": hashlib.sha1(model_id.encode()).hexdigest()[:24],
                "id": model_id,
                "modelId": model_id,
                "author": author,
                "private": False,
                "gated": False,
                "disabled": False,
                "pipeline_tag": model.hub_pipeline_tag,
                "tags": [*model.tags, model.hub_pipeline_tag],
                "library_name": "diffusers" if "image" in model.task else "transformers",
                "inference": "warm",
                "inferenceProviderMapping": {
                    "hf-inference": {"status": "live", "providerId": model_id, "task": model.task},
                },
            },
        )

    def _endpoint_get(self, request: Request, record: RecordedRequest, model_id: str, what: str) -> Response:
        self._check_auth(request)
        model = self._model(model_id, record)
        if what == "health":
            return Response(b"", status=200)
        return _json_response(
            200,
            {
                "model_id": model.model_id,
                "model_pipeline_tag": model.hub_pipeline_tag,
                "model_device_type": "cuda" if model.compute_type == "gpu" else "cpu",
            },
        )

    # ---- inference -------------------------------------------------------------------------------------------------

    def _check_auth(self, request: Request) -> None:
        if self.token is None:
            return
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise _error(401, INVALID_CREDENTIALS_MESSAGE)

    def _model(self, model_id: str, record: RecordedRequest) -> FakeHFModel:
        record.model = model_id
        with self._lock:
            model = self._models.get(model_id)
        if model is None:
            raise _error(404, f"Model {model_id} does not exist")
        return model

    def _take_fault(self, model_id: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.model is None or fault.model == model_id:
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _quota_check(self) -> dict[str, str]:
        """Count one call against the quota: raise 429 past it, else return the headers for the answer."""
        with self._lock:
            quota = self._quota
            if quota is None:
                return {}
            now = time.monotonic()
            if quota["start"] is None or now - quota["start"] >= quota["window"]:
                quota.update(start=now, used=0)
            reset = max(1, math.ceil(quota["window"] - (now - quota["start"])))
            if quota["used"] >= quota["limit"]:
                raise _Reply(
                    _json_response(
                        429,
                        {"error": "Rate limit reached. Please retry later."},
                        _ratelimit_headers(quota["limit"], 0, reset, quota["window"], reset),
                    )
                )
            quota["used"] += 1
            return _ratelimit_headers(quota["limit"], quota["limit"] - quota["used"], reset, quota["window"], None)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _inference(
        self,
        request: Request,
        record: RecordedRequest,
        environ: dict[str, Any],
        model_id: str | None,
        task: str | None,
    ) -> Response:
        self._check_auth(request)
        payload: Any = None
        if model_id is None:  # /v1/chat/completions at the root: the model is in the body ("id" or "id:provider")
            payload = _parse_json(request.get_data())
            if not isinstance(payload, dict) or not isinstance(payload.get("model"), str):
                raise _error(422, "missing field `model`", error_type="validation")
            model_id = payload["model"].split(":")[0]
        model = self._model(model_id, record)
        if task is None:  # POST /models/{id}: the model's task; a chat model there does plain text-generation
            task = "text-generation" if model.task in _TEXT_TASKS else model.task
        else:
            task = _TASK_ALIASES.get(task, task)
        record.task = task
        if not model.serves(task):
            raise _error(
                400,
                f"Model {model_id} is not supported for task {task} and provider hf-inference. "
                f"Supported task: {model.task}.",
            )
        with self._lock:
            out_of_credit = self.credit_usd is not None and (
                self._billed_seconds * self.rate_usd_per_second >= self.credit_usd - 1e-12
            )
        if out_of_credit:
            raise _error(402, OUT_OF_CREDIT_MESSAGE)
        extra_headers = self._quota_check()

        fault = self._take_fault(model_id)
        if fault is not None:
            record.fault = fault.kind
            self._apply_pre_fault(fault, model_id, environ)
            if fault.kind == "slow":
                fault = None
        self._sleep(model.latency)

        stream = False
        if task == "conversational":
            payload = payload if payload is not None else _parse_json(request.get_data())
            stream = bool(isinstance(payload, dict) and payload.get("stream"))
            result = self._chat(model, payload)
        elif task == "text-generation":
            payload = _parse_json(request.get_data())
            stream = bool(isinstance(payload, dict) and payload.get("stream"))
            result = self._text_generation(model, payload)
        elif task == "text-to-image":
            result = self._text_to_image(model, request)
        elif task == "image-to-image":
            result = self._image_to_image(request)
        elif task == "text-to-speech":
            result = self._text_to_speech(request)
        elif task == "automatic-speech-recognition":
            result = self._asr(request)
        else:  # pragma: no cover - serves() guards this
            raise _error(400, f"task {task} not supported")

        with self._lock:
            self._billed_seconds += model.compute_seconds
        record.billed_seconds = model.compute_seconds
        extra_headers.update({"x-compute-time": f"{model.compute_seconds:.3f}", "x-compute-type": model.compute_type})

        if stream:
            events, content_type = result
            return self._stream_response(events, content_type, extra_headers, fault, environ, model.token_interval)
        body, content_type = result
        return self._plain_response(body, content_type, extra_headers, fault, environ)

    def _apply_pre_fault(self, fault: _Fault, model_id: str, environ: dict[str, Any]) -> None:
        o = fault.options
        if fault.kind == "loading":
            raise _error(503, f"Model {model_id} is currently loading", estimated_time=o["estimated_time"])
        if fault.kind == "rate_limit":
            headers = _ratelimit_headers(o["limit"], 0, o["reset"], o["window"], o["retry_after"], o["style"])
            raise _error(429, "Rate limit reached. Please retry later.", headers)
        if fault.kind == "error":
            headers = {"X-Error-Message": o["message"]} if o["header"] else {}
            if o["json_body"]:
                raise _error(o["status"], o["message"], headers)
            raise _Reply(Response(o["message"], status=o["status"], headers=headers, content_type="text/plain"))
        if fault.kind == "slow":
            self._sleep(o["seconds"])
        if fault.kind == "drop":
            _kill_connection(environ)
            raise _Reply(Response(b"", status=500))  # never reaches the client: the socket is shut

    def _plain_response(
        self, body: bytes, content_type: str, headers: dict[str, str], fault: _Fault | None, environ: dict[str, Any]
    ) -> Response:
        kind = fault.kind if fault is not None else None
        if kind == "invalid_json":
            body, content_type = b'{"generated_text": "unterminated', "application/json"
        elif kind == "wrong_content_type":
            body, content_type = b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html; charset=utf-8"
        elif kind == "truncated":
            body = body[: max(1, len(body) // 2)]
        elif kind == "empty":
            body = b""
        elif kind == "drop_mid_body":
            full_length = len(body)

            def half_then_drop() -> Iterator[bytes]:
                yield body[: max(1, full_length // 2)]
                _kill_connection(environ)

            response = Response(
                half_then_drop(), status=200, headers=headers, content_type=content_type, direct_passthrough=True
            )
            response.headers["Content-Length"] = str(full_length)
            return response
        return Response(body, status=200, headers=headers, content_type=content_type)

    def _stream_response(
        self,
        events: list[bytes],
        content_type: str,
        headers: dict[str, str],
        fault: _Fault | None,
        environ: dict[str, Any],
        interval: float,
    ) -> Response:
        kind = fault.kind if fault is not None else None
        if kind == "invalid_json" and len(events) > 1:
            events = [events[0], b'data: {"choices": [{"delta": \n\n', *events[1:]]
        elif kind == "truncated":
            events = events[:1]

        def generate() -> Iterator[bytes]:
            for i, event in enumerate(events):
                if i:
                    self._sleep(interval)
                yield event
                if kind == "drop_mid_body":
                    _kill_connection(environ)
                    return

        headers = {**headers, "Cache-Control": "no-cache"}
        return Response(generate(), status=200, headers=headers, content_type=content_type, direct_passthrough=True)

    # ---- task computations -----------------------------------------------------------------------------------------

    def _text_to_image(self, model: FakeHFModel, request: Request) -> tuple[bytes, str]:
        payload = _parse_json(request.get_data())
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), str):
            raise _error(400, "Input validation error: `inputs` must be a string prompt")
        params = payload.get("parameters") or {}
        if not isinstance(params, dict):
            raise _error(400, "Input validation error: `parameters` must be an object")
        width = _dimension(params.get("width", model.size[0]), "width")
        height = _dimension(params.get("height", model.size[1]), "height")
        seed = params.get("seed")
        digest = hashlib.sha256(f"{payload['inputs']}|{seed}|{params.get('negative_prompt')}".encode()).digest()
        image = Image.new("RGB", (width, height), tuple(digest[:3]))
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 0, max(0, width // 4 - 1), max(0, height - 1)), fill=tuple(digest[3:6]))
        accept = request.headers.get("Accept", "image/png")
        if "image/jpeg" in accept and "image/png" not in accept:
            return _encode_image(image, "JPEG"), "image/jpeg"
        return _encode_image(image, "PNG"), "image/png"

    def _image_to_image(self, request: Request) -> tuple[bytes, str]:
        data, params = _binary_inputs(request)
        try:
            source = Image.open(io.BytesIO(data))
            source.load()
        except Exception as exc:
            raise _error(400, f"Could not decode the input image: {exc}") from exc
        image = ImageOps.invert(source.convert("RGB"))
        target = params.get("target_size")
        if isinstance(target, dict) and "width" in target and "height" in target:
            image = image.resize((_dimension(target["width"], "width"), _dimension(target["height"], "height")))
        return _encode_image(image, "PNG"), "image/png"

    def _text_to_speech(self, request: Request) -> tuple[bytes, str]:
        payload = _parse_json(request.get_data())
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), str):
            raise _error(400, "Input validation error: `inputs` must be a string")
        return make_wav(payload["inputs"]), "audio/wav"

    def _asr(self, request: Request) -> tuple[bytes, str]:
        data, params = _binary_inputs(request)
        if not data:
            raise _error(400, "Malformed soundfile: empty body")
        text, duration = wav_transcript(data)
        if text is None:
            text = f"fake transcript {hashlib.sha256(data).hexdigest()[:8]}"
        answer: dict[str, Any] = {"text": text}
        if params.get("return_timestamps", True) is not False:
            words = text.split() or [text]
            step = duration / len(words)
            answer["chunks"] = [
                {"timestamp": [round(i * step, 2), round((i + 1) * step, 2)], "text": word}
                for i, word in enumerate(words)
            ]
        return json.dumps(answer).encode(), "application/json"

    def _chat(self, model: FakeHFModel, payload: Any) -> Any:
        if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list) or not payload["messages"]:
            raise _error(422, "Input validation error: `messages` must be a non-empty list", error_type="validation")
        messages = payload["messages"]
        if callable(model.reply):
            text = model.reply(messages)
        elif model.reply is not None:
            text = model.reply
        else:
            last_user = next(
                (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), messages[-1]
            )
            text = f"Echo: {_message_text(last_user)}"
        tokens, finish = _limit(_tokens(text), payload.get("max_tokens"))
        prompt_tokens = sum(len(_message_text(m).split()) for m in messages if isinstance(m, dict))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        with self._lock:
            self._next_id += 1
            completion_id = f"chatcmpl-fake-{self._next_id:06d}"
        common = {"id": completion_id, "created": _CREATED, "model": model.model_id, "system_fingerprint": "fake-hf"}
        if not payload.get("stream"):
            return json.dumps(
                {
                    **common,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(tokens)},
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                }
            ).encode(), "application/json"
        chunk = {**common, "object": "chat.completion.chunk"}
        events = [
            _sse(
                {
                    **chunk,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": token},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
            )
            for token in tokens
        ]
        events.append(
            _sse(
                {
                    **chunk,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                    ],
                }
            )
        )
        options = payload.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            events.append(_sse({**chunk, "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        return events, "text/event-stream"

    def _text_generation(self, model: FakeHFModel, payload: Any) -> Any:
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), str):
            raise _error(422, "Input validation error: `inputs` must be a string", error_type="validation")
        prompt = payload["inputs"]
        params = payload.get("parameters") or {}
        if callable(model.reply):
            text = model.reply(prompt)
        elif model.reply is not None:
            text = model.reply
        else:
            text = f" and so on: {prompt}"
        tokens, finish = _limit(_tokens(text), params.get("max_new_tokens"))
        finish = "length" if finish == "length" else "eos_token"
        generated = "".join(tokens) if not params.get("return_full_text") else prompt + "".join(tokens)
        details = {"finish_reason": finish, "generated_tokens": len(tokens), "seed": params.get("seed")}
        if not payload.get("stream"):
            answer: dict[str, Any] = {"generated_text": generated}
            if params.get("details"):
                answer["details"] = {
                    **details,
                    "prefill": [],
                    "tokens": [{"id": i, "text": t, "logprob": -0.5, "special": False} for i, t in enumerate(tokens)],
                }
            return json.dumps([answer]).encode(), "application/json"
        events = []
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            events.append(
                _sse(
                    {
                        "index": i,
                        "token": {"id": i, "text": token, "logprob": -0.5, "special": False},
                        "generated_text": generated if last else None,
                        "details": {**details, "input_length": len(prompt.split())} if last else None,
                        "top_tokens": None,
                    }
                )
            )
        return events, "text/event-stream"


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def _kill_connection(environ: dict[str, Any]) -> None:
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _parse_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _error(400, f"Invalid JSON body: {exc}") from exc


def _binary_inputs(request: Request) -> tuple[bytes, dict[str, Any]]:
    """Raw bytes (no parameters) or ``{"inputs": <base64>, "parameters": {...}}``, as the client sends them."""
    data = request.get_data()
    if "json" in (request.content_type or "") or data[:1] == b"{":
        payload = _parse_json(data)
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), str):
            raise _error(400, "Input validation error: `inputs` must be base64 data")
        try:
            raw = base64.b64decode(payload["inputs"], validate=True)
        except ValueError as exc:
            raise _error(400, f"Input validation error: `inputs` is not base64: {exc}") from exc
        params = payload.get("parameters") or {}
        return raw, params if isinstance(params, dict) else {}
    return data, {}


def _dimension(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 2048:
        raise _error(400, f"Input validation error: `{name}` must be a number of pixels from 1 to 2048")
    return int(value)


def _encode_image(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _tokens(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text) or [text]


def _limit(tokens: list[str], maximum: Any) -> tuple[list[str], str]:
    if isinstance(maximum, int) and not isinstance(maximum, bool) and 0 < maximum < len(tokens):
        return tokens[:maximum], "length"
    return tokens, "stop"


def _message_text(message: Any) -> str:
    if not isinstance(message, dict):
        return str(message)
    content = message.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, {"type": "image_url", ...}]
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _ratelimit_headers(
    limit: int, remaining: int, reset: int, window: int, retry_after: int | None, style: str = "ietf"
) -> dict[str, str]:
    if style == "combined":
        headers = {"RateLimit": f"limit={limit}, remaining={remaining}, reset={reset}"}
    else:
        headers = {
            "RateLimit": f'"api";r={remaining};t={reset}',
            "RateLimit-Policy": f'"fixed window";"api";q={limit};w={window}',
        }
    headers.update(
        {"RateLimit-Limit": str(limit), "RateLimit-Remaining": str(remaining), "RateLimit-Reset": str(reset)}
    )
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return headers


def make_wav(text: str) -> bytes:
    """Deterministic 16 kHz mono 16-bit WAV for ``text`` (0.25 s a word), with ``text`` kept in a private chunk
    after the samples so the fake's speech recognition can give it back (``wave`` ignores the chunk)."""
    seconds = min(20.0, 0.25 * max(1, len(text.split())))
    frequency = 220 + int.from_bytes(hashlib.sha256(text.encode()).digest()[:2], "big") % 440
    samples = array.array(
        "h",
        (int(8000 * math.sin(2 * math.pi * frequency * i / _SAMPLE_RATE)) for i in range(int(seconds * _SAMPLE_RATE))),
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(_SAMPLE_RATE)
        out.writeframes(samples.tobytes())
    encoded = text.encode()
    chunk = _WAV_TEXT_CHUNK + struct.pack("<I", len(encoded)) + encoded + (b"\0" if len(encoded) % 2 else b"")
    data = bytearray(buffer.getvalue() + chunk)
    data[4:8] = struct.pack("<I", len(data) - 8)
    return bytes(data)


def wav_transcript(data: bytes) -> tuple[str | None, float]:
    """(text a fake TTS call embedded or None, duration in seconds) of audio bytes."""
    duration = len(data) / (2 * _SAMPLE_RATE)
    text = None
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        with contextlib.suppress(wave.Error, EOFError, struct.error), wave.open(io.BytesIO(data), "rb") as reader:
            duration = reader.getnframes() / reader.getframerate()
        offset = 12
        while offset + 8 <= len(data):
            name, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
            if name == _WAV_TEXT_CHUNK:
                text = data[offset + 8 : offset + 8 + size].decode("utf-8", "replace")
                break
            offset += 8 + size + (size % 2)
    return text, max(duration, 0.01)


# --------------------------------------------------------------------------------------------------------------------
# Host-rewriting httpx2 clients, for the client's own provider routing
# --------------------------------------------------------------------------------------------------------------------


def _routed_hosts() -> frozenset[str]:
    from huggingface_hub import constants

    hosts = set(ROUTED_HOSTS)
    for url in (
        constants.ENDPOINT,
        constants.INFERENCE_ENDPOINT,
        constants.INFERENCE_PROXY_TEMPLATE.format(provider="x"),
    ):
        host = urlsplit(url).hostname
        if host:
            hosts.add(host)
    return frozenset(hosts)


def _rewrite(server: FakeHF, hosts: frozenset[str], request: httpx2.Request) -> httpx2.Request:
    host = request.url.host
    if host in ("127.0.0.1", "localhost", "::1"):
        return request
    if host not in hosts:
        raise httpx2.ConnectError(
            f"FakeHF routing transport refuses to reach {host} (tests are offline)", request=request
        )
    url = request.url.copy_with(scheme="http", host="127.0.0.1", port=server.port)
    headers = httpx2.Headers(request.headers)
    headers["Host"] = host  # the fake records which public host the client meant
    return httpx2.Request(request.method, url, headers=headers, stream=request.stream, extensions=request.extensions)


class _RewritingTransport(httpx2.BaseTransport):
    def __init__(self, server: FakeHF) -> None:
        self._server = server
        self._hosts = _routed_hosts()
        self._inner = httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return self._inner.handle_request(_rewrite(self._server, self._hosts, request))

    def close(self) -> None:
        self._inner.close()


class _AsyncRewritingTransport(httpx2.AsyncBaseTransport):
    def __init__(self, server: FakeHF) -> None:
        self._server = server
        self._hosts = _routed_hosts()
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await self._inner.handle_async_request(_rewrite(self._server, self._hosts, request))

    async def aclose(self) -> None:
        await self._inner.aclose()


def hf_client_factory(server: FakeHF) -> Callable[[], httpx2.Client]:
    """A factory for ``huggingface_hub.set_client_factory``: an ``httpx2.Client`` like the library's default (same
    request hook, so ``HF_HUB_OFFLINE`` still applies) whose transport sends ``huggingface.co``,
    ``router.huggingface.co`` and ``api-inference.huggingface.co`` to ``server``, lets loopback through and refuses
    any other host."""
    from huggingface_hub.utils._http import hf_request_event_hook

    def factory() -> httpx2.Client:
        return httpx2.Client(
            transport=_RewritingTransport(server),
            event_hooks={"request": [hf_request_event_hook]},
            follow_redirects=True,
            timeout=None,
        )

    return factory


def hf_async_client_factory(server: FakeHF) -> Callable[[], httpx2.AsyncClient]:
    """The same for ``huggingface_hub.set_async_client_factory`` (``AsyncInferenceClient``). The async client still
    makes its Hub look-ups with the sync session, so install both (:func:`fake_hf_routing` does)."""
    from huggingface_hub.utils._http import async_hf_request_event_hook, async_hf_response_event_hook

    def factory() -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            transport=_AsyncRewritingTransport(server),
            event_hooks={"request": [async_hf_request_event_hook], "response": [async_hf_response_event_hook]},
            follow_redirects=True,
            timeout=None,
        )

    return factory


def clear_hf_lookup_caches() -> None:
    """Forget the client's per-process model look-ups (``lru_cache``: provider mapping, task check, recommended
    models), so the next call asks the (fake) Hub again."""
    from huggingface_hub.inference._providers import _common, hf_inference

    _common._fetch_inference_provider_mapping.cache_clear()
    hf_inference._check_supported_task.cache_clear()
    hf_inference._fetch_recommended_models.cache_clear()


@contextlib.contextmanager
def fake_hf_routing(server: FakeHF) -> Iterator[FakeHF]:
    """Install :func:`hf_client_factory` and :func:`hf_async_client_factory` for ``server`` and clear the look-up
    caches; on exit restore the previous factories and clear the caches again."""
    import huggingface_hub
    from huggingface_hub.utils import _http

    previous_sync = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)
    previous_async = getattr(_http, "_GLOBAL_ASYNC_CLIENT_FACTORY", _http.default_async_client_factory)
    clear_hf_lookup_caches()
    huggingface_hub.set_client_factory(hf_client_factory(server))
    huggingface_hub.set_async_client_factory(hf_async_client_factory(server))
    try:
        yield server
    finally:
        huggingface_hub.set_client_factory(previous_sync)
        huggingface_hub.set_async_client_factory(previous_async)
        clear_hf_lookup_caches()
