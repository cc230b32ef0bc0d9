"""Several processes share one ledger directory: the limit holds at every moment, the books balance after."""

from __future__ import annotations

import multiprocessing
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from genroute.config import BudgetLimit
from genroute.errors import BudgetExceeded
from genroute.ledger import Ledger

PROCESSES = 4
CYCLES = 60
PRICE = Decimal("0.003")
LIMIT = Decimal("0.30")
LIMITS = [BudgetLimit(scope="global", period="total", usd=LIMIT)]


def worker(directory: str, index: int, start: Any, results: Any) -> None:
    """Run reserve → settle (every 10th: release) cycles; report (settled, released, refused)."""
    settled = released = refused = 0
    with Ledger(Path(directory), LIMITS) as ledger:
        start.wait(60)  # all processes start together, so they really contend
        for cycle in range(CYCLES):
            try:
                res = ledger.reserve(
                    PRICE, scopes=["global", f"provider:p{index}"], provider=f"p{index}", model="m", task="t"
                )
            except BudgetExceeded:
                refused += 1
                continue
            if cycle % 10 == 9:
                ledger.release(res)
                released += 1
            else:
                ledger.settle(res, PRICE)
                settled += 1
    results.put((index, settled, released, refused))


@pytest.mark.slow
def test_processes_share_one_budget(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES + 1)
    results = ctx.Queue()
    with Ledger(directory, LIMITS) as ledger:
        procs = [
            ctx.Process(target=worker, args=(str(directory), i, start, results), daemon=True) for i in range(PROCESSES)
        ]
        for proc in procs:
            proc.start()
        start.wait(60)
        samples = 0
        deadline = time.monotonic() + 120
        while any(proc.is_alive() for proc in procs) and time.monotonic() < deadline:
            total = next(u for u in ledger.usage() if (u.scope, u.period) == ("global", "total"))
            assert total.spent + total.reserved <= LIMIT, total
            assert total.reserved >= 0
            samples += 1
        outcomes = [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
            assert proc.exitcode == 0

        settled = sum(o[1] for o in outcomes)
        released = sum(o[2] for o in outcomes)
        refused = sum(o[3] for o in outcomes)
        assert settled + released + refused == PROCESSES * CYCLES
        assert refused > 0 and settled > 0 and samples > 0

        total = next(u for u in ledger.usage() if (u.scope, u.period) == ("global", "total"))
        entries = list(ledger.entries())
        settled_entries = [e for e in entries if e.status == "settled"]
        assert total.reserved == 0
        assert total.spent == sum((e.actual for e in settled_entries), Decimal(0)) == settled * PRICE
        assert total.spent <= LIMIT
        assert ledger.open_reservations() == []
        assert len(settled_entries) == settled
        assert sorted(e.status for e in entries) == ["released"] * released + ["settled"] * settled
        assert len({e.id for e in entries}) == len(entries)  # each reservation ended exactly once
        rows = {u.scope: u for u in ledger.usage() if u.period == "total"}
        for index, mine, freed, _refused in outcomes:  # each process's own scope saw only its own spend
            row = rows.get(f"provider:p{index}")
            if row is None:  # every one of its reservations was refused: nothing written
                assert mine == freed == 0
            else:
                assert (row.spent, row.reserved) == (mine * PRICE, Decimal(0))
