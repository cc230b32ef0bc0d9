"""Replicate provider figures against the local fake Replicate: overhead, HTTP requests, throughput, cache.

    python bench/provider_bench.py [--quick] [--fake-in-process]

Every figure runs the real, unmodified ``replicate`` client against ``tests/fakes``' FakeReplicate, in URL
mode (outputs are ``https://replicate.delivery/…`` URLs, downloaded over HTTP through the fake's rewriting
transport, as on the real service). The model is a small official one registered for the benchmark
(``bench/tiny-image``: a 64×64 PNG per output, one output per prediction), so that the fake spends as
little CPU as possible making pictures. genroute runs with the shipped ``plugins.toml`` (every installed
plugin loaded, budget limits raised out of reach but still checked), a replicate-only profile and a
fresh store and ledger under the working directory's ``.genroute/``.

The fake runs in a process of its own (``spawn``), as the real service would: in this process its
Werkzeug threads would compete with the client's event loop for the GIL. ``--fake-in-process`` runs it
in this process instead, to see that effect.

1. Overhead: the same predictions through ``router.abatch`` and through the SDK directly
   (``client.models.predictions.async_create(model=…, input=…, wait=60)`` + ``FileOutput.aread()`` of
   every output), same fake, same inputs (taken from what genroute sent), same concurrency, both warmed
   up first (schema cache, connections, SQLite). The order of the sides rotates from round to round; the
   figure is the median of the genroute/SDK wall-time ratios of the rounds. Every request is a cache miss (unique
   prompts), so genroute does all its work: validation, key, store lookup, offers, ledger reserve and
   settle, download checks, store write.
2. HTTP requests per prediction, counted at the fake over the timed genroute rounds of figure 1
   (predictions finish within the ``Prefer: wait`` window, so there are no polls).
3. Batch throughput with 100 ms predictions at concurrency 50, against the ideal
   ``ceil(N / 50) × 0.1 s``; the SDK alone on the same batch is shown beside it as the floor this
   machine and the fake allow.
4. Cache: the same requests twice, one at a time; median miss (served by the fake, 100 ms predictions)
   over median hit.

Rows without a goal explain the figures: CPU per prediction of the client (genroute or the SDK) and of the
fake (from ``getrusage`` in each process), of the Replicate provider's ``run`` called directly (no router,
store or ledger: genroute's share split into the provider's and the router's), new TCP connections per
prediction (counted at the fake), the latency of one request at a time (genroute vs the SDK,
interleaved), the SDK alone on the batch of figure 3, and the machine's CPU and load average during the run
(the run shares the machine: other work slows both sides and is shown so a figure can be read in context).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # the fakes live in tests/fakes (pytest puts tests/ on sys.path the same way)

import httpx  # noqa: E402
from replicate.client import Client  # noqa: E402
from replicate.helpers import FileOutput  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from fakes.replicate_server import FakeReplicate, RewritingTransport  # noqa: E402
from genroute import Router, TextToImage  # noqa: E402
from genroute.config import settings_from_dict  # noqa: E402
from genroute.keys import request_key  # noqa: E402
from genroute.plugins import make_plugin_manager  # noqa: E402
from genroute.provider import RunContext  # noqa: E402
from genroute.types import Result  # noqa: E402
from genroute_replicate.plugin import ReplicatePlugin  # noqa: E402
from genroute_replicate.provider import ReplicateProvider  # noqa: E402

Row = tuple[str, str, str, bool | None]

TOKEN = "r8_BenchToken0123456789abcdefXYZ"
MODEL = "bench/tiny-image"
SIDE = 64
WAIT = 60  # Prefer: wait seconds, both sides (genroute's wait_seconds default)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODEL_SCHEMA: dict[str, Any] = {
    "prompt": {"type": "string", "description": "Prompt", "required": True},
    "width": {"type": "integer", "default": 1024, "minimum": 64, "maximum": 2048},
    "height": {"type": "integer", "default": 1024, "minimum": 64, "maximum": 2048},
    "num_outputs": {"type": "integer", "default": 1, "minimum": 1, "maximum": 4},
    "output_format": {"type": "string", "default": "png", "enum": ["png", "jpg", "webp"]},
    "seed": {"type": "integer"},
}

OVERHEAD_GOAL = 1.05
REQUESTS_GOAL = 3.0
THROUGHPUT_FACTOR = 1.15
CACHE_GOAL = 100.0


@dataclass(frozen=True)
class Sizes:
    overhead_predictions: int
    overhead_concurrency: int
    overhead_rounds: int
    overhead_seconds: float
    sequential_requests: int
    batch_requests: int
    batch_concurrency: int
    batch_rounds: int
    batch_seconds: float
    cache_requests: int
    cache_seconds: float


FULL = Sizes(200, 10, 5, 0.02, 40, 1000, 50, 3, 0.1, 50, 0.1)
QUICK = Sizes(100, 10, 3, 0.02, 20, 300, 50, 1, 0.1, 20, 0.1)


# ------------------------------------------------------------------------------------------------
# The fake, in a process of its own (or in this one), behind one small control interface
# ------------------------------------------------------------------------------------------------
def _kind(method: str, path: str) -> str:
    if method == "POST" and path.endswith("/predictions"):
        return "create"
    if method == "GET" and path.startswith("/v1/predictions/"):
        return "poll"
    if method == "GET" and path.startswith("/files/"):
        return "download"
    if method == "GET" and path.startswith("/v1/models/"):
        return "schema"
    return f"{method} {path}"


class _Control:
    """What the benchmark asks of the fake: counters, the inputs it received, its CPU time."""

    def __init__(self, server: FakeReplicate, *, own_process: bool) -> None:
        self.server = server
        self.own_process = own_process  # its CPU time is this process's only when it has one of its own

    def handle(self, command: str, args: tuple[Any, ...]) -> Any:
        server = self.server
        if command == "set_predict_time":
            server.set_predict_time(MODEL, float(args[0]))
            return None
        if command == "snapshot":
            kinds = Counter(_kind(r.method, r.path) for r in server.requests)
            failed = sum(1 for r in server.requests if r.status is None or r.status >= 400)
            statuses = Counter(p.status for p in server.predictions)
            return {
                "kinds": dict(kinds),
                "requests": sum(kinds.values()),
                "failed_requests": failed,
                "predictions": sum(statuses.values()),
                "statuses": dict(statuses),
                "cpu": _own_cpu() if self.own_process else None,
                "errors": len(server.errors),
                "connections": server.connections_accepted,
            }
        if command == "last_input":
            return dict(server.predictions[-1].input or {})
        if command == "errors":
            return list(server.errors)
        raise ValueError(f"unknown command {command!r}")


def _start_fake(prediction_seconds: float) -> FakeReplicate:
    server = FakeReplicate(prediction_seconds=prediction_seconds, output_mode="url", token=TOKEN).start()
    server.add_model(MODEL, input_schema=MODEL_SCHEMA, output="images", official=True, file_format="png")
    return server


def _fake_main(conn: Any, prediction_seconds: float) -> None:
    """The child process: serve the fake and answer the parent's commands until told to stop."""
    server = _start_fake(prediction_seconds)
    control = _Control(server, own_process=True)
    conn.send(server.port)
    try:
        while True:
            command, args = conn.recv()
            if command == "stop":
                break
            try:
                conn.send(("ok", control.handle(command, args)))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        errors = list(server.errors)
        server.stop()
        conn.send(("ok", errors))


