"""The Replicate provider: every genroute task on Replicate's models, through the real ``replicate`` client.

One run: the target's input schema (disk-cached) → the request mapped onto the model's inputs and
checked against the schema (nothing is spent on an input the model would refuse) → one create with
``Prefer: wait`` (reconciled, never repeated, when its outcome is unknown) → polls with backoff until
the prediction ends → outputs downloaded and checked → usage measured for settling. When the router's
deadline cancels the run, the prediction is cancelled remotely before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import httpx
from replicate.exceptions import ReplicateError
from replicate.prediction import Prediction
from replicate.stream import ServerSentEvent
from replicate.version import Versions

from genroute import billing, errors
from genroute.config import Settings
from genroute.jobs import Job
from genroute.media import MediaInput
from genroute.provider import Provider, RemoteJob, RunContext
from genroute.types import ModelEntry, Offer, ProviderOutput, RequestModel, Task, TextGeneration

from . import cost, inputs, job_fetch, outputs
from . import errors as mapping
from .client import ApiStatusError, Session, Sessions, TransportFactory, read_token
from .creates import TERMINAL, Predictions, Purpose, Target
from .options import TOKEN_VARIABLE, ReplicateOptions, options_for
from .schema import ModelSchema, RunsBy, SchemaCache, parse_openapi, validate_inputs

log = logging.getLogger("genroute.replicate")

NAME = "replicate"
_API_ERRORS = (ApiStatusError, ReplicateError, httpx.HTTPError, ValueError)
_CREDIT_FILE = "out-of-credit.json"
_CREDIT_RECHECK = 1.0  # seconds between looks at another process's out-of-credit record
_MEMO_LIMIT = 64  # settings/options pairs remembered (a Router holds one of each)
_SECRET_RETRY_PAUSES = (0.5, 1.0)  # fetching the webhook signing secret: three tries, 1.5 s of pauses


@dataclass(frozen=True)
class _Create:
    """A request ready to become a prediction: the session, what to run, its input and its create key."""

    session: Session
    target: Target
    values: dict[str, Any]
    key: tuple[str, str, str]
    schemas: SchemaCache


class ReplicateProvider(Provider):
    """Runs genroute requests on Replicate. ``transport_factory`` is for tests (a fake's rewriting transport)."""

    name = NAME
    options_model = ReplicateOptions
    supports_webhooks = True

    def __init__(self, *, transport_factory: TransportFactory | None = None) -> None:
        self._sessions = Sessions(transport_factory)
        self._predictions = Predictions()
        self._schema_caches: dict[tuple[Path, float], SchemaCache] = {}
        # state → (when the file was last looked at, what it was, until when it withdraws the provider)
        self._credit_until: dict[Path, tuple[float, tuple[int, int] | None, float]] = {}
        # Per-call work done once: options validated from a Settings, and the paths options derive from one.
        self._validated: dict[int, tuple[Settings, dict[str, Any], ReplicateOptions]] = {}
        self._paths: dict[tuple[int, int], tuple[ReplicateOptions, Settings, Path, SchemaCache]] = {}
        self._uploads: dict[tuple[str, str | None, str], tuple[str, float]] = {}

    # -- availability ---------------------------------------------------------------------------------
    def unavailable_reason(self, settings: Settings) -> str | None:
        if read_token() is None:
            return f"{TOKEN_VARIABLE} is not set"
        options = self._options_of(settings)
        until = self._withdrawn_until(self._state_and_schemas(options, settings)[0])
        if until:
            stamp = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            return f"out of credit (HTTP 402); withdrawn until {stamp} — add credit at replicate.com/account/billing"
        return None

    def forget_withdrawal(self, settings: Settings) -> str | None:
        """Come back after a 402 once the account has credit again: remove the out-of-credit record.

        Every process on the machine sees it gone within :data:`_CREDIT_RECHECK` seconds.
        """
        state = self._state_and_schemas(self._options_of(settings), settings)[0]
        self._credit_until.pop(state, None)  # read the record as it is now
        until = self._withdrawn_until(state)
        path = state / _CREDIT_FILE
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise errors.GenrouteError(
                f"could not remove the out-of-credit record {path}: {exc.strerror}",
                hint=f"delete {path} by hand, or wait until the withdrawal ends",
            ) from exc
        self._credit_until.pop(state, None)
        if until is None:
            return None
        stamp = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"out of credit (HTTP 402), withdrawn until {stamp}"

    def _withdrawn_until(self, state: Path) -> float | None:
        # Another process may record a 402 at any time: look at the file at most every _CREDIT_RECHECK
        # seconds (asked once per request, a stat each time would cost more than the check is worth), and
        # read it again only when it changed.
        now = time.time()
        known = self._credit_until.get(state)
        if known is not None and now - known[0] < _CREDIT_RECHECK:
            until = known[2]
        else:
            path = state / _CREDIT_FILE
            try:
                seen = os.stat(path)
                stamp: tuple[int, int] | None = (seen.st_ino, seen.st_mtime_ns)  # replaced by rename: a new inode
            except OSError:
                stamp = None
            if known is not None and known[1] == stamp:
                until = known[2]
            else:
                until = 0.0
                if stamp is not None:
                    try:
                        until = float(json.loads(path.read_text(encoding="utf-8"))["until"])
                    except (OSError, ValueError, KeyError, TypeError):
                        until = 0.0
            self._credit_until[state] = (now, stamp, until)
        return until if until > now else None

    def _withdraw(self, options: ReplicateOptions, settings: Settings) -> None:
        """After a 402: make no offers for ``credit_cooldown_seconds`` (shared with other processes on disk)."""
        if not options.credit_cooldown_seconds:
            return
        state = options.state_path(settings)
        until = time.time() + options.credit_cooldown_seconds
        try:
            state.mkdir(parents=True, exist_ok=True)
            tmp = state / f"{_CREDIT_FILE}.{os.getpid()}.tmp"  # per process: two may record at once
            tmp.write_text(json.dumps({"until": until}), encoding="utf-8")
            tmp.replace(state / _CREDIT_FILE)
            self._credit_until.pop(state, None)
        except OSError as exc:
            log.warning("could not record the out-of-credit cooldown in %s: %s", state, exc.strerror)
            self._credit_until[state] = (float("inf"), None, until)  # this process at least stops offering

    # -- running ----------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _creating(
        self, request: RequestModel, offer: Offer, ctx: RunContext, purpose: Purpose
    ) -> AsyncIterator[_Create]:
        """What every way of starting a prediction shares: errors mapped, the input mapped and checked, and
        this request's creates of this target and purpose one at a time (so none is ever made twice)."""
        options = options_for(ctx.settings, ctx.options)
        with self._guard(options, ctx.settings):
            session = self._session(options)
            target, values = await self._prepare(session, request, offer, ctx.settings)
            key = (ctx.request_key, target.schema.ref, purpose)
            async with self._predictions.exclusive(key):
                yield _Create(session, target, values, key, self._schema_cache(options, ctx.settings))

    async def run(self, request: RequestModel, offer: Offer, ctx: RunContext) -> ProviderOutput:
        async with self._creating(request, offer, ctx, "run") as create:
            session, key = create.session, create.key
            try:
                prediction = await self._predictions.obtain(
                    session,
                    create.target,
                    create.values,
                    key,
                    schemas=create.schemas,
                    wait=_wait_seconds(session.options, ctx),
                    orphaned_since=ctx.orphaned_since,
                )
            except asyncio.CancelledError:
                # Cut short during the held create: the create's own clean-up found and cancelled the prediction;
                # read what it produced (the cancel answers with the prediction) so the router settles that too.
                record = self._predictions.pending(key)
                if record is not None and record.prediction_id is not None:
                    await self._read_canceled(session, record.prediction_id, key, ctx, offer)
                raise
            except errors.ProviderError as exc:
                await self._abandon_if_last(session, key, ctx, offer, exc)
                raise
            try:
                prediction = await self._await_end(session, prediction, key, ctx, offer)
            except errors.ProviderError as exc:
                await self._abandon_if_last(session, key, ctx, offer, exc)
                raise
            return await self._finish(session, request.task_name, request, offer.entry, prediction, key)

    async def _await_end(
        self,
        session: Session,
        prediction: dict[str, Any],
        key: tuple[str, str, str],
        ctx: RunContext,
        offer: Offer,
    ) -> dict[str, Any]:
        try:
            return await self._predictions.wait(session, prediction)
        except asyncio.CancelledError:
            # The router's deadline (or the caller) gave up: stop the prediction so it stops billing.
            await self._stop(session, prediction, key, ctx, offer)
            raise

    async def _abandon_if_last(
        self,
        session: Session,
        key: tuple[str, str, str],
        ctx: RunContext,
        offer: Offer,
        exc: errors.ProviderError,
    ) -> None:
        """Failing with a prediction created: unless the router will ask again (and the next attempt adopt
        it), stop it, and carry what it billed into the failure so the ledger settles it."""
        if exc.retryable and ctx.attempt < ctx.settings.routing.max_attempts:
            return
        record = self._predictions.pending(key)
        if record is None or record.prediction_id is None:
            return
        await self._stop(session, {"id": record.prediction_id}, key, ctx, offer)
        billed = ctx.extra.pop("incurred", None)
        if isinstance(billed, Decimal) and billed > 0 and not exc.incurred:
            exc.incurred = billed

    async def _stop(
        self,
        session: Session,
        prediction: dict[str, Any],
        key: tuple[str, str, str],
        ctx: RunContext,
        offer: Offer,
    ) -> None:
        """Cancel remotely; what the canceled prediction billed goes to ``ctx.extra["incurred"]``.

        A cancel that could not be confirmed leaves a prediction that may run to its end: what that may cost (the
        offer's estimate, or more if it already used more) is reported, so the ledger never records less than
        Replicate bills, and a warning says how to cancel it by hand.
        """
        pid = str(prediction["id"])
        entry = offer.entry
        try:
            stopped = await self._predictions.stop(
                session, pid, measured=lambda seen: cost.incurred(entry, seen) is not None
            )
        except asyncio.CancelledError:  # interrupted again while cancelling: nothing is known of it
            self._predictions.forget(key)
            _report_unstopped(ctx, session, offer, pid, None, "interrupted while cancelling it")
            raise
        self._predictions.forget(key)
        if stopped.ended:
            _report_spent(ctx, entry, stopped.prediction)
        else:
            _report_unstopped(ctx, session, offer, pid, stopped.prediction, stopped.why)

    async def _read_canceled(
        self, session: Session, prediction_id: str, key: tuple[str, str, str], ctx: RunContext, offer: Offer
    ) -> None:
        """After a create cut short (its clean-up already cancelled the prediction): report what it billed."""
        try:
            async with asyncio.timeout(10):
                seen = await self._predictions._get(session, prediction_id)
        except Exception as exc:  # best effort, like the cancel itself: the router then knows nothing
            log.warning("could not read the cancelled prediction %s: %s", prediction_id, type(exc).__name__)
            return
        if seen is not None and seen.get("status") not in TERMINAL:
            await self._stop(session, seen, key, ctx, offer)  # the clean-up's cancel did not take: cancel now
            return
        self._predictions.forget(key)
        _report_spent(ctx, offer.entry, seen)

    async def stream(self, request: RequestModel, offer: Offer, ctx: RunContext) -> AsyncIterator[str]:
        if not isinstance(request, TextGeneration):
            async for piece in super().stream(request, offer, ctx):
                yield piece
            return
        async with self._creating(request, offer, ctx, "stream") as create:
            session, key = create.session, create.key
            prediction = await self._predictions.obtain(
                session,
                create.target,
                create.values,
                key,
                schemas=create.schemas,
                wait=None,
                stream=True,
                orphaned_since=ctx.orphaned_since,
            )
            url = (prediction.get("urls") or {}).get("stream")
            if not url or prediction.get("status") in TERMINAL:  # nothing to stream: the whole text at once
                prediction = await self._await_end(session, prediction, key, ctx, offer)
                output = await self._finish(session, request.task_name, request, offer.entry, prediction, key)
                ctx.extra["output"] = output
                if output.text:
                    yield output.text
                return
            pieces: list[str] = []
            finished = False
            try:
                async for piece in self._sse(session, prediction):
                    pieces.append(piece)
                    yield piece
                finished = True
            except (asyncio.CancelledError, GeneratorExit):
                if not finished:  # deadline, or the caller stopped reading: stop the billing too
                    await self._stop(session, prediction, key, ctx, offer)
                raise
            except (RuntimeError, *_API_ERRORS) as exc:  # an SSE `error` event, or the stream broke off
                log.info(
                    "the stream of %s ended early (%s); reading the prediction instead",
                    prediction.get("id"),
                    type(exc).__name__,
                )
            running = {**prediction, "status": "processing"}
            final = await self._await_end(session, running, key, ctx, offer)
            output = await self._finish(session, request.task_name, request, offer.entry, final, key)
            sent, full = "".join(pieces), output.text or ""
            if len(full) > len(sent) and full.startswith(sent):  # what the broken stream did not carry
                pieces.append(full[len(sent) :])
                yield pieces[-1]
            ctx.extra["output"] = output.model_copy(update={"text": "".join(pieces)})

    async def _sse(self, session: Session, prediction: dict[str, Any]) -> AsyncIterator[str]:
        """Text pieces from the prediction's ``urls.stream`` (the client's own SSE decoder)."""
        remote = Prediction(**prediction)
        remote._client = session.client
        events = cast(AsyncGenerator[ServerSentEvent, None], remote.async_stream())
        async with contextlib.aclosing(events):
            async for event in events:
                if event.event == ServerSentEvent.EventType.OUTPUT:
                    piece = str(event.data)
                    if piece:
                        yield piece

    async def submit(self, request: RequestModel, offer: Offer, ctx: RunContext, webhook_url: str) -> str:
        async with self._creating(request, offer, ctx, "submit") as create:
            prediction = await self._predictions.obtain(
                create.session,
                create.target,
                create.values,
                create.key,
                schemas=create.schemas,
                wait=None,
                webhook=webhook_url,
            )
            self._predictions.forget(create.key)  # the job record owns it from here
            return str(prediction["id"])

    async def complete(self, job: Job, payload: Any, ctx: RunContext) -> ProviderOutput:
        """A verified webhook's prediction JSON as output (files downloaded); failed → ModelFailed."""
        if not isinstance(payload, dict) or "status" not in payload:
            raise errors.ProviderError("webhook payload is not a prediction", provider=NAME)
        if payload.get("status") not in TERMINAL:
            raise errors.ProviderError(
                f"prediction {payload.get('id')} has not finished", provider=NAME, retryable=True
            )
        options = options_for(ctx.settings, ctx.options)
        session = self._sessions.get(read_token() or "", options)  # downloads need no token
        return await self._finish(session, job.task, None, job.offer.entry, payload, None)

    async def fetch_job(self, job: Job, ctx: RunContext) -> RemoteJob | None:
        """``GET /v1/predictions/{id}``: the prediction JSON a webhook delivery of its state would carry."""
        return await job_fetch.fetch_job(self, job, ctx)

    async def webhook_secret(self, settings: Settings, validated: ReplicateOptions | None = None) -> str:
        """The webhook signing secret: from the environment variable ``webhook_secret_env``, else the API."""
        options = options_for(settings, validated)
        from_env = os.environ.get(options.webhook_secret_env, "").strip()
        if from_env:
            return from_env
        if read_token() is None:
            raise errors.AuthenticationFailed(
                f"it has no webhook signing secret: neither {options.webhook_secret_env} nor {TOKEN_VARIABLE} is set",
                provider=NAME,
                hint=f"set {options.webhook_secret_env}, or {TOKEN_VARIABLE} to fetch the secret from the API",
            )
        session = self._session(options)
        for tries in range(1, len(_SECRET_RETRY_PAUSES) + 2):
            try:
                secret = await session.client.webhooks.default.async_secret()
                return str(secret.key)
            except _API_ERRORS as exc:
                failure, passing = _secret_failure(exc)
                if passing and tries <= len(_SECRET_RETRY_PAUSES):
                    log.info("fetching the webhook signing secret failed (%s); trying again", failure)
                    await asyncio.sleep(_SECRET_RETRY_PAUSES[tries - 1])
                    continue
                what = f"could not fetch the webhook signing secret: {failure} on GET /v1/webhooks/default/secret"
                if tries > 1:
                    what += f" ({tries} tries)"
                if passing:
                    raise errors.ProviderUnavailable(
                        what,
                        provider=NAME,
                        hint=f"{TOKEN_VARIABLE} is set; try again later, or set {options.webhook_secret_env} to the "
                        "signing secret (shown by GET /v1/webhooks/default/secret)",
                    ) from exc
                raise errors.ProviderError(
                    what,
                    provider=NAME,
                    hint=f"{TOKEN_VARIABLE} is set, but Replicate did not give the secret for it: check the token "
                    f"(replicate.com/account/api-tokens), or set {options.webhook_secret_env} to the signing secret",
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- pieces -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self, options: ReplicateOptions, settings: Settings) -> Any:
        """Client and httpx errors as genroute errors; a 402 also withdraws the provider for a while."""
        try:
            yield
        except errors.OutOfCredit:
            self._withdraw(options, settings)
            raise
        except errors.ProviderError:
            raise
        except _API_ERRORS as exc:
            mapped = mapping.from_exception(exc)
            if isinstance(mapped, errors.OutOfCredit):
                self._withdraw(options, settings)
            raise mapped from exc

    def _session(self, options: ReplicateOptions) -> Session:
        token = read_token()
        if token is None:
            raise errors.AuthenticationFailed(
                f"{TOKEN_VARIABLE} is not set",
                provider=NAME,
                hint=f"export {TOKEN_VARIABLE}=<token from replicate.com/account/api-tokens>",
            )
        return self._sessions.get(token, options)

    def _schema_cache(self, options: ReplicateOptions, settings: Settings) -> SchemaCache:
        return self._state_and_schemas(options, settings)[1]

    def _options_of(self, settings: Settings) -> ReplicateOptions:
        """``options_for(settings)``, validated once per settings object and options table."""
        raw = settings.provider(NAME).options
        known = self._validated.get(id(settings))
        if known is not None and known[0] is settings and known[1] == raw:
            return known[2]
        options = options_for(settings)
        if len(self._validated) >= _MEMO_LIMIT:
            self._validated.clear()
        self._validated[id(settings)] = (settings, copy.deepcopy(raw), options)
        return options

    def _state_and_schemas(self, options: ReplicateOptions, settings: Settings) -> tuple[Path, SchemaCache]:
        """The state directory and the schema cache of these options under these settings.

        Worked out once per (options, settings) pair: both are frozen, and the entry holds them, so their ids
        stay theirs while it is kept. Paths under ``~`` are worked out every time (they follow ``$HOME``).
        """
        key = (id(options), id(settings))
        known = self._paths.get(key)
        if known is not None and known[0] is options and known[1] is settings:
            return known[2], known[3]
        state = options.state_path(settings)
        schemas = options.schema_path(settings)
        cache_key = (schemas, options.schema_cache_ttl_seconds)
        cache = self._schema_caches.get(cache_key)
        if cache is None:
            cache = self._schema_caches[cache_key] = SchemaCache(*cache_key)
        if not any(str(p).startswith("~") for p in (options.state_dir, options.schema_cache_dir) if p is not None):
            if len(self._paths) >= _MEMO_LIMIT:
                self._paths.clear()
            self._paths[key] = (options, settings, state, cache)
        return state, cache

    async def _prepare(
        self, session: Session, request: RequestModel, offer: Offer, settings: Settings
    ) -> tuple[Target, dict[str, Any]]:
        """The target (schema fetched or cached) and the checked, encoded inputs. Spends nothing."""
        entry = offer.entry
        cache = self._schema_cache(session.options, settings)
        ref = f"deployment:{entry.deployment}" if entry is not None and entry.deployment else offer.model
        schema = cache.get(ref)
        if schema is None:
            schema = await self._fetch_schema(session, ref)
            cache.put(schema)
        # Official models are billed per output; a per-second model is a community one: try it by version.
        guess: RunsBy | None = "version" if entry is not None and entry.unit == "compute_second" else None
        target = Target(schema, deployment=entry.deployment if entry is not None else None, guess=guess)
        mapped = inputs.map_request(request, schema, entry, inline_max=session.options.inline_media_max_bytes)
        validate_inputs(schema, mapped.values, mapped.origins, provider=NAME)
        values = dict(mapped.values)
        for name, media in mapped.uploads.items():
            values[name] = await self._upload(session, media)
        return target, values

    async def _upload(self, session: Session, media: MediaInput) -> str:
        """``POST /v1/files`` once per content: a retry reuses the URL, so its create input is identical."""
        key = (session.account, session.options.base_url, media.sha256)
        known = self._uploads.get(key)
        if known is not None and known[1] > time.time():
            return known[0]
        stream, filename = inputs.upload_stream(media)
        # files.create passes timeout=None to httpx (no timeout at all): bound it here.
        async with asyncio.timeout(session.options.create_timeout_seconds + len(media.data) / 100_000):
            uploaded = await session.client.files.async_create(stream, filename=filename, content_type=media.media_type)
        url = str(uploaded.urls["get"])
        self._uploads[key] = (url, time.time() + 3600)  # uploads live a day; reuse them for an hour
        return url

    async def _fetch_schema(self, session: Session, ref: str) -> ModelSchema:
        client = session.client
        what = f"reading the input schema of {ref}"
        try:
            if ref.startswith("deployment:"):
                deployment = await client.deployments.async_get(ref.removeprefix("deployment:"))
                release = deployment.current_release
                if release is None:
                    raise errors.ModelNotFound(f"deployment {deployment.id} has no release", provider=NAME)
                version = await Versions(client, release.model).async_get(release.version)
                props, required, out = parse_openapi(version.openapi_schema)
                return ModelSchema(
                    ref=ref,
                    model=release.model,
                    version=release.version,
                    properties=props,
                    required=required,
                    output=out,
                    runs_by="deployment",
                    fetched_at=time.time(),
                )
            model_name, _, pinned = ref.partition(":")
            if pinned:
                version = await Versions(client, model_name).async_get(pinned)
                props, required, out = parse_openapi(version.openapi_schema)
                return ModelSchema(
                    ref=ref,
                    model=model_name,
                    version=pinned,
                    properties=props,
                    required=required,
                    output=out,
                    runs_by="version",
                    fetched_at=time.time(),
                )
            model = await client.models.async_get(model_name)
            latest = model.latest_version
            props, required, out = parse_openapi(latest.openapi_schema if latest is not None else None)
            return ModelSchema(
                ref=ref,
                model=model_name,
                version=latest.id if latest is not None else None,
                properties=props,
                required=required,
                output=out,
                fetched_at=time.time(),
            )
        except errors.ProviderError:
            raise
        except _API_ERRORS as exc:
            raise mapping.from_exception(exc, what=what) from exc

    async def _finish(
        self,
        session: Session,
        task: Task,
        request: RequestModel | None,
        entry: ModelEntry | None,
        prediction: dict[str, Any],
        key: tuple[str, str, str] | None,
    ) -> ProviderOutput:
        """A finished prediction as ProviderOutput, or the error it ended with (with what it cost)."""
        options = session.options
        status = prediction.get("status")
        pid = str(prediction.get("id"))
        if status == "failed":
            self._forget(key)
            raise mapping.model_failed(
                prediction, incurred=cost.incurred(entry, prediction), logs_chars=options.logs_tail_chars
            )
        if status == "canceled":
            self._forget(key)
            raise errors.RemoteCanceled(
                f"prediction {pid} was canceled", provider=NAME, incurred=cost.incurred(entry, prediction)
            )
        try:
            parsed = await outputs.parse(task, prediction, session.http, options)
        except errors.ProviderError as exc:
            if not exc.retryable:  # a retry would adopt the same prediction and download again
                self._forget(key)
                if exc.incurred is None and entry is not None:
                    used = cost.usage(task, prediction, [], request)
                    exc.incurred = billing.actual(entry, request, ProviderOutput(usage=used))
            raise
        usage = cost.usage(task, prediction, parsed.files, request)
        self._forget(key)
        return ProviderOutput(files=parsed.files, text=parsed.text, segments=parsed.segments, usage=usage, job_id=pid)

    def _forget(self, key: tuple[str, str, str] | None) -> None:
        if key is not None:
            self._predictions.forget(key)

    async def aclose(self) -> None:
        await self._sessions.aclose()


