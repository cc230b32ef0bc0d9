"""Shared set-up of the Hugging Face provider tests (tests/test_huggingface_*.py).

The provider runs the real ``huggingface_hub`` client against :class:`fakes.hf_server.FakeHF` on 127.0.0.1. Settings
come from the repository's ``plugins.toml`` (the real catalogue, prices and options) with ``base_url`` pointed at
the fake (or left out, for the client's own routing through ``fake_hf_routing``), ledger and store under
``tmp_path``, and tiny routing waits.
"""

from __future__ import annotations

import copy
import io
import time
import tomllib
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import constants
from PIL import Image

import genroute_huggingface.plugin as hf_plugin
import genroute_mock.plugin as mock_plugin
from fakes.hf_server import FakeHF
from genroute.config import Settings, settings_from_dict
from genroute.keys import request_key
from genroute.plugins import make_plugin_manager
from genroute.provider import RunContext
from genroute.router import Router
from genroute.types import Offer, ProviderOutput, RequestModel
from genroute_huggingface import HuggingFaceProvider
from genroute_huggingface.offers import make_offers

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGINS_TOML = REPO_ROOT / "plugins.toml"

TOKEN = "hf_CANARY_d41d8cd98f00b204e980"
"""The HF_TOKEN of these tests, and the token the fake accepts: it must never show in logs, errors or files."""

FAKE_TASK = {
    "text-to-image": "text-to-image",
    "image-to-image": "image-to-image",
    "text-to-speech": "text-to-speech",
    "speech-to-text": "automatic-speech-recognition",
    "text-generation": "conversational",
}
FAST_ROUTING: dict[str, Any] = {
    "max_attempts": 3,
    "backoff_initial_seconds": 0.001,
    "backoff_max_seconds": 0.002,
    "deadline_seconds": 20,
    "cooldown_after_failures": 50,
    "cooldown_seconds": 0.2,
}


def shipped() -> dict[str, Any]:
    """The repository's plugins.toml, parsed (a fresh copy each time)."""
    return tomllib.loads(PLUGINS_TOML.read_text(encoding="utf-8"))


def hf_catalogue() -> dict[str, dict[str, dict[str, Any]]]:
    """``[providers.huggingface.models]``: task → tier → entry."""
    models: dict[str, dict[str, dict[str, Any]]] = shipped()["providers"]["huggingface"]["models"]
    return models


def entry(task: str, tier: str) -> dict[str, Any]:
    return hf_catalogue()[task][tier]


def isolate_hf(monkeypatch: pytest.MonkeyPatch, home: Path, token: str | None = TOKEN) -> None:
    """No ambient token file, cache or offline flag; ``HF_TOKEN`` is ``token``. ``huggingface_hub`` reads its
    settings at import, so its constants are patched as well as the environment."""
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("GENROUTE_PROFILE", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)


def serve_catalogue(
    server: FakeHF, compute: float | Callable[[str, str], float] | None = None, latency: float = 0.0
) -> None:
    """Serve every model of the shipped Hugging Face catalogue. ``compute``: billed seconds per call (a number,
    or a function of task and tier); default the entry's ``est_seconds``, so actual cost = estimate."""
    for task, tiers in hf_catalogue().items():
        for tier, item in tiers.items():
            if compute is None:
                seconds = float(item["est_seconds"])
            elif callable(compute):
                seconds = compute(task, tier)
            else:
                seconds = compute
            server.add_model(item["model"], task=FAKE_TASK[task], compute_seconds=seconds, latency=latency)


def config(
    tmp_path: Path,
    base_url: str | None,
    *,
    options: Mapping[str, Any] | None = None,
    providers: tuple[str, ...] | None = None,
    profile: str = "test",
    credit: str | None = "0.10",
    routing: Mapping[str, Any] | None = None,
    store: bool = True,
) -> dict[str, Any]:
    """A configuration dict from the shipped file: profile ``profile`` lists ``providers`` (a shipped profile such
    as ``dev`` is kept as shipped when ``providers`` is left out; a new one defaults to Hugging Face alone); the
    free-credit limit, and the matching option, are ``credit`` (None: no limit)."""
    raw = shipped()
    hf = raw["providers"]["huggingface"]
    hf["options"] = {**hf.get("options", {}), **(options or {})}
    if credit is not None and "monthly_free_credit_usd" not in (options or {}):
        hf["options"]["monthly_free_credit_usd"] = credit  # the option and the limit say the same
    if base_url is not None:
        hf["options"]["base_url"] = base_url
    if providers is not None or profile not in raw["profiles"]:
        raw["profiles"][profile] = {"providers": list(providers or ("huggingface",))}
    raw["default_profile"] = profile
    limits = [lim for lim in raw["budget"]["limits"] if lim["scope"] != "free:huggingface"]
    if credit is not None:
        limits.append({"scope": "free:huggingface", "period": "monthly", "usd": credit})
    raw["budget"]["limits"] = limits
    raw["ledger"] = {"path": str(tmp_path / "ledger")}
    raw["store"] = {"path": str(tmp_path / "store"), "enabled": store}
    raw["jobs"] = {"path": str(tmp_path / "jobs")}
    raw["routing"] = {**raw.get("routing", {}), **FAST_ROUTING, **(routing or {})}
    return raw


def settings(tmp_path: Path, base_url: str | None, **kwargs: Any) -> Settings:
    return settings_from_dict(copy.deepcopy(config(tmp_path, base_url, **kwargs)), env={})


def router(settings_: Settings, *, mock: bool = True) -> Router:
    """A Router with the Hugging Face plugin (and the mock's), entry points left out."""
    plugins: list[object] = [hf_plugin, mock_plugin] if mock else [hf_plugin]
    return Router(settings_, plugin_manager=make_plugin_manager(entry_points=False, plugins=plugins))


def offer_for(settings_: Settings, request: RequestModel, billing: str = "free") -> Offer:
    """The Hugging Face offer for the request's tier."""
    matching = [o for o in make_offers(request, settings_) if o.tier == request.tier and o.billing == billing]
    assert matching, f"no {billing} offer for {request.task_name} [{request.tier}]"
    return matching[0]


async def run_direct(
    settings_: Settings,
    request: RequestModel,
    *,
    deadline: float = 20.0,
    billing: str = "free",
    offer: Offer | None = None,
) -> ProviderOutput:
    """``HuggingFaceProvider.run`` on its own (no router), to see the exact error it raises. ``offer``: the one to
    run (default: the provider's own offer for the request's tier)."""
    provider = HuggingFaceProvider()
    section = settings_.provider("huggingface")
    ctx = RunContext(
        settings=settings_,
        provider_settings=section,
        options=provider.check_options(section),
        request_key=request_key(request),
        attempt=1,
        deadline=time.monotonic() + deadline,
        http_factory=_no_http,
    )
    try:
        return await provider.run(request, offer or offer_for(settings_, request, billing), ctx)
    finally:
        await provider.aclose()


def _no_http() -> httpx.AsyncClient:
    raise AssertionError("the Hugging Face provider downloads nothing through ctx.http")


def png(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def spent(router_: Router, scope: str, period: str = "monthly") -> Decimal:
    """Spent in ``scope`` this period (Decimal 0 when the scope never saw money)."""
    for usage in router_.ledger.usage():
        if usage.scope == scope and usage.period == period:
            return usage.spent
    return Decimal(0)
