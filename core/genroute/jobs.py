"""Jobs: requests handed to a provider that answers later, by webhook, instead of while the caller waits.

A job is recorded as soon as the provider accepted it, so a completion arriving in another process (the
webhook receiver) finds the reservation to settle and the request key to store the result under. While a
request's job is pending, its request key is marked with the job's id, so an identical submission (in any
process sharing the directory) is handed that job instead of starting the work, and paying for it, again.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import diskcache
from pydantic import BaseModel, ConfigDict, Field

from .errors import StoreError
from .types import Offer, Result, Task, Tier, Usage

log = logging.getLogger("genroute.jobs")

JobStatus = Literal["pending", "succeeded", "failed", "canceled"]

_JOB = "j|"
_REMOTE = "r|"
_SEEN = "w|"
_CLAIM = "c|"
_SUBMITTING = "p|"  # request key → the id of the job being submitted, or pending, for it


class Job(BaseModel):
    """One request waiting for (or done with) a provider's asynchronous answer."""

    model_config = ConfigDict(frozen=True)

    id: str
    request_key: str
    task: Task
    tier: Tier
    provider: str
    model: str
    offer: Offer
    reservation_id: str | None = Field(description="the ledger reservation to settle; None for a store hit")
    remote_id: str | None = Field(default=None, description="the provider's id for the job (a prediction id)")
    usage_hint: Usage = Field(default_factory=Usage, description="quantities known at submit time, for billing")
    keep: bool = Field(default=True, description="store the result (False: the request said cache = bypass)")
    status: JobStatus = "pending"
    created_at: datetime
    finished_at: datetime | None = None
    result: Result | None = None
    error: str | None = None
    cost: Decimal | None = None


SyncAction = Literal["completed", "running", "skipped", "unsupported", "error"]
"""What :meth:`Router.areconcile_jobs <genroute.router.Router.areconcile_jobs>` did about a job: ``completed``
(its remote work had finished: settled and stored as a webhook delivery would have), ``running`` (still running
remotely: left pending), ``skipped`` (no longer pending, or being completed by a webhook delivery right now),
``unsupported`` (its provider cannot be asked, or is not installed: left pending), ``error`` (asking, or
completing, failed: left pending, try again)."""


class JobSync(BaseModel):
    """One job as :meth:`Router.areconcile_jobs <genroute.router.Router.areconcile_jobs>` found and left it."""

    model_config = ConfigDict(frozen=True)

    job: Job = Field(description="the job as it is now")
    action: SyncAction
    remote_status: str | None = Field(default=None, description="the provider's word for the remote state, if asked")
    reservation_reclaimed: bool = Field(
        default=False,
        description="its reservation had expired and been reclaimed at $0 while the job was pending "
        "(a completion settles the actual cost all the same)",
    )
    message: str = Field(description="one line: what was found and what was done")

    @property
    def ok(self) -> bool:
        """The job's state is known and on record: completed now, still running, or not pending."""
        return self.action in ("completed", "running", "skipped")


class JobStore:
    """Jobs by id and by (provider, remote id), in a diskcache directory shared by every process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(
                f"job store at {self.path}: a file is there, not a directory",
                hint="point jobs.path in plugins.toml at a directory (the file is not genroute's; leave it)",
            )
        with self._guard("open"):
            self.path.mkdir(parents=True, exist_ok=True)
            self._cache: Any = diskcache.Cache(str(self.path), eviction_policy="none", cull_limit=0)

    def add(self, job: Job) -> None:
        """Record ``job``; the mark :meth:`start_submission` left for its request stays while the job is
        pending (now without expiry: the job is on record) and goes when it is finished."""
        with self._guard(f"record job {job.id}"), self._cache.transact():
            self._cache.set(_JOB + job.id, job.model_dump_json())
            if job.remote_id:
                self._cache.set(f"{_REMOTE}{job.provider}|{job.remote_id}", job.id)
            mark = _SUBMITTING + job.request_key
            if self._cache.get(mark) == job.id:
                if job.status == "pending":
                    self._cache.set(mark, job.id)
                else:
                    self._cache.delete(mark)

    def update(self, job: Job) -> None:
        self.add(job)

    def get(self, job_id: str) -> Job | None:
        with self._guard(f"read job {job_id}"):
            raw = self._cache.get(_JOB + job_id)
        return None if raw is None else Job.model_validate_json(raw)

    def find(self, provider: str, remote_id: str) -> Job | None:
        """The job a provider knows as ``remote_id``."""
        with self._guard(f"find job {provider}/{remote_id}"):
            job_id = self._cache.get(f"{_REMOTE}{provider}|{remote_id}")
        return None if job_id is None else self.get(job_id)

    def list(self, status: JobStatus | None = None) -> list[Job]:
        """Every job (or those with ``status``), oldest first."""
        with self._guard("list jobs"):
            keys = [k for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith(_JOB)]
            raws = [self._cache.get(k) for k in keys]
        jobs = [Job.model_validate_json(raw) for raw in raws if raw is not None]
        return sorted((j for j in jobs if status is None or j.status == status), key=lambda j: j.created_at)

    def start_submission(self, request_key: str, job_id: str, *, expire: float) -> str | None:
        """Mark ``job_id`` as the submission of ``request_key`` (atomic across processes).

        Returns None when the mark is now ``job_id``'s; else the id of the job that holds it: submitted
        and pending, or still being handed to its provider (no record yet). The mark lapses after
        ``expire`` seconds unless :meth:`add` records the job pending first (so a process that died while
        submitting blocks nobody for long); :meth:`add` removes it when the job finishes.
        """
        mark = _SUBMITTING + request_key
        with self._guard(f"mark the submission of job {job_id}"), self._cache.transact():
            held = self._cache.get(mark)
            if held is not None:
                return str(held)
            self._cache.set(mark, job_id, expire=expire)
            return None

    def drop_submission(self, request_key: str, job_id: str) -> None:
        """Remove ``request_key``'s mark if ``job_id`` holds it (its submission failed, or the job is over)."""
        mark = _SUBMITTING + request_key
        with self._guard(f"unmark the submission of job {job_id}"), self._cache.transact():
            if self._cache.get(mark) == job_id:
                self._cache.delete(mark)

    def first_sighting(self, delivery_id: str, *, keep_seconds: float) -> bool:
        """True the first time a webhook delivery id is seen; False for a replay (atomic across processes)."""
        with self._guard("record a webhook delivery"):
            return bool(self._cache.add(_SEEN + delivery_id, time.time(), expire=keep_seconds))

    def claim(self, job_id: str, *, keep_seconds: float = 3600) -> bool:
        """True for the one caller allowed to complete ``job_id`` (atomic across processes)."""
        with self._guard(f"claim job {job_id}"):
            return bool(self._cache.add(_CLAIM + job_id, time.time(), expire=keep_seconds))

    def unclaim(self, job_id: str) -> None:
        """Give a claim back when completing failed before anything was recorded."""
        with self._guard(f"unclaim job {job_id}"):
            self._cache.delete(_CLAIM + job_id)

    def forget_sighting(self, delivery_id: str) -> None:
        """Undo :meth:`first_sighting` when handling the delivery failed, so the sender's retry is served."""
        with self._guard("forget a webhook delivery"):
            self._cache.delete(_SEEN + delivery_id)

    def close(self) -> None:
        with self._guard("close"):
            self._cache.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            raise StoreError(
                f"job store at {self.path}: could not {action}: {exc}",
                hint=f"check that {self.path} is writable and on a local disk",
            ) from exc


def now_utc() -> datetime:
    return datetime.now(UTC)
