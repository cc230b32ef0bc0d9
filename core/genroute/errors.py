"""One exception hierarchy, rooted in :class:`GenrouteError`.

Every error carries a ``hint`` saying what to do next and an ``exit_code`` the CLI uses, so a
script can tell a budget stop from a bad config without parsing messages.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from .money import to_decimal
from .secrets import redact

if TYPE_CHECKING:
    from .types import Result

# The router's logger: a bad amount on a provider's error belongs to a request's way through the router.
log = logging.getLogger("genroute.router")


class GenrouteError(Exception):
    """Base of every error genroute raises on purpose."""

    exit_code: int = 1
    default_hint: str = "run again with --debug for details"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class ConfigError(GenrouteError):
    """The configuration file or environment is invalid."""

    exit_code = 3
    default_hint = "fix the configuration and run again (see docs/configuration.md)"

    def __init__(
        self, message: str, *, file: str | None = None, key: str | None = None, hint: str | None = None
    ) -> None:
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.file = file
        self.key = key


class PluginError(GenrouteError):
    """A plugin misbehaved: bad registration, wrong return type, duplicate name."""

    exit_code = 11
    default_hint = "fix or uninstall the plugin named in the message"


class InvalidRequest(GenrouteError):
    """The request itself is malformed; nothing was spent."""

    exit_code = 4
    default_hint = "correct the named field and run again"

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message, hint=hint)
        self.field = field


class NotABatch(InvalidRequest, TypeError):
    """A batch was given something that is not an iterable of requests (a string, bytes, one request or one dict),
    which would be taken apart into meaningless "requests". Also a :class:`TypeError`; nothing was run."""

    default_hint = "pass an iterable of requests (a list, a generator…); for one request, [request] or run(request)"


_OVER_BUDGET_HINT = "raise the limit in plugins.toml, or wait for the next period"
_OVER_TOTAL_HINT = "raise the total limit in plugins.toml (a total limit never resets)"
_OVER_MIXED_HINT = (
    "raise the limit in plugins.toml; waiting for the next period frees only a daily or monthly limit "
    "(a total limit never resets)"
)
_PERIOD_IN_REFUSAL = re.compile(r"\((total|daily|monthly)\) would be exceeded")


def over_budget_hint(periods: Iterable[str | None], cheaper_tiers: Sequence[str] = ()) -> str:
    """What to do about offers over budget, from the periods of the limits that refused them (None: unknown).

    A total limit never resets, so waiting is offered only when no refusing limit is known to be a total one.
    ``cheaper_tiers`` are the tiers below the one asked for where an offer would fit the budget now (the router
    works them out); a cheaper tier is suggested only then, never on the chance that one exists.
    """
    known = {period for period in periods if period is not None}
    tier = f"ask for {_cheaper(cheaper_tiers)}, where an offer fits the budget" if cheaper_tiers else ""
    if "total" not in known:
        return f"raise the limit in plugins.toml, wait for the next period, or {tier}" if tier else _OVER_BUDGET_HINT
    if known == {"total"}:
        return f"{_OVER_TOTAL_HINT}, or {tier}" if tier else _OVER_TOTAL_HINT
    if not tier:
        return _OVER_MIXED_HINT
    raise_it, _, wait = _OVER_MIXED_HINT.partition("; ")
    return f"{raise_it}, or {tier}; {wait}"


def _cheaper(tiers: Sequence[str]) -> str:
    return f"the cheaper tier {tiers[0]}" if len(tiers) == 1 else f"a cheaper tier ({' or '.join(tiers)})"


class BudgetExceeded(GenrouteError):
    """A reservation would take a budget scope over its limit.

    Without a ``hint`` given, the hint follows the limit's period: a total limit never resets, so only a
    daily or monthly one is worth waiting for.
    """

    exit_code = 5
    default_hint = _OVER_BUDGET_HINT

    def __init__(
        self,
        *,
        scope: str,
        period: str,
        limit: Decimal,
        spent: Decimal,
        reserved: Decimal,
        asked: Decimal,
        hint: str | None = None,
    ) -> None:
        super().__init__(
            f"budget {scope} ({period}) would be exceeded: limit ${limit}, spent ${spent}, "
            f"reserved ${reserved}, asked ${asked}",
            hint=hint or over_budget_hint([period]),
        )
        self.scope = scope
        self.period = period
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.asked = asked


@dataclass(frozen=True)
class Rejection:
    """Why one offer was not used."""

    provider: str
    model: str
    tier: str
    reason: str
    refused_input: bool = False
    """The provider tried the request and refused its input (not a fault of the provider's)."""
    budget_period: str | None = None
    """For an offer over budget, the period of the limit that refused it (``total``, ``daily``, ``monthly``).

    It decides whether waiting for the next period can help (a total limit never resets). Left out, it is read
    from a reason that quotes a :class:`BudgetExceeded` message (``… (total) would be exceeded …``).
    """

    hint: str | None = None
    """For a provider's failure the user can act on (a refused token, no credit left), what the provider says
    to do about it; :func:`route_hint` puts it first."""
    transient: bool = False
    """The provider's call failed for a reason that passes (rate limited, overloaded, timed out) after every
    retry: trying again later may succeed."""

    def over_budget_period(self) -> str | None:
        """The period of the limit this offer was refused by, when it was refused for money and that is known."""
        if not self.reason.startswith("over budget"):
            return None
        if self.budget_period is not None:
            return self.budget_period
        found = _PERIOD_IN_REFUSAL.search(self.reason)
        return found.group(1) if found else None

    def __str__(self) -> str:
        return f"{self.provider} · {self.model} [{self.tier}]: {self.reason}"


class NoRouteAvailable(GenrouteError):
    """No offer could serve the request; ``rejections`` says why for each.

    Without a ``hint`` given, the hint follows the rejections (:func:`route_hint`): set the missing token's
    variable, raise the budget, ask for a tier on offer…; ``default_hint`` when they suggest nothing better.
    """

    exit_code = 6
    default_hint = "change the tier, profile or budget, or enable a provider that serves this task"
    hint_from_rejections = True

    def __init__(
        self,
        message: str,
        rejections: list[Rejection],
        *,
        hint: str | None = None,
        pinned: str | None = None,
        cheaper_tiers: Sequence[str] = (),
    ) -> None:
        lines = [message] + [f"  - {r}" for r in rejections]
        if not rejections:
            lines.append("  (no provider made any offer for this task)")
        if hint is None and self.hint_from_rejections:
            hint = route_hint(rejections, pinned=pinned, cheaper_tiers=cheaper_tiers)
        super().__init__("\n".join(lines), hint=hint)
        self.rejections = rejections
        self.pinned = pinned
        """The provider the request was pinned to (its ``provider`` field), when the router said."""
        self.cheaper_tiers = tuple(cheaper_tiers)
        """The tiers below the one asked for where an offer would have fit the budget, when the router said."""


class InputRefused(NoRouteAvailable):
    """Every provider that tried the request refused its input: the request, not the routing, must change."""

    exit_code = 4
    default_hint = "fix the input the message names (its file, format, size or allowed range) and run again"
    hint_from_rejections = False  # another profile or budget would not help: the input must change


class OverBudget(NoRouteAvailable):
    """Offers that could serve the request exist, but every one of them is over budget."""

    exit_code = 5
    default_hint = _OVER_BUDGET_HINT


# "unavailable: REPLICATE_API_TOKEN is not set", as providers' unavailable_reason words a missing token.
_MISSING_VARIABLE = re.compile(r"\b([A-Z][A-Z0-9_]*) is not set\b")
# The router's reasons for a provider no installed plugin registers: an offer made for it, a profile entry.
_NOT_REGISTERED = ("no installed plugin registers this provider", "not installed (no plugin registers it)")
_PINNED_ELSEWHERE = "not the pinned provider "
# The router's reason for a pinned provider that is installed but has no section in the configuration file.
_NO_SECTION = re.compile(r"installed, but (?P<file>.+) has no \[providers\.(?P<name>[^\]]+)\] section$")
_OTHER_MODEL = "not the pinned model "
# The router's reason for an offer a genroute_choose policy left out: "dropped by genroute_choose (plugin …)".
_DROPPED_BY_CHOOSER = "dropped by genroute_choose"


def route_hint(
    rejections: Sequence[Rejection], *, pinned: str | None = None, cheaper_tiers: Sequence[str] = ()
) -> str | None:
    """What to do when no offer could serve, from why each was passed over; None when they suggest nothing.

    A missing token names its variable; offers over budget ask for a higher limit, or a wait unless a total limit
    (which never resets) refused them, or a cheaper tier only if ``cheaper_tiers`` names one where an offer would
    fit the budget (:func:`over_budget_hint`; the router works them out) — but an offer refused for a scope the
    provider reported used up carries the provider's advice as its ``hint`` (the credit renews next month, allow
    paid work…), given instead, since a higher limit would not help; otherwise-usable offers of another tier
    name the tiers on offer; a provider that failed for a passing reason after every retry (rate limited,
    overloaded, timed out) asks to try again later. Several causes give several remedies, most direct first.
    Reasons the user cannot act on for this request (offers of other providers than the pinned one, a
    provider that makes no offer for the task…) add none; a provider's failure neither (its line says it).

    ``pinned`` is the provider the request was pinned to; without it, it is read from the other providers'
    ``not the pinned provider '…'`` reasons when there are any. With a pin only the pinned provider's rejections
    count (no other provider could serve), so a pin outside the profile names that provider alone, however many
    others the profile leaves out; a pin no installed plugin registers (a misspelt name) says so and names the
    providers that did offer; a pin to an installed provider the configuration file has no section for asks
    for that section. A pin outside the profile that cannot be told from the reasons gets a remedy naming
    no provider.
    """
    pin = pinned or _pin_from(rejections)
    if pin is not None:
        own = [r for r in rejections if r.provider == pin]
        if all(r.reason in _NOT_REGISTERED for r in own):
            return _unregistered_pin_hint(pin, rejections, certain=bool(own))
        rejections = own
    remedies: list[str] = []
    unoffered = _unoffered_model_hint(rejections)
    if unoffered:
        remedies.append(unoffered)
    variables: list[str] = []
    unavailable: list[str] = []  # providers unavailable for another reason than a missing variable
    cooling: list[str] = []
    outside: list[str] = []
    tiers: list[str] = []
    over_budget: list[str | None] = []  # the periods of the limits that refused offers (None: not said)
    used_up: list[str] = []  # the advice carried by offers refused for a scope the provider reported used up
    choosers: list[str] = []  # genroute_choose plugins that left out offers which could serve
    busy: list[str] = []  # providers whose calls failed for a passing reason (rate limits, overload, timeouts)
    too_many_outputs = unpriced = tried = False
    for r in rejections:
        reason = r.reason
        no_section = _NO_SECTION.match(reason) if reason.startswith("installed, but ") else None
        if no_section is not None:
            _add(
                remedies,
                f"add a [providers.{no_section['name']}] section with its models (see docs/configuration.md) to "
                f"{no_section['file']}, or drop the pin",
            )
        elif reason.startswith("failed"):
            tried = True
            if r.hint:  # a refused token, no credit left: the provider's own advice
                _add(remedies, r.hint)
            elif r.transient:
                _add(busy, r.provider)
        elif reason.startswith(_DROPPED_BY_CHOOSER):
            who = reason.removeprefix(_DROPPED_BY_CHOOSER).strip()
            _add(choosers, who[1:-1] if who.startswith("(") and who.endswith(")") else who)
        elif reason.startswith("unavailable:"):
            found = _MISSING_VARIABLE.findall(reason)
            if found:
                _add(variables, *found)
            else:
                _add(unavailable, r.provider)
        elif reason.startswith("over budget"):
            if r.hint:  # a scope the provider reported used up: its advice, not a higher limit, is the remedy
                _add(used_up, r.hint)
            else:
                over_budget.append(r.over_budget_period())
        elif reason.startswith("cooling down"):
            _add(cooling, r.provider)
        elif reason.startswith("asks ") and "outputs" in reason:
            too_many_outputs = True
        elif reason.startswith("unpriced"):
            unpriced = True
        elif reason.startswith("not in profile"):  # only asked of a provider pinned from outside the profile
            _add(outside, r.provider)
        elif reason.startswith("wrong tier"):
            _add(tiers, r.tier)
    if busy:
        were = "was" if len(busy) == 1 else "were"
        remedies.append(f"try again later ({_names(busy)} {were} rate-limited, overloaded or too slow on every try)")
    if variables:
        remedies.append(f"set {' or '.join(variables)} in the environment, or use another profile")
    if unavailable:
        remedies.append(f"make {_names(unavailable)} available again ({_its(unavailable)} lines say what is missing)")
    _add(remedies, *used_up)
    if over_budget:
        remedies.append(over_budget_hint(over_budget, cheaper_tiers))
    elif used_up and cheaper_tiers:
        remedies.append(f"ask for {_cheaper(cheaper_tiers)}, where an offer fits the budget")
    if cooling:
        remedies.append(f"wait for {_names(cooling)} to finish cooling down")
    if too_many_outputs:
        remedies.append("ask for fewer outputs (num_outputs)")
    if unpriced:
        remedies.append("give the model a price in plugins.toml")
    if outside:
        # Every plugin is asked when a pin is outside the profile, so only a known pin says which provider is meant.
        named = _names(outside) if pin is not None else "the pinned provider"
        remedies.append(f"use a profile that lists {named}, or drop the pin")
    if choosers:  # the policy would leave out offers of another tier too: no tier remedy then
        remedies.insert(
            0,
            f"the genroute_choose of {_names(choosers)} left out the offers that could serve: change its policy, "
            "or uninstall it",
        )
    elif tiers and not remedies and not tried:  # nothing else stood in the way: those offers were usable but for it
        remedies.append(f"ask for tier {' or '.join(tiers)}, the {'tier' if len(tiers) == 1 else 'tiers'} on offer")
    return "; or ".join(remedies) or None


def _unoffered_model_hint(rejections: Sequence[Rejection]) -> str | None:
    """The remedy for a pinned model no offer is for (a misspelt name), naming the models on offer; None when some
    offer is for it (its own line says why it was passed over) or no model was pinned.

    The pin is read from the ``not the pinned model '…'`` reasons; the models on offer are those offers', which
    passed every earlier check (profile, availability, task, provider pin), with their tiers.
    """
    pin: str | None = None
    offered: list[str] = []
    for r in rejections:
        if r.reason.startswith(_OTHER_MODEL):
            pin = pin or _quoted(r.reason.removeprefix(_OTHER_MODEL))
            _add(offered, f"{r.model} [{r.tier}]")
    if pin is None or any(r.model == pin for r in rejections):
        return None
    shown = offered[:_MAX_LISTED] + ([f"{len(offered) - _MAX_LISTED} more"] if len(offered) > _MAX_LISTED else [])
    return f"no provider offers the model {pin!r} (check its spelling); pin one of {_one_of(shown)}, or drop the pin"


_MAX_LISTED = 10


def _quoted(text: str) -> str | None:
    """The string a reason quotes as a Python literal (``'flux-dev'``), or None."""
    try:
        quoted = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return quoted if isinstance(quoted, str) else None


def _pin_from(rejections: Sequence[Rejection]) -> str | None:
    """The pinned provider, as quoted in the ``not the pinned provider '…'`` reason of another provider's offer."""
    for r in rejections:
        if r.reason.startswith(_PINNED_ELSEWHERE):
            try:
                quoted = ast.literal_eval(r.reason.removeprefix(_PINNED_ELSEWHERE))
            except (ValueError, SyntaxError):
                continue
            if isinstance(quoted, str):
                return quoted
    return None


def _unregistered_pin_hint(pin: str, rejections: Sequence[Rejection], *, certain: bool) -> str:
    """The remedy for a pin to a provider that made no offer: no installed plugin registers it (a misspelt name).

    ``certain``: the router said so (an offer or a profile entry for an unregistered provider). Otherwise the pin
    made no offer at all: unregistered, or a provider that does not serve this task.
    """
    offering: list[str] = []
    _add(offering, *(r.provider for r in rejections if r.model != "-" and r.reason not in _NOT_REGISTERED))
    unknown = f"no installed plugin registers {pin!r}" + ("" if certain else ", or it does not serve this task")
    if not offering:
        return f"{unknown}; check the name, or drop the pin"
    which = "the installed providers that offered" if certain else "the providers that offered"
    return f"{unknown}; pin one of {_one_of(offering)} ({which}), or drop the pin"


def _one_of(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _add(items: list[str], *new: str) -> None:
    items.extend(item for item in new if item not in items)


def _names(providers: list[str]) -> str:
    return " and ".join(providers)


def _its(providers: list[str]) -> str:
    return "its" if len(providers) == 1 else "their"


class DeadlineExceeded(GenrouteError):
    """The request's deadline passed; remote work was cancelled where the provider allows."""

    exit_code = 8
    default_hint = "raise deadline_seconds (or routing.deadline_seconds in plugins.toml)"

    def __init__(self, message: str, *, hint: str | None = None, faster_tiers: Sequence[str] = ()) -> None:
        if hint is None and faster_tiers:
            hint = f"{self.default_hint}, or ask for {_faster(faster_tiers)}, where an offer could serve"
        super().__init__(message, hint=hint)


def _faster(tiers: Sequence[str]) -> str:
    return f"the faster tier {tiers[0]}" if len(tiers) == 1 else f"a faster tier ({' or '.join(tiers)})"


class BatchInterrupted(GenrouteError):
    """A batch's request source raised partway; the requests it had already given ran to their end first.

    ``outcomes`` holds their results and errors in input order — they are paid for, so keep them; the
    source's own exception is ``__cause__``.
    """

    default_hint = (
        "keep the finished requests' outcomes (.outcomes), fix what the request source raised, "
        "then run the requests it had not given yet"
    )

    def __init__(self, cause: Exception, outcomes: list[Result | GenrouteError]) -> None:
        super().__init__(
            f"the batch's request source raised {type(cause).__name__}: {redact(str(cause))} after giving "
            f"{len(outcomes)} request(s); those ran to their end and their outcomes are in .outcomes"
        )
        self.outcomes = outcomes


class UnexpectedError(GenrouteError):
    """Something that is not a genroute error escaped while serving one request of a batch (a bug in genroute
    or in a plugin): the batch reports it as that request's error, and its other requests carry on."""

    exit_code = 70
    default_hint = "this is a bug in genroute or in a plugin: run again with --debug and report the traceback"


class StoreError(GenrouteError):
    """The result store could not be read or written."""

    exit_code = 9
    default_hint = "check the store directory (store.path in plugins.toml) is writable and on a local disk"


class ArtifactMissing(StoreError):
    """An artifact's file is gone: evicted from the result store (or its scratch folder) to stay under its size
    limit, or deleted. Raised by ``Artifact.read_bytes`` and ``Artifact.save``."""

    default_hint = (
        "run the request again (its stored result is gone too, so it runs and is paid for again); to keep "
        "outputs, copy them with Artifact.save() as soon as a result comes back, or raise [store] max_bytes "
        "in plugins.toml"
    )


class LedgerError(GenrouteError):
    """The budget ledger could not be read or written."""

    exit_code = 12
    default_hint = "check the ledger directory (ledger.path in plugins.toml) is writable and on a local disk"


BilledAmount = Decimal | int | float | str
"""What a provider may give as money it was billed: a Decimal, an int, a float (read through ``str``, so ``0.1``
is ten cents) or a numeric string."""


def billed_amount(value: object, *, provider: str, source: str = "incurred") -> Decimal | None:
    """``value``, money a provider says it was billed, as a finite Decimal of zero or more; None if it is no amount.

    A Decimal, an int, a float (through ``str``) or a numeric string is taken. Anything else — a negative amount, NaN,
    infinity, a boolean, another type — is logged as a warning naming ``provider`` and ``source`` and comes back as
    None, "nothing reported": the router must always be able to settle or release the reservation, and raising here
    (inside the provider's own ``raise`` or ``except``) would only swap the provider's error for a bug of its own.
    """
    if value is None:
        return None
    problem: str | None = None
    amount: Decimal | None = None
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        problem = f"a {type(value).__name__}, not an amount of money"
    else:
        try:
            amount = to_decimal(value)
        except ValueError:
            problem = "not a finite number"
        else:
            if amount < 0:
                problem = "negative"
    if problem is None:
        return amount
    shown = redact(repr(value))[:80]
    log.warning(
        "provider %s reported %s=%s, which is %s; it is ignored (no money is settled for it)",
        provider or "?",
        source,
        shown,
        problem,
    )
    return None


class ProviderError(GenrouteError):
    """A provider call failed.

    ``retryable`` says whether the same provider may succeed if asked again; ``retry_after`` is
    the provider's own wait hint in seconds; ``incurred`` is money the provider billed anyway
    (for example a failed prediction's compute time), settled instead of released.

    ``incurred`` is normalised whenever it is set (at construction, or assigned later as ``exc.incurred = …``):
    a Decimal, an int, a float (read through ``str``, so ``0.1`` is ten cents) or a numeric string becomes a
    ``Decimal``. A value that is no amount of money — negative, NaN, infinity, a boolean, another type — is not
    raised about (that would replace the provider's error with a bug of its own): a warning naming the provider
    is logged and ``incurred`` becomes ``None``, so the router can always close the reservation (released, unless
    earlier attempts on the offer were billed). Reading ``incurred`` gives a finite ``Decimal`` of zero or more,
    or ``None``.
    """

    exit_code = 7
    retryable: bool = False
    default_hint = "the request fell through every provider; see the message for the last failure"

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        retryable: bool | None = None,
        retry_after: float | None = None,
        incurred: BilledAmount | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(f"{provider}: {message}" if provider else message, hint=hint)
        self.provider = provider
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after
        self.incurred = incurred

    @property
    def incurred(self) -> Decimal | None:
        """Money the provider billed for the failed call: a finite Decimal of zero or more, or None."""
        return self._incurred

    @incurred.setter
    def incurred(self, value: BilledAmount | None) -> None:
        self._incurred = billed_amount(value, provider=self.provider)


class RateLimited(ProviderError):
    retryable = True
    default_hint = "wait and retry, or lower batch concurrency"


class ProviderUnavailable(ProviderError):
    retryable = True
    default_hint = "the provider is overloaded or down; genroute retries and falls back automatically"


class ProviderTimeout(ProviderError):
    retryable = True
    default_hint = "the provider did not answer in time; raise the deadline or use another provider"


class AuthenticationFailed(ProviderError):
    default_hint = "check the provider's token environment variable"


class OutOfCredit(ProviderError):
    default_hint = "add credit with the provider; genroute routes elsewhere until then"


class ModelNotFound(ProviderError):
    default_hint = "check the model name in plugins.toml"


class ProviderRejectedInput(ProviderError):
    default_hint = "change the named input to fit the model's allowed range"


class ModelFailed(ProviderError):
    default_hint = "the model itself failed on this input; try another seed, prompt or tier"


class RemoteCanceled(ProviderError):
    """The provider's job was canceled before it finished (from the provider's side, or after a deadline)."""

    default_hint = "run the request again if you still want its result"


class OutputRejected(ProviderError):
    default_hint = "the provider's output broke a safety limit (size, type or host); see the message"