class Fake:
    """The fake Replicate: its address, a rewriting transport to it, and its control commands."""

    def __init__(self, prediction_seconds: float, *, in_process: bool = False) -> None:
        self.in_process = in_process
        self._server: FakeReplicate | None = None
        self._proc: Any = None
        if in_process:
            self._server = _start_fake(prediction_seconds)
            self._control = _Control(self._server, own_process=False)
            self.port = self._server.port
        else:
            ctx = multiprocessing.get_context("spawn")
            self._conn, child = ctx.Pipe()
            self._proc = ctx.Process(target=_fake_main, args=(child, prediction_seconds), daemon=True)
            self._proc.start()
            deadline = time.monotonic() + 60
            while not self._conn.poll(0.1):
                if not self._proc.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the fake Replicate process did not start (exit code {self._proc.exitcode})")
            self.port = int(self._conn.recv())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def files_url_for(self, url_or_key: str) -> str:  # what RewritingTransport asks of a server
        parts = urlsplit(url_or_key)
        key = parts.path if parts.scheme else "/" + url_or_key.lstrip("/")
        return f"{self.base_url}/files{key}"

    def transport(self) -> RewritingTransport:
        return RewritingTransport(self)  # type: ignore[arg-type,unused-ignore]  # duck-typed: port, files_url_for

    def call(self, command: str, *args: Any) -> Any:
        if self._server is not None:
            return self._control.handle(command, args)
        self._conn.send((command, args))
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"fake: {value}")
        return value

    def close(self) -> list[str]:
        errors: list[str] = []
        if self._server is not None:
            errors = list(self._server.errors)
            self._server.stop()
            return errors
        self._conn.send(("stop", ()))
        if self._conn.poll(30):
            errors = self._conn.recv()[1]
        self._proc.join(10)
        return errors


