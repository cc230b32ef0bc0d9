"""The result store: a request key → the result's metadata plus its output bytes, on local disk.

Provider URLs expire, so the store keeps the bytes themselves. Layout under the store directory:

* ``data/`` — a :class:`diskcache.Cache` directory. Its SQLite database holds two tables of the store's
  own, written through diskcache's connection inside its ``BEGIN IMMEDIATE`` transactions (a diskcache
  ``add``/``set`` costs several times a bare statement, and every miss writes one result):
  ``genroute_results`` (request key → the :class:`~genroute.types.Result` as JSON, without local paths)
  and ``genroute_blobs`` (one row per output file). Blobs are content-addressed files,
  ``data/blobs/ab/<sha256><suffix>``, so equal outputs of different requests are kept once, and an
  :class:`~genroute.types.Artifact`'s ``path`` points straight at one, no copy made.
* ``stats/`` — a small diskcache that never evicts, holding the hit, miss and saved-money counters.
* ``scratch/`` — the files of results the store does not keep, named ``<sha256><suffix>`` so a result
  is always handed back with real files: a result larger than ``max_bytes`` (:meth:`ResultStore.put`), and,
  written by the router through :func:`write_scratch`, results with the store disabled or ``cache =
  "bypass"``. :func:`write_scratch` is the one writer of the folder: it keeps it under
  ``scratch_max_bytes`` (``[store] scratch_max_bytes``), oldest files first, never removing the files it
  is returning nor any written or handed out in the last ``SCRATCH_GRACE_SECONDS``.

The size limit (``max_bytes``) counts blob bytes plus the database's used pages. Before a process's first
write, and then once it has written about a sixty-fourth of ``max_bytes`` since its last check, the least
recently stored results and blobs are evicted until the new result fits. A result whose blob was evicted
is a miss, never an error. **An artifact's path can disappear** once a later write evicts its blob (in this or another
process): copy files out promptly with :meth:`Artifact.save <genroute.types.Artifact.save>` or
:meth:`~genroute.types.Artifact.read_bytes`, and treat a vanished file like a miss.

Blob files are only ever deleted by a process holding the database's write lock, so a writer that finds
a blob's file under that lock knows it stays until its result is committed. A hit trusts a file whose
size is the recorded one (content names make equal sizes equal bytes, barring outside tampering), so a
file cut short by a crash is a miss and is rewritten rather than served; hashing every hit would cost more
than the hit. Tampering is caught where the bytes are read anyway: :meth:`Artifact.read_bytes
<genroute.types.Artifact.read_bytes>` and :meth:`~genroute.types.Artifact.save` check them against their
sha256, and :meth:`ResultStore.put` (a request run again with ``cache = "refresh"``) replaces an existing
blob whose bytes differ.

The store only ever removes files it named itself (blobs as above, scratch files ``<sha256><suffix>``):
anything else found in its folders is left in place, with a warning. A database SQLite reports damaged (not a
database, or malformed) is started anew when the store opens or is cleared: its ``cache.db`` files and the
blobs go, with a warning, and its results are lost (misses); nothing else in the directory is touched.

Safe across threads and across processes sharing the directory (SQLite locking), on one machine's
local disk only: SQLite over a network file system corrupts or crashes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import diskcache
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import StoreError
from .money import micros_to_usd, usd_to_micros
from .sqlite_settings import HOT_WRITES
from .types import MEDIA_SUFFIXES, Artifact, OutputFile, Result

__all__ = ["SCRATCH_GRACE_SECONDS", "SCRATCH_MAX_BYTES", "ResultStore", "StoreStats", "write_scratch"]

log = logging.getLogger("genroute.store")

_RESULTS = "genroute_results"
_BLOBS = "genroute_blobs"
_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {_RESULTS} "
    "(key TEXT PRIMARY KEY, record TEXT NOT NULL, size INTEGER NOT NULL, stored_at REAL NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {_RESULTS}_age ON {_RESULTS} (stored_at)",
    f"CREATE TABLE IF NOT EXISTS {_BLOBS} (name TEXT PRIMARY KEY, size INTEGER NOT NULL, stored_at REAL NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {_BLOBS}_age ON {_BLOBS} (stored_at)",
)
_HITS, _MISSES, _SAVED = "hits", "misses", "saved_micros"
_LOCAL_PATHS = {"result": {"artifacts"}}  # a record keeps no local paths: they are rebuilt when read
_FLUSH_EVERY = 64  # counter updates kept in memory before one write; a crash loses at most this many
SCRATCH_MAX_BYTES = 256 * 1024**2  # the default size limit of scratch/ ([store] scratch_max_bytes)
# A scratch file this young is never removed to bound the folder: the caller that got it (in this or
# another process) may not have copied it yet.
SCRATCH_GRACE_SECONDS = 60.0
_EVICT_BATCH = 64  # oldest items looked at per eviction query
# The names the store gives files, the only ones it ever removes: a directory shared with anything else by
# mistake keeps that anything. Blobs: ``<sha256><suffix>`` (and ``<that>.<pid>.<thread>.tmp`` while being
# replaced); scratch files: ``<sha256><suffix>`` (and ``.<sha256>.<pid>.<thread>.tmp`` while being written).
_SUFFIX = "(?:" + "|".join(sorted({re.escape(s) for s in (*MEDIA_SUFFIXES.values(), ".bin")})) + ")"
_BLOB_NAME = re.compile(rf"[0-9a-f]{{64}}{_SUFFIX}(?:\.[0-9]+\.[0-9]+\.tmp)?")
_SCRATCH_NAME = re.compile(rf"[0-9a-f]{{64}}{_SUFFIX}|\.[0-9a-f]{{64}}\.[0-9]+\.[0-9]+\.tmp")


class StoreStats(BaseModel):
    """A snapshot of the store: its size and how often it saved a provider call."""

    model_config = ConfigDict(frozen=True)

    entries: int = Field(description="result records held (a record whose blob was evicted counts until read)")
    bytes: int = Field(description="disk used by the data cache, files and database")
    max_bytes: int
    hits: int
    misses: int
    saved_usd: Decimal = Field(description="money not spent thanks to hits, to the micro-dollar")


class _StoredArtifact(BaseModel):
    """An artifact as recorded: everything but the local path, which changes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    media_type: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    source_url: str | None = None


