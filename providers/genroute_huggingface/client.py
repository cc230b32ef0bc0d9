"""The ``AsyncInferenceClient``: the token, where calls go, one client per event loop, and compute-time metering.

- The token comes from ``HF_TOKEN`` only and is handed to the client explicitly, so the client never falls back
  to a token file. It is never logged, put in a message or kept anywhere else.
- With ``base_url`` set, a model ``org/name`` is called as the URL ``<base_url>/models/org/name`` (provider
  hf-inference at that URL, no Hub look-ups); without it the client's own routing is used with provider
  ``hf-inference`` (never ``auto``, which may pick a paid third-party provider).
- ``huggingface_hub`` looks up "AI agent harnesses" on the Hub (``GET {HF_ENDPOINT}/api/agent-harnesses``, a blocking
  call of up to 3 s, made the first time it builds request headers, inside the event loop) for its User-Agent
  telemetry. The provider turns that telemetry off (``HF_HUB_DISABLE_TELEMETRY``, :func:`quiet_hub_telemetry`), so
  that calls under ``base_url`` make no Hub look-up and no call waits on one.
- The service reports billed compute in an ``x-compute-time`` header the client does not surface. A response hook
  on the client's ``httpx2`` session records it into the :class:`ComputeMeter` of the running call. The session is
  reached through the client's private ``_get_async_client``; if that ever disappears, nothing is measured and the
  cost settles on the catalogue's ``est_seconds``. A request hook counts the requests sent, so that a call that
  timed out is known to have been sent without an answer (it may have run and been billed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final

import httpx2
from huggingface_hub import AsyncInferenceClient, constants

from .options import HuggingFaceOptions

log = logging.getLogger("genroute_huggingface")

TOKEN_VARIABLE = "HF_TOKEN"
HF_INFERENCE: Final = "hf-inference"


def token_from_env() -> str | None:
    """``HF_TOKEN``, or None when unset or blank."""
    return (os.environ.get(TOKEN_VARIABLE) or "").strip() or None


def model_target(options: HuggingFaceOptions, model: str) -> str:
    """What to pass as the client's ``model=``: a URL under ``base_url``, or the model id for the client's routing."""
    if options.base_url is None or model.startswith(("http://", "https://")):
        return model
    return f"{options.base_url}/models/{model}"


@dataclass
class ComputeMeter:
    """Compute seconds the service billed for the successful answers of one run, and the requests in flight."""

    answers: int = 0
    measured: int = 0
    seconds: float = 0.0
    sent: int = 0  # requests handed to the connection (counted before it is made)
    responses: int = 0  # answers received, whatever their status

    def record(self, response: httpx2.Response) -> None:
        self.responses += 1
        if not 200 <= response.status_code < 300:
            return  # loading 503s, 429s and errors are not billed
        self.answers += 1
        value = response.headers.get("x-compute-time")
        try:
            seconds = float(value) if value is not None else None
        except ValueError:
            seconds = None
        if seconds is not None and seconds >= 0:
            self.measured += 1
            self.seconds += seconds

    @property
    def unanswered(self) -> bool:
        """Whether the last request had no answer yet; True when requests are not counted (unknown: assume so)."""
        return self.sent == 0 or self.sent > self.responses

    @property
    def total(self) -> float | None:
        """Billed seconds when every answer reported them, else None (settle on the estimate)."""
        return round(self.seconds, 6) if self.answers and self.measured == self.answers else None


_METER: ContextVar[ComputeMeter | None] = ContextVar("genroute_huggingface_meter", default=None)


@contextlib.contextmanager
def metering(meter: ComputeMeter) -> Iterator[ComputeMeter]:
    """Record the compute time of responses received in this context (this task) into ``meter``."""
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


async def _record_compute_time(response: httpx2.Response) -> None:
    meter = _METER.get()
    if meter is not None:
        meter.record(response)


async def _count_request(request: httpx2.Request) -> None:
    meter = _METER.get()
    if meter is not None:
        meter.sent += 1


def quiet_hub_telemetry() -> None:
    """Turn off ``huggingface_hub``'s telemetry, as ``HF_HUB_DISABLE_TELEMETRY=1`` does (the library reads that
    variable once, at import, into ``constants.HF_HUB_DISABLE_TELEMETRY``, which is what it checks on each call).

    Telemetry only: the User-Agent then names no torch version and no AI agent, and the agent detection behind
    it never fetches its registry from the Hub — a blocking ``GET`` of up to 3 s on first use, made from inside the
    event loop (so stalling every request in flight), and a call to huggingface.co even with ``base_url`` set.
    """
    constants.HF_HUB_DISABLE_TELEMETRY = True


def new_client(options: HuggingFaceOptions, token: str) -> AsyncInferenceClient:
    quiet_hub_telemetry()  # before the client builds its first headers
    timeout = options.request_timeout_seconds
    if options.base_url is not None:  # a URL model means hf-inference at that URL
        return AsyncInferenceClient(token=token, timeout=timeout)
    return AsyncInferenceClient(provider=HF_INFERENCE, token=token, timeout=timeout)


async def close_client(client: AsyncInferenceClient) -> None:
    await client.close()  # type: ignore[no-untyped-call]  # untyped in huggingface_hub 2.4.0


async def install_meter(client: AsyncInferenceClient) -> bool:
    """Add the compute-time hook to the client's ``httpx2`` session; False when that session is out of reach."""
    get_session = getattr(client, "_get_async_client", None)
    if get_session is None:
        return False
    try:
        session = await get_session()
        hooks = session.event_hooks
        if _record_compute_time not in hooks.get("response", []):
            session.event_hooks = {
                "request": [*hooks.get("request", []), _count_request],
                "response": [*hooks.get("response", []), _record_compute_time],
            }
    except Exception:  # a future client without this seam: settle on the estimate instead
        log.debug("cannot reach the AsyncInferenceClient's httpx2 session; compute time is not measured", exc_info=True)
        return False
    return True


class ClientPool:
    """One shared client per event loop (and token/options), for the calls that do not stream.

    A stream takes a client of its own (:meth:`dedicated`): the client keeps each streamed response open in its
    exit stack until it is closed, and a stream dies with its client, so the stream holds it to the end.
    """

    def __init__(self) -> None:
        self._shared: tuple[tuple[object, ...], AsyncInferenceClient] | None = None

    async def shared(self, options: HuggingFaceOptions, token: str) -> AsyncInferenceClient:
        loop = asyncio.get_running_loop()
        key: tuple[object, ...] = (loop, options.base_url, options.request_timeout_seconds)
        if self._shared is not None and self._shared[0] == key and self._shared[1].token == token:
            return self._shared[1]
        await self._close_shared(loop)
        client = new_client(options, token)
        self._shared = (key, client)  # before any await: concurrent first calls share this one
        await install_meter(client)
        return client

    async def dedicated(self, options: HuggingFaceOptions, token: str) -> AsyncInferenceClient:
        client = new_client(options, token)
        await install_meter(client)
        return client

    async def _close_shared(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._shared is None:
            return
        key, client = self._shared
        self._shared = None
        if key[0] is loop:  # a client of another (finished) loop cannot be closed from here; it is dropped
            with contextlib.suppress(Exception):
                await close_client(client)

    async def aclose(self) -> None:
        await self._close_shared(asyncio.get_running_loop())
