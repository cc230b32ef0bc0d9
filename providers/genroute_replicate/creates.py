"""Creating predictions without ever paying twice for one request, waiting for them, cancelling them.

``POST`` (create) is never retried by the client, and a blind re-POST after an ambiguous failure can
start a second paid prediction. So every create is recorded per (request key, target, purpose) before
it is sent, and:

* a failure where no prediction can exist (connection refused, 401/402/404/422, 429) forgets the record
  and raises a retryable or final error as the status says;
* an ambiguous failure (read timeout, connection dropped after the request was sent, a 5xx, an
  unreadable answer) is **reconciled**: recent predictions (``GET /v1/predictions``) are searched for one
  with this model/version and exactly this input created since the request was sent. A match is adopted
  and awaited as if the create had answered. With no match, a 500/503 (an answer: the request was
  handled) is a retryable ProviderUnavailable; anything else raises a non-retryable ProviderError saying
  a prediction may exist, and the record stays, so a later run of the same request reconciles first;
* a run that finds a record with a prediction id (the router retrying after a failed poll or
  download) adopts that prediction instead of posting;
* a run with no record whose context says a process that died may have started this request
  (``RunContext.orphaned_since``: the ledger found that process's reservation still open) first looks for
  that prediction among recent predictions, and adopts it (unless canceled) instead of posting.

No marker is added to the input to tell predictions apart: that would change what the model validates.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import httpx
from replicate.prediction import Prediction

from genroute import errors
from genroute.secrets import redact

from . import errors as mapping
from .client import ApiStatusError, Session
from .schema import ModelSchema, RunsBy, SchemaCache

log = logging.getLogger("genroute.replicate.creates")

NAME = "replicate"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
Purpose = Literal["run", "stream", "submit"]
_CLOCK_SLACK = 60.0  # seconds of clock difference tolerated between this machine and Replicate
# A cancel is sent while a call is being cut short (deadline, Ctrl-C, SIGTERM), and the caller waits for it: its
# tries and the read after them stay well inside the 15 s genroute gives a stream's clean-up
# (genroute.streaming.PROVIDER_CLOSE_SECONDS), as the single 10 s cancel before them did.
CANCEL_SECONDS = 6.0  # every try of one cancel
CANCEL_BACKOFF = (0.25, 0.5, 1.0, 2.0)  # the pauses between tries: five tries at most
READ_AFTER_CANCEL_SECONDS = 3.0
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


@dataclass(frozen=True)
class Target:
    """What a catalogue entry runs: a model by name, a pinned version, or a deployment."""

    schema: ModelSchema
    deployment: str | None = None
    guess: RunsBy | None = None  # how to try first while the schema cache has not learned it

    @property
    def runs_by(self) -> RunsBy:
        if self.deployment is not None:
            return "deployment"
        if ":" in self.schema.ref:
            return "version"
        if self.schema.runs_by is not None:
            return self.schema.runs_by
        if self.guess == "version" and self.schema.version:
            return "version"
        return "model"

    @property
    def learnable(self) -> bool:
        return self.deployment is None and ":" not in self.schema.ref and self.schema.runs_by is None

    def describe(self) -> str:
        if self.deployment is not None:
            return f"deployment {self.deployment}"
        return self.schema.model if self.runs_by == "model" else f"{self.schema.model}:{self.schema.version}"


@dataclass(frozen=True)
class Stopped:
    """What cancelling a prediction came to."""

    prediction: dict[str, Any] | None  # the last state seen: the cancel's answer, or the read after it
    ended: bool  # the service said it ended (canceled, or finished meanwhile): it bills no more
    why: str  # when it did not: what failed


@dataclass
class InFlight:
    fingerprint: str
    sent_wall: float
    prediction_id: str | None = None
    ambiguous: bool = False


def as_dict(prediction: Any) -> dict[str, Any]:
    """A client ``Prediction`` (pydantic v1) or a webhook's JSON as a plain dict."""
    if isinstance(prediction, Mapping):
        return dict(prediction)
    if type(prediction) is Prediction:
        # The client built it from the answer's JSON: its fields (all of ``__dict__``; the client reference is a
        # private slot) hold plain JSON values already, so pydantic's recursive ``.dict()`` copy is not needed.
        return dict(prediction.__dict__)
    data = prediction.dict()
    assert isinstance(data, dict)
    return data


def _failure(exc: BaseException) -> str:
    """A failed request in a few words: ``HTTP 503``, ``RemoteProtocolError``, ``no answer within the bound``."""
    if isinstance(exc, ApiStatusError):
        return f"HTTP {exc.status}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return type(exc).__name__