class _Record(BaseModel):
    """What ``("result", key)`` holds, as JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    result: Result
    artifacts: list[_StoredArtifact]


class ResultStore:
    """Results and their output bytes by request key, bounded by ``max_bytes`` on disk."""

    def __init__(self, path: Path, *, max_bytes: int = 2 * 1024**3, scratch_max_bytes: int = SCRATCH_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if scratch_max_bytes < 0:
            raise ValueError("scratch_max_bytes cannot be negative")
        self._path = Path(path).expanduser().resolve()
        self._scratch_max_bytes = scratch_max_bytes
        self._blob_root = os.path.join(str(self._path), "data", "blobs")
        self._max_bytes = max_bytes
        self._data: Any = None
        self._stats: Any = None
        self._pending = {_HITS: 0, _MISSES: 0, _SAVED: 0}
        self._pending_ops = 0
        self._lock = threading.Lock()
        self._cull_every = max(1, max_bytes // 64)
        # The first write of each process checks the volume: a process that writes less than a sixty-fourth
        # of max_bytes in its life (one `genroute run`) would otherwise never check, and many of them
        # together would grow the store without bound.
        self._written = self._cull_every
        if self._path.exists() and not self._path.is_dir():  # a user's file: never advise deleting it
            raise StoreError(
                f"result store at {self._path}: a file is there, not a directory",
                hint="point store.path in plugins.toml at a directory (the file is not genroute's; leave it)",
            )
        with self._guard("open"):
            self._path.mkdir(parents=True, exist_ok=True)
            self._data = self._open("data")
            self._stats = self._open("stats")

    def _open(self, name: Literal["data", "stats"]) -> Any:
        """Open ``data/`` or ``stats/``; one whose database is damaged is started anew (see :meth:`_rebuild`)."""
        try:
            return self._open_cache(name)
        except sqlite3.DatabaseError as exc:
            return self._reopened(name, exc)

    def _reopened(self, name: Literal["data", "stats"], exc: sqlite3.DatabaseError) -> Any:
        """``name`` opened anew after ``exc`` when SQLite says its database is damaged (:meth:`_rebuild`); any
        other database error (locked, I/O) is raised again."""
        if not _damaged(exc):
            raise exc
        self._rebuild(name, exc)
        return self._open_cache(name)

    def _open_cache(self, name: Literal["data", "stats"]) -> Any:
        if name == "stats":
            return diskcache.Cache(str(self._path / "stats"), eviction_policy="none", **HOT_WRITES)
        cache = diskcache.Cache(str(self._path / "data"), eviction_policy="none", cull_limit=0, **HOT_WRITES)
        try:
            with cache.transact():
                for statement in _SCHEMA:
                    cache._con.execute(statement)
        except BaseException:
            cache.close()
            raise
        return cache

    def _rebuild(self, name: Literal["data", "stats"], exc: sqlite3.DatabaseError) -> None:
        """Remove the damaged database of ``data/`` (with the blobs it listed) or ``stats/``, so it is made anew.

        Only the store's own files go: the database's (``cache.db`` and its ``-wal``, ``-shm``) and, for
        ``data/``, the files named as blobs under ``data/blobs/``. The results it held are lost (a miss each).
        """
        what = "its results and the files it stored" if name == "data" else "its hit, miss and saving counters"
        log.warning(
            "result store %s: the database %s is damaged (%s); starting it anew (%s are lost)",
            self._path, self._path / name / "cache.db", exc, what,
        )  # fmt: skip
        old = self._data if name == "data" else self._stats
        if old is not None:
            with suppress(Exception):  # its connection may fail on the damaged file: the files go anyway
                old.close()
        for suffix in ("", "-wal", "-shm"):
            _unlink(os.path.join(self._path, name, "cache.db" + suffix))
        if name == "data":
            self._remove_blob_files()

    @property
    def path(self) -> Path:
        """The store directory (absolute)."""
        return self._path

    # -- results -------------------------------------------------------------------------------------------

    def get(self, key: str) -> Result | None:
        """The stored result for ``key`` with fresh artifact paths, or ``None`` on a miss.

        A record whose blob was evicted, or that cannot be read, is deleted and counts as a miss.
        The caller marks the result as cached and records the hit or miss.
        """
        with self._guard(f"read result {key}"):
            row = self._db().execute(f"SELECT record FROM {_RESULTS} WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            raw = row[0]
            try:
                record = _Record.model_validate_json(raw)
            except (ValidationError, ValueError, TypeError) as exc:
                log.warning("result store %s: discarding unreadable record for %s: %s", self._path, key, exc)
                self._discard(key, raw)
                return None
            artifacts: list[Artifact] = []
            for stored in record.artifacts:
                blob = self._blob_file(stored.sha256, stored.media_type)
                if not _holds(blob, stored.size):
                    log.info("result store %s: %s was evicted (blob %s gone); a miss", self._path, key, stored.sha256)
                    self._discard(key, raw)
                    return None
                artifacts.append(_artifact(stored, blob))
        return record.result.model_copy(update={"artifacts": artifacts})

    def put(self, key: str, result: Result, files: Sequence[OutputFile]) -> Result:
        """Keep ``files``' bytes and ``result`` under ``key``; return ``result`` with one artifact per file.

        ``result.artifacts`` is ignored (rebuilt from ``files``); every other field is kept. The returned
        artifact paths exist on return. If the result cannot be kept (larger than ``max_bytes``) its files
        go to ``scratch/`` (through :func:`write_scratch`, so the folder stays under ``scratch_max_bytes``)
        and the next ``get`` is a miss.
        """
        digests = [hashlib.sha256(file.data).hexdigest() for file in files]
        # Built from values computed here (a digest, a length, an OutputFile's checked fields): validating
        # them again would only cost time on every miss.
        stored = [
            _StoredArtifact.model_construct(
                media_type=f.media_type, sha256=d, size=len(f.data), source_url=f.source_url
            )
            for f, d in zip(files, digests, strict=True)
        ]
        total = sum(len(file.data) for file in files)
        if total > self._max_bytes:
            log.warning(
                "result store %s: result %s (%d bytes) is larger than store.max_bytes (%d); not kept",
                self._path, key, total, self._max_bytes,
            )  # fmt: skip
            with self._guard(f"write result {key} to scratch"):
                spilled = write_scratch(self._path / "scratch", files, max_bytes=self._scratch_max_bytes)
            return result.model_copy(update={"artifacts": spilled})

        raw = _Record.model_construct(result=result, artifacts=stored).model_dump_json(exclude=_LOCAL_PATHS)
        blobs = [self._blob_file(d, f.media_type) for f, d in zip(files, digests, strict=True)]
        self._maybe_cull(total + len(raw))  # before writing, so this result is never its own victim
        with self._guard(f"write result {key}"):
            # Write the bytes before taking the lock, so other writers wait only for the rows; then check
            # again under it, since an eviction may have removed an equal blob's file in between.
            for file, blob in zip(files, blobs, strict=True):
                _ensure_file(blob, file.data, compare=True)
            with self._data.transact():
                now = time.time()  # under the lock, so that writers' times follow their order
                db = self._db()
                for file, blob in zip(files, blobs, strict=True):
                    _ensure_file(blob, file.data, compare=False)
                    db.execute(
                        f"INSERT INTO {_BLOBS} (name, size, stored_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET stored_at = max(stored_at, excluded.stored_at)",
                        (os.path.basename(blob), len(file.data), now),
                    )
                db.execute(
                    f"INSERT OR REPLACE INTO {_RESULTS} (key, record, size, stored_at) VALUES (?, ?, ?, ?)",
                    (key, raw, len(raw), now),
                )
        return self._with_artifacts(result, stored, blobs)

    def _maybe_cull(self, incoming: int) -> None:
        """Evict the oldest results and blobs once enough was written since the last check to matter.

        Checking the volume on every write costs more than the write itself, so the store may run over
        ``max_bytes`` by a sixty-fourth of it plus the result being written.
        """
        with self._lock:
            self._written += incoming
            if self._written < self._cull_every:
                return
            self._written = 0
        with self._guard("evict old results"), self._data.transact():
            db = self._db()
            excess = self._volume(db) + incoming - self._max_bytes
            while excess > 0:
                oldest = db.execute(
                    f"SELECT 'blob', name, size, stored_at FROM {_BLOBS} "
                    f"UNION ALL SELECT 'result', key, size, stored_at FROM {_RESULTS} ORDER BY 4 LIMIT ?",
                    (_EVICT_BATCH,),
                ).fetchall()
                if not oldest:
                    break
                for kind, name, size, _stored_at in oldest:
                    if kind == "blob":
                        db.execute(f"DELETE FROM {_BLOBS} WHERE name = ?", (name,))
                        if _BLOB_NAME.fullmatch(name):  # never a path a damaged row could make up
                            _unlink(os.path.join(self._blob_root, name[:2], name))
                    else:
                        db.execute(f"DELETE FROM {_RESULTS} WHERE key = ?", (name,))
                    excess -= size
                    if excess <= 0:
                        break

    def _volume(self, db: sqlite3.Connection) -> int:
        """Bytes held: blob files plus the database's used pages."""
        (blob_bytes,) = db.execute(f"SELECT coalesce(sum(size), 0) FROM {_BLOBS}").fetchone()
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        (free,) = db.execute("PRAGMA freelist_count").fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        return int(blob_bytes) + (int(pages) - int(free)) * int(page_size)

    # -- counters ------------------------------------------------------------------------------------------

    def record_hit(self, saved: Decimal) -> None:
        """Count one hit that saved ``saved`` dollars (kept to the micro-dollar)."""
        if saved < 0:
            raise ValueError(f"a saving cannot be negative: {saved}")
        self._count(hits=1, saved=usd_to_micros(saved))

    def record_miss(self) -> None:
        """Count one miss."""
        self._count(misses=1)

    def _count(self, *, hits: int = 0, misses: int = 0, saved: int = 0) -> None:
        # Counters are advisory: batch them so a hit costs no extra write transaction.
        with self._lock:
            self._pending[_HITS] += hits
            self._pending[_MISSES] += misses
            self._pending[_SAVED] += saved
            self._pending_ops += 1
            due = self._pending_ops >= _FLUSH_EVERY
        if due:
            self.flush()

    def flush(self) -> None:
        """Write counter updates kept in memory."""
        with self._lock:
            pending, self._pending = self._pending, {_HITS: 0, _MISSES: 0, _SAVED: 0}
            self._pending_ops = 0
        if not any(pending.values()) or self._stats is None:
            return
        with self._guard("record statistics"), self._stats.transact():
            for name, delta in pending.items():
                if delta:
                    self._stats.incr(name, delta)

    def stats(self) -> StoreStats:
        """Entries, disk use and the hit/miss/saving counters (kept across restarts, reset by :meth:`clear`)."""
        self.flush()
        with self._guard("read statistics"):
            db = self._db()
            return StoreStats(
                entries=self._count_results(),
                bytes=self._volume(db),
                max_bytes=self._max_bytes,
                hits=int(self._stats.get(_HITS, 0)),
                misses=int(self._stats.get(_MISSES, 0)),
                saved_usd=micros_to_usd(int(self._stats.get(_SAVED, 0))),
            )

    # -- housekeeping --------------------------------------------------------------------------------------

    def clear(self) -> int:
        """Remove every result, blob, scratch file and counter; return how many results were removed.

        Only files the store named itself are removed (blobs ``data/blobs/ab/<sha256><suffix>``, scratch
        files ``scratch/<sha256><suffix>``): anything else found there is left, with a warning.
        """
        with self._lock:
            self._pending = {_HITS: 0, _MISSES: 0, _SAVED: 0}
            self._pending_ops = 0
        with self._guard("clear"):
            try:
                with self._data.transact():
                    count = self._count_results()
                    db = self._db()
                    db.execute(f"DELETE FROM {_RESULTS}")
                    db.execute(f"DELETE FROM {_BLOBS}")
                    self._remove_blob_files()  # files of rows already gone too (a crash's orphans)
                self._data.clear()  # anything an older genroute kept as diskcache items
            except sqlite3.DatabaseError as exc:  # a database that cannot even be emptied is made anew
                self._data = self._reopened("data", exc)
                count = 0
            try:
                self._stats.clear()
            except sqlite3.DatabaseError as exc:
                self._stats = self._reopened("stats", exc)
            _clear_scratch(self._path / "scratch")
        log.info("result store %s: cleared %d results", self._path, count)
        return count

    def _remove_blob_files(self) -> None:
        """Remove every file under ``data/blobs/`` named as the store names blobs; warn about anything else."""
        if not os.path.isdir(self._blob_root):
            return
        for directory, dirs, names in os.walk(self._blob_root):
            inner = directory != self._blob_root
            if inner:
                for name in dirs:  # the store makes no directories below data/blobs/<ab>/
                    _foreign(os.path.join(directory, name))
                dirs.clear()
            else:
                for name in [d for d in dirs if not re.fullmatch("[0-9a-f]{2}", d)]:
                    _foreign(os.path.join(directory, name))
                    dirs.remove(name)
            for name in names:
                path = os.path.join(directory, name)
                if inner and _BLOB_NAME.fullmatch(name) and name[:2] == os.path.basename(directory):
                    _unlink(path)
                else:
                    _foreign(path)

    def close(self) -> None:
        """Close the database connections (the store reopens them if used again)."""
        if self._stats is not None:
            self.flush()
        for cache in (self._data, self._stats):
            if cache is not None:
                cache.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ResultStore({str(self._path)!r}, max_bytes={self._max_bytes}, "
            f"scratch_max_bytes={self._scratch_max_bytes})"
        )

    # -- internals -----------------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        """diskcache's connection for this thread (the one its ``transact`` runs on)."""
        return self._data._con  # type: ignore[no-any-return]

    def _blob_file(self, digest: str, media_type: str) -> str:
        """Where blob ``digest`` lives: ``data/blobs/<first two hex digits>/<digest><suffix>``."""
        return os.path.join(self._blob_root, digest[:2], digest + MEDIA_SUFFIXES.get(media_type, ".bin"))

    def _discard(self, key: str, raw: Any) -> None:
        """Delete ``key``'s record only if it still holds ``raw`` (a concurrent put may have replaced it)."""
        with self._data.transact():
            self._db().execute(f"DELETE FROM {_RESULTS} WHERE key = ? AND record = ?", (key, raw))

    def _count_results(self) -> int:
        (count,) = self._db().execute(f"SELECT count(*) FROM {_RESULTS}").fetchone()
        return int(count)

    @staticmethod
    def _with_artifacts(result: Result, stored: list[_StoredArtifact], paths: Sequence[str | Path]) -> Result:
        artifacts = [_artifact(s, p) for s, p in zip(stored, paths, strict=True)]
        return result.model_copy(update={"artifacts": artifacts})

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn SQLite, diskcache and file errors into :class:`StoreError` naming the directory."""
        try:
            yield
        except diskcache.Timeout as exc:
            raise StoreError(
                f"result store at {self._path}: could not {action}: the database stayed locked",
                hint="another genroute process holds the store; wait and retry, or use a separate store.path",
            ) from exc
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"result store at {self._path}: could not {action}: {exc}",
                hint=f"check that {self._path} is writable and on a local disk (not a network share); "
                f"if its database is damaged, `genroute cache clear` rebuilds it (only the store's own files, "
                f"{os.path.join(self._path, 'data', 'cache.db')} and the files it stored, are removed)",
            ) from exc


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite says the database file itself is damaged or not a database at all (not locked, not I/O)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # raised by Python's sqlite3 module rather than SQLite itself: judge by the message
        return "malformed" in str(exc) or "not a database" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _artifact(stored: _StoredArtifact, path: str | Path) -> Artifact:
    # The store's own checked values: no validation needed (and it costs on every miss and hit).
    return Artifact.model_construct(
        media_type=stored.media_type,
        path=Path(path),
        sha256=stored.sha256,
        size=stored.size,
        source_url=stored.source_url,
    )


def write_scratch(directory: Path, files: Sequence[OutputFile], *, max_bytes: int) -> list[Artifact]:
    """Write files no store keeps to the scratch folder ``directory``; return one artifact per file.

    Files are named by content (``<sha256><suffix>``), so equal outputs are written once; one already there
    is handed out again and its age restarts. Then the folder is brought back under ``max_bytes`` by
    removing its oldest files — never the ones just returned, nor any written or handed out in the last
    ``SCRATCH_GRACE_SECONDS`` (another call's, maybe another process's, whose caller has yet to copy it).
    The returned paths exist on return. Every writer of a scratch folder goes through here.
    """
    if not files:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    artifacts = []
    for file in files:
        digest = hashlib.sha256(file.data).hexdigest()
        path = directory / f"{digest}{MEDIA_SUFFIXES.get(file.media_type, '.bin')}"
        if not _hand_out_again(path, file.data):
            tmp = directory / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.write_bytes(file.data)
            tmp.replace(path)
        artifacts.append(
            Artifact.model_construct(
                media_type=file.media_type, path=path, sha256=digest, size=len(file.data), source_url=file.source_url
            )
        )
    _bound_scratch(directory, max_bytes, keep={a.path.name for a in artifacts})
    return artifacts


def _hand_out_again(path: Path, data: bytes) -> bool:
    """Whether ``path`` already holds the bytes ``data`` to hand out; if so its age restarts.

    False when it is missing, cut short, changed on disk, or cannot be touched — say another process's trim
    removed it between the calls: the caller then writes it anew rather than hand out a path that is gone.
    """
    try:
        if os.stat(path).st_size != len(data) or not _same_bytes(str(path), data):
            return False
        os.utime(path)
    except OSError:
        return False
    return True


def _scratch_listing(directory: Path) -> list[tuple[float, int, str]]:
    """The files genroute wrote in a scratch folder as ``(modified, size, name)`` (anything else there is not
    theirs to count or remove); raises OSError if it cannot be listed."""
    files: list[tuple[float, int, str]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not _SCRATCH_NAME.fullmatch(entry.name):
                continue
            with suppress(OSError):  # a file removed meanwhile by another process
                if entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    files.append((info.st_mtime, info.st_size, entry.name))
    return files


def _bound_scratch(directory: Path, max_bytes: int, keep: set[str]) -> None:
    """Remove the oldest scratch files until the folder holds at most ``max_bytes`` (see write_scratch)."""
    try:
        files = _scratch_listing(directory)
    except OSError as exc:
        log.warning("scratch folder %s: could not list it to remove old files: %s", directory, exc)
        return
    total = sum(size for _, size, _ in files)
    if total <= max_bytes:
        return
    recent = time.time() - SCRATCH_GRACE_SECONDS
    removed = 0
    for modified, size, name in sorted(files):
        if total <= max_bytes or modified >= recent:
            break
        if name in keep:
            continue
        path = directory / name
        try:
            # The listing may be stale: another process may have handed this file out again since.
            if os.stat(path).st_mtime >= recent:
                continue
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("scratch folder %s: could not remove %s: %s", directory, name, exc)
            continue
        total -= size
        removed += 1
    if removed:
        log.debug("scratch folder %s: removed %d old file(s); %d bytes left", directory, removed, total)


def _clear_scratch(directory: Path) -> None:
    """Remove the files genroute wrote in a scratch folder; leave anything else there, with a warning."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if _SCRATCH_NAME.fullmatch(entry.name) and not entry.is_dir(follow_symlinks=False):
            _unlink(entry.path)
        else:
            _foreign(entry.path)


