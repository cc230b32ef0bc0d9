"""The budget ledger: reserve / settle / release, periods, reclaim, warnings, report."""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
import shutil
import sqlite3
import stat
import tempfile
import threading
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, multiple, rule

from genroute.config import BudgetLimit
from genroute.errors import BudgetExceeded, InvalidRequest, LedgerError
from genroute.ledger import CSV_HEADER, BudgetWarning, Ledger, LedgerEntry, Reservation, period_keys_at

D = Decimal
SCOPES = ["global", "provider:mock"]


def ts(text: str) -> float:
    """POSIX time of an ISO UTC timestamp."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class FakeClock:
    def __init__(self, start: str = "2024-03-10T12:00:00") -> None:
        self.now = ts(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, text: str) -> None:
        self.now = ts(text)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(tmp_path: Path, clock: FakeClock) -> Any:
    opened: list[Ledger] = []

    def factory(limits: list[BudgetLimit] | tuple[BudgetLimit, ...] = (), **kwargs: Any) -> Ledger:
        kwargs.setdefault("clock", clock)
        ledger = Ledger(tmp_path / "ledger", limits, **kwargs)
        opened.append(ledger)
        return ledger

    yield factory
    for ledger in opened:
        ledger.close()


def limit(usd: str, scope: str = "global", period: str = "total") -> BudgetLimit:
    return BudgetLimit(scope=scope, period=period, usd=D(usd))


def reserve(ledger: Ledger, amount: str, scopes: list[str] | None = None, **kw: str) -> Reservation:
    return ledger.reserve(
        D(amount),
        scopes=scopes or SCOPES,
        provider=kw.get("provider", "mock"),
        model=kw.get("model", "m1"),
        task=kw.get("task", "text-to-image"),
        request_key=kw.get("request_key", "k"),
    )


def usage_of(ledger: Ledger, scope: str, period: str) -> tuple[Decimal, Decimal]:
    for row in ledger.usage():
        if row.scope == scope and row.period == period:
            return row.spent, row.reserved
    raise AssertionError(f"no usage row for {scope} {period}")


# ------------------------------------------------------------------ reserve / settle / release


def test_reserve_counts_into_every_scope_and_period(make: Any, clock: FakeClock) -> None:
    ledger = make()
    res = reserve(ledger, "0.25")
    assert res.amount == D("0.25")
    assert res.scopes == tuple(SCOPES)
    assert res.expires_at == res.created_at + 900
    assert set(res.period_keys) == {
        (s, p, k) for s in SCOPES for p, k in (("total", "total"), ("daily", "2024-03-10"), ("monthly", "2024-03"))
    }
    for scope in SCOPES:
        for period in ("total", "daily", "monthly"):
            assert usage_of(ledger, scope, period) == (D(0), D("0.25"))
    assert ledger.open_reservations() == [res]

    entry = ledger.settle(res, D("0.2"), job_id="job-1", note="ok")
    assert entry.status == "settled" and entry.id == res.id
    assert entry.estimate == D("0.25") and entry.actual == D("0.2")
    assert not entry.over_estimate
    assert entry.job_id == "job-1" and entry.note == "ok" and entry.day == "2024-03-10"
    assert entry.at == datetime(2024, 3, 10, 12, tzinfo=UTC)
    for scope in SCOPES:
        for period in ("total", "daily", "monthly"):
            assert usage_of(ledger, scope, period) == (D("0.2"), D(0))
    assert ledger.open_reservations() == []
    assert [e.id for e in ledger.entries()] == [res.id]


def test_usage_rows_without_limits_have_no_limit(make: Any) -> None:
    ledger = make([limit("1", "provider:other", "daily")])
    reserve(ledger, "0.1")
    rows = {(u.scope, u.period): u for u in ledger.usage()}
    assert set(rows) == {(s, p) for s in [*SCOPES, "provider:other"] for p in ("total", "daily", "monthly")}
    assert rows["global", "total"].limit is None and rows["global", "total"].left is None
    other = rows["provider:other", "daily"]
    assert other.limit == D(1) and other.left == D(1) and other.period_key == "2024-03-10"
    assert rows["global", "monthly"].period_key == "2024-03"


def test_release_frees_the_reservation(make: Any) -> None:
    ledger = make([limit("1")])
    res = reserve(ledger, "0.6")
    entry = ledger.release(res, note="provider down")
    assert entry.status == "released" and entry.actual == 0 and entry.estimate == D("0.6")
    assert entry.note == "provider down"
    assert usage_of(ledger, "global", "total") == (D(0), D(0))
    assert ledger.headroom(["global"]) == D(1)


def test_estimate_rounds_up_to_the_micro_dollar(make: Any) -> None:
    ledger = make()
    res = reserve(ledger, "0.0000001")
    assert res.amount == D("0.000001")
    assert usage_of(ledger, "global", "total")[1] == D("0.000001")
    entry = ledger.settle(res, D("0.0000001"))
    assert entry.actual == D(0)  # actuals round half-even: a tenth of a micro-dollar is nothing
    assert usage_of(ledger, "global", "total") == (D(0), D(0))


def test_negative_amounts_are_refused(make: Any) -> None:
    ledger = make()
    with pytest.raises(ValueError):
        reserve(ledger, "-0.01")
    res = reserve(ledger, "0.01")
    with pytest.raises(ValueError):
        ledger.settle(res, D("-0.01"))
    with pytest.raises(ValueError):
        ledger.record_saving(D("-1"), provider="p", model="m", task="t", request_key="k")
    assert ledger.open_reservations() == [res]


def test_bad_scopes_are_refused(make: Any) -> None:
    ledger = make()
    with pytest.raises(TypeError):
        ledger.reserve(D(1), scopes="global", provider="p", model="m", task="t")
    with pytest.raises(ValueError):
        ledger.reserve(D(1), scopes=["global", ""], provider="p", model="m", task="t")


def test_duplicate_scopes_count_once(make: Any) -> None:
    ledger = make()
    res = reserve(ledger, "0.5", scopes=["global", "global"])
    assert res.scopes == ("global",)
    assert usage_of(ledger, "global", "total") == (D(0), D("0.5"))


# ------------------------------------------------------------------ limits


def test_budget_exceeded_names_the_limit_and_writes_nothing(make: Any) -> None:
    ledger = make([limit("10"), limit("1", "provider:mock", "daily")])
    first = reserve(ledger, "0.4")
    ledger.settle(first, D("0.3"))
    reserve(ledger, "0.5")
    before = (ledger.usage(), ledger.open_reservations(), list(ledger.entries()))
    with pytest.raises(BudgetExceeded) as info:
        reserve(ledger, "0.2000001")
    err = info.value
    assert (err.scope, err.period) == ("provider:mock", "daily")
    assert err.limit == D(1) and err.spent == D("0.3") and err.reserved == D("0.5")
    assert err.asked == D("0.200001")
    assert err.exit_code == 5
    assert "provider:mock" in str(err)
    assert (ledger.usage(), ledger.open_reservations(), list(ledger.entries())) == before
    # exactly up to the limit is allowed
    reserve(ledger, "0.2")
    assert ledger.headroom(["provider:mock"]) == D(0)


def test_limit_on_a_scope_not_in_the_reservation_does_not_apply(make: Any) -> None:
    ledger = make([limit("0.1", "provider:other")])
    reserve(ledger, "5")
    with pytest.raises(BudgetExceeded):
        reserve(ledger, "0.2", scopes=["global", "provider:other"])


def test_zero_limit_refuses_any_positive_amount(make: Any) -> None:
    ledger = make([limit("0", "free:hf")])
    with pytest.raises(BudgetExceeded):
        reserve(ledger, "0.000001", scopes=["global", "free:hf"])
    ledger.settle(reserve(ledger, "0", scopes=["global", "free:hf"]), D(0))


def test_headroom(make: Any, clock: FakeClock) -> None:
    ledger = make(
        [limit("5"), limit("2", "provider:mock", "daily"), limit("3", "provider:mock", "monthly")],
        reservation_ttl_seconds=10**6,
    )
    assert make().headroom(["free:x"]) is None  # no limit on that scope
    assert ledger.headroom([]) is None
    assert ledger.headroom(["global"]) == D(5)
    assert ledger.headroom(SCOPES) == D(2)
    ledger.settle(reserve(ledger, "1.5"), D("1.5"))
    assert ledger.headroom(SCOPES) == D("0.5")
    reserve(ledger, "0.25")
    assert ledger.headroom(SCOPES) == D("0.25")
    assert ledger.headroom(["global"]) == D("3.25")
    clock.advance(86_400)  # new day; month's spend still counts
    assert ledger.headroom(SCOPES) == D("1.25")


def test_over_estimate_can_go_past_the_limit_and_headroom_goes_negative(make: Any) -> None:
    ledger = make([limit("1")])
    ledger.settle(reserve(ledger, "1"), D("1.5"))
    assert ledger.headroom(["global"]) == D("-0.5")
    with pytest.raises(BudgetExceeded):
        reserve(ledger, "0")  # spent 1.5 + 0 > 1


# ------------------------------------------------------------------ periods are keys


def test_settle_on_the_next_day_decrements_the_reserved_day(make: Any, clock: FakeClock) -> None:
    clock.set("2024-03-10T23:59:00")
    ledger = make()
    res = reserve(ledger, "0.5")
    clock.set("2024-03-11T00:01:00")
    entry = ledger.settle(res, D("0.4"))
    assert entry.day == "2024-03-10"
    assert entry.at.date().isoformat() == "2024-03-11"
    assert ledger._counter("global", "daily", "2024-03-10") == (D("0.4"), D(0))
    assert ledger._counter("global", "daily", "2024-03-11") == (D(0), D(0))
    assert usage_of(ledger, "global", "daily") == (D(0), D(0))  # today's key is untouched
    assert usage_of(ledger, "global", "total") == (D("0.4"), D(0))


def test_settle_in_the_next_month_decrements_the_reserved_month(make: Any, clock: FakeClock) -> None:
    clock.set("2024-03-31T23:59:00")
    ledger = make()
    res = reserve(ledger, "0.5")
    clock.set("2024-04-01T00:01:00")
    ledger.release(res)
    for period, key in (("daily", "2024-03-31"), ("monthly", "2024-03"), ("total", "total")):
        assert ledger._counter("global", period, key) == (D(0), D(0))


def test_daily_limit_frees_up_on_a_new_utc_day(make: Any, clock: FakeClock) -> None:
    clock.set("2024-03-10T08:00:00")
    ledger = make([limit("1", period="daily")])
    ledger.settle(reserve(ledger, "1"), D("1"))
    with pytest.raises(BudgetExceeded) as info:
        reserve(ledger, "0.01")
    assert info.value.period == "daily"
    clock.set("2024-03-10T23:59:59")
    with pytest.raises(BudgetExceeded):
        reserve(ledger, "0.01")
    clock.set("2024-03-11T00:00:00")
    ledger.settle(reserve(ledger, "1"), D("1"))
    assert usage_of(ledger, "global", "daily") == (D(1), D(0))
    assert usage_of(ledger, "global", "total") == (D(2), D(0))
    assert ledger._counter("global", "daily", "2024-03-10") == (D(1), D(0))


def test_monthly_limit_frees_up_on_a_new_utc_month_but_total_does_not(make: Any, clock: FakeClock) -> None:
    clock.set("2024-02-15T00:00:00")
    ledger = make([limit("1", period="monthly"), limit("1.5", period="total")])
    ledger.settle(reserve(ledger, "1"), D("1"))
    clock.set("2024-02-29T23:00:00")
    with pytest.raises(BudgetExceeded) as info:
        reserve(ledger, "0.5")
    assert info.value.period == "monthly"
    clock.set("2024-03-01T00:00:00")
    ledger.settle(reserve(ledger, "0.5"), D("0.5"))
    with pytest.raises(BudgetExceeded) as info:
        reserve(ledger, "0.01")
    assert info.value.period == "total"


def test_period_keys_are_utc() -> None:
    assert period_keys_at(ts("2024-12-31T23:59:59")) == {"total": "total", "daily": "2024-12-31", "monthly": "2024-12"}
    assert period_keys_at(ts("2025-01-01T00:00:00"))["monthly"] == "2025-01"


# ------------------------------------------------------------------ over-estimate, double settle


def test_over_estimate_is_recorded_and_logged(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    ledger = make()
    res = reserve(ledger, "0.1")
    with caplog.at_level(logging.WARNING, logger="genroute.ledger"):
        entry = ledger.settle(res, D("0.15"))
    assert entry.over_estimate
    assert usage_of(ledger, "global", "total") == (D("0.15"), D(0))
    assert any("above its estimate" in r.getMessage() for r in caplog.records)
    assert all(r.name == "genroute.ledger" for r in caplog.records)
    assert not ledger.settle(reserve(ledger, "0.1"), D("0.1")).over_estimate


@pytest.mark.parametrize(
    ("first", "second"), [("settle", "settle"), ("settle", "release"), ("release", "release"), ("release", "settle")]
)
def test_finishing_twice_is_an_error(make: Any, first: str, second: str) -> None:
    ledger: Ledger = make()
    res = reserve(ledger, "0.1")

    def finish(how: str) -> LedgerEntry:
        return ledger.settle(res, D("0.1")) if how == "settle" else ledger.release(res)

    finish(first)
    before = (ledger.usage(), len(list(ledger.entries())))
    with pytest.raises(LedgerError, match="already"):
        finish(second)
    assert (ledger.usage(), len(list(ledger.entries()))) == before


def test_unknown_reservation_is_an_error(make: Any, tmp_path: Path, clock: FakeClock) -> None:
    ledger = make()
    with Ledger(tmp_path / "elsewhere", clock=clock) as other:
        foreign = reserve(other, "0.1")
    with pytest.raises(LedgerError, match="no such reservation"):
        ledger.settle(foreign, D("0.1"))
    with pytest.raises(LedgerError, match="no such reservation"):
        ledger.release(foreign)


def test_the_ledger_trusts_its_own_record_not_the_callers_copy(make: Any) -> None:
    ledger = make()
    res = reserve(ledger, "0.1")
    forged = Reservation(**{**res.__dict__, "amount": D("100"), "period_keys": ()})
    ledger.release(forged)
    assert usage_of(ledger, "global", "total") == (D(0), D(0))


# ------------------------------------------------------------------ reclaim


def test_reclaim_after_ttl(make: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    ledger = make([limit("1")], reservation_ttl_seconds=60)
    old = reserve(ledger, "0.7")
    clock.advance(59)
    fresh = reserve(ledger, "0.2")
    assert ledger.reclaim_expired() == 0
    clock.advance(1)  # old is now exactly at its expiry
    with caplog.at_level(logging.WARNING, logger="genroute.ledger"):
        assert ledger.reclaim_expired() == 1
    assert any("reclaimed" in r.getMessage() for r in caplog.records)
    assert ledger.open_reservations() == [fresh]
    assert usage_of(ledger, "global", "total") == (D(0), D("0.2"))
    last = list(ledger.entries())[-1]
    assert (last.id, last.status, last.actual, last.estimate) == (old.id, "reclaimed", D(0), D("0.7"))
    assert ledger.reclaim_expired() == 0


def test_reserve_reclaims_expired_reservations_first(make: Any, clock: FakeClock) -> None:
    ledger = make([limit("1")], reservation_ttl_seconds=60)
    reserve(ledger, "0.9")
    with pytest.raises(BudgetExceeded):
        reserve(ledger, "0.5")
    assert ledger.headroom(["global"]) == D("0.1")
    clock.advance(61)
    assert ledger.headroom(["global"]) == D(1)  # headroom sees what reserve would see
    reserve(ledger, "0.5")
    assert [e.status for e in ledger.entries()] == ["reclaimed"]


def test_reclaim_is_kept_even_when_the_reservation_is_refused(make: Any, clock: FakeClock) -> None:
    ledger = make([limit("1")], reservation_ttl_seconds=60)
    reserve(ledger, "0.5")
    clock.advance(61)
    with pytest.raises(BudgetExceeded):
        reserve(ledger, "2")
    assert ledger.open_reservations() == []
    assert [e.status for e in ledger.entries()] == ["reclaimed"]


def test_settle_after_reclaim_records_the_spend(make: Any, clock: FakeClock) -> None:
    ledger = make([limit("1")], reservation_ttl_seconds=60)
    res = reserve(ledger, "0.5")
    clock.advance(120)
    assert ledger.reclaim_expired() == 1
    entry = ledger.settle(res, D("0.4"), note="slow provider")
    assert entry.status == "settled" and entry.actual == D("0.4")
    assert entry.note == "settled after reclaim; slow provider"
    assert usage_of(ledger, "global", "total") == (D("0.4"), D(0))  # reserved not decremented twice
    assert [e.status for e in ledger.entries()] == ["reclaimed", "settled"]
    with pytest.raises(LedgerError, match="already settled"):
        ledger.settle(res, D("0.4"))
    with pytest.raises(LedgerError):
        ledger.release(res)


def test_release_after_reclaim_changes_nothing(make: Any, clock: FakeClock) -> None:
    ledger = make(reservation_ttl_seconds=60)
    res = reserve(ledger, "0.5")
    clock.advance(61)
    ledger.reclaim_expired()
    entry = ledger.release(res)
    assert entry.status == "released" and entry.note == "released after reclaim"
    assert usage_of(ledger, "global", "total") == (D(0), D(0))
    with pytest.raises(LedgerError, match="already released"):
        ledger.settle(res, D("0.1"))


def test_settle_of_an_expired_but_not_yet_reclaimed_reservation_is_normal(make: Any, clock: FakeClock) -> None:
    ledger = make(reservation_ttl_seconds=60)
    res = reserve(ledger, "0.5")
    clock.advance(3600)
    entry = ledger.settle(res, D("0.5"))
    assert entry.note == ""
    assert ledger.reclaim_expired() == 0
    assert usage_of(ledger, "global", "total") == (D("0.5"), D(0))


# ------------------------------------------------------------------ warnings


def test_warn_once(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[BudgetWarning] = []
    ledger = make([limit("1")], on_warning=seen.append)
    ledger.settle(reserve(ledger, "0.7"), D("0.7"))
    assert seen == []
    with caplog.at_level(logging.WARNING, logger="genroute.ledger"):
        ledger.settle(reserve(ledger, "0.1"), D("0.1"))
    ledger.settle(reserve(ledger, "0.1"), D("0.1"))
    assert len(seen) == 1
    w = seen[0]
    assert (w.scope, w.period, w.period_key, w.limit, w.spent) == ("global", "total", "total", D(1), D("0.8"))
    assert w.share == pytest.approx(0.8)
    assert any("budget global" in r.getMessage() for r in caplog.records)


def test_warn_once_across_two_ledgers_on_one_directory(make: Any) -> None:
    seen_a: list[BudgetWarning] = []
    seen_b: list[BudgetWarning] = []
    a = make([limit("1")], on_warning=seen_a.append)
    b = make([limit("1")], on_warning=seen_b.append)
    a.settle(a.reserve(D("0.9"), scopes=["global"], provider="p", model="m", task="t"), D("0.9"))
    b.settle(b.reserve(D("0.05"), scopes=["global"], provider="p", model="m", task="t"), D("0.05"))
    a.settle(a.reserve(D("0.05"), scopes=["global"], provider="p", model="m", task="t"), D("0.05"))
    assert len(seen_a) == 1 and seen_b == []


def test_warning_again_in_a_new_period_and_per_limit(make: Any, clock: FakeClock) -> None:
    seen: list[BudgetWarning] = []
    ledger = make([limit("1", period="daily"), limit("10", period="monthly")], warn_share=0.5, on_warning=seen.append)
    ledger.settle(reserve(ledger, "0.6"), D("0.6"))
    clock.advance(86_400)
    ledger.settle(reserve(ledger, "0.6"), D("0.6"))
    assert [(w.period, w.period_key) for w in seen] == [("daily", "2024-03-10"), ("daily", "2024-03-11")]
    ledger.settle(reserve(ledger, "0.4"), D("0.4"))
    for _ in range(4):
        clock.advance(86_400)
        ledger.settle(reserve(ledger, "1"), D("1"))
    monthly = [w for w in seen if w.period == "monthly"]
    assert len(monthly) == 1 and monthly[0].spent == D("5.6")


def test_release_does_not_warn_and_a_failing_callback_does_not_break_settle(make: Any) -> None:
    calls: list[BudgetWarning] = []

    def boom(warning: BudgetWarning) -> None:
        calls.append(warning)
        raise RuntimeError("callback bug")

    ledger = make([limit("1")], on_warning=boom)
    ledger.release(reserve(ledger, "0.9"))
    assert calls == []
    entry = ledger.settle(reserve(ledger, "0.9"), D("0.9"))
    assert entry.status == "settled" and len(calls) == 1


# ------------------------------------------------------------------ savings, report, export


def _busy_ledger(make: Any, clock: FakeClock) -> Ledger:
    ledger: Ledger = make([limit("10"), limit("2", "provider:mock", "daily")])
    ledger.settle(reserve(ledger, "0.5", model="a"), D("0.4"), job_id="j1")
    ledger.settle(reserve(ledger, "0.5", model="b"), D("0.3"))
    ledger.release(reserve(ledger, "0.5", model="b"))
    clock.advance(86_400)
    ledger.settle(reserve(ledger, "1", ["global", "provider:rep"], provider="rep", model="c"), D("1"))
    reserve(ledger, "0.2", model="a")  # left open
    ledger.record_saving(D("0.4"), provider="mock", model="a", task="text-to-image", request_key="k1")
    ledger.record_saving(D("0.25"), provider="rep", model="c", task="text-to-image", request_key="k2")
    return ledger


def test_record_saving(make: Any) -> None:
    ledger = make()
    entry = ledger.record_saving(D("0.04"), provider="mock", model="m", task="upscale", request_key="abc")
    assert entry.status == "saving" and entry.estimate == D("0.04") and entry.actual == 0
    assert entry.request_key == "abc" and entry.day == "2024-03-10"
    assert ledger.usage() == []  # nothing charged, no scope touched
    report = ledger.report()
    assert report.savings == D("0.04") and report.saved_requests == 1


def test_report(make: Any, clock: FakeClock) -> None:
    report = _busy_ledger(make, clock).report()
    assert report.savings == D("0.65") and report.saved_requests == 2
    assert report.by_provider == [
        {"provider": "mock", "spent": D("0.7"), "count": 2},
        {"provider": "rep", "spent": D("1"), "count": 1},
    ]
    assert report.by_model == [
        {"provider": "mock", "model": "a", "spent": D("0.4"), "count": 1},
        {"provider": "mock", "model": "b", "spent": D("0.3"), "count": 1},
        {"provider": "rep", "model": "c", "spent": D("1"), "count": 1},
    ]
    assert report.by_day == [
        {"day": "2024-03-10", "spent": D("0.7"), "count": 2},
        {"day": "2024-03-11", "spent": D("1"), "count": 1},
    ]
    rows = {(u.scope, u.period): u for u in report.usage}
    assert (rows["global", "total"].spent, rows["global", "total"].reserved) == (D("1.7"), D("0.2"))
    assert rows["global", "total"].left == D("8.1")
    assert (rows["provider:mock", "daily"].spent, rows["provider:mock", "daily"].reserved) == (D(0), D("0.2"))
    assert rows["provider:mock", "daily"].left == D("1.8")
    assert rows["provider:rep", "monthly"].spent == D(1)


def test_export_json_parses_back(make: Any, clock: FakeClock, tmp_path: Path) -> None:
    ledger = _busy_ledger(make, clock)
    target = tmp_path / "out" / "report.json"
    ledger.export_json(target)
    data = json.loads(target.read_text())
    assert D(data["savings"]) == D("0.65") and data["saved_requests"] == 2
    assert [(p["provider"], D(p["spent"]), p["count"]) for p in data["by_provider"]] == [
        ("mock", D("0.7"), 2),
        ("rep", D("1"), 1),
    ]
    assert target.read_text() == ledger.report().to_json()  # fake clock: the report is reproducible
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]  # no temp file left


def test_export_csv_parses_back(make: Any, clock: FakeClock, tmp_path: Path) -> None:
    ledger = _busy_ledger(make, clock)
    target = tmp_path / "report.csv"
    target.write_text("old contents")
    ledger.export_csv(target)
    reader = csv.DictReader(io.StringIO(target.read_text()))
    assert tuple(reader.fieldnames or ()) == CSV_HEADER
    rows = list(reader)
    by_group: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_group[row["group"]].append(row)
    assert {(r["provider"], D(r["spent_usd"]), int(r["count"])) for r in by_group["provider"]} == {
        ("mock", D("0.7"), 2),
        ("rep", D(1), 1),
    }
    assert {(r["provider"], r["model"], D(r["spent_usd"])) for r in by_group["model"]} == {
        ("mock", "a", D("0.4")),
        ("mock", "b", D("0.3")),
        ("rep", "c", D(1)),
    }
    assert {(r["day"], D(r["spent_usd"])) for r in by_group["day"]} == {("2024-03-10", D("0.7")), ("2024-03-11", D(1))}
    (saving,) = by_group["savings"]
    assert (D(saving["spent_usd"]), int(saving["count"])) == (D("0.65"), 2)
    usage = {(r["scope"], r["period"]): r for r in by_group["usage"]}
    assert D(usage["global", "total"]["limit_usd"]) == D(10)
    assert D(usage["global", "total"]["reserved_usd"]) == D("0.2")
    assert usage["global", "daily"]["limit_usd"] == ""
    assert sorted(p.name for p in tmp_path.iterdir() if "report" in p.name) == ["report.csv"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not a private temporary one


def test_export_through_a_symlink_writes_the_file_it_points_at(make: Any, tmp_path: Path) -> None:
    ledger = make()
    shared = tmp_path / "sh"
    shared.mkdir()
    real = shared / "real.csv"
    real.write_text("last month's report")
    real.chmod(0o600)  # a private report stays private when it is replaced
    link = tmp_path / "link.csv"
    link.symlink_to(Path("sh") / "real.csv")
    ledger.export_csv(link)
    assert link.is_symlink() and os.readlink(link) == str(Path("sh") / "real.csv")  # the link is still a link
    assert real.read_text() == ledger.report().to_csv()
    assert real.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in shared.iterdir()) == ["real.csv"]  # no temporary file left beside it
    dangling = tmp_path / "new.json"
    dangling.symlink_to(shared / "later" / "new.json")  # a link to a file not made yet: the file is made
    ledger.export_json(dangling)
    assert dangling.is_symlink() and json.loads((shared / "later" / "new.json").read_text())["saved_requests"] == 0


def _fake_character_device(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` look like a character device (as /dev/stdout on a terminal, or /dev/full) to os.stat."""
    real_stat = os.stat

    def fake_stat(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        found = real_stat(target, *args, **kwargs)
        if os.fspath(target) == os.fspath(path):
            fields = list(found)
            fields[0] = stat.S_IFCHR | 0o620
            return os.stat_result(fields)
        return found

    monkeypatch.setattr(os, "stat", fake_stat)


@pytest.mark.parametrize("kind", ["a named pipe (FIFO)", "a directory", "a character device", "a link to a FIFO"])
def test_export_refuses_a_target_that_is_not_a_regular_file(
    make: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    ledger = make()
    target = tmp_path / "target"
    if kind == "a directory":
        target.mkdir()
    elif kind == "a character device":
        target.write_text("the device")
        _fake_character_device(target, monkeypatch)
    elif kind == "a link to a FIFO":
        os.mkfifo(tmp_path / "pipe")
        target.symlink_to("pipe")
    else:
        os.mkfifo(target)
    before = os.lstat(target)
    with pytest.raises(InvalidRequest) as info:
        ledger.export_csv(target, field="--export-csv")
    error = info.value
    assert error.exit_code == 4  # the user's path is at fault, as for any bad CLI target
    assert error.message.startswith(f"--export-csv: will not write the budget report to {target}")
    shown = "a named pipe (FIFO)" if kind == "a link to a FIFO" else kind
    assert f"it is {shown}, not a regular file" in error.message
    assert "give the path of a file" in error.hint
    after = os.lstat(target)  # untouched: neither replaced by a plain file nor written into
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    if kind == "a character device":
        assert target.read_text() == "the device"


def test_export_to_an_unwritable_place_names_the_target_not_the_temporary_file(
    make: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = make()
    target = tmp_path / "x.csv"

    def refused(*args: Any, **kwargs: Any) -> tuple[int, str]:  # as creating a file in /proc answers
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / ".x.csv.z8093bvo.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(InvalidRequest) as info:
        ledger.export_json(target, field="--export-json")
    error = info.value
    assert error.exit_code == 4
    assert error.message == (
        f"--export-json: cannot write the budget report to {target}: cannot create a file in {tmp_path} "
        "(the report is written beside x.csv, then renamed): No such file or directory"
    )
    assert ".tmp" not in str(error) and "directory you can write" in error.hint
    assert not target.exists()


def test_a_failed_export_leaves_the_old_report_whole(
    make: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = make()
    target = tmp_path / "report.csv"
    target.write_text("the old report")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(InvalidRequest) as info:
        ledger.export_csv(target)
    assert info.value.message == (
        f"cannot write the budget report to {target}: cannot write {target}: No space left on device"
    )
    assert "free some space" in info.value.hint
    assert target.read_text() == "the old report"  # never half a report
    assert sorted(p.name for p in tmp_path.iterdir() if "report" in p.name) == ["report.csv"]


def test_entries_in_writing_order_and_persisted(make: Any, clock: FakeClock, tmp_path: Path) -> None:
    ledger = _busy_ledger(make, clock)
    statuses = [e.status for e in ledger.entries()]
    assert statuses == ["settled", "settled", "released", "settled", "saving", "saving"]
    ledger.close()
    with Ledger(tmp_path / "ledger", clock=clock) as again:
        assert [e.status for e in again.entries()] == statuses
        assert len(again.open_reservations()) == 1
        assert again.report().by_provider == ledger.report().by_provider


# ------------------------------------------------------------------ robustness


def test_uncreatable_directory_is_a_ledger_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(LedgerError) as info:
        Ledger(blocker / "ledger")
    assert str(blocker / "ledger") in str(info.value)


def test_a_file_at_the_ledger_path_is_named(tmp_path: Path) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("keep me")
    with pytest.raises(LedgerError) as info:
        Ledger(mine)
    assert f"{mine}: a file is there, not a directory" in str(info.value) and "ledger.path" in info.value.hint


def test_storage_errors_become_ledger_errors(make: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = make([BudgetLimit(scope="global", period="total", usd=D("1"))])

    def broken(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    class BrokenConnection:
        execute = executemany = staticmethod(broken)

    monkeypatch.setattr(ledger, "_db", BrokenConnection)
    for call in (
        lambda: reserve(ledger, "0.1"),
        ledger.usage,
        ledger.open_reservations,
        lambda: list(ledger.entries()),
        lambda: ledger.headroom(["global"]),
    ):
        with pytest.raises(LedgerError) as info:
            call()
        assert str(tmp_path / "ledger") in str(info.value) and "disk I/O error" in str(info.value)


def test_lock_timeout_becomes_a_ledger_error(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import diskcache

    ledger = make()

    def locked(*args: object, **kwargs: object) -> Any:
        raise diskcache.Timeout

    monkeypatch.setattr(ledger._cache, "transact", locked)
    with pytest.raises(LedgerError, match="could not be read or written: Timeout"):
        reserve(ledger, "0.1")


def test_threads_never_overspend(make: Any) -> None:
    ledger = make([limit("0.05")])
    outcomes: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10):
            try:
                res = reserve(ledger, "0.002")
            except BudgetExceeded:
                result = "refused"
            else:
                ledger.settle(res, D("0.002"))
                result = "settled"
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("settled") == 25
    assert usage_of(ledger, "global", "total") == (D("0.05"), D(0))


# ------------------------------------------------------------------ property: counters match the books

LIMITS = [limit("0.05"), limit("0.02", "provider:a", "daily"), limit("0.03", "provider:b", "monthly")]
SCOPE_SETS = [["global", "provider:a"], ["global", "provider:b"], ["global", "provider:a", "free:a"], ["global"]]


class LedgerMachine(RuleBasedStateMachine):
    """Random reserve / settle / release / clock moves; every actual ≤ its estimate."""

    reservations = Bundle("reservations")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ledger-prop-"))
        self.clock = FakeClock("2024-01-30T20:00:00")
        self.ledger = Ledger(self.dir, LIMITS, clock=self.clock, reservation_ttl_seconds=10**9)
        self.open: dict[str, Reservation] = {}
        self.spent: dict[tuple[str, str, str], int] = defaultdict(int)
        self.keys: set[tuple[str, str, str]] = set()

    def teardown(self) -> None:
        self.ledger.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(target=reservations, micros=st.integers(0, 25_000), scopes=st.sampled_from(SCOPE_SETS))
    def reserve(self, micros: int, scopes: list[str]) -> Any:
        try:
            res = self.ledger.reserve(D(micros) / 10**6, scopes=scopes, provider="p", model="m", task="t")
        except BudgetExceeded as exc:
            assert exc.spent + exc.reserved + exc.asked > exc.limit
            return multiple()  # nothing to add
        self.open[res.id] = res
        self.keys.update(res.period_keys)
        return res

    @rule(res=consumes(reservations), share=st.integers(0, 100))
    def settle(self, res: Reservation, share: int) -> None:
        micros = int(res.amount * 10**6) * share // 100
        entry = self.ledger.settle(res, D(micros) / 10**6)
        assert not entry.over_estimate
        del self.open[res.id]
        for key in res.period_keys:
            self.spent[key] += micros

    @rule(res=consumes(reservations))
    def release(self, res: Reservation) -> None:
        self.ledger.release(res)
        del self.open[res.id]

    @rule(hours=st.integers(1, 30))
    def advance(self, hours: int) -> None:
        self.clock.advance(hours * 3600)

    @invariant()
    def books_balance(self) -> None:
        assert {r.id for r in self.ledger.open_reservations()} == set(self.open)
        reserved: dict[tuple[str, str, str], int] = defaultdict(int)
        for res in self.open.values():
            for key in res.period_keys:
                reserved[key] += int(res.amount * 10**6)
        for key in self.keys:
            spent_d, reserved_d = self.ledger._counter(*key)
            assert int(reserved_d * 10**6) == reserved[key], key
            assert int(spent_d * 10**6) == self.spent[key], key
        for lim in LIMITS:
            for scope, period, pkey in self.keys:
                if (scope, period) == (lim.scope, lim.period):
                    spent_d, reserved_d = self.ledger._counter(scope, period, pkey)
                    assert spent_d + reserved_d <= lim.usd
        settled = sum((e.actual for e in self.ledger.entries() if e.status == "settled"), D(0))
        assert settled == D(self.spent["global", "total", "total"]) / 10**6


LedgerMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_ledger_property = LedgerMachine.TestCase


def test_entries_come_back_in_the_order_written_across_pages(make: Any) -> None:
    ledger = make()
    written = []
    for n in range(1300):  # more than one page of the listing query
        res = reserve(ledger, "0.001")
        if n % 3:
            written.append(ledger.settle(res, D("0.001")).id)
        else:
            written.append(ledger.release(res).id)
    assert [e.id for e in ledger.entries()] == written


def test_warnings_show_money_as_genroute_shows_it_everywhere(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    ledger = make([limit("0.03", scope="simulated", period="daily")])
    with caplog.at_level(logging.WARNING, logger="genroute.ledger"):
        ledger.settle(reserve(ledger, "0.02", scopes=["simulated"]), D("0.024"))
        ledger.settle(reserve(ledger, "0.0001", scopes=["simulated"]), D("0.00015"))
    messages = [r.getMessage() for r in caplog.records]
    assert "budget simulated (daily 2024-03-10) at 80% of its $0.03 limit: $0.024 spent" in messages
    assert any(m.startswith("mock/m1 cost $0.00015, above its estimate $0.0001 (reservation ") for m in messages)
