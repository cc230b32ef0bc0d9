"""One request's way through genroute: store → offers → choose → reserve → run → settle → store."""

from __future__ import annotations

import asyncio
import difflib
import enum
import inspect
import logging
import operator
import sys
import time
import traceback
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import aclosing
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import httpx
import pluggy
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from . import billing, webhook_jobs
from .config import BudgetLimit, Settings, load_settings
from .cooldown import Cooldowns, SharedCooldowns
from .errors import (
    BatchInterrupted,
    BudgetExceeded,
    ConfigError,
    GenrouteError,
    InvalidRequest,
    NotABatch,
    OutOfCredit,
    OutputRejected,
    PluginError,
    ProviderError,
    ProviderRejectedInput,
    ProviderTimeout,
    Rejection,
    UnexpectedError,
)
from .inflight import InFlight, await_elsewhere
from .jobs import Job, JobStore, JobSync
from .keys import request_key
from .ledger import Headroom, HeldElsewhere, Ledger, Reservation
from .media import INPUT_TOO_LARGE_HINT, audio_cut_short, sniff_media_type
from .money import fmt_usd, quantize
from .outcomes import (
    call_cost,
    deadline_exceeded,
    extra_incurred,
    failed_offer,
    failure_incurred,
    make_result,
    no_route,
    provider_failure,
    scratch_artifacts,
)
from .plugins import (
    async_hook_message,
    collect_registrations,
    default_plugin_manager,
    describe_plugin,
    plugin_label,
    refuse_coroutine,
)
from .provider import Provider, RunContext, checked_unavailable_reason
from .retry import Backoff
from .secrets import redact
from .store import ResultStore
from .streaming import SyncTextStream, TextStream
from .thread_loops import ThreadLoop, ThreadLoops
from .types import (
    REQUEST_TYPES,
    TASKS,
    TIERS,
    Offer,
    OutputFile,
    ProviderOutput,
    RequestModel,
    Result,
    parse_request,
)

log = logging.getLogger("genroute.router")

RequestLike = RequestModel | Mapping[str, Any]

ACLOSE_TIMEOUT_SECONDS = 10.0
"""How long a provider's ``aclose`` may take when the router closes before it is abandoned (with a warning)."""

_DROPPED = "dropped by genroute_choose"  # how a rejection of an offer the policy hook left out starts


def _call_hookimpl(impl: Any, **kwargs: Any) -> Any:
    """One plugin's implementation of a hook, called on its own with the arguments it declares (as pluggy does)."""
    return impl.function(*[kwargs[name] for name in impl.argnames])


def _fault(exc: BaseException) -> str:
    """What a plugin raised, for a message: its type and (masked) text."""
    return redact(f"{type(exc).__name__}: {exc}")


def _returned(answer: object, expected: str) -> str:
    """What a hook answered instead of ``expected``, for a message: ``returned int, not …``, or that it is an
    ``async def`` (whose coroutine is closed, so that Python does not warn it was never awaited)."""
    if inspect.iscoroutine(answer):
        answer.close()
        return f"is an async def (it returned a coroutine); make it a plain def returning {expected}"
    return f"returned {type(answer).__name__}, not {expected}"


class RoutePlan(BaseModel):
    """Where a request would go and what it would cost, decided without spending anything."""

    model_config = ConfigDict(frozen=True)

    request_key: str
    cached: bool
    candidates: list[Offer]
    rejections: list[Rejection]

    @property
    def chosen(self) -> Offer | None:
        return self.candidates[0] if self.candidates else None


@dataclass
class BatchItem:
    """One line of a batch: its position, and a result or a genroute error."""

    index: int
    result: Result | None = None
    error: GenrouteError | None = None


class _End(enum.Enum):
    END = enum.auto()


class _BatchSource:
    """A batch's requests, pulled one at a time; once pulling raises, ``error`` keeps what it raised."""

    def __init__(self, requests: Iterable[RequestLike] | AsyncIterable[RequestLike]) -> None:
        _check_batch(requests)
        # A sync iterable's iterator is taken now, so that a batch of something not iterable fails at the call.
        self._items = _aiter(requests if isinstance(requests, AsyncIterable) else iter(requests))
        self._done = False
        self.error: Exception | None = None

    async def pull(self) -> RequestLike | Literal[_End.END]:
        """The next request, or ``END`` once the requests ran out or pulling one raised (see ``error``)."""
        if not self._done:
            try:
                return await anext(self._items)
            except StopAsyncIteration:
                self._done = True
            except Exception as exc:  # not KeyboardInterrupt or cancellation: those stop the batch at once
                self._done, self.error = True, exc
        return _End.END


def _check_batch(requests: object) -> None:
    """Refuse, as :class:`NotABatch`, what iterates but is no batch: a string or bytes (one request per character or
    byte), one request (its fields) or one dict (its keys)."""
    if isinstance(requests, str | bytes | bytearray | memoryview):
        what = f"a {type(requests).__name__}, whose every {'character' if isinstance(requests, str) else 'byte'}"
    elif isinstance(requests, RequestModel):
        what = f"one request ({type(requests).__name__}), whose every field"
    elif isinstance(requests, Mapping):
        what = "one mapping, whose every key"
    else:
        return
    raise NotABatch(f"a batch takes an iterable of requests, not {what} would be taken for a request")


def _check_concurrency(concurrency: object) -> int:
    """``concurrency`` as a whole number of at least 1; anything else (``True``, ``2.5``, ``0``) is refused."""
    try:
        value = None if isinstance(concurrency, bool) else operator.index(concurrency)  # type: ignore[arg-type]
    except TypeError:
        value = None
    if value is None or value < 1:
        raise InvalidRequest(
            f"must be a whole number of at least 1, not {concurrency!r}",
            field="concurrency",
            hint="give how many requests may run at once as a whole number, say concurrency=8",
        )
    return value


@dataclass
class _Tries:
    count: int = 0
    incurred: Decimal = Decimal(0)  # billed by attempts that failed and were retried
    ctx: RunContext | None = None  # the current attempt's context

    def cancelled_cost(self, provider: str) -> Decimal:
        """Money already billed when the call was cancelled: earlier attempts plus what ``provider`` reported
        for the cancelled one in ``ctx.extra["incurred"]`` (say, seconds a model already ran)."""
        return self.incurred + (extra_incurred(self.ctx, provider) if self.ctx is not None else Decimal(0))


