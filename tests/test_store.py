"""The result store: round trips, dedupe, eviction, corruption, counters, size limit, processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genroute.errors import StoreError
from genroute.store import _RESULTS, ResultStore, StoreStats
from genroute.types import OutputFile, Result, Segment

MIB = 1024**2


def make_result(key: str = "k" * 64, **changes: object) -> Result:
    fields: dict[str, object] = {
        "request_key": key,
        "task": "text-to-image",
        "provider": "mock",
        "model": "mock/flux",
        "tier": "quality",
        "text": None,
        "segments": None,
        "estimated_cost": Decimal("0.0035"),
        "actual_cost": Decimal("0.003125"),
        "latency_seconds": 1.234567,
        "attempts": 2,
        "job_id": "job-42",
        "created_at": datetime(2025, 11, 23, 4, 5, 6, 789012, tzinfo=UTC),
    }
    fields.update(changes)
    return Result.model_validate(fields)


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def png(n: int, size: int = 10_000) -> OutputFile:
    data = n.to_bytes(8, "big") + os.urandom(size - 8)
    return OutputFile(data=data, media_type="image/png", source_url=f"https://example.test/{n}.png")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    with ResultStore(tmp_path / "store") as s:
        yield s


def test_put_then_get_round_trips_every_field_and_the_bytes(store: ResultStore) -> None:
    key = key_of("a")
    files = [png(1), OutputFile(data=b"second", media_type="text/plain")]
    original = make_result(key)

    put = store.put(key, original, files)
    got = store.get(key)

    assert got is not None
    assert got.model_dump(exclude={"artifacts"}) == original.model_dump(exclude={"artifacts"})
    assert got.created_at.tzinfo is not None and got.created_at == original.created_at
    assert isinstance(got.actual_cost, Decimal) and got.actual_cost == Decimal("0.003125")
    assert got.artifacts == put.artifacts
    for artifact, file in zip(got.artifacts, files, strict=True):
        assert artifact.path.is_absolute() and artifact.path.is_relative_to(store.path)
        assert artifact.read_bytes() == file.data
        assert artifact.sha256 == hashlib.sha256(file.data).hexdigest()
        assert artifact.size == len(file.data)
        assert artifact.media_type == file.media_type
        assert artifact.source_url == file.source_url


def test_put_ignores_artifacts_passed_in_and_returns_them_rebuilt(store: ResultStore, tmp_path: Path) -> None:
    key = key_of("b")
    out = store.put(key, make_result(key), [png(2)])
    # feed a result that already has artifacts: they are replaced by the files given
    again = store.put(key, out, [png(3)])
    assert len(again.artifacts) == 1 and again.artifacts[0].read_bytes()[:8] == (3).to_bytes(8, "big")
    got = store.get(key)
    assert got is not None and got.artifacts[0].sha256 == again.artifacts[0].sha256


def test_equal_bytes_are_stored_once(store: ResultStore) -> None:
    file = png(7, size=100_000)
    a = store.put(key_of("one"), make_result(key_of("one")), [file])
    before = store.stats().bytes
    b = store.put(key_of("two"), make_result(key_of("two"), provider="other"), [file])

    assert a.artifacts[0].path == b.artifacts[0].path
    copies = [p for p in (store.path / "data").rglob("*") if p.is_file() and p.read_bytes() == file.data]
    assert len(copies) == 1
    assert store.stats().entries == 2
    assert store.stats().bytes - before < len(file.data) // 2
    got_a, got_b = store.get(key_of("one")), store.get(key_of("two"))
    assert got_a is not None and got_b is not None
    assert got_a.artifacts[0].read_bytes() == got_b.artifacts[0].read_bytes() == file.data
    assert got_b.provider == "other"


def test_text_result_without_files_round_trips(store: ResultStore) -> None:
    key = key_of("text")
    original = make_result(
        key,
        task="speech-to-text",
        text="héllo wörld\n" * 5000,  # over diskcache's 32 KB inline limit: stored as a file, still fine
        segments=[Segment(start=0.0, end=1.5, text="héllo"), Segment(start=1.5, end=3.25, text="wörld")],
    )
    assert store.put(key, original, []).artifacts == []
    got = store.get(key)
    assert got == original


def test_unknown_key_is_a_miss(store: ResultStore) -> None:
    assert store.get(key_of("nothing")) is None
    assert store.stats().entries == 0


def _record_of(store: ResultStore, key: str) -> object:
    with sqlite3.connect(store.path / "data" / "cache.db") as db:
        row = db.execute(f"SELECT record FROM {_RESULTS} WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def test_evicted_blob_makes_a_miss_and_drops_the_record(store: ResultStore) -> None:
    key = key_of("evicted")
    out = store.put(key, make_result(key), [png(1), png(2)])
    out.artifacts[1].path.unlink()  # what another process's eviction does
    assert store.get(key) is None
    assert _record_of(store, key) is None
    assert store.stats().entries == 0


def test_blob_cut_short_by_a_crash_is_a_miss_then_rewritten_whole(store: ResultStore) -> None:
    key = key_of("short")
    file = png(5, size=50_000)
    out = store.put(key, make_result(key), [file])
    out.artifacts[0].path.write_bytes(file.data[:1000])  # a write the machine died in the middle of
    assert store.get(key) is None
    again = store.put(key, make_result(key), [file])
    assert again.artifacts[0].read_bytes() == file.data
    got = store.get(key)
    assert got is not None and got.artifacts[0].read_bytes() == file.data


def test_a_blob_shared_with_a_newer_result_outlives_older_ones(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s", max_bytes=MIB) as store:
        shared = png(1, size=150_000)
        store.put(key_of("old"), make_result(key_of("old")), [shared])
        for n in range(2, 5):
            store.put(key_of(f"filler{n}"), make_result(key_of(f"filler{n}")), [png(n, size=150_000)])
        store.put(key_of("new"), make_result(key_of("new")), [shared])  # refreshes the shared blob
        for n in range(5, 9):  # push the oldest out
            store.put(key_of(f"filler{n}"), make_result(key_of(f"filler{n}")), [png(n, size=150_000)])
        assert store.get(key_of("old")) is None
        got = store.get(key_of("new"))
        assert got is not None and got.artifacts[0].read_bytes() == shared.data


@pytest.mark.parametrize(
    "raw_record",
    ["{not json", '{"version": 1}', '{"version": 99, "result": {}, "artifacts": []}', b"\x00\xff", 12345],
)
def test_corrupt_record_is_a_miss_and_is_deleted(store: ResultStore, raw_record: object) -> None:
    key = key_of("corrupt")
    with sqlite3.connect(store.path / "data" / "cache.db") as db:
        db.execute(f"INSERT INTO {_RESULTS} (key, record, size, stored_at) VALUES (?, ?, 1, 0)", (key, raw_record))
    assert store.get(key) is None
    assert _record_of(store, key) is None


def test_stats_count_hits_misses_and_savings_and_survive_reopening(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s", max_bytes=64 * MIB) as store:
        store.put(key_of("x"), make_result(key_of("x")), [png(1)])
        for saved in ("0.003", "0.003", "0.1", "0.000001", "0"):
            store.record_hit(Decimal(saved))
        store.record_miss()
        store.record_miss()
        with pytest.raises(ValueError):
            store.record_hit(Decimal("-1"))
        first = store.stats()
    assert first.hits == 5 and first.misses == 2
    assert first.saved_usd == Decimal("0.106001")
    assert first.entries == 1 and first.max_bytes == 64 * MIB and first.bytes > 10_000

    with ResultStore(tmp_path / "s", max_bytes=64 * MIB) as reopened:
        again = reopened.stats()
        assert again == first
        assert isinstance(again, StoreStats)
        assert reopened.get(key_of("x")) is not None


def test_clear_empties_the_store_and_returns_the_count(store: ResultStore) -> None:
    for n in range(3):
        store.put(key_of(str(n)), make_result(key_of(str(n))), [png(n)])
    store.put(key_of("text"), make_result(key_of("text"), text="t"), [])
    store.record_hit(Decimal("1"))
    store.record_miss()

    assert store.clear() == 4
    stats = store.stats()
    assert (stats.entries, stats.hits, stats.misses, stats.saved_usd) == (0, 0, 0, Decimal(0))
    assert not [p for p in (store.path / "data" / "blobs").rglob("*") if p.is_file()]
    assert all(store.get(key_of(str(n))) is None for n in range(3))
    assert store.clear() == 0


def test_size_limit_evicts_old_results_without_errors(tmp_path: Path) -> None:
    limit = MIB
    with ResultStore(tmp_path / "small", max_bytes=limit) as store:
        keys = [key_of(f"big{n}") for n in range(30)]
        for n, key in enumerate(keys):
            file = png(n, size=200_000)
            out = store.put(key, make_result(key), [file])
            assert out.artifacts[0].read_bytes() == file.data  # the paths put returns exist on return
            # within one blob and the database's own pages of the limit, never the 6 MB written
            assert store.stats().bytes <= limit + 200_000 + 256 * 1024
            assert store.get(key) is not None  # the newest result is always kept
        assert store.get(keys[0]) is None
        kept = [k for k in keys if store.get(k) is not None]
        assert 1 <= len(kept) <= 6
        assert store.stats().entries == len(kept)


def test_many_processes_writing_once_each_stay_within_the_limit(tmp_path: Path) -> None:
    """Each `genroute run` is a process that writes one result: far less than the sixty-fourth of the limit
    after which a process checks the volume. Its first write checks it, so together they stay bounded."""
    limit = 512 * 1024  # a process checks after writing 8 KiB; each one here writes 6 KB
    for n in range(150):  # a fresh ResultStore per result: what 150 separate processes would each have
        with ResultStore(tmp_path / "shared", max_bytes=limit) as store:
            key = key_of(f"run{n}")
            store.put(key, make_result(key), [png(n, size=6_000)])
    with ResultStore(tmp_path / "shared", max_bytes=limit) as store:
        ((blob_bytes,),) = store._db().execute("SELECT sum(size) FROM genroute_blobs").fetchall()
        assert blob_bytes <= limit  # 900 KB were written
        assert store.get(key_of("run149")) is not None and store.get(key_of("run0")) is None


def test_a_shared_blob_never_gets_younger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers of the same bytes: the one that read the clock earlier but commits later must not make
    the blob look older than the newer result that shares it (it would be evicted before older ones)."""
    with ResultStore(tmp_path / "s", max_bytes=MIB) as store:
        shared = png(1)
        clock = iter([3000.0, 2000.0])
        monkeypatch.setattr("genroute.store.time.time", lambda: next(clock))
        store.put(key_of("newer"), make_result(key_of("newer")), [shared])
        store.put(key_of("late commit"), make_result(key_of("late commit")), [shared])
        ((stored_at,),) = store._db().execute("SELECT stored_at FROM genroute_blobs").fetchall()
        assert stored_at == 3000.0


