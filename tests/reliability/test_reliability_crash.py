"""Crash: ``kill -9`` a running ``genroute batch``, then recover.

The dead process leaves reservations open (its calls were in flight). They must not be reclaimed early —
their TTL outlives the request deadline — and must be reclaimed once expired (checked with a ledger whose
clock is moved past the TTL). The ledger and the store open cleanly, and running the same batch again
finishes only what is missing: lines finished before the crash come from the store at no cost, the others
are charged exactly once.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

from reliability_support import (
    MOCK_FAST_PRICE,
    cli_env,
    fast_image,
    fast_image_line,
    genroute_command,
    mock_only_pm,
    read_jsonl,
    settled,
    usage_row,
    write_jsonl,
)

from genroute.config import Settings, load_settings
from genroute.keys import request_key
from genroute.ledger import Ledger
from genroute.router import Router
from genroute.store import ResultStore
from genroute.types import Result, parse_request

REQUESTS = 200
CONCURRENCY = 4
DEADLINE = 5.0  # seconds; a reservation lives max(ttl, deadline + 60) = 65 s
CONFIG = f"""\
default_profile = "offline"

[profiles.offline]
providers = ["mock"]

[budget]
limits = [{{ scope = "simulated", period = "total", usd = "10" }}]

[ledger]
path = "state/ledger"
reservation_ttl_seconds = 1

[store]
path = "state/store"

[routing]
deadline_seconds = {DEADLINE}
max_attempts = 1

