"""The budget ledger: the single source of truth for spend.

Every call that may cost money is *reserved* before it starts and *settled* (or *released*) after.
The ledger lives in a :class:`diskcache.Cache` directory (SQLite), so threads and processes sharing the
directory see one truth; each operation is one ``BEGIN IMMEDIATE`` transaction, so the budget check and
the reservation it admits can never be split by a concurrent writer.

Money is :class:`~decimal.Decimal` dollars in the API and integer micro-dollars on disk. Periods are
keys, never resets: ``total``, the UTC day ``YYYY-MM-DD`` and the UTC month ``YYYY-MM``. For every scope
a reservation names, the ledger keeps ``spent`` and ``reserved`` counters in all three periods.

A reservation counts into the period keys current when it was made, and its settlement counts into the
same keys (even if the day changed in between), so the spend a limit admitted is the spend it sees.

What is written on every call lives in two tables of the cache's own SQLite database, reached through
diskcache's connection inside its ``BEGIN IMMEDIATE`` transactions (a diskcache ``set`` costs several
times a bare SQL statement, and a call makes two or three of them):

* ``genroute_ledger_state`` holds one row, ``state`` → pickled ``{"counters": {(scope, period,
  period_key): [spent, reserved]}, "open": {id: packed reservation}, "scopes": [...], "exhausted":
  {...}}``, so a reservation is one read and one write whatever the number of scopes and limits;
* ``genroute_ledger_entries`` holds the append-only entries as JSON, in the order written (rowid).

Rarely written records stay diskcache keys (strings; ``|`` separates parts):

* ``version`` → the schema version
* ``c|<scope>|<period>|<period_key>`` → ``(spent, reserved)`` micro-dollars: counters of past periods
  with nothing reserved, moved out of the state row
* ``closed|<id>`` → ``{"status": "reclaimed", "res": record}`` for reclaimed reservations
* ``w|<scope>|<period>|<period_key>|<limit micros>`` → warned already
* ``cooldown|<provider>`` → until when (POSIX time) a process took the provider out of rotation
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import functools
import hashlib
import io
import logging
import os
import pickle
import secrets
import socket
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import diskcache
from pydantic import BaseModel, ConfigDict

from .config import BudgetLimit
from .errors import BudgetExceeded, GenrouteError, InvalidRequest, LedgerError
from .money import fmt_usd, micros_to_usd, to_decimal, usd_to_micros
from .secrets import redact
from .sqlite_settings import HOT_WRITES

__all__ = [
    "BudgetReport",
    "BudgetWarning",
    "Headroom",
    "HeldElsewhere",
    "Ledger",
    "LedgerEntry",
    "Reservation",
    "ScopeUsage",
]

logger = logging.getLogger("genroute.ledger")

PERIODS: tuple[str, ...] = ("total", "daily", "monthly")
CSV_HEADER: tuple[str, ...] = (
    "group",
    "provider",
    "model",
    "day",
    "scope",
    "period",
    "period_key",
    "limit_usd",
    "spent_usd",
    "reserved_usd",
    "left_usd",
    "count",
    "exhausted",
)
"""Columns of :meth:`BudgetReport.to_csv`. ``group`` says what a row sums: ``provider``, ``model``
(provider + model), ``day`` (settled spend), ``savings`` (``spent_usd`` = cost avoided by cache hits,
``count`` = hits) or ``usage`` (one scope in one period). Columns a group does not use are empty."""

_SCHEMA_VERSION = 5
_STATE_TABLE = "genroute_ledger_state"
_ENTRY_TABLE = "genroute_ledger_entries"
_ENTRY_PAGE = 512  # entries read per query when listing
_SEP = "|"
_SAVINGS_BATCH = 64
_RECENT_LIMIT = 4096  # finished reservation ids remembered, to name a double settle or release

# Keep every value inside SQLite (no side files) and never evict anything: this is a ledger, not a cache.
_CACHE_SETTINGS: dict[str, Any] = {
    "eviction_policy": "none",
    "cull_limit": 0,
    "disk_min_file_size": 2**30,
    "statistics": False,
    "tag_index": False,
    **HOT_WRITES,
    "sqlite_cache_size": 1024,  # the ledger's database is smaller still
}


@dataclass(frozen=True)
class Headroom:
    """What is left under the tightest budget limit on some scopes, and which limit that is."""

    left: Decimal
    scope: str
    period: str
    hint: str | None = None
    """For a scope the provider reported used up (:meth:`Ledger.exhaust`), what to do about it, quoting the
    provider's note (which may carry its own advice); None for a limit reached in the ledger's own count."""


@dataclass(frozen=True)
class Reservation:
    """Money set aside for one provider call, until it is settled or released."""

    id: str
    amount: Decimal
    scopes: tuple[str, ...]
    provider: str
    model: str
    task: str
    request_key: str
    created_at: float
    expires_at: float
    period_keys: tuple[tuple[str, str, str], ...]
    """(scope, period, period_key) triples this reservation counted into."""
    orphaned_since: float | None = None
    """Set by :meth:`Ledger.reserve` when a process that died (on this machine) left a reservation for the
    same request key on the same provider open, and no other live process holds one: when the earliest
    such work began (that reservation's ``created_at``, or that of the dead one it had taken over). That
    process may have started the work already (say, a paid prediction); a provider that can find its work
    should look for it before starting anew. The new reservation takes the dead ones over (they are closed
    as "reclaimed")."""


class LedgerEntry(BaseModel):
    """One line of the ledger, append-only.

    ``id`` is the reservation's id (a saving gets its own); ``day`` is the UTC day the money counted
    into — for a settlement, the day its reservation was made.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    status: Literal["settled", "released", "reclaimed", "saving"]
    at: datetime
    day: str
    provider: str
    model: str
    task: str
    scopes: list[str]
    estimate: Decimal
    actual: Decimal
    over_estimate: bool = False
    request_key: str = ""
    job_id: str | None = None
    note: str = ""


class ScopeUsage(BaseModel):
    """Spend in one scope for one period; ``limit``/``left`` are ``None`` when no limit applies."""

    scope: str
    period: str
    period_key: str
    limit: Decimal | None
    spent: Decimal
    reserved: Decimal
    left: Decimal | None
    exhausted: str | None = None
    """Why the scope refuses everything until this period ends (a provider said its credit is used up),
    whatever the limit says; ``left`` is then 0."""


class BudgetWarning(BaseModel):
    """A scope passed the warning share of a limit (sent once per scope, period key and limit)."""

    scope: str
    period: str
    period_key: str
    limit: Decimal
    spent: Decimal
    share: float


class BudgetReport(BaseModel):
    """Where the money went: usage per scope and period, settled spend by provider/model/day, savings."""

    generated_at: datetime
    usage: list[ScopeUsage]
    savings: Decimal
    saved_requests: int
    by_provider: list[dict[str, Any]]
    by_model: list[dict[str, Any]]
    by_day: list[dict[str, Any]]

    def to_json(self) -> str:
        """The report as indented JSON (amounts as decimal strings)."""
        return self.model_dump_json(indent=2)

    def to_csv(self) -> str:
        """The report as CSV with the header :data:`CSV_HEADER`, one row per grouping."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_HEADER, lineterminator="\n")
        writer.writeheader()

        def row(group: str, **fields: object) -> None:
            writer.writerow({"group": group, **{k: "" if v is None else str(v) for k, v in fields.items()}})

        for item in self.by_provider:
            row("provider", provider=item["provider"], spent_usd=item["spent"], count=item["count"])
        for item in self.by_model:
            row("model", provider=item["provider"], model=item["model"], spent_usd=item["spent"], count=item["count"])
        for item in self.by_day:
            row("day", day=item["day"], spent_usd=item["spent"], count=item["count"])
        row("savings", spent_usd=self.savings, count=self.saved_requests)
        for u in self.usage:
            row(
                "usage",
                scope=u.scope,
                period=u.period,
                period_key=u.period_key,
                limit_usd=u.limit,
                spent_usd=u.spent,
                reserved_usd=u.reserved,
                left_usd=u.left,
                exhausted=u.exhausted,
            )
        return out.getvalue()


def period_keys_at(now: float) -> dict[str, str]:
    """``{"total": "total", "daily": "YYYY-MM-DD", "monthly": "YYYY-MM"}`` for a POSIX time, in UTC."""
    return dict(_period_keys_of_day(int(now // 86400)))


@functools.lru_cache(maxsize=64)
def _period_keys_of_day(day: int) -> tuple[tuple[str, str], ...]:
    # POSIX time has no leap seconds, so the UTC day is the time divided by 86,400: formatting dates is
    # the costly part, and every reservation needs the keys.
    moment = datetime.fromtimestamp(day * 86400, tz=UTC)
    return (("total", "total"), ("daily", moment.strftime("%Y-%m-%d")), ("monthly", moment.strftime("%Y-%m")))


@functools.cache
def _host() -> str:
    """Names the process-id space of this machine's current boot: a pid means the same process only there.

    Hostname, kernel boot id and pid namespace (Linux), hashed to a short tag: another machine, another boot
    or another container's pid namespace gets another tag, and its pids are never looked up here.
    """
    parts = [socket.gethostname()]
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(source) if source.endswith("/pid") else Path(source).read_text().strip())
        except OSError:
            parts.append("")
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=6).hexdigest()


def _owner() -> tuple[int, str]:
    """(pid, host tag) of the process making a reservation (tests replace this to fake a dead owner)."""
    return os.getpid(), _host()


def _owner_state(owner: Any, me: tuple[int, str]) -> Literal["dead", "live", "mine"]:
    """Whether a reservation's owner process is certainly dead; anything uncertain counts as live."""
    if not owner:  # no owner recorded: a reservation meant to outlive its process (a webhook job)
        return "live"
    pid, host = owner
    if host != me[1] or os.name != "posix" or not isinstance(pid, int) or pid <= 0:
        return "live"  # another machine (or boot, or pid namespace): its pids mean nothing here
    if pid == me[0]:
        return "mine"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except OSError:  # PermissionError: it exists, under another user
        return "live"
    return "live"


def _pack(rec: dict[str, Any]) -> tuple[Any, ...]:
    """An open reservation as a compact tuple: the state record holds every open one."""
    return (
        rec["micros"],
        rec["expires_at"],
        rec["created_at"],
        tuple(rec["scopes"]),
        rec["provider"],
        rec["model"],
        rec["task"],
        rec["request_key"],
        rec.get("owner"),
        rec.get("since", rec["created_at"]),
        rec.get("shares", False),
    )


def _unpack(packed: tuple[Any, ...]) -> dict[str, Any]:
    # Ledgers written before owners were recorded hold 8-tuples: their owner is unknown (never "dead").
    micros, expires_at, created_at, scopes, provider, model, task, request_key = packed[:8]
    keys = period_keys_at(created_at)
    return {
        "micros": micros,
        "expires_at": expires_at,
        "created_at": created_at,
        "scopes": list(scopes),
        "provider": provider,
        "model": model,
        "task": task,
        "request_key": request_key,
        "owner": packed[8] if len(packed) > 8 else None,
        "since": packed[9] if len(packed) > 9 else created_at,
        "shares": packed[10] if len(packed) > 10 else False,
        "period_keys": [[scope, period, keys[period]] for scope in scopes for period in PERIODS],
    }


class HeldElsewhere(GenrouteError):
    """Another live process holds an open reservation for the same shared request: it is serving it now
    and will keep the result in the shared store. Raised by :meth:`Ledger.reserve` (``shared=True``) instead
    of reserving; the router then waits for that work rather than pay for it a second time."""

    default_hint = "wait for the other process to finish, or ask with cache 'refresh' to run it again anyway"

    def __init__(self, reservation_id: str, *, provider: str, pid: int) -> None:
        super().__init__(f"the same request is being served by another process (pid {pid}, on {provider})")
        self.reservation_id = reservation_id
        self.provider = provider
        self.pid = pid


def _counter_key(scope: str, period: str, period_key: str) -> str:
    return _SEP.join(("c", scope, period, period_key))


class Ledger:
    """Reserve, settle and release spend against budget limits; safe across threads and processes."""

    def __init__(
        self,
        path: Path,
        limits: Sequence[BudgetLimit] = (),
        *,
        warn_share: float = 0.8,
        reservation_ttl_seconds: float = 900,
        on_warning: Callable[[BudgetWarning], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < warn_share <= 1:
            raise ValueError("warn_share must be in (0, 1]")
        if reservation_ttl_seconds <= 0:
            raise ValueError("reservation_ttl_seconds must be positive")
        self.path = Path(path)
        self.limits: tuple[BudgetLimit, ...] = tuple(limits)
        self.warn_share = warn_share
        self.reservation_ttl_seconds = reservation_ttl_seconds
        self.on_warning = on_warning
        self._clock = clock
        self._warn_share = Decimal(str(warn_share))
        self._closed: dict[str, str] = {}
        self._limit_micros: tuple[tuple[BudgetLimit, ...], list[tuple[BudgetLimit, int]]] = ((), [])
        self._pending_savings: list[str] = []
        self._savings_lock = threading.Lock()
        if self.path.exists() and not self.path.is_dir():
            raise LedgerError(
                f"the ledger at {self.path}: a file is there, not a directory",
                hint="point ledger.path in plugins.toml at a directory (the file is not genroute's; leave it)",
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create the ledger directory {self.path}: {exc}") from exc
        try:
            self._cache: Any = diskcache.Cache(str(self.path), **_CACHE_SETTINGS)
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            raise LedgerError(f"cannot open the ledger at {self.path}: {exc}") from exc
        with self._guard():
            self._cache.add("version", _SCHEMA_VERSION)
            version = self._cache.get("version")
            if version == _SCHEMA_VERSION:
                with self._cache.transact():
                    self._db().execute(
                        f"CREATE TABLE IF NOT EXISTS {_STATE_TABLE} (name TEXT PRIMARY KEY, value BLOB NOT NULL)"
                    )
                    self._db().execute(
                        f"CREATE TABLE IF NOT EXISTS {_ENTRY_TABLE} (seq INTEGER PRIMARY KEY, entry TEXT NOT NULL)"
                    )
        if version != _SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger at {self.path} has schema version {version}, this genroute reads {_SCHEMA_VERSION}",
                hint="it was written by another genroute version: export it with that version "
                "(genroute budget --export-json), then move the directory aside",
            )

    # ---------------------------------------------------------------- plumbing

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Write pending savings and close this process's connections to the ledger."""
        self.flush()
        with self._guard():
            self._cache.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r}, limits={len(self.limits)})"

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn storage failures into :class:`LedgerError` naming the directory."""
        try:
            yield
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            detail = str(exc) or type(exc).__name__
            raise LedgerError(f"the ledger at {self.path} could not be read or written: {detail}") from exc

    @contextmanager
    def _txn(self) -> Iterator[None]:
        """One atomic transaction (``BEGIN IMMEDIATE``: one writer across all processes)."""
        with self._guard(), self._cache.transact():
            yield

    def _db(self) -> sqlite3.Connection:
        """diskcache's connection for this thread (the one its ``transact`` runs on)."""
        return self._cache._con  # type: ignore[no-any-return]

    def _load(self) -> dict[str, Any]:
        row = self._db().execute(f"SELECT value FROM {_STATE_TABLE} WHERE name = 'state'").fetchone()
        if row is None:
            return {"counters": {}, "open": {}, "scopes": []}
        state: dict[str, Any] = pickle.loads(row[0])
        return state

    def _store(self, state: dict[str, Any], current: dict[str, str] | None = None) -> None:
        if current is not None:
            self._archive_stale(state, current)
        self._db().execute(
            f"INSERT OR REPLACE INTO {_STATE_TABLE} (name, value) VALUES ('state', ?)",
            (pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL),),
        )

    def _archive_stale(self, state: dict[str, Any], current: dict[str, str]) -> None:
        """Move counters of past periods with nothing reserved out of the hot state record."""
        counters: dict[tuple[str, str, str], list[int]] = state["counters"]
        stale = [k for k, (_s, r) in counters.items() if r == 0 and k[2] != current[k[1]]]
        for scope, period, key in stale:
            spent, _reserved = counters.pop((scope, period, key))
            self._cache.set(_counter_key(scope, period, key), (spent, 0))
        exhausted: dict[tuple[str, str, str], str] = state.get("exhausted", {})
        for mark in [m for m in exhausted if m[2] != current[m[1]]]:
            del exhausted[mark]

    def _get_counter(self, state: dict[str, Any], scope: str, period: str, period_key: str) -> tuple[int, int]:
        value = state["counters"].get((scope, period, period_key))
        if value is None:
            value = self._cache.get(_counter_key(scope, period, period_key))
        if value is None:
            return 0, 0
        spent, reserved = value
        return int(spent), int(reserved)

    def _add_counter(
        self, state: dict[str, Any], scope: str, period: str, period_key: str, *, spent: int = 0, reserved: int = 0
    ) -> None:
        old_spent, old_reserved = self._get_counter(state, scope, period, period_key)
        state["counters"][(scope, period, period_key)] = [old_spent + spent, old_reserved + reserved]

    @staticmethod
    def _take_open(state: dict[str, Any], rid: str) -> dict[str, Any] | None:
        """Inside a transaction: remove and return an open reservation's record."""
        packed = state["open"].pop(rid, None)
        return None if packed is None else _unpack(packed)

    def _append(self, entry: LedgerEntry) -> None:
        self._db().execute(f"INSERT INTO {_ENTRY_TABLE} (entry) VALUES (?)", (entry.model_dump_json(),))

    def _remember(self, rid: str, status: str) -> None:
        # In memory only: a reservation is settled by the process that made it, and keeping this set
        # out of the shared state record keeps every transaction's read and write small.
        self._closed[rid] = status
        while len(self._closed) > _RECENT_LIMIT:
            del self._closed[next(iter(self._closed))]

    def _now(self) -> tuple[float, datetime]:
        now = float(self._clock())
        return now, datetime.fromtimestamp(now, tz=UTC)

    def _limits_in_micros(self) -> list[tuple[BudgetLimit, int]]:
        """``(limit, its amount in micro-dollars)`` for :attr:`limits`, recomputed only when they change."""
        seen, converted = self._limit_micros
        if seen is not self.limits:
            converted = [(limit, usd_to_micros(limit.usd)) for limit in self.limits]
            self._limit_micros = (self.limits, converted)
        return converted

    @staticmethod
    def _check_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
        if isinstance(scopes, str):
            raise TypeError("scopes must be a sequence of scope names, not one string")
        unique: list[str] = []
        for scope in scopes:
            if not scope or _SEP in scope or scope != scope.strip():
                raise ValueError(f"invalid scope name {scope!r}")
            if scope not in unique:
                unique.append(scope)
        return tuple(unique)

    @staticmethod
    def _to_reservation(rid: str, rec: dict[str, Any]) -> Reservation:
        return Reservation(
            id=rid,
            amount=micros_to_usd(rec["micros"]),
            scopes=tuple(rec["scopes"]),
            provider=rec["provider"],
            model=rec["model"],
            task=rec["task"],
            request_key=rec["request_key"],
            created_at=rec["created_at"],
            expires_at=rec["expires_at"],
            period_keys=tuple((s, p, k) for s, p, k in rec["period_keys"]),
        )

    @staticmethod
    def _day_of(rec: dict[str, Any]) -> str:
        for _scope, period, key in rec["period_keys"]:
            if period == "daily":
                return str(key)
        return datetime.fromtimestamp(rec["created_at"], tz=UTC).strftime("%Y-%m-%d")

    def _entry(
        self,
        rid: str,
        rec: dict[str, Any],
        status: Literal["settled", "released", "reclaimed"],
        at: datetime,
        *,
        actual: int = 0,
        job_id: str | None = None,
        note: str = "",
    ) -> LedgerEntry:
        # Built from the ledger's own checked values: validating them again would only cost time while the
        # transaction holds the write lock.
        return LedgerEntry.model_construct(
            id=rid,
            status=status,
            at=at,
            day=self._day_of(rec),
            provider=rec["provider"],
            model=rec["model"],
            task=rec["task"],
            scopes=list(rec["scopes"]),
            estimate=micros_to_usd(rec["micros"]),
            actual=micros_to_usd(actual),
            over_estimate=actual > rec["micros"],
            request_key=rec["request_key"],
            job_id=job_id,
            note=note,
        )

    def _reclaim(self, state: dict[str, Any], now: float, at: datetime) -> int:
        """Inside a transaction: release every expired open reservation (``state`` mutated) as "reclaimed"."""
        expired = [rid for rid, packed in state["open"].items() if packed[1] <= now]
        for rid in expired:
            rec = self._close_reclaimed(state, rid, at, "reservation expired; its process likely died")
            if rec is not None:
                logger.warning(
                    "reclaimed expired reservation %s (%s/%s, $%s)",
                    rid,
                    rec["provider"],
                    rec["model"],
                    micros_to_usd(rec["micros"]),
                )
        return len(expired)

    def _close_reclaimed(self, state: dict[str, Any], rid: str, at: datetime, note: str) -> dict[str, Any] | None:
        """Inside a transaction: close an open reservation as "reclaimed" (nothing spent); its record.

        A late ``settle`` of it still records the spend (see :meth:`_finished`).
        """
        rec = self._take_open(state, rid)
        if rec is None:
            return None
        for scope, period, key in rec["period_keys"]:
            self._add_counter(state, scope, period, key, reserved=-rec["micros"])
        self._cache.set(f"closed{_SEP}{rid}", {"status": "reclaimed", "res": rec})
        self._remember(rid, "reclaimed")
        self._append(self._entry(rid, rec, "reclaimed", at, note=note))
        return rec

    # ---------------------------------------------------------------- operations

    def reserve(
        self,
        amount: Decimal,
        *,
        scopes: Sequence[str],
        provider: str,
        model: str,
        task: str,
        request_key: str = "",
        ttl_seconds: float | None = None,
        outlives_process: bool = False,
        shared: bool = False,
    ) -> Reservation:
        """Set ``amount`` aside in every scope, or raise :class:`BudgetExceeded` and write nothing.

        The amount is rounded up to the micro-dollar. Expired reservations are reclaimed first.
        ``ttl_seconds`` (default: the ledger's) is how long before a reservation left open by a dead
        process is reclaimed; give a call that may run long a longer one.

        The reservation records the process making it, so that a later reservation of the same
        ``request_key`` on the same ``provider`` learns (:attr:`Reservation.orphaned_since`) that a process
        that died may have started that work, and takes it over: the dead process's open reservations of
        that key and provider are closed then as "reclaimed", so a second re-run cannot adopt, and pay for,
        the same work again. ``outlives_process``: the reservation is meant to stay open
        after this process ends (settled by whichever process receives a webhook): no owner is recorded.

        ``shared``: the work's result will be kept in the shared result store. If another live process
        holds an open shared reservation of the same ``request_key`` (any provider), nothing is reserved and
        :class:`HeldElsewhere` is raised: that process is doing this work now, and waiting for it costs nothing.
        """
        value = to_decimal(amount)
        if value < 0:
            raise ValueError(f"cannot reserve a negative amount: {value}")
        micros = usd_to_micros(value, round_up=True)
        scope_list = self._check_scopes(scopes)
        now, at = self._now()
        keys = period_keys_at(now)
        period_keys = tuple((scope, period, keys[period]) for scope in scope_list for period in PERIODS)
        rid = secrets.token_hex(16)  # 32 hex digits, like uuid4().hex, at a fifth of the cost
        rec: dict[str, Any] = {
            "micros": micros,
            "scopes": list(scope_list),
            "provider": provider,
            "model": model,
            "task": task,
            "request_key": request_key,
            "created_at": now,
            "expires_at": now + (ttl_seconds if ttl_seconds is not None else self.reservation_ttl_seconds),
            "period_keys": [list(t) for t in period_keys],
            "owner": None if outlives_process else _owner(),
            "shares": shared,
        }
        refusal: BudgetExceeded | HeldElsewhere | None = None
        orphaned_since: float | None = None
        with self._txn():
            state = self._load()
            reclaimed = self._reclaim(state, now, at)
            orphans = self._orphans(state, request_key, provider) if request_key else {}
            orphaned_since = min(orphans.values(), default=None)
            if orphaned_since is not None:
                rec["since"] = orphaned_since  # should this process die too, the next one looks back as far
            refusal = self._live_sharer(state, request_key) if shared and request_key else None
            if refusal is None:
                refusal = self._exhausted_refusal(state, scope_list, keys, micros)
            for limit, limit_micros in self._limits_in_micros() if refusal is None else ():
                if limit.scope not in scope_list:
                    continue
                spent, reserved = self._get_counter(state, limit.scope, limit.period, keys[limit.period])
                if spent + reserved + micros > limit_micros:
                    refusal = BudgetExceeded(
                        scope=limit.scope,
                        period=limit.period,
                        limit=limit.usd,
                        spent=micros_to_usd(spent),
                        reserved=micros_to_usd(reserved),
                        asked=micros_to_usd(micros),
                    )
                    break
            if refusal is None:
                for scope, period, key in period_keys:
                    self._add_counter(state, scope, period, key, reserved=micros)
                state["open"][rid] = _pack(rec)
                # This reservation takes over the same work from the dead process's: closed now, so that
                # the work it may have started is adopted, and paid for, by one later reservation only.
                for orphan in orphans:
                    self._close_reclaimed(state, orphan, at, f"its process died; taken over by reservation {rid}")
                seen = set(state["scopes"])
                if not seen.issuperset(scope_list):
                    state["scopes"] = sorted(seen.union(scope_list))
                self._store(state, keys)
            elif reclaimed:
                self._store(state)
        if refusal is not None:
            logger.info("refused reservation of $%s for %s/%s: %s", micros_to_usd(micros), provider, model, refusal)
            raise refusal
        logger.debug("reserved $%s for %s/%s as %s", micros_to_usd(micros), provider, model, rid)
        reservation = self._to_reservation(rid, rec)
        if orphaned_since is not None:
            logger.info("%s/%s: a process that died left this request open since %.3f", provider, model, orphaned_since)
            reservation = dataclasses.replace(reservation, orphaned_since=orphaned_since)
        return reservation

    @staticmethod
    def _orphans(state: dict[str, Any], request_key: str, provider: str) -> dict[str, float]:
        """Inside a transaction: open reservations of this key and provider whose process died, with when made.

        Empty when a live process other than this one holds one too: its work and a dead process's could
        not be told apart, and live workers never take over each other's work.
        """
        me = _owner()
        dead: dict[str, float] = {}
        for rid, packed in state["open"].items():
            if packed[7] != request_key or packed[4] != provider:
                continue
            owner_state = _owner_state(packed[8] if len(packed) > 8 else None, me)
            if owner_state == "live":
                return {}
            if owner_state == "dead":
                # when its work began, or the work it took over from an earlier dead process
                dead[rid] = packed[9] if len(packed) > 9 else packed[2]
        return dead

    @staticmethod
    def _live_sharer(state: dict[str, Any], request_key: str) -> HeldElsewhere | None:
        """Inside a transaction: another live process's open shared reservation of this key, if any."""
        me = _owner()
        for rid, packed in state["open"].items():
            if packed[7] != request_key or len(packed) <= 10 or not packed[10]:
                continue
            owner = packed[8]
            if owner and _owner_state(owner, me) == "live":
                return HeldElsewhere(rid, provider=packed[4], pid=owner[0])
        return None

    def serving_elsewhere(self, reservation_id: str) -> bool:
        """Whether reservation ``reservation_id`` is still open and its process not known to be dead."""
        with self._guard():
            packed = self._load()["open"].get(reservation_id)
        if packed is None:
            return False
        return _owner_state(packed[8] if len(packed) > 8 else None, _owner()) != "dead"

    def settle(
        self, reservation: Reservation, actual: Decimal, *, job_id: str | None = None, note: str = ""
    ) -> LedgerEntry:
        """Replace the reservation by the actual cost; ``over_estimate`` flags an actual above it.

        Settling a reservation that was reclaimed still records the spend (the money was spent).
        Raises :class:`LedgerError` for a reservation already settled or released, or unknown.
        """
        value = to_decimal(actual)
        if value < 0:
            raise ValueError(f"cannot settle a negative amount: {value}")
        micros = usd_to_micros(value)
        _now, at = self._now()
        rid = reservation.id
        with self._txn():
            state = self._load()
            rec = self._take_open(state, rid)
            if rec is not None:
                for scope, period, key in rec["period_keys"]:
                    self._add_counter(state, scope, period, key, spent=micros, reserved=-rec["micros"])
            else:
                rec = self._finished(state, rid, "settle")
                for scope, period, key in rec["period_keys"]:
                    self._add_counter(state, scope, period, key, spent=micros)
                note = "; ".join(part for part in ("settled after reclaim", note) if part)
            self._remember(rid, "settled")
            self._store(state)
            entry = self._entry(rid, rec, "settled", at, actual=micros, job_id=job_id, note=note)
            self._append(entry)
            warnings = self._check_warnings(state, rec)
        if entry.over_estimate:
            logger.warning(
                "%s/%s cost %s, above its estimate %s (reservation %s)",
                entry.provider,
                entry.model,
                fmt_usd(entry.actual),
                fmt_usd(entry.estimate),
                rid,
            )
        for warning in warnings:
            logger.warning(
                "budget %s (%s) at %.0f%% of its %s limit: %s spent",
                warning.scope,
                warning.period if warning.period == "total" else f"{warning.period} {warning.period_key}",
                warning.share * 100,
                fmt_usd(warning.limit),
                fmt_usd(warning.spent),
            )
            if self.on_warning is not None:
                try:
                    self.on_warning(warning)
                except Exception as exc:
                    logger.warning("the budget warning callback failed: %s", redact(f"{type(exc).__name__}: {exc}"))
        return entry

    def release(self, reservation: Reservation, *, note: str = "") -> LedgerEntry:
        """Free the reservation without spending (the call failed before costing anything).

        Releasing one that was already reclaimed records the release and changes no counter.
        Raises :class:`LedgerError` for a reservation already settled or released, or unknown.
        """
        _now, at = self._now()
        rid = reservation.id
        with self._txn():
            state = self._load()
            rec = self._take_open(state, rid)
            if rec is not None:
                for scope, period, key in rec["period_keys"]:
                    self._add_counter(state, scope, period, key, reserved=-rec["micros"])
            else:
                rec = self._finished(state, rid, "release")
                note = "; ".join(part for part in ("released after reclaim", note) if part)
            self._remember(rid, "released")
            self._store(state)
            entry = self._entry(rid, rec, "released", at, note=note)
            self._append(entry)
        logger.debug("released reservation %s", rid)
        return entry

    def _finished(self, state: dict[str, Any], rid: str, verb: str) -> dict[str, Any]:
        """The record of a reservation that is no longer open, if it was reclaimed; else LedgerError."""
        status = self._closed.get(rid)
        if status is not None and status != "reclaimed":
            raise LedgerError(
                f"cannot {verb} reservation {rid}: it was already {status}",
                hint="settle or release each reservation exactly once",
            )
        closed = self._cache.get(f"closed{_SEP}{rid}")
        if closed is None:
            raise LedgerError(
                f"cannot {verb} reservation {rid}: the ledger at {self.path} has no such reservation",
                hint="settle or release each reservation exactly once",
            )
        rec: dict[str, Any] = closed["res"]
        self._cache.delete(f"closed{_SEP}{rid}")
        return rec

    def _check_warnings(self, state: dict[str, Any], rec: dict[str, Any]) -> list[BudgetWarning]:
        """Inside a transaction: warnings newly due for the limits this reservation's scopes touch."""
        warnings: list[BudgetWarning] = []
        keys = {(scope, period): key for scope, period, key in rec["period_keys"]}
        for limit, limit_micros in self._limits_in_micros():
            key = keys.get((limit.scope, limit.period))
            if key is None:
                continue
            spent, _reserved = self._get_counter(state, limit.scope, limit.period, key)
            if spent <= 0 or spent < self._warn_share * limit_micros:
                continue
            marker = _SEP.join(("w", limit.scope, limit.period, key, str(limit_micros)))
            if not self._cache.add(marker, 1):
                continue
            warnings.append(
                BudgetWarning(
                    scope=limit.scope,
                    period=limit.period,
                    period_key=key,
                    limit=limit.usd,
                    spent=micros_to_usd(spent),
                    share=spent / limit_micros if limit_micros else float("inf"),
                )
            )
        return warnings

    def record_saving(self, amount: Decimal, *, provider: str, model: str, task: str, request_key: str) -> LedgerEntry:
        """Record a cache hit: ``amount`` is the cost avoided; nothing is charged."""
        value = to_decimal(amount)
        if value < 0:
            raise ValueError(f"a saving cannot be negative: {value}")
        now, at = self._now()
        entry = LedgerEntry(
            id=secrets.token_hex(16),
            status="saving",
            at=at,
            day=period_keys_at(now)["daily"],
            provider=provider,
            model=model,
            task=task,
            scopes=[],
            estimate=micros_to_usd(usd_to_micros(value)),
            actual=micros_to_usd(0),
            request_key=request_key,
            note="served from the result store",
        )
        # Savings move no money: they are written in batches, so a cache hit costs no write of its own.
        # A crash loses at most _SAVINGS_BATCH of them, never a reservation or a settlement.
        with self._savings_lock:
            self._pending_savings.append(entry.model_dump_json())
            due = len(self._pending_savings) >= _SAVINGS_BATCH
        if due:
            self.flush()
        return entry

    def flush(self) -> None:
        """Write savings kept in memory."""
        with self._savings_lock:
            pending, self._pending_savings = self._pending_savings, []
        if pending:
            with self._txn():
                self._db().executemany(f"INSERT INTO {_ENTRY_TABLE} (entry) VALUES (?)", [(raw,) for raw in pending])

    def exhaust(self, scope: str, *, period: str = "monthly", note: str = "") -> None:
        """Refuse every reservation in ``scope`` until ``period`` ends (UTC), whatever its limit says.

        For a provider that reports its free credit used up (HTTP 402) before the ledger's own count
        reaches the limit: the router calls this so every process stops offering that free work.
        """
        if period not in PERIODS:
            raise ValueError(f"unknown period {period!r}")
        (scope,) = self._check_scopes([scope])
        now, _at = self._now()
        key = period_keys_at(now)[period]
        with self._txn():
            state = self._load()
            state.setdefault("exhausted", {})[(scope, period, key)] = note or "exhausted"
            self._store(state)
        logger.warning("budget scope %s refused until the %s period %s ends: %s", scope, period, key, note)

    def _exhausted_refusal(
        self, state: dict[str, Any], scopes: Sequence[str], keys: dict[str, str], micros: int
    ) -> BudgetExceeded | None:
        exhausted: dict[tuple[str, str, str], str] = state.get("exhausted", {})
        for scope in scopes:
            for period in PERIODS:
                note = exhausted.get((scope, period, keys[period]))
                if note is not None:
                    spent, reserved = self._get_counter(state, scope, period, keys[period])
                    return BudgetExceeded(
                        scope=scope,
                        period=period,
                        limit=micros_to_usd(spent),
                        spent=micros_to_usd(spent),
                        reserved=micros_to_usd(reserved),
                        asked=micros_to_usd(micros),
                        hint=f"the provider reported this credit used up ({note}); it returns next {period} period",
                    )
        return None

    # ---------------------------------------------------------------- routing state shared with the budget

    def post_cooldown(self, provider: str, until: float) -> None:
        """Tell every process sharing this ledger that ``provider`` is out of rotation until ``until``.

        (POSIX time.) Not money: kept here because the ledger's directory is what every process of a
        deployment shares. Storage errors are logged, never raised: a cooldown is advice.
        """
        try:
            with self._guard():
                self._cache.set(f"cooldown{_SEP}{provider}", float(until))
        except LedgerError as exc:
            logger.warning("could not share the cooldown of %s: %s", provider, exc.message)

    def cooldown_until(self, provider: str) -> float | None:
        """Until when another process took ``provider`` out of rotation (POSIX time), if it did."""
        try:
            with self._guard():
                value = self._cache.get(f"cooldown{_SEP}{provider}")
        except LedgerError as exc:
            logger.debug("could not read the shared cooldown of %s: %s", provider, exc.message)
            return None
        return float(value) if isinstance(value, (int, float)) else None

    def reclaim_expired(self) -> int:
        """Release, as "reclaimed", every reservation past its expiry; return how many."""
        now, at = self._now()
        with self._txn():
            state = self._load()
            count = self._reclaim(state, now, at)
            if count:
                self._store(state)
            return count

    # ---------------------------------------------------------------- reading

    def headroom(self, scopes: Sequence[str]) -> Decimal | None:
        """The smallest ``limit - spent - reserved`` over the limits on these scopes now; ``None`` if none.

        Expired reservations are reclaimed first, as :meth:`reserve` would. May be negative when an
        actual cost exceeded its estimate.
        """
        tightest = self.tightest(scopes)
        return None if tightest is None else tightest.left

    def tightest(self, scopes: Sequence[str]) -> Headroom | None:
        """:meth:`headroom` with the limit it comes from (scope and period); ``None`` if no limit applies.

        A scope the provider reported used up (:meth:`exhaust`) has nothing left, until its period ends.
        """
        scope_list = self._check_scopes(scopes)
        now, at = self._now()
        keys = period_keys_at(now)
        applicable = [(limit, micros) for limit, micros in self._limits_in_micros() if limit.scope in scope_list]
        with self._guard():
            state = self._load()
            refusal = self._exhausted_refusal(state, scope_list, keys, 0)
            if refusal is not None:
                return Headroom(Decimal(0), refusal.scope, refusal.period, hint=refusal.hint)
            if not applicable:
                return None
            if any(packed[1] <= now for packed in state["open"].values()):
                with self._cache.transact():
                    state = self._load()
                    if self._reclaim(state, now, at):
                        self._store(state)
        smallest: tuple[int, BudgetLimit] | None = None
        for limit, limit_micros in applicable:
            spent, reserved = self._get_counter(state, limit.scope, limit.period, keys[limit.period])
            left = limit_micros - spent - reserved
            if smallest is None or left < smallest[0]:
                smallest = (left, limit)
        if smallest is None:
            return None
        left, limit = smallest
        return Headroom(micros_to_usd(left), limit.scope, limit.period)

    def usage(self) -> list[ScopeUsage]:
        """Spent and reserved for every scope seen or limited, in the current total/day/month periods.

        One consistent snapshot. Where several limits cover the same scope and period, the tightest shows.
        """
        keys = period_keys_at(float(self._clock()))
        rows: list[ScopeUsage] = []
        with self._txn():
            state = self._load()
            exhausted: dict[tuple[str, str, str], str] = state.get("exhausted", {})
            scopes = set(state["scopes"]).union(limit.scope for limit in self.limits)
            scopes.update(scope for scope, period, key in exhausted if key == keys[period])
            for scope in sorted(scopes):
                for period in PERIODS:
                    applicable = [lim.usd for lim in self.limits if lim.scope == scope and lim.period == period]
                    limit = min(applicable) if applicable else None
                    spent, reserved = self._get_counter(state, scope, period, keys[period])
                    left = None if limit is None else micros_to_usd(usd_to_micros(limit) - spent - reserved)
                    why = exhausted.get((scope, period, keys[period]))
                    rows.append(
                        ScopeUsage(
                            scope=scope,
                            period=period,
                            period_key=keys[period],
                            limit=limit,
                            spent=micros_to_usd(spent),
                            reserved=micros_to_usd(reserved),
                            left=left if why is None else micros_to_usd(0),
                            exhausted=why,
                        )
                    )
        return rows

    def reservation(self, rid: str) -> Reservation | None:
        """The open reservation ``rid``, from any process; None when it is no longer open."""
        with self._guard():
            packed = self._load()["open"].get(rid)
        return None if packed is None else self._to_reservation(rid, _unpack(packed))

    def open_reservations(self) -> list[Reservation]:
        """Reservations neither settled, released nor reclaimed, oldest first."""
        with self._guard():
            records = [(rid, _unpack(packed)) for rid, packed in self._load()["open"].items()]
        found = [self._to_reservation(rid, rec) for rid, rec in records]
        return sorted(found, key=lambda r: (r.created_at, r.id))

    def entries(self) -> Iterator[LedgerEntry]:
        """Every entry, in the order written (entries written meanwhile by others may be left out)."""
        self.flush()
        with self._guard():
            (last,) = self._db().execute(f"SELECT coalesce(max(seq), 0) FROM {_ENTRY_TABLE}").fetchone()
        seq = 0
        while seq < last:
            with self._guard():
                page = (
                    self._db()
                    .execute(
                        f"SELECT seq, entry FROM {_ENTRY_TABLE} WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                        (seq, last, _ENTRY_PAGE),
                    )
                    .fetchall()
                )
            if not page:
                break
            seq = page[-1][0]
            for _seq, raw in page:
                yield LedgerEntry.model_validate_json(raw)

    def _counter(self, scope: str, period: str, period_key: str) -> tuple[Decimal, Decimal]:
        """(spent, reserved) of one scope in one period key; for tests and diagnostics."""
        with self._guard():
            spent, reserved = self._get_counter(self._load(), scope, period, period_key)
        return micros_to_usd(spent), micros_to_usd(reserved)

    def report(self) -> BudgetReport:
        """Usage now, settled spend by provider, model and day, and savings from cache hits."""
        _now, at = self._now()
        usage = self.usage()
        providers: dict[str, list[int]] = {}
        models: dict[tuple[str, str], list[int]] = {}
        days: dict[str, list[int]] = {}
        saved = [0, 0]
        for entry in self.entries():
            if entry.status == "saving":
                saved[0] += usd_to_micros(entry.estimate)
                saved[1] += 1
            elif entry.status == "settled":
                micros = usd_to_micros(entry.actual)
                for bucket in (
                    providers.setdefault(entry.provider, [0, 0]),
                    models.setdefault((entry.provider, entry.model), [0, 0]),
                    days.setdefault(entry.day, [0, 0]),
                ):
                    bucket[0] += micros
                    bucket[1] += 1
        return BudgetReport(
            generated_at=at,
            usage=usage,
            savings=micros_to_usd(saved[0]),
            saved_requests=saved[1],
            by_provider=[
                {"provider": p, "spent": micros_to_usd(m), "count": c} for p, (m, c) in sorted(providers.items())
            ],
            by_model=[
                {"provider": p, "model": mo, "spent": micros_to_usd(m), "count": c}
                for (p, mo), (m, c) in sorted(models.items())
            ],
            by_day=[{"day": d, "spent": micros_to_usd(m), "count": c} for d, (m, c) in sorted(days.items())],
        )

    def export_csv(self, target: Path, *, field: str | None = None) -> None:
        """Write :meth:`report` as CSV to ``target``, atomically (see :func:`_write_atomically`).

        ``field`` names where the path came from (``--export-csv``) in the error a bad target raises.
        """
        _write_atomically(Path(target), self.report().to_csv(), field=field)

    def export_json(self, target: Path, *, field: str | None = None) -> None:
        """Write :meth:`report` as JSON to ``target``, atomically (see :func:`_write_atomically`)."""
        _write_atomically(Path(target), self.report().to_json(), field=field)