# ------------------------------------------------------------------------------------------------
# Measuring: wall time, CPU of this process and of the fake, the whole machine's CPU
# ------------------------------------------------------------------------------------------------
def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (zeros where it is unreadable)."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    total = sum(fields[:8])
    return total - idle, total


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Span:
    """One timed phase: wall seconds, this process's CPU seconds, the fake's CPU seconds and requests.

    ``fake_cpu`` is None when the fake runs in this process (its CPU is then inside ``cpu``).
    """

    wall: float = 0.0
    cpu: float = 0.0
    fake_cpu: float | None = 0.0
    kinds: Counter[str] = field(default_factory=Counter)
    predictions: int = 0
    connections: int = 0  # TCP connections the fake accepted


@contextlib.contextmanager
def measured(fake: Fake, span: Span) -> Iterator[None]:
    before = fake.call("snapshot")
    cpu0 = _own_cpu()
    t0 = time.perf_counter()
    yield
    span.wall = time.perf_counter() - t0
    span.cpu = _own_cpu() - cpu0
    after = fake.call("snapshot")
    span.fake_cpu = None if after["cpu"] is None else after["cpu"] - before["cpu"]
    span.kinds = Counter(after["kinds"]) - Counter(before["kinds"])
    span.predictions = after["predictions"] - before["predictions"]
    span.connections = after["connections"] - before["connections"]
    if after["failed_requests"] != before["failed_requests"] or after["errors"]:
        raise RuntimeError(f"the fake answered errors during a timed phase: {after}")


class Load:
    """The machine's CPU from start to :meth:`rows`: this benchmark, the fake and everything else."""

    def __init__(self, fake: Fake) -> None:
        self.fake = fake
        self.started = time.perf_counter()
        self.machine0 = _machine_cpu()
        self.own0 = _own_cpu()
        self.fake0: float | None = fake.call("snapshot")["cpu"]
        self.loadavg0 = os.getloadavg()

    def rows(self) -> list[Row]:
        wall = time.perf_counter() - self.started
        busy1, total1 = _machine_cpu()
        busy = busy1 - self.machine0[0]
        total = total1 - self.machine0[1]
        cores = os.cpu_count() or 1
        machine = 100.0 * busy / total if total else 0.0

        def share(cpu_seconds: float) -> float:
            return 100.0 * cpu_seconds / (wall * cores) if wall > 0 else 0.0

        own = share(_own_cpu() - self.own0)
        fake_now: float | None = self.fake.call("snapshot")["cpu"]
        if self.fake0 is None or fake_now is None:
            fake, split = 0.0, f"bench with the fake in it {own:.0f} %"
        else:
            fake = share(fake_now - self.fake0)
            split = f"bench {own:.0f} %, fake {fake:.0f} %"
        other = max(0.0, machine - own - fake)
        before = "/".join(f"{x:.2f}" for x in self.loadavg0)
        after = "/".join(f"{x:.2f}" for x in os.getloadavg())
        return [
            (
                f"machine CPU busy during these figures ({cores} cores, {wall:.1f} s)",
                f"{machine:.0f} % of all: {split}, other work {other:.0f} %",
                "—",
                None,
            ),
            ("load average (1/5/15 min) before → after", f"{before} → {after}", "—", None),
        ]


# ------------------------------------------------------------------------------------------------
# The two sides
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def replicate_token() -> Iterator[None]:
    """REPLICATE_API_TOKEN set for the provider (it reads only the environment), restored afterwards."""
    earlier = os.environ.get("REPLICATE_API_TOKEN")
    os.environ["REPLICATE_API_TOKEN"] = TOKEN
    try:
        yield
    finally:
        if earlier is None:
            os.environ.pop("REPLICATE_API_TOKEN", None)
        else:
            os.environ["REPLICATE_API_TOKEN"] = earlier


