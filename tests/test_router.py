"""The router: choosing the cheapest usable offer, rejections, retry/fallback, ledger, cooldown, deadline,
budget, cache, hooks, planning, the sync facade, and every task end to end through the built-in mock."""

from __future__ import annotations

import asyncio
import io
import logging
import math
import time
import wave
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import FakePlugin, FakeProvider, mock_section, section, tiny_png
from genroute import hookimpl
from genroute.errors import (
    AuthenticationFailed,
    DeadlineExceeded,
    GenrouteError,
    InputRefused,
    InvalidRequest,
    ModelFailed,
    ModelNotFound,
    NoRouteAvailable,
    PluginError,
    ProviderRejectedInput,
    ProviderUnavailable,
    RateLimited,
)
from genroute.keys import request_key
from genroute.router import Router
from genroute.types import (
    TASKS,
    ImageToVideo,
    Offer,
    ProviderOutput,
    RequestModel,
    Result,
    TextGeneration,
    TextToImage,
    Usage,
)

D = Decimal


def entries(router: Any) -> list[Any]:
    return list(router.ledger.entries())


def statuses(router: Any) -> list[tuple[str, str]]:
    return [(e.provider, e.status) for e in router.ledger.entries()]


def image(prompt: str = "a lighthouse at dusk", **fields: Any) -> TextToImage:
    return TextToImage(prompt=prompt, **fields)


def two_providers(
    settings_factory: Any,
    router_factory: Any,
    a: FakeProvider,
    b: FakeProvider,
    *,
    a_price: str = "0.01",
    b_price: str = "0.02",
    **settings: Any,
) -> Any:
    """A router over ``a`` (cheaper) and ``b``, both serving text-to-image at tier balanced."""
    config = settings_factory({a.name: section(a.name, a_price), b.name: section(b.name, b_price)}, **settings)
    return router_factory(config, FakePlugin(a, b))


# ---------------------------------------------------------------------------------------------- choosing


async def test_cheapest_usable_offer_wins(settings_factory, router_factory, fake_provider):
    a, b, c = fake_provider("a"), fake_provider("b"), fake_provider("c")
    config = settings_factory({"a": section("a", "0.05"), "b": section("b", "0.02"), "c": section("c", "0.03")})
    router = router_factory(config, FakePlugin(a, b, c))

    result = await router.arun(image())

    assert (result.provider, result.model, result.tier) == ("b", "b/balanced", "balanced")
    assert result.estimated_cost == D("0.02")
    assert result.actual_cost == D("0.02")
    assert result.cached is False
    assert (len(a.calls), len(b.calls), len(c.calls)) == (0, 1, 0)
    plan = await router.aplan(image())
    assert [o.provider for o in plan.candidates] == ["b", "c", "a"]


async def test_equal_price_tie_is_broken_by_profile_order(settings_factory, router_factory, fake_provider):
    a, b = fake_provider("a"), fake_provider("b")
    providers = {"a": section("a", "0.02", priority=1), "b": section("b", "0.02", priority=500)}
    config = settings_factory(providers, profiles={"p": ["b", "a"]})
    router = router_factory(config, FakePlugin(a, b))

    result = await router.arun(image())

    assert result.provider == "b"  # first in the profile, although its configured priority is worse
    assert not a.calls


async def test_equal_price_and_provider_tie_is_broken_by_offer_priority(settings_factory, router_factory):
    """Two offers of one provider at one price: the lower ``priority`` goes first."""
    p = FakeProvider("p")

    def offers(request: RequestModel) -> list[Offer]:
        return [
            Offer(
                provider="p",
                model=f"p/{name}",
                task="text-to-image",
                tier="balanced",
                estimate=D("0.01"),
                priority=priority,
            )
            for name, priority in (("late", 90), ("early", 10), ("middle", 50))
        ]

    router = router_factory(settings_factory({"p": {}}), FakePlugin(p, extra_offers=offers))

    result = await router.arun(image())

    assert result.model == "p/early"
    plan = await router.aplan(image(prompt="another"))
    assert [o.model for o in plan.candidates] == ["p/early", "p/middle", "p/late"]


# ---------------------------------------------------------------------------------------------- rejections


def _unpriced(request: RequestModel) -> list[Offer]:
    return [Offer(provider="u", model="u/mystery", task=request.task_name, tier="balanced", estimate=None)]


REJECTION_CASES: dict[str, dict[str, Any]] = {
    "wrong tier": {
        "providers": {"p": section("p", {"fast": "0.01", "quality": "0.04"})},
        "request": {},
        "expect": [("p", "p/fast", "wrong tier (asked balanced)"), ("p", "p/quality", "wrong tier (asked balanced)")],
    },
    "not in profile": {
        "providers": {"p": section("p", "0.01"), "q": section("q", "0.01", enabled=False)},
        "profiles": {"only-q": ["q"]},
        "request": {},
        "expect": [("p", "p/balanced", "not in profile 'only-q'"), ("q", "q/balanced", "disabled in config")],
    },
    "disabled": {
        "providers": {"p": section("p", "0.01", enabled=False)},
        "request": {},
        "expect": [("p", "p/balanced", "disabled in config")],
    },
    "pinned provider": {
        "providers": {"p": section("p", "0.01"), "q": section("q", "0.01", enabled=False)},
        "request": {"provider": "q"},
        "expect": [("p", "p/balanced", "not the pinned provider 'q'"), ("q", "q/balanced", "disabled in config")],
    },
    "pinned model": {
        "providers": {"p": section("p")},
        "request": {"model": "p/ultra"},
        "expect": [
            ("p", "p/fast", "not the pinned model 'p/ultra'"),
            ("p", "p/balanced", "not the pinned model 'p/ultra'"),
            ("p", "p/quality", "not the pinned model 'p/ultra'"),
        ],
    },
    "unpriced with a budget": {
        "providers": {"u": {}},
        "limits": [{"scope": "global", "period": "total", "usd": "5"}],
        "request": {},
        "extra_offers": _unpriced,
        "expect": [("u", "u/mystery", "unpriced, and a budgeted profile refuses unpriced offers")],
    },
}


