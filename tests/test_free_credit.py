"""Free credit: spent first, refused once the ledger or the provider says it is used up, back next month."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import pytest

from conftest import FakePlugin, FakeProvider, section
from fakes.hf_server import FakeHF
from genroute.config import BudgetLimit
from genroute.errors import BudgetExceeded, NoRouteAvailable, OutOfCredit, OverBudget
from genroute.ledger import Ledger
from hf_helpers import TOKEN, isolate_hf, router, serve_catalogue, settings


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


# ---- Hugging Face's 402, through the real client against FakeHF ------------------------------------------------

_HF_ADVICE = (
    "Hugging Face reported the monthly free credit used up (HTTP 402)",
    "renews next month",
    "allow_paid = true",
)


@pytest.fixture
def hf_out_of_credit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHF]:
    isolate_hf(monkeypatch, tmp_path / "hf_home")
    with FakeHF(token=TOKEN, credit_usd=0.0) as server:
        serve_catalogue(server)
        yield server


def test_after_a_402_the_used_up_credit_says_why_and_what_to_do(hf_out_of_credit: FakeHF, tmp_path: Path) -> None:
    with router(settings(tmp_path, hf_out_of_credit.base_url)) as r:
        with pytest.raises(NoRouteAvailable) as first:
            r.run({"task": "text-to-image", "prompt": "one", "tier": "fast"})
        assert "allow_paid = true" in (first.value.hint or "")
        # from now on the ledger refuses free:huggingface: every refusal quotes Hugging Face's word and advice
        (used_up,) = [u for u in r.ledger.usage() if u.scope == "free:huggingface" and u.exhausted]
        headroom = r.ledger.tightest(["free:huggingface"])
        assert headroom is not None and headroom.left == 0
        with pytest.raises(BudgetExceeded) as refused:
            r.ledger.reserve(D("0.001"), scopes=["free:huggingface"], provider="huggingface", model="m", task="t")
        for said in (used_up.exhausted or "", headroom.hint or "", refused.value.hint or ""):
            assert all(part in said for part in _HF_ADVICE), said
            assert "raise the limit" not in said  # a higher limit would not help: the service said no
        assert TOKEN not in (used_up.exhausted or "") + (headroom.hint or "")
    assert hf_out_of_credit.count(status=402) == 1


def test_after_a_402_a_request_refused_for_it_is_told_what_to_do(hf_out_of_credit: FakeHF, tmp_path: Path) -> None:
    with router(settings(tmp_path, hf_out_of_credit.base_url)) as r:
        with pytest.raises(NoRouteAvailable):
            r.run({"task": "text-to-image", "prompt": "one", "tier": "fast"})
        with pytest.raises(OverBudget) as second:
            r.run({"task": "text-to-image", "prompt": "two", "tier": "fast"})
    hint = second.value.hint or ""
    assert all(part in hint for part in _HF_ADVICE) and "raise the limit" not in hint, hint