def make_router(home: Path, fake: Fake) -> Router:
    """The shipped plugins.toml, replicate-only profile, limits out of reach, the fake as Replicate."""
    raw = tomllib.loads((ROOT / "plugins.toml").read_text(encoding="utf-8"))
    for limit in raw["budget"]["limits"]:
        if not limit["scope"].startswith("free:"):  # the free credit's limit is config-checked against its option
            limit["usd"] = "1000000"
    replicate_cfg = raw["providers"]["replicate"]
    replicate_cfg["options"] = {**replicate_cfg.get("options", {}), "base_url": fake.base_url}
    replicate_cfg["models"]["text-to-image"]["fast"] = {"model": MODEL, "unit": "output", "price": "0.003"}
    raw["profiles"]["bench"] = {"providers": ["replicate"]}
    raw["default_profile"] = "bench"
    settings = settings_from_dict(raw, source="bench", profile="bench", env={"GENROUTE_HOME": str(home)})
    # Every installed plugin, as a user has them; the Replicate one around a provider whose transport
    # sends replicate.delivery to the fake (the only difference from the shipped provider).
    pm = make_plugin_manager()
    pm.unregister(name="replicate")
    pm.register(ReplicatePlugin(ReplicateProvider(transport_factory=fake.transport)), name="replicate")
    return Router(settings, plugin_manager=pm)


def request(tag: str, i: int) -> TextToImage:
    return TextToImage(prompt=f"{tag} {i}", width=SIDE, height=SIDE, tier="fast")


async def genroute_batch(router: Router, tag: str, count: int, concurrency: int) -> None:
    outcomes = await router.abatch([request(tag, i) for i in range(count)], concurrency=concurrency)
    failed = [o for o in outcomes if not isinstance(o, Result)]
    if failed:
        raise RuntimeError(f"{len(failed)} genroute requests failed, first: {failed[0]!r}")
    for outcome in outcomes:
        assert isinstance(outcome, Result) and not outcome.cached and outcome.provider == "replicate"
        assert len(outcome.artifacts) == 1


def sdk_client(fake: Fake) -> Client:
    return Client(
        api_token=TOKEN,
        base_url=fake.base_url,
        transport=fake.transport(),
        timeout=httpx.Timeout(30.0, connect=10.0, pool=10.0),  # genroute's defaults
    )


async def sdk_one(client: Client, template: dict[str, Any], prompt: str) -> list[bytes]:
    """One prediction through the SDK directly: blocking create, then every output read as bytes."""
    prediction = await client.models.predictions.async_create(
        model=MODEL, input={**template, "prompt": prompt}, wait=WAIT
    )
    if prediction.status != "succeeded":
        raise RuntimeError(f"SDK prediction {prediction.id} ended {prediction.status}: {prediction.error}")
    urls = prediction.output if isinstance(prediction.output, list) else [prediction.output]
    files = [await FileOutput(str(url), client).aread() for url in urls]
    if not files or not all(f.startswith(PNG_MAGIC) for f in files):
        raise RuntimeError("SDK prediction returned no PNG")
    return files


async def pool(count: int, concurrency: int, one: Callable[[int], Awaitable[Any]]) -> None:
    """``count`` calls with at most ``concurrency`` in flight (workers pulling from one counter)."""
    indices = iter(range(count))

    async def worker() -> None:
        for i in indices:
            await one(i)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))


async def sdk_batch(client: Client, template: dict[str, Any], tag: str, count: int, concurrency: int) -> None:
    await pool(count, concurrency, lambda i: sdk_one(client, template, f"{tag} {i}"))


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.3f} s"


def _per_request(kinds: Counter[str], predictions: int) -> str:
    order = ["create", "download", "poll", "schema"]
    parts = [f"{kinds[k] / predictions:.2f} {k}" for k in order if kinds.get(k)]
    parts += [f"{v / predictions:.2f} {k}" for k, v in kinds.items() if k not in order]
    return " + ".join(parts)