def _when(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _same_input(remote: Any, sent: Mapping[str, Any]) -> bool:
    if not isinstance(remote, Mapping) or set(remote) != set(sent):
        return False
    for key, ours in sent.items():
        theirs = remote[key]
        if isinstance(ours, str) and ours.startswith("data:"):
            # The service may keep a data: URI as given or as a file URL: any string is consistent.
            if not isinstance(theirs, str):
                return False
        elif json.dumps(theirs, sort_keys=True) != json.dumps(ours, sort_keys=True) and theirs != ours:
            return False
    return True


class Predictions:
    """The create records and the create/reconcile/wait/cancel logic, shared by every loop of one provider."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str, str], InFlight] = {}
        self._claimed: dict[str, float] = {}  # prediction ids this process created or adopted → when
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str, str], asyncio.Lock]] = (
            weakref.WeakKeyDictionary()
        )

    # -- records ---------------------------------------------------------------------------------------
    @asynccontextmanager
    async def exclusive(self, key: tuple[str, str, str]) -> AsyncIterator[None]:
        """One create-and-wait at a time per record key (identical requests in one batch queue up)."""
        locks = self._locks.setdefault(asyncio.get_running_loop(), {})
        lock = locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and key not in self._records:
                locks.pop(key, None)

    def forget(self, key: tuple[str, str, str]) -> None:
        self._records.pop(key, None)

    def pending(self, key: tuple[str, str, str]) -> InFlight | None:
        return self._records.get(key)

    def _prune(self, window: float) -> None:
        """Records older than the reconcile window are history, not an attempt to continue."""
        now = time.time()
        for key, record in list(self._records.items()):
            if now - record.sent_wall > window:
                del self._records[key]

    def _claim(self, prediction_id: str, window: float) -> None:
        now = time.time()
        self._claimed.pop(prediction_id, None)  # re-insert at the end: the dict stays ordered by time
        self._claimed[prediction_id] = now
        # Oldest first: stop at the first one still inside the window, so a claim costs O(expired).
        while self._claimed:
            oldest, when = next(iter(self._claimed.items()))
            if now - when <= window:
                break
            del self._claimed[oldest]

    # -- create ----------------------------------------------------------------------------------------
    async def obtain(
        self,
        session: Session,
        target: Target,
        inputs: dict[str, Any],
        key: tuple[str, str, str],
        *,
        schemas: SchemaCache,
        wait: int | None,
        stream: bool = False,
        webhook: str | None = None,
        orphaned_since: float | None = None,
    ) -> dict[str, Any]:
        """The prediction for this request: adopted from an earlier attempt, reconciled, or created once.

        ``orphaned_since``: a process that died may have created it since then (see :meth:`_orphan`).
        """
        options = session.options
        fingerprint = hashlib.sha256(
            json.dumps([target.schema.ref, inputs, stream, webhook], sort_keys=True, default=str).encode()
        ).hexdigest()
        self._prune(options.reconcile_window_seconds)
        record = self._records.get(key)
        if record is not None and record.fingerprint != fingerprint:
            record = None  # the input changed (a new schema version): not the same create
        if record is None and orphaned_since is not None:
            orphan = await self._orphan(session, target, inputs, orphaned_since)
            if orphan is not None:
                pid = str(orphan["id"])
                self._records[key] = InFlight(fingerprint=fingerprint, sent_wall=time.time(), prediction_id=pid)
                self._claim(pid, options.reconcile_window_seconds)
                return orphan
        if record is not None and record.prediction_id is not None:
            adopted = await self._get(session, record.prediction_id)
            if adopted is not None and adopted.get("status") != "canceled":
                log.info("adopting prediction %s from an earlier attempt", record.prediction_id)
                return adopted
            record = None
        if record is not None and record.ambiguous:
            found, listed = await self.reconcile(session, target, inputs, record.sent_wall)
            if found is not None:
                record.prediction_id = str(found["id"])
                self._claim(record.prediction_id, options.reconcile_window_seconds)
                record.ambiguous = False
                return found
            if not listed or time.time() - record.sent_wall < options.reconcile_settle_seconds:
                raise self._may_exist(target, "an earlier create of this request")
            log.info("an ambiguous create of %s never appeared; creating anew", target.describe())
        record = InFlight(fingerprint=fingerprint, sent_wall=time.time())
        self._records[key] = record
        try:
            prediction = await self._post_learning(
                session, target, inputs, schemas, wait=wait, stream=stream, webhook=webhook
            )
        except asyncio.CancelledError:
            record.ambiguous = True
            await self._cancel_orphan(session, target, inputs, record)
            raise
        except errors.ProviderError:  # decided before anything was sent
            self.forget(key)
            raise
        except Exception as exc:
            if isinstance(exc, ApiStatusError) and exc.status in (404, 422):
                schemas.forget(target.schema.ref)  # maybe a stale schema or version: fetch it afresh next time
            return await self._after_failed_create(session, target, inputs, key, record, exc)
        record.prediction_id = str(prediction["id"])
        self._claim(record.prediction_id, options.reconcile_window_seconds)
        return prediction

    async def _post_learning(
        self, session: Session, target: Target, inputs: dict[str, Any], schemas: SchemaCache, **params: Any
    ) -> dict[str, Any]:
        """Create; an unconfirmed official-model create that 404s is a community model: run it by version.

        (Official models run by name, others only by version; a 404 on the by-name endpoint creates
        nothing, and what was learned is kept in the schema cache, so this costs one request once.)
        """
        schema = target.schema
        try:
            created = await self._post(session, target, inputs, **params)
        except ApiStatusError as exc:
            if not (exc.status == 404 and target.learnable and target.runs_by == "model" and schema.version):
                raise
            log.info("%s is not an official model; running it by its latest version", schema.model)
            return await self._post(session, Target(schemas.learn(schema, "version")), inputs, **params)
        if target.learnable:
            schemas.learn(schema, target.runs_by)
        return created

    async def _post(
        self,
        session: Session,
        target: Target,
        inputs: dict[str, Any],
        *,
        wait: int | None,
        stream: bool,
        webhook: str | None,
    ) -> dict[str, Any]:
        client = session.client
        params: dict[str, Any] = {}
        if wait:
            params["wait"] = int(wait)
        if stream:
            params["stream"] = True
        if webhook is not None:
            params["webhook"] = webhook
            params["webhook_events_filter"] = ["completed"]
        # The create's read timeout is `wait` + create_timeout_seconds (client.CreateTimeouts); this bounds the
        # whole create (connecting included) in case the answer trickles in.
        options = session.options
        async with asyncio.timeout((wait or 0) + options.create_timeout_seconds + options.connect_timeout_seconds):
            if target.runs_by == "deployment":
                assert target.deployment is not None
                created = await client.deployments.predictions.async_create(
                    deployment=target.deployment, input=inputs, **params
                )
            elif target.runs_by == "version":
                if not target.schema.version:
                    raise errors.ModelNotFound(f"{target.schema.model} has no published version", provider=NAME)
                created = await client.predictions.async_create(version=target.schema.version, input=inputs, **params)
            else:
                created = await client.models.predictions.async_create(
                    model=target.schema.model, input=inputs, **params
                )
        return as_dict(created)

    async def _after_failed_create(
        self,
        session: Session,
        target: Target,
        inputs: dict[str, Any],
        key: tuple[str, str, str],
        record: InFlight,
        exc: Exception,
    ) -> dict[str, Any]:
        what = f"creating a prediction of {target.describe()}"
        answered = False
        if isinstance(exc, ApiStatusError):
            if exc.status < 500:  # refused before anything ran (401, 402, 404, 422, 429 …)
                self.forget(key)
                raise mapping.from_exception(exc, what=what) from exc
            answered = exc.status in (500, 503)
        elif isinstance(exc, _UNSENT):  # never reached the server
            self.forget(key)
            raise mapping.from_exception(exc, what=what) from exc
        record.ambiguous = True
        log.warning(
            "%s failed ambiguously (%s); looking for the prediction before anything else",
            target.describe(),
            type(exc).__name__,
        )
        found, listed = await self.reconcile(session, target, inputs, record.sent_wall)
        if found is not None:
            record.prediction_id = str(found["id"])
            record.ambiguous = False
            self._claim(record.prediction_id, session.options.reconcile_window_seconds)
            log.info("reconciled: adopting prediction %s", record.prediction_id)
            return found
        if answered and listed:
            self.forget(key)  # the service answered and made nothing: safe to try again
            raise mapping.from_exception(exc, what=what) from exc
        raise self._may_exist(target, f"{type(exc).__name__} while {what}") from exc

    async def _orphan(
        self, session: Session, target: Target, inputs: dict[str, Any], orphaned_since: float
    ) -> dict[str, Any] | None:
        """The prediction a process that died may have created for this request since ``orphaned_since``.

        Looked for like an ambiguous create (same model/version, exactly this input, created since then,
        with the usual clock slack, not claimed here, not canceled), but no further back than
        ``reconcile_window_seconds``. When no listing succeeds nothing can be ruled out: a retryable
        ProviderUnavailable instead of a create that could be the second.
        """
        since = max(orphaned_since, time.time() - session.options.reconcile_window_seconds)
        found, listed = await self.reconcile(session, target, inputs, since, skip_canceled=True)
        if found is not None:
            log.info("adopting prediction %s of %s, started by a process that died", found.get("id"), target.describe())
            return found
        if not listed:
            raise errors.ProviderUnavailable(
                "could not list recent predictions to look for one that a process that died may have "
                f"created for this request; not creating another of {target.describe()} yet",
                provider=NAME,
            )
        return None

    def _may_exist(self, target: Target, why: str) -> errors.ProviderError:
        return errors.ProviderError(
            redact(
                f"{why}: a prediction of {target.describe()} may exist but could not be found among recent "
                "predictions; not creating another (it could be billed twice)"
            ),
            provider=NAME,
            retryable=False,
            hint="check https://replicate.com/predictions; running the request again later first looks for it",
        )

    # -- reconciliation --------------------------------------------------------------------------------
    async def reconcile(
        self,
        session: Session,
        target: Target,
        inputs: Mapping[str, Any],
        sent_wall: float,
        *,
        skip_canceled: bool = False,
    ) -> tuple[dict[str, Any] | None, bool]:
        """(the matching recent prediction or None, whether a listing succeeded at all).

        Lists up to ``reconcile_attempts`` times, ``reconcile_interval_seconds`` apart, until one finds it: the
        create may still be in flight at the server, and even after an answer (a 500 or 503 sent once the
        prediction was made) the listing may not show it yet. ``skip_canceled``: a canceled prediction is not
        a match.
        """
        options = session.options
        listed = False
        for attempt in range(options.reconcile_attempts):
            if attempt:
                await asyncio.sleep(options.reconcile_interval_seconds)
            try:
                found = await self._find(session, target, inputs, sent_wall, skip_canceled=skip_canceled)
            except Exception as exc:  # a failed listing proves nothing: try again
                log.info("listing predictions to reconcile failed: %s", type(exc).__name__)
                continue
            listed = True
            if found is not None:
                return found, True
        return None, listed

    async def _find(
        self,
        session: Session,
        target: Target,
        inputs: Mapping[str, Any],
        sent_wall: float,
        *,
        skip_canceled: bool = False,
    ) -> dict[str, Any] | None:
        earliest = sent_wall - _CLOCK_SLACK
        latest = time.time() + _CLOCK_SLACK
        cursor: Any = ...
        candidates: list[tuple[float, dict[str, Any]]] = []
        for _ in range(3):  # three pages: 300 predictions is far more than a few seconds can make
            page = await session.client.predictions.async_list(cursor)
            oldest = latest
            for item in page.results:
                p = as_dict(item)
                created = _when(p.get("created_at"))
                if created is None:
                    continue
                oldest = min(oldest, created)
                if skip_canceled and p.get("status") == "canceled":
                    continue
                if self._matches(p, created, target, inputs, earliest, latest):
                    candidates.append((created, p))
            if oldest < earliest or not page.next:
                break
            cursor = page.next
        if not candidates:
            return None
        # Several identical ones: the earliest created after the request was sent is ours.
        candidates.sort(key=lambda pair: (pair[0] < sent_wall - 1, abs(pair[0] - sent_wall)))
        return candidates[0][1]

    def _matches(
        self,
        p: Mapping[str, Any],
        created: float,
        target: Target,
        inputs: Mapping[str, Any],
        earliest: float,
        latest: float,
    ) -> bool:
        if str(p.get("id")) in self._claimed or not earliest <= created <= latest:
            return False
        if p.get("model") != target.schema.model:
            return False
        if target.runs_by != "model" and target.schema.version and p.get("version") != target.schema.version:
            return False
        return _same_input(p.get("input"), inputs)

    # -- waiting and cancelling ------------------------------------------------------------------------
    async def _get(self, session: Session, prediction_id: str) -> dict[str, Any] | None:
        try:
            return as_dict(await session.client.predictions.async_get(prediction_id))
        except ApiStatusError as exc:
            if exc.status == 404:
                return None
            raise mapping.from_exception(exc, what=f"reading prediction {prediction_id}") from exc
        except (httpx.HTTPError, ValueError) as exc:
            raise mapping.from_exception(exc, what=f"reading prediction {prediction_id}") from exc

    async def wait(self, session: Session, prediction: dict[str, Any]) -> dict[str, Any]:
        """Poll with backoff until the prediction ends; transient poll failures are tolerated a few times."""
        options = session.options
        pid = str(prediction["id"])
        delay = options.poll_initial_seconds
        failures = 0
        while prediction.get("status") not in TERMINAL:
            await asyncio.sleep(delay)
            delay = min(options.poll_max_seconds, delay * options.poll_backoff)
            try:
                prediction = as_dict(await session.client.predictions.async_get(pid))
                failures = 0
            except (ApiStatusError, httpx.HTTPError, ValueError) as exc:
                mapped = mapping.from_exception(exc, what=f"polling prediction {pid}")
                failures += 1
                if not mapped.retryable or failures >= options.poll_error_limit:
                    raise mapped from exc
                log.info("polling %s failed (%s); trying again", pid, type(exc).__name__)
        return prediction

    async def cancel(self, session: Session, prediction_id: str) -> dict[str, Any] | None:
        """Cancel a running prediction so it stops billing: its answer, or None when no try was answered.

        A cancel runs while a call is being cut short (deadline, Ctrl-C, SIGTERM) and the caller waits for it,
        so a failure that may pass (a 5xx, a 429, a dropped connection, a timeout) is tried again after
        :data:`CANCEL_BACKOFF`, all tries within :data:`CANCEL_SECONDS`; a refusal (another 4xx) is not.
        Never raises but :class:`asyncio.CancelledError` (interrupted once more: the caller gives up on it).
        """
        return (await self._cancel(session, prediction_id))[0]

    async def _cancel(self, session: Session, prediction_id: str) -> tuple[dict[str, Any] | None, str]:
        """(the cancel's answer or None, why none came)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + CANCEL_SECONDS
        why = "not tried"
        for tries, pause in enumerate((0.0, *CANCEL_BACKOFF), start=1):
            if pause:
                if loop.time() + pause >= end:
                    break
                await asyncio.sleep(pause)
            try:
                async with asyncio.timeout(end - loop.time()):
                    return as_dict(await session.client.predictions.async_cancel(prediction_id)), ""
            except Exception as exc:
                why = f"{_failure(exc)} on {tries} tr{'y' if tries == 1 else 'ies'}"
                if isinstance(exc, ApiStatusError) and exc.status < 500 and exc.status not in (408, 429):
                    break  # refused (unknown prediction, bad token …): trying again would be refused too
                log.info("cancelling prediction %s failed (%s); trying again", prediction_id, _failure(exc))
        return None, why

    async def stop(
        self, session: Session, prediction_id: str, *, measured: Callable[[Mapping[str, Any]], bool]
    ) -> Stopped:
        """Cancel the prediction (tried again as :meth:`cancel` says), then, unless its answer already says it
        ended and ``measured`` (what it used can be priced from it), read it once to learn its state."""
        answer, why = await self._cancel(session, prediction_id)
        if answer is not None and answer.get("status") in TERMINAL and measured(answer):
            return Stopped(answer, True, "")
        try:
            async with asyncio.timeout(READ_AFTER_CANCEL_SECONDS):
                seen = await self._get(session, prediction_id)
        except Exception as exc:
            if answer is not None and answer.get("status") in TERMINAL:
                return Stopped(answer, True, "")
            return Stopped(answer, False, f"{why or 'the cancel was not confirmed'}; reading it: {_failure(exc)}")
        if seen is not None and seen.get("status") in TERMINAL:
            return Stopped(seen, True, "")
        if seen is None:
            return Stopped(answer, False, f"{why or 'the cancel was not confirmed'}; reading it: HTTP 404")
        return Stopped(seen, False, why or f"it was still {seen.get('status')} after the cancel")

    async def _cancel_orphan(
        self, session: Session, target: Target, inputs: Mapping[str, Any], record: InFlight
    ) -> None:
        """Interrupted while creating: find the prediction the create may have made and cancel it."""
        try:
            async with asyncio.timeout(10):
                found = await self._find(session, target, inputs, record.sent_wall)
        except Exception as exc:
            log.warning("could not look for a prediction interrupted while being created: %s", type(exc).__name__)
            return
        if found is not None and found.get("status") not in TERMINAL:
            record.prediction_id = str(found["id"])
            if await self.cancel(session, record.prediction_id) is None:
                log.warning(
                    "could not cancel prediction %s, interrupted while it was being created: it may still be running",
                    record.prediction_id,
                )
