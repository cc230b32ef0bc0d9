"""The provider plugin printed in docs/plugins.md works as printed.

The test takes the ```python block after ``<!-- plugin-example -->`` and the ```toml block after
``<!-- plugin-config -->``, imports the module, registers it with a fresh plugin manager and routes
requests to it through the Router, with the store and ledger in a temporary directory.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import genroute
from genroute.config import settings_from_dict
from genroute.plugins import make_plugin_manager

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
MODULE_NAME = "genroute_docs_plugin_example"


def block_after(marker: str, language: str) -> str:
    """The body of the first fenced block right after ``marker`` (only blank lines in between)."""
    text = DOC.read_text(encoding="utf-8")
    assert text.count(marker) == 1, f"{DOC} must hold exactly one {marker}"
    rest = text[text.index(marker) + len(marker) :]
    match = re.match(rf"\s*```{language}\n(.*?)\n```", rest, re.DOTALL)
    assert match, f"no ```{language} block directly after {marker} in {DOC}"
    return match.group(1) + "\n"


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    source = tmp_path / f"{MODULE_NAME}.py"
    source.write_text(block_after("<!-- plugin-example -->", "python"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(MODULE_NAME, source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, MODULE_NAME, module)
    spec.loader.exec_module(module)
    return module


def plugin_config() -> dict[str, Any]:
    return tomllib.loads(block_after("<!-- plugin-config -->", "toml"))


def make_router(plugin: ModuleType, tmp_path: Path) -> tuple[genroute.Router, str]:
    raw = plugin_config()
    assert len(raw["providers"]) == 1, "the plugin-config block configures exactly one provider"
    name = next(iter(raw["providers"]))
    raw.update(
        default_profile="docs",
        profiles={"docs": {"providers": [name]}},
        ledger={"path": str(tmp_path / "ledger")},
        store={"path": str(tmp_path / "store")},
    )
    settings = settings_from_dict(raw, source=str(DOC), env={})
    pm = make_plugin_manager(entry_points=False, plugins=[plugin])
    return genroute.Router(settings, plugin_manager=pm), name


def test_example_fits_on_one_screen() -> None:
    assert len(block_after("<!-- plugin-example -->", "python").splitlines()) <= 40


def test_example_plugin_serves_a_request(plugin: ModuleType, tmp_path: Path) -> None:
    router, name = make_router(plugin, tmp_path)
    with router:
        assert name in router.providers
        request = genroute.TextGeneration(prompt="hello plugins", tier="fast")

        result = router.run(request)
        assert result.provider == name
        assert not result.cached
        assert result.text is not None and "hello plugins" in result.text
        assert result.model == plugin_config()["providers"][name]["models"]["text-generation"]["fast"]["model"]
        assert Decimal(0) < result.actual_cost <= result.estimated_cost

        again = router.run(request)
        assert again.cached and again.provider == name and again.actual_cost == 0

        report = router.ledger.report()
        assert [row["provider"] for row in report.by_provider] == [name]
        assert report.by_provider[0]["spent"] == result.actual_cost
        assert report.saved_requests == 1


def test_example_plugin_streams(plugin: ModuleType, tmp_path: Path) -> None:
    router, name = make_router(plugin, tmp_path)
    with router:
        pieces = list(router.stream(genroute.TextGeneration(prompt="streamed words", tier="balanced")))
        assert "streamed words" in "".join(pieces)
        assert router.ledger.report().by_provider[0]["provider"] == name


def test_example_plugin_makes_no_offer_for_other_tasks(plugin: ModuleType, tmp_path: Path) -> None:
    router, name = make_router(plugin, tmp_path)
    with router, pytest.raises(genroute.NoRouteAvailable) as caught:
        router.run(genroute.TextToImage(prompt="a lighthouse"))
    assert [(r.provider, r.reason) for r in caught.value.rejections] == [(name, "makes no offer for text-to-image")]
