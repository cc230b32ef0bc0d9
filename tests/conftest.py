"""Shared fixtures: settings and routers built from small dicts, and scripted fake providers.

Router tests use ``settings_factory`` (a :class:`genroute.config.Settings` from a small dict whose ledger
and store live under ``tmp_path``), ``router_factory`` (a :class:`genroute.Router` over a fresh plugin
manager, closed at teardown), ``fake_provider`` (a provider scripted to fail, sleep or succeed, counting
its calls) and ``fake_plugin`` (a plugin object registering fake providers and their catalogue offers).
"""

from __future__ import annotations

import asyncio
import io
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from genroute import hookimpl
from genroute.config import Settings, settings_from_dict
from genroute.plugins import make_plugin_manager
from genroute.provider import Provider, RunContext, catalogue_offers
from genroute.router import Router
from genroute.types import Offer, OutputFile, ProviderOutput, RequestModel, TextGeneration

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tiny waits so retry and fallback tests run in milliseconds; cooldowns off unless a test asks.
FAST_ROUTING: dict[str, Any] = {
    "max_attempts": 3,
    "backoff_initial_seconds": 0.001,
    "backoff_max_seconds": 0.002,
    "deadline_seconds": 10,
    "cooldown_after_failures": 50,
    "cooldown_seconds": 0.2,
}

DEFAULT_PRICES: dict[str, str] = {"fast": "0.01", "balanced": "0.02", "quality": "0.04"}


def catalogue(
    provider: str,
    prices: Mapping[str, str] | str | None = None,
    *,
    task: str = "text-to-image",
    unit: str = "output",
) -> dict[str, Any]:
    """A ``[providers.<name>.models]`` table for one task: model ``<provider>/<tier>`` at the given prices.

    ``prices`` is a price per tier, or one price string for the ``balanced`` tier only.
    """
    if prices is None:
        prices = DEFAULT_PRICES
    elif isinstance(prices, str):
        prices = {"balanced": prices}
    return {
        task: {
            tier: {"model": f"{provider}/{tier}", "unit": unit, "price": str(price)} for tier, price in prices.items()
        }
    }


def section(
    provider: str,
    prices: Mapping[str, str] | str | None = None,
    *,
    task: str = "text-to-image",
    unit: str = "output",
    **extra: Any,
) -> dict[str, Any]:
    """A whole ``[providers.<name>]`` section with a one-task catalogue (``extra``: enabled, priority, …)."""
    return {"models": catalogue(provider, prices, task=task, unit=unit), **extra}


def mock_section(**options: Any) -> dict[str, Any]:
    """The built-in mock's section from the repository's ``plugins.toml`` (real catalogue and prices)."""
    raw = tomllib.loads((REPO_ROOT / "plugins.toml").read_text(encoding="utf-8"))
    mock = dict(raw["providers"]["mock"])
    mock["options"] = {**mock.get("options", {}), **options}
    return mock


