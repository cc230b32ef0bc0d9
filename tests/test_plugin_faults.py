"""A plugin's or provider's mistake is contained: it names the plugin, costs nothing it should not, and the other
providers still serve.

A ``genroute_offers`` that raises or answers something other than a list of Offers; an ``unavailable_reason``
that raises or answers a non-str; a ``genroute_choose`` that raises, answers nonsense, copies, duplicates or
drops offers; a ``genroute_budget_limits`` answering the wrong thing; output bytes that are not what the call
promised; a plugin registered in code that pluggy refuses; and a bug in one request of a batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import io
import logging
import warnings
import wave
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, field_validator

from conftest import FakePlugin, FakeProvider, section, tiny_png
from genroute import hookimpl
from genroute.config import BudgetLimit
from genroute.errors import GenrouteError, ModelFailed, NoRouteAvailable, PluginError
from genroute.keys import request_key
from genroute.plugins import make_plugin_manager
from genroute.router import UnexpectedError
from genroute.types import (
    Offer,
    OutputFile,
    ProviderOutput,
    RequestModel,
    Result,
    TextGeneration,
    TextToImage,
    TextToSpeech,
    TextToVideo,
)

D = Decimal
HERE = __name__


def image(prompt: str = "a lighthouse at dusk", **fields: Any) -> TextToImage:
    return TextToImage(prompt=prompt, **fields)


def two_providers(settings_factory: Any, router_factory: Any, *plugins: object, a: Any = None, b: Any = None) -> Any:
    """A router over ``a`` ($0.01, tried first) and ``b`` ($0.02), plus ``plugins``; ``router.a``/``router.b``."""
    a = a or FakeProvider("a")
    b = b or FakeProvider("b")
    router = router_factory(
        settings_factory({"a": section("a", "0.01"), "b": section("b", "0.02")}), FakePlugin(a, b), *plugins
    )
    router.a, router.b = a, b
    return router


def entries(router: Any) -> list[tuple[str, str, Decimal | None]]:
    return [(e.provider, e.status, e.actual) for e in router.ledger.entries()]


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "genroute.router"]


# ------------------------------------------------------------------------------------------- genroute_offers


class OffersLab:
    """A plugin bringing provider ``lab`` ($0.001, cheapest) whose ``genroute_offers`` answers ``answer(offers)``."""

    def __init__(self, answer: Callable[[list[Offer]], Any]) -> None:
        self.provider = FakeProvider("lab")
        self.answer = answer

    @hookimpl
    def genroute_register_providers(self, register: Any) -> None:
        register(self.provider)

    @hookimpl
    def genroute_offers(self, request: RequestModel, settings: Any) -> Any:
        from genroute.provider import catalogue_offers

        return self.answer(catalogue_offers("lab", request, settings))


class AsyncOffers:
    @hookimpl
    async def genroute_offers(self, request: RequestModel, settings: Any) -> list[Offer]:  # wrongly async
        return []


def _raise_key_error(offers: list[Offer]) -> Any:
    return {}["missing"]


BAD_OFFERS = {
    "raises": (_raise_key_error, "failed in genroute_offers: KeyError: 'missing'"),
    "one offer": (lambda offers: offers[0], "genroute_offers returned Offer, not a list of Offers"),
    "a dict": (lambda offers: {"lab": offers}, "genroute_offers returned dict, not a list of Offers"),
    "a str": (lambda offers: "lab/balanced", "genroute_offers returned str, not a list of Offers"),
    "an int": (lambda offers: 3, "genroute_offers returned int, not a list of Offers"),
    "a list of dicts": (
        lambda offers: [o.model_dump() for o in offers],
        "genroute_offers returned a list holding dict, not only Offers",
    ),
}


@pytest.mark.parametrize("answer, what", BAD_OFFERS.values(), ids=BAD_OFFERS.keys())
async def test_a_plugin_whose_offers_fail_is_skipped_named_and_the_others_serve(
    answer, what, settings_factory, router_factory, caplog
):
    lab = OffersLab(answer)
    sections = {"lab": section("lab", "0.001"), "a": section("a", "0.01")}
    router = router_factory(settings_factory(sections), lab, FakePlugin(FakeProvider("a")))

    with caplog.at_level(logging.WARNING, logger="genroute.router"):
        first = await router.arun(image(prompt="one"))
        second = await router.arun(image(prompt="two"))
        plan = await router.aplan(image(prompt="three"))

    assert (first.provider, second.provider) == ("a", "a")
    assert not lab.provider.calls
    assert router.ledger.open_reservations() == []
    reason = f"plugin {HERE}.OffersLab {what}; fix the plugin, or uninstall it"
    assert [(r.provider, r.reason) for r in plan.rejections if r.provider == "lab"] == [("lab", reason)]
    assert logged(caplog) == [f"{reason} (its offers are skipped)"]  # once per plugin, not once per request


async def test_an_async_def_genroute_offers_is_named_and_its_coroutine_closed(settings_factory, router_factory):
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(FakeProvider("a")), AsyncOffers())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = await router.arun(image())
        plan = await router.aplan(image(prompt="plan"))
        gc.collect()

    assert result.provider == "a"
    [line] = [r for r in plan.rejections if "AsyncOffers" in r.reason]
    assert line.reason == (
        f"plugin {HERE}.AsyncOffers genroute_offers is an async def (it returned a coroutine); make it a plain def "
        "returning a list of Offers; fix the plugin, or uninstall it"
    )
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_with_only_the_failing_plugin_the_error_names_it(settings_factory, router_factory):
    lab = OffersLab(_raise_key_error)
    router = router_factory(settings_factory({"lab": section("lab", "0.001")}), lab)

    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(image())

    message = str(info.value)
    assert f"lab · - [balanced]: plugin {HERE}.OffersLab failed in genroute_offers: KeyError: 'missing'" in message
    assert "makes no offer" not in message  # its line says what happened instead
    assert router.ledger.open_reservations() == []


async def test_a_failing_offers_plugin_does_not_break_a_batch(settings_factory, router_factory):
    lab = OffersLab(lambda offers: offers[0])
    sections = {"lab": section("lab", "0.001"), "a": section("a", "0.01")}
    router = router_factory(settings_factory(sections), lab, FakePlugin(FakeProvider("a")))

    outcomes = await router.abatch([image(prompt=f"p{i}") for i in range(5)], concurrency=3)

    assert [o.provider for o in outcomes if isinstance(o, Result)] == ["a"] * 5
    assert router.ledger.open_reservations() == []


async def test_an_unexpected_exception_fails_only_its_own_request_of_a_batch(
    settings_factory, router_factory, monkeypatch
):
    """A bug (not a genroute error) while serving one request is that request's error; the requests in flight
    beside it are not cancelled (their work is paid for) and nothing stays reserved."""
    slow = FakeProvider("a", sleep=0.05, output=lambda r: ProviderOutput(text=f"ok {r.prompt}"))  # type: ignore[attr-defined]
    router = router_factory(
        settings_factory({"a": section("a", "0.01", task="text-generation", unit="request")}), FakePlugin(slow)
    )
    real_arun = router.arun

    async def buggy_arun(request: Any) -> Result:
        if request["prompt"] == "bug":
            await asyncio.sleep(0.01)  # while the others are in flight
            raise KeyError("bug")
        return await real_arun(request)

    monkeypatch.setattr(router, "arun", buggy_arun)
    requests = [{"task": "text-generation", "prompt": p} for p in ("p0", "bug", "p2", "p3")]

    outcomes = await router.abatch(requests, concurrency=4)

    assert [o.text if isinstance(o, Result) else None for o in outcomes] == ["ok p0", None, "ok p2", "ok p3"]
    error = outcomes[1]
    assert isinstance(error, UnexpectedError) and isinstance(error, GenrouteError)
    assert error.message == "request 1 of the batch failed unexpectedly: KeyError: 'bug'"
    assert isinstance(error.__cause__, KeyError)
    assert slow.cancelled == 0 and len(slow.calls) == 3
    assert router.ledger.open_reservations() == []


# ----------------------------------------------------------------------------------------- unavailable_reason


class RaisingAvailability(FakeProvider):
    def unavailable_reason(self, settings: Any) -> str | None:
        raise RuntimeError("cannot read token file")


class NumberAvailability(FakeProvider):
    def unavailable_reason(self, settings: Any) -> Any:
        return 42


@pytest.mark.parametrize(
    "provider, why",
    [
        (RaisingAvailability("a"), "unavailable_reason raised RuntimeError: cannot read token file"),
        (NumberAvailability("a"), "unavailable_reason returned int 42, not a str or None"),
    ],
    ids=["raises", "returns 42"],
)
async def test_a_broken_unavailable_reason_makes_its_provider_unavailable_naming_the_plugin(
    provider, why, settings_factory, router_factory, caplog
):
    router = two_providers(settings_factory, router_factory, a=provider)

    with caplog.at_level(logging.WARNING, logger="genroute.router"):
        result = await router.arun(image())
        plan = await router.aplan(image(prompt="plan"))

    assert result.provider == "b" and not provider.calls
    expected = f"{why} (plugin conftest.FakePlugin); fix the plugin"
    assert router.unavailable_reason("a") == expected  # what `genroute providers` shows, without raising
    assert router.unavailable_reason("b") is None
    assert {r.reason for r in plan.rejections if r.provider == "a"} == {f"unavailable: {expected}"}
    assert logged(caplog) == [f"provider a: {expected}; it counts as unavailable"]
    assert router.ledger.open_reservations() == []


async def test_a_broken_unavailable_reason_of_a_provider_making_no_offer_is_said_too(settings_factory, router_factory):
    silent = RaisingAvailability("silent")
    config = settings_factory({"silent": {}, "a": section("a")})  # no catalogue: no offer
    router = router_factory(config, FakePlugin(silent, FakeProvider("a")))

    plan = await router.aplan(image())

    reasons = {r.reason for r in plan.rejections if r.provider == "silent"}
    assert reasons == {
        "unavailable: unavailable_reason raised RuntimeError: cannot read token file (plugin conftest.FakePlugin); "
        "fix the plugin"
    }


# -------------------------------------------------------------------------------------------- genroute_choose


class Chooser:
    """A policy plugin whose ``genroute_choose`` answers ``answer(offers)``."""

    def __init__(self, answer: Callable[[list[Offer]], Any]) -> None:
        self.answer = answer

    @hookimpl
    def genroute_choose(self, request: RequestModel, offers: list[Offer]) -> Any:
        return self.answer(offers)


@pytest.mark.parametrize(
    "answer, what",
    [
        (lambda offers: 1 / 0, " failed in genroute_choose: ZeroDivisionError: division by zero; "),
        (lambda offers: 3, ": genroute_choose returned int, not a list of the offers it was given; "),
        (lambda offers: "b", ": genroute_choose returned str, not a list of the offers it was given; "),
        (lambda offers: ["b/balanced"], ": genroute_choose returned a list holding str, not only Offers; "),
    ],
    ids=["raises", "int", "str", "list of str"],
)
async def test_a_broken_chooser_is_named_and_the_routers_own_order_used(
    answer, what, settings_factory, router_factory, caplog
):
    router = two_providers(settings_factory, router_factory, Chooser(answer))

    with caplog.at_level(logging.WARNING, logger="genroute.router"):
        result = await router.arun(image())
        plan = await router.aplan(image(prompt="plan"))

    assert result.provider == "a" and not router.b.calls
    assert [o.provider for o in plan.candidates] == ["a", "b"]
    assert logged(caplog) == [
        f"plugin {HERE}.Chooser{what}its answer is ignored (as if it returned None); fix the plugin, or uninstall it"
    ]
    assert router.ledger.open_reservations() == []


async def test_a_chooser_answering_equal_copies_is_followed(settings_factory, router_factory, caplog):
    """Offers are frozen values: a copy of an offer stands for it."""
    chooser = Chooser(lambda offers: [o.model_copy() for o in reversed(offers)])
    router = two_providers(settings_factory, router_factory, chooser)

    with caplog.at_level(logging.WARNING, logger="genroute.router"):
        result = await router.arun(image())

    assert result.provider == "b" and not router.a.calls
    assert logged(caplog) == []


async def test_an_offer_a_chooser_names_twice_is_tried_once(settings_factory, router_factory):
    failing = FakeProvider("a", errors=[ModelFailed] * 5)
    router = two_providers(settings_factory, router_factory, Chooser(lambda offers: offers * 3), a=failing)

    plan = await router.aplan(image(prompt="plan"))
    result = await router.arun(image())

    assert [o.provider for o in plan.candidates] == ["a", "b"]
    assert result.provider == "b"
    assert len(failing.calls) == 1  # ModelFailed is not retried; a duplicate would call it again
    assert entries(router) == [("a", "released", D(0)), ("b", "settled", D("0.02"))]
    assert router.ledger.open_reservations() == []


async def test_offers_a_chooser_leaves_out_are_listed_as_dropped(settings_factory, router_factory):
    router = two_providers(settings_factory, router_factory, Chooser(lambda offers: offers[1:]))

    plan = await router.aplan(image())
    result = await router.arun(image())

    assert [o.provider for o in plan.candidates] == ["b"] and result.provider == "b"
    dropped = [(r.provider, r.reason) for r in plan.rejections if r.reason.startswith("dropped")]
    assert dropped == [("a", f"dropped by genroute_choose (plugin {HERE}.Chooser)")]


async def test_a_chooser_dropping_every_offer_ends_in_no_route_that_says_so(settings_factory, router_factory):
    config = settings_factory({"a": section("a", {"fast": "0.01", "balanced": "0.02"})})
    a = FakeProvider("a")
    router = router_factory(config, FakePlugin(a), Chooser(lambda offers: []))

    plan = await router.aplan(image(tier="fast"))
    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(image(tier="fast"))

    assert plan.candidates == []
    assert ("a", "a/fast", f"dropped by genroute_choose (plugin {HERE}.Chooser)") in {
        (r.provider, r.model, r.reason) for r in plan.rejections
    }
    assert f"a · a/fast [fast]: dropped by genroute_choose (plugin {HERE}.Chooser)" in info.value.message
    assert info.value.hint == (
        f"the genroute_choose of plugin {HERE}.Chooser left out the offers that could serve: change its policy, "
        "or uninstall it"
    )
    assert "ask for tier" not in str(info.value)  # the other tier's offer would be dropped too
    assert not a.calls and router.ledger.open_reservations() == []


# ------------------------------------------------------------------------------------- genroute_budget_limits


class Limits:
    def __init__(self, answer: Callable[[], Any]) -> None:
        self.answer = answer

    @hookimpl
    def genroute_budget_limits(self, settings: Any) -> Any:
        return self.answer()


@pytest.mark.parametrize(
    "answer, message",
    [
        (
            lambda: BudgetLimit(scope="global", period="total", usd=D(1)),
            f"plugin {HERE}.Limits: genroute_budget_limits returned one BudgetLimit, not a list",
        ),
        (lambda: 3, f"plugin {HERE}.Limits: genroute_budget_limits returned int, not a list"),
        (
            lambda: 1 / 0,
            f"plugin {HERE}.Limits failed in genroute_budget_limits: ZeroDivisionError: division by zero",
        ),
    ],
    ids=["one limit", "int", "raises"],
)
def test_a_bad_budget_limits_answer_stops_the_router_with_a_plugin_error(
    answer, message, settings_factory, router_factory
):
    with pytest.raises(PluginError) as info:
        router_factory(settings_factory({"a": section("a")}), FakePlugin(FakeProvider("a")), Limits(answer))

    assert info.value.message == message
    assert "fix the plugin, or uninstall it" in info.value.hint
    assert info.value.exit_code == 11


# --------------------------------------------------------------------------------------------- output checks


def wav(seconds: float = 0.1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * int(8000 * seconds))
    return buf.getvalue()


@pytest.mark.parametrize(
    "task, files, problem",
    [
        ("text-to-video", [("image/png", tiny_png)], "is image/png, not a video (or an animated GIF)"),
        ("image-to-video", [("audio/wav", wav)], "is audio/wav, not a video (or an animated GIF)"),
        ("text-to-speech", [("image/png", tiny_png)], "is image/png, not audio as a text-to-speech request makes"),
        ("upscale", [("image/png", tiny_png), ("audio/wav", wav)], "output file 2 of 2 is audio/wav, not an image"),
        ("text-generation", [("image/png", tiny_png)], "answered a text-generation request with 1 file(s)"),
        ("speech-to-text", [("audio/wav", wav)], "answered a speech-to-text request with 1 file(s)"),
        ("inpaint", [("application/octet-stream", wav)], "output file 1 of 1 is audio/wav, not an image"),
    ],
)
def test_a_file_of_the_wrong_media_family_for_the_task_is_a_problem(task, files, problem):
    from genroute.router import _output_problem

    output = ProviderOutput(text="words", files=[OutputFile(data=make(), media_type=kind) for kind, make in files])

    assert problem in (_output_problem(task, output) or "")


@pytest.mark.parametrize(
    "task, kind, make",
    [
        ("text-to-video", "image/gif", lambda: b"GIF89a" + b"\0" * 20),
        ("text-to-speech", "audio/wav", wav),
        ("inpaint", "image/png", tiny_png),
    ],
)
def test_a_file_of_the_tasks_media_family_passes(task, kind, make):
    from genroute.router import _output_problem

    assert _output_problem(task, ProviderOutput(files=[OutputFile(data=make(), media_type=kind)])) is None


def html_as_png(request: RequestModel) -> ProviderOutput:
    return ProviderOutput(files=[OutputFile(data=b"<html>502 Bad Gateway</html>", media_type="image/png")])


@pytest.mark.parametrize(
    "output, problem",
    [
        (
            html_as_png,
            "a: output file 1 of 1 is declared image/png, but its bytes are not a known media type (28 bytes, "
            "starting b'<html>502 Bad Gateway</html>')",
        ),
        (
            lambda r: ProviderOutput(files=[OutputFile(data=tiny_png(), media_type="image/jpeg")]),
            "a: output file 1 of 1 is declared image/jpeg, but its bytes are image/png",
        ),
        (lambda r: ProviderOutput(), "a: answered a text-to-image request without a file"),
        (
            lambda r: ProviderOutput(files=[OutputFile(data=wav(), media_type="audio/wav")]),
            "a: output file 1 of 1 is audio/wav, not an image as a text-to-image request makes",
        ),
    ],
    ids=["html as png", "png as jpeg", "no file", "valid wav"],
)
async def test_output_that_is_not_what_the_task_asked_for_is_refused_settled_and_not_stored(
    output, problem, settings_factory, router_factory
):
    router = two_providers(settings_factory, router_factory, a=FakeProvider("a", output=output))

    result = await router.arun(image())
    again = await router.arun(image())

    assert result.provider == "b" and not result.cached
    assert again.provider == "b" and again.cached  # b's result was stored, a's never
    assert len(router.a.calls) == 1  # not retried: a second call would be billed too
    # the provider ran and may have billed: a's call is settled (at its price), then b serves
    assert entries(router)[:2] == [("a", "settled", D("0.01")), ("b", "settled", D("0.02"))]
    assert router.ledger.open_reservations() == []
    [note] = [e.note for e in router.ledger.entries() if e.provider == "a"]  # why the money went
    assert problem in note


async def test_refused_output_of_the_only_offer_is_named_in_the_error(settings_factory, router_factory):
    router = router_factory(settings_factory({"a": section("a")}), FakePlugin(FakeProvider("a", output=html_as_png)))

    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(image())

    assert "a · a/balanced [balanced]: failed after 1 attempt(s): a: output file 1 of 1 is declared image/png" in (
        info.value.message
    )
    assert router.store is not None and router.store.get(request_key(image())) is None
    assert router.ledger.open_reservations() == []


@pytest.mark.parametrize("text", [None, "", "  \n"], ids=["none", "empty", "blank"])
async def test_a_text_generation_answer_without_text_falls_back(text, settings_factory, router_factory):
    sections = {
        "a": section("a", "0.01", task="text-generation", unit="request"),
        "b": section("b", "0.02", task="text-generation", unit="request"),
    }
    a = FakeProvider("a", output=lambda r: ProviderOutput(text=text))
    router = router_factory(settings_factory(sections), FakePlugin(a, FakeProvider("b")))

    result = await router.arun(TextGeneration(prompt="hi"))

    assert (result.provider, result.text) == ("b", "b says: hi")
    assert [(e.provider, e.status) for e in router.ledger.entries()] == [("a", "settled"), ("b", "settled")]
    assert router.ledger.open_reservations() == []


@pytest.mark.parametrize(
    "data, media_type, task",
    [
        (tiny_png(), "image/png", "text-to-image"),
        (tiny_png(), "IMAGE/PNG; name=x", "text-to-image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "image/jpg", "text-to-image"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40, "audio/x-wav", "text-to-speech"),
        (b"\x00\x00\x00\x18ftypisom" + b"\x00" * 40, "video/mp4", "text-to-video"),
        (b"\x00\x00\x00\x18ftypM4A " + b"\x00" * 40, "audio/mp4", "text-to-speech"),
        (b"anything at all", "video/quicktime", "text-to-video"),  # a type the sniffer does not know is not checked
        (b"anything at all", "application/octet-stream", "text-to-image"),
        (tiny_png(), "application/octet-stream", "text-to-image"),
    ],
)
async def test_output_of_its_declared_type_is_accepted(data, media_type, task, settings_factory, router_factory):
    a = FakeProvider("a", output=lambda r: ProviderOutput(files=[OutputFile(data=data, media_type=media_type)]))
    router = router_factory(settings_factory({"a": section("a", task=task)}), FakePlugin(a))
    request = {
        "text-to-image": image(),
        "text-to-speech": TextToSpeech(text="hi"),
        "text-to-video": TextToVideo(prompt="a fox"),
    }

    result = await router.arun(request[task])

    assert result.provider == "a" and [e.status for e in router.ledger.entries()] == ["settled"]


# ------------------------------------------------------------------------------------ plugins registered in code


class BadSignature:
    @hookimpl
    def genroute_offers(self, request: RequestModel, settings: Any, budget: Any) -> list[Offer]:
        return []


def test_a_plugin_registered_in_code_with_a_bad_hook_signature_is_named_by_its_class():
    with pytest.raises(PluginError) as info:
        make_plugin_manager(entry_points=False, plugins=[BadSignature()])

    message = info.value.message
    assert message.startswith(f"plugin {HERE}.BadSignature has a bad hook implementation for hook 'genroute_offers'")
    assert "budget" in message
    assert str(id(info.value.__cause__.plugin)) not in message  # type: ignore[union-attr]
    assert "genroute.hookspecs" in info.value.hint


def test_registering_in_code_a_plugin_entry_points_load_already_says_so():
    import genroute_mock.plugin

    with pytest.raises(PluginError) as info:
        make_plugin_manager(entry_points=True, plugins=[genroute_mock.plugin])

    assert info.value.message.startswith("plugin genroute_mock.plugin (genroute ")
    assert info.value.message.endswith("is registered twice: its entry point 'mock' loads it too")
    assert "entry_points=False" in info.value.hint


def test_registering_one_plugin_object_twice_names_it():
    twice = FakePlugin(FakeProvider("a"))

    with pytest.raises(PluginError) as info:
        make_plugin_manager(entry_points=False, plugins=[twice, twice])

    assert info.value.message == "plugin conftest.FakePlugin is registered twice: it is given twice"


# ------------------------------------------------------------------------------- offers that skipped validation


def _updated(**update: Any) -> Callable[[list[Offer]], list[Offer]]:
    return lambda offers: [o.model_copy(update=update) for o in offers]


BAD_OFFER_FIELDS = {
    "negative estimate": (_updated(estimate=D("-1")), "with estimate Decimal('-1'), not a finite Decimal"),
    "NaN estimate": (_updated(estimate=D("NaN")), "with estimate Decimal('NaN'), not a finite Decimal"),
    "infinite estimate": (_updated(estimate=D("Infinity")), "with estimate Decimal('Infinity'), not a finite"),
    "str estimate": (_updated(estimate="0.001"), "with estimate '0.001', not a finite Decimal"),
    "str priority": (_updated(priority="1"), "with priority '1', not an int"),
    "unknown tier": (_updated(tier="turbo"), "at tier 'turbo', not one of fast, balanced, quality"),
    "int model": (_updated(model=3), "with model 3, not a str"),
    "constructed": (
        lambda offers: [Offer.model_construct(**{**dict(o), "estimate": D(-5)}) for o in offers],
        "with estimate Decimal('-5'), not a finite Decimal",
    ),
    "another's name": (
        _updated(provider="a"),
        "in the name of provider 'a', which it does not register (it registers lab)",
    ),
}


@pytest.mark.parametrize("answer, what", BAD_OFFER_FIELDS.values(), ids=BAD_OFFER_FIELDS.keys())
async def test_an_offer_that_skipped_validation_is_dropped_naming_the_plugin(
    answer, what, settings_factory, router_factory, caplog
):
    lab = OffersLab(answer)
    sections = {"lab": section("lab", "0.001"), "a": section("a", "0.01")}
    router = router_factory(settings_factory(sections), lab, FakePlugin(FakeProvider("a")))

    with caplog.at_level(logging.WARNING, logger="genroute.router"):
        result = await router.arun(image(prompt="one"))
        plan = await router.aplan(image(prompt="two"))

    assert result.provider == "a"
    assert result.actual_cost == D("0.01")
    assert not lab.provider.calls
    assert [o.provider for o in plan.candidates] == ["a"]
    [line] = [r for r in plan.rejections if "OffersLab" in r.reason]
    assert line.reason.startswith(f"plugin {HERE}.OffersLab made an offer {what}")
    assert line.reason.endswith("; fix the plugin, or uninstall it")
    [warning] = logged(caplog)
    assert warning.startswith(f"plugin {HERE}.OffersLab made an offer {what}")


class PricesOnly:
    """A pricing plugin: registers no provider, offers its own price for provider ``a``."""

    @hookimpl
    def genroute_offers(self, request: RequestModel, settings: Any) -> list[Offer]:
        return [Offer(provider="a", model="a/deal", task="text-to-image", tier="balanced", estimate=D("0.005"))]


async def test_a_plugin_registering_no_provider_may_offer_for_another(settings_factory, router_factory):
    router = router_factory(settings_factory({"a": section("a", "0.01")}), FakePlugin(FakeProvider("a")), PricesOnly())

    result = await router.arun(image())

    assert (result.provider, result.model, result.actual_cost) == ("a", "a/deal", D("0.005"))


# ------------------------------------------------------------------------------------------------------- aclose


class RaisingClose(FakeProvider):
    async def aclose(self) -> None:
        raise RuntimeError("socket already gone")


class PlainClose(FakeProvider):
    def aclose(self) -> None:  # type: ignore[override]  # wrongly a plain def
        self.closed = True


class SlowClose(FakeProvider):
    async def aclose(self) -> None:
        await asyncio.sleep(60)


def test_a_faulty_aclose_is_contained_bounded_and_the_rest_still_closed(
    settings_factory, router_factory, caplog, monkeypatch
):
    import genroute.router as router_module

    monkeypatch.setattr(router_module, "ACLOSE_TIMEOUT_SECONDS", 0.2)
    providers = [RaisingClose("a"), PlainClose("b"), SlowClose("c"), FakeProvider("d")]
    config = settings_factory({p.name: section(p.name, f"0.0{i + 1}") for i, p in enumerate(providers)})
    router = router_factory(config, FakePlugin(*providers))

    async def use_the_http_client() -> Result:
        router._http_client()
        return await router.arun(image())

    result = router._sync().run(use_the_http_client())
    assert result.provider == "a"
    with caplog.at_level(logging.WARNING, logger="genroute.router"):
        router.close()  # does not raise, and does not wait 60 s

    assert providers[3].closed
    assert providers[1].closed
    assert router._http == {}
    plugin = "plugin conftest.FakePlugin"
    assert logged(caplog) == [
        f"provider a ({plugin}): aclose raised RuntimeError: socket already gone; fix the plugin",
        f"provider b ({plugin}): aclose returned NoneType, not an awaitable: make it an async def; fix the plugin",
        f"provider c ({plugin}): aclose took over 0.2s and was abandoned; fix the plugin",
    ]


# ------------------------------------------------------------------------------------------------ options_model


@dataclasses.dataclass
class DataclassOptions:
    colour: str = "red"


class RaisingOptions(BaseModel):
    colour: str = "red"

    @field_validator("colour")
    @classmethod
    def _boom(cls, value: str) -> str:
        raise RuntimeError("validator bug")


class DataclassOptionsProvider(FakeProvider):
    options_model = DataclassOptions  # type: ignore[assignment]


class RaisingOptionsProvider(FakeProvider):
    options_model = RaisingOptions  # type: ignore[assignment]


BAD_OPTIONS_MODELS = {
    "a dataclass": (
        DataclassOptionsProvider,
        "options_model is class DataclassOptions, not a pydantic BaseModel subclass (or None)",
    ),
    "a raising validator": (RaisingOptionsProvider, "RuntimeError: validator bug"),
}


@pytest.mark.parametrize("in_profile", [True, False], ids=["in profile", "outside the profile"])
@pytest.mark.parametrize("cls, what", BAD_OPTIONS_MODELS.values(), ids=BAD_OPTIONS_MODELS.keys())
async def test_a_faulty_options_model_makes_only_its_provider_unavailable_naming_the_plugin(
    cls, what, in_profile, settings_factory, router_factory, caplog
):
    broken = cls("lab")
    sections = {"lab": {**section("lab", "0.001"), "options": {"colour": "blue"}}, "a": section("a", "0.01")}
    profiles = {"p": ["lab", "a"] if in_profile else ["a"]}
    with caplog.at_level(logging.WARNING, logger="genroute.router"):
        router = router_factory(
            settings_factory(sections, profiles=profiles), FakePlugin(broken), FakePlugin(FakeProvider("a"))
        )
        result = await router.arun(image())
        plan = await router.aplan(image(prompt="plan"))

    assert result.provider == "a"
    assert not broken.calls
    why = f"its options could not be checked: {what} (plugin conftest.FakePlugin); fix the plugin"
    assert router.unavailable_reason("lab") == why
    shown = f"unavailable: {why}" if in_profile else "not in profile 'p'"  # the profile is checked first
    assert ("lab", shown) in {(r.provider, r.reason) for r in plan.rejections}
    assert logged(caplog) == [f"provider lab: {why}; it counts as unavailable"]


# ------------------------------------------------------------------------------------------ async def hooks


class AsyncHooks:
    """Every hook pluggy calls without awaiting, wrongly written as an ``async def``."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    @hookimpl
    async def genroute_register_providers(self, register: Any) -> None:
        self.ran.append("register")
        register(FakeProvider("ghost"))

    @hookimpl
    async def genroute_request_started(self, request: RequestModel, key: str) -> None:
        self.ran.append("started")

    @hookimpl
    async def genroute_request_finished(self, request: RequestModel, key: str, result: Any, error: Any) -> None:
        self.ran.append("finished")

    @hookimpl
    async def genroute_register_commands(self, subparsers: Any, common: Any) -> None:
        self.ran.append("commands")