@pytest.mark.parametrize("case", list(REJECTION_CASES))
async def test_each_passed_over_offer_is_reported_with_its_reason(case, settings_factory, router_factory):
    spec = REJECTION_CASES[case]
    providers = [FakeProvider(name) for name in spec["providers"]]
    config = settings_factory(spec["providers"], profiles=spec.get("profiles"), limits=spec.get("limits"))
    router = router_factory(config, FakePlugin(*providers, extra_offers=spec.get("extra_offers")))

    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(image(**spec["request"]))

    got = {(r.provider, r.model, r.reason) for r in info.value.rejections}
    assert set(spec["expect"]) <= got
    text = str(info.value)
    for provider, model, reason in spec["expect"]:
        assert f"{provider} · {model}" in text and reason in text
    assert all(not p.calls for p in providers)
    assert entries(router) == []  # nothing reserved, nothing spent


async def test_a_provider_outside_the_profile_is_reported_as_such_before_being_unavailable(
    settings_factory, router_factory
):
    """The profile is checked before availability and task: ``plan`` says ``not in profile`` for a provider the
    profile leaves out even when its token is missing, and ``unavailable`` only for one the profile lists."""
    away = FakeProvider("away", unavailable="AWAY_TOKEN is not set")
    gone = FakeProvider("gone", unavailable="GONE_TOKEN is not set")
    here = FakeProvider("here")

    def video_offer(request: RequestModel) -> list[Offer]:  # an offer for another task, from outside the profile
        return [Offer(provider="away", model="away/video", task="text-to-video", tier="balanced", estimate=D("1"))]

    providers = {"away": section("away"), "gone": section("gone"), "here": section("here")}
    config = settings_factory(providers, profiles={"mine": ["here", "gone"]})
    router = router_factory(config, FakePlugin(away, gone, here, extra_offers=video_offer))

    plan = await router.aplan(image())

    reasons = {(r.provider, r.model): r.reason for r in plan.rejections}
    assert reasons[("away", "away/balanced")] == "not in profile 'mine'"
    assert reasons[("away", "away/video")] == "not in profile 'mine'"
    assert reasons[("gone", "gone/balanced")] == "unavailable: GONE_TOKEN is not set"
    assert plan.chosen is not None and plan.chosen.provider == "here"


async def test_pins_choose_a_pricier_offer(settings_factory, router_factory, fake_provider):
    a, b = fake_provider("a"), fake_provider("b")
    config = settings_factory({"a": section("a"), "b": section("b", "0.001")})
    router = router_factory(config, FakePlugin(a, b))

    assert (await router.arun(image(provider="a"))).provider == "a"
    pinned = await router.arun(image(model="a/quality", prompt="other"))
    assert (pinned.provider, pinned.model, pinned.tier) == ("a", "a/quality", "quality")


async def test_profile_provider_not_installed_or_silent_is_reported(settings_factory, router_factory, fake_provider):
    quiet = fake_provider("quiet")  # installed, but its catalogue has no text-to-image
    away = fake_provider("away", unavailable="set AWAY_TOKEN")
    providers = {
        "ghost": {},  # configured and in the profile, but no plugin registers it
        "quiet": section("quiet", task="text-generation", unit="1k_tokens"),
        "away": {},
    }
    router = router_factory(settings_factory(providers), FakePlugin(quiet, away))

    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(image())

    reasons = {r.provider: r.reason for r in info.value.rejections}
    assert reasons == {
        "ghost": "not installed (no plugin registers it)",
        "quiet": "makes no offer for text-to-image",
        "away": "unavailable: set AWAY_TOKEN",
    }
    for line in ("ghost · - [balanced]: not installed", "quiet · - [balanced]: makes no offer", "AWAY_TOKEN"):
        assert line in str(info.value)


async def test_offer_from_a_provider_nobody_registers_is_rejected(settings_factory, router_factory):
    real = FakeProvider("real")

    def phantom(request: RequestModel) -> list[Offer]:
        return [Offer(provider="phantom", model="x", task="text-to-image", tier="balanced", estimate=D("0"))]

    config = settings_factory({"real": section("real"), "phantom": {}})
    router = router_factory(config, FakePlugin(real, extra_offers=phantom))

    result = await router.arun(image())

    assert result.provider == "real"
    plan = await router.aplan(image())
    assert ("phantom", "no installed plugin registers this provider") in {
        (r.provider, r.reason) for r in plan.rejections
    }


# ---------------------------------------------------------------------------------------------- retry and fallback


async def test_retryable_errors_are_retried_then_fall_back_with_ledger_kept_straight(
    settings_factory, router_factory, fake_provider
):
    a = fake_provider("a", errors=[ProviderUnavailable, RateLimited, ProviderUnavailable, ProviderUnavailable])
    b = fake_provider("b")
    router = two_providers(settings_factory, router_factory, a, b)

    result = await router.arun(image())

    assert result.provider == "b"
    assert [c.attempt for c in a.calls] == [1, 2, 3]  # routing.max_attempts = 3, then the next offer
    assert len(b.calls) == 1
    assert result.attempts == 1
    log = entries(router)
    assert [(e.provider, e.status) for e in log] == [("a", "released"), ("b", "settled")]
    assert log[0].actual == 0 and log[0].estimate == D("0.01")
    assert log[1].actual == result.actual_cost == D("0.02")
    assert router.ledger.open_reservations() == []


async def test_retry_succeeds_on_the_same_provider_and_charges_once(settings_factory, router_factory, fake_provider):
    a = fake_provider("a", errors=[RateLimited, ProviderUnavailable])
    b = fake_provider("b")
    router = two_providers(settings_factory, router_factory, a, b, routing={"max_attempts": 5})

    result = await router.arun(image())

    assert (result.provider, result.attempts) == ("a", 3)
    assert not b.calls
    assert statuses(router) == [("a", "settled")]
    assert entries(router)[0].actual == D("0.01")


async def test_max_attempts_is_configurable(settings_factory, router_factory, fake_provider):
    a = fake_provider("a", errors=[ProviderUnavailable] * 10)
    router = router_factory(settings_factory({"a": section("a")}, routing={"max_attempts": 5}), FakePlugin(a))

    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(image())

    assert len(a.calls) == 5
    assert "failed after 5 attempt(s)" in str(info.value)
    (failed,) = [r for r in info.value.rejections if r.model == "a/balanced"]
    assert "scripted ProviderUnavailable" in failed.reason
    assert statuses(router) == [("a", "released")]


