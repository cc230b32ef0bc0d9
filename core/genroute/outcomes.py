"""What a provider call comes to, for every way a request is served (run, stream, webhook job).

Its cost, its :class:`Result`, the files the store does not keep, the error when no offer could serve, and
the warning when a provider raised something unexpected.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

from . import billing
from .config import StoreSettings
from .errors import (
    AuthenticationFailed,
    DeadlineExceeded,
    GenrouteError,
    InputRefused,
    NoRouteAvailable,
    OutOfCredit,
    OverBudget,
    ProviderError,
    ProviderRejectedInput,
    Rejection,
    billed_amount,
)
from .provider import RunContext
from .secrets import redact
from .store import write_scratch
from .types import Artifact, Offer, OutputFile, ProviderOutput, RequestModel, Result

# The router's logger: these messages belong to a request's way through the router.
log = logging.getLogger("genroute.router")


def log_provider_bug(provider: str, method: str, exc: BaseException) -> None:
    """A provider raised something unexpected: say so, with its traceback at DEBUG — tokens masked, since
    exception messages may quote them."""
    log.warning("provider %s %s raised %s", provider, method, redact(f"{type(exc).__name__}: {exc}"))
    log.debug("%s", redact("".join(traceback.format_exception(exc))))


def provider_failure(exc: BaseException, provider: str, method: str, *, bug_retryable: bool = False) -> ProviderError:
    """What a provider's ``method`` raised (other than a ProviderError), as the ProviderError the router acts on.

    Another genroute error (say, InvalidRequest) fails the call for good; anything else is a provider bug:
    logged, its message masked (it may quote a token), retryable only if ``bug_retryable``.
    """
    if isinstance(exc, GenrouteError):
        return ProviderError(exc.message, provider=provider, retryable=False)
    log_provider_bug(provider, method, exc)
    return ProviderError(redact(f"unexpected {type(exc).__name__}: {exc}"), provider=provider, retryable=bug_retryable)


def failed_offer(offer: Offer, exc: ProviderError, reason: str) -> Rejection:
    """The rejection of an offer whose call failed with ``exc`` (``reason``: ``failed…``), logged as falling back;
    run and stream alike (``Router._try_offer``, :mod:`genroute.streaming`).

    A refused token or an empty account (:class:`AuthenticationFailed`, :class:`OutOfCredit`) is the user's to fix:
    the rejection keeps the provider's advice (its hint, which :func:`genroute.errors.route_hint` puts first should
    no offer serve), and a WARNING says so even when another provider serves the request instead — else a wrong
    token hides behind a fallback. Other failures are logged at INFO.
    """
    actionable = isinstance(exc, (AuthenticationFailed, OutOfCredit))
    hint = redact(exc.hint) if actionable else None
    log.log(
        logging.WARNING if actionable else logging.INFO,
        "%s/%s failed, falling back: %s",
        offer.provider,
        offer.model,
        reason + (f" ({hint})" if hint else ""),
    )
    refused = isinstance(exc, ProviderRejectedInput)
    transient = exc.retryable and not actionable and not refused
    return Rejection(
        offer.provider, offer.model, offer.tier, reason, refused_input=refused, hint=hint, transient=transient
    )


def extra_incurred(ctx: RunContext, provider: str) -> Decimal:
    """What ``provider`` put in ``ctx.extra["incurred"]`` (billed for work then cancelled), or 0 (see
    :func:`reported_incurred`)."""
    return reported_incurred(ctx, provider) or Decimal(0)


def reported_incurred(ctx: RunContext, provider: str) -> Decimal | None:
    """What ``provider`` (the offer's, whose call ``ctx`` was made for) put in ``ctx.extra["incurred"]``, or None
    when it reported nothing usable.

    Taken as :class:`ProviderError` takes ``incurred`` (:func:`genroute.errors.billed_amount`): a Decimal, an int, a
    float (through ``str``) or a numeric string, zero included; anything else (negative, NaN, infinity, another type)
    is logged as a warning naming ``provider`` and counts as nothing reported.
    """
    value = ctx.extra.get("incurred")
    if value is None:
        return None
    return billed_amount(value, provider=provider, source='ctx.extra["incurred"]')


def failure_incurred(exc: ProviderError, ctx: RunContext | None, provider: str) -> Decimal | None:
    """What ``provider`` reported it billed for a call that failed with ``exc``; None when it reported nothing usable.

    The error's own ``incurred`` when it carries an amount, zero included; else what the provider put in
    ``ctx.extra["incurred"]`` (:func:`reported_incurred`). An explicit zero is an answer (nothing was billed), not
    "nothing reported": only None lets the caller fall back to a guess (the estimate, for a stream that had
    already delivered text). Every failed call's reservation is closed through this, run and stream alike
    (``Router._close_failed``).
    """
    if exc.incurred is not None:
        return exc.incurred
    return reported_incurred(ctx, provider) if ctx is not None else None


def no_route(
    message: str, rejections: list[Rejection], *, pinned: str | None = None, cheaper_tiers: Sequence[str] = ()
) -> NoRouteAvailable:
    """NoRouteAvailable, or OverBudget when money, not capability, is what stopped every offer.

    ``pinned``: the provider the request was pinned to (``request.provider``), so that the hint speaks of it alone
    (:func:`genroute.errors.route_hint`). ``cheaper_tiers``: the tiers below the one asked for where an offer would
    fit the budget now (``Router._lower_tiers``), the only cheaper tiers the hint may suggest.
    """
    reasons = [r.reason for r in rejections]
    if any(r.startswith("over budget") for r in reasons) and not any(r.startswith("failed") for r in reasons):
        return OverBudget(message, rejections, pinned=pinned, cheaper_tiers=cheaper_tiers)
    tried = [r for r in rejections if r.reason.startswith("failed")]
    if tried and all(r.refused_input for r in tried) and not any(r.startswith("over budget") for r in reasons):
        return InputRefused(message, rejections, pinned=pinned)
    return NoRouteAvailable(message, rejections, pinned=pinned, cheaper_tiers=cheaper_tiers)


def deadline_exceeded(
    what: str,
    seconds: float,
    cut_short: Offer | None,
    rejections: list[Rejection],
    faster_tiers: Sequence[str] = (),
) -> DeadlineExceeded:
    """DeadlineExceeded naming the offer whose call the deadline cut short and what was tried before it.

    ``faster_tiers``: the tiers below the one asked for where an offer could serve (``Router._lower_tiers``), the
    only faster tiers the hint may suggest.
    """
    if cut_short is not None:
        stopped = Rejection(cut_short.provider, cut_short.model, cut_short.tier, "cut short by the deadline")
        rejections = [*rejections, stopped]
    offers = f" (offers: {'; '.join(str(r) for r in rejections)})" if rejections else ""
    return DeadlineExceeded(f"{what} did not finish within {seconds:g}s{offers}", faster_tiers=faster_tiers)


def make_result(
    key: str, offer: Offer, output: ProviderOutput, cost: Decimal, latency: float, attempts: int = 1
) -> Result:
    """The Result of a provider's output, before its files are kept."""
    return Result(
        request_key=key,
        task=offer.task,
        provider=offer.provider,
        model=offer.model,
        tier=offer.tier,
        text=output.text,
        segments=output.segments,
        estimated_cost=offer.estimate or Decimal(0),
        actual_cost=cost,
        latency_seconds=latency,
        attempts=attempts,
        job_id=output.job_id,
        created_at=datetime.now(UTC),
    )


def call_cost(offer: Offer, request: RequestModel | None, output: ProviderOutput) -> Decimal:
    """What the call cost: provider-reported, else measured against the catalogue entry, else the estimate."""
    if offer.entry is not None:
        return billing.actual(offer.entry, request, output)
    if output.actual_cost is not None:
        return output.actual_cost
    return offer.estimate or Decimal(0)


def scratch_artifacts(store: StoreSettings, files: list[OutputFile]) -> list[Artifact]:
    """Write files the store does not keep (store disabled, cache bypass) to ``<store.path>/scratch/``.

    The folder is the store's own overflow folder and has one writer, :func:`genroute.store.write_scratch`,
    which keeps it under ``store.scratch_max_bytes``. The returned paths exist on return.
    """
    return write_scratch(store.path / "scratch", files, max_bytes=store.scratch_max_bytes)