def test_result_larger_than_the_store_still_comes_back_with_files(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "tiny", max_bytes=MIB) as store:
        key = key_of("huge")
        file = png(1, size=2 * MIB)
        out = store.put(key, make_result(key), [file])
        assert out.artifacts[0].read_bytes() == file.data
        assert store.get(key) is None
        # results that together overflow the store: eviction makes room before each write, so the
        # newest result's files always exist on return, and the store stays near its limit
        first = store.put(key_of("half"), make_result(key_of("half")), [png(2, size=500_000)])
        second = store.put(key_of("more"), make_result(key_of("more")), [png(3, size=600_000)])
        assert second.artifacts[0].read_bytes()[:8] == (3).to_bytes(8, "big")
        third = store.put(key_of("last"), make_result(key_of("last")), [png(4, size=400_000)])
        assert first.artifacts[0].size == 500_000
        assert third.artifacts[0].read_bytes()[:8] == (4).to_bytes(8, "big")
        assert store.get(key_of("last")) is not None
        assert store.get(key_of("half")) is None  # the oldest made room
        assert store.stats().bytes <= MIB + 600_000 + 256 * 1024
        assert store.clear() <= 2


def _put_many(path: str, prefix: str, count: int) -> None:
    with ResultStore(Path(path)) as store:
        for n in range(count):
            key = key_of(f"{prefix}{n}")
            store.put(key, make_result(key), [png(n, size=5_000 + n)])
            store.record_miss()


