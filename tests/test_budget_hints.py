"""What an over-budget error tells the user to do: a total limit never resets, so waiting is no remedy for it."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import FakePlugin, FakeProvider, section
from genroute.config import BudgetLimit
from genroute.errors import BudgetExceeded, OverBudget, Rejection, over_budget_hint, route_hint
from genroute.ledger import Ledger
from genroute.types import TextToImage

D = Decimal
# No cheaper tier is suggested unless the router found one where an offer fits the budget.
TOTAL_HINT = "raise the total limit in plugins.toml (a total limit never resets)"
PERIOD_HINT = "raise the limit in plugins.toml, or wait for the next period"


def refusal(period: str) -> BudgetExceeded:
    return BudgetExceeded(scope="global", period=period, limit=D(1), spent=D("0.99"), reserved=D(0), asked=D("0.02"))


def test_a_total_limit_is_not_worth_waiting_for() -> None:
    total = refusal("total")
    assert total.hint == TOTAL_HINT and "wait" not in total.hint
    for period in ("daily", "monthly"):
        assert refusal(period).hint == PERIOD_HINT
    given = BudgetExceeded(
        scope="free:hf", period="total", limit=D(1), spent=D(1), reserved=D(0), asked=D(1), hint="add credit"
    )
    assert given.hint == "add credit"  # a hint given is kept


def test_the_ledger_refusing_a_total_limit_says_to_raise_it(tmp_path: Path) -> None:
    limits = [BudgetLimit(scope="global", period="total", usd=D("0.01"))]
    with Ledger(tmp_path / "ledger", limits) as ledger, pytest.raises(BudgetExceeded) as info:
        ledger.reserve(D("0.02"), scopes=["global"], provider="p", model="m", task="text-to-image", request_key="k")
    assert info.value.period == "total" and info.value.hint == TOTAL_HINT


def over(period: str | None, *, said: bool = True, provider: str = "p") -> Rejection:
    """An offer refused for money: the reason quotes the refusal (said), or only the field carries the period."""
    if said and period is not None:
        return Rejection(provider, "m", "fast", f"over budget: {refusal(period).message}")
    return Rejection(provider, "m", "fast", "over budget ($0.01 left, needs $0.02)", budget_period=period)


@pytest.mark.parametrize(
    ("rejections", "hint"),
    [
        ([over("total")], TOTAL_HINT),
        ([over("total", said=False)], TOTAL_HINT),
        ([over("total"), over("total", said=False, provider="q")], TOTAL_HINT),
        ([over("daily")], PERIOD_HINT),
        ([over("monthly", said=False)], PERIOD_HINT),
        ([over(None)], PERIOD_HINT),  # nothing says which limit: as before
        ([over("total"), over("daily", provider="q")], over_budget_hint(["total", "daily"])),
    ],
)
def test_route_hint_follows_the_period_of_the_refusing_limits(rejections: list[Rejection], hint: str) -> None:
    assert route_hint(rejections) == hint


def test_a_mix_of_total_and_periodic_limits_says_which_can_be_waited_for() -> None:
    hint = over_budget_hint(["total", "monthly"])
    assert hint.startswith("raise the limit in plugins.toml; ")
    assert "frees only a daily or monthly limit (a total limit never resets)" in hint
    assert "tier" not in hint


@pytest.mark.parametrize(
    ("periods", "hint"),
    [
        (["daily"], "raise the limit in plugins.toml, wait for the next period, or ask for the cheaper tier fast, "),
        (["total"], "raise the total limit in plugins.toml (a total limit never resets), or ask for the cheaper tier "),
        (["total", "daily"], "raise the limit in plugins.toml, or ask for the cheaper tier fast, where an offer fits "),
    ],
)
def test_a_cheaper_tier_is_suggested_only_when_the_router_found_one_that_fits(periods: list[str], hint: str) -> None:
    assert over_budget_hint(periods, ["fast"]).startswith(hint)
    assert "tier" not in over_budget_hint(periods)
    assert over_budget_hint(["daily"], ["fast", "balanced"]).endswith(
        "or ask for a cheaper tier (fast or balanced), where an offer fits the budget"
    )


def test_over_budget_error_on_a_total_limit_asks_to_raise_it() -> None:
    err = OverBudget("no provider could serve this request:", [over("total")])
    assert err.exit_code == 5 and err.hint == TOTAL_HINT
    assert "(total) would be exceeded" in err.message


async def test_a_total_limit_taken_by_another_worker_asks_to_raise_it(
    settings_factory: Any, router_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another worker spent the budget between the router's check and its reservation: the ledger refuses.
    paid = FakeProvider("paid")
    limits = [{"scope": "global", "period": "total", "usd": "0.001"}]
    router = router_factory(settings_factory({"paid": section("paid", "0.01")}, limits=limits), FakePlugin(paid))
    monkeypatch.setattr(router.ledger, "tightest", lambda scopes: None)
    with pytest.raises(OverBudget) as info:
        await router.arun(TextToImage(prompt="a lighthouse"))
    assert info.value.hint == TOTAL_HINT
    assert not paid.calls


@pytest.mark.parametrize(("period", "hint"), [("total", TOTAL_HINT), ("daily", PERIOD_HINT)])
async def test_an_offer_filtered_out_for_money_names_the_limit_and_its_hint_follows_its_period(
    settings_factory: Any, router_factory: Any, period: str, hint: str
) -> None:
    # The usual path: the router's budget check passes the offer over before any reservation is tried.
    paid = FakeProvider("paid")
    limits = [
        {"scope": "global", "period": period, "usd": "0.001"},
        {"scope": "global", "period": "monthly", "usd": "100"},  # a looser limit on the same scope
    ]
    router = router_factory(settings_factory({"paid": section("paid", "0.01")}, limits=limits), FakePlugin(paid))
    with pytest.raises(OverBudget) as info:
        await router.arun(TextToImage(prompt="a lighthouse"))
    (rejection,) = info.value.rejections
    assert rejection.reason == f"over budget ($0.001 left in global ({period}), needs $0.01)"
    assert rejection.budget_period == period
    assert info.value.hint == hint
    assert not paid.calls


USED_UP = "the provider reported this credit used up (402: it renews next month); it returns next monthly period"


def test_an_offer_refused_for_a_used_up_credit_gives_the_providers_advice_not_a_higher_limit() -> None:
    used_up = Rejection("hf", "m", "fast", "over budget ($0.00 left in free:hf (monthly))", hint=USED_UP)
    assert route_hint([used_up]) == USED_UP
    assert route_hint([used_up], cheaper_tiers=["fast"]) == (
        f"{USED_UP}; or ask for the cheaper tier fast, where an offer fits the budget"
    )
    # another offer over its own limit still gets the limit's remedy, after the provider's advice
    capped = Rejection("mock", "m", "fast", "over budget (x)", budget_period="total")
    assert route_hint([used_up, capped]) == f"{USED_UP}; or {TOTAL_HINT}"