def _async_says(hook: str) -> str:
    return (
        f"plugin {HERE}.AsyncHooks: {hook} is an async def (it returned a coroutine), so it did nothing; "
        "make it a plain def; fix the plugin, or uninstall it"
    )


async def test_async_def_register_and_observer_hooks_are_named_and_their_coroutines_closed(
    settings_factory, router_factory, caplog
):
    plugin = AsyncHooks()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        router = router_factory(settings_factory({"a": section("a")}), FakePlugin(FakeProvider("a")), plugin)
        first = await router.arun(image(prompt="one"))
        await router.arun(image(prompt="two"))
        gc.collect()

    assert first.provider == "a"
    assert "ghost" not in router.providers
    assert plugin.ran == []
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == [
        _async_says("genroute_register_providers"),
        _async_says("genroute_request_started"),
        _async_says("genroute_request_finished"),
    ]  # each once per router
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_an_async_def_genroute_register_commands_is_named_and_its_coroutine_closed(monkeypatch, caplog):
    import genroute.cli

    plugin = AsyncHooks()
    pm = make_plugin_manager(entry_points=False, plugins=[plugin])
    monkeypatch.setattr(genroute.cli, "default_plugin_manager", lambda: pm)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        genroute.cli._parser()
        gc.collect()

    assert _async_says("genroute_register_commands") in [r.getMessage() for r in caplog.records]
    assert not [w for w in caught if "never awaited" in str(w.message)]


