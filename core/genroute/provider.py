"""What a provider plugin implements, and the helpers that keep a plugin short."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import httpx
from pydantic import BaseModel, ValidationError

from . import billing
from .config import ProviderSettings, Settings, config_error_from
from .errors import ConfigError, ProviderError
from .types import TASKS, TIERS, Billing, Offer, ProviderOutput, RequestModel, Task, Tier

if TYPE_CHECKING:
    from .jobs import Job


@dataclass
class RunContext:
    """What the router hands a provider for one attempt.

    ``extra`` carries what a provider reports back outside its return value: ``extra["output"]`` (the
    final ProviderOutput of a stream) and ``extra["incurred"]`` (a Decimal billed by work that was
    cancelled, say the seconds a remote job ran before the deadline; settled instead of released).
    """

    settings: Settings
    provider_settings: ProviderSettings
    options: BaseModel | None  # the provider's validated options_model instance
    request_key: str
    attempt: int
    deadline: float  # time.monotonic() value after which the router gives up
    http_factory: Callable[[], httpx.AsyncClient]
    extra: dict[str, object] = field(default_factory=dict)
    orphaned_since: float | None = None
    """A process that died may already have started this request on this provider since this POSIX time;
    a provider that can find its work (say, a prediction it created) should look before starting anew."""

    @property
    def http(self) -> httpx.AsyncClient:
        """A shared async HTTP client for downloads."""
        return self.http_factory()

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())


@dataclass(frozen=True)
class RemoteJob:
    """What :meth:`Provider.fetch_job` found of a job on the provider's side."""

    status: str
    """The provider's own word for the work's state (Replicate: starting, processing, succeeded, failed, canceled)."""
    finished: bool
    """The remote work is over (succeeded, failed or canceled): ``payload`` completes the job."""
    payload: Any = None
    """What :meth:`Provider.complete` takes: what a webhook delivery of this state would carry."""


class Provider(ABC):
    """A backend that runs requests. Subclass it, set ``name``, implement :meth:`run`.

    Raise :mod:`genroute.errors` provider errors (``RateLimited``, ``ProviderUnavailable`` …) so the
    router can retry, cool the provider down, or fall back.
    """

    name: ClassVar[str]
    options_model: ClassVar[type[BaseModel] | None] = None
    """Pydantic model for ``[providers.<name>.options]``; None means the section must be empty."""

    def check_options(self, settings: ProviderSettings, source: str = "plugins.toml") -> BaseModel | None:
        """Validate this provider's options; raise ConfigError naming the key."""
        if self.options_model is None:
            if settings.options:
                key = f"providers.{self.name}.options"
                raise ConfigError(
                    "this provider takes no options", file=source, key=key, hint="remove the options table"
                )
            return None
        try:
            return self.options_model.model_validate(settings.options)
        except ValidationError as exc:
            raise config_error_from(exc, file=source, key_prefix=("providers", self.name, "options")) from None

    def unavailable_reason(self, settings: Settings) -> str | None:
        """Why this provider cannot make offers right now (say, a missing token), or None."""
        return None

    def forget_withdrawal(self, settings: Settings) -> str | None:
        """Forget a withdrawal this provider made of itself (say, after running out of credit), so it serves again.

        Called by ``genroute providers reset`` once the user has fixed the cause (added credit). Return what was
        forgotten, for the user (``"out of credit (HTTP 402), withdrawn until … UTC"``), or None when there was
        nothing. Default: a provider that never withdraws has nothing to forget.
        """
        return None

    @abstractmethod
    async def run(self, request: RequestModel, offer: Offer, ctx: RunContext) -> ProviderOutput:
        """Carry out ``request`` as ``offer`` promised, returning the output bytes."""

    async def stream(self, request: RequestModel, offer: Offer, ctx: RunContext) -> AsyncIterator[str]:
        """Yield text as it is generated. Default: run, then yield the whole text at once."""
        output = await self.run(request, offer, ctx)
        ctx.extra["output"] = output
        if output.text:
            yield output.text

    supports_webhooks: ClassVar[bool] = False
    """True when :meth:`submit` and :meth:`complete` are implemented (completion by webhook)."""

    async def submit(self, request: RequestModel, offer: Offer, ctx: RunContext, webhook_url: str) -> str:
        """Start ``request`` remotely, asking the provider to call ``webhook_url`` when done; return its id."""
        raise ProviderError("does not complete by webhook", provider=self.name, retryable=False)

    async def complete(self, job: Job, payload: Any, ctx: RunContext) -> ProviderOutput:
        """Turn a verified completion ``payload`` for ``job`` into output bytes (downloading them)."""
        raise ProviderError("does not complete by webhook", provider=self.name, retryable=False)

    async def fetch_job(self, job: Job, ctx: RunContext) -> RemoteJob | None:
        """Ask the service for the state of ``job``'s remote work (its :attr:`~genroute.jobs.Job.remote_id`).

        Used by :meth:`Router.areconcile_jobs <genroute.router.Router.areconcile_jobs>` (``genroute jobs sync``)
        when a webhook delivery never arrived: a finished :class:`RemoteJob`'s ``payload`` is handed to
        :meth:`complete` exactly as a delivery's would be. Raise a ``ProviderError`` when the service could not
        be asked or does not know the job. Default: None, this provider cannot be asked (wait for the webhook).
        """
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional, most providers hold nothing
        """Release clients and connections."""