class Router:
    """Routes requests to providers. Async methods are the core; ``run``/``batch`` wrap them.

    ``Router()`` reads ``plugins.toml`` (see :func:`genroute.config.load_settings`) and loads every
    plugin in entry point group ``genroute``. Use it as a context manager, or call :meth:`close`.

    One router may be shared by threads (a Flask, Django or gunicorn thread worker): the sync facade runs each
    thread's calls on that thread's own event loop (made on its first call), and identical requests running at
    once, on any threads, are paid once. :meth:`close` closes every thread's loop; call it once no thread is
    inside a call (see :meth:`close`).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        profile: str | None = None,
        config: str | Path | None = None,
        plugin_manager: pluggy.PluginManager | None = None,
    ) -> None:
        if settings is None:
            settings = load_settings(config, profile=profile)
        elif profile is not None and profile != settings.profile:
            settings = Settings.model_validate({**settings.model_dump(), "profile": profile})
        self.settings = settings
        self.pm = plugin_manager or default_plugin_manager()
        registered = collect_registrations(self.pm)
        self.providers: dict[str, Provider] = {name: provider for name, (provider, _, _) in registered.items()}
        self.plugin_of: dict[str, str] = {name: source for name, (_, source, _) in registered.items()}
        self._plugin_providers: dict[int, list[str]] = {}  # id(plugin) -> the providers it registers
        for name, (_, _, plugin) in registered.items():
            self._plugin_providers.setdefault(id(plugin), []).append(name)
        self._profile_offers = _profile_offers_hook(self.pm, registered, settings.active.providers)
        self._reported_faults: set[tuple[str, str]] = set()  # (who, what) plugin faults already warned about
        self.provider_options: dict[str, BaseModel | None] = {}
        self._option_faults: dict[str, str] = {}  # provider -> what is wrong with its plugin's options_model
        for name, provider in self.providers.items():
            self.provider_options[name] = self._checked_options(name, provider)
        routing = settings.routing
        self.ledger = Ledger(
            settings.ledger.path,
            effective_limits(settings, self.pm),
            warn_share=settings.budget.warn_share,
            reservation_ttl_seconds=settings.ledger.reservation_ttl_seconds,
            on_warning=self._on_budget_warning,
        )
        self.store = (
            ResultStore(
                settings.store.path,
                max_bytes=settings.store.max_bytes,
                scratch_max_bytes=settings.store.scratch_max_bytes,
            )
            if settings.store.enabled
            else None
        )
        self.cooldowns = SharedCooldowns(
            Cooldowns(routing.cooldown_after_failures, routing.cooldown_seconds),
            self.ledger.post_cooldown,
            self.ledger.cooldown_until,
        )
        self.backoff = Backoff(routing.backoff_initial_seconds, routing.backoff_max_seconds)
        self._http: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}  # one client per event loop
        self._loops = ThreadLoops(self.aclose)  # each thread's event loop for the sync facade
        self._jobs: JobStore | None = None
        self._inflight = InFlight()  # request keys being served now, on any thread's loop

    def _checked_options(self, name: str, provider: Provider) -> BaseModel | None:
        """``provider``'s validated options. The user's mistake in them is a ConfigError naming the key (and the
        plugin); a fault of the plugin's — an ``options_model`` that is no pydantic model, or whose validation
        raises something other than a validation error — makes only this provider unavailable, saying why and
        naming the plugin (:meth:`unavailable_reason`), so that the other providers and every command still work."""
        model = getattr(provider, "options_model", None)
        if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
            what = f"options_model is {_described(model)}, not a pydantic BaseModel subclass (or None)"
            self._options_fault(name, what)
            return None
        try:
            return provider.check_options(self.settings.provider(name), self.settings.source)
        except ConfigError as exc:
            exc.hint = f"{exc.hint} (provider {name} comes from plugin {self.plugin_of.get(name, '?')})"
            raise
        except Exception as exc:
            self._options_fault(name, _fault(exc), exc)
            return None

    def _options_fault(self, name: str, what: str, exc: BaseException | None = None) -> None:
        """Make ``name`` unavailable because its plugin's options could not be checked (``what``); warn once."""
        why = f"its options could not be checked: {what} (plugin {self.plugin_of.get(name, '?')}); fix the plugin"
        self._option_faults[name] = why
        self._report_fault(name, "options_model", f"provider {name}: {why}; it counts as unavailable", exc)

    # -- lifecycle ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Close providers, clients, every thread's event loop, the ledger and the store.

        Call it once no thread is inside a call on this router (after joining the threads that use it, or at the
        server's shutdown): a loop can be closed only while it is not running. If a call is still under way on
        another thread, this raises :class:`GenrouteError` and closes nothing; call it again once that call has
        returned. Called from inside a running event loop, use ``await router.aclose()`` instead.
        """
        self._loops.close_all()
        self.ledger.close()
        if self.store is not None:
            self.store.close()
        if self._jobs is not None:
            self._jobs.close()

    async def aclose(self) -> None:
        """Close the providers' and the router's clients of the running event loop (each loop has its own).

        Each provider's ``aclose`` is contained: one that raises, is not an ``async def``, or takes longer than
        :data:`ACLOSE_TIMEOUT_SECONDS` is logged as a warning naming its plugin, and the others, the router's
        client (and, from :meth:`close` or ``async with``, the ledger and store) are closed all the same.
        """
        try:
            for name, provider in self.providers.items():
                await self._aclose_provider(name, provider)
        finally:
            client = self._http.pop(asyncio.get_running_loop(), None)
            if client is not None:
                await client.aclose()

    async def _aclose_provider(self, name: str, provider: Provider) -> None:
        who = f"provider {name} (plugin {self.plugin_of.get(name, '?')})"
        try:
            closing: object = provider.aclose()
            if not inspect.isawaitable(closing):
                what = f"aclose {_returned(closing, 'an awaitable')}: make it an async def"
                self._report_fault(who, "aclose", f"{who}: {what}; fix the plugin")
                return
            async with asyncio.timeout(ACLOSE_TIMEOUT_SECONDS):
                await closing
        except TimeoutError:
            self._report_fault(
                who, "aclose", f"{who}: aclose took over {ACLOSE_TIMEOUT_SECONDS:g}s and was abandoned; fix the plugin"
            )
        except Exception as exc:
            self._report_fault(who, "aclose", f"{who}: aclose raised {_fault(exc)}; fix the plugin", exc)

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.aclose()
        finally:
            self.ledger.close()
            if self.store is not None:
                self.store.close()
            if self._jobs is not None:
                self._jobs.close()

    def _http_client(self) -> httpx.AsyncClient:
        """The running loop's HTTP client: a client belongs to the loop it was made on (threads have their own)."""
        loop = asyncio.get_running_loop()
        client = self._http.get(loop)
        if client is None:
            for gone in [other for other in list(self._http) if other.is_closed()]:
                self._http.pop(gone, None)  # a closed loop's client cannot be used or closed any more: drop it
            client = self._http[loop] = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))
        return client

    # -- requests -----------------------------------------------------------------------------------
    @staticmethod
    def parse(request: RequestLike) -> RequestModel:
        """A request model from a model or a plain dict; bad input → :class:`InvalidRequest` naming the field."""
        if isinstance(request, RequestModel):
            return request
        if not isinstance(request, Mapping):
            raise InvalidRequest(f"expected a request object or a mapping, got {type(request).__name__}")
        try:
            return parse_request(dict(request))
        except ValidationError as exc:
            raise invalid_request_from(exc) from None

    async def _prepare(self, request: RequestLike) -> tuple[RequestModel, str]:
        model = self.parse(request)
        limit = self.settings.routing.max_input_bytes
        for name, media in model.media_fields().items():
            await media.aresolve(self._http_client(), max_bytes=limit, field=name)
            if len(media.data) > limit:
                raise InvalidRequest(
                    f"is {len(media.data)} bytes, over routing.max_input_bytes ({limit})",
                    field=name,
                    hint=INPUT_TOO_LARGE_HINT,
                )
        model.check_media()  # a fetched URL's bytes must be an image or audio as the field says
        return model, request_key(model)

    # -- planning -----------------------------------------------------------------------------------
    def budget_scopes(self, offer: Offer) -> tuple[str, ...]:
        """The ledger scopes an offer's cost counts in: its kind of money first, then its provider."""
        if offer.billing == "free":
            return (f"free:{offer.provider}",)
        if offer.billing == "simulated":
            return ("simulated", f"provider:{offer.provider}")
        return ("global", f"provider:{offer.provider}")

    def _candidates(
        self, request: RequestModel, *, explain: bool = False, other_tiers: list[Offer] | None = None
    ) -> tuple[list[Offer], list[Rejection]]:
        """Usable offers in the order to try them, and the offers passed over with why.

        To serve a request only the plugins with a provider in the active profile are asked (and the ones
        that register no provider, which may offer for others); ``explain`` (``plan``) asks every plugin,
        so that providers outside the profile are listed too. So is a pin to a provider outside it.
        ``other_tiers``, when given, receives the offers passed over only for their tier, for
        :meth:`_lower_tiers` to tell whether a cheaper tier could serve should every offer fail.
        """
        profile = self.settings.active
        order = {name: i for i, name in enumerate(profile.providers)}
        budgeted = bool(self.settings.limits())
        everyone = explain or (request.provider is not None and request.provider not in order)
        hook = self.pm.hook.genroute_offers if everyone else self._profile_offers
        rejections: list[Rejection] = []
        offers, failed = self._collect_offers(hook, request, rejections)
        usable: list[Offer] = []
        headroom: dict[tuple[str, ...], Headroom | None] = {}
        unavailable = {name: self.unavailable_reason(name) for name in {o.provider for o in offers}}
        for offer in offers:
            reason = self._rejection_reason(request, offer, order, budgeted, headroom, unavailable)
            if reason:
                # the period of the limit an offer over budget hit: waiting helps only if it is not a total one
                binding = headroom.get(self.budget_scopes(offer)) if reason.startswith("over budget") else None
                period = binding.period if binding is not None else None
                # a scope the provider reported used up carries its advice (credit renews, allow paid work…)
                hint = binding.hint if binding is not None else None
                rejections.append(
                    Rejection(offer.provider, offer.model, offer.tier, reason, budget_period=period, hint=hint)
                )
                if other_tiers is not None and reason.startswith("wrong tier"):
                    other_tiers.append(offer)
            else:
                usable.append(offer)
        offered = {offer.provider for offer in offers} | failed  # a failed plugin's providers have their line
        pin = request.provider
        if pin is not None and pin not in offered and pin in self.providers and pin not in self.settings.providers:
            # installed, but nothing configured for it (no models): say so, not "no plugin registers it"
            reason = f"installed, but {self.settings.source} has no [providers.{pin}] section"
            rejections.append(Rejection(pin, "-", request.tier, reason))
        for name in profile.providers:
            if name not in offered:
                rejections.append(Rejection(name, "-", request.tier, self._silence_reason(name, request)))
        usable.sort(
            key=lambda o: (
                o.estimate is None,  # unpriced offers only after every priced one
                Decimal(0) if o.billing == "free" else (o.estimate or Decimal(0)),  # price out of pocket
                order[o.provider],
                self.settings.provider(o.provider).priority,
                o.priority,
            )
        )
        return self._choose(request, usable, rejections), rejections

    def _collect_offers(
        self, hook: Any, request: RequestModel, rejections: list[Rejection]
    ) -> tuple[list[Offer], set[str]]:
        """Every plugin's offers for ``request`` (``hook``: ``genroute_offers`` or its subset for the profile),
        and the providers of the plugins that failed.

        Each plugin is called on its own, in pluggy's order, so that one that raises or answers something other
        than a list of Offers (say one Offer, or an ``async def``'s coroutine) loses only its own offers: a
        rejection line names it and what it did, the fault is logged once, and the other plugins still serve.
        """
        offers: list[Offer] = []
        failed: set[str] = set()
        for impl in reversed(hook.get_hookimpls()):
            try:
                answer = _call_hookimpl(impl, request=request, settings=self.settings)
            except Exception as exc:
                self._offers_fault(impl.plugin, request, f"failed in genroute_offers: {_fault(exc)}", rejections, exc)
                failed.update(self._plugin_providers.get(id(impl.plugin), ()))
                continue
            if answer is None:
                continue
            if isinstance(answer, list | tuple):
                wrong = next((item for item in answer if not isinstance(item, Offer)), None)
                if wrong is None:
                    own = self._plugin_providers.get(id(impl.plugin))
                    for offer in answer:
                        problem = _offer_problem(offer, own, self.providers)
                        if problem is None:
                            offers.append(offer)
                        else:
                            self._bad_offer(impl.plugin, request, offer, problem, rejections)
                            failed.add(_shown(offer.provider))  # its line is the rejection just made
                    continue
                what = f"returned a list holding {type(wrong).__name__}, not only Offers"
            else:
                what = _returned(answer, "a list of Offers")
            self._offers_fault(impl.plugin, request, f"genroute_offers {what}", rejections)
            failed.update(self._plugin_providers.get(id(impl.plugin), ()))
        return offers, failed

    def _offers_fault(
        self,
        plugin: object,
        request: RequestModel,
        what: str,
        rejections: list[Rejection],
        exc: BaseException | None = None,
    ) -> None:
        who = plugin_label(self.pm, plugin)
        reason = f"{who} {what}; fix the plugin, or uninstall it"
        providers = self._plugin_providers.get(id(plugin))
        rejections.append(Rejection(", ".join(providers) if providers else "-", "-", request.tier, reason))
        self._report_fault(who, "genroute_offers", f"{reason} (its offers are skipped)", exc)

    def _bad_offer(
        self, plugin: object, request: RequestModel, offer: Offer, problem: str, rejections: list[Rejection]
    ) -> None:
        """Drop one offer :func:`_offer_problem` found wrong: a rejection line and a warning (once) name the plugin."""
        who = plugin_label(self.pm, plugin)
        reason = f"{who} made an offer {problem}; fix the plugin, or uninstall it"
        provider, model, tier = (_shown(getattr(offer, name, None)) for name in ("provider", "model", "tier"))
        rejections.append(Rejection(provider, model, tier if tier != "-" else request.tier, reason))
        self._report_fault(who, f"genroute_offers offer {problem}", f"{reason} (the offer is skipped)")

    def _choose(self, request: RequestModel, usable: list[Offer], rejections: list[Rejection]) -> list[Offer]:
        """``usable`` as the first ``genroute_choose`` answer that is not None orders it (pluggy's firstresult).

        Each implementation is called on its own so that a mistake names its plugin: one that raises, or answers
        anything but a list of the offers it was given, is logged and counts as no answer (``None``). Offers are
        values, so an equal copy stands for the offer it copies; an offer given twice is tried once; the offers
        the answer leaves out become rejections ``dropped by genroute_choose (plugin …)``.
        """
        impls = self.pm.hook.genroute_choose.get_hookimpls()
        if not impls:
            return usable
        for impl in reversed(impls):
            try:
                answer = _call_hookimpl(impl, request=request, offers=list(usable))
            except Exception as exc:
                who = plugin_label(self.pm, impl.plugin)
                self._report_fault(
                    who, "genroute_choose", f"{who} failed in genroute_choose: {_fault(exc)}; " + _IGNORED, exc
                )
                continue
            if answer is None:
                continue
            chosen, what = _chosen(answer, usable)
            who = plugin_label(self.pm, impl.plugin)
            if chosen is None:
                self._report_fault(who, "genroute_choose", f"{who}: genroute_choose {what}; {_IGNORED}")
                continue
            kept = {id(offer) for offer in chosen}
            reason = f"{_DROPPED} ({who})"
            rejections.extend(Rejection(o.provider, o.model, o.tier, reason) for o in usable if id(o) not in kept)
            return chosen
        return usable

    def _rejection_reason(
        self,
        request: RequestModel,
        offer: Offer,
        order: dict[str, int],
        budgeted: bool,
        headroom: dict[tuple[str, ...], Headroom | None],
        unavailable: dict[str, str | None],
    ) -> str | None:
        """Why ``offer`` cannot serve ``request``, or None; the first failed check wins (docs/routing-and-budget.md).

        The profile is checked before availability and task: a provider the profile leaves out is reported
        as ``not in profile``, the one thing to change for it, even when its token is missing too.
        """
        if offer.provider not in self.providers:
            return "no installed plugin registers this provider"
        if offer.provider not in order:
            return f"not in profile {self.settings.profile!r}"
        if unavailable.get(offer.provider):
            return f"unavailable: {unavailable[offer.provider]}"
        if offer.task != request.task_name:
            return f"offer is for {offer.task}"
        if not self.settings.provider(offer.provider).enabled:
            return "disabled in config"
        if request.provider and offer.provider != request.provider:
            return f"not the pinned provider {request.provider!r}"
        if request.model and offer.model != request.model:
            return f"not the pinned model {request.model!r}"
        if not request.model and offer.tier != request.tier:
            return f"wrong tier (asked {request.tier})"
        limit = offer.entry.max_outputs if offer.entry else None
        if limit is not None and billing.requested_outputs(request) > limit:
            return f"asks {billing.requested_outputs(request)} outputs; this model makes at most {limit}"
        cooling = self.cooldowns.remaining(offer.provider)
        if cooling > 0:
            return f"cooling down for {cooling:.1f}s more after repeated failures"
        if offer.estimate is None:
            return "unpriced, and a budgeted profile refuses unpriced offers" if budgeted else None
        scopes = self.budget_scopes(offer)
        if scopes not in headroom:
            headroom[scopes] = self.ledger.tightest(scopes)
        tightest = headroom[scopes]
        if tightest is not None and offer.estimate > tightest.left:
            where = f"{tightest.scope} ({tightest.period})"
            return f"over budget ({fmt_usd(tightest.left)} left in {where}, needs {fmt_usd(offer.estimate)})"
        return None

    def _lower_tiers(self, request: RequestModel, other_tiers: Sequence[Offer]) -> list[str]:
        """The tiers below ``request``'s (cheaper and faster) where one of ``other_tiers`` — offers passed over only
        for their tier — could serve it now, budget included: what a hint may suggest once no offer could serve.

        Worked out only then, never on the way to a success; none below ``fast``, none for a pinned model.
        """
        below = TIERS[: TIERS.index(request.tier)]
        if not below or not other_tiers:
            return []
        order = {name: i for i, name in enumerate(self.settings.active.providers)}
        budgeted = bool(self.settings.limits())
        headroom: dict[tuple[str, ...], Headroom | None] = {}
        unavailable = {name: self.unavailable_reason(name) for name in {o.provider for o in other_tiers}}
        fitting: list[str] = []
        for tier in below:
            at_tier = request.model_copy(update={"tier": tier})
            if any(
                offer.tier == tier
                and self._rejection_reason(at_tier, offer, order, budgeted, headroom, unavailable) is None
                for offer in other_tiers
            ):
                fitting.append(tier)
        return fitting

    def _silence_reason(self, name: str, request: RequestModel) -> str:
        provider = self.providers.get(name)
        if provider is None:
            return "not installed (no plugin registers it)"
        section = self.settings.provider(name)
        if not section.enabled:
            return "disabled in config"
        if section.models and not section.models.get(request.task_name):
            # Its catalogue has no model for this task: a token would not change that, so do not ask for one.
            return f"makes no offer for {request.task_name}"
        why = self.unavailable_reason(name)
        return f"unavailable: {why}" if why else f"makes no offer for {request.task_name}"

    def unregistered_reason(self, name: str) -> str:
        """Why ``name``, listed in the configuration, has no provider: no plugin registers it; and, when plugins
        implementing ``genroute_register_providers`` are loaded but registered nothing (a mistake in the hook,
        or an ``async def`` one), which — one of them is probably meant to bring it."""
        why = f"no installed plugin registers a provider named {name!r}"
        idle = [
            plugin_label(self.pm, impl.plugin)
            for impl in self.pm.hook.genroute_register_providers.get_hookimpls()
            if id(impl.plugin) not in self._plugin_providers
        ]
        if idle:
            why += f" ({', '.join(idle)} {'is' if len(idle) == 1 else 'are'} loaded but registered no provider)"
        return why

    def _report_fault(self, who: str, what: str, message: str, exc: BaseException | None = None) -> None:
        """Log a plugin's fault as a warning once per router (later repeats at debug), its traceback at debug."""
        first = (who, what) not in self._reported_faults
        self._reported_faults.add((who, what))
        log.log(logging.WARNING if first else logging.DEBUG, "%s", message)
        if first and exc is not None:
            log.debug("%s", redact("".join(traceback.format_exception(exc))))

    def unavailable_reason(self, name: str) -> str | None:
        """Why provider ``name`` cannot serve now, or None (also None for a provider no plugin registers).

        Its ``unavailable_reason`` is asked safely: one that raises, or answers something that is not a ``str``,
        makes the provider unavailable with a reason saying so and naming the plugin to fix (logged once). Use
        this rather than calling the provider's method (``genroute providers`` shows it as the status).
        """
        provider = self.providers.get(name)
        if provider is None:
            return None
        if name in self._option_faults:
            return self._option_faults[name]
        found = checked_unavailable_reason(provider, self.settings)
        if not found.fault:
            return found.reason
        why = f"{redact(found.reason or '')} (plugin {self.plugin_of.get(name, '?')}); fix the plugin"
        self._report_fault(name, "unavailable_reason", f"provider {name}: {why}; it counts as unavailable", found.error)
        return why

    async def aplan(self, request: RequestLike) -> RoutePlan:
        """Where ``request`` would go, at what estimated price; spends and records nothing."""
        model, key = await self._prepare(request)
        hit = self.store.get(key) if self.store is not None and model.cache == "use" else None
        cached = hit is not None and hit.provider in self.settings.active.providers
        candidates, rejections = self._candidates(model, explain=True)
        return RoutePlan(request_key=key, cached=cached, candidates=candidates, rejections=rejections)

    # -- running ------------------------------------------------------------------------------------
    async def arun(self, request: RequestLike) -> Result:
        """Serve ``request`` from the store, or from the cheapest usable provider with retries and fallback."""
        started = time.perf_counter()
        model, key = await self._prepare(request)
        self._notify("genroute_request_started", request=model, key=key)
        result: Result | None = None
        error: BaseException | None = None
        try:
            result = await self._route(model, key, started)
            return result
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._notify("genroute_request_finished", request=model, key=key, result=result, error=error)

    async def _route(self, request: RequestModel, key: str, started: float) -> Result:
        deadline_seconds = request.deadline_seconds or self.settings.routing.deadline_seconds
        deadline = asyncio.get_running_loop().time() + deadline_seconds
        if self.store is None or request.cache != "use":
            return await self._serve(request, key, started, deadline, deadline_seconds)
        claim = await self._inflight.claim(key, deadline, f"request did not finish within {deadline_seconds:g}s")
        try:
            while True:
                hit = self._lookup(request, key, started)
                if hit is not None:
                    return hit
                try:
                    return await self._serve(request, key, started, deadline, deadline_seconds)
                except HeldElsewhere as held:
                    # Another worker sharing this ledger and store is serving the same request now: wait for
                    # it to finish, then take its result from the store (or serve it here if it failed).
                    await await_elsewhere(self.ledger, held, deadline, deadline_seconds)
        finally:
            if claim is not None:
                self._inflight.release(key)  # its twins look in the store: a hit if this one was kept, else one runs

    async def _serve(
        self, request: RequestModel, key: str, started: float, deadline: float, deadline_seconds: float
    ) -> Result:
        """Serve a request the store does not hold: offers, then each usable one in turn until one succeeds."""
        other_tiers: list[Offer] = []
        candidates, rejections = self._candidates(request, other_tiers=other_tiers)
        running: Offer | None = None
        try:
            async with asyncio.timeout_at(deadline):
                for running in candidates:
                    result = await self._try_offer(request, key, running, deadline, started, rejections)
                    if result is not None:
                        return result
                running = None
        except TimeoutError:
            faster = self._lower_tiers(request, other_tiers)
            raise deadline_exceeded("request", deadline_seconds, running, rejections, faster) from None
        raise no_route(
            f"no provider could serve this {request.task_name} request "
            f"(tier {request.tier}, profile {self.settings.profile!r}):",
            rejections,
            pinned=request.provider,
            cheaper_tiers=self._lower_tiers(request, other_tiers),
        )

    def _lookup(self, request: RequestModel, key: str, started: float) -> Result | None:
        if self.store is None or request.cache != "use":
            return None
        hit = self.store.get(key)
        if hit is None or hit.provider not in self.settings.active.providers:
            # A result made by a provider outside this profile (say the mock's placeholder in prod) is
            # not what this profile promises: run the request again; the new result replaces it.
            self.store.record_miss()
            return None
        self.ledger.record_saving(
            hit.actual_cost, provider=hit.provider, model=hit.model, task=hit.task, request_key=key
        )
        self.store.record_hit(hit.actual_cost)
        return hit.model_copy(
            update={
                "cached": True,
                "actual_cost": Decimal(0),
                "estimated_cost": Decimal(0),
                "attempts": 0,
                "latency_seconds": time.perf_counter() - started,
            }
        )

    async def _try_offer(
        self,
        request: RequestModel,
        key: str,
        offer: Offer,
        deadline: float,
        started: float,
        rejections: list[Rejection],
    ) -> Result | None:
        try:
            reservation = self._reserve(
                offer,
                key,
                deadline - asyncio.get_running_loop().time(),
                shared=self.store is not None and request.cache == "use",
            )
        except BudgetExceeded as exc:
            rejections.append(Rejection(offer.provider, offer.model, offer.tier, f"over budget: {exc.message}"))
            return None
        tries = _Tries()
        try:
            output = await self._attempts(request, key, offer, deadline, tries, reservation.orphaned_since)
            charge = quantize(call_cost(offer, request, output))
            self._check_output(offer, output, billed=charge)
        except ProviderError as exc:
            self._close_failed(reservation, exc, tries.incurred, ctx=tries.ctx)
            self._count_failure(offer, exc)
            # A refused token or an empty account keeps the provider's advice, and is logged as a warning.
            rejections.append(failed_offer(offer, exc, f"failed after {tries.count} attempt(s): {redact(exc.message)}"))
            return None
        except BaseException:
            billed = tries.cancelled_cost(offer.provider)
            if billed:
                self.ledger.settle(reservation, quantize(billed), note="billed before it was cancelled")
            else:
                self.ledger.release(reservation, note="cancelled or deadline passed")
            raise
        cost = quantize(charge + tries.incurred)
        self.ledger.settle(reservation, cost, job_id=output.job_id)
        self.cooldowns.success(offer.provider)
        result = make_result(key, offer, output, cost, time.perf_counter() - started, attempts=tries.count)
        return self._keep(request, key, result, output.files)

    def _count_failure(self, offer: Offer, exc: ProviderError) -> None:
        """What a failed offer means for later requests: a cooldown, or a free credit marked used up."""
        if isinstance(exc, OutOfCredit) and offer.billing == "free":
            # The provider's own count says the free credit is gone: stop every process offering it.
            self.ledger.exhaust(self.budget_scopes(offer)[0], note=exc.message)
        elif not isinstance(exc, ProviderRejectedInput):
            self.cooldowns.failure(offer.provider)

    def _reserve(
        self, offer: Offer, key: str, deadline_seconds: float, *, job: bool = False, shared: bool = False
    ) -> Reservation:
        # A job's reservation is settled by whichever process receives its webhook: it belongs to no process.
        # A shared one (its result goes to the store) makes other processes asking the same wait for it.
        return self.ledger.reserve(
            offer.estimate or Decimal(0),
            scopes=self.budget_scopes(offer),
            provider=offer.provider,
            model=offer.model,
            task=offer.task,
            request_key=key,
            # Never reclaimed while its call may still run: outlive the request's deadline.
            ttl_seconds=max(self.settings.ledger.reservation_ttl_seconds, deadline_seconds + 60),
            outlives_process=job,
            shared=shared,
        )

    def _close_failed(
        self,
        reservation: Reservation,
        exc: ProviderError,
        earlier: Decimal = Decimal(0),
        *,
        ctx: RunContext | None = None,
        unreported: Decimal = Decimal(0),
    ) -> None:
        """Close a failed offer's reservation: settle what the provider reported the failed call billed
        (:func:`~genroute.outcomes.failure_incurred`: the error's ``incurred``, else ``ctx.extra["incurred"]``;
        zero included) plus ``earlier`` (retried attempts), or release it when that comes to nothing.

        ``unreported`` stands in only when the provider reported nothing usable: a stream passes its estimate
        once text had reached the caller (those tokens were probably billed); run's failures pass nothing.
        """
        reported = failure_incurred(exc, ctx, reservation.provider)  # the offer's provider, reserved for
        message = redact(exc.message)
        if reported is None and unreported:
            billed, note = unreported + earlier, f"failed, nothing reported billed, so the estimate: {message}"
        else:
            billed, note = (reported or Decimal(0)) + earlier, f"billed for failed calls: {message}"
        if billed:
            self.ledger.settle(reservation, billed, note=note[:300])
        else:
            self.ledger.release(reservation, note=message[:200])

    async def _attempts(
        self,
        request: RequestModel,
        key: str,
        offer: Offer,
        deadline: float,
        tries: _Tries,
        orphaned_since: float | None = None,
    ) -> ProviderOutput:
        provider = self.providers[offer.provider]
        loop = asyncio.get_running_loop()
        max_attempts = self.settings.routing.max_attempts
        while True:
            tries.count += 1
            ctx = self._context(offer, key, tries.count, deadline, orphaned_since)
            tries.ctx = ctx
            try:
                return await self._call_provider(provider, request, offer, ctx)
            except ProviderError as exc:
                if not exc.retryable or tries.count >= max_attempts:
                    raise
                delay = self.backoff.delay(tries.count, exc.retry_after)
                if loop.time() + delay >= deadline:
                    raise
                tries.incurred += exc.incurred or Decimal(0)  # only once it is certain the error is not raised
                log.info("%s: %s; retry %d in %.2fs", offer.provider, redact(exc.message), tries.count + 1, delay)
                await asyncio.sleep(delay)

    def _context(
        self, offer: Offer, key: str, attempt: int, deadline: float, orphaned_since: float | None = None
    ) -> RunContext:
        # The loop's clock is time.monotonic, so the deadline converts directly.
        return RunContext(
            settings=self.settings,
            provider_settings=self.settings.provider(offer.provider),
            options=self.provider_options.get(offer.provider),
            request_key=key,
            attempt=attempt,
            deadline=deadline,
            http_factory=self._http_client,
            orphaned_since=orphaned_since,
        )

    def _check_output(self, offer: Offer, output: ProviderOutput, *, billed: Decimal) -> None:
        """Refuse output that cannot be what the offer's task asked for: over the size cap, a media task
        without a file, a text task without text, a file whose bytes are not its declared media type (say an
        HTML error page as ``image/png``), a WAV file cut short. The call was billed all the same, so the refusal
        carries it; like every bad output it is not retried on the same offer (the router falls back)."""
        problem = _output_problem(offer.task, output)
        if problem is not None:  # the provider's bug, which its author must see, not only a fallback at INFO
            self._return_fault(offer.provider, f"answered unfit output ({problem})")
        else:
            total = sum(len(f.data) for f in output.files)
            if total > self.settings.routing.max_output_bytes:
                problem = f"output is {total} bytes, over routing.max_output_bytes"
        if problem is not None:
            raise OutputRejected(problem, provider=offer.provider, retryable=False, incurred=billed)

    async def _call_provider(
        self, provider: Provider, request: RequestModel, offer: Offer, ctx: RunContext
    ) -> ProviderOutput:
        try:
            return await _call_provider(provider, request, offer, ctx)
        except _WrongReturn as exc:
            self._return_fault(offer.provider, exc.what)
            raise

    def _return_fault(self, name: str, what: str) -> None:
        """A provider's return value is wrong: a warning (once per router) names it and its plugin."""
        who = f"provider {name} (plugin {self.plugin_of.get(name, '?')})"
        self._report_fault(who, f"return:{what}", f"{who} {redact(what)}; fix the plugin (falling back)")

    def _keep(self, request: RequestModel, key: str, result: Result, files: list[OutputFile]) -> Result:
        if self.store is not None and request.cache != "bypass":
            return self.store.put(key, result, files)
        return result.model_copy(update={"artifacts": scratch_artifacts(self.settings.store, files)})

    # -- streaming ----------------------------------------------------------------------------------
    def astream(self, request: RequestLike) -> TextStream:
        """Stream a text-generation request: ``async for piece in router.astream(req)``; then ``.result``."""
        return TextStream(self, request)

    # -- completion by webhook ----------------------------------------------------------------------
    @property
    def jobs(self) -> JobStore:
        """The job records shared with webhook receivers (opened on first use)."""
        if self._jobs is None:
            self._jobs = JobStore(self.settings.jobs.path)
        return self._jobs

    async def asubmit(self, request: RequestLike, *, webhook_url: str) -> Job:
        """Start ``request`` on a provider that answers by webhook; return the pending :class:`Job`.

        A store hit comes back as a finished job at once. The estimate is reserved now and settled when
        the completion arrives (:meth:`acomplete`, called by the webhook receiver, in any process).
        The same request submitted again while its job is pending returns that pending job (no second remote
        job or reservation, in any process sharing jobs.path); cache 'refresh'/'bypass' start new work.
        """
        return await webhook_jobs.submit(self, request, webhook_url=webhook_url)

    async def acomplete(self, provider: str, remote_id: str, payload: Any) -> Job:
        """Finish the job ``provider`` knows as ``remote_id`` from a verified completion ``payload``.

        Settles the reservation with the actual cost and stores the result's bytes. Idempotent: a job
        already finished is returned unchanged, so a redelivered webhook never charges twice.
        """
        return await webhook_jobs.complete(self, provider, remote_id, payload)

    def submit(self, request: RequestLike, *, webhook_url: str) -> Job:
        """Sync :meth:`asubmit`."""
        return self._sync().run(self.asubmit(request, webhook_url=webhook_url))

    def complete(self, provider: str, remote_id: str, payload: Any) -> Job:
        """Sync :meth:`acomplete`."""
        return self._sync().run(self.acomplete(provider, remote_id, payload))

    async def areconcile_jobs(self, job_id: str | None = None) -> list[JobSync]:
        """Ask each pending job's provider (or only job ``job_id``'s, or the one job whose id starts so) for the
        state of its remote work, and complete the finished ones as their webhook delivery would have.

        For when deliveries never arrived (the receiver was down longer than the provider retries):
        ``genroute jobs sync``. A finished job is settled, stored and marked finished through the same path as
        :meth:`acomplete`, claimed once, so a delivery arriving at the same moment or later changes nothing;
        one still running stays pending; a provider that cannot be asked (``Provider.fetch_job`` answers None)
        is reported as such. One :class:`~genroute.jobs.JobSync` per job, oldest first. An unknown ``job_id``
        raises :class:`InvalidRequest`.
        """
        return await webhook_jobs.reconcile(self, job_id)

    def reconcile_jobs(self, job_id: str | None = None) -> list[JobSync]:
        """Sync :meth:`areconcile_jobs`."""
        return self._sync().run(self.areconcile_jobs(job_id))

    # -- batches ------------------------------------------------------------------------------------
    def aiter_batch(
        self, requests: Iterable[RequestLike] | AsyncIterable[RequestLike], *, concurrency: int = 8
    ) -> AsyncGenerator[BatchItem, None]:
        """Run requests with at most ``concurrency`` in flight, yielding each as it completes.

        Requests are pulled lazily, so a huge batch never sits in memory at once. ``concurrency`` must be
        a whole number of at least 1 (not ``True``, not ``2.5``): anything else raises
        :class:`InvalidRequest` naming it here, before any request is pulled or run.

        If pulling the next request raises (a generator of the caller's breaks, a file cannot be read…),
        no further request is pulled; the requests already started run to their end and are yielded like
        any other (they are paid for), and then the source's own exception is raised, unchanged, from the
        iteration. Nothing is left running or reserved. Leaving the iteration early (``break`` then
        ``aclose``), cancelling it, or a ``KeyboardInterrupt`` from the source cancels the requests in
        flight instead, releasing their reservations.
        """
        return self._iter_batch(_BatchSource(requests), _check_concurrency(concurrency))

    async def _iter_batch(self, source: _BatchSource, concurrency: int) -> AsyncGenerator[BatchItem, None]:
        pending: set[asyncio.Task[BatchItem]] = set()
        index = 0

        async def fill() -> None:
            nonlocal index
            while len(pending) < concurrency:
                item = await source.pull()
                if item is _End.END:
                    return
                pending.add(asyncio.ensure_future(self._batch_one(index, item)))
                index += 1

        try:
            await fill()
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending.difference_update(done)
                await fill()
                for task in done:
                    yield task.result()
            if source.error is not None:
                raise source.error
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _batch_one(self, index: int, request: RequestLike) -> BatchItem:
        try:
            return BatchItem(index, result=await self.arun(request))
        except GenrouteError as exc:
            return BatchItem(index, error=exc)
        except Exception as exc:  # a bug must fail this request only: the others (maybe paid for) carry on
            log.debug("%s", redact("".join(traceback.format_exception(exc))))
            error = UnexpectedError(f"request {index} of the batch failed unexpectedly: {_fault(exc)}")
            error.__cause__ = exc
            return BatchItem(index, error=error)

    async def abatch(
        self, requests: Iterable[RequestLike] | AsyncIterable[RequestLike], *, concurrency: int = 8
    ) -> list[Result | GenrouteError]:
        """Run all requests (at most ``concurrency`` at once); results and errors in input order.

        ``concurrency`` is checked as in :meth:`aiter_batch`, before any request runs. If pulling the next
        request raises, the requests already started still run to their end, and :class:`BatchInterrupted`
        is raised carrying their results and errors, in input order, as ``outcomes`` (they are paid for);
        the source's own exception is its ``__cause__``.
        """
        limit = _check_concurrency(concurrency)
        source = _BatchSource(requests)
        outcomes: dict[int, Result | GenrouteError] = {}
        try:
            async with aclosing(self._iter_batch(source, limit)) as items:
                async for item in items:
                    outcome = item.result if item.result is not None else item.error
                    assert outcome is not None
                    outcomes[item.index] = outcome
        except Exception as exc:
            if exc is not source.error:
                raise
            raise BatchInterrupted(exc, [outcomes[i] for i in range(len(outcomes))]) from exc
        return [outcomes[i] for i in range(len(outcomes))]

    # -- sync facade --------------------------------------------------------------------------------
    def _sync(self) -> ThreadLoop:
        """This thread's event loop for the sync facade (``.run(coro)``), made on the thread's first call."""
        return self._loops.mine()

    def run(self, request: RequestLike) -> Result:
        """Sync :meth:`arun`."""
        return self._sync().run(self.arun(request))

    def plan(self, request: RequestLike) -> RoutePlan:
        """Sync :meth:`aplan`."""
        return self._sync().run(self.aplan(request))

    def batch(
        self, requests: Iterable[RequestLike] | AsyncIterable[RequestLike], *, concurrency: int = 8
    ) -> list[Result | GenrouteError]:
        """Sync :meth:`abatch` (raises :class:`BatchInterrupted` the same way)."""
        return self._sync().run(self.abatch(requests, concurrency=concurrency))

    def stream(self, request: RequestLike) -> SyncTextStream:
        """Sync :meth:`astream`: ``for piece in router.stream(req)``; then ``.result``."""
        self._sync()  # refused inside a running event loop, at once
        return SyncTextStream(self._sync, TextStream(self, request))

    # -- hooks --------------------------------------------------------------------------------------
    def _notify(self, hook: str, **kwargs: Any) -> None:
        # Each observer on its own: one that raises must neither fail the request nor silence the others.
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                if refuse_coroutine(_call_hookimpl(impl, **kwargs)):
                    who = plugin_label(self.pm, impl.plugin)
                    self._report_fault(who, hook, async_hook_message(self.pm, impl.plugin, hook))
            except Exception:
                log.warning(
                    "observer hook %s raised (plugin %s); ignored: %s",
                    hook,
                    describe_plugin(self.pm, impl.plugin),
                    redact(f"{type(sys.exc_info()[1]).__name__}: {sys.exc_info()[1]}"),
                )
                log.debug("%s", redact(traceback.format_exc()))

    def _on_budget_warning(self, warning: Any) -> None:
        self._notify("genroute_budget_warning", warning=warning)