def _report_spent(ctx: RunContext, entry: ModelEntry | None, canceled: dict[str, Any] | None) -> None:
    """What a canceled prediction billed, in ``ctx.extra["incurred"]`` for the router to settle; nothing if unknown."""
    spent = cost.incurred(entry, canceled) if canceled is not None else None
    if spent is not None:
        # The router settles this instead of guessing: what ran (seconds, tokens, outputs) was billed, and
        # Decimal(0) says nothing was, so the reservation is released even if text already reached the caller.
        ctx.extra["incurred"] = spent


def _secret_failure(exc: BaseException) -> tuple[str, bool]:
    """(what failed fetching the webhook secret, in a few words; whether it may pass if tried again)."""
    if isinstance(exc, ApiStatusError):
        return f"Replicate answered HTTP {exc.status}", exc.status >= 500 or exc.status in (408, 429)
    if isinstance(exc, ReplicateError):
        status = exc.status or 0
        return f"Replicate answered HTTP {status}", status >= 500 or status in (408, 429)
    if isinstance(exc, httpx.HTTPError):
        return f"the request failed ({type(exc).__name__})", True
    return "Replicate's answer could not be read", True


def _report_unstopped(
    ctx: RunContext, session: Session, offer: Offer, pid: str, seen: dict[str, Any] | None, why: str
) -> None:
    """A prediction whose cancel could not be confirmed may run to its end and be billed in full: report what that
    may cost (the offer's estimate; what it already used if that is more), and say how to cancel it by hand."""
    amounts = [a for a in (offer.estimate, cost.incurred(offer.entry, seen) if seen is not None else None) if a]
    if amounts:
        ctx.extra["incurred"] = max(amounts)
    api = session.options.base_url or "https://api.replicate.com"
    log.warning(
        "prediction %s of %s may still be running, and billed on Replicate: genroute could not cancel it (%s); "
        "genroute counts %s for it. Cancel it by hand on https://replicate.com/p/%s, or with "
        '`curl -X POST -H "Authorization: Bearer $%s" %s/v1/predictions/%s/cancel`',
        pid,
        offer.model,
        why,
        f"${max(amounts)} (what it may cost if it runs to its end)" if amounts else "nothing (it has no estimate)",
        pid,
        TOKEN_VARIABLE,
        api,
        pid,
    )


def _wait_seconds(options: ReplicateOptions, ctx: RunContext) -> int:
    """``Prefer: wait`` seconds: the option, but never past the deadline (the API allows 1-60)."""
    return max(1, min(options.wait_seconds, int(ctx.remaining())))


__all__ = ["ReplicateProvider"]
