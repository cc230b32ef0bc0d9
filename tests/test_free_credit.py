"""Free credit: spent first, refused once the ledger or the provider says it is used up, back next month."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import pytest

from conftest import FakePlugin, FakeProvider, section
from genroute.config import BudgetLimit
from genroute.errors import BudgetExceeded, OutOfCredit
from genroute.ledger import Ledger


def _at(year: int, month: int, day: int) -> float:
    return datetime(year, month, day, 12, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_exhausted_scope_refuses_until_its_period_ends(tmp_path: Path) -> None:
    clock = Clock(_at(2026, 11, 10))
    limits = [BudgetLimit(scope="free:hf", period="monthly", usd=D("0.10"))]
    with Ledger(tmp_path / "ledger", limits, clock=clock) as ledger:
        assert ledger.headroom(["free:hf"]) == D("0.10")
        ledger.exhaust("free:hf", note="402 from the service")
        assert ledger.headroom(["free:hf"]) == 0
        with pytest.raises(BudgetExceeded) as info:
            ledger.reserve(D("0.001"), scopes=["free:hf"], provider="hf", model="m", task="t")
        assert info.value.scope == "free:hf" and "402 from the service" in info.value.hint
        # other scopes are untouched
        ledger.reserve(D("0.001"), scopes=["global"], provider="x", model="m", task="t")
        clock.now = _at(2026, 12, 1)
        assert ledger.headroom(["free:hf"]) == D("0.10")  # a new month, a new credit
        ledger.reserve(D("0.001"), scopes=["free:hf"], provider="hf", model="m", task="t")


def test_exhaustion_is_seen_by_another_process(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger") as one, Ledger(tmp_path / "ledger") as two:
        one.exhaust("free:hf")
        assert two.headroom(["free:hf"]) == 0  # even without a limit configured


async def test_a_402_on_free_work_falls_back_and_stops_offering_it(settings_factory, router_factory) -> None:  # type: ignore[no-untyped-def]
    free = FakeProvider("hf", errors=[OutOfCredit("402: monthly included credits exceeded", provider="hf")])
    paid = FakeProvider("mock")
    settings = settings_factory(
        {"hf": section("hf", "0.001", billing="free"), "mock": section("mock", "0.02")},
        limits=[{"scope": "free:hf", "period": "monthly", "usd": "0.10"}],
    )
    router = router_factory(settings, FakePlugin(free, paid))

    first = await router.arun({"task": "text-to-image", "prompt": "one"})
    assert first.provider == "mock" and len(free.calls) == 1
    second = await router.arun({"task": "text-to-image", "prompt": "two"})
    assert second.provider == "mock" and len(free.calls) == 1  # not asked again this month
    plan = await router.aplan({"task": "text-to-image", "prompt": "three"})
    assert any(r.provider == "hf" and "over budget" in r.reason for r in plan.rejections)
    assert router.cooldowns.remaining("hf") == 0  # out of credit is a budget fact, not a fault


def test_usage_and_the_report_show_a_scope_used_up_early(tmp_path: Path) -> None:
    clock = Clock(_at(2026, 11, 10))
    limits = [BudgetLimit(scope="free:hf", period="monthly", usd=D("0.10"))]
    with Ledger(tmp_path / "ledger", limits, clock=clock) as ledger:
        ledger.exhaust("free:hf", note="402 from the service")
        ledger.exhaust("free:other")  # a scope with no limit configured still shows
        rows = {(u.scope, u.period): u for u in ledger.usage()}
        monthly = rows[("free:hf", "monthly")]
        assert monthly.left == 0 and monthly.limit == D("0.10") and monthly.exhausted == "402 from the service"
        assert rows[("free:hf", "daily")].exhausted is None
        assert rows[("free:other", "monthly")].exhausted == "exhausted"
        assert "402 from the service" in ledger.report().to_csv()
        clock.now = _at(2026, 12, 1)
        after = {(u.scope, u.period): u for u in ledger.usage()}
        assert after[("free:hf", "monthly")].exhausted is None and after[("free:hf", "monthly")].left == D("0.10")