def _cpu_per(spans: list[Span], attr: str) -> str:
    """Mean CPU milliseconds per prediction over ``spans`` (of this process, or of the fake)."""
    predictions = sum(s.predictions for s in spans)
    values = [getattr(s, attr) for s in spans]
    if any(v is None for v in values) or not predictions:
        return "n/a"
    return f"{sum(values) / predictions * 1000:.2f} ms"


def _cpu_row(gr_spans: list[Span], sdk_spans: list[Span]) -> Row:
    client = f"{_cpu_per(gr_spans, 'cpu')} | {_cpu_per(sdk_spans, 'cpu')}"
    return (
        "  CPU per prediction: client genroute | client SDK | fake",
        f"{client} | {_cpu_per(gr_spans + sdk_spans, 'fake_cpu')}",
        "—",
        None,
    )


def _connections_row(gr_spans: list[Span], sdk_spans: list[Span]) -> Row:
    def per(spans: list[Span]) -> str:
        return f"{sum(s.connections for s in spans) / max(1, sum(s.predictions for s in spans)):.2f}"

    return (
        "  new TCP connections per prediction, counted at the fake: genroute | SDK",
        f"{per(gr_spans)} | {per(sdk_spans)}",
        "—",
        None,
    )


async def _warm(router: Router, client: Client, fake: Fake, count: int, concurrency: int) -> dict[str, Any]:
    """Both sides warmed up (schema fetch and cache, connections, SQLite pages, imports); the SDK's input.

    The SDK side sends exactly what genroute sent for the same request, with its own prompt.
    """
    await genroute_batch(router, "warm", count, concurrency)
    template: dict[str, Any] = fake.call("last_input")
    template.pop("prompt")
    await sdk_batch(client, template, "warm", count, concurrency)
    return template


async def _alternating(
    fake: Fake, sides: dict[str, Callable[[str], Awaitable[None]]], tag: str, count: int, rounds: int
) -> dict[str, list[Span]]:
    """``rounds`` of one batch per side, the order rotating each round; each side's spans.

    A side is called with a tag to make its prompts unique and runs ``count`` predictions.
    """
    spans: dict[str, list[Span]] = {name: [] for name in sides}
    names = list(sides)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            span = Span()
            with measured(fake, span):
                await sides[name](f"{name} {tag} {r}")
            if span.predictions != count:
                raise RuntimeError(f"{name}: {span.predictions} predictions for {count} requests")
            spans[name].append(span)
    return spans


async def provider_batch(router: Router, tag: str, count: int, concurrency: int) -> None:
    """The Replicate provider's ``run`` called directly, as the router would: no store, ledger or offers.

    The offer is the one the router chooses for these requests (all the same size and tier).
    """
    provider = router.providers["replicate"]
    (offer, *_) = (await router.aplan(request(tag, -1))).candidates
    settings = router.settings

    async def one(i: int) -> None:
        model = router.parse(request(tag, i))
        ctx = RunContext(
            settings=settings,
            provider_settings=settings.provider("replicate"),
            options=router.provider_options.get("replicate"),
            request_key=request_key(model),
            attempt=1,
            deadline=asyncio.get_running_loop().time() + 60,
            http_factory=httpx.AsyncClient,  # unused by the Replicate provider, which has its own clients
        )
        output = await provider.run(model, offer, ctx)
        assert len(output.files) == 1

    await pool(count, concurrency, one)


async def _sequential(router: Router, client: Client, template: dict[str, Any], count: int) -> tuple[float, float]:
    """Median latency of one request at a time: (genroute, SDK), interleaved request by request."""
    gr: list[float] = []
    sdk: list[float] = []
    for i in range(count):
        t0 = time.perf_counter()
        await sdk_one(client, template, f"sdk one by one {i}")
        t1 = time.perf_counter()
        result = await router.arun(request("genroute one by one", i))
        t2 = time.perf_counter()
        assert not result.cached
        sdk.append(t1 - t0)
        gr.append(t2 - t1)
    return statistics.median(gr), statistics.median(sdk)