def effective_limits(settings: Settings, pm: pluggy.PluginManager) -> list[BudgetLimit]:
    """The configured budget limits, plus the ones plugins bring for a scope and period left unconfigured."""
    configured = settings.limits()
    taken = {(limit.scope, limit.period) for limit in configured}
    brought: list[BudgetLimit] = []
    # One implementation at a time (in pluggy's calling order), so that a bad answer names its plugin.
    for impl in reversed(pm.hook.genroute_budget_limits.get_hookimpls()):
        who = plugin_label(pm, impl.plugin)
        try:
            answer: Any = _call_hookimpl(impl, settings=settings)
        except Exception as exc:
            raise PluginError(
                f"{who} failed in genroute_budget_limits: {_fault(exc)}", hint="fix the plugin, or uninstall it"
            ) from exc
        if answer is None:
            continue
        if not isinstance(answer, list | tuple):
            one = isinstance(answer, BudgetLimit)
            raise PluginError(
                f"{who}: genroute_budget_limits "
                + ("returned one BudgetLimit, not a list" if one else _returned(answer, "a list")),
                hint="return a list of genroute.config.BudgetLimit (or None); fix the plugin, or uninstall it",
            )
        for limit in answer:
            if not isinstance(limit, BudgetLimit):
                raise PluginError(
                    f"{who}: genroute_budget_limits returned "
                    f"{type(limit).__name__}, not a BudgetLimit (genroute.config.BudgetLimit)"
                )
            if (limit.scope, limit.period) not in taken:
                brought.append(limit)
    return [*configured, *brought]