class Availability(NamedTuple):
    """What :func:`checked_unavailable_reason` found."""

    reason: str | None
    """Why the provider cannot serve now; None when it can."""
    fault: bool = False
    """Its ``unavailable_reason`` raised or answered something that is not a str: ``reason`` says what."""
    error: BaseException | None = None
    """What it raised, if it did."""


def checked_unavailable_reason(provider: Provider, settings: Settings) -> Availability:
    """``provider.unavailable_reason(settings)``, made safe to show.

    A provider's bug must not break every request nor ``genroute providers``: one that raises is unavailable,
    the reason saying what it raised; an answer that is not a ``str`` (say ``42``) is unavailable too, the
    reason saying what it returned; a false answer (``None``, ``""``) means available. The caller names the
    plugin to fix (see :meth:`genroute.router.Router.unavailable_reason`).
    """
    try:
        why: object = provider.unavailable_reason(settings)
    except Exception as exc:
        return Availability(f"unavailable_reason raised {type(exc).__name__}: {exc}", fault=True, error=exc)
    if not why:
        return Availability(None)
    if isinstance(why, str):
        return Availability(why)
    return Availability(
        f"unavailable_reason returned {type(why).__name__} {repr(why)[:80]}, not a str or None", fault=True
    )


def catalogue_offers(
    provider: str,
    request: RequestModel,
    settings: Settings,
    *,
    billing_kind: Billing | None = None,
) -> list[Offer]:
    """Offers for ``request`` from ``[providers.<provider>.models]``: one per tier configured for the task."""
    section = settings.provider(provider)
    tiers = section.models.get(request.task_name, {})
    return [
        Offer(
            provider=provider,
            model=entry.model,
            task=request.task_name,
            tier=tier,
            estimate=billing.estimate(entry, request),
            billing=billing_kind or section.billing,
            priority=section.priority,
            entry=entry,
        )
        for tier, entry in tiers.items()
    ]


def catalogue_tasks(settings: ProviderSettings) -> list[tuple[Task, Tier, str]]:
    """(task, tier, model) rows of a provider's catalogue, in canonical order (for listings)."""
    rows: list[tuple[Task, Tier, str]] = []
    for task in TASKS:
        for tier in TIERS:
            entry = settings.models.get(task, {}).get(tier)
            if entry is not None:
                rows.append((task, tier, entry.model))
    return rows
