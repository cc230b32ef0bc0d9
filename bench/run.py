"""genroute benchmarks: one command, one table of figures beside their goals.

    python bench/run.py [--requests N]

Router overhead is measured on the mock provider with zero latency, in a temporary store and ledger:
the time spent inside the provider's ``run`` is measured separately and subtracted, so the figure is
what genroute itself adds (validation, key, store, offers, ledger reserve/settle, store write).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from genroute import Router, TextToImage
from genroute.config import settings_from_dict
from genroute.types import ProviderOutput

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def make_router(home: Path, **mock_options: Any) -> Router:
    """The shipped configuration on the offline profile, without budget limits, in a scratch home."""
    raw = tomllib.loads((ROOT / "plugins.toml").read_text(encoding="utf-8"))
    raw["budget"]["limits"] = []
    raw["providers"]["mock"]["options"] = {**raw["providers"]["mock"].get("options", {}), **mock_options}
    env = {"GENROUTE_HOME": str(home)}
    return Router(settings_from_dict(raw, source="bench", profile="offline", env=env))


def instrument(router: Router) -> list[float]:
    """Time spent inside the mock's run(), one entry per call."""
    provider = router.providers["mock"]
    inner: Callable[..., Awaitable[ProviderOutput]] = provider.run
    spent: list[float] = []

    async def timed(*args: Any, **kwargs: Any) -> ProviderOutput:
        start = time.perf_counter()
        try:
            return await inner(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    provider.run = timed  # type: ignore[method-assign]
    return spent


async def overhead(router: Router, count: int) -> tuple[list[float], list[float], float]:
    provider_time = instrument(router)
    requests = [TextToImage(prompt=f"bench {i}", width=64, height=64, tier="fast") for i in range(count)]
    for warm in range(20):  # imports, first connections, SQLite page cache
        await router.arun(TextToImage(prompt=f"warm {warm}", width=64, height=64, tier="fast"))
    provider_time.clear()
    miss: list[float] = []
    started = time.perf_counter()
    for request in requests:
        t0 = time.perf_counter()
        await router.arun(request)
        miss.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    miss = [total - inside for total, inside in zip(miss, provider_time, strict=True)]
    hit: list[float] = []
    for request in requests:
        t0 = time.perf_counter()
        result = await router.arun(request)
        hit.append(time.perf_counter() - t0)
        assert result.cached
    return miss, hit, count / wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    rows: list[tuple[str, str, str, bool]] = []
    # The store and ledger live on the working directory's disk, as they would for a user: some /tmp
    # mounts make every file creation an order of magnitude slower and would measure the disk, not genroute.
    scratch = Path.cwd() / ".genroute"
    scratch.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-", dir=scratch) as home, make_router(Path(home)) as router:
        miss, hit, rps = asyncio.run(overhead(router, args.requests))
    ms = 1000.0
    rows += [
        ("router overhead, cache miss, p50", f"{percentile(miss, 0.5) * ms:.3f} ms", "≤ 0.5 ms",
         percentile(miss, 0.5) <= 0.0005),
        ("router overhead, cache miss, p99", f"{percentile(miss, 0.99) * ms:.3f} ms", "—", True),
        ("cache hit, p50", f"{percentile(hit, 0.5) * ms:.3f} ms", "≤ 0.3 ms", percentile(hit, 0.5) <= 0.0003),
        ("cache hit, p99", f"{percentile(hit, 0.99) * ms:.3f} ms", "—", True),
        ("sequential misses per second (mock, 64×64 PNG)", f"{rps:.0f} req/s", "—", True),
        ("cache hits per second", f"{1 / statistics.mean(hit):.0f} req/s", "—", True),
    ]
    console = Console(width=120)
    table = Table("figure", "measured", "goal", "pass", title=f"genroute benchmarks ({args.requests} requests)")
    for name, value, goal, ok in rows:
        table.add_row(name, value, goal, "[green]pass[/]" if ok else "[red]FAIL[/]")
    console.print(table)
    machine = f"{platform.machine()} · {platform.system()} {platform.release()}"
    console.print(f"python {platform.python_version()} · {machine}")
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
