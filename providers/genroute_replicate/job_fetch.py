"""Asking Replicate for a webhook job's prediction, when its delivery never came (``genroute jobs sync``).

``GET /v1/predictions/{id}`` answers the same prediction JSON a webhook delivery carries, so a finished one
completes the job through :meth:`ReplicateProvider.complete <genroute_replicate.provider.ReplicateProvider.complete>`
exactly as the delivery would have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from genroute import errors
from genroute.jobs import Job
from genroute.provider import RemoteJob, RunContext

from . import errors as mapping
from .client import ApiStatusError, Session
from .creates import TERMINAL
from .options import options_for

if TYPE_CHECKING:
    from .provider import ReplicateProvider

NAME = "replicate"


async def fetch_job(provider: ReplicateProvider, job: Job, ctx: RunContext) -> RemoteJob | None:
    """The prediction of ``job`` as Replicate has it now; None for a job without a prediction id.

    Read through the provider's own session (its token, ``base_url`` and transport); errors
    are genroute's (401 → ``AuthenticationFailed``, 429/5xx retryable …), and an unknown prediction (404) is a
    ``ProviderError`` saying so.
    """
    if not job.remote_id:
        return None
    options = options_for(ctx.settings, ctx.options)
    with provider._guard(options, ctx.settings):
        found = await _read(provider._session(options), job.remote_id)
    if found is None:
        raise errors.ProviderError(
            f"prediction {job.remote_id} was not found (HTTP 404)",
            provider=NAME,
            hint="was it made with another REPLICATE_API_TOKEN (another account)?",
        )
    status = str(found.get("status"))
    return RemoteJob(status=status, finished=status in TERMINAL, payload=found)


async def _read(session: Session, prediction_id: str) -> dict[str, Any] | None:
    """The prediction's JSON as the API answers it, None if unknown (404).

    Read through the client's own httpx client (its token, base URL, transport and error hook) rather than
    ``predictions.async_get``, whose model drops fields the webhook carries, such as ``data_removed``.
    """
    what = f"reading prediction {prediction_id}"
    try:
        response = await session.client._async_client.get(f"/v1/predictions/{quote(prediction_id, safe='')}")
        body = response.json()
    except ApiStatusError as exc:
        if exc.status == 404:
            return None
        raise mapping.from_exception(exc, what=what) from exc
    except (httpx.HTTPError, ValueError) as exc:
        raise mapping.from_exception(exc, what=what) from exc
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        raise errors.ProviderError(f"{what}: the answer is not a prediction", provider=NAME)
    return body


__all__ = ["fetch_job"]