async def test_retry_after_is_honoured(settings_factory, router_factory, fake_provider):
    a = fake_provider(
        "a",
        errors=[RateLimited("429", provider="a", retry_after=0.15), RateLimited("429", provider="a", retry_after=0.1)],
    )
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(a))

    started = time.monotonic()
    result = await router.arun(image())

    assert result.attempts == 3
    times = [c.at for c in a.calls]
    assert times[1] - times[0] >= 0.15  # backoff is ~0.001 s: only Retry-After explains the wait
    assert times[2] - times[1] >= 0.1
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("error", [AuthenticationFailed, ProviderRejectedInput, ModelNotFound, ModelFailed])
async def test_permanent_errors_are_not_retried(error, settings_factory, router_factory, fake_provider):
    a, b = fake_provider("a", errors=[error] * 3), fake_provider("b")
    router = two_providers(settings_factory, router_factory, a, b)

    result = await router.arun(image())

    assert result.provider == "b"
    assert len(a.calls) == 1
    assert statuses(router) == [("a", "released"), ("b", "settled")]


async def test_a_retryable_flag_on_the_error_overrides_its_class(settings_factory, router_factory, fake_provider):
    a = fake_provider("a", errors=[ModelFailed("flaky GPU", provider="a", retryable=True)])
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(a))

    assert (await router.arun(image())).attempts == 2


async def test_incurred_cost_of_a_failed_call_is_settled_not_released(settings_factory, router_factory, fake_provider):
    a = fake_provider("a", errors=[ModelFailed("CUDA out of memory", provider="a", incurred=D("0.007"))])
    b = fake_provider("b")
    router = two_providers(settings_factory, router_factory, a, b)

    result = await router.arun(image())

    assert result.provider == "b"
    log = entries(router)
    assert [(e.provider, e.status, e.actual) for e in log] == [
        ("a", "settled", D("0.007")),
        ("b", "settled", D("0.02")),
    ]
    assert "billed for failed calls" in log[0].note
    spent = {(u.scope, u.period): u.spent for u in router.ledger.usage()}
    assert spent[("global", "total")] == D("0.027")


async def test_a_provider_bug_falls_back_to_the_next_offer(settings_factory, router_factory, fake_provider, caplog):
    a = fake_provider("a", errors=[KeyError("oops"), KeyError("oops")])
    b = fake_provider("b")
    router = two_providers(settings_factory, router_factory, a, b)

    with caplog.at_level(logging.WARNING, logger="genroute.router"):
        result = await router.arun(image())

    assert result.provider == "b"
    assert len(a.calls) == 1  # a bug is not retried
    assert statuses(router) == [("a", "released"), ("b", "settled")]
    assert any("KeyError" in r.getMessage() for r in caplog.records)


async def test_a_non_provider_genroute_error_from_a_provider_falls_back(settings_factory, router_factory):
    a = FakeProvider("a", errors=[InvalidRequest("mask must match the image size", field="mask")])
    b = FakeProvider("b")
    router = two_providers(settings_factory, router_factory, a, b)

    assert (await router.arun(image())).provider == "b"
    assert len(a.calls) == 1


async def test_a_provider_internal_timeout_falls_back_instead_of_failing_the_request(settings_factory, router_factory):
    a = FakeProvider("a", errors=[TimeoutError("upstream read timed out")] * 3)
    b = FakeProvider("b")
    router = two_providers(settings_factory, router_factory, a, b)

    result = await router.arun(image())  # deadline is 10 s; the provider's own 0 s timeout is not ours

    assert result.provider == "b"
    assert statuses(router)[-1] == ("b", "settled")


# ---------------------------------------------------------------------------------------------- cooldown


async def test_a_failing_provider_cools_down_and_comes_back(settings_factory, router_factory, fake_provider):
    a = fake_provider("a", errors=[AuthenticationFailed, AuthenticationFailed])
    b = fake_provider("b")
    routing = {"cooldown_after_failures": 2, "cooldown_seconds": 0.4}
    router = two_providers(settings_factory, router_factory, a, b, routing=routing)

    for n in range(2):  # two failed requests on a: each falls back to b
        assert (await router.arun(image(prompt=f"p{n}"))).provider == "b"
    assert len(a.calls) == 2

    plan = await router.aplan(image(prompt="p2"))
    assert [o.provider for o in plan.candidates] == ["b"]
    cooling = [r for r in plan.rejections if r.provider == "a"]
    assert cooling and "cooling down" in cooling[0].reason
    assert (await router.arun(image(prompt="p2"))).provider == "b"
    assert len(a.calls) == 2  # skipped, not called

    await asyncio.sleep(0.5)
    result = await router.arun(image(prompt="p3"))
    assert result.provider == "a"  # back in rotation, and it works again
    assert len(a.calls) == 3


async def test_cooling_down_is_listed_when_nothing_else_can_serve(settings_factory, router_factory, fake_provider):
    a = fake_provider("a", errors=[ProviderUnavailable] * 3)
    config = settings_factory({"a": section("a")}, routing={"cooldown_after_failures": 1, "cooldown_seconds": 30})
    router = router_factory(config, FakePlugin(a))

    with pytest.raises(NoRouteAvailable):
        await router.arun(image())
    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(image(prompt="again"))

    assert "cooling down" in str(info.value)
    assert len(a.calls) == 3


async def test_input_refused_by_every_provider_that_tried_it_says_so(settings_factory, router_factory):
    a = FakeProvider("a", errors=[ProviderRejectedInput("image: truncated PNG", provider="a")])
    b = FakeProvider("b", errors=[ProviderRejectedInput("image: not a readable image", provider="b")])
    router = two_providers(settings_factory, router_factory, a, b)

    with pytest.raises(InputRefused) as info:
        await router.arun(image())

    assert info.value.exit_code == 4  # the request must change, not the tier or profile
    assert "truncated PNG" in str(info.value) and "not a readable image" in str(info.value)
    assert "change the tier" not in str(info.value)
    assert all(r.refused_input for r in info.value.rejections if r.reason.startswith("failed"))


async def test_a_refused_input_beside_another_failure_is_no_route(settings_factory, router_factory):
    a = FakeProvider("a", errors=[ProviderRejectedInput("image: truncated PNG", provider="a")])
    b = FakeProvider("b", errors=[ProviderUnavailable] * 5)
    router = two_providers(settings_factory, router_factory, a, b)

    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(image())

    assert not isinstance(info.value, InputRefused)  # b might serve it later: the input may be fine
    assert info.value.exit_code == 6