def tiny_png(width: int = 64, height: int = 64, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Call:
    """One call a fake provider saw."""

    at: float  # time.monotonic() when the call started
    attempt: int
    model: str
    request: RequestModel


class FakeProvider(Provider):
    """A provider scripted per call: raise the next scripted error, else sleep, else succeed.

    ``errors`` are raised one per call, in order (a class is instantiated with this provider's name);
    once they run out every call sleeps ``sleep`` seconds (a number, or a function of the request) and
    succeeds with ``output(request)`` (default: text for text-generation, a small PNG otherwise).
    ``stream_pieces`` makes :meth:`stream` yield those pieces (sleeping ``sleep`` before each, after
    raising the next scripted error if any); ``stream_error_after=(n, error)`` raises ``error`` after
    ``n`` pieces. ``calls``, ``stream_calls``, ``max_active`` (most simultaneous runs) and ``cancelled``
    (runs that saw CancelledError) let tests see what the router did.
    """

    options_model = None

    def __init__(
        self,
        name: str,
        *,
        errors: Iterable[BaseException | type[BaseException]] = (),
        sleep: float | Callable[[RequestModel], float] = 0.0,
        output: Callable[[RequestModel], ProviderOutput] | None = None,
        stream_pieces: list[str] | None = None,
        stream_error_after: tuple[int, BaseException] | None = None,
        unavailable: str | None = None,
    ) -> None:
        self.name = name  # type: ignore[misc]
        self.errors = list(errors)
        self.sleep = sleep
        self.output = output
        self.stream_pieces = stream_pieces
        self.stream_error_after = stream_error_after
        self.unavailable = unavailable
        self.calls: list[Call] = []
        self.stream_calls = 0
        self.active = 0
        self.max_active = 0
        self.cancelled = 0
        self.closed = False

    def unavailable_reason(self, settings: Settings) -> str | None:
        return self.unavailable

    def _next_error(self) -> BaseException | None:
        if not self.errors:
            return None
        error = self.errors.pop(0)
        if isinstance(error, type):
            return error(f"scripted {error.__name__}", provider=self.name)  # type: ignore[call-arg]
        return error

    def default_output(self, request: RequestModel) -> ProviderOutput:
        if isinstance(request, TextGeneration):
            return ProviderOutput(text=f"{self.name} says: {request.prompt}")
        return ProviderOutput(files=[OutputFile(data=tiny_png(), media_type="image/png")])

    async def run(self, request: RequestModel, offer: Offer, ctx: RunContext) -> ProviderOutput:
        self.calls.append(Call(time.monotonic(), ctx.attempt, offer.model, request))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            error = self._next_error()
            if error is not None:
                raise error
            delay = self.sleep(request) if callable(self.sleep) else self.sleep
            if delay:
                await asyncio.sleep(delay)
            return (self.output or self.default_output)(request)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1

    async def stream(self, request: RequestModel, offer: Offer, ctx: RunContext) -> AsyncIterator[str]:
        if self.stream_pieces is None:
            async for piece in super().stream(request, offer, ctx):
                yield piece
            return
        self.stream_calls += 1
        self.calls.append(Call(time.monotonic(), ctx.attempt, offer.model, request))
        error = self._next_error()
        if error is not None:
            raise error
        for i, piece in enumerate(self.stream_pieces):
            if self.stream_error_after is not None and i == self.stream_error_after[0]:
                raise self.stream_error_after[1]
            delay = self.sleep(request) if callable(self.sleep) else self.sleep
            await asyncio.sleep(delay)
            yield piece

    async def aclose(self) -> None:
        self.closed = True


class FakePlugin:
    """A plugin object: registers its providers and offers their ``[providers.<name>.models]`` catalogue."""

    def __init__(self, *providers: Provider, extra_offers: Callable[[RequestModel], list[Offer]] | None = None):
        self.providers = providers
        self.extra_offers = extra_offers

    @hookimpl
    def genroute_register_providers(self, register: Callable[[Provider], None]) -> None:
        for provider in self.providers:
            register(provider)

    @hookimpl
    def genroute_offers(self, request: RequestModel, settings: Settings) -> list[Offer]:
        offers = [offer for p in self.providers for offer in catalogue_offers(p.name, request, settings)]
        if self.extra_offers is not None:
            offers.extend(self.extra_offers(request))
        return offers


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    """``settings_factory(providers={name: section}, profiles=…, limits=[…], routing={…}, profile=…, **top)``.

    Without ``profiles`` there is one profile, ``test``, listing every provider in the order given.
    Ledger and store live under ``tmp_path``; routing waits are tiny (see ``FAST_ROUTING``).
    """

    def build(
        providers: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        profiles: Mapping[str, list[str] | Mapping[str, Any]] | None = None,
        limits: list[Mapping[str, Any]] | None = None,
        routing: Mapping[str, Any] | None = None,
        profile: str | None = None,
        store: Mapping[str, Any] | None = None,
        **top: Any,
    ) -> Settings:
        providers = dict(providers or {"fake": section("fake")})
        if profiles is None:
            profiles = {"test": list(providers)}
        raw: dict[str, Any] = {
            "default_profile": profile or next(iter(profiles)),
            "profiles": {
                name: ({"providers": list(value)} if isinstance(value, list) else dict(value))
                for name, value in profiles.items()
            },
            "providers": {name: dict(value) for name, value in providers.items()},
            "budget": {"limits": list(limits or [])},
            "ledger": {"path": str(tmp_path / "ledger")},
            "store": {"path": str(tmp_path / "store"), **(store or {})},
            "jobs": {"path": str(tmp_path / "jobs")},
            "routing": {**FAST_ROUTING, **(routing or {})},
            **top,
        }
        return settings_from_dict(raw, env={})

    return build


@pytest.fixture
def router_factory() -> Iterator[Callable[..., Router]]:
    """``router_factory(settings, *plugins, entry_points=False)``: a Router closed at teardown."""
    routers: list[Router] = []

    def build(settings: Settings, *plugins: object, entry_points: bool = False) -> Router:
        pm = make_plugin_manager(entry_points=entry_points, plugins=plugins)
        router = Router(settings, plugin_manager=pm)
        routers.append(router)
        return router

    yield build
    for router in routers:
        router.close()


@pytest.fixture
def fake_provider() -> Callable[..., FakeProvider]:
    """``fake_provider(name, errors=[…], sleep=…, output=…)``: see :class:`FakeProvider`."""
    return FakeProvider


@pytest.fixture
def fake_plugin() -> Callable[..., FakePlugin]:
    """``fake_plugin(*providers, extra_offers=None)``: see :class:`FakePlugin`."""
    return FakePlugin
