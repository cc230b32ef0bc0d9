"""What went wrong, in genroute's terms: the client's exceptions → :mod:`genroute.errors`.

``huggingface_hub`` raises ``HfHubHTTPError`` (with ``.response`` and ``.server_message``) for HTTP errors, but lets
a malformed answer escape as a bare ``json.JSONDecodeError`` and a dropped connection as a bare ``httpx2`` error;
all of them end up here. Messages carry the server's own words, never the token.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Mapping
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any

import httpx2
from huggingface_hub.errors import (
    GenerationError,
    HfHubHTTPError,
    IncompleteGenerationError,
    InferenceTimeoutError,
    OfflineModeIsEnabled,
    OverloadedError,
    RepositoryNotFoundError,
    TextGenerationError,
)
from huggingface_hub.errors import ValidationError as GenerationValidationError
from huggingface_hub.utils._http import parse_ratelimit_headers  # re-exported lazily by .utils
from PIL import UnidentifiedImageError

from genroute import errors
from genroute.secrets import redact

from .options import NAME

_COMBINED = re.compile(r"(?:^|[,;\s])reset\s*=\s*(\d+)", re.IGNORECASE)  # draft 6: "limit=500, remaining=0, reset=5"
_EPOCH = 1_000_000_000  # a reset value this large is a point in time, not a delay

TOKEN_HINT = "set HF_TOKEN to a Hugging Face token allowed to make calls to Inference Providers"
CREDIT_HINT = (
    "the Hugging Face monthly free credit is used up; genroute routes elsewhere until it renews next month "
    "(or set allow_paid = true in [providers.huggingface.options] to let genroute pay for Hugging Face work)"
)
CREDIT_USED_UP = (
    "Hugging Face reported the monthly free credit used up (HTTP 402); it renews next month, or set allow_paid = true "
    "in [providers.huggingface.options] to let genroute pay for Hugging Face work"
)
PAID_CREDIT_HINT = "the Hugging Face account cannot pay for more usage: add credit or a payment method on hf.co"


def status_of(exc: HfHubHTTPError) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def server_message(exc: HfHubHTTPError) -> str:
    """The server's own words (``error`` in the JSON body or ``X-Error-Message``), else the reason phrase."""
    message = (exc.server_message or "").strip()
    if not message:
        response = getattr(exc, "response", None)
        message = str(getattr(response, "reason_phrase", "") or "").strip() or type(exc).__name__
    return " ".join(message.split())[:500]


def _json_body(exc: HfHubHTTPError) -> Any:
    try:
        return exc.response.json()
    except Exception:  # not read, not JSON: no body to look at
        return None