async def overhead_figures(fake: Fake, home: Path, sizes: Sizes) -> list[Row]:
    n, conc, rounds = sizes.overhead_predictions, sizes.overhead_concurrency, sizes.overhead_rounds
    fake.call("set_predict_time", sizes.overhead_seconds)
    client = sdk_client(fake)
    warm = Span()
    async with make_router(home, fake) as router:
        with measured(fake, warm):
            template = await _warm(router, client, fake, 3 * conc, conc)
        spans = await _alternating(
            fake,
            {
                "sdk": lambda tag: sdk_batch(client, template, tag, n, conc),
                "genroute": lambda tag: genroute_batch(router, tag, n, conc),
                "provider": lambda tag: provider_batch(router, tag, n, conc),
            },
            "round",
            n,
            rounds,
        )
        gr_spans, sdk_spans, provider_spans = spans["genroute"], spans["sdk"], spans["provider"]
        one_gr, one_sdk = await _sequential(router, client, template, sizes.sequential_requests)
    await client._async_client.aclose()
    ratios = [g.wall / s.wall for g, s in zip(gr_spans, sdk_spans, strict=True)]
    ratio = statistics.median(ratios)
    gr_wall = statistics.median(s.wall for s in gr_spans)
    sdk_wall = statistics.median(s.wall for s in sdk_spans)
    gr_kinds: Counter[str] = sum((s.kinds for s in gr_spans), Counter())
    sdk_kinds: Counter[str] = sum((s.kinds for s in sdk_spans), Counter())
    gr_preds = sum(s.predictions for s in gr_spans)
    sdk_preds = sum(s.predictions for s in sdk_spans)
    per_prediction = sum(gr_kinds.values()) / gr_preds
    ideal = math.ceil(n / conc) * sizes.overhead_seconds
    what = f"{n} predictions of {sizes.overhead_seconds * 1000:g} ms at concurrency {conc}"
    return [
        (
            f"overhead: genroute + Replicate provider / SDK alone, wall ratio ({what}; median of {rounds} rounds)",
            f"{ratio:.3f} (rounds {min(ratios):.2f}–{max(ratios):.2f})",
            f"≤ {OVERHEAD_GOAL:g}",
            ratio <= OVERHEAD_GOAL,
        ),
        (
            "  wall, median: genroute abatch | SDK async_create + FileOutput.aread",
            f"{_ms(gr_wall)} | {_ms(sdk_wall)} (ideal {_ms(ideal)})",
            "—",
            None,
        ),
        _cpu_row(gr_spans, sdk_spans),
        (
            "  CPU per prediction: the provider's run() called directly (no router, store or ledger) | SDK",
            f"{_cpu_per(provider_spans, 'cpu')} | {_cpu_per(sdk_spans, 'cpu')}",
            "—",
            None,
        ),
        _connections_row(gr_spans, sdk_spans),
        (
            f"  one request at a time, median latency ({sizes.sequential_requests} each): genroute | SDK",
            f"{_ms(one_gr)} | {_ms(one_sdk)}: +{(one_gr - one_sdk) * 1000:.1f} ms, ratio {one_gr / one_sdk:.3f}",
            "—",
            None,
        ),
        (
            "HTTP requests per prediction at the fake, genroute (predictions end within the wait window)",
            f"{per_prediction:.2f} = {_per_request(gr_kinds, gr_preds)}; SDK alone "
            f"{sum(sdk_kinds.values()) / sdk_preds:.2f}; schema GETs in the warm-up: {warm.kinds['schema']}",
            f"≤ {REQUESTS_GOAL:g}",
            per_prediction <= REQUESTS_GOAL,
        ),
    ]