def _current_umask() -> int:
    mask = os.umask(0o022)  # read once, at import: the only way to read it is to set it
    os.umask(mask)
    return mask


_UMASK = _current_umask()

_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _write_atomically(target: Path, text: str, *, field: str | None = None) -> None:
    """Write ``text`` to the file ``target`` names, all at once or not at all.

    The text goes to a temporary file in the same directory as that file, then is renamed over it, so a
    reader never sees half a report. A symlink is followed: the file it points at gets the report and the
    link stays a link. Anything at ``target`` that is not a regular file (a directory, a FIFO, a device,
    a socket) is refused, never replaced. A file that exists keeps its permissions.

    Raises :class:`InvalidRequest` (naming ``field`` when given, and ``target``) for a target that cannot
    be written, saying why and what to do; the temporary file is never named, and never left behind.
    """
    destination, mode = _report_destination(target, field)
    shown = str(target) if destination == target else f"{target} (which leads to {destination})"
    directory = destination.parent
    step = f"cannot create the directory {directory}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        step = f"cannot create a file in {directory} (the report is written beside {destination.name}, then renamed)"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{destination.name}.", suffix=".tmp")
        try:
            step = f"cannot write {destination}"
            os.fchmod(fd, mode)
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            step = f"cannot replace {destination}"
            os.replace(tmp, destination)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            hint = "free some space on that disk, or give a path on another one"
        else:
            hint = "give a path in a directory you can write, or fix the permissions of that directory"
        raise InvalidRequest(
            f"cannot write the budget report to {shown}: {step}: {exc.strerror or type(exc).__name__}",
            field=field,
            hint=hint,
        ) from None


