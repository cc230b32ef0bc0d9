"""genroute benchmarks: one command, one table of figures beside their goals.

    python bench/run.py [--requests N] [--markdown] [--providers-full] [--instructions]

Router overhead is measured on the mock provider with zero latency, with the shipped configuration
(budget limits raised so they never bind, but still checked) and a fresh store and ledger on the working
directory's disk. The time spent inside the provider's ``run`` is measured and subtracted, so the figure
is what genroute adds: validation, key, store lookup, offers, ledger reserve and settle, store write.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from genroute import Router, TextToImage
from genroute.config import settings_from_dict
from genroute.types import ProviderOutput

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    goal: float | None = None
    higher_is_better: bool = False

    @property
    def ok(self) -> bool | None:
        if self.goal is None:
            return None
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal

    def row(self) -> tuple[str, str, str, str]:
        sign = "≥" if self.higher_is_better else "≤"
        goal = "—" if self.goal is None else f"{sign} {self.goal:g} {self.unit}"
        verdict = "—" if self.ok is None else ("pass" if self.ok else "FAIL")
        return (
            self.name,
            f"{self.value:.3f} {self.unit}" if self.value < 100 else f"{self.value:.0f} {self.unit}",
            goal,
            verdict,
        )


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def make_router(home: Path, **mock_options: Any) -> Router:
    """The shipped configuration on the offline profile, limits raised out of reach, in a scratch home."""
    raw = tomllib.loads((ROOT / "plugins.toml").read_text(encoding="utf-8"))
    for limit in raw["budget"]["limits"]:
        limit["usd"] = "1000000"
    raw["providers"]["mock"]["options"] = {**raw["providers"]["mock"].get("options", {}), **mock_options}
    env = {"GENROUTE_HOME": str(home)}
    return Router(settings_from_dict(raw, source="bench", profile="offline", env=env))


def instrument(router: Router) -> list[float]:
    """Time spent inside the mock's run(), one entry per call."""
    provider = router.providers["mock"]
    inner: Callable[..., Awaitable[ProviderOutput]] = provider.run
    spent: list[float] = []

    async def timed(*args: Any, **kwargs: Any) -> ProviderOutput:
        start = time.perf_counter()
        try:
            return await inner(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    provider.run = timed  # type: ignore[method-assign]
    return spent


def request(tag: str, i: int) -> TextToImage:
    return TextToImage(prompt=f"{tag} {i}", width=64, height=64, tier="fast")


async def overhead(router: Router, count: int) -> list[Figure]:
    provider_time = instrument(router)
    for i in range(50):  # imports, SQLite page cache, first files
        await router.arun(request("warm", i))
    provider_time.clear()
    miss: list[float] = []
    for i in range(count):
        t0 = time.perf_counter()
        await router.arun(request("bench", i))
        miss.append(time.perf_counter() - t0)
    miss = [total - inside for total, inside in zip(miss, provider_time, strict=True)]
    hit: list[float] = []
    for i in range(count):
        t0 = time.perf_counter()
        result = await router.arun(request("bench", i))
        hit.append(time.perf_counter() - t0)
        assert result.cached
    ms = 1000.0
    return [
        Figure("router overhead, cache miss, p50", percentile(miss, 0.5) * ms, "ms", 0.5),
        Figure("router overhead, cache miss, p99", percentile(miss, 0.99) * ms, "ms"),
        Figure("cache hit, p50", percentile(hit, 0.5) * ms, "ms", 0.3),
        Figure("cache hit, p99", percentile(hit, 0.99) * ms, "ms"),
        Figure("sequential requests/s, cache miss (overhead only)", 1 / statistics.mean(miss), "req/s"),
        Figure("sequential requests/s, cache hit", 1 / statistics.mean(hit), "req/s"),
    ]


def file_creation_cost(directory: Path, count: int = 300) -> Figure:
    """What creating one small file costs on the scratch directory's disk: a store miss writes one.

    Shown beside the overhead because it varies by an order of magnitude between disks (and between
    directories of one virtual machine's disk), and it is the disk's figure, not genroute's.
    """
    with tempfile.TemporaryDirectory(prefix="files-", dir=directory) as scratch:
        started = time.perf_counter()
        for i in range(count):
            with open(os.path.join(scratch, f"f{i}"), "wb") as handle:
                handle.write(b"x" * 1024)
        spent = (time.perf_counter() - started) / count
    return Figure("machine note: creating one 1 KB file on the store's disk", spent * 1e6, "µs")


def sqlite_commit_cost(directory: Path, count: int = 2000) -> Figure:
    """What one small SQLite write transaction costs there (WAL, as the ledger and store use): a miss commits three.

    Beside the overhead because this machine's system calls and page writes vary in speed from hour to hour
    (the same code's miss figure moved by 2× within a day), and this row moves with them.
    """
    with tempfile.TemporaryDirectory(prefix="sqlite-", dir=directory) as scratch:
        db = sqlite3.connect(os.path.join(scratch, "t.db"), isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=wal")
            db.execute("PRAGMA synchronous=normal")
            db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
            row = b"x" * 400
            started = time.perf_counter()
            for i in range(count):
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT OR REPLACE INTO t VALUES ('state', ?)", (row,))
                db.execute("INSERT INTO t VALUES (?, ?)", (str(i), row))
                db.execute("COMMIT")
            spent = (time.perf_counter() - started) / count
        finally:
            db.close()
    return Figure("machine note: one small SQLite write transaction (WAL) on the store's disk", spent * 1e6, "µs")


async def throughput(router: Router, count: int, concurrency: int) -> Figure:
    started = time.perf_counter()
    outcomes = await router.abatch([request("batch", i) for i in range(count)], concurrency=concurrency)
    wall = time.perf_counter() - started
    failed = [o for o in outcomes if not hasattr(o, "provider")]
    assert not failed, failed[:3]
    return Figure(f"batch of {count} misses at concurrency {concurrency} (mock, 64×64 PNG)", count / wall, "req/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (for docs/benchmarks.md)")
    parser.add_argument("--providers-full", action="store_true", help="full-size Replicate figures (slower)")
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions per miss and hit (valgrind, ~2 min)"
    )
    args = parser.parse_args()
    # The store and ledger live on the working directory's disk, as they would for a user (GENROUTE_HOME
    # defaults to it). Disks differ by an order of magnitude in what creating a file costs (a miss creates
    # one), so that cost is printed beside the figures, and the overhead is measured again on a RAM disk.
    scratch = Path.cwd() / ".genroute"
    scratch.mkdir(exist_ok=True)
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="bench-", dir=scratch) as home:
        with make_router(Path(home) / "overhead") as router:
            figures += asyncio.run(overhead(router, args.requests))
        figures.append(file_creation_cost(Path(home)))
        figures.append(sqlite_commit_cost(Path(home)))
    ram = Path("/dev/shm")
    if ram.is_dir() and os.access(ram, os.W_OK):
        # The same figures with the store and ledger in memory: what genroute's own code costs, whatever the disk.
        with (
            tempfile.TemporaryDirectory(prefix="genroute-bench-", dir=ram) as home,
            make_router(Path(home) / "overhead") as router,
        ):
            in_memory = asyncio.run(overhead(router, args.requests))
        for figure in in_memory[:3:2]:  # miss p50, hit p50
            figures.append(Figure(f"{figure.name}, store and ledger on a RAM disk", figure.value, figure.unit))
    with (
        tempfile.TemporaryDirectory(prefix="bench-", dir=scratch) as home,
        make_router(Path(home) / "batch") as router,
    ):
        figures.append(asyncio.run(throughput(router, args.requests, 16)))
    from ledger_bench import figures as ledger_figures  # bench/ledger_bench.py, also runnable alone
    from memory_bench import figures as memory_figures  # bench/memory_bench.py, also runnable alone

    figures += ledger_figures(scratch=scratch) + memory_figures(scratch=scratch)
    if args.instructions:
        from instructions_bench import figures as instruction_figures  # bench/instructions_bench.py

        figures += instruction_figures(scratch=scratch)
    from provider_bench import figures as provider_figures  # bench/provider_bench.py, also runnable alone

    rows = [figure.row() for figure in figures]
    verdicts = [figure.ok for figure in figures]
    for name, measured, goal, ok in provider_figures(quick=not args.providers_full, scratch=scratch):
        rows.append((name, measured, goal, "—" if ok is None else ("pass" if ok else "FAIL")))
        verdicts.append(ok)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
    if args.markdown:
        print("| figure | measured | goal | verdict |\n|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
        print(f"\n{args.requests} requests per figure; {machine}.")
    else:
        table = Table("figure", "measured", "goal", "verdict", title=f"genroute benchmarks ({args.requests} requests)")
        for name, value, goal, verdict in rows:
            style = {"pass": "green", "FAIL": "red"}.get(verdict, "")
            table.add_row(name, value, goal, f"[{style}]{verdict}[/]" if style else verdict)
        console = Console(width=130)
        console.print(table)
        console.print(machine)
    return 0 if all(ok is not False for ok in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
