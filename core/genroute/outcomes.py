"""What a provider call comes to, for every way a request is served (run, stream, webhook job).

Its cost, its :class:`Result`, the files the store does not keep, the error when no offer could serve, and
the warning when a provider raised something unexpected.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import traceback
from contextlib import suppress
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from . import billing
from .config import StoreSettings
from .errors import GenrouteError, InputRefused, NoRouteAvailable, OverBudget, ProviderError, Rejection
from .provider import RunContext
from .secrets import redact
from .types import MEDIA_SUFFIXES, Artifact, Offer, OutputFile, ProviderOutput, RequestModel, Result

# The router's logger: these messages belong to a request's way through the router.
log = logging.getLogger("genroute.router")

# A scratch file this young is never removed to bound the folder: the caller that got it may not have
# copied it yet.
SCRATCH_GRACE_SECONDS = 60.0


def log_provider_bug(provider: str, method: str, exc: BaseException) -> None:
    """A provider raised something unexpected: say so, with its traceback at DEBUG — tokens masked, since
    exception messages may quote them."""
    log.warning("provider %s %s raised %s", provider, method, redact(f"{type(exc).__name__}: {exc}"))
    log.debug("%s", redact("".join(traceback.format_exception(exc))))


def provider_failure(exc: Exception, provider: str, method: str, *, bug_retryable: bool = False) -> ProviderError:
    """What a provider's ``method`` raised (other than a ProviderError), as the ProviderError the router acts on.

    Another genroute error (say, InvalidRequest) fails the call for good; anything else is a provider bug:
    logged, its message masked (it may quote a token), retryable only if ``bug_retryable``.
    """
    if isinstance(exc, GenrouteError):
        return ProviderError(exc.message, provider=provider, retryable=False)
    log_provider_bug(provider, method, exc)
    return ProviderError(redact(f"unexpected {type(exc).__name__}: {exc}"), provider=provider, retryable=bug_retryable)


def extra_incurred(ctx: RunContext) -> Decimal:
    value = ctx.extra.get("incurred")
    return value if isinstance(value, Decimal) and value > 0 else Decimal(0)


def no_route(message: str, rejections: list[Rejection]) -> NoRouteAvailable:
    """NoRouteAvailable, or OverBudget when money, not capability, is what stopped every offer."""
    reasons = [r.reason for r in rejections]
    if any(r.startswith("over budget") for r in reasons) and not any(r.startswith("failed") for r in reasons):
        return OverBudget(message, rejections)
    tried = [r for r in rejections if r.reason.startswith("failed")]
    if tried and all(r.refused_input for r in tried) and not any(r.startswith("over budget") for r in reasons):
        return InputRefused(message, rejections)
    return NoRouteAvailable(message, rejections)


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

    Files are named by content, so equal outputs are written once (and count as just written again). Then
    the folder is brought back under ``store.scratch_max_bytes`` by removing its oldest files — never the
    ones just returned, nor any written in the last ``SCRATCH_GRACE_SECONDS`` (another call's, maybe
    another process's, that its caller has yet to copy). The returned paths exist on return.
    """
    if not files:
        return []
    directory = store.path / "scratch"
    directory.mkdir(parents=True, exist_ok=True)
    artifacts = []
    for file in files:
        digest = hashlib.sha256(file.data).hexdigest()
        path = directory / f"{digest}{MEDIA_SUFFIXES.get(file.media_type, '.bin')}"
        if _holds(path, len(file.data)):
            with suppress(OSError):  # its age restarts: it was just handed out again
                os.utime(path)
        else:
            tmp = directory / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.write_bytes(file.data)
            tmp.replace(path)
        artifacts.append(
            Artifact(
                media_type=file.media_type, path=path, sha256=digest, size=len(file.data), source_url=file.source_url
            )
        )
    _bound_scratch(directory, store.scratch_max_bytes, keep={a.path.name for a in artifacts})
    return artifacts


def _holds(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _bound_scratch(directory: Path, max_bytes: int, keep: set[str]) -> None:
    """Remove the oldest scratch files until the folder holds at most ``max_bytes`` (see scratch_artifacts)."""
    try:
        files: list[tuple[float, int, str]] = []  # (modified, size, name)
        with os.scandir(directory) as entries:
            for entry in entries:
                with suppress(OSError):  # a file removed meanwhile by another process
                    if entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                        files.append((info.st_mtime, info.st_size, entry.name))
    except OSError as exc:
        log.warning("scratch folder %s: could not list it to remove old files: %s", directory, exc)
        return
    total = sum(size for _, size, _ in files)
    if total <= max_bytes:
        return
    recent = time.time() - SCRATCH_GRACE_SECONDS
    removed = 0
    for modified, size, name in sorted(files):
        if total <= max_bytes or modified >= recent:
            break
        if name in keep:
            continue
        try:
            (directory / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("scratch folder %s: could not remove %s: %s", directory, name, exc)
            continue
        total -= size
        removed += 1
    if removed:
        log.debug("scratch folder %s: removed %d old file(s); %d bytes left", directory, removed, total)