def _report_destination(target: Path, field: str | None) -> tuple[Path, int]:
    """The file a report for ``target`` goes to (symlinks followed) and the permissions it gets.

    Refuses a target that exists and is not a regular file: renaming a report over it would replace a
    FIFO, a device (``/dev/stdout``…) or a socket with a plain file, and a directory cannot be written.
    """
    try:
        found = os.stat(target)  # follows symlinks: what a write to this path would reach
    except FileNotFoundError:
        found = None  # a new file (or a dangling link: the file it names is created)
    except OSError as exc:  # a symlink loop, a part of the path that is a file…
        raise InvalidRequest(
            f"cannot write the budget report to {target}: {exc.strerror or type(exc).__name__}",
            field=field,
            hint="give the path of a file (new, or a regular file to replace)",
        ) from None
    destination = Path(os.path.realpath(target)) if target.is_symlink() else target
    if found is not None and not stat.S_ISREG(found.st_mode):
        kind = next((name for test, name in _NOT_REGULAR if test(found.st_mode)), "not a regular file")
        leads = "" if destination == target else f" (which leads to {destination})"
        raise InvalidRequest(
            f"will not write the budget report to {target}{leads}: it is {kind}, not a regular file",
            field=field,
            hint="give the path of a file (new, or a regular file to replace); to read the report on the "
            "terminal, use genroute budget --json",
        )
    mode = stat.S_IMODE(found.st_mode) if found is not None else 0o666 & ~_UMASK
    return destination, mode