async def test_rejected_input_does_not_cool_a_provider_down(settings_factory, router_factory, fake_provider):
    a = fake_provider("a", errors=[ProviderRejectedInput] * 3)
    config = settings_factory({"a": section("a")}, routing={"cooldown_after_failures": 1, "cooldown_seconds": 30})
    router = router_factory(config, FakePlugin(a))

    for n in range(3):
        with pytest.raises(NoRouteAvailable):
            await router.arun(image(prompt=f"bad {n}"))
    assert (await router.arun(image(prompt="good"))).provider == "a"


# ---------------------------------------------------------------------------------------------- deadline


async def test_deadline_cancels_the_provider_and_releases_the_reservation(settings_factory, router_factory):
    slow = FakeProvider("slow", sleep=30)
    router = router_factory(settings_factory({"slow": section("slow")}), FakePlugin(slow))

    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await router.arun(image(deadline_seconds=0.2))

    assert time.monotonic() - started < 5  # it did not hang on the 30 s provider
    assert slow.cancelled == 1
    assert statuses(router) == [("slow", "released")]
    assert router.ledger.open_reservations() == []
    assert router.store.stats().entries == 0


async def test_configured_deadline_applies_and_covers_fallbacks(settings_factory, router_factory):
    a = FakeProvider("a", errors=[ProviderUnavailable] * 3)
    b = FakeProvider("b", sleep=30)
    router = two_providers(settings_factory, router_factory, a, b, routing={"deadline_seconds": 0.3})

    with pytest.raises(DeadlineExceeded) as info:
        await router.arun(image())

    assert "a · a/balanced" in str(info.value)  # says what was tried before time ran out
    assert "b · b/balanced [balanced]: cut short by the deadline" in str(info.value)  # and which call time ran out on
    assert b.cancelled == 1
    assert statuses(router) == [("a", "released"), ("b", "released")]


async def test_a_retry_wait_past_the_deadline_falls_back_instead_of_sleeping(settings_factory, router_factory):
    a = FakeProvider("a", errors=[RateLimited("429", provider="a", retry_after=60)])
    b = FakeProvider("b")
    router = two_providers(settings_factory, router_factory, a, b)

    started = time.monotonic()
    result = await router.arun(image(deadline_seconds=5))

    assert result.provider == "b"
    assert time.monotonic() - started < 4


# ---------------------------------------------------------------------------------------------- budget


async def test_an_offer_over_budget_is_skipped_for_a_cheaper_one(settings_factory, router_factory, fake_provider):
    a, b = fake_provider("a"), fake_provider("b")
    limits = [{"scope": "global", "period": "daily", "usd": "0.03"}]
    router = two_providers(settings_factory, router_factory, a, b, a_price="0.05", b_price="0.02", limits=limits)

    plan = await router.aplan(image())
    assert [o.provider for o in plan.candidates] == ["b"]
    (over,) = [r for r in plan.rejections if r.provider == "a"]
    assert over.reason.startswith("over budget")
    assert (await router.arun(image())).provider == "b"
    assert not a.calls


async def test_when_no_offer_fits_the_budget_nothing_runs(settings_factory, router_factory, fake_provider):
    a, b = fake_provider("a"), fake_provider("b")
    limits = [{"scope": "global", "period": "total", "usd": "0.05"}]
    router = two_providers(settings_factory, router_factory, a, b, a_price="0.02", b_price="0.03", limits=limits)

    assert (await router.arun(image(prompt="one"))).provider == "a"
    assert (await router.arun(image(prompt="two"))).provider == "a"  # 0.04 spent, 0.01 left
    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(image(prompt="three"))

    assert {r.provider for r in info.value.rejections} == {"a", "b"}
    assert all("over budget" in r.reason for r in info.value.rejections)
    assert str(info.value).count("over budget") == 2
    assert len(a.calls) == 2 and not b.calls
    assert [e.status for e in entries(router)] == ["settled", "settled"]


async def test_a_provider_scoped_limit_sends_work_elsewhere(settings_factory, router_factory, fake_provider):
    a, b = fake_provider("a"), fake_provider("b")
    limits = [{"scope": "provider:a", "period": "monthly", "usd": "0.01"}]
    router = two_providers(settings_factory, router_factory, a, b, limits=limits)

    assert (await router.arun(image(prompt="one"))).provider == "a"
    assert (await router.arun(image(prompt="two"))).provider == "b"


async def test_concurrent_requests_never_overspend(settings_factory, router_factory):
    a = FakeProvider("a", sleep=0.05)
    limits = [{"scope": "global", "period": "total", "usd": "0.05"}]
    router = router_factory(settings_factory({"a": section("a", "0.02")}, limits=limits), FakePlugin(a))

    outcomes = await asyncio.gather(*(router.arun(image(prompt=f"p{n}")) for n in range(6)), return_exceptions=True)

    served = [o for o in outcomes if isinstance(o, Result)]
    refused = [o for o in outcomes if isinstance(o, NoRouteAvailable)]
    assert (len(served), len(refused)) == (2, 4)
    assert all("over budget" in str(e) for e in refused)
    assert sum(e.actual for e in entries(router)) == D("0.04")


async def test_unpriced_offer_is_usable_without_a_budget(settings_factory, router_factory):
    u = FakeProvider("u")
    router = router_factory(settings_factory({"u": {}}), FakePlugin(u, extra_offers=_unpriced))

    result = await router.arun(image())

    assert (result.provider, result.actual_cost) == ("u", D(0))


class _BudgetWatcher:
    def __init__(self) -> None:
        self.warnings: list[Any] = []

    @hookimpl
    def genroute_budget_warning(self, warning: Any) -> None:
        self.warnings.append(warning)


async def test_budget_warning_hook_fires_once_when_spend_crosses_the_share(settings_factory, router_factory):
    watcher = _BudgetWatcher()
    limits = [{"scope": "global", "period": "total", "usd": "0.1"}]
    config = settings_factory({"a": section("a", "0.03")}, limits=limits)
    router = router_factory(config, FakePlugin(FakeProvider("a")), watcher)

    await router.arun(image(prompt="one"))  # 30 %
    assert watcher.warnings == []
    for n in range(2):  # 60 %, then 90 %: past the 80 % share once
        await router.arun(image(prompt=f"more {n}"))

    assert len(watcher.warnings) == 1
    warning = watcher.warnings[0]
    assert (warning.scope, warning.period, warning.spent) == ("global", "total", D("0.09"))


