"""The real ``replicate.Client`` (and a plain httpx client for downloads), one pair per event loop.

httpx clients belong to the event loop they were first used on, and one provider object serves every
loop a Router runs (``asyncio.Runner`` for the sync API, the caller's loop for the async one), so the
clients are kept per loop. The token is read from ``REPLICATE_API_TOKEN`` when a client is built and
lives only in that client's headers: it is never logged, stored or put in a message.

The client turns every 4xx/5xx into ``ReplicateError`` and drops the response, ``Retry-After`` and the
``invalid_fields`` list with it; an httpx response hook raises :class:`ApiStatusError` first, which keeps them.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from replicate.client import Client

from .options import TOKEN_VARIABLE, ReplicateOptions

TransportFactory = Callable[[], httpx.AsyncBaseTransport]

_THROTTLE_DETAIL = re.compile(r"available in (\d+(?:\.\d+)?) second", re.IGNORECASE)


class ApiStatusError(Exception):
    """An HTTP error answer from the Replicate API, with what the client would have dropped."""

    def __init__(
        self,
        status: int,
        *,
        method: str,
        path: str,
        title: str | None = None,
        detail: str | None = None,
        retry_after: float | None = None,
        invalid_fields: list[dict[str, Any]] | None = None,
    ) -> None:
        self.status = status
        self.method = method
        self.path = path
        self.title = title
        self.detail = detail
        self.retry_after = retry_after
        self.invalid_fields = invalid_fields or []
        super().__init__(self.summary())

    def summary(self) -> str:
        text = " — ".join(part.strip() for part in (self.title, self.detail) if part and part.strip())
        return f"HTTP {self.status} on {self.method} {self.path}" + (f": {text}" if text else "")

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiStatusError:
        title: str | None = None
        detail: str | None = None
        fields: list[dict[str, Any]] = []
        try:
            data = json.loads(response.content or b"null")
        except ValueError:
            data = None
        if isinstance(data, dict):
            title = _text(data.get("title"))
            detail = _text(data.get("detail"))
            raw_fields = data.get("invalid_fields")
            if isinstance(raw_fields, list):
                fields = [f for f in raw_fields if isinstance(f, dict)]
        elif response.content:
            # Not a problem document (an HTML error page from a proxy): keep a short, plain excerpt.
            detail = re.sub(r"\s+", " ", response.text)[:200]
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is None and response.status_code == 429 and detail:
            match = _THROTTLE_DETAIL.search(detail)
            retry_after = float(match.group(1)) if match else None
        return cls(
            response.status_code,
            method=response.request.method,
            path=response.request.url.path,
            title=title,
            detail=detail,
            retry_after=retry_after,
            invalid_fields=fields,
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` value: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if seconds == seconds else None  # NaN guard


async def _raise_api_errors(response: httpx.Response) -> None:
    """httpx response hook: raise ApiStatusError (with Retry-After) before the client drops it."""
    if response.status_code >= 400:
        await response.aread()
        raise ApiStatusError.from_response(response)


class _AsyncOnly(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """``replicate.Client`` hands one transport to its sync and its async httpx client; we only use async."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError("genroute's Replicate provider uses only the async client")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+)")


def _is_create(request: httpx.Request) -> bool:
    """A prediction create: ``POST`` to ``/v1/predictions``, ``/v1/models/…/predictions`` or a deployment's."""
    path = request.url.path.rstrip("/")
    if request.method != "POST":
        return False
    return path == "/v1/predictions" or (
        path.endswith("/predictions") and path.startswith(("/v1/models/", "/v1/deployments/"))
    )