def loading_estimate(exc: BaseException) -> float | None:
    """Seconds the service expects a loading model to need (503 ``{"error": …, "estimated_time": N}``), else None."""
    if not isinstance(exc, HfHubHTTPError) or status_of(exc) != 503:
        return None
    body = _json_body(exc)
    estimate = body.get("estimated_time") if isinstance(body, dict) else None
    if isinstance(estimate, bool) or not isinstance(estimate, int | float) or not math.isfinite(estimate):
        return None
    return max(0.0, float(estimate))


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The longest wait any rate-limit header asks for: ``Retry-After`` (seconds or HTTP date), ``RateLimit``
    (draft 9 ``"api";r=0;t=N`` as the client parses it, or draft 6 ``limit=…, remaining=…, reset=N``) and
    ``RateLimit-Reset``. None when no header says."""
    now = time.time() if now is None else now
    waits: list[float] = []
    lower = {key.lower(): value for key, value in headers.items()}
    retry_after = lower.get("retry-after", "").strip()
    if retry_after:
        try:
            waits.append(float(retry_after))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
                waits.append(parsedate_to_datetime(retry_after).timestamp() - now)
    info = parse_ratelimit_headers(headers)
    if info is not None and info.remaining == 0:
        waits.append(float(info.reset_in_seconds))
    elif info is None and (match := _COMBINED.search(lower.get("ratelimit", ""))):
        waits.append(float(match.group(1)))
    reset = lower.get("ratelimit-reset", "").strip()
    if reset.isdigit():
        value = float(reset)
        waits.append(value - now if value >= _EPOCH else value)
    waits = [w for w in waits if math.isfinite(w)]
    return max(0.0, max(waits)) if waits else None


def _http_error(exc: HfHubHTTPError, model: str, incurred: Decimal | None, billing: str) -> errors.ProviderError:
    status = status_of(exc)
    what = f"HTTP {status} from {model}: {server_message(exc)}"
    common: dict[str, Any] = {"provider": NAME, "incurred": incurred}
    if isinstance(exc, RepositoryNotFoundError):
        return errors.ModelNotFound(f"the Hub does not know {model}: {server_message(exc)}", **common)
    if status in (401, 403):
        return errors.AuthenticationFailed(what, hint=TOKEN_HINT, **common)
    if status == 402:
        if billing == "free":
            # The router marks free:huggingface used up with this message as the note, which every later refusal
            # of free work quotes: it says what happened and what to do (a higher limit in plugins.toml would not help).
            return errors.OutOfCredit(f"{CREDIT_USED_UP} ({what})", hint=CREDIT_HINT, **common)
        return errors.OutOfCredit(what, hint=PAID_CREDIT_HINT, **common)
    if status in (400, 413, 422):
        return errors.ProviderRejectedInput(what, **common)
    if status in (404, 410):
        return errors.ModelNotFound(what, **common)
    if status == 429:
        headers = exc.response.headers
        wait = retry_after_seconds(headers)
        return errors.RateLimited(what, retry_after=wait, **common)
    if status in (408, 504):
        return errors.ProviderTimeout(what, **common)
    if status is not None and status >= 500:
        wait = retry_after_seconds(exc.response.headers)
        return errors.ProviderUnavailable(what, retry_after=wait, **common)
    return errors.ProviderError(what, retryable=False, **common)


def translate(
    exc: BaseException, *, model: str, incurred: Decimal | None = None, billing: str = "free"
) -> errors.ProviderError | None:
    """The genroute error for ``exc`` raised while calling ``model`` (for an offer of kind ``billing``), or None for
    an exception this module does not know (the router then reports it as a provider bug, with its traceback).
    ``incurred``: what the call(s) already billed, settled by the router instead of releasing the reservation."""
    error = _translate(exc, model, incurred, billing)
    if error is not None:
        error.message = redact(error.message)
        error.args = (error.message,)
    return error


def timed_out_after_sending(exc: BaseException) -> bool | None:
    """For a timeout: whether the request had been sent (True: a read or write timeout, the work may have run and
    been billed) or not (False: connecting, or waiting for a pooled connection). None when ``exc`` is no timeout.

    The client wraps httpx2's timeouts in ``InferenceTimeoutError``; the cause tells which phase timed out (one that
    cannot be told is taken as sent: the ledger must not under-record)."""
    if not isinstance(exc, InferenceTimeoutError | httpx2.TimeoutException):
        return None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, httpx2.ConnectTimeout | httpx2.PoolTimeout):
            return False
        if isinstance(current, httpx2.ReadTimeout | httpx2.WriteTimeout):
            return True
        current = current.__cause__ or current.__context__
    return True


def _translate(exc: BaseException, model: str, incurred: Decimal | None, billing: str) -> errors.ProviderError | None:
    common: dict[str, Any] = {"provider": NAME, "incurred": incurred}
    if isinstance(exc, errors.ProviderError):
        if exc.incurred is None and incurred:
            exc.incurred = incurred
        return exc
    sent = timed_out_after_sending(exc)
    if sent is False:
        return errors.ProviderTimeout(f"could not reach Hugging Face in time to call {model} (nothing sent)", **common)
    if sent:
        # The service may run (and bill) work whose answer never arrived: ``incurred`` counts it (see provider.py),
        # and the same model is not asked again — another call would be billed as well.
        return errors.ProviderTimeout(
            f"{model} did not answer in time; the request had been sent, so it may have run and been billed "
            "(counted at its estimate, not sent again)",
            retryable=False,
            hint="raise request_timeout_seconds in [providers.huggingface.options] for slow (cold or large) models",
            **common,
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return errors.ProviderError(
            "huggingface_hub is in offline mode (HF_HUB_OFFLINE), which blocks every request",
            retryable=False,
            hint="unset HF_HUB_OFFLINE to use Hugging Face",
            **common,
        )
    if isinstance(exc, HfHubHTTPError):
        return _http_error(exc, model, incurred, billing)
    if isinstance(exc, TextGenerationError):
        detail = f"{model} failed while generating: {exc}"
        if isinstance(exc, GenerationValidationError):
            return errors.ProviderRejectedInput(detail, **common)
        if isinstance(exc, OverloadedError):
            return errors.ProviderUnavailable(detail, **common)
        if isinstance(exc, IncompleteGenerationError):
            return errors.ProviderError(detail, retryable=True, **common)
        if isinstance(exc, GenerationError):
            return errors.ModelFailed(detail, **common)
        return errors.ProviderError(detail, retryable=True, **common)
    if isinstance(exc, json.JSONDecodeError):
        return errors.ProviderError(
            f"malformed answer from {model}: not valid JSON ({exc.msg} at character {exc.pos})",
            retryable=True,
            **common,
        )
    if isinstance(exc, httpx2.TransportError):
        detail = str(exc) or type(exc).__name__
        return errors.ProviderUnavailable(
            f"the connection to Hugging Face failed while calling {model} ({type(exc).__name__}: {detail})", **common
        )
    if isinstance(exc, httpx2.StreamError):
        return errors.ProviderError(f"the answer stream from {model} broke: {type(exc).__name__}", **common)
    if isinstance(exc, UnidentifiedImageError):
        return errors.OutputRejected(f"{model} answered something that is not an image", retryable=True, **common)
    if isinstance(exc, ValueError):  # the client refused to build the call (unknown task for the model, bad input)
        text = str(exc)
        if "doesn't support task" in text or "not supported" in text:
            return errors.ModelNotFound(f"{model}: {text}", **common)
        return errors.ProviderError(f"huggingface_hub refused the call to {model}: {text}", retryable=False, **common)
    return None
