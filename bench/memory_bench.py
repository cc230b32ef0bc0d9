"""Peak memory of ``genroute batch`` streaming a 10,000-request JSONL file: goal ≤ 200 MB RSS.

    python bench/memory_bench.py [--requests N] [--concurrency N]

The batch runs as its own process — the installed ``genroute`` script, as a user would start it, with every
installed plugin loaded — on the mock with zero latency and 64×64 PNG outputs, with a fresh ledger and
store under the working directory's ``.genroute/``. Its peak resident set size comes from the kernel's own
accounting of that one child (``os.wait4``'s ``ru_maxrss``), cross-checked against ``VmHWM`` polled from
``/proc`` while it runs. The batch must succeed on every line, or the figure means nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from run import Figure

GOAL_MB = 200.0
CONFIG = """\
default_profile = "offline"

[profiles.offline]
providers = ["mock"]

[budget]
limits = [{ scope = "simulated", period = "total", usd = "1000000" }]  # checked, never binding

[ledger]
path = "ledger"

[store]
path = "store"

[providers.mock]
billing = "simulated"
[providers.mock.options]
latency_seconds = 0.0
[providers.mock.models.text-to-image]
fast = { model = "mock/flux-schnell", unit = "output", price = "0.003" }
"""


def genroute_command() -> list[str]:
    script = Path(sys.executable).with_name("genroute")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "genroute.cli"]


def vm_hwm_kib(pid: int) -> int:
    """The process's peak RSS so far (``VmHWM``), in KiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_batch(home: Path, requests: int, concurrency: int) -> tuple[float, float, float]:
    """(peak RSS MB by wait4, peak RSS MB by /proc polling, requests per second) of one batch run."""
    config = home / "plugins.toml"
    config.write_text(CONFIG, encoding="utf-8")
    source = home / "requests.jsonl"
    with source.open("w", encoding="utf-8") as handle:
        for i in range(requests):
            line = {"task": "text-to-image", "prompt": f"memory {i}", "tier": "fast", "width": 64, "height": 64}
            handle.write(json.dumps(line) + "\n")
    results = home / "results.jsonl"
    env = dict(os.environ, GENROUTE_HOME=str(home), GENROUTE_CONFIG=str(config), NO_COLOR="1")
    env.pop("GENROUTE_PROFILE", None)
    command = [*genroute_command(), "batch", str(source), "--concurrency", str(concurrency),
               "--results", str(results), "--no-progress"]  # fmt: skip
    started = time.perf_counter()
    with (home / "batch.stderr").open("w") as stderr:
        proc = subprocess.Popen(command, cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    polled = 0
    status = None
    while status is None:
        polled = max(polled, vm_hwm_kib(proc.pid))
        pid, raw, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            status = raw
        else:
            time.sleep(0.05)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (home / "batch.stderr").read_text()[-2000:]
        raise RuntimeError(f"genroute batch exited {proc.returncode}:\n{tail}")
    with results.open(encoding="utf-8") as handle:
        done = sum(1 for line in handle if json.loads(line)["status"] == "ok")
    if done != requests:
        raise RuntimeError(f"only {done} of {requests} requests succeeded")
    kib = 1024.0  # ru_maxrss and VmHWM are KiB on Linux
    return usage.ru_maxrss / kib, polled / kib, requests / wall


def figures(requests: int = 10_000, concurrency: int = 8, scratch: Path | None = None) -> list[Figure]:
    scratch = scratch or Path.cwd() / ".genroute"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="memory-bench-", dir=scratch) as home:
        peak, polled, rate = run_batch(Path(home), requests, concurrency)
    if polled > peak * 1.05:  # the kernel's count is the truth; a higher poll would mean it measured the wrong thing
        raise RuntimeError(f"peak RSS disagrees: wait4 {peak:.1f} MB, /proc {polled:.1f} MB")
    return [
        Figure(f"genroute batch of {requests} JSONL requests, peak RSS (mock, 64×64 PNG)", peak, "MB", GOAL_MB),
        Figure(f"genroute batch of {requests} JSONL requests at concurrency {concurrency}", rate, "req/s"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    found = figures(args.requests, args.concurrency)
    if args.markdown:
        print("| figure | measured | goal | verdict |\n|---|---|---|---|")
        for figure in found:
            print("| " + " | ".join(figure.row()) + " |")
    else:
        table = Table("figure", "measured", "goal", "verdict", title="genroute memory benchmark")
        for figure in found:
            name, value, goal, verdict = figure.row()
            style = {"pass": "green", "FAIL": "red"}.get(verdict, "")
            table.add_row(name, value, goal, f"[{style}]{verdict}[/]" if style else verdict)
        Console(width=130).print(table)
    return 0 if all(f.ok is not False for f in found) else 1


if __name__ == "__main__":
    sys.exit(main())
