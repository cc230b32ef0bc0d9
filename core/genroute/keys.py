"""The result store's key: sha256 of the canonical form of a request.

Canonical means: every field that can change the output is present (defaults included, so leaving a
field out and giving its default are the same request), media inputs appear as their content hash,
and fields that only change *how* the request is carried out (cache mode, deadline) are left out.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

from .media import MediaInput
from .types import RequestModel

KEY_VERSION = 1  # bump when the canonical form changes, so old entries are never served for new meanings


def canonical_request(request: RequestModel) -> dict[str, Any]:
    """The request as plain, sorted JSON-ready data, without the non-key fields."""
    data: dict[str, Any] = {"v": KEY_VERSION}
    for name in sorted(type(request).model_fields):
        if name in request.NON_KEY_FIELDS:
            continue
        data[name] = _plain(getattr(request, name))
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, MediaInput):
        return {"sha256": value.sha256}
    if isinstance(value, float) and value == 0:
        return 0.0  # -0.0 and 0.0 are the same request
    if isinstance(value, Decimal):
        return str(value.normalize())
    return value


def request_key(request: RequestModel) -> str:
    """sha256 hex of the canonical request."""
    blob = json.dumps(canonical_request(request), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