# ----------------------------------------------------------------------- CancelledError and SystemExit from run


@pytest.mark.parametrize(
    "error, shown",
    [(asyncio.CancelledError("inner task gone"), "CancelledError"), (SystemExit(3), "SystemExit")],
    ids=["CancelledError", "SystemExit"],
)
async def test_a_provider_raising_cancelled_error_or_system_exit_is_a_failed_attempt(
    error, shown, settings_factory, router_factory, caplog
):
    router = two_providers(settings_factory, router_factory, a=FakeProvider("a", errors=[error]))

    with caplog.at_level(logging.WARNING, logger="genroute.router"):
        result = await router.arun(image())

    assert result.provider == "b"
    assert len(router.a.calls) == 1
    assert [(p, s) for p, s, _ in entries(router)] == [("a", "released"), ("b", "settled")]
    assert any(f"provider a run raised {shown}" in r.getMessage() for r in caplog.records)


async def test_real_cancellation_of_a_request_is_not_taken_for_a_provider_bug(settings_factory, router_factory):
    router = two_providers(settings_factory, router_factory, a=FakeProvider("a", sleep=30))

    task = asyncio.ensure_future(router.arun(image()))
    while not router.a.calls:
        await asyncio.sleep(0.01)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert router.a.cancelled == 1
    assert not router.b.calls
    assert router.ledger.open_reservations() == []


# ------------------------------------------------------------------------------- return-value faults are warned


@pytest.mark.parametrize(
    "output, what",
    [
        (lambda r: {"text": "hi"}, "run() returned dict, not ProviderOutput"),
        (lambda r: None, "run() returned NoneType, not ProviderOutput"),
        (html_as_png, "answered unfit output (output file 1 of 1 is declared image/png, but its bytes are not a"),
    ],
    ids=["a dict", "None", "html as png"],
)
async def test_a_wrong_return_value_is_warned_naming_the_plugin(output, what, settings_factory, router_factory, caplog):
    router = two_providers(settings_factory, router_factory, a=FakeProvider("a", output=output))

    with caplog.at_level(logging.WARNING, logger="genroute.router"):
        result = await router.arun(image())

    assert result.provider == "b"
    [warning] = logged(caplog)
    assert warning.startswith(f"provider a (plugin conftest.FakePlugin) {what}")
    assert warning.endswith("; fix the plugin (falling back)")
