"""The result store: a request key → the result's metadata plus its output bytes, on local disk.

Provider URLs expire, so the store keeps the bytes themselves. Layout under the store directory:

* ``data/`` — one :class:`diskcache.Cache` holding result records under ``("result", request_key)``
  (JSON text: the :class:`~genroute.types.Result` without local paths) and output files under
  ``("blob", sha256)``. Blobs are content-addressed, so equal outputs of different requests are kept once,
  and each blob is always a file of its own inside ``data/``: an :class:`~genroute.types.Artifact`'s
  ``path`` points straight at it, no copy made.
* ``stats/`` — a small cache that never evicts, holding the hit, miss and saved-money counters.
* ``scratch/`` — outputs the store could not keep (a result larger than ``max_bytes``), named
  ``<sha256><suffix>`` so a result is always handed back with real files.

The size limit (``max_bytes``) is diskcache's: before a write, once about a sixty-fourth of ``max_bytes``
was written since the last check, the least recently stored items are evicted until the store is under it.
A result whose blob was evicted is a miss, never an error. **An artifact's path can disappear** once a
later write evicts its blob (in this or another process): copy files out promptly with
:meth:`Artifact.save <genroute.types.Artifact.save>` or :meth:`~genroute.types.Artifact.read_bytes`, and treat
a vanished file like a miss.

Safe across threads and across processes sharing the directory (SQLite locking), on one machine's
local disk only: SQLite over a network file system corrupts or crashes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import diskcache
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import StoreError
from .money import micros_to_usd, usd_to_micros
from .types import MEDIA_SUFFIXES, Artifact, OutputFile, Result

__all__ = ["ResultStore", "StoreStats"]

log = logging.getLogger("genroute.store")

_RESULT = "r|"
_BLOB = "b|"
_HITS, _MISSES, _SAVED = "hits", "misses", "saved_micros"
_SQLITE_MEMORY: dict[str, int] = {"sqlite_mmap_size": 0, "sqlite_cache_size": 2048}
"""Blobs are files, so the index database stays small: no memory map, a modest page cache per connection."""
_FLUSH_EVERY = 64  # counter updates kept in memory before one write; a crash loses at most this many


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

    def __init__(self, path: Path, *, max_bytes: int = 2 * 1024**3) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self._path = Path(path).expanduser().resolve()
        self._max_bytes = max_bytes
        self._data: Any = None
        self._stats: Any = None
        self._pending = {_HITS: 0, _MISSES: 0, _SAVED: 0}
        self._pending_ops = 0
        self._lock = threading.Lock()
        self._written = 0
        self._cull_every = max(1, max_bytes // 64)
        with self._guard("open"):
            self._path.mkdir(parents=True, exist_ok=True)
            self._data = diskcache.Cache(
                str(self._path / "data"),
                disk=_BlobDisk,
                size_limit=max_bytes,
                eviction_policy="least-recently-stored",
                cull_limit=0,  # eviction runs in _maybe_cull, not inside every write
                **_SQLITE_MEMORY,
            )
            self._stats = diskcache.Cache(str(self._path / "stats"), eviction_policy="none", **_SQLITE_MEMORY)

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
            raw = self._data.get(_RESULT + key)
            if raw is None:
                return None
            try:
                record = _Record.model_validate_json(raw)
            except (ValidationError, ValueError, TypeError) as exc:
                log.warning("result store %s: discarding unreadable record for %s: %s", self._path, key, exc)
                self._discard(key, raw)
                return None
            artifacts: list[Artifact] = []
            for stored in record.artifacts:
                blob = self._blob_path(stored.sha256, stored.media_type)
                if blob is None:
                    log.info("result store %s: %s was evicted (blob %s gone); a miss", self._path, key, stored.sha256)
                    self._discard(key, raw)
                    return None
                artifacts.append(Artifact(path=blob, **stored.model_dump()))
        return record.result.model_copy(update={"artifacts": artifacts})

    def put(self, key: str, result: Result, files: Sequence[OutputFile]) -> Result:
        """Keep ``files``' bytes and ``result`` under ``key``; return ``result`` with one artifact per file.

        ``result.artifacts`` is ignored (rebuilt from ``files``); every other field is kept. The returned
        artifact paths exist on return. If the result cannot be kept (larger than ``max_bytes``, or evicted
        at once by concurrent writes) its files go to ``scratch/`` and the next ``get`` is a miss.
        """
        digests = [hashlib.sha256(file.data).hexdigest() for file in files]
        stored = [
            _StoredArtifact(media_type=f.media_type, sha256=d, size=len(f.data), source_url=f.source_url)
            for f, d in zip(files, digests, strict=True)
        ]
        total = sum(len(file.data) for file in files)
        if total > self._max_bytes:
            log.warning(
                "result store %s: result %s (%d bytes) is larger than store.max_bytes (%d); not kept",
                self._path, key, total, self._max_bytes,
            )  # fmt: skip
            with self._guard(f"write result {key} to scratch"):
                spilled = [self._scratch(f, d) for f, d in zip(files, digests, strict=True)]
            return self._with_artifacts(result, stored, spilled)

        raw = _Record(result=result.model_copy(update={"artifacts": []}), artifacts=stored).model_dump_json()
        self._maybe_cull(total + len(raw))  # before writing, so this result is never its own victim
        with self._guard(f"write result {key}"), self._data.transact():
            for file, digest in zip(files, digests, strict=True):
                # Dedupe by content: a blob's file exists exactly while its row does (see _blob_path).
                if self._blob_path(digest, file.media_type) is None:
                    self._data.add(_blob_key(digest, file.media_type), io.BytesIO(file.data), read=True)
            self._data.set(_RESULT + key, raw)
            paths: list[Path] = []
            lost = False
            for file, digest in zip(files, digests, strict=True):
                blob = self._blob_path(digest, file.media_type)
                if blob is None:  # evicted by this very write or a concurrent one
                    lost = True
                    blob = self._scratch(file, digest)
                paths.append(blob)
            if lost:
                log.warning(
                    "result store %s: result %s was evicted while being stored (store.max_bytes %d too small?);"
                    " not kept",
                    self._path, key, self._max_bytes,
                )  # fmt: skip
                self._discard(key, raw)
        return self._with_artifacts(result, stored, paths)

    def _maybe_cull(self, incoming: int) -> None:
        """Evict the oldest entries once enough was written since the last check to matter.

        Checking the volume on every write costs more than the write itself, so the store may run over
        ``max_bytes`` by a sixty-fourth of it plus the result being written.
        """
        with self._lock:
            self._written += incoming
            if self._written < self._cull_every:
                return
            self._written = 0
        with self._guard("evict old results"):
            self._data.cull()

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
            return StoreStats(
                entries=self._count_results(),
                bytes=int(self._data.volume()),
                max_bytes=int(self._data.size_limit),
                hits=int(self._stats.get(_HITS, 0)),
                misses=int(self._stats.get(_MISSES, 0)),
                saved_usd=micros_to_usd(int(self._stats.get(_SAVED, 0))),
            )

    # -- housekeeping --------------------------------------------------------------------------------------

    def clear(self) -> int:
        """Remove every result, blob, scratch file and counter; return how many results were removed."""
        with self._lock:
            self._pending = {_HITS: 0, _MISSES: 0, _SAVED: 0}
            self._pending_ops = 0
        with self._guard("clear"):
            count = self._count_results()
            self._data.clear()
            self._stats.clear()
            scratch = self._path / "scratch"
            if scratch.is_dir():
                for item in scratch.iterdir():
                    item.unlink(missing_ok=True)
        log.info("result store %s: cleared %d results", self._path, count)
        return count

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
        return f"ResultStore({str(self._path)!r}, max_bytes={self._max_bytes})"

    # -- internals -----------------------------------------------------------------------------------------

    def _blob_path(self, digest: str, media_type: str) -> Path | None:
        """The file holding blob ``digest``, or ``None`` when it is gone (evicted)."""
        # Blob file names are fixed by content (see _BlobDisk), so a stat answers without a query;
        # eviction deletes the row first and the file after, so an existing file is a live blob.
        path = self._path / "data" / _blob_filename(_blob_key(digest, media_type))
        return path if path.is_file() else None

    def _discard(self, key: str, raw: Any) -> None:
        """Delete ``("result", key)`` only if it still holds ``raw`` (a concurrent put may have replaced it)."""
        with self._data.transact():
            if self._data.get(_RESULT + key) == raw:
                self._data.delete(_RESULT + key)

    def _count_results(self) -> int:
        return sum(1 for k in self._data.iterkeys() if isinstance(k, str) and k.startswith(_RESULT))

    def _scratch(self, file: OutputFile, digest: str) -> Path:
        """Write ``file`` outside the cache, content-addressed, atomically."""
        directory = self._path / "scratch"
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{digest}{MEDIA_SUFFIXES.get(file.media_type, '.bin')}"
        if not target.exists():
            tmp = directory / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.write_bytes(file.data)
            tmp.replace(target)
        return target

    @staticmethod
    def _with_artifacts(result: Result, stored: list[_StoredArtifact], paths: list[Path]) -> Result:
        artifacts = [Artifact(path=p, **s.model_dump()) for s, p in zip(stored, paths, strict=True)]
        return result.model_copy(update={"artifacts": artifacts})

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn diskcache's SQLite and file errors into :class:`StoreError` naming the directory."""
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
                "it is only a cache, so deleting it (or `genroute cache clear`) is safe",
            ) from exc


def _blob_key(digest: str, media_type: str) -> str:
    return f"{_BLOB}{digest}|{MEDIA_SUFFIXES.get(media_type, '.bin')}"


def _blob_filename(key: str) -> str:
    digest, suffix = key[len(_BLOB) :].split("|", 1)
    return os.path.join("blobs", digest[:2], digest + suffix)


class _BlobDisk(diskcache.Disk):  # type: ignore[misc]
    """Names blob files by content (``blobs/ab/abcd….png``) instead of at random.

    Fixed names give artifacts a real suffix, keep the directory count at 256 (creating a directory
    per blob dominated the cost of a store write), and let a reader find a blob without a query.
    """

    def filename(self, key: Any = diskcache.core.UNKNOWN, value: Any = diskcache.core.UNKNOWN) -> tuple[str, str]:
        if isinstance(key, str) and key.startswith(_BLOB):
            name = _blob_filename(key)
            full_path = os.path.join(self._directory, name)
            # Only reached under the store's write transaction with no row for this key: a file already
            # there is an orphan from a crash between writing it and committing its row.
            if os.path.exists(full_path):
                os.remove(full_path)
            return name, full_path
        return super().filename(key, value)  # type: ignore[no-any-return]