# ---------------------------------------------------------------------------------------------- invalid requests


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"task": "text-to-image", "prompt": "x", "width": 10, "height": 10}, "width"),
        ({"task": "text-to-image", "prompt": "x", "colour": "red"}, "colour"),
        ({"task": "text-to-image", "prompt": ""}, "prompt"),
        ({"task": "text-to-image", "prompt": "x", "tier": "premium"}, "tier"),
        ({"task": "paint-my-house", "prompt": "x"}, "task"),
        ({"prompt": "x"}, "task"),
    ],
)
async def test_an_invalid_request_names_the_field_and_touches_nothing(
    bad, field, settings_factory, router_factory, fake_provider
):
    a = fake_provider("a")
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(a))

    with pytest.raises(InvalidRequest) as info:
        await router.arun(bad)
    with pytest.raises(InvalidRequest):
        await router.aplan(bad)

    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert not a.calls
    assert entries(router) == []
    stats = router.store.stats()
    assert (stats.entries, stats.hits, stats.misses) == (0, 0, 0)


async def test_a_request_dict_is_accepted(settings_factory, router_factory):
    router = router_factory(settings_factory(), FakePlugin(FakeProvider("fake")))

    result = await router.arun({"task": "text-to-image", "prompt": "x", "tier": "fast"})

    assert (result.task, result.tier, result.model) == ("text-to-image", "fast", "fake/fast")


# ---------------------------------------------------------------------------------------------- cache


async def test_a_repeated_request_is_served_from_the_store(settings_factory, router_factory, fake_provider):
    a = fake_provider("a")
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(a))

    first = await router.arun(image())
    second = await router.arun(image())

    assert len(a.calls) == 1
    assert (first.cached, second.cached) == (False, True)
    assert (second.actual_cost, second.estimated_cost, second.attempts) == (0, 0, 0)
    assert second.request_key == first.request_key
    assert second.provider == "a"
    assert [x.read_bytes() for x in second.artifacts] == [x.read_bytes() for x in first.artifacts]
    log = entries(router)
    assert [e.status for e in log] == ["settled", "saving"]
    assert log[1].estimate == first.actual_cost == D("0.02")
    assert log[1].actual == 0
    stats = router.store.stats()
    assert (stats.entries, stats.hits, stats.misses, stats.saved_usd) == (1, 1, 1, D("0.02"))
    assert router.ledger.report().savings == D("0.02")


async def test_cache_refresh_calls_the_provider_again(settings_factory, router_factory, fake_provider):
    a = fake_provider("a")
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(a))

    await router.arun(image())
    refreshed = await router.arun(image(cache="refresh"))

    assert refreshed.cached is False
    assert len(a.calls) == 2
    assert [e.status for e in entries(router)] == ["settled", "settled"]
    assert (await router.arun(image())).cached is True


async def test_cache_bypass_calls_the_provider_and_stores_nothing(settings_factory, router_factory, fake_provider):
    a = fake_provider("a")
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(a))
    await router.arun(image(prompt="kept"))
    before = router.store.stats().entries

    bypassed = await router.arun(image(prompt="not kept", cache="bypass"))

    assert bypassed.cached is False
    assert router.store.stats().entries == before == 1
    assert len(bypassed.artifacts) == 1
    data = bypassed.artifacts[0].read_bytes()
    assert data == tiny_png()
    assert Image.open(io.BytesIO(data)).format == "PNG"
    assert bypassed.artifacts[0].path.suffix == ".png"
    assert (await router.arun(image(prompt="not kept"))).cached is False  # was never stored
    assert len(a.calls) == 3
    # a bypass never reads the store either
    await router.arun(image(prompt="kept", cache="bypass"))
    assert len(a.calls) == 4


async def test_store_disabled_still_returns_readable_artifacts(settings_factory, router_factory, fake_provider):
    a = fake_provider("a")
    router = router_factory(settings_factory({"a": section("a")}, store={"enabled": False}), FakePlugin(a))

    first = await router.arun(image())
    second = await router.arun(image())

    assert router.store is None
    assert (first.cached, second.cached) == (False, False)
    assert first.artifacts[0].read_bytes() == tiny_png()


async def test_cache_key_distinguishes_requests(settings_factory, router_factory, fake_provider):
    a = fake_provider("a")
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(a))

    await router.arun(image(seed=1))
    assert (await router.arun(image(seed=2))).cached is False
    assert (await router.arun(image(seed=1, tier="fast"))).cached is False
    assert (await router.arun(image(seed=1, deadline_seconds=30))).cached is True  # how, not what
    assert len(a.calls) == 3


# ---------------------------------------------------------------------------------------------- hooks


class _Reverse:
    @hookimpl
    def genroute_choose(self, request: RequestModel, offers: list[Offer]) -> list[Offer] | None:
        return list(reversed(offers))


class _Foreign:
    @hookimpl
    def genroute_choose(self, request: RequestModel, offers: list[Offer]) -> list[Offer] | None:
        return [Offer(provider="b", model="b/balanced", task="text-to-image", tier="balanced", estimate=D(0))]


async def test_genroute_choose_can_reorder_offers(settings_factory, router_factory, fake_provider):
    a, b = fake_provider("a"), fake_provider("b")
    config = settings_factory({"a": section("a", "0.01"), "b": section("b", "0.02")})
    router = router_factory(config, FakePlugin(a, b), _Reverse())

    result = await router.arun(image())

    assert result.provider == "b"
    assert not a.calls


async def test_genroute_choose_answer_with_unknown_offers_is_ignored(settings_factory, router_factory, caplog):
    a, b = FakeProvider("a"), FakeProvider("b")
    config = settings_factory({"a": section("a", "0.01"), "b": section("b", "0.02")})
    router = router_factory(config, FakePlugin(a, b), _Foreign())

    with caplog.at_level(logging.WARNING, logger="genroute.router"):
        result = await router.arun(image())

    assert result.provider == "a"
    assert "genroute_choose" in caplog.text


