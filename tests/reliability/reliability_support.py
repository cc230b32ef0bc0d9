"""Helpers shared by the reliability tests (a plain module, not a conftest: ``tests/conftest.py`` owns that name).

Functions run in ``spawn`` child processes live here, at module level, so a child can import them by name.
Everything builds routers over an explicit plugin manager (the built-in mock plus test plugins) so that the
provider packages being developed beside genroute cannot change what these tests measure; only the CLI
subprocess tests load the installed entry points, as a user's ``genroute`` would.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pluggy

import genroute_mock.plugin
from genroute import hookimpl
from genroute.config import Settings
from genroute.errors import GenrouteError
from genroute.ledger import Ledger, LedgerEntry, ScopeUsage
from genroute.plugins import make_plugin_manager
from genroute.provider import Provider, catalogue_offers
from genroute.router import Router
from genroute.store import ResultStore, StoreStats
from genroute.types import Offer, ProviderOutput, RequestModel, Result, TextToImage
from genroute_mock.provider import MockProvider

TESTS_ROOT = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_ROOT.parent
MOCK_FAST_PRICE = Decimal("0.003")  # plugins.toml: mock text-to-image fast, per output
TOKEN_VARIABLES = ("REPLICATE_API_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

# docs/cli.md, "Exit codes": the codes a command may end with. 70 (internal error) is a bug by definition.
DOCUMENTED_EXIT_CODES = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 70, 130, 141, 143})


def mock_only_pm(*plugins: object) -> pluggy.PluginManager:
    """A plugin manager with the built-in mock (and ``plugins``), without the installed entry points."""
    return make_plugin_manager(entry_points=False, plugins=[genroute_mock.plugin, *plugins])


def fast_image(prompt: str, **extra: Any) -> TextToImage:
    """The cheapest mock request: text-to-image, fast tier, a 64×64 PNG ($0.003 simulated)."""
    return TextToImage(prompt=prompt, tier="fast", width=64, height=64, **extra)


def fast_image_line(prompt: str) -> dict[str, Any]:
    return {"task": "text-to-image", "prompt": prompt, "tier": "fast", "width": 64, "height": 64}


def genroute_command() -> list[str]:
    """The installed ``genroute`` console script beside this interpreter, else ``python -m genroute.cli``."""
    script = Path(sys.executable).with_name("genroute")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "genroute.cli"]


def cli_env(home: Path, config: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: its own GENROUTE_HOME, no tokens, no colours."""
    env = dict(os.environ)
    for name in ("GENROUTE_PROFILE", "GENROUTE_CONFIG", "FORCE_COLOR", *TOKEN_VARIABLES):
        env.pop(name, None)
    env.update({"GENROUTE_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"})
    if config is not None:
        env["GENROUTE_CONFIG"] = str(config)
    env.update(extra)
    return env


# -- snapshots: what "nothing was written" compares -------------------------------------------------------


@dataclass(frozen=True)
class Books:
    """The ledger and store as a rejected input must leave them."""

    entries: tuple[str, ...]
    usage: tuple[tuple[str, str, str, Decimal, Decimal], ...]
    open_reservations: int
    store: tuple[int, int, int, int, Decimal]


def books(settings: Settings) -> Books:
    """Entries, usage and open reservations of the ledger; entries, hits, misses, bytes and savings of the store."""
    with Ledger(settings.ledger.path, settings.limits()) as ledger:
        entries = tuple(e.model_dump_json() for e in ledger.entries())
        usage = tuple((u.scope, u.period, u.period_key, u.spent, u.reserved) for u in ledger.usage())
        open_count = len(ledger.open_reservations())
    with ResultStore(settings.store.path, max_bytes=settings.store.max_bytes) as store:
        stats = store.stats()
    return Books(entries, usage, open_count, (stats.entries, stats.hits, stats.misses, stats.bytes, stats.saved_usd))


def usage_row(rows: Iterable[ScopeUsage], scope: str, period: str = "total") -> ScopeUsage:
    for row in rows:
        if (row.scope, row.period) == (scope, period):
            return row
    raise AssertionError(f"no usage row for {scope}/{period}")


def settled(entries: Iterable[LedgerEntry]) -> list[LedgerEntry]:
    return [e for e in entries if e.status == "settled"]


def store_stats(settings: Settings) -> StoreStats:
    with ResultStore(settings.store.path, max_bytes=settings.store.max_bytes) as store:
        return store.stats()


# -- counting provider calls --------------------------------------------------------------------------------


@dataclass
class CallLog:
    """Every attempt a provider saw: (provider, request key, attempt, outcome)."""

    calls: list[tuple[str, str, int, str]]

    def by_key(self, provider: str | None = None) -> Counter[str]:
        return Counter(key for name, key, _a, _o in self.calls if provider is None or name == provider)

    def outcomes(self) -> Counter[str]:
        return Counter(outcome for *_rest, outcome in self.calls)


def count_calls(router: Router, log: CallLog | None = None) -> CallLog:
    """Wrap every provider's ``run`` of ``router`` to log each attempt and how it ended."""
    log = log or CallLog([])
    for name, provider in router.providers.items():
        inner = provider.run

        async def counted(
            request: RequestModel, offer: Offer, ctx: Any, _inner: Any = inner, _name: str = name
        ) -> ProviderOutput:
            try:
                output: ProviderOutput = await _inner(request, offer, ctx)
            except BaseException as exc:
                log.calls.append((_name, ctx.request_key, ctx.attempt, type(exc).__name__))
                raise
            log.calls.append((_name, ctx.request_key, ctx.attempt, "ok"))
            return output

        provider.run = counted  # type: ignore[method-assign]
    return log


# -- a second mock, for fallback -----------------------------------------------------------------------------


