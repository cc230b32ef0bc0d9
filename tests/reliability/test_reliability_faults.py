"""Faults: a mock failing 30 % of attempts with mixed transient errors, and a second provider to fall back to.

Every request must end in a ``Result`` or a typed ``GenrouteError``; a retried request is charged once (one
settled entry, at the price of the provider that served it); a failed offer releases its reservation; and
fallback to the second provider happens exactly when the profile lists it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from reliability_support import MOCK_FAST_PRICE, BackupPlugin, count_calls, fast_image, usage_row

import genroute_mock.plugin
from conftest import mock_section
from genroute.config import Settings
from genroute.errors import GenrouteError, NoRouteAvailable, OverBudget
from genroute.keys import request_key
from genroute.ledger import LedgerEntry
from genroute.router import Router
from genroute.types import Result

TRANSIENT = ["rate_limit", "unavailable", "timeout"]
RAISED = {"rate_limit": "RateLimited", "unavailable": "ProviderUnavailable", "timeout": "ProviderTimeout",
          "invalid_input": "ProviderRejectedInput"}  # fmt: skip
BACKUP_PRICE = Decimal("0.004")  # dearer than the mock, so the mock is always tried first
MAX_ATTEMPTS = 2
REQUESTS = 300


def backup_section(**options: Any) -> dict[str, Any]:
    return {
        "billing": "simulated",
        "priority": 2000,
        "options": {"retry_after_seconds": 0.001, **options},
        "models": {
            "text-to-image": {"fast": {"model": "backup/flux-schnell", "unit": "output", "price": str(BACKUP_PRICE)}}
        },
    }


def faulty_settings(settings_factory: Callable[..., Settings], profile: str, kinds: list[str]) -> Settings:
    return settings_factory(
        {
            "mock": mock_section(failure_rate=0.3, failure_kinds=kinds, retry_after_seconds=0.001, seed=11),
            "backup": backup_section(failure_rate=0.3, failure_kinds=kinds, seed=29),
        },
        profiles={"fallback": ["mock", "backup"], "solo": ["mock"]},
        profile=profile,
        limits=[{"scope": "simulated", "period": "total", "usd": "100"}],
        routing={"max_attempts": MAX_ATTEMPTS, "deadline_seconds": 60},
    )


@pytest.mark.parametrize("kinds", [TRANSIENT, [*TRANSIENT, "invalid_input"]], ids=["transient", "with-invalid-input"])
@pytest.mark.parametrize("profile", ["fallback", "solo"])
def test_every_request_ends_typed_and_is_charged_once(
    settings_factory: Callable[..., Settings],
    router_factory: Callable[..., Router],
    profile: str,
    kinds: list[str],
) -> None:
    router = router_factory(faulty_settings(settings_factory, profile, kinds), genroute_mock.plugin, BackupPlugin())
    log = count_calls(router)
    requests = [fast_image(f"faulty {i}") for i in range(REQUESTS)]
    outcomes = router.batch(requests, concurrency=8)

    entries = list(router.ledger.entries())
    by_key: dict[str, list[LedgerEntry]] = defaultdict(list)
    for entry in entries:
        by_key[entry.request_key].append(entry)
    attempts: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for provider, key, attempt, outcome in log.calls:
        attempts[(provider, key)].append((attempt, outcome))

    fallbacks = retried = failed = 0
    for request, outcome in zip(requests, outcomes, strict=True):
        key = request_key(request)
        assert isinstance(outcome, Result | GenrouteError), outcome
        mine = by_key[key]
        charged = [e for e in mine if e.status == "settled"]
        released = [e for e in mine if e.status == "released"]
        assert len(charged) + len(released) == len(mine), mine  # nothing else: no saving, nothing reclaimed
        mock_tries = attempts[("mock", key)]
        backup_tries = attempts[("backup", key)]
        assert 1 <= len(mock_tries) <= MAX_ATTEMPTS and len(backup_tries) <= MAX_ATTEMPTS
        if profile == "solo":
            assert backup_tries == [], "the solo profile must never fall back to the backup"
        if mock_tries[-1][1] != "ok":  # the mock's offer failed: after its last try, or at once on bad input
            assert len(mock_tries) == MAX_ATTEMPTS or mock_tries[-1][1] == "ProviderRejectedInput", mock_tries
        if isinstance(outcome, Result):
            assert len(charged) == 1, f"charged {len(charged)} times"
            (entry,) = charged
            price = MOCK_FAST_PRICE if outcome.provider == "mock" else BACKUP_PRICE
            assert entry.provider == outcome.provider
            assert entry.actual == outcome.actual_cost == price  # once, whatever the number of tries
            assert outcome.attempts == len(attempts[(outcome.provider, key)])
            retried += outcome.attempts > 1
            if outcome.provider == "backup":
                fallbacks += 1
                assert profile == "fallback"
                assert [e.provider for e in released] == ["mock"]
            else:
                assert released == [] and backup_tries == []
        else:
            failed += 1
            assert isinstance(outcome, NoRouteAvailable) and not isinstance(outcome, OverBudget), outcome
            assert charged == [], "a request that failed everywhere was charged"
            assert sorted(e.provider for e in released) == (["backup", "mock"] if profile == "fallback" else ["mock"])
            assert "failed after" in outcome.message

    row = usage_row(router.ledger.usage(), "simulated")
    results = [o for o in outcomes if isinstance(o, Result)]
    assert row.reserved == 0 and router.ledger.open_reservations() == []
    assert row.spent == sum((r.actual_cost for r in results), Decimal(0))
    assert len(results) + failed == REQUESTS
    # The faults really happened, in every kind asked for, and exercised what this test is about.
    seen = log.outcomes()
    assert {RAISED[k] for k in kinds} <= set(seen), seen
    assert retried > 0
    if profile == "fallback":
        assert fallbacks > 0
    else:
        assert failed > 0