async def throughput_figures(fake: Fake, home: Path, sizes: Sizes) -> list[Row]:
    n, conc, rounds, seconds = sizes.batch_requests, sizes.batch_concurrency, sizes.batch_rounds, sizes.batch_seconds
    fake.call("set_predict_time", seconds)
    client = sdk_client(fake)
    async with make_router(home, fake) as router:
        template = await _warm(router, client, fake, 2 * conc, conc)
        spans = await _alternating(
            fake,
            {
                "sdk": lambda tag: sdk_batch(client, template, tag, n, conc),
                "genroute": lambda tag: genroute_batch(router, tag, n, conc),
            },
            "batch",
            n,
            rounds,
        )
        gr_spans, sdk_spans = spans["genroute"], spans["sdk"]
    await client._async_client.aclose()
    ideal = math.ceil(n / conc) * seconds
    goal = THROUGHPUT_FACTOR * ideal
    wall = statistics.median(s.wall for s in gr_spans)
    sdk_wall = statistics.median(s.wall for s in sdk_spans)
    busy = statistics.median(s.cpu / s.wall for s in gr_spans)
    sdk_busy = statistics.median(s.cpu / s.wall for s in sdk_spans)
    walls = ", ".join(f"{s.wall:.2f}" for s in gr_spans)
    return [
        (
            f"batch of {n} at concurrency {conc}, {seconds * 1000:g} ms predictions: wall "
            f"(median of {rounds}; ideal {ideal:.1f} s)",
            f"{wall:.3f} s = {wall / ideal:.2f} × ideal, {n / wall:.0f} req/s (rounds {walls} s)",
            f"≤ {goal:.2f} s ({THROUGHPUT_FACTOR:g} × ideal)",
            wall <= goal,
        ),
        (
            "  the same batch through the SDK alone (the floor here), median wall",
            f"{sdk_wall:.3f} s = {sdk_wall / ideal:.2f} × ideal, {n / sdk_wall:.0f} req/s",
            "—",
            None,
        ),
        _cpu_row(gr_spans, sdk_spans),
        _connections_row(gr_spans, sdk_spans),
        (
            "  client process busy during the batch: genroute | SDK",
            f"{busy * 100:.0f} % | {sdk_busy * 100:.0f} % of one core",
            "—",
            None,
        ),
    ]


async def cache_figures(fake: Fake, home: Path, sizes: Sizes) -> list[Row]:
    n, seconds = sizes.cache_requests, sizes.cache_seconds
    fake.call("set_predict_time", seconds)
    span = Span()
    misses: list[float] = []
    hits: list[float] = []
    async with make_router(home, fake) as router:
        with measured(fake, span):
            await genroute_batch(router, "warm", 5, 1)
            for i in range(n):
                t0 = time.perf_counter()
                result = await router.arun(request("cache", i))
                misses.append(time.perf_counter() - t0)
                assert not result.cached
            for i in range(n):
                t0 = time.perf_counter()
                result = await router.arun(request("cache", i))
                hits.append(time.perf_counter() - t0)
                assert result.cached
    miss, hit = statistics.median(misses), statistics.median(hits)
    ratio = miss / hit
    return [
        (
            f"cache hit speed-up: median miss / median hit ({n} requests one at a time, {seconds * 1000:g} ms "
            "predictions)",
            f"{ratio:.0f}× (miss {_ms(miss)}, hit {_ms(hit)})",
            f"≥ {CACHE_GOAL:g}×",
            ratio >= CACHE_GOAL,
        )
    ]


def figures(quick: bool = False, *, scratch: Path | None = None, fake_in_process: bool = False) -> list[Row]:
    """(name, measured, goal, ok) rows; ``ok`` is None for a row without a goal."""
    sizes = QUICK if quick else FULL
    scratch = scratch or Path.cwd() / ".genroute"
    scratch.mkdir(parents=True, exist_ok=True)
    fake = Fake(sizes.overhead_seconds, in_process=fake_in_process)
    rows: list[Row] = []
    try:
        load = Load(fake)
        with replicate_token(), tempfile.TemporaryDirectory(prefix="provider-bench-", dir=scratch) as home:
            base = Path(home)
            rows += asyncio.run(overhead_figures(fake, base / "overhead", sizes))
            rows += asyncio.run(throughput_figures(fake, base / "throughput", sizes))
            rows += asyncio.run(cache_figures(fake, base / "cache", sizes))
        rows += load.rows()
    finally:
        errors = fake.close()
    if errors:
        raise RuntimeError("the fake raised:\n" + "\n".join(errors))
    where = "in this process" if fake_in_process else "in its own process"
    rows.append(("fake Replicate", f"URL outputs, {SIDE}×{SIDE} PNG, {where}", "—", None))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (about 20 s)")
    parser.add_argument("--fake-in-process", action="store_true", help="run the fake's threads in this process")
    args = parser.parse_args()
    rows = figures(args.quick, fake_in_process=args.fake_in_process)
    table = Table("figure", "measured", "goal", "verdict", title="genroute Replicate provider benchmarks")
    for name, value, goal, ok in rows:
        verdict = "—" if ok is None else ("[green]pass[/]" if ok else "[red]FAIL[/]")
        table.add_row(name, value, goal, verdict)
    console = Console(width=160)
    console.print(table)
    console.print(
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
    )
    return 0 if all(ok is not False for _, _, _, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