def test_two_processes_share_one_directory(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    ResultStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_put_many, args=(str(path), prefix, 25)) for prefix in ("p", "q")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    with ResultStore(path) as store:
        for prefix in ("p", "q"):
            for n in range(25):
                got = store.get(key_of(f"{prefix}{n}"))
                assert got is not None and got.artifacts[0].size == 5_000 + n
        assert store.stats().entries == 50 and store.stats().misses == 50


def test_threads_share_one_store(store: ResultStore) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for n in range(10):
                key = key_of(f"t{t}-{n}")
                store.put(key, make_result(key), [png(n)])
                assert store.get(key) is not None
                store.record_hit(Decimal("0.01"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    stats = store.stats()
    assert (stats.entries, stats.hits, stats.saved_usd) == (40, 40, Decimal("0.40"))


def test_unusable_directory_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match=str(blocker)) as info:
        ResultStore(blocker / "store")
    assert "local disk" in info.value.hint


def test_a_file_at_the_store_path_is_named_and_not_to_be_deleted(tmp_path: Path) -> None:
    mine = tmp_path / "notes.txt"  # store.path pointed at a user's file by mistake
    mine.write_text("keep me")
    with pytest.raises(StoreError) as info:
        ResultStore(mine)
    assert str(info.value).startswith(f"result store at {mine}: a file is there, not a directory")
    assert "store.path" in info.value.hint and "delet" not in info.value.hint
    assert mine.read_text() == "keep me"


@settings(max_examples=40, deadline=None)
@given(
    text=st.none() | st.text(max_size=200),
    cost=st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False),
    latency=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    data=st.lists(st.binary(max_size=300), max_size=3),
)
def test_round_trip_property(text: str | None, cost: Decimal, latency: float, data: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp, ResultStore(Path(tmp)) as store:
        key = key_of(repr((text, cost, latency)))
        original = make_result(key, text=text, actual_cost=cost, latency_seconds=latency)
        store.put(key, original, [OutputFile(data=d, media_type="audio/wav") for d in data])
        got = store.get(key)
        assert got is not None
        assert got.model_dump(exclude={"artifacts"}) == original.model_dump(exclude={"artifacts"})
        assert [a.read_bytes() for a in got.artifacts] == data


# -- the store removes only what it wrote ----------------------------------------------------------


def test_clear_leaves_files_the_store_did_not_write(store: ResultStore, caplog: pytest.LogCaptureFixture) -> None:
    key = key_of("a")
    kept = store.put(key, make_result(key), [png(1)]).artifacts[0].path
    foreign = {
        store.path / "data" / "blobs" / "zz" / "foreign.txt": "a user's file",
        store.path / "data" / "blobs" / kept.parent.name / "notes.txt": "next to a blob",
        store.path / "data" / "blobs" / "README": "at the root of the blobs",
        store.path / "scratch" / "notes.txt": "a user's note",
        store.path / "scratch" / "keep" / "deep.txt": "in a directory inside scratch/",
    }
    for path, text in foreign.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    assert store.clear() == 1  # a directory inside scratch/ no longer fails the clear half-way

    assert not kept.exists()
    assert {path: path.read_text() for path in foreign} == foreign
    assert "notes.txt" in caplog.text and "keep" in caplog.text and "not a file the store wrote" in caplog.text


def test_a_damaged_blob_row_never_names_a_file_outside_the_blobs(tmp_path: Path) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_text("mine")
    with ResultStore(tmp_path / "s", max_bytes=MIB) as s:
        s.put(key_of("first"), make_result(key_of("first")), [png(1)])  # makes data/blobs/
        with s._data.transact():
            s._db().execute(
                "INSERT INTO genroute_blobs (name, size, stored_at) VALUES (?, ?, 0)", ("../../precious.txt", 10**9)
            )
    with ResultStore(tmp_path / "s", max_bytes=MIB) as s:  # another process: its first write evicts
        key = key_of("evicting")
        s.put(key, make_result(key), [png(2)])
        assert s.stats().bytes < MIB
    assert outside.read_text() == "mine"


def test_store_errors_never_call_a_directory_safe_to_delete(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError) as info:
        ResultStore(blocker / "store")
    assert "safe" not in info.value.hint
    assert "genroute cache clear" in info.value.hint and "cache.db" in info.value.hint


# -- a damaged database is started anew, by opening or clearing the store --------------------------


def test_a_store_whose_database_is_not_a_database_opens_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with ResultStore(tmp_path / "s") as s:
        blob = s.put(key_of("a"), make_result(key_of("a")), [png(1)]).artifacts[0].path
    mine = tmp_path / "s" / "data" / "notes.txt"
    mine.write_text("mine")
    (tmp_path / "s" / "data" / "cache.db").write_bytes(b"garbage, not SQLite" * 100)

    with ResultStore(tmp_path / "s") as s:
        assert s.get(key_of("a")) is None and s.stats().entries == 0
        s.put(key_of("b"), make_result(key_of("b")), [png(2)])
        assert s.get(key_of("b")) is not None

    assert "is damaged" in caplog.text and "starting it anew" in caplog.text
    assert not blob.exists() and mine.read_text() == "mine"


def test_clear_starts_a_database_that_fails_anew(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blob = store.put(key_of("a"), make_result(key_of("a")), [png(1)]).artifacts[0].path
    store.record_hit(Decimal("1"))
    store.flush()

    def damaged(self: ResultStore) -> int:
        exc = sqlite3.DatabaseError("database disk image is malformed")
        exc.sqlite_errorcode = sqlite3.SQLITE_CORRUPT  # type: ignore[attr-defined]
        raise exc

    with monkeypatch.context() as patch:
        patch.setattr(ResultStore, "_count_results", damaged)
        assert store.clear() == 0

    assert not blob.exists() and "starting it anew" in caplog.text
    stats = store.stats()
    assert (stats.entries, stats.hits) == (0, 0)
    store.put(key_of("b"), make_result(key_of("b")), [png(2)])
    assert store.get(key_of("b")) is not None


def test_a_locked_or_unreadable_database_is_not_taken_for_a_damaged_one(tmp_path: Path) -> None:
    from genroute.store import _damaged

    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    assert not _damaged(locked)
    assert not _damaged(sqlite3.OperationalError("disk I/O error"))


# -- a stored file changed on disk -----------------------------------------------------------------


def _tamper(path: Path) -> None:
    """Change a file's bytes on disk, keeping its size (what a size check cannot see)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_blob_changed_on_disk_is_refused_when_read_and_replaced_by_a_refresh(tmp_path: Path) -> None:
    from genroute.errors import StoreError

    file = png(1)
    with ResultStore(tmp_path / "s") as s:
        blob = s.put(key_of("a"), make_result(key_of("a")), [file]).artifacts[0].path
        _tamper(blob)
        hit = s.get(key_of("a"))  # still a hit: the size is right, and hits are not hashed
        assert hit is not None
        artifact = hit.artifacts[0]
        for copy_out in (artifact.read_bytes, lambda: artifact.save(tmp_path / "out", "x")):
            with pytest.raises(StoreError) as info:
                copy_out()
            assert "is corrupted" in info.value.message and str(blob) in info.value.message
            assert "refresh" in info.value.hint and "replace" in info.value.hint
        assert not (tmp_path / "out" / "x.png").exists()  # nothing was copied out

        s.put(key_of("a"), make_result(key_of("a")), [file])  # what cache = "refresh" does
        again = s.get(key_of("a"))
        assert again is not None and again.artifacts[0].read_bytes() == file.data
        assert again.artifacts[0].save(tmp_path / "out", "x").read_bytes() == file.data


def test_a_scratch_file_changed_on_disk_is_written_anew_not_handed_out(tmp_path: Path) -> None:
    from genroute.store import write_scratch

    file = png(2)
    (first,) = write_scratch(tmp_path / "scratch", [file], max_bytes=MIB)
    _tamper(first.path)
    (second,) = write_scratch(tmp_path / "scratch", [file], max_bytes=MIB)
    assert second.path == first.path and second.read_bytes() == file.data
