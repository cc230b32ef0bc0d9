"""Many processes, one ledger and one store, one $1 budget: never over it at any moment, books balanced after.

Each process is a whole ``Router`` (spawned, so nothing is shared but the directories) running a batch of
distinct $0.003 mock images with several requests in flight. The parent samples ``Ledger.usage()`` as fast
as it can while they run: spent + reserved never passes the limit. Afterwards every reservation ended
exactly once (settled, or released; none left open, none reclaimed), the spend equals the settled entries,
and each provider call has exactly one settled entry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from decimal import Decimal

import pytest
from reliability_support import (
    MOCK_FAST_PRICE,
    router_worker,
    run_workers_watching_budget,
    settled,
    store_stats,
    usage_row,
)

from conftest import mock_section
from genroute.config import Settings
from genroute.ledger import Ledger

LIMIT = Decimal("1")
SCOPE = "simulated"  # the mock bills pretend money: scopes ("simulated", "provider:mock")


def run_shared_budget(settings: Settings, processes: int, per_process: int, concurrency: int = 4) -> None:
    run = run_workers_watching_budget(settings, router_worker, processes, per_process, concurrency, SCOPE, LIMIT)
    outcomes, samples, most_reserved = run.outcomes, run.samples, run.most_reserved
    with Ledger(settings.ledger.path, settings.limits()) as ledger:
        total = processes * per_process
        calls: Counter[str] = Counter()
        for _index, by_key, _keys, _errors, _cost, _problem in outcomes:
            assert not set(calls) & set(by_key), "two processes called the provider for the same request"
            calls.update(by_key)
        served = [key for o in outcomes for key in o[2]]
        errors: Counter[str] = Counter()
        for o in outcomes:
            errors.update(o[3])
        assert len(served) + sum(errors.values()) == total
        # Whatever a request did not get, it lost to the budget, and said so with a typed error.
        assert set(errors) <= {"OverBudget"}, errors

        entries = list(ledger.entries())
        done = settled(entries)
        row = usage_row(ledger.usage(), SCOPE)
        assert ledger.open_reservations() == []
        assert row.reserved == 0
        assert row.spent == sum((e.actual for e in done), Decimal(0))
        assert row.spent <= LIMIT
        # The mock never fails: each call succeeded once, was settled once, and served one result.
        assert all(count == 1 for count in calls.values()), "a request was sent to the provider twice"
        assert sorted(calls) == sorted(e.request_key for e in done) == sorted(served)
        assert sum(Decimal(o[4]) for o in outcomes) == row.spent
        statuses = Counter(e.status for e in entries)
        assert set(statuses) <= {"settled", "released"}, statuses  # nothing orphaned, nothing reclaimed
        assert len({e.id for e in entries}) == len(entries), "a reservation ended twice"
        # The budget binds exactly: no failures means no release, so every admitted reservation was spent
        # and refusals began only when fewer than $0.003 were left.
        if total * MOCK_FAST_PRICE > LIMIT:
            assert len(done) == int(LIMIT / MOCK_FAST_PRICE)
            assert LIMIT - row.spent < MOCK_FAST_PRICE
        else:
            assert len(done) == total
        assert samples > 10 and most_reserved > 0, (samples, most_reserved)
    assert store_stats(settings).entries == len(done)


def shared_settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(
        {"mock": mock_section(latency_seconds=0.01)},
        limits=[{"scope": SCOPE, "period": "total", "usd": str(LIMIT)}],
        routing={"deadline_seconds": 300},
    )


def test_eight_processes_share_one_dollar(settings_factory: Callable[..., Settings]) -> None:
    run_shared_budget(shared_settings(settings_factory), processes=8, per_process=60)


@pytest.mark.slow
def test_eight_processes_times_five_hundred_share_one_dollar(settings_factory: Callable[..., Settings]) -> None:
    run_shared_budget(shared_settings(settings_factory), processes=8, per_process=500)
