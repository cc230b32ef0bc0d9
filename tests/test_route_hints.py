"""When no offer can serve, the error's hint says what to do about the reasons the offers were passed over.

A missing token names the environment variable to set, offers over budget ask for a higher limit or a wait,
offers of other tiers name the tiers on offer; reasons that suggest nothing keep the general hint.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import FakePlugin, FakeProvider, section
from genroute.errors import (
    AuthenticationFailed,
    DeadlineExceeded,
    InputRefused,
    NoRouteAvailable,
    OverBudget,
    ProviderError,
    ProviderRejectedInput,
    ProviderUnavailable,
    Rejection,
    route_hint,
)
from genroute.types import TextGeneration, TextToImage

GENERAL_HINT = NoRouteAvailable.default_hint


def image(prompt: str = "a lighthouse at dusk", **fields: Any) -> TextToImage:
    return TextToImage(prompt=prompt, **fields)


async def no_route(router: Any, request: TextToImage | None = None) -> NoRouteAvailable:
    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(request or image())
    return info.value


async def test_missing_tokens_name_the_variables_to_set(settings_factory, router_factory):
    # As the prod profile without REPLICATE_API_TOKEN and HF_TOKEN: every offer unavailable for a missing token.
    rep = FakeProvider("rep", unavailable="REP_API_TOKEN is not set")
    hug = FakeProvider("hug", unavailable="HUG_TOKEN is not set")
    providers = {"rep": section("rep", {"fast": "0.01", "balanced": "0.02"}), "hug": section("hug", "0.01")}
    router = router_factory(settings_factory(providers), FakePlugin(rep, hug))

    err = await no_route(router)

    assert all(r.reason.startswith("unavailable: ") for r in err.rejections)
    assert err.hint == "set REP_API_TOKEN or HUG_TOKEN in the environment, or use another profile"
    assert err.exit_code == 6
    assert not rep.calls and not hug.calls


async def test_a_missing_token_beside_a_failure_still_names_the_variable(settings_factory, router_factory):
    down = FakeProvider("down", errors=[ProviderUnavailable] * 5)
    away = FakeProvider("away", unavailable="AWAY_TOKEN is not set")
    router = router_factory(
        settings_factory({"down": section("down"), "away": section("away")}), FakePlugin(down, away)
    )

    err = await no_route(router)

    assert any(r.reason.startswith("failed") for r in err.rejections)
    assert err.hint == (
        "try again later (down was rate-limited, overloaded or too slow on every try); "
        "or set AWAY_TOKEN in the environment, or use another profile"
    )


async def test_a_provider_unavailable_for_another_reason_is_named(settings_factory, router_factory):
    broke = FakeProvider("broke", unavailable="out of credit (HTTP 402); add credit at example.com/billing")
    router = router_factory(settings_factory({"broke": section("broke")}), FakePlugin(broke))

    err = await no_route(router)

    assert err.hint == "make broke available again (its lines say what is missing)"
    assert "add credit at example.com/billing" in err.message


async def test_every_offer_over_budget_asks_for_a_higher_limit_or_a_wait(settings_factory, router_factory):
    a = FakeProvider("a")
    limits = [{"scope": "global", "period": "daily", "usd": "0.001"}]
    router = router_factory(settings_factory({"a": section("a", "0.01")}, limits=limits), FakePlugin(a))

    err = await no_route(router)

    assert isinstance(err, OverBudget) and err.exit_code == 5
    # a is offered at tier balanced alone: there is no cheaper tier to ask for
    assert err.hint == "raise the limit in plugins.toml, or wait for the next period"


async def test_over_budget_beside_a_missing_token_gives_both_ways_out(settings_factory, router_factory):
    paid = FakeProvider("paid")
    away = FakeProvider("away", unavailable="AWAY_TOKEN is not set")
    limits = [{"scope": "global", "period": "daily", "usd": "0.001"}]
    config = settings_factory({"paid": section("paid", "0.01"), "away": section("away")}, limits=limits)
    router = router_factory(config, FakePlugin(paid, away))

    err = await no_route(router)

    assert isinstance(err, OverBudget)
    assert err.hint == (
        "set AWAY_TOKEN in the environment, or use another profile; "
        "or raise the limit in plugins.toml, or wait for the next period"
    )


DAILY = [{"scope": "global", "period": "daily", "usd": "0.015"}]  # fits fast ($0.01), not balanced ($0.02)


async def test_over_budget_at_the_fast_tier_never_asks_for_a_cheaper_tier(settings_factory, router_factory):
    a = FakeProvider("a")
    limits = [{"scope": "global", "period": "daily", "usd": "0.001"}]
    router = router_factory(settings_factory({"a": section("a")}, limits=limits), FakePlugin(a))

    err = await no_route(router, image(tier="fast"))  # fast is the cheapest tier there is

    assert isinstance(err, OverBudget)
    assert err.hint == "raise the limit in plugins.toml, or wait for the next period"
    assert not a.calls


async def test_over_budget_asks_for_a_cheaper_tier_only_where_an_offer_fits_the_budget(
    settings_factory, router_factory
):
    a = FakeProvider("a")
    router = router_factory(settings_factory({"a": section("a")}, limits=DAILY), FakePlugin(a))

    err = await no_route(router, image(tier="quality"))

    assert isinstance(err, OverBudget)
    # balanced ($0.02) is cheaper than quality but over the $0.015 left too: only fast would be served
    assert err.hint == (
        "raise the limit in plugins.toml, wait for the next period, "
        "or ask for the cheaper tier fast, where an offer fits the budget"
    )
    assert (await router.arun(image(tier="fast"))).tier == "fast"  # and it does: the hint was true


async def test_over_budget_with_no_cheaper_offer_asks_only_for_money_or_time(settings_factory, router_factory):
    a = FakeProvider("a")
    # balanced and quality only: nothing cheaper than balanced exists
    config = settings_factory({"a": section("a", {"balanced": "0.02", "quality": "0.04"})}, limits=DAILY)
    router = router_factory(config, FakePlugin(a))

    err = await no_route(router, image(tier="balanced"))

    assert err.hint == "raise the limit in plugins.toml, or wait for the next period"


async def test_a_cheaper_tier_also_over_budget_is_not_suggested(settings_factory, router_factory):
    a = FakeProvider("a")
    limits = [{"scope": "global", "period": "total", "usd": "0.005"}]  # under even fast's $0.01
    router = router_factory(settings_factory({"a": section("a")}, limits=limits), FakePlugin(a))

    err = await no_route(router, image(tier="quality"))

    assert err.hint == "raise the total limit in plugins.toml (a total limit never resets)"


async def test_a_stream_over_budget_names_the_cheaper_tier_that_fits(settings_factory, router_factory):
    a = FakeProvider("a", stream_pieces=["hi"])
    config = settings_factory({"a": section("a", task="text-generation", unit="request")}, limits=DAILY)
    router = router_factory(config, FakePlugin(a))

    with pytest.raises(OverBudget) as info:
        [piece async for piece in router.astream(TextGeneration(prompt="hi", tier="balanced"))]

    assert info.value.hint.endswith("or ask for the cheaper tier fast, where an offer fits the budget")
    assert router.ledger.open_reservations() == []


async def test_offers_only_in_other_tiers_name_the_tiers_on_offer(settings_factory, router_factory):
    p = FakeProvider("p")
    router = router_factory(settings_factory({"p": section("p", {"fast": "0.01", "quality": "0.04"})}), FakePlugin(p))

    err = await no_route(router, image(tier="balanced"))

    assert err.hint == "ask for tier fast or quality, the tiers on offer"
    one = router_factory(settings_factory({"p": section("p", {"fast": "0.01"})}), FakePlugin(p))
    assert (await no_route(one)).hint == "ask for tier fast, the tier on offer"


async def test_passing_failures_alone_ask_to_try_again_later(settings_factory, router_factory):
    a = FakeProvider("a", errors=[ProviderUnavailable] * 5)
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(a))

    err = await no_route(router)

    assert err.hint == "try again later (a was rate-limited, overloaded or too slow on every try)"


async def test_a_failure_that_does_not_pass_keeps_the_general_hint(settings_factory, router_factory):
    a = FakeProvider("a", errors=[ProviderError("the model crashed", provider="a")] * 5)
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(a))

    err = await no_route(router)

    assert err.hint == GENERAL_HINT


async def test_refused_input_keeps_its_own_hint_even_beside_a_missing_token(settings_factory, router_factory):
    a = FakeProvider("a", errors=[ProviderRejectedInput("image: truncated PNG", provider="a")])
    away = FakeProvider("away", unavailable="AWAY_TOKEN is not set")
    router = router_factory(settings_factory({"a": section("a"), "away": section("away")}), FakePlugin(a, away))

    err = await no_route(router)

    assert isinstance(err, InputRefused)
    assert err.hint == InputRefused.default_hint


UNOFFERED_ULTRA = "no provider offers the model 'p/ultra' (check its spelling); pin one of p/m [fast], or drop the pin"


@pytest.mark.parametrize(
    ("reasons", "hint"),
    [
        (["cooling down for 12.0s more after repeated failures"], "wait for p to finish cooling down"),
        (["asks 4 outputs; this model makes at most 1"], "ask for fewer outputs (num_outputs)"),
        (["unpriced, and a budgeted profile refuses unpriced offers"], "give the model a price in plugins.toml"),
        # which provider was pinned cannot be told from this reason alone: every plugin is asked for a pin outside
        (["not in profile 'offline'"], "use a profile that lists the pinned provider, or drop the pin"),
        (["makes no offer for text-to-image"], None),
        (["not the pinned model 'p/ultra'", "disabled in config"], UNOFFERED_ULTRA),
        (["unavailable: HF_TOKEN is not set"] * 2, "set HF_TOKEN in the environment, or use another profile"),
    ],
)
def test_each_kind_of_rejection_gets_its_remedy(reasons: list[str], hint: str | None) -> None:
    rejections = [Rejection("p", "p/m", "fast", reason) for reason in reasons]
    assert route_hint(rejections) == hint
    assert NoRouteAvailable("no route", rejections).hint == (hint or GENERAL_HINT)


def test_a_hint_given_is_kept() -> None:
    rejections = [Rejection("p", "p/m", "fast", "unavailable: HF_TOKEN is not set")]
    assert NoRouteAvailable("no route", rejections, hint="do this").hint == "do this"


# -------------------------------------------------------------------------------------------------- pins


@pytest.fixture
def home_and_away(settings_factory, router_factory):
    """Profile ``test`` lists ``home`` only; ``rep`` and ``hug`` are installed but outside it."""

    def build(**home_kwargs: Any) -> Any:
        home, rep, hug = FakeProvider("home", **home_kwargs), FakeProvider("rep"), FakeProvider("hug")
        providers = {name: section(name) for name in ("home", "rep", "hug")}
        config = settings_factory(providers, profiles={"test": ["home"]})
        return router_factory(config, FakePlugin(home, rep, hug))

    return build


async def test_a_pin_outside_the_profile_names_only_the_pinned_provider(home_and_away):
    router = home_and_away()

    err = await no_route(router, image(provider="rep"))

    # hug is "not in profile" too (every plugin is asked for a pin outside the profile), but was not pinned
    assert {r.reason for r in err.rejections if r.provider == "hug"} == {"not in profile 'test'"}
    assert err.hint == "use a profile that lists rep, or drop the pin"


async def test_a_misspelt_pin_says_no_plugin_registers_it_and_names_the_providers_on_offer(home_and_away):
    router = home_and_away()

    err = await no_route(router, image(provider="hoem"))

    assert err.hint == (
        "no installed plugin registers 'hoem', or it does not serve this task; "
        "pin one of home, rep or hug (the providers that offered), or drop the pin"
    )
    assert "use a profile that lists" not in err.hint


async def test_a_stream_pinned_outside_the_profile_names_the_pin_even_when_no_reason_quotes_it(
    settings_factory, router_factory
):
    # home is unavailable, so no offer of it reaches the "not the pinned provider" check that would quote the pin:
    # the pin comes from the request, and home's missing token is no remedy for a request pinned to rep.
    home = FakeProvider("home", unavailable="HOME_TOKEN is not set")
    rep, hug = FakeProvider("rep"), FakeProvider("hug")
    providers = {name: section(name, task="text-generation", unit="request") for name in ("home", "rep", "hug")}
    router = router_factory(settings_factory(providers, profiles={"test": ["home"]}), FakePlugin(home, rep, hug))

    with pytest.raises(NoRouteAvailable) as info:
        [piece async for piece in router.astream(TextGeneration(prompt="hi", provider="rep"))]

    assert info.value.pinned == "rep"
    assert info.value.hint == "use a profile that lists rep, or drop the pin"
    assert router.ledger.open_reservations() == []


async def test_a_pin_to_an_installed_provider_without_a_section_asks_for_the_section(settings_factory, router_factory):
    home, rep = FakeProvider("home"), FakeProvider("rep")
    config = settings_factory({"home": section("home")}, profiles={"test": ["home"]})
    router = router_factory(config, FakePlugin(home, rep))

    err = await no_route(router, image(provider="rep"))

    reason = f"installed, but {config.source} has no [providers.rep] section"
    assert [r.reason for r in err.rejections if r.provider == "rep"] == [reason]
    assert err.hint == (
        f"add a [providers.rep] section with its models (see docs/configuration.md) to {config.source}, or drop the pin"
    )
    plan = await router.aplan(image(provider="rep"))  # plan shows the same line
    assert [r.reason for r in plan.rejections if r.provider == "rep"] == [reason]
    # a pin no plugin registers is still told so
    assert "no installed plugin registers 'nope'" in (await no_route(router, image(provider="nope"))).hint
    assert home.calls == [] and rep.calls == []


def rejection(provider: str, reason: str, model: str | None = None) -> Rejection:
    return Rejection(provider, model or f"{provider}/m", "balanced", reason)


def test_a_pin_given_counts_only_the_pinned_providers_reasons() -> None:
    rejections = [
        rejection("rep", "unavailable: REP_TOKEN is not set"),
        rejection("hug", "unavailable: HUG_TOKEN is not set"),
        rejection("mock", "not in profile 'prod'"),
    ]
    assert route_hint(rejections) == (  # no pin known: every reason counts
        "set REP_TOKEN or HUG_TOKEN in the environment, or use another profile; "
        "or use a profile that lists the pinned provider, or drop the pin"
    )
    assert route_hint(rejections, pinned="rep") == "set REP_TOKEN in the environment, or use another profile"
    assert route_hint(rejections, pinned="mock") == "use a profile that lists mock, or drop the pin"
    assert NoRouteAvailable("no route", rejections, pinned="mock").hint == route_hint(rejections, pinned="mock")


def test_a_pin_read_from_the_other_providers_reasons() -> None:
    rejections = [
        rejection("rep", "not in profile 'offline'"),
        rejection("mock", "not the pinned provider 'rep'"),
        rejection("hug", "not in profile 'offline'"),
    ]
    assert route_hint(rejections) == "use a profile that lists rep, or drop the pin"


@pytest.mark.parametrize(
    "unregistered",
    [
        rejection("mokc", "no installed plugin registers this provider"),  # an offer made for it
        rejection("mokc", "not installed (no plugin registers it)", model="-"),  # a profile entry
    ],
)
def test_a_pin_no_installed_plugin_registers_says_so(unregistered: Rejection) -> None:
    rejections = [rejection("mock", "not the pinned provider 'mokc'"), unregistered, rejection("rep", "not in profile")]
    hint = (
        "no installed plugin registers 'mokc'; pin one of mock or rep (the installed providers that offered), "
        "or drop the pin"
    )
    assert route_hint(rejections) == hint
    assert route_hint(rejections, pinned="mokc") == hint


def test_a_pin_with_nothing_else_on_offer_asks_to_check_the_name() -> None:
    rejections = [rejection("mokc", "not installed (no plugin registers it)", model="-")]
    assert (
        route_hint(rejections, pinned="mokc") == "no installed plugin registers 'mokc'; check the name, or drop the pin"
    )


async def test_a_refused_token_puts_the_providers_own_advice_first_and_warns_on_fallback(
    settings_factory, router_factory, caplog
):
    # A wrong token is the user's to fix: the provider says how, and a fallback does not hide it.
    advice = "check REP_API_TOKEN: it must be a valid API token"
    wrong = FakeProvider("rep", errors=[AuthenticationFailed("HTTP 401 Unauthenticated", provider="rep", hint=advice)])
    router = router_factory(settings_factory({"rep": section("rep")}), FakePlugin(wrong))

    err = await no_route(router)
    assert err.hint == advice
    assert [r.hint for r in err.rejections if r.reason.startswith("failed")] == [advice]

    fallback = FakeProvider("spare")
    wrong.errors = [AuthenticationFailed("HTTP 401 Unauthenticated", provider="rep", hint=advice)]
    providers = {"rep": section("rep", "0.01"), "spare": section("spare", "0.02")}
    router = router_factory(settings_factory(providers), FakePlugin(wrong, fallback))
    with caplog.at_level("WARNING", logger="genroute"):
        result = await router.arun(image("another"))
    assert result.provider == "spare"
    assert any(advice in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


async def test_a_provider_whose_catalogue_lacks_the_task_makes_no_offer_rather_than_wanting_a_token(
    settings_factory, router_factory
):
    # Its token would not make it serve this task: asking for the token would send the user the wrong way.
    images_only = FakeProvider("hug", unavailable="HUG_TOKEN is not set")
    other = FakeProvider("rep", unavailable="REP_API_TOKEN is not set")
    providers = {"hug": section("hug", task="text-to-speech"), "rep": section("rep")}
    router = router_factory(settings_factory(providers), FakePlugin(images_only, other))

    err = await no_route(router)

    reasons = {r.provider: r.reason for r in err.rejections}
    assert reasons["hug"] == "makes no offer for text-to-image"
    assert err.hint == "set REP_API_TOKEN in the environment, or use another profile"


async def test_a_misspelt_pin_says_no_plugin_registers_it_even_when_tokens_are_missing(
    settings_factory, router_factory
):
    rep = FakeProvider("rep", unavailable="REP_API_TOKEN is not set")
    router = router_factory(settings_factory({"rep": section("rep")}), FakePlugin(rep))

    err = await no_route(router, image(provider="repp"))

    assert err.pinned == "repp"
    assert err.hint.startswith("no installed plugin registers 'repp'")


# ---------------------------------------------------------------------------------------------- deadline


async def test_a_deadline_at_the_fast_tier_never_asks_for_a_faster_one(settings_factory, router_factory):
    slow = FakeProvider("slow", sleep=5)
    router = router_factory(settings_factory({"slow": section("slow")}), FakePlugin(slow))

    with pytest.raises(DeadlineExceeded) as info:
        await router.arun(image(tier="fast", deadline_seconds=0.1))

    assert info.value.hint == "raise deadline_seconds (or routing.deadline_seconds in plugins.toml)"
    assert "faster" not in str(info.value)


async def test_a_deadline_names_the_faster_tier_only_when_an_offer_there_could_serve(settings_factory, router_factory):
    slow = FakeProvider("slow", sleep=5)
    router = router_factory(settings_factory({"slow": section("slow")}), FakePlugin(slow))

    with pytest.raises(DeadlineExceeded) as info:
        await router.arun(image(tier="balanced", deadline_seconds=0.1))
    assert info.value.hint == (
        "raise deadline_seconds (or routing.deadline_seconds in plugins.toml), "
        "or ask for the faster tier fast, where an offer could serve"
    )

    only_balanced = router_factory(settings_factory({"slow": section("slow", "0.02")}), FakePlugin(slow))
    with pytest.raises(DeadlineExceeded) as info:
        await only_balanced.arun(image(tier="balanced", deadline_seconds=0.1))
    assert "faster" not in str(info.value)


# -------------------------------------------------------------------------------------------------- pinned models


async def test_a_pinned_model_no_provider_offers_says_so_and_names_the_models_on_offer(
    settings_factory, router_factory
):
    a, b = FakeProvider("a"), FakeProvider("b")
    config = settings_factory({"a": section("a"), "b": section("b", {"fast": "0.005"})})
    router = router_factory(config, FakePlugin(a, b))

    err = await no_route(router, image(model="a/balancd"))

    assert err.hint == (
        "no provider offers the model 'a/balancd' (check its spelling); pin one of a/fast [fast], "
        "a/balanced [balanced], a/quality [quality] or b/fast [fast], or drop the pin"
    )
    assert not a.calls and not b.calls


async def test_a_stream_pinned_to_a_model_no_provider_offers_gets_the_same_hint(settings_factory, router_factory):
    a = FakeProvider("a", stream_pieces=["hi"])
    config = settings_factory({"a": section("a", {"fast": "0.001"}, task="text-generation", unit="request")})
    router = router_factory(config, FakePlugin(a))

    with pytest.raises(NoRouteAvailable) as info:
        [piece async for piece in router.astream(TextGeneration(prompt="hi", model="a/fats"))]

    assert info.value.hint == (
        "no provider offers the model 'a/fats' (check its spelling); pin one of a/fast [fast], or drop the pin"
    )


async def test_a_pinned_model_on_offer_but_over_budget_keeps_the_budget_hint(settings_factory, router_factory):
    a = FakeProvider("a")
    config = settings_factory({"a": section("a")}, limits=[{"scope": "global", "period": "total", "usd": "0.001"}])
    router = router_factory(config, FakePlugin(a))

    err = await no_route(router, image(model="a/balanced"))

    assert "no provider offers" not in err.hint and "raise the total limit" in err.hint


def test_a_long_list_of_models_on_offer_is_cut_short() -> None:
    rejections = [Rejection("p", f"p/m{i}", "fast", "not the pinned model 'p/x'") for i in range(13)]
    hint = route_hint(rejections)
    assert hint is not None and hint.endswith("p/m8 [fast], p/m9 [fast] or 3 more, or drop the pin")