class _Observer:
    def __init__(self) -> None:
        self.started: list[tuple[str, str]] = []
        self.finished: list[tuple[str, Result | None, BaseException | None]] = []

    @hookimpl
    def genroute_request_started(self, request: RequestModel, key: str) -> None:
        self.started.append((request.task_name, key))

    @hookimpl
    def genroute_request_finished(
        self, request: RequestModel, key: str, result: Result | None, error: BaseException | None
    ) -> None:
        self.finished.append((key, result, error))


class _Broken:
    @hookimpl
    def genroute_request_started(self, request: RequestModel, key: str) -> None:
        raise RuntimeError("observer bug")

    @hookimpl
    def genroute_request_finished(
        self, request: RequestModel, key: str, result: Result | None, error: BaseException | None
    ) -> None:
        raise RuntimeError("observer bug")


async def test_observers_see_each_request_with_its_result_or_error(settings_factory, router_factory):
    watcher = _Observer()
    a = FakeProvider("a", errors=[AuthenticationFailed])
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(a), watcher)

    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(image())
    result = await router.arun(image())
    await router.arun(image())  # a cache hit is a request too

    assert [task for task, _ in watcher.started] == ["text-to-image"] * 3
    assert len(watcher.finished) == 3
    key, no_result, error = watcher.finished[0]
    assert key == result.request_key and no_result is None and error is info.value
    assert watcher.finished[1][1] == result and watcher.finished[1][2] is None
    assert watcher.finished[2][1] is not None and watcher.finished[2][1].cached is True


async def test_an_observer_that_raises_does_not_break_the_request(settings_factory, router_factory, caplog):
    a = FakeProvider("a")
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(a), _Broken())

    with caplog.at_level(logging.WARNING, logger="genroute.router"):
        result = await router.arun(image())

    assert result.provider == "a"
    assert "observer hook" in caplog.text
    assert f"(plugin {__name__}._Broken)" in caplog.text  # the plugin by its class, not pluggy's id number


async def test_a_raising_observer_does_not_hide_events_from_other_observers(settings_factory, router_factory):
    watcher = _Observer()
    # pluggy calls the most recently registered implementation first: the broken one
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(FakeProvider("a")), watcher, _Broken())

    await router.arun(image())

    assert len(watcher.started) == 1
    assert len(watcher.finished) == 1


# ---------------------------------------------------------------------------------------------- plan and sync facade


async def test_plan_spends_nothing_and_knows_what_is_cached(settings_factory, router_factory, fake_provider):
    a, b = fake_provider("a"), fake_provider("b")
    limits = [{"scope": "global", "period": "total", "usd": "1"}]
    router = two_providers(settings_factory, router_factory, a, b, limits=limits)

    plan = await router.aplan(image())
    assert plan.cached is False
    assert plan.chosen is not None and plan.chosen.provider == "a"
    assert [o.provider for o in plan.candidates] == ["a", "b"]
    assert entries(router) == [] and router.ledger.open_reservations() == []
    assert not a.calls and not b.calls
    assert router.store.stats().misses == 0

    result = await router.arun(image())
    before = entries(router)
    plan = await router.aplan(image())
    assert plan.cached is True
    assert plan.request_key == result.request_key
    assert (await router.aplan(image(cache="refresh"))).cached is False
    assert (await router.aplan(image(cache="bypass"))).cached is False
    assert entries(router) == before
    assert len(a.calls) == 1
    assert {(u.scope, u.period): u.reserved for u in router.ledger.usage()}[("global", "total")] == 0


def test_sync_run_and_plan(settings_factory, router_factory, fake_provider):
    a = fake_provider("a")
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(a))

    assert router.plan(image()).cached is False
    assert router.run(image()).provider == "a"
    assert router.run(image()).cached is True
    assert router.plan(image()).cached is True


async def test_sync_run_inside_a_running_loop_raises(settings_factory, router_factory, fake_provider):
    a = fake_provider("a")
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(a))

    with pytest.raises(GenrouteError, match="running event loop") as info:
        router.run(image())
    with pytest.raises(GenrouteError, match="running event loop"):
        router.plan(image())
    with pytest.raises(GenrouteError, match="running event loop"):
        router.batch([image()])

    assert "arun" in info.value.hint
    assert not a.calls


def test_router_as_context_manager_closes_providers(settings_factory, fake_provider):
    from genroute.plugins import make_plugin_manager
    from genroute.router import Router

    a = fake_provider("a")
    with Router(
        settings_factory({"a": section("a")}),
        plugin_manager=make_plugin_manager(entry_points=False, plugins=[FakePlugin(a)]),
    ) as router:
        assert router.run(image()).provider == "a"
    assert a.closed


# ---------------------------------------------------------------------------------------------- the built-in mock


def _wav(path: Path, seconds: float = 3.0, rate: int = 16_000) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        frames = bytearray()
        for i in range(int(seconds * rate)):
            frames += int(8000 * math.sin(2 * math.pi * 440 * i / rate)).to_bytes(2, "little", signed=True)
        out.writeframes(bytes(frames))
    return path


@pytest.fixture
def media_inputs(tmp_path: Path) -> dict[str, Path]:
    photo = tmp_path / "photo.png"
    photo.write_bytes(tiny_png(80, 64))
    mask = Image.new("L", (80, 64), 0)
    mask.paste(255, (20, 16, 60, 48))
    mask_path = tmp_path / "mask.png"
    mask.save(mask_path)
    return {"image": photo, "mask": mask_path, "audio": _wav(tmp_path / "speech.wav")}


def _mock_request(task: str, media: dict[str, Path]) -> dict[str, Any]:
    requests: dict[str, dict[str, Any]] = {
        "text-to-image": {"prompt": "a red fox", "width": 128, "height": 96},
        "image-to-image": {"prompt": "in watercolour", "image": str(media["image"])},
        "inpaint": {"prompt": "a cat", "image": str(media["image"]), "mask": str(media["mask"])},
        "upscale": {"image": str(media["image"]), "scale": 2},
        "remove-background": {"image": str(media["image"])},
        "text-to-video": {"prompt": "waves", "duration_seconds": 1, "fps": 4},
        "image-to-video": {"image": str(media["image"]), "duration_seconds": 1, "fps": 4},
        "text-to-speech": {"text": "Hello there, this is a test of the speech output."},
        "speech-to-text": {"audio": str(media["audio"])},
        "text-generation": {"prompt": "Write about lighthouses", "max_tokens": 60},
    }
    assert set(requests) == set(TASKS), "a new task needs a request here"
    return {"task": task, "tier": "fast", **requests[task]}