def _foreign(path: str) -> None:
    """Say that ``path``, in a folder of the store's, was left alone: the store never removes what it did not name."""
    log.warning("result store: left %s in place: it is not a file the store wrote (not named as its files are)", path)


def _holds(path: str, size: int) -> bool:
    """Whether ``path`` is a file of ``size`` bytes (a blob cut short by a crash is not)."""
    try:
        return os.stat(path).st_size == size
    except OSError:
        return False


def _same_bytes(path: str, data: bytes) -> bool:
    """Whether the file ``path`` holds exactly ``data``."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(data) + 1) == data
    except OSError:
        return False


def _ensure_file(path: str, data: bytes, *, compare: bool) -> None:
    """Make ``path`` a file holding ``data``, unless it already is one of that size (holding ``data`` too, if
    ``compare``: a blob whose bytes were changed on disk is then replaced, so a request run again with
    ``cache = "refresh"`` repairs it; only an existing blob of equal size is read, never on a new output)."""
    if _holds(path, len(data)) and (not compare or _same_bytes(path, data)):
        return
    try:
        _write_new(path, data)
    except FileExistsError:  # a crash's leftover or a concurrent writer's: replace it whole
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)


def _write_new(path: str, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with open(fd, "wb") as handle:
        handle.write(data)


def _unlink(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)
