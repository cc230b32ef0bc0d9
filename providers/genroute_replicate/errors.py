"""Replicate's failures as genroute errors, with the retryable flag the router acts on.

| what happened | genroute error | retried by the router |
|---|---|---|
| 401 / 403 | AuthenticationFailed | no |
| 402 | OutOfCredit (the provider also withdraws for ``credit_cooldown_seconds``) | no |
| 404 | ModelNotFound | no |
| 413 / 422 | ProviderRejectedInput, naming the genroute field | no |
| 429 | RateLimited with ``retry_after`` from the ``Retry-After`` header | yes |
| 5xx | ProviderUnavailable | yes |
| read/connect timeouts | ProviderTimeout | yes |
| connection refused, reset | ProviderUnavailable | yes |
| a failed prediction | ModelFailed with the logs' tail and ``incurred`` | no |

Whether a failed *create* may be retried at all is decided in :mod:`genroute_replicate.creates`; this
module only names what happened. Every message goes through :func:`genroute.secrets.redact`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import httpx
from replicate.exceptions import ModelError, ReplicateError

from genroute import errors
from genroute.secrets import redact

from .client import ApiStatusError
from .options import TOKEN_VARIABLE

NAME = "replicate"
_FIELD_LINE = re.compile(r"^\s*-\s*(?P<field>[\w.\-]+):\s*(?P<text>.+)$", re.MULTILINE)


def from_status(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    retry_after: float | None = None,
    invalid_fields: list[dict[str, Any]] | None = None,
    what: str = "",
    origins: Mapping[str, str] | None = None,
) -> errors.ProviderError:
    """The genroute error for an HTTP error answer from the API."""
    text = " — ".join(p.strip() for p in (title, detail) if p and p.strip()) or f"HTTP {status}"
    where = f" ({what})" if what else ""
    if status == 401:
        return errors.AuthenticationFailed(
            redact(f"Replicate refused the API token (HTTP 401){where}: {text}"),
            provider=NAME,
            hint=f"check {TOKEN_VARIABLE}: it must be a valid API token from replicate.com/account/api-tokens",
        )
    if status == 403:
        return errors.AuthenticationFailed(
            redact(f"the API token may not use this resource (HTTP 403){where}: {text}"), provider=NAME
        )
    if status == 402:
        return errors.OutOfCredit(redact(f"Replicate account is out of credit (HTTP 402){where}"), provider=NAME)
    if status == 404:
        return errors.ModelNotFound(redact(f"not found on Replicate (HTTP 404){where}: {text}"), provider=NAME)
    if status in (413, 422):
        return errors.ProviderRejectedInput(
            redact(_rejected_text(status, detail or title or "", invalid_fields or [], origins or {}, where)),
            provider=NAME,
        )
    if status == 429:
        return errors.RateLimited(
            redact(f"rate limited by Replicate (HTTP 429){where}: {text}"), provider=NAME, retry_after=retry_after
        )
    if status >= 500:
        return errors.ProviderUnavailable(
            redact(f"Replicate answered HTTP {status}{where}: {text}"), provider=NAME, retry_after=retry_after
        )
    return errors.ProviderError(redact(f"Replicate answered HTTP {status}{where}: {text}"), provider=NAME)


def _rejected_text(
    status: int, detail: str, fields: list[dict[str, Any]], origins: Mapping[str, str], where: str
) -> str:
    problems: list[tuple[str, str]] = []
    for item in fields:
        name, text = str(item.get("field", "")), str(item.get("description", ""))
        if name:
            problems.append((name, text))
    if not problems:
        problems = [(m.group("field"), m.group("text").strip()) for m in _FIELD_LINE.finditer(detail)]
    if not problems:
        return f"Replicate rejected the input (HTTP {status}){where}: {detail.strip() or 'no detail'}"
    parts = []
    for name, text in problems:
        key = name.removeprefix("input.")
        shown = origins.get(key.split(".", 1)[0], key) if name.startswith("input.") else name
        parts.append(f"{shown}: {text}" + (f" (model input {key!r})" if shown != key else ""))
    return f"Replicate rejected the input (HTTP {status}){where}: " + "; ".join(parts)


def from_exception(
    exc: BaseException, *, what: str = "", origins: Mapping[str, str] | None = None
) -> errors.ProviderError:
    """Any exception from the client or httpx, as a genroute ProviderError."""
    if isinstance(exc, errors.ProviderError):
        return exc
    if isinstance(exc, ApiStatusError):
        return from_status(
            exc.status,
            title=exc.title,
            detail=exc.detail,
            retry_after=exc.retry_after,
            invalid_fields=exc.invalid_fields,
            what=what,
            origins=origins,
        )
    if isinstance(exc, ReplicateError) and exc.status is not None:
        return from_status(exc.status, title=exc.title, detail=exc.detail, what=what, origins=origins)
    where = f" ({what})" if what else ""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return errors.ProviderTimeout(f"Replicate did not answer in time{where}: {type(exc).__name__}", provider=NAME)
    if isinstance(exc, httpx.TransportError):
        return errors.ProviderUnavailable(
            redact(f"could not reach Replicate{where}: {type(exc).__name__}: {exc}"), provider=NAME
        )
    if isinstance(exc, ModelError):
        return errors.ModelFailed(redact(f"the model failed{where}: {exc}"), provider=NAME)
    if isinstance(exc, ValueError):  # a malformed JSON answer
        return errors.ProviderError(
            redact(f"Replicate sent an answer that could not be read{where}: {type(exc).__name__}"),
            provider=NAME,
            retryable=True,
        )
    return errors.ProviderError(redact(f"unexpected {type(exc).__name__}{where}: {exc}"), provider=NAME)


def tail(logs: str | None, chars: int) -> str:
    """The last ``chars`` characters of a prediction's logs, cut at a line start when possible."""
    if not logs or chars <= 0:
        return ""
    text = logs[-chars:]
    if len(logs) > chars and "\n" in text:
        text = text.split("\n", 1)[1]
    return text.strip()


def model_failed(prediction: Mapping[str, Any], *, incurred: Decimal | None, logs_chars: int) -> errors.ModelFailed:
    """A failed prediction as ModelFailed: its error, the logs' tail, and what it cost."""
    error = str(prediction.get("error") or "the prediction failed").strip()
    logs = tail(prediction.get("logs"), logs_chars)
    message = f"prediction {prediction.get('id')} of {prediction.get('model')} failed: {error}"
    if logs:
        message += f"\n--- logs (tail) ---\n{logs}"
    return errors.ModelFailed(redact(message), provider=NAME, incurred=incurred)
