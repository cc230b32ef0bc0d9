"""Keep provider tokens out of everything genroute writes: messages, logs, files."""

from __future__ import annotations

import os
from collections.abc import Mapping

TOKEN_VARIABLES = ("REPLICATE_API_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_MASK = "***"


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Replace every token value found in the environment by ``***``."""
    env = os.environ if env is None else env
    for name in TOKEN_VARIABLES:
        value = env.get(name)
        if value and len(value) >= 4 and value in text:
            text = text.replace(value, _MASK)
    return text