class CreateTimeouts(_AsyncOnly):
    """Gives a prediction create the read timeout ``create_timeout_seconds`` beyond its ``Prefer: wait``.

    The client sets a create's timeout itself (``wait`` + 0.5 s to read the answer, none at all without
    ``wait``), which a slow answer to a held create outlasts: a read timeout there is an ambiguous failure
    (the prediction may exist). httpx hands each request's timeouts to the transport in the request's
    ``timeout`` extension (public API); this replaces its read timeout, for creates only.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, create_timeout: float, connect_timeout: float) -> None:
        super().__init__(inner)
        self._create_timeout = create_timeout
        self._connect_timeout = connect_timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if _is_create(request):
            match = _PREFER_WAIT.search(request.headers.get("Prefer", ""))
            wait = int(match.group(1)) if match else 0
            timeouts = dict(request.extensions.get("timeout") or {})
            timeouts["read"] = wait + self._create_timeout
            for phase in ("connect", "write", "pool"):
                if timeouts.get(phase) is None:
                    timeouts[phase] = self._connect_timeout
            request.extensions = {**request.extensions, "timeout": timeouts}
        return await self._inner.handle_async_request(request)


def sdk_unretried(transport: httpx.AsyncBaseTransport) -> dict[str, httpx.AsyncBaseTransport]:
    """httpx ``mounts`` that send every request of the (unmodified) client through ``transport``, and once.

    ``replicate.Client`` wraps the ``transport=`` it is given in its RetryTransport, which would retry a GET on
    429/503/504 up to 10 times with backoff up to 60 s (longer with ``Retry-After``) inside each of the
    provider's polls, reconcile listings and schema fetches: those already retry with their own bounds
    (``poll_error_limit``, ``reconcile_attempts``, the router's attempts and deadline), so a status outage
    would hold a run for minutes. POSTs it never retries (a create is never re-sent blindly; see creates.py).
    A transport mounted for ``all://`` takes precedence over the client's transport for every URL (httpx
    looks up mounts first), and the client hands its extra keyword arguments to httpx as they are: this is
    public API on both sides, with no private attribute of the client touched.
    """
    return {"all://": transport}


def read_token() -> str | None:
    """``REPLICATE_API_TOKEN``, or None when unset or blank. The only place the token is read."""
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    return token or None


@dataclass
class Session:
    """One loop's clients: the authenticated Replicate client and an unauthenticated downloader."""

    client: Client
    http: httpx.AsyncClient
    options: ReplicateOptions
    account: str  # a short hash of the token: tells accounts apart without keeping the token anywhere else

    async def aclose(self) -> None:
        await self.client._async_client.aclose()
        await self.http.aclose()


class Sessions:
    """Sessions per (event loop, token, options); closed with :meth:`aclose` on their own loop."""

    def __init__(self, transport_factory: TransportFactory | None = None) -> None:
        self._factory = transport_factory
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[int, int], Session]] = (
            weakref.WeakKeyDictionary()
        )
        # hash(options.model_dump_json()) per options object (frozen), kept with it so its id stays its own
        self._option_keys: dict[int, tuple[ReplicateOptions, int]] = {}

    def _options_key(self, options: ReplicateOptions) -> int:
        known = self._option_keys.get(id(options))
        if known is not None and known[0] is options:
            return known[1]
        if len(self._option_keys) >= 64:
            self._option_keys.clear()
        key = hash(options.model_dump_json())
        self._option_keys[id(options)] = (options, key)
        return key

    def _transport(self) -> httpx.AsyncBaseTransport:
        inner = self._factory() if self._factory is not None else httpx.AsyncHTTPTransport()
        if isinstance(inner, httpx.BaseTransport):  # already serves both interfaces (a test's rewriting transport)
            return inner
        return _AsyncOnly(inner)

    def get(self, token: str, options: ReplicateOptions) -> Session:
        loop = asyncio.get_running_loop()
        sessions = self._by_loop.get(loop)
        if sessions is None:
            sessions = self._by_loop[loop] = {}
        key = (hash(token), self._options_key(options))
        session = sessions.get(key)
        if session is None:
            timeout = httpx.Timeout(
                options.read_timeout_seconds,
                connect=options.connect_timeout_seconds,
                pool=options.connect_timeout_seconds,
            )
            # One connection pool for the API and the downloads, as the SDK's own FileOutput has: httpcore
            # checks every idle connection of a pool on each request, so two pools of idle connections cost
            # more than one (the clients differ only in what they send: the download client has no token).
            transport = self._transport()
            client = Client(
                api_token=token,
                base_url=options.base_url,
                timeout=timeout,
                transport=transport,  # wrapped in the client's RetryTransport, unused: see sdk_unretried
                mounts=sdk_unretried(
                    CreateTimeouts(transport, options.create_timeout_seconds, options.connect_timeout_seconds)
                ),
                event_hooks={"response": [_raise_api_errors]},
            )
            client.poll_interval = options.poll_initial_seconds
            http = httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)
            account = hashlib.sha256(token.encode()).hexdigest()[:16]
            session = Session(client=client, http=http, options=options, account=account)
            sessions[key] = session
        return session

    async def aclose(self) -> None:
        """Close this loop's sessions (other loops' clients cannot be closed from here)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for session in self._by_loop.pop(loop, {}).values():
            await session.aclose()
