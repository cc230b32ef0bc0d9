"""Answers → bytes genroute keeps: images re-encoded as PNG, audio sniffed, transcripts cut into segments.

The client hands back PIL images (opened lazily: a truncated answer only fails when decoded), raw audio bytes whose
content type it never checks, and transcripts with optional timestamped chunks. Everything is checked here.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Protocol

from PIL import Image

from genroute import errors
from genroute.billing import wav_seconds
from genroute.media import audio_cut_short, sniff_media_type
from genroute.types import Segment

from .options import NAME

_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


def png_bytes(image: Image.Image, *, model: str, max_bytes: int) -> bytes:
    """``image`` decoded in full and re-encoded as PNG; a broken or oversized image raises ``OutputRejected``."""
    try:
        image.load()  # the client opens lazily: a truncated answer fails only here
        if image.mode not in _PNG_MODES:
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise errors.OutputRejected(f"{model} answered a broken image ({exc})", provider=NAME, retryable=True) from exc
    data = buffer.getvalue()
    if len(data) > max_bytes:
        raise errors.OutputRejected(
            f"{model} answered a {len(data)}-byte image, over max_output_bytes ({max_bytes})", provider=NAME
        )
    with Image.open(io.BytesIO(data)) as check:  # what is stored must load back whole
        check.load()
    return data


_AUDIO_TYPES = frozenset({"audio/wav", "audio/flac", "audio/mpeg", "audio/ogg"})


def sniff_audio(data: bytes) -> str | None:
    """The media type of audio bytes (WAV, FLAC, MP3, Ogg), or None: genroute's own check of inputs.

    An MP3 must start with an ID3 tag or two whole MPEG audio frames in a row, so a text body (UTF-16 text
    starts ``FF FE``, which reads as one MPEG frame header) is not taken for audio.
    """
    media_type = sniff_media_type(data)
    return media_type if media_type in _AUDIO_TYPES else None


def checked_audio(data: bytes, *, model: str, max_bytes: int) -> str:
    """The media type of generated audio; anything else (an HTML error page served as 200…) → ``OutputRejected``."""
    if not data:
        raise errors.OutputRejected(f"{model} answered no audio (an empty body)", provider=NAME, retryable=True)
    media_type = sniff_audio(data)
    if media_type is None:
        raise errors.OutputRejected(
            f"{model} answered something that is not audio (it starts with {data[:16]!r})",
            provider=NAME,
            retryable=True,
        )
    cut_short = audio_cut_short(data) if media_type == "audio/wav" else None
    if cut_short is not None:
        raise errors.OutputRejected(f"{model} answered {cut_short}", provider=NAME, retryable=True)
    if media_type == "audio/wav" and wav_seconds(data) is None:
        raise errors.OutputRejected(
            f"{model} answered a broken WAV file (no sound data)", provider=NAME, retryable=True
        )
    if len(data) > max_bytes:
        raise errors.OutputRejected(
            f"{model} answered {len(data)} bytes of audio, over max_output_bytes ({max_bytes})", provider=NAME
        )
    return media_type


def audio_seconds(data: bytes) -> float | None:
    """Duration of WAV or FLAC audio from its header, else None."""
    seconds = wav_seconds(data)
    if seconds is not None:
        return round(seconds, 3)
    return _flac_seconds(data)


def _flac_seconds(data: bytes) -> float | None:
    # "fLaC", then a 4-byte block header; STREAMINFO holds sample rate (20 bits) and total samples (36 bits).
    if len(data) < 8 + 18 or data[:4] != b"fLaC" or data[4] & 0x7F != 0:
        return None
    info = data[8 : 8 + 18]
    rate = (info[10] << 12) | (info[11] << 4) | (info[12] >> 4)
    total = ((info[13] & 0x0F) << 32) | int.from_bytes(info[14:18], "big")
    if not rate or not total:
        return None
    return round(total / rate, 3)


class _Chunk(Protocol):
    text: str
    timestamp: Sequence[float | None] | None


def segments(text: str, chunks: Sequence[_Chunk] | None, duration: float | None) -> list[Segment]:
    """Timed segments from the transcript's chunks; a missing end is the next start (or the audio's end).
    Without chunks, one segment spans the whole audio."""
    pieces = [c for c in chunks or [] if (c.text or "").strip()]
    found: list[Segment] = []
    for i, chunk in enumerate(pieces):
        stamps = list(chunk.timestamp or [])
        start = _number(stamps[0] if stamps else None)
        end = _number(stamps[1] if len(stamps) > 1 else None)
        if start is None:
            start = found[-1].end if found else 0.0
        if end is None:
            following = pieces[i + 1].timestamp if i + 1 < len(pieces) else None
            end = _number(following[0] if following else None) or duration or start
        start = max(0.0, start)
        found.append(Segment(start=start, end=max(start, end), text=chunk.text.strip()))
    if not found and text.strip():
        found.append(Segment(start=0.0, end=max(0.0, duration or 0.0), text=text.strip()))
    return found


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