_TASK_NAMES = frozenset(TASKS)
_TIER_NAMES = frozenset(TIERS)
_BILLINGS = frozenset(("free", "paid", "simulated"))


def _described(value: object) -> str:
    """A plugin's wrong value for a message: a class by its name, anything else by its type."""
    if isinstance(value, type):
        return f"class {value.__qualname__}"
    return f"a {type(value).__name__}"


def _shown(value: object) -> str:
    """A field of an offer for a rejection line: a str as it is (shortened), anything else as ``-``."""
    return value[:80] if isinstance(value, str) and value else "-"


def _offer_problem(offer: Offer, own: Sequence[str] | None, registered: Mapping[str, Provider]) -> str | None:
    """What is wrong with an offer a plugin returned, or None. An offer made with ``Offer.model_construct`` or
    ``offer.model_copy(update=...)`` skipped validation, so the fields the router relies on are checked again —
    cheaply, a few attribute checks per offer (this runs for every offer of every request). ``own``: the providers
    the plugin registers; a plugin that registers some may offer only for them, not for another plugin's (one that
    registers none, say one that offers its own prices for another's, may offer for any). An offer for a provider
    no plugin registers passes here: its rejection says so."""
    provider, estimate, priority = offer.provider, offer.estimate, offer.priority
    if not isinstance(provider, str) or not provider:
        return f"with provider {redact(repr(provider))[:80]}, not a provider's name"
    for name in ("model", "task", "tier", "billing"):
        if not isinstance(getattr(offer, name, None), str):
            return f"with {name} {redact(repr(getattr(offer, name, None)))[:80]}, not a str"
    if offer.task not in _TASK_NAMES:
        return f"for task {offer.task[:80]!r}, not one of genroute's tasks"
    if offer.tier not in _TIER_NAMES:
        return f"at tier {offer.tier[:80]!r}, not one of {', '.join(TIERS)}"
    if offer.billing not in _BILLINGS:
        return f"billed {offer.billing[:80]!r}, not one of {', '.join(sorted(_BILLINGS))}"
    if estimate is not None and (type(estimate) is not Decimal or not estimate.is_finite() or estimate < 0):
        return f"with estimate {repr(estimate)[:80]}, not a finite Decimal of 0 or more (or None)"
    if type(priority) is not int:
        return f"with priority {repr(priority)[:80]}, not an int"
    if own and provider not in own and provider in registered:
        return (
            f"in the name of provider {provider!r}, which it does not register (it registers {', '.join(own)}); "
            "a plugin offers only for its own providers"
        )
    return None


