"""Minimal valid requests for every task, for tests that vary one field of each."""

from __future__ import annotations

import io
import wave
from typing import Any

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32 + b"fake-png-body"


def wav_bytes(seconds: float = 0.5, rate: int = 8000, frame: bytes = b"\x00\x00") -> bytes:
    """A mono 16-bit WAV file repeating one ``frame`` (silence by default)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frame * int(seconds * rate))
    return buffer.getvalue()


def good(task: str) -> dict[str, Any]:
    """A minimal valid request dict for ``task`` (media as bytes)."""
    base: dict[str, dict[str, Any]] = {
        "text-to-image": {"prompt": "a red fox"},
        "image-to-image": {"prompt": "as a watercolour", "image": PNG},
        "inpaint": {"prompt": "a hat", "image": PNG, "mask": PNG},
        "upscale": {"image": PNG},
        "remove-background": {"image": PNG},
        "text-to-video": {"prompt": "waves"},
        "image-to-video": {"image": PNG},
        "text-to-speech": {"text": "hello there"},
        "speech-to-text": {"audio": wav_bytes()},
        "text-generation": {"prompt": "say hi"},
    }
    return {"task": task, **base[task]}
