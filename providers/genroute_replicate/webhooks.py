"""A webhook receiver for Replicate: a plain ASGI app (no framework) that completes submitted jobs.

    app = create_app(router, tolerance=300)      # serve with any ASGI server: `genroute webhooks serve`

For each ``POST``: the Standard Webhooks signature is checked with ``replicate``'s own validator and a
timestamp tolerance (a bad signature or a stale timestamp → 401, nothing touched); non-terminal events
are acknowledged and ignored; a prediction no job knows yet → 404 (so Replicate retries: a fast
prediction's webhook can arrive before the job is recorded); a webhook id seen before → 200 without
touching the ledger; else ``router.acomplete("replicate", prediction_id, payload)`` settles and stores
the result once.

The signing secret comes from the ``secret`` argument, else the environment variable named by
``webhook_secret_env`` (default ``REPLICATE_WEBHOOK_SECRET``), else ``GET /v1/webhooks/default/secret``
— never from a file. It is never logged or sent back.
"""

from __future__ import annotations

import binascii
import json
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from replicate.webhook import InvalidTimestampError, Webhooks, WebhookSigningSecret, WebhookValidationError

from genroute.errors import GenrouteError
from genroute.router import Router
from genroute.secrets import redact

from .creates import TERMINAL
from .options import options_for

log = logging.getLogger("genroute.replicate.webhooks")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROVIDER = "replicate"
MAX_BODY_BYTES = 5 * 1024 * 1024
STATUSES = frozenset({"starting", "processing", *TERMINAL})  # what Replicate's predictions can be


def create_app(
    router: Router,
    *,
    secret: str | None = None,
    tolerance: int | None = 300,
    keep_seconds: float | None = None,
    close_router_on_shutdown: bool = False,
) -> ASGIApp:
    """The ASGI app. ``tolerance`` (seconds) must be positive: a receiver that accepts any timestamp
    accepts replays of captured deliveries forever."""
    if tolerance is None or tolerance <= 0:
        raise ValueError("tolerance must be a positive number of seconds (None would skip the timestamp check)")
    options = options_for(router.settings, router.provider_options.get(PROVIDER))
    keep = keep_seconds if keep_seconds is not None else options.webhook_replay_keep_seconds
    state: dict[str, str | None] = {"secret": secret.strip() if secret else None}

    async def signing_secret() -> str:
        if state["secret"]:
            return state["secret"]
        from_env = os.environ.get(options.webhook_secret_env, "").strip()
        if from_env:
            state["secret"] = from_env
            return from_env
        provider = router.providers.get(PROVIDER)
        fetch = getattr(provider, "webhook_secret", None)
        if fetch is None:
            raise GenrouteError("the replicate provider is not installed", hint="install genroute's Replicate plugin")
        fetched = str(await fetch(router.settings))
        state["secret"] = fetched
        return fetched

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            closing = router if close_router_on_shutdown else None
            await _lifespan(receive, send, signing_secret, closing, options.webhook_secret_env)
            return
        if scope["type"] != "http":
            return
        if scope.get("method") != "POST":
            await _respond(send, 405, {"error": "only POST is accepted"}, extra=[(b"allow", b"POST")])
            return
        body = await _read_body(receive)
        if body is None:
            await _respond(send, 413, {"error": "body too large"})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            key = await signing_secret()
        except Exception as exc:
            log.error("no webhook signing secret: %s", redact(str(exc)))
            await _respond(send, 503, {"error": "the receiver has no signing secret"})
            return
        status, answer = await handle(router, headers, body, key, tolerance=tolerance, keep_seconds=keep)
        await _respond(send, status, answer)

    return app


async def handle(
    router: Router, headers: dict[str, str], body: bytes, secret: str, *, tolerance: int, keep_seconds: float
) -> tuple[int, dict[str, Any]]:
    """Verify, filter, de-duplicate and complete one delivery; (HTTP status, JSON answer)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return 400, {"error": "body is not UTF-8"}
    try:
        Webhooks.validate(headers=headers, body=text, secret=WebhookSigningSecret(key=secret), tolerance=tolerance)
    except InvalidTimestampError:
        log.warning("webhook %s refused: timestamp outside %ss", headers.get("webhook-id", "?"), tolerance)
        return 401, {"error": "stale or invalid timestamp"}
    except (WebhookValidationError, ValueError, binascii.Error):
        # Never echo the validator's message: for a malformed secret it contains the secret.
        log.warning("webhook %s refused: bad signature", headers.get("webhook-id", "?"))
        return 401, {"error": "invalid signature"}
    try:
        payload = json.loads(text)
    except ValueError:
        return 400, {"error": "body is not JSON"}
    problem = prediction_problem(payload)
    if problem is not None:
        log.warning("webhook %s refused: body is not a prediction (%s)", headers.get("webhook-id", "?"), problem)
        return 400, {"error": f"body is not a prediction: {problem}"}
    prediction_id, status = payload["id"], payload["status"]
    if status not in TERMINAL:
        return 200, {"ignored": f"intermediate event (status {status})"}
    job = router.jobs.find(PROVIDER, prediction_id)
    if job is None:
        # Possibly faster than the submitting process recording its job: a non-2xx makes Replicate retry.
        return 404, {"error": f"no job for prediction {prediction_id}"}
    if job.status != "pending":
        return 200, {"job": job.id, "status": job.status, "duplicate": True}
    if not router.jobs.first_sighting(headers["webhook-id"], keep_seconds=keep_seconds):
        return 200, {"job": job.id, "status": job.status, "duplicate": True}
    try:
        done = await router.acomplete(PROVIDER, prediction_id, payload)
    except BaseException as exc:
        # Not handled: let Replicate's retry of this very delivery through instead of ignoring it as a replay.
        router.jobs.forget_sighting(headers["webhook-id"])
        if isinstance(exc, GenrouteError):  # say, the outputs' download failed for now: the job stays pending
            why = redact(exc.message)
            log.warning("job %s (prediction %s) not completed yet: %s", job.id, prediction_id, why)
            return 503, {"error": why, "retry": True}
        raise
    log.info("job %s (prediction %s): %s", done.id, prediction_id, done.status)
    return 200, {"job": done.id, "status": done.status}


def prediction_problem(payload: Any) -> str | None:
    """Why ``payload`` is not a prediction as Replicate sends one (a short reason), or None when it is."""
    if not isinstance(payload, dict):
        return "not a JSON object"
    pid = payload.get("id")
    if not isinstance(pid, str) or not pid.strip():
        return "id is not a non-empty string"
    status = payload.get("status")
    if not isinstance(status, str) or status not in STATUSES:
        return "status is not one of " + ", ".join(sorted(STATUSES))
    if not isinstance(payload.get("output"), str | list | dict | type(None)):
        return "output is not a string, list, object or null"
    if not isinstance(payload.get("metrics"), dict | type(None)):
        return "metrics is not an object or null"
    if not isinstance(payload.get("error"), str | dict | type(None)):
        return "error is not a string, object or null"
    return None


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _respond(
    send: Send, status: int, payload: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(
    receive: Receive,
    send: Send,
    signing_secret: Callable[[], Awaitable[str]],
    router: Router | None,
    env_name: str,
) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await signing_secret()  # fail at start, not at the first delivery
            except Exception as exc:
                if isinstance(exc, GenrouteError):  # it says what failed and what to do
                    why = f"no webhook signing secret: {exc.message} — {exc.hint}"
                else:
                    why = f"no webhook signing secret ({exc}); set {env_name} or REPLICATE_API_TOKEN"
                await send({"type": "lifespan.startup.failed", "message": redact(why)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if router is not None:
                await router.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