@pytest.fixture
def mock_router(settings_factory, router_factory):
    config = settings_factory({"mock": mock_section(video_side=64)}, profiles={"offline": ["mock"]})
    return router_factory(config, entry_points=True)


@pytest.mark.parametrize("task", TASKS)
async def test_every_task_produces_the_right_kind_of_result_with_the_mock(task, mock_router, media_inputs):
    result = await mock_router.arun(_mock_request(task, media_inputs))

    assert (result.task, result.provider, result.tier, result.cached) == (task, "mock", "fast", False)
    assert result.model.startswith("mock/")
    assert result.actual_cost > 0
    files = [a.read_bytes() for a in result.artifacts]
    for artifact, data in zip(result.artifacts, files, strict=True):
        assert artifact.size == len(data) > 0

    if task in ("text-to-image", "image-to-image", "inpaint", "upscale", "remove-background"):
        (data,) = files
        assert result.artifacts[0].media_type == "image/png"
        img = Image.open(io.BytesIO(data))
        assert img.format == "PNG"
        expected = {"text-to-image": (128, 96), "upscale": (160, 128)}.get(task, (80, 64))
        assert img.size == expected
        if task == "remove-background":
            assert "A" in img.getbands()
    elif task in ("text-to-video", "image-to-video"):
        (data,) = files
        assert result.artifacts[0].media_type == "image/gif"
        img = Image.open(io.BytesIO(data))
        assert img.format == "GIF"
        assert img.is_animated and img.n_frames == 4
    elif task == "text-to-speech":
        (data,) = files
        assert result.artifacts[0].media_type == "audio/wav"
        with wave.open(io.BytesIO(data)) as audio:
            assert audio.getnframes() > 0 and audio.getframerate() > 0
    elif task == "speech-to-text":
        assert files == []
        assert result.text and result.segments
        assert result.segments[-1].end == pytest.approx(3.0, abs=0.01)
        srt, vtt = result.to_srt(), result.to_webvtt()
        assert srt.startswith("1\n00:00:00,000 --> ")
        assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
        assert result.segments[0].text in srt
    else:
        assert files == []
        assert result.text and len(result.text.split()) > 3

    if task != "speech-to-text":
        with pytest.raises(InvalidRequest):
            result.to_srt()
    again = await mock_router.arun(_mock_request(task, media_inputs))
    assert again.cached is True
    assert [a.read_bytes() for a in again.artifacts] == files


async def test_an_artifact_feeds_the_next_request_like_its_file(mock_router):
    # story → storyboard → video: one result's output is the next request's input, as it is.
    still = await mock_router.arun(TextToImage(prompt="a fox in the snow", tier="fast"))
    (frame,) = still.artifacts

    from_artifact = ImageToVideo(image=frame, prompt="the fox runs", tier="fast")
    from_path = ImageToVideo(image=frame.path, prompt="the fox runs", tier="fast")
    assert from_artifact.image.sha256 == frame.sha256
    assert request_key(from_artifact) == request_key(from_path)  # the same request, the same store entry
    video = await mock_router.arun(Router.parse({"task": "image-to-video", "image": frame, "tier": "fast"}))
    assert video.artifacts[0].media_type == "image/gif"


async def test_an_artifact_whose_file_is_gone_is_refused_naming_the_field(mock_router):
    still = await mock_router.arun(TextToImage(prompt="a fox in the snow", tier="fast"))
    (frame,) = still.artifacts
    frame.path.unlink()  # evicted by a later write, say

    with pytest.raises(InvalidRequest) as info:
        Router.parse({"task": "upscale", "image": frame, "tier": "fast"})

    assert info.value.field == "image" and "is gone" in info.value.message and "Artifact.save" in info.value.message


async def test_mock_faults_are_retried_and_reported(settings_factory, router_factory):
    options = {"failure_rate": 1.0, "failure_kinds": ["rate_limit"], "retry_after_seconds": 0.01}
    config = settings_factory({"mock": mock_section(**options)}, profiles={"offline": ["mock"]})
    router = router_factory(config, entry_points=True)

    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(TextGeneration(prompt="hello", tier="fast"))

    assert "failed after 3 attempt(s)" in str(info.value)
    assert "429" in str(info.value)
    assert [e.status for e in entries(router)] == ["released"]


# ---------------------------------------------------------------------------------------------- who is asked


class CountingPlugin(FakePlugin):
    """A FakePlugin that counts how often it is asked for offers."""

    def __init__(self, *providers: Any, **kwargs: Any) -> None:
        super().__init__(*providers, **kwargs)
        self.asked = 0

    @hookimpl
    def genroute_offers(self, request: RequestModel, settings: Any) -> list[Offer]:
        self.asked += 1
        return super().genroute_offers(request, settings)


class PricingPlugin:
    """Registers no provider; offers a cheaper model on another plugin's provider ``a``."""

    def __init__(self) -> None:
        self.asked = 0

    @hookimpl
    def genroute_offers(self, request: RequestModel, settings: Any) -> list[Offer]:
        self.asked += 1
        return [Offer(provider="a", model="a/deal", task=request.task_name, tier=request.tier, estimate=D("0.0001"))]


async def test_serving_asks_only_plugins_with_a_provider_in_the_profile(settings_factory, router_factory):
    inside, outside = CountingPlugin(FakeProvider("a")), CountingPlugin(FakeProvider("b"))
    pricing = PricingPlugin()
    config = settings_factory({"a": section("a"), "b": section("b", "0.001")}, profiles={"only-a": ["a"]})
    router = router_factory(config, inside, outside, pricing)

    result = await router.arun(image())
    assert (result.provider, result.model) == ("a", "a/deal")  # a provider-less plugin is still asked
    assert (inside.asked, outside.asked, pricing.asked) == (1, 0, 1)

    plan = await router.aplan(image(prompt="plan"))  # plan explains every offer, outside the profile too
    assert outside.asked == 1
    assert any(r.provider == "b" and r.reason == "not in profile 'only-a'" for r in plan.rejections)

    with pytest.raises(NoRouteAvailable) as info:  # a pin outside the profile says why it cannot be served
        await router.arun(image(prompt="pinned", provider="b"))
    assert outside.asked == 2
    assert any(r.provider == "b" and r.reason == "not in profile 'only-a'" for r in info.value.rejections)