[providers.mock]
billing = "simulated"
[providers.mock.options]
latency_seconds = 0.05
[providers.mock.models.text-to-image]
fast = {{ model = "mock/flux-schnell", unit = "output", price = "0.003" }}
"""


def batch_command(requests: Path, results: Path) -> list[str]:
    return [*genroute_command(), "batch", str(requests), "--concurrency", str(CONCURRENCY),
            "--results", str(results), "--no-progress"]  # fmt: skip


def test_kill_dash_nine_mid_batch_then_rerun(tmp_path: Path) -> None:
    config = tmp_path / "plugins.toml"
    config.write_text(CONFIG, encoding="utf-8")
    env = cli_env(tmp_path, config)
    settings: Settings = load_settings(config, env=env)
    lines = [fast_image_line(f"crash test {i}") for i in range(REQUESTS)]
    keys = [request_key(parse_request(line)) for line in lines]
    assert len(set(keys)) == REQUESTS
    requests = write_jsonl(tmp_path / "requests.jsonl", lines)
    results = tmp_path / "out.jsonl"

    # -- run, and kill -9 once some results are out and calls are in flight --------------------------------
    with (tmp_path / "first.stderr").open("w") as stderr:
        proc = subprocess.Popen(batch_command(requests, results), cwd=tmp_path, env=env, stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        in_flight = 0
        while proc.poll() is None and time.monotonic() < deadline:
            written = results.read_bytes().count(b"\n") if results.exists() else 0  # whole lines only
            if written >= 30 and settings.ledger.path.exists():
                with Ledger(settings.ledger.path) as peek:
                    in_flight = len(peek.open_reservations())
                if in_flight:
                    break
            time.sleep(0.01)
        assert proc.poll() is None, f"the batch ended (exit {proc.returncode}) before it could be killed"
        assert in_flight, "no call was in flight after two minutes"
        proc.kill()  # SIGKILL: no finally, no atexit, no flush
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    assert proc.returncode == -9
    killed_at = time.time()

    # Every line written before the crash is whole JSON (a line is one write), and reports a success.
    done_before = read_jsonl(results)
    assert 30 <= len(done_before) < REQUESTS
    assert all(line["status"] == "ok" for line in done_before)

    # -- the ledger and store open cleanly; the dead process's reservations are still open ------------------
    with Ledger(settings.ledger.path, settings.limits()) as ledger:
        orphans = ledger.open_reservations()
        assert 1 <= len(orphans) <= CONCURRENCY
        for orphan in orphans:
            assert orphan.expires_at > killed_at
            assert orphan.expires_at - orphan.created_at >= DEADLINE + 60 - 1  # outlives the deadline
            assert orphan.request_key in keys
        assert ledger.reclaim_expired() == 0, "reservations of a call that may still run were reclaimed early"
        first_entries = list(ledger.entries())
    first_settled = settled(first_entries)
    assert all(e.status == "settled" for e in first_entries)
    with ResultStore(settings.store.path, max_bytes=settings.store.max_bytes) as store:
        stored = {key for key in keys if store.get(key) is not None}
    # What the results file says is done is in the store; what was in flight is not.
    assert {line["request_key"] for line in done_before} <= stored
    assert not {o.request_key for o in orphans} & stored
    # A call settled but not yet stored when the process died was paid for and will be paid again:
    # that window (settle → store write) is a few milliseconds per call.
    settled_not_stored = {e.request_key for e in first_settled} - stored
    assert len(settled_not_stored) <= CONCURRENCY

    # -- once past their expiry, the orphans are reclaimed by whoever looks next ----------------------------
    later = Ledger(settings.ledger.path, settings.limits(), clock=lambda: time.time() + 3600)
    with later:
        assert later.reclaim_expired() == len(orphans)
        assert later.open_reservations() == []
        assert usage_row(later.usage(), "simulated").reserved == 0
        reclaimed = [e for e in later.entries() if e.status == "reclaimed"]
    assert sorted(e.id for e in reclaimed) == sorted(o.id for o in orphans)
    assert all(e.actual == 0 for e in reclaimed)

    # -- a Router on the same directories works --------------------------------------------------------------
    with Router(settings, plugin_manager=mock_only_pm()) as router:
        probe = router.run(fast_image("after the crash"))
        assert isinstance(probe, Result) and not probe.cached and probe.actual_cost == MOCK_FAST_PRICE
        assert router.store is not None and router.store.stats().entries >= len(stored) + 1
        spent_before_rerun = usage_row(router.ledger.usage(), "simulated").spent

    # -- the same batch again: only the missing lines cost anything ------------------------------------------
    rerun = subprocess.run(
        batch_command(requests, results), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "Traceback" not in rerun.stderr
    second = read_jsonl(results)[len(done_before) :]
    assert len(second) == REQUESTS and all(line["status"] == "ok" for line in second)
    by_key = {line["request_key"]: line for line in second}
    assert set(by_key) == set(keys)
    for key, line in by_key.items():
        if key in stored:
            assert line["cached"] is True and Decimal(line["cost"]) == 0, line
        else:
            assert line["cached"] is False and Decimal(line["cost"]) == MOCK_FAST_PRICE, line

    with Ledger(settings.ledger.path, settings.limits()) as ledger:
        entries = list(ledger.entries())
        row = usage_row(ledger.usage(), "simulated")
        assert ledger.open_reservations() == []
    before = {e.id for e in first_entries}
    new_settled = [e for e in settled(entries) if e.id not in before and e.request_key in keys]
    charged_again = Counter(e.request_key for e in new_settled)
    assert sorted(charged_again) == sorted(set(keys) - stored), "the rerun charged a line that was already done"
    assert set(charged_again.values()) == {1}
    total = Counter(e.request_key for e in settled(entries) if e.request_key in keys)
    twice = {key for key, count in total.items() if count > 1}
    assert twice == settled_not_stored, "only a call caught between settle and store write may be paid twice"
    assert sum(total.values()) == REQUESTS + len(twice)
    assert row.reserved == 0
    assert row.spent == spent_before_rerun + MOCK_FAST_PRICE * (REQUESTS - len(stored))
    assert row.spent == sum((e.actual for e in settled(entries)), Decimal(0))
    savings = [e for e in entries if e.status == "saving" and e.request_key in keys]
    assert len(savings) == len(stored)
