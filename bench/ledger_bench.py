"""Ledger throughput: reserve + settle pairs per second with 1, 4 and 8 processes on one ledger directory.

    python bench/ledger_bench.py [--pairs N]

Each process (``spawn``) opens the same ledger directory and, once all are ready, runs ``--pairs`` cycles of
``reserve($0.003)`` then ``settle($0.003)`` against a limit that is checked but never binds (the scopes the
mock's pretend money uses: ``simulated`` and ``provider:mock``). The figure is every pair of every process
over the wall time from the common start to the last process's end. The issue sets no goal for it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from genroute.config import BudgetLimit
from genroute.ledger import Ledger
from run import Figure

PRICE = Decimal("0.003")
LIMITS = [BudgetLimit(scope="simulated", period="total", usd=Decimal("1000000"))]
PROCESS_COUNTS = (1, 4, 8)


def worker(directory: str, pairs: int, start: Any, results: Any) -> None:
    """``pairs`` reserve + settle cycles on the shared ledger; reports (start, end) or the error."""
    try:
        with Ledger(Path(directory), LIMITS) as ledger:
            start.wait(300)
            began = time.perf_counter()
            for i in range(pairs):
                reservation = ledger.reserve(
                    PRICE,
                    scopes=("simulated", "provider:mock"),
                    provider="mock",
                    model="mock/flux-schnell",
                    task="text-to-image",
                    request_key=f"bench-{i}",
                )
                ledger.settle(reservation, PRICE)
            results.put((began, time.perf_counter(), ""))
    except BaseException as exc:  # report it: a silent child would leave the parent waiting
        results.put((0.0, 0.0, f"{type(exc).__name__}: {exc}"))


def pairs_per_second(directory: Path, processes: int, pairs: int) -> float:
    """Aggregate reserve + settle pairs per second of ``processes`` processes sharing ``directory``."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(processes)
    results: Any = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(str(directory), pairs, start, results)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    spans = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(60)
    problems = [problem for _b, _e, problem in spans if problem]
    if problems:
        raise RuntimeError(f"a ledger benchmark process failed: {problems[0]}")
    wall = max(end for _b, end, _p in spans) - min(began for began, _e, _p in spans)
    with Ledger(directory, LIMITS) as ledger:  # the books must balance, or the figure means nothing
        row = next(u for u in ledger.usage() if (u.scope, u.period) == ("simulated", "total"))
        assert row.reserved == 0 and row.spent == PRICE * processes * pairs, row
    return processes * pairs / wall


def figures(pairs: int = 1000, scratch: Path | None = None) -> list[Figure]:
    """One figure per process count, each on a fresh ledger directory."""
    scratch = scratch or Path.cwd() / ".genroute"
    scratch.mkdir(parents=True, exist_ok=True)
    out: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="ledger-bench-", dir=scratch) as home:
        for processes in PROCESS_COUNTS:
            rate = pairs_per_second(Path(home) / f"ledger-{processes}", processes, pairs)
            label = "process" if processes == 1 else "processes"
            out.append(
                Figure(
                    f"ledger reserve+settle pairs/s, {processes} {label} on one ledger ({pairs} pairs each)",
                    rate,
                    "pairs/s",
                    higher_is_better=True,
                )
            )
    return out


def print_figures(found: list[Figure], title: str, *, markdown: bool = False) -> None:
    """The figures as bench/run.py prints its own: a table of figure, measured, goal, verdict."""
    if markdown:
        print("| figure | measured | goal | verdict |\n|---|---|---|---|")
        for figure in found:
            print("| " + " | ".join(figure.row()) + " |")
        return
    table = Table("figure", "measured", "goal", "verdict", title=title)
    for figure in found:
        name, value, goal, verdict = figure.row()
        style = {"pass": "green", "FAIL": "red"}.get(verdict, "")
        table.add_row(name, value, goal, f"[{style}]{verdict}[/]" if style else verdict)
    Console(width=130).print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000, help="reserve + settle pairs per process")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    found = figures(args.pairs)
    print_figures(found, "genroute ledger benchmark", markdown=args.markdown)
    return 0 if all(f.ok is not False for f in found) else 1


if __name__ == "__main__":
    sys.exit(main())
