"""Keep provider tokens out of everything genroute writes: messages, logs, files."""

from __future__ import annotations

import os
from collections.abc import Mapping

TOKEN_VARIABLES = ("REPLICATE_API_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_MASK = "***"


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Replace every token value found in the environment by ``***``."""
    env = os.environ if env is None else env
    values = {env.get(name) or "" for name in TOKEN_VARIABLES}
    # Longest first, so a token that contains another is masked whole.
    for value in sorted((v for v in values if len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, _MASK)
    return text