class LimitsPlugin:
    """Brings default budget limits (``genroute_budget_limits``)."""

    def __init__(self, *limits: object) -> None:
        self.limits = list(limits)

    @hookimpl
    def genroute_budget_limits(self, settings: Any) -> list[Any]:
        return self.limits


def test_plugins_bring_budget_limits_the_file_can_replace(settings_factory, router_factory):
    from genroute.config import BudgetLimit

    brought = [
        BudgetLimit(scope="free:a", period="monthly", usd=D("0.10")),
        BudgetLimit(scope="global", period="total", usd=D("99")),
    ]
    config = settings_factory({"a": section("a")}, limits=[{"scope": "global", "period": "total", "usd": "5"}])
    router = router_factory(config, FakePlugin(FakeProvider("a")), LimitsPlugin(*brought))
    limits = {(lim.scope, lim.period): lim.usd for lim in router.ledger.limits}
    assert limits == {("global", "total"): D("5"), ("free:a", "monthly"): D("0.10")}  # the file's global wins

    with pytest.raises(PluginError, match="not a BudgetLimit") as info:
        router_factory(config, FakePlugin(FakeProvider("a")), LimitsPlugin({"scope": "global"}))
    assert f"plugin {LimitsPlugin.__module__}.LimitsPlugin: genroute_budget_limits returned dict" in str(info.value)


async def test_a_cooldown_reaches_another_router_on_the_same_ledger(settings_factory, router_factory, fake_provider):
    routing = {"cooldown_after_failures": 1, "cooldown_seconds": 30}
    failing_a, healthy_a = fake_provider("a", errors=[ProviderUnavailable] * 3), fake_provider("a")
    config = settings_factory({"a": section("a", "0.01"), "b": section("b", "0.02")}, routing=routing)
    first = router_factory(config, FakePlugin(failing_a, fake_provider("b")))
    assert (await first.arun(image())).provider == "b"  # a failed and cooled down; b served

    second = router_factory(config, FakePlugin(healthy_a, fake_provider("b")))  # another process's router
    assert (await second.arun(image(prompt="elsewhere"))).provider == "b"
    assert not healthy_a.calls  # it never called the provider the first one took out of rotation
    plan = await second.aplan(image(prompt="plan"))
    assert any(r.provider == "a" and "cooling down" in r.reason for r in plan.rejections)


@pytest.mark.parametrize(
    "usage", [{"output_tokens": -5000}, {"media_seconds": math.nan}, {"compute_seconds": math.inf}]
)
async def test_impossible_usage_fails_the_offer_instead_of_the_batch(
    usage: dict[str, float], settings_factory, router_factory
) -> None:
    """The ledger settles on usage: a provider reporting nonsense has failed its call (closed, fallen back),
    and the other requests of a batch are not affected."""
    bad = FakeProvider("bad", output=lambda r: ProviderOutput(text="hi", usage=Usage(**usage)))
    good = FakeProvider("good", output=lambda r: ProviderOutput(text="hello"))
    sections = {
        "bad": section("bad", {"fast": "0.001"}, task="text-generation", unit="1k_tokens"),
        "good": section("good", {"fast": "0.002"}, task="text-generation", unit="1k_tokens"),
    }
    router = router_factory(settings_factory(sections), FakePlugin(bad, good))
    outcomes = await router.abatch([TextGeneration(prompt=f"p{i}", tier="fast") for i in range(4)], concurrency=2)
    assert all(isinstance(o, Result) and o.provider == "good" for o in outcomes)
    assert router.ledger.open_reservations() == []
    statuses = sorted({(e.provider, e.status) for e in router.ledger.entries()})
    assert statuses == [("bad", "released"), ("good", "settled")]


async def test_the_same_request_running_twice_at_once_is_paid_once(settings_factory, router_factory):
    # A batch with repeated lines, or two callers asking at once: the second waits for the first and is served
    # from the store, as it would be a moment later; a different request is not held back.
    a = FakeProvider("a", sleep=0.3)
    router = router_factory(settings_factory({"a": section("a", "0.01")}), FakePlugin(a))

    first, second, other = await asyncio.gather(
        router.arun(image("twice")), router.arun(image("twice")), router.arun(image("once"))
    )

    assert len(a.calls) == 2  # "twice" once, "once" once
    assert sorted([first.cached, second.cached]) == [False, True]
    assert not other.cached
    assert (first.artifacts[0].sha256, first.request_key) == (second.artifacts[0].sha256, second.request_key)
    assert [e.status for e in entries(router)].count("settled") == 2
    assert router.store.stats().hits == 1


async def test_a_failed_twin_lets_the_waiting_request_run_itself(settings_factory, router_factory):
    a = FakeProvider("a", errors=[ProviderRejectedInput], sleep=0.2)
    router = router_factory(settings_factory({"a": section("a", "0.01")}), FakePlugin(a))

    outcomes = await asyncio.gather(router.arun(image("x")), router.arun(image("x")), return_exceptions=True)

    assert isinstance(outcomes[0], NoRouteAvailable)  # the first met the scripted refusal
    assert isinstance(outcomes[1], Result) and not outcomes[1].cached  # the second then ran, and was served
    assert len(a.calls) == 2


async def test_bypass_and_refresh_requests_never_wait_for_a_twin(settings_factory, router_factory):
    a = FakeProvider("a", sleep=0.2)
    router = router_factory(settings_factory({"a": section("a", "0.01")}), FakePlugin(a))

    await asyncio.gather(router.arun(image("y")), router.arun(image("y", cache="refresh")))

    assert len(a.calls) == 2  # refresh asks for new work: it pays, as it says


def test_not_a_batch_is_exported_with_the_other_errors(settings_factory, router_factory) -> None:  # type: ignore[no-untyped-def]
    import genroute
    import genroute.errors

    assert genroute.NotABatch is genroute.errors.NotABatch and "NotABatch" in genroute.__all__
    router = router_factory(settings_factory(), FakePlugin(FakeProvider("fake")))
    with pytest.raises(genroute.NotABatch):  # caught by the public name
        router.batch("a red kite")
