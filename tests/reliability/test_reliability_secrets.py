"""Secrets: canary tokens in REPLICATE_API_TOKEN and HF_TOKEN never show up in anything genroute writes.

A provider plugin that quotes both tokens in its failures (``genroute-leaky``, installed as files with its
own entry point, like a stranger's package) is tried first and fails on every request — rate-limited, then
unauthorized — so the mock serves. With logging at DEBUG, requests, streams, batches, plans, budget exports,
cache stats and errors (with ``--debug``) then run, in-process and through the installed ``genroute``
script. Everything written under GENROUTE_HOME, the exported reports, the captured logs and the CLI's
output are searched for the canaries.
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from reliability_support import (
    cli_env,
    fast_image,
    fast_image_line,
    files_containing,
    genroute_command,
    install_leaky_plugin,
    mock_only_pm,
    read_jsonl,
    write_jsonl,
)

from genroute.config import load_settings
from genroute.errors import NoRouteAvailable
from genroute.router import Router
from genroute.types import TextGeneration

REPLICATE_CANARY = "r8_CaNaRy0123456789replicateZZ"
HF_CANARY = "hf_CaNaRy9876543210huggingfaceZZ"
CANARIES = (REPLICATE_CANARY, HF_CANARY)

CONFIG = """\
default_profile = "leaky-first"

[profiles.leaky-first]
providers = ["leaky", "mock"]

[budget]
limits = [
  {{ scope = "global", period = "daily", usd = "5" }},
  {{ scope = "simulated", period = "total", usd = "5" }},
]

[ledger]
path = "state/ledger"
[store]
path = "state/store"
[jobs]
path = "state/jobs"

[routing]
max_attempts = 2
backoff_initial_seconds = 0.001
backoff_max_seconds = 0.002
cooldown_seconds = 0  # leaky fails every time, and every request must meet its failure

[providers.leaky]
billing = "paid"
[providers.leaky.options]
mode = "{mode}"
[providers.leaky.models.text-to-image]
fast = {{ model = "leaky/img", unit = "output", price = "0.001" }}
[providers.leaky.models.text-generation]
fast = {{ model = "leaky/llm", unit = "1k_tokens", price = "0.0001" }}

