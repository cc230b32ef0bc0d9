"""Where the result store lives, and what the ``genroute`` command may remove there, end to end.

Each test runs the CLI as a subprocess in its own ``tmp_path`` (working directory and ``GENROUTE_HOME``),
against a copy of the repository's ``plugins.toml`` with ``[store]`` changed as the test needs.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from test_cli import CONFIG, run_cli

Cli = Callable[..., subprocess.CompletedProcess[str]]
STORE_LINE = 'path = ".genroute/store"'


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """``cli(*args, store=None, rc=None, env=None)``: run genroute in ``tmp_path``; ``store`` replaces ``[store]
    path``; ``env`` adds to the environment."""

    def run(
        *args: str, store: str | None = None, rc: int | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        text = CONFIG.read_text(encoding="utf-8")
        assert STORE_LINE in text, "plugins.toml no longer sets the store path: update the test"
        config = tmp_path / "genroute.toml"
        config.write_text(text.replace(STORE_LINE, f'path = "{store}"' if store is not None else STORE_LINE, 1))
        return run_cli(tmp_path, *args, env={"GENROUTE_CONFIG": str(config), **(env or {})}, rc=rc)

    return run


@pytest.mark.parametrize("store", [".genroute", "", ".", ".genroute/ledger"])
def test_a_store_path_over_the_ledger_or_the_working_directory_is_refused(cli: Cli, tmp_path: Path, store: str) -> None:
    notes = tmp_path / "scratch" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    for args in (("cache", "clear"), ("run", "a lighthouse", "--tier", "fast", "--cache", "bypass")):
        proc = cli(*args, store=store, rc=3)
        assert "store.path" in proc.stderr
        assert "ledger.path" in proc.stderr or "must not be empty" in proc.stderr
    assert notes.read_text() == "mine"
    assert not (tmp_path / ".genroute" / "data").exists()


def test_the_home_directory_as_the_store_is_refused_before_anything_is_made_there(cli: Cli, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".profile").write_text("mine")
    for args in (("cache", "stats"), ("cache", "clear"), ("run", "a lighthouse", "--tier", "fast")):
        proc = cli(*args, store="~", env={"HOME": str(home)}, rc=3)
        assert f"store.path: {home} is your home directory" in proc.stderr
        assert "give the store a directory of its own" in proc.stderr
    assert sorted(p.name for p in home.iterdir()) == [".profile"]  # no data/cache.db, no scratch/


def test_a_directory_holding_other_files_is_refused_as_the_store(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_text("mine")
    proc = cli("cache", "clear", store="photos", rc=3)
    assert "store.path:" in proc.stderr and "holds files that are not the store's ('cat.jpg')" in proc.stderr
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["cat.jpg"]


def test_cache_clear_removes_only_what_the_store_wrote(cli: Cli, tmp_path: Path) -> None:
    cli("run", "a lighthouse", "--tier", "fast", rc=0)
    cli("run", "a harbour", "--tier", "fast", "--cache", "bypass", rc=0)
    store = tmp_path / ".genroute" / "store"
    foreign = [
        store / "scratch" / "notes.txt",
        store / "scratch" / "sub" / "deep.txt",
        store / "data" / "blobs" / "zz" / "x.txt",
    ]
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")

    proc = cli("cache", "clear", rc=0)

    assert "removed 1 result(s) and 1 scratch file(s)" in proc.stdout
    assert all(path.read_text() == "mine" for path in foreign)
    assert not list((store / "data" / "blobs").glob("??/*.png"))
    assert (tmp_path / ".genroute" / "ledger").is_dir()  # the ledger is never the store's to touch


def test_cache_clear_recovers_a_store_whose_database_is_damaged(cli: Cli, tmp_path: Path) -> None:
    cli("run", "a lighthouse", "--tier", "fast", rc=0)
    store = tmp_path / ".genroute" / "store"
    (store / "data" / "cache.db").write_bytes(b"not a database" * 512)
    ledger = sorted(p.name for p in (tmp_path / ".genroute" / "ledger").iterdir())

    cli("cache", "clear", rc=0)

    assert '"entries": 0' in cli("cache", "stats", "--json", rc=0).stdout
    assert not list((store / "data" / "blobs").glob("??/*.png"))
    assert sorted(p.name for p in (tmp_path / ".genroute" / "ledger").iterdir()) == ledger
    cli("run", "a lighthouse", "--tier", "fast", rc=0)  # and the store works again
    assert "cached" in cli("run", "a lighthouse", "--tier", "fast", rc=0).stderr


def test_a_stored_file_changed_on_disk_is_reported_and_a_refresh_replaces_it(cli: Cli, tmp_path: Path) -> None:
    cli("run", "a lighthouse", "--tier", "fast", rc=0)
    (blob,) = (tmp_path / ".genroute" / "store" / "data" / "blobs").glob("??/*.png")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))  # same size: a hit all the same

    proc = cli("run", "a lighthouse", "--tier", "fast", rc=9)
    assert "is corrupted" in proc.stderr and "--cache refresh" in proc.stderr

    cli("run", "a lighthouse", "--tier", "fast", "--cache", "refresh", rc=0)
    assert "cached" in cli("run", "a lighthouse", "--tier", "fast", rc=0).stderr
