"""Routing policies through :class:`genroute.Router` with scripted fake providers, in process.

Kinds of money (free credit, simulated spend, real spend) and the ledger scopes they count in; what error a
request that runs out of offers gets; unavailable providers; ``max_outputs``; money billed by failed attempts;
reservation lifetimes against long deadlines; and store hits across profiles.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest

from conftest import FakePlugin, FakeProvider, section
from genroute import hookimpl
from genroute.errors import ModelFailed, NoRouteAvailable, OverBudget, ProviderUnavailable
from genroute.ledger import Ledger, Reservation
from genroute.types import Offer, ProviderOutput, RequestModel, TextGeneration, TextToImage

D = Decimal


def image(prompt: str = "a lighthouse at dusk", **fields: Any) -> TextToImage:
    return TextToImage(prompt=prompt, **fields)


def spent(router: Any) -> dict[str, Decimal]:
    """Total spend per scope (scopes with nothing spent left out)."""
    return {u.scope: u.spent for u in router.ledger.usage() if u.period == "total" and u.spent}


def settled(router: Any) -> list[tuple[str, Decimal, list[str]]]:
    return [(e.provider, e.actual, e.scopes) for e in router.ledger.entries() if e.status == "settled"]


def unavailable_incurring(amount: str, **kw: Any) -> ProviderUnavailable:
    return ProviderUnavailable("overloaded", provider="a", incurred=D(amount), **kw)


# --------------------------------------------------------------------------------------------- kinds of money


async def test_a_free_offer_beats_a_cheaper_paid_one_and_counts_only_in_its_free_scope(
    settings_factory, router_factory, fake_provider
):
    paid, free = fake_provider("paid"), fake_provider("free")
    config = settings_factory(
        {"paid": section("paid", "0.01"), "free": section("free", "0.05", billing="free")},
        profiles={"p": ["paid", "free"]},  # the paid one even comes first in the profile
        limits=[{"scope": "global", "period": "daily", "usd": "1.00"}],
    )
    router = router_factory(config, FakePlugin(paid, free))

    plan = await router.aplan(image())
    result = await router.arun(image())

    assert [o.provider for o in plan.candidates] == ["free", "paid"]
    assert result.provider == "free" and not paid.calls
    assert result.actual_cost == D("0.05")  # the credit's price is still recorded
    assert settled(router) == [("free", D("0.05"), ["free:free"])]
    assert spent(router) == {"free:free": D("0.05")}
    assert router.ledger.headroom(("global",)) == D("1.00")


async def test_a_free_offer_over_its_own_credit_limit_gives_way_to_the_paid_one(
    settings_factory, router_factory, fake_provider
):
    paid, free = fake_provider("paid"), fake_provider("free")
    config = settings_factory(
        {"paid": section("paid", "0.01"), "free": section("free", "0.05", billing="free")},
        limits=[{"scope": "free:free", "period": "monthly", "usd": "0.08"}],
    )
    router = router_factory(config, FakePlugin(paid, free))

    assert (await router.arun(image(prompt="one"))).provider == "free"
    assert (await router.arun(image(prompt="two"))).provider == "paid"  # 0.03 of credit left, needs 0.05

    assert spent(router) == {"free:free": D("0.05"), "global": D("0.01"), "provider:paid": D("0.01")}


async def test_simulated_spend_counts_in_simulated_and_its_provider_scope_never_in_global(
    settings_factory, router_factory, fake_provider
):
    sim = fake_provider("sim")
    config = settings_factory(
        {"sim": section("sim", "0.02", billing="simulated")},
        # Not a cent of real money is allowed, yet the simulated provider still serves.
        limits=[
            {"scope": "global", "period": "total", "usd": "0"},
            {"scope": "simulated", "period": "daily", "usd": "1"},
        ],
    )
    router = router_factory(config, FakePlugin(sim))

    result = await router.arun(image())

    assert result.provider == "sim" and result.actual_cost == D("0.02")
    assert settled(router) == [("sim", D("0.02"), ["simulated", "provider:sim"])]
    assert spent(router) == {"simulated": D("0.02"), "provider:sim": D("0.02")}
    assert all(u.spent == 0 and u.reserved == 0 for u in router.ledger.usage() if u.scope == "global")


async def test_the_simulated_limit_stops_a_simulated_provider(settings_factory, router_factory, fake_provider):
    sim = fake_provider("sim")
    config = settings_factory(
        {"sim": section("sim", "0.02", billing="simulated")},
        limits=[{"scope": "simulated", "period": "daily", "usd": "0.03"}],
    )
    router = router_factory(config, FakePlugin(sim))

    await router.arun(image(prompt="one"))
    with pytest.raises(OverBudget):
        await router.arun(image(prompt="two"))

    assert len(sim.calls) == 1


# --------------------------------------------------------------------------------------------- running out of offers


async def test_every_usable_offer_over_budget_raises_over_budget_exit_5(
    settings_factory, router_factory, fake_provider
):
    a, b = fake_provider("a"), fake_provider("b")
    config = settings_factory(
        {"a": section("a", "0.04"), "b": section("b", "0.05")},
        limits=[{"scope": "global", "period": "daily", "usd": "0.03"}],
    )
    router = router_factory(config, FakePlugin(a, b))

    with pytest.raises(OverBudget) as info:
        await router.arun(image())

    assert isinstance(info.value, NoRouteAvailable)
    assert info.value.exit_code == 5
    balanced = [r for r in info.value.rejections if r.tier == "balanced"]
    assert {r.provider for r in balanced} == {"a", "b"}
    assert all(r.reason.startswith("over budget") for r in balanced)
    assert not a.calls and not b.calls
    assert list(router.ledger.entries()) == []


class ConcurrentSpender:
    """A ``genroute_choose`` hook that lets "another worker" reserve budget after the offers were filtered."""

    def __init__(self, ledger_path: Any, amount: str) -> None:
        self.ledger_path = ledger_path
        self.amount = D(amount)

    @hookimpl
    def genroute_choose(self, request: RequestModel, offers: list[Offer]) -> None:
        with Ledger(self.ledger_path, []) as other:
            other.reserve(self.amount, scopes=["global"], provider="other", model="other", task="text-to-image")


async def test_a_reservation_refused_at_run_time_also_gives_over_budget(settings_factory, router_factory, tmp_path):
    """Budget a concurrent worker took between filtering and reserving counts the same as budget spent before."""
    a = FakeProvider("a")
    config = settings_factory(
        {"a": section("a", "0.02")}, limits=[{"scope": "global", "period": "total", "usd": "0.03"}]
    )
    router = router_factory(config, FakePlugin(a), ConcurrentSpender(tmp_path / "ledger", "0.02"))

    with pytest.raises(OverBudget) as info:
        await router.arun(image())

    (rejection,) = [r for r in info.value.rejections if r.tier == "balanced"]
    assert rejection.reason.startswith("over budget: budget global")  # refused by the ledger, not the filter
    assert info.value.exit_code == 5
    assert not a.calls


async def test_one_offer_failed_and_another_over_budget_is_plain_no_route(
    settings_factory, router_factory, fake_provider
):
    a = fake_provider("a", errors=[ModelFailed("CUDA out of memory", provider="a")])
    b = fake_provider("b")
    config = settings_factory(
        {"a": section("a", "0.01"), "b": section("b", "0.05")},
        limits=[{"scope": "global", "period": "daily", "usd": "0.03"}],
    )
    router = router_factory(config, FakePlugin(a, b))

    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(image())

    assert type(info.value) is NoRouteAvailable
    assert info.value.exit_code == 6
    reasons = {r.provider: r.reason for r in info.value.rejections if r.tier == "balanced"}
    assert reasons["a"].startswith("failed after 1 attempt(s)")
    assert reasons["b"].startswith("over budget")
    assert len(a.calls) == 1 and not b.calls


# --------------------------------------------------------------------------------------------- unavailable providers


async def test_an_unavailable_provider_is_never_run_and_says_why(settings_factory, router_factory, fake_provider):
    cheap = fake_provider("cheap", unavailable="CHEAP_TOKEN is not set")
    dear = fake_provider("dear")
    config = settings_factory({"cheap": section("cheap", "0.001"), "dear": section("dear", "0.04")})
    router = router_factory(config, FakePlugin(cheap, dear))

    plan = await router.aplan(image())
    result = await router.arun(image())

    assert [o.provider for o in plan.candidates] == ["dear"]
    cheap_reasons = {r.reason for r in plan.rejections if r.provider == "cheap"}
    assert cheap_reasons == {"unavailable: CHEAP_TOKEN is not set"}
    assert result.provider == "dear"
    assert not cheap.calls


async def test_an_unavailable_provider_alone_gives_no_route_naming_the_reason(
    settings_factory, router_factory, fake_provider
):
    only = fake_provider("only", unavailable="ONLY_TOKEN is not set")
    router = router_factory(settings_factory({"only": section("only")}), FakePlugin(only))

    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(image())

    assert type(info.value) is NoRouteAvailable
    assert "unavailable: ONLY_TOKEN is not set" in str(info.value)
    assert not only.calls
    assert list(router.ledger.entries()) == []


# --------------------------------------------------------------------------------------------- max_outputs


def capped_section(name: str, price: str, max_outputs: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": f"{name}/balanced", "unit": "output", "price": price}
    if max_outputs is not None:
        entry["max_outputs"] = max_outputs
    return {"models": {"text-to-image": {"balanced": entry}}}


async def test_max_outputs_rejects_a_request_for_more_outputs(settings_factory, router_factory, fake_provider):
    capped = fake_provider("capped")
    router = router_factory(settings_factory({"capped": capped_section("capped", "0.01", 2)}), FakePlugin(capped))

    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(image(num_outputs=3))

    (rejection,) = [r for r in info.value.rejections if r.provider == "capped"]
    assert rejection.reason == "asks 3 outputs; this model makes at most 2"
    assert not capped.calls
    assert (await router.arun(image(num_outputs=2))).provider == "capped"


async def test_max_outputs_sends_a_larger_request_to_a_model_without_the_cap(
    settings_factory, router_factory, fake_provider
):
    capped, roomy = fake_provider("capped"), fake_provider("roomy")
    providers = {"capped": capped_section("capped", "0.01", 1), "roomy": capped_section("roomy", "0.02", None)}
    router = router_factory(settings_factory(providers), FakePlugin(capped, roomy))

    assert (await router.arun(image(num_outputs=1))).provider == "capped"
    assert (await router.arun(image(num_outputs=4))).provider == "roomy"
    assert len(capped.calls) == 1


# --------------------------------------------------------------------------------------------- incurred money


async def test_money_billed_by_retried_attempts_is_added_to_the_successful_settlement(
    settings_factory, router_factory, fake_provider
):
    a = fake_provider("a", errors=[unavailable_incurring("0.001"), unavailable_incurring("0.001")])
    router = router_factory(settings_factory({"a": section("a", "0.01")}), FakePlugin(a))

    result = await router.arun(image())

    assert result.attempts == 3
    assert result.actual_cost == D("0.012")
    assert settled(router) == [("a", D("0.012"), ["global", "provider:a"])]
    assert spent(router)["global"] == D("0.012")


async def test_money_billed_by_every_attempt_of_a_failed_offer_is_settled(
    settings_factory, router_factory, fake_provider
):
    a = fake_provider("a", errors=[unavailable_incurring("0.001") for _ in range(3)])
    b = fake_provider("b")
    config = settings_factory({"a": section("a", "0.01"), "b": section("b", "0.02")})
    router = router_factory(config, FakePlugin(a, b))

    result = await router.arun(image())

    assert result.provider == "b" and result.actual_cost == D("0.02")
    assert len(a.calls) == 3
    assert [(p, actual) for p, actual, _ in settled(router)] == [("a", D("0.003")), ("b", D("0.02"))]
    assert spent(router)["global"] == D("0.023")


async def test_money_billed_before_a_final_permanent_error_is_settled(settings_factory, router_factory, fake_provider):
    final = ModelFailed("bad weights", provider="a", incurred=D("0.002"))
    a = fake_provider("a", errors=[unavailable_incurring("0.001"), unavailable_incurring("0.001"), final])
    b = fake_provider("b")
    router = router_factory(settings_factory({"a": section("a", "0.01"), "b": section("b", "0.02")}), FakePlugin(a, b))

    assert (await router.arun(image())).provider == "b"

    assert [(p, actual) for p, actual, _ in settled(router)] == [("a", D("0.004")), ("b", D("0.02"))]


async def test_money_billed_by_an_attempt_not_retried_for_lack_of_time_is_settled_once(
    settings_factory, router_factory, fake_provider
):
    # retry_after 100 s with a 10 s deadline: no retry, fall back at once.
    a = fake_provider("a", errors=[unavailable_incurring("0.001", retry_after=100)])
    b = fake_provider("b")
    router = router_factory(settings_factory({"a": section("a", "0.01"), "b": section("b", "0.02")}), FakePlugin(a, b))

    assert (await router.arun(image())).provider == "b"

    assert len(a.calls) == 1
    assert [(p, actual) for p, actual, _ in settled(router)] == [("a", D("0.001")), ("b", D("0.02"))]


# --------------------------------------------------------------------------------------------- reservation lifetime


async def test_a_reservation_outlives_a_deadline_longer_than_the_ledger_ttl(settings_factory, router_factory, tmp_path):
    seen: list[tuple[list[Reservation], float]] = []
    router: Any = None

    def output(request: RequestModel) -> ProviderOutput:
        seen.append((router.ledger.open_reservations(), time.time()))
        return FakeProvider("slow").default_output(request)

    slow = FakeProvider("slow", sleep=0.05, output=output)
    config = settings_factory(
        {"slow": section("slow")}, ledger={"path": str(tmp_path / "ledger"), "reservation_ttl_seconds": 5}
    )
    router = router_factory(config, FakePlugin(slow))
    assert router.ledger.reservation_ttl_seconds == 5

    await router.arun(image(deadline_seconds=120))

    ((open_, now),) = seen
    (reservation,) = open_
    assert reservation.provider == "slow"
    assert reservation.expires_at - reservation.created_at >= 120
    assert reservation.expires_at > now + 110  # still far from being reclaimed while the call runs
    assert router.ledger.open_reservations() == []


async def test_a_streaming_reservation_outlives_a_deadline_longer_than_the_ledger_ttl(
    settings_factory, router_factory, tmp_path
):
    slow = FakeProvider("slow", sleep=0.01, stream_pieces=["Once ", "upon ", "a time"])
    config = settings_factory(
        {"slow": section("slow", task="text-generation", unit="1k_tokens")},
        ledger={"path": str(tmp_path / "ledger"), "reservation_ttl_seconds": 5},
    )
    router = router_factory(config, FakePlugin(slow))
    request = TextGeneration(prompt="tell me", deadline_seconds=300, max_tokens=100)
    lifetimes: list[float] = []

    async for _piece in router.astream(request):
        lifetimes.extend(r.expires_at - r.created_at for r in router.ledger.open_reservations())

    assert lifetimes and min(lifetimes) >= 300
    assert router.ledger.open_reservations() == []


# --------------------------------------------------------------------------------------------- the store and profiles


def two_profiles(settings_factory: Any, profile: str) -> Any:
    """Providers x and y sharing one ledger and store; profile A uses x, profile B uses y."""
    return settings_factory({"x": section("x"), "y": section("y")}, profiles={"A": ["x"], "B": ["y"]}, profile=profile)


async def test_a_stored_result_from_a_provider_outside_the_profile_is_not_served(settings_factory, router_factory):
    x, y = FakeProvider("x"), FakeProvider("y")
    under_a = router_factory(two_profiles(settings_factory, "A"), FakePlugin(x, y))
    stored = await under_a.arun(image())
    again = await under_a.arun(image())
    under_a.close()
    assert (stored.provider, stored.cached, again.cached) == ("x", False, True)

    under_b = router_factory(two_profiles(settings_factory, "B"), FakePlugin(x, y))
    result = await under_b.arun(image())

    assert under_b.settings.profile == "B"
    assert (result.provider, result.cached) == ("y", False)
    assert len(x.calls) == 1 and len(y.calls) == 1
    assert result.actual_cost == D("0.02")
    assert (await under_b.arun(image())).cached is True  # y's result replaced x's


async def test_a_stored_result_from_a_provider_in_the_profile_is_served(settings_factory, router_factory):
    x, y = FakeProvider("x"), FakeProvider("y")
    providers = {"x": section("x"), "y": section("y")}
    under_a = router_factory(settings_factory(providers, profiles={"A": ["x"], "AB": ["y", "x"]}), FakePlugin(x, y))
    await under_a.arun(image())
    under_a.close()

    config = settings_factory(providers, profiles={"A": ["x"], "AB": ["y", "x"]}, profile="AB")
    result = await router_factory(config, FakePlugin(x, y)).arun(image())

    assert (result.provider, result.cached) == ("x", True)
    assert not y.calls


async def test_plan_agrees_with_run_about_a_result_stored_under_another_profile(settings_factory, router_factory):
    x, y = FakeProvider("x"), FakeProvider("y")
    under_a = router_factory(two_profiles(settings_factory, "A"), FakePlugin(x, y))
    await under_a.arun(image())
    under_a.close()
    under_b = router_factory(two_profiles(settings_factory, "B"), FakePlugin(x, y))

    plan = await under_b.aplan(image())
    result = await under_b.arun(image())

    assert result.cached is False
    assert plan.cached is False
    assert plan.chosen is not None and plan.chosen.provider == "y"