[providers.mock]
billing = "simulated"
[providers.mock.models.text-to-image]
fast = {{ model = "mock/flux-schnell", unit = "output", price = "0.003" }}
[providers.mock.models.text-generation]
fast = {{ model = "mock/llama-8b", unit = "1k_tokens", price = "0.00025" }}
"""


def leaks(texts: list[str], *roots: Path) -> list[str]:
    found = [f"text #{i}: …{t[max(0, t.find(c) - 60) : t.find(c) + 40]}…" for i, t in enumerate(texts)
             for c in CANARIES if c in t]  # fmt: skip
    for root in roots:
        found += [f"file {p}" for p in files_containing(root, CANARIES)]
    return found


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """(home, site): canary tokens in the environment, the leaky plugin installed on ``site``."""
    monkeypatch.setenv("REPLICATE_API_TOKEN", REPLICATE_CANARY)
    monkeypatch.setenv("HF_TOKEN", HF_CANARY)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    site = install_leaky_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    yield home, site
    sys.modules.pop("genroute_leaky", None)


def leaky_module() -> ModuleType:
    return importlib.import_module("genroute_leaky")


def write_config(home: Path, mode: str) -> Path:
    config = home / "plugins.toml"
    config.write_text(CONFIG.format(mode=mode), encoding="utf-8")
    return config


def exercise_library(home: Path, mode: str) -> list[str]:
    """Everything a program does through the Python API; returns the texts it was handed back."""
    settings = load_settings(write_config(home, mode), env={"GENROUTE_HOME": str(home)})
    texts: list[str] = []
    with Router(settings, plugin_manager=mock_only_pm(leaky_module())) as router:
        first = router.run(fast_image("a lighthouse"))
        assert first.provider == "mock" and not first.cached
        assert router.run(fast_image("a lighthouse")).cached
        stream = router.stream(TextGeneration(prompt="once upon a time", tier="fast", max_tokens=20))
        texts.append("".join(stream))
        assert stream.result is not None and stream.result.provider == "mock"
        outcomes = router.batch([fast_image(f"batch {i}") for i in range(4)], concurrency=2)
        texts += [o.model_dump_json() if hasattr(o, "model_dump_json") else str(o) for o in outcomes]
        plan = router.plan(fast_image("planned"))
        texts += [plan.model_dump_json(), *(str(r) for r in plan.rejections)]
        with pytest.raises(NoRouteAvailable) as failed:
            router.run(fast_image("pinned", provider="leaky"))
        texts += [str(failed.value), repr(failed.value), *(str(r) for r in failed.value.rejections)]
        assert "failed after" in str(failed.value)
        router.ledger.export_csv(home / "reports" / "budget.csv")
        router.ledger.export_json(home / "reports" / "budget.json")
        texts.append(router.ledger.report().to_json())
        assert router.store is not None
        texts.append(router.store.stats().model_dump_json())
        texts += [entry.model_dump_json() for entry in router.ledger.entries()]
        texts += [first.model_dump_json()]
    return texts


def captured(caplog: pytest.LogCaptureFixture) -> list[str]:
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    return [caplog.text, *(formatter.format(r) for r in caplog.records), *(str(r.args) for r in caplog.records)]


def test_canaries_never_written_by_the_library(world: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    home, _site = world
    caplog.set_level(logging.DEBUG)
    texts = exercise_library(home, "typed")
    logs = captured(caplog)
    # The leaky provider did fail with the tokens in its messages, and genroute did talk about it.
    assert "leaky" in caplog.text and "***" in caplog.text
    assert leaks(texts + logs, home) == []


def test_canaries_never_logged_when_a_provider_crashes(
    world: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    home, _site = world
    caplog.set_level(logging.DEBUG)
    texts = exercise_library(home, "crash")
    assert leaks(texts + captured(caplog), home) == []


# -- the installed script ------------------------------------------------------------------------------------


def run_cli(home: Path, site: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(home, config, REPLICATE_API_TOKEN=REPLICATE_CANARY, HF_TOKEN=HF_CANARY, PYTHONPATH=str(site))
    return subprocess.run([*genroute_command(), *args], cwd=home, env=env, capture_output=True, text=True, timeout=120)


def test_canaries_never_written_by_the_cli(world: tuple[Path, Path]) -> None:
    home, site = world
    config = write_config(home, "typed")
    requests = write_jsonl(home / "requests.jsonl", [fast_image_line(f"cli {i}") for i in range(3)])
    outputs: list[str] = []

    def cli(*args: str, rc: int) -> subprocess.CompletedProcess[str]:
        proc = run_cli(home, site, config, *args)
        outputs.extend([proc.stdout, proc.stderr])
        assert proc.returncode == rc, f"{args}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
        assert "internal error" not in proc.stderr
        return proc

    ran = cli("run", "a lighthouse", "--tier", "fast", "--debug", "--output-dir", "out", rc=0)
    assert "leaky" in ran.stderr and "***" in ran.stderr  # the failure was logged, masked
    cli("run", "once upon a time", "--task", "text-generation", "--tier", "fast", "--debug", rc=0)
    cli("batch", str(requests), "--results", "results.jsonl", "--no-progress", "--debug", rc=0)
    assert [r["provider"] for r in read_jsonl(home / "results.jsonl")] == ["mock"] * 3
    cli("plan", str(requests), "--json", "--debug", rc=0)
    cli("budget", "--export-csv", "reports/budget.csv", "--export-json", "reports/budget.json", "--debug", rc=0)
    stats = cli("cache", "stats", "--json", "--debug", rc=0)
    assert json.loads(stats.stdout)["entries"] == 5
    failed = cli("run", "pinned", "--tier", "fast", "--provider", "leaky", "--debug", rc=6)
    assert "genroute: error:" in failed.stderr and "Traceback" in failed.stderr  # --debug shows it, masked
    assert (home / "reports" / "budget.csv").is_file() and (home / "reports" / "budget.json").is_file()
    assert leaks(outputs, home) == []


def test_canaries_never_printed_when_a_provider_crashes(world: tuple[Path, Path]) -> None:
    home, site = world
    proc = run_cli(home, site, write_config(home, "crash"), "run", "a lighthouse", "--tier", "fast")
    assert proc.returncode == 0, proc.stderr
    assert leaks([proc.stdout, proc.stderr], home) == []
