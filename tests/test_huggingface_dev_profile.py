"""The dev profile end to end: Hugging Face's free credit first, the mock once it is used up.

A batch that costs more than the free credit runs to completion: the first part on Hugging Face (the fake), the
rest on the mock — once the ledger's free-credit limit is reached, and in a second test once the service itself
answers 402. The free credit shows in scope ``free:huggingface``, nothing is spent out of pocket (scope ``global``),
and the same batch again is served from the store. Also: the CLI with ``GENROUTE_PROFILE=dev``, the client's own
provider routing, and a canary token that must never leak.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import constants
from PIL import Image

import genroute_huggingface.plugin as hf_plugin
from conftest import FakePlugin, FakeProvider
from fakes.hf_server import FakeHF, fake_hf_routing, make_wav
from genroute.config import settings_from_dict
from genroute.errors import GenrouteError
from genroute.plugins import make_plugin_manager
from genroute.router import Router
from genroute.types import Result
from hf_helpers import PLUGINS_TOML, TOKEN, config, isolate_hf, png, router, serve_catalogue, settings, spent

PRICE = Decimal("0.00012")
FAST_IMAGE = Decimal(3) * PRICE  # FLUX.1-schnell [fast]: est_seconds 3, and the fake bills 3 s
MOCK_IMAGE = Decimal("0.003")  # mock/flux-schnell [fast], simulated money


@pytest.fixture(autouse=True)
def _hf_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    isolate_hf(monkeypatch, tmp_path_factory.mktemp("hf_home"))


@pytest.fixture
def server() -> Iterator[FakeHF]:
    with FakeHF(token=TOKEN) as fake:
        serve_catalogue(fake, latency=0.01)  # billed compute = the catalogue's est_seconds
        yield fake


def images(count: int, tag: str = "lighthouse") -> list[dict[str, Any]]:
    return [{"task": "text-to-image", "prompt": f"a {tag}, take {i}", "tier": "fast"} for i in range(count)]


def providers_of(results: list[Result | GenrouteError]) -> Counter[str]:
    assert all(isinstance(r, Result) for r in results), [r for r in results if not isinstance(r, Result)]
    return Counter(r.provider for r in results if isinstance(r, Result))


async def test_batch_over_the_free_credit_finishes_on_the_mock_when_the_ledger_says_so(
    server: FakeHF, tmp_path: Path
) -> None:
    credit = "0.0012"  # room for 3 fast images at $0.00036: the 4th would pass the limit
    batch = [*images(8), {"task": "text-to-video", "prompt": "waves", "tier": "fast"}]
    async with router(settings(tmp_path, server.base_url, profile="dev", credit=credit)) as r:
        assert r.settings.active.providers == ["huggingface", "mock"]
        results = await r.abatch(batch, concurrency=4)
        assert providers_of(results) == {"huggingface": 3, "mock": 6}
        assert results[-1].provider == "mock"  # type: ignore[union-attr]  # video: Hugging Face makes no offer

        assert spent(r, "free:huggingface") == 3 * FAST_IMAGE  # the free credit used
        assert spent(r, "global") == 0 and spent(r, "global", "total") == 0  # $0 out of pocket
        assert spent(r, "simulated") == 5 * MOCK_IMAGE + Decimal("0.04")  # the mock's pretend money
        assert r.ledger.headroom(["free:huggingface"]) == Decimal(credit) - 3 * FAST_IMAGE
        plan = await r.aplan(images(1, "new")[0])
        assert plan.chosen is not None and plan.chosen.provider == "mock"
        (reason,) = [x.reason for x in plan.rejections if x.provider == "huggingface" and x.tier == "fast"]
        assert reason.startswith("over budget")

        before = r.ledger.usage()
        again = await r.abatch(batch, concurrency=4)
        assert all(isinstance(x, Result) and x.cached and x.actual_cost == 0 for x in again)
        assert [x.provider for x in again] == [x.provider for x in results]  # type: ignore[union-attr]
        assert [(u.scope, u.period, u.spent, u.reserved) for u in r.ledger.usage()] == [
            (u.scope, u.period, u.spent, u.reserved) for u in before
        ]
        report = r.ledger.report()
        assert report.saved_requests == len(batch) and report.savings > 0
    assert server.count(status=200) == 3  # the second run never reached the service


async def test_batch_over_the_credit_falls_back_when_the_service_answers_402(server: FakeHF, tmp_path: Path) -> None:
    server.credit_usd = 0.00072  # the account's real credit: two fast images (3 s each at $0.00012/s)
    batch = images(6)
    async with router(settings(tmp_path, server.base_url, profile="dev")) as r:  # the ledger still thinks $0.10
        results = await r.abatch(batch, concurrency=1)
        assert providers_of(results) == {"huggingface": 2, "mock": 4}
        assert [x.provider for x in results] == ["huggingface"] * 2 + ["mock"] * 4  # type: ignore[union-attr]
        assert server.count(status=402) == 1  # after one 402 the free scope is exhausted: no more asking
        assert spent(r, "free:huggingface") == 2 * FAST_IMAGE
        assert spent(r, "global") == 0
        assert r.ledger.headroom(["free:huggingface"]) == 0

    # Another Router on the same ledger (as another process would be) refuses the free offers too.
    async with router(settings(tmp_path, server.base_url, profile="dev")) as other:
        plan = await other.aplan(images(1, "elsewhere")[0])
        assert plan.chosen is not None and plan.chosen.provider == "mock"
        reasons = [x.reason for x in plan.rejections if x.provider == "huggingface" and x.tier == "fast"]
        assert reasons and reasons[0].startswith("over budget")
        again = await other.abatch(batch, concurrency=3)
        assert all(isinstance(x, Result) and x.cached for x in again)
    assert server.count() == 3


async def test_switching_to_prod_changes_no_code(server: FakeHF, tmp_path: Path) -> None:
    # prod lists replicate and huggingface: the free credit (sorted as $0) serves first, Replicate once it is used
    # up. A stand-in registers "replicate" with the shipped catalogue, so only the profile name changes here.
    stand_in = FakeProvider("replicate")
    raw = config(tmp_path, server.base_url, profile="prod", credit="0.0008")
    raw["providers"]["replicate"].pop("options", None)  # the stand-in takes none
    s = settings_from_dict(raw, env={})
    pm = make_plugin_manager(entry_points=False, plugins=[hf_plugin, FakePlugin(stand_in)])
    async with Router(s, plugin_manager=pm) as r:
        assert r.settings.active.providers == ["replicate", "huggingface"]
        results = await r.abatch(images(4), concurrency=1)
        assert [x.provider for x in results] == ["huggingface", "huggingface", "replicate", "replicate"]  # type: ignore[union-attr]
        assert spent(r, "free:huggingface") == 2 * FAST_IMAGE
        assert spent(r, "global") == 2 * Decimal("0.003")  # Replicate is real money
    assert len(stand_in.calls) == 2


async def test_dev_profile_through_the_clients_own_provider_routing(server: FakeHF, tmp_path: Path) -> None:
    with fake_hf_routing(server):
        async with router(settings(tmp_path, None, profile="dev", credit="0.0008")) as r:
            results = await r.abatch(
                [*images(3), {"task": "image-to-image", "prompt": "at night", "image": png(), "tier": "fast"}],
                concurrency=2,
            )
            assert providers_of(results) == {"huggingface": 2, "mock": 2}
            assert spent(r, "global") == 0
    posts = [q for q in server.requests if q.method == "POST"]
    assert {q.host for q in posts} == {"router.huggingface.co"}
    assert all(q.path.startswith("/hf-inference/models/") for q in posts)
    assert any(q.host == "huggingface.co" and q.path.startswith("/api/models/") for q in server.requests)


async def test_the_token_never_leaks_into_logs_errors_or_files(
    server: FakeHF, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_DEBUG", True)  # huggingface_hub's most verbose request logging
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    fast = "black-forest-labs/FLUX.1-schnell"
    server.fail(fast, status=500, message="CUDA out of memory")
    server.loading(fast, estimated_time=0.05)
    server.rate_limit(fast, reset=0)
    server.malformed("openai/whisper-small", "invalid_json")
    server.fail("meta-llama/Llama-3.2-3B-Instruct", status=401, message="Invalid credentials in Authorization header")
    server.credit_usd = 0.002
    batch: list[Mapping[str, Any]] = [
        *images(4),
        {"task": "speech-to-text", "audio": make_wav("one two"), "tier": "fast"},
        {"task": "text-generation", "prompt": "hello", "tier": "fast"},
        {"task": "text-to-speech", "text": "one two three", "tier": "fast"},
        *images(4, "castle"),
    ]
    messages: list[str] = []
    async with router(settings(tmp_path, server.base_url, profile="dev")) as r:
        for outcome in await r.abatch(batch, concurrency=3):
            messages.append(str(outcome) if isinstance(outcome, GenrouteError) else outcome.model_dump_json())
        plan = await r.aplan({"task": "text-to-video", "prompt": "x"})
        messages.extend(str(x) for x in plan.rejections)
        stream = r.astream({"task": "text-generation", "prompt": "stream", "tier": "balanced"})
        messages.append("".join([p async for p in stream]))

    assert server.count(status=200) >= 3 and server.count(status=402) >= 1
    assert "authenticated: True" in caplog.text  # huggingface_hub did log its requests
    assert TOKEN not in caplog.text
    assert all(TOKEN not in m for m in messages)
    assert all(TOKEN not in json.dumps(q.headers) for q in server.requests)
    written = [p for root in (tmp_path, Path(constants.HF_HOME)) for p in root.rglob("*") if p.is_file()]
    assert written  # ledger, store (and anything huggingface_hub put in its home)
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path


# ---- the CLI with GENROUTE_PROFILE=dev ----------------------------------------------------------------------------


def dev_config(directory: Path, server: FakeHF, credit: str) -> Path:
    """The repository's plugins.toml, pointed at the fake, with a smaller free credit."""
    text = PLUGINS_TOML.read_text(encoding="utf-8")
    replacements = {
        '# base_url = "http://127.0.0.1:8080"   # an hf-inference compatible server; unset: the real service': (
            f'base_url = "{server.base_url}"'
        ),
        'monthly_free_credit_usd = "0.10"': f'monthly_free_credit_usd = "{credit}"',
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"plugins.toml no longer contains {old!r}; update the test"
        text = text.replace(old, new)
    path = directory / "plugins.toml"
    path.write_text(text, encoding="utf-8")
    return path


def cli(tmp_path: Path, config: Path, *args: str, env: Mapping[str, str | None] | None = None, rc: int | None = 0):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GENROUTE_", "HUGGING"))}
    environ.update(
        {
            "GENROUTE_PROFILE": "dev",
            "GENROUTE_CONFIG": str(config),
            "GENROUTE_HOME": str(tmp_path),
            "HF_TOKEN": TOKEN,
            "HF_HOME": str(tmp_path / "hf_home"),
            "NO_COLOR": "1",
        }
    )
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    proc = subprocess.run(
        [sys.executable, "-m", "genroute.cli", *args],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if rc is not None:
        assert proc.returncode == rc, f"exit {proc.returncode}, expected {rc}\n{proc.stdout}\n{proc.stderr}"
    assert TOKEN not in proc.stdout and TOKEN not in proc.stderr
    return proc


def test_genroute_profile_dev_on_the_command_line(server: FakeHF, tmp_path: Path) -> None:
    config = dev_config(tmp_path, server, credit="0.0012")
    providers = json.loads(cli(tmp_path, config, "providers", "--json").stdout)
    assert providers["profile"] == "dev"
    hf = next(p for p in providers["providers"] if p["provider"] == "huggingface")
    assert hf["status"] == "available" and hf["in_profile"] is True
    no_token = json.loads(cli(tmp_path, config, "providers", "--json", env={"HF_TOKEN": None}).stdout)
    hf = next(p for p in no_token["providers"] if p["provider"] == "huggingface")
    assert hf["status"] == "unavailable: HF_TOKEN is not set"

    run = cli(tmp_path, config, "--debug", "run", "a lighthouse", "--task", "text-to-image", "--tier", "fast")
    assert "huggingface · black-forest-labs/FLUX.1-schnell · fast" in run.stderr
    (image,) = (tmp_path / "out").glob("*.png")
    assert Image.open(image).size == (1024, 1024)

    lines = [*images(5), {"task": "text-to-video", "prompt": "waves", "tier": "fast"}]
    (tmp_path / "batch.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    batch = cli(tmp_path, config, "batch", "batch.jsonl", "--results", "res.jsonl", "--no-progress")
    assert "6/6 done (0 from the store)" in batch.stderr
    records = [json.loads(x) for x in (tmp_path / "res.jsonl").read_text().splitlines()]
    assert Counter(r["provider"] for r in records) == {"huggingface": 2, "mock": 4}  # 1 + 2 fill the credit

    fresh = [images(1, "new")[0], {"task": "text-to-video", "prompt": "clouds", "tier": "fast"}]
    (tmp_path / "plan.jsonl").write_text("\n".join(json.dumps(x) for x in fresh) + "\n", encoding="utf-8")
    plan = json.loads(cli(tmp_path, config, "plan", "plan.jsonl", "--json").stdout)
    assert plan["requests"][0]["route"].startswith("mock")  # the free credit is used up
    video = plan["requests"][-1]
    assert video["route"].startswith("mock")
    assert "huggingface · - [fast]: makes no offer for text-to-video" in video["rejected"]
    assert any("over budget" in x for x in plan["requests"][0]["rejected"] if x.startswith("huggingface"))

    budget = json.loads(cli(tmp_path, config, "budget", "--json").stdout)
    usage = {(u["scope"], u["period"]): u for u in budget["usage"]}
    assert Decimal(usage["free:huggingface", "monthly"]["spent"]) == 3 * FAST_IMAGE
    assert Decimal(usage["free:huggingface", "monthly"]["limit"]) == Decimal("0.0012")
    assert Decimal(usage["global", "monthly"]["spent"]) == 0

    again = cli(tmp_path, config, "batch", "batch.jsonl", "--results", "again.jsonl", "--no-progress")
    assert "6/6 done (6 from the store)" in again.stderr and "spent $0" in again.stderr
    assert server.count(status=200) == 3