_IGNORED = "its answer is ignored (as if it returned None); fix the plugin, or uninstall it"


def _chosen(answer: object, usable: list[Offer]) -> tuple[list[Offer] | None, str]:
    """A ``genroute_choose`` answer as the usable offers it names, in its order and each once; or None and what
    is wrong with it. An offer equal to a usable one (a copy) stands for it: offers are frozen values."""
    if not isinstance(answer, list | tuple):
        return None, _returned(answer, "a list of the offers it was given")
    chosen: list[Offer] = []
    seen: set[int] = set()
    for item in answer:
        match = next((o for o in usable if o is item), None) or next((o for o in usable if o == item), None)
        if match is None:
            if not isinstance(item, Offer):
                return None, f"returned a list holding {type(item).__name__}, not only Offers"
            return None, f"returned an offer it was not given ({item.provider} · {item.model} [{item.tier}])"
        if id(match) not in seen:
            seen.add(id(match))
            chosen.append(match)
    return chosen, ""


# What the first bytes of a file of a media type sniff as (genroute.media.sniff_media_type), for the declared
# types it recognises; a file of another type (text/plain, video/quicktime…) is not checked.
_SNIFFS_AS: dict[str, frozenset[str]] = {
    declared: frozenset(found)
    for found, names in (
        ({"image/png"}, ("image/png",)),
        ({"image/jpeg"}, ("image/jpeg", "image/jpg", "image/pjpeg")),
        ({"image/gif"}, ("image/gif",)),
        ({"image/webp"}, ("image/webp",)),
        ({"image/avif"}, ("image/avif",)),
        ({"image/heic", "image/avif"}, ("image/heic", "image/heif")),
        ({"audio/wav"}, ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")),
        ({"audio/mpeg"}, ("audio/mpeg", "audio/mp3", "audio/mpeg3", "audio/x-mpeg-3")),
        ({"audio/flac"}, ("audio/flac", "audio/x-flac")),
        ({"audio/ogg"}, ("audio/ogg", "audio/opus", "video/ogg")),
        ({"video/mp4"}, ("video/mp4", "audio/mp4", "audio/m4a", "audio/x-m4a", "audio/aac+mp4")),
        ({"video/webm"}, ("video/webm", "audio/webm", "video/x-matroska")),
    )
    for declared in names
}
_TEXT_TASKS = frozenset({"text-generation", "speech-to-text"})
# The media types a task's files may have (by the declared type's start), and what to call them: a file of
# another family (a WAV answering a text-to-image request) is refused, whatever its bytes.
_IMAGES = (("image/",), "an image")
_FAMILIES: dict[str, tuple[tuple[str, ...], str]] = {
    "text-to-image": _IMAGES,
    "image-to-image": _IMAGES,
    "inpaint": _IMAGES,
    "upscale": _IMAGES,
    "remove-background": _IMAGES,
    "text-to-video": (("video/", "image/gif"), "a video (or an animated GIF)"),
    "image-to-video": (("video/", "image/gif"), "a video (or an animated GIF)"),
    "text-to-speech": (("audio/",), "audio"),
}


def _output_problem(task: str, output: ProviderOutput) -> str | None:
    """What makes ``output`` unfit for ``task``, or None. Cheap: a file's first bytes are read, and a WAV file's
    chunk headers (:func:`~genroute.media.audio_cut_short`: a WAV cut short is refused), nothing more."""
    if task in _TEXT_TASKS:
        if output.text is None or (task == "text-generation" and not output.text.strip()):
            return f"answered a {task} request without text"
        if output.files:
            first = redact(output.files[0].media_type)[:80]
            return f"answered a {task} request with {len(output.files)} file(s) ({first}), not text only"
    elif not output.files:
        return f"answered a {task} request without a file"
    family = _FAMILIES.get(task)
    for number, file in enumerate(output.files, 1):
        declared = file.media_type.partition(";")[0].strip().lower()
        kind = sniff_media_type(file.data) if declared == "application/octet-stream" else declared  # say what it is
        if family is not None and kind != "application/octet-stream" and not kind.startswith(family[0]):
            return (
                f"output file {number} of {len(output.files)} is {redact(kind)[:80]}, not {family[1]} "
                f"as a {task} request makes"
            )
        expected = _SNIFFS_AS.get(declared)
        if expected is None:
            continue
        found = sniff_media_type(file.data)
        if found not in expected:
            start = redact(repr(file.data[:40]))
            return (
                f"output file {number} of {len(output.files)} is declared {file.media_type}, but its bytes are "
                f"{'not a known media type' if found == 'application/octet-stream' else found} "
                f"({len(file.data)} bytes, starting {start})"
            )
        cut_short = audio_cut_short(file.data) if found == "audio/wav" else None  # its chunk headers only
        if cut_short is not None:
            return f"output file {number} of {len(output.files)} is {cut_short}"
    return None


def _profile_offers_hook(
    pm: pluggy.PluginManager, registered: Mapping[str, tuple[Provider, str, object]], profile: Sequence[str]
) -> Any:
    """``genroute_offers`` without the plugins all of whose providers are outside the profile."""
    served: dict[int, tuple[object, set[str]]] = {}
    for name, (_provider, _source, plugin) in registered.items():
        served.setdefault(id(plugin), (plugin, set()))[1].add(name)
    idle = [plugin for plugin, names in served.values() if not names.intersection(profile)]
    return pm.subset_hook_caller("genroute_offers", remove_plugins=idle) if idle else pm.hook.genroute_offers


def _cancelled_from_outside() -> bool:
    """Whether the running task is being cancelled (by its caller, or a timeout): a ``CancelledError`` it sees is
    then real cancellation, not one a provider raised of its own accord."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


async def _call_provider(provider: Provider, request: RequestModel, offer: Offer, ctx: RunContext) -> ProviderOutput:
    try:
        output = await provider.run(request, offer, ctx)
    except ProviderError:
        raise
    except TimeoutError as exc:  # the provider's own timeout, not the router's deadline (that cancels instead)
        raise ProviderTimeout("timed out", provider=offer.provider) from exc
    except asyncio.CancelledError as exc:
        if _cancelled_from_outside():
            raise  # the caller's cancellation, or the router's deadline: never swallowed
        # The provider's own doing (say, an inner task it awaited was cancelled): its bug, like any exception.
        raise provider_failure(exc, offer.provider, "run") from exc
    except (Exception, SystemExit) as exc:  # a provider bug (sys.exit included): fall back, not fail or exit
        raise provider_failure(exc, offer.provider, "run") from exc
    if not isinstance(output, ProviderOutput):
        what = f"run() returned {type(output).__name__}, not ProviderOutput"
        raise _WrongReturn(what, provider=offer.provider, what=what)
    return output


class _WrongReturn(ProviderError):
    """A provider's ``run`` returned something that is not a ProviderOutput (its bug): ``what`` says what."""

    def __init__(self, message: str, *, provider: str, what: str) -> None:
        super().__init__(message, provider=provider)
        self.what = what


async def _aiter(source: Iterator[RequestLike] | AsyncIterable[RequestLike]) -> AsyncIterator[RequestLike]:
    if isinstance(source, AsyncIterable):
        async for item in source:
            yield item
    else:
        for item in source:
            yield item


def invalid_request_from(exc: ValidationError) -> InvalidRequest:
    """Every problem of a request's validation error, as one InvalidRequest whose ``field`` names the first.

    The problems are joined by ``; `` (``prompt: Field required; promt: unknown field (did you mean 'prompt'?)``),
    each after its field's location without the task name. An unknown field close to one the request misses, or
    to one its task takes, names it as what was probably meant.
    """
    errors = exc.errors()
    first = errors[0]
    if first["type"] == "union_tag_invalid":
        return InvalidRequest(f"unknown task; expected one of {', '.join(TASKS)}", field="task")
    if first["type"] == "union_tag_not_found":
        return InvalidRequest("missing; say which task this request is", field="task")
    tasks = _task_names()
    located: list[tuple[str, ErrorDetails]] = []
    task: str | None = None
    for details in errors:
        loc = [str(part) for part in details["loc"]]
        if loc and loc[0] in tasks:
            task = task or loc[0]
            loc = loc[1:]
        located.append((".".join(loc), details))
    missing = [where for where, error in located if error["type"] == "missing" and where]
    fields = next((cls.model_fields for name, cls in REQUEST_TYPES.items() if name == task), {})
    known = [name for name in fields if name not in missing]
    problems: list[tuple[str, str]] = []
    for where, error in located:
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            meant = difflib.get_close_matches(where, missing, n=1) or difflib.get_close_matches(where, known, n=1)
            message = (
                f"unknown field (did you mean {meant[0]!r}?)"
                if meant
                else "unknown field (check the spelling; see docs/configuration.md for request fields)"
            )
        problems.append((where, message))
    field, message = problems[0]
    rest = "".join(f"; {where}: {text}" if where else f"; {text}" for where, text in problems[1:])
    hint = "correct the named fields and run again" if len(problems) > 1 else None
    return InvalidRequest(message + rest, field=field or None, hint=hint)


def _task_names() -> set[str]:
    return set(TASKS)


__all__ = [
    "BatchInterrupted",
    "BatchItem",
    "RoutePlan",
    "Router",
    "SyncTextStream",
    "TextStream",
    "UnexpectedError",
    "invalid_request_from",
]