class BackupMock(MockProvider):
    """The mock under another name: an independent provider with its own section, options and faults."""

    name = "backup"


class BackupPlugin:
    """Registers :class:`BackupMock` and offers its ``[providers.backup.models]`` catalogue."""

    @hookimpl
    def genroute_register_providers(self, register: Callable[[Provider], None]) -> None:
        register(BackupMock())

    @hookimpl
    def genroute_offers(self, request: RequestModel, settings: Settings) -> list[Offer]:
        return catalogue_offers(BackupMock.name, request, settings)


# -- spawn workers -------------------------------------------------------------------------------------------


def router_worker(settings: Settings, index: int, count: int, concurrency: int, start: Any, results: Any) -> None:
    """One process of the shared-budget test: ``count`` distinct fast images through ``Router.batch``.

    Reports ``(index, calls per request key, keys of results, error kinds, summed cost, problem)``.
    """
    try:
        with Router(settings, plugin_manager=mock_only_pm()) as router:
            log = count_calls(router)
            requests = [fast_image(f"process {index} request {i}") for i in range(count)]
            start.wait(180)
            outcomes = router.batch(requests, concurrency=concurrency)
        ok = [o for o in outcomes if isinstance(o, Result)]
        errors = Counter(type(o).__name__ for o in outcomes if isinstance(o, GenrouteError))
        cost = sum((o.actual_cost for o in ok), Decimal(0))
        results.put((index, dict(log.by_key()), [o.request_key for o in ok], dict(errors), str(cost), ""))
    except BaseException:
        results.put((index, {}, [], {}, "0", traceback.format_exc()))


# -- files ---------------------------------------------------------------------------------------------------


def write_jsonl(path: Path, lines: Iterable[Mapping[str, Any] | str]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for line in lines:
            handle.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- a provider that puts the tokens in its errors, as an SDK echoing its Authorization header might --------

LEAKY_PLUGIN = '''\
"""genroute-leaky: a provider whose failures quote the provider tokens (a careless SDK)."""

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict

from genroute import errors, hookimpl
from genroute.provider import Provider, catalogue_offers


class LeakyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["typed", "crash"] = "typed"


def tokens():
    return f"Bearer {os.environ.get('REPLICATE_API_TOKEN', '')} / {os.environ.get('HF_TOKEN', '')}"


class LeakyProvider(Provider):
    name = "leaky"
    options_model = LeakyOptions

    async def run(self, request, offer, ctx):
        if ctx.options.mode == "crash":  # a provider bug: an unexpected exception
            raise RuntimeError(f"SDK: 401 Unauthorized for Authorization: {tokens()}")
        if ctx.attempt == 1:
            raise errors.RateLimited(f"429 for {tokens()}", provider=self.name, retry_after=0.001)
        raise errors.AuthenticationFailed(f"401 Unauthorized for {tokens()}", provider=self.name)


@hookimpl
def genroute_register_providers(register):
    register(LeakyProvider())


@hookimpl
def genroute_offers(request, settings):
    return catalogue_offers("leaky", request, settings)
'''


def install_leaky_plugin(site: Path) -> Path:
    """Install ``genroute-leaky`` as files on ``site`` (module + dist-info with its ``genroute`` entry point)."""
    package = site / "genroute_leaky"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(LEAKY_PLUGIN, encoding="utf-8")
    info = site / "genroute_leaky-0.1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: genroute-leaky\nVersion: 0.1.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[genroute]\nleaky = genroute_leaky\n", encoding="utf-8")
    (info / "RECORD").write_text("", encoding="utf-8")
    return site


def files_containing(root: Path, needles: Iterable[str]) -> list[str]:
    """Every file under ``root`` whose bytes contain one of ``needles`` (as UTF-8, UTF-16 or UTF-32)."""
    encoded = [n.encode(codec) for n in needles for codec in ("utf-8", "utf-16-le", "utf-32-le")]
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(needle in data for needle in encoded):
                found.append(str(path))
    return found


@dataclass
class SharedRun:
    """What :func:`run_workers_watching_budget` saw: each worker's outcome tuple, and the budget samples."""

    outcomes: list[tuple[Any, ...]]
    samples: int
    most_reserved: Decimal


def run_workers_watching_budget(
    settings: Settings,
    worker: Callable[..., None],
    processes: int,
    per_process: int,
    concurrency: int,
    scope: str,
    limit: Decimal,
) -> SharedRun:
    """Start ``processes`` spawned workers on one ledger; while they run, sample ``Ledger.usage()`` and
    assert ``spent + reserved <= limit`` in ``scope`` at every sample. Workers put one outcome tuple each
    on the queue, its sixth item a problem string (empty when all went well)."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(processes + 1)
    results: Any = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(settings, i, per_process, concurrency, start, results), daemon=True)
        for i in range(processes)
    ]
    for proc in procs:
        proc.start()
    samples = 0
    most_reserved = Decimal(0)
    outcomes: list[tuple[Any, ...]] = []
    with Ledger(settings.ledger.path, settings.limits()) as ledger:
        start.wait(180)
        deadline = time.monotonic() + 600
        while len(outcomes) < processes:
            assert time.monotonic() < deadline, "the workers did not finish in 10 minutes"
            row = usage_row(ledger.usage(), scope)
            assert row.spent + row.reserved <= limit, f"over the limit at sample {samples}: {row}"
            assert row.reserved >= 0 and row.spent >= 0, row
            most_reserved = max(most_reserved, row.reserved)
            samples += 1
            while not results.empty():
                outcomes.append(results.get())
    for proc in procs:
        proc.join(timeout=60)
    problems = [o[5] for o in outcomes if o[5]]
    assert not problems, problems[0]
    assert [proc.exitcode for proc in procs] == [0] * processes
    return SharedRun(outcomes, samples, most_reserved)
