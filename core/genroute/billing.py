"""Estimate and settle a request's cost from a model's billing unit and price.

Every task has an explicit unit in configuration; there is no default price. An estimate is an upper
bound where the quantity is unknown in advance (tokens: ``max_tokens``), so a reservation holds enough.
"""

from __future__ import annotations

import math
from decimal import Decimal

from .money import to_micro
from .types import (
    ImageToVideo,
    ModelEntry,
    ProviderOutput,
    RequestModel,
    SpeechToText,
    TextGeneration,
    TextToSpeech,
    TextToVideo,
    Usage,
)

_WORDS_PER_SECOND = Decimal("2.5")  # ~150 spoken words per minute
_FALLBACK_AUDIO_BYTES_PER_SECOND = 16_000  # 128 kbit/s when the container's header cannot be read


def requested_outputs(request: RequestModel | None) -> int:
    return int(getattr(request, "num_outputs", 1))


def _media_seconds(request: RequestModel | None) -> Decimal:
    if isinstance(request, TextToVideo | ImageToVideo):
        return Decimal(str(request.duration_seconds))
    if isinstance(request, TextToSpeech):
        return max(Decimal("0.5"), Decimal(len(request.text.split())) / _WORDS_PER_SECOND)
    return Decimal(0)


def input_audio_seconds(request: RequestModel | None) -> Decimal:
    """Length of a speech-to-text input: exact for WAV, from the byte size otherwise."""
    if not isinstance(request, SpeechToText):
        return Decimal(0)
    data = request.audio.data
    seconds = wav_seconds(data)
    if seconds is None:
        seconds = len(data) / _FALLBACK_AUDIO_BYTES_PER_SECOND
    return Decimal(str(round(seconds, 3)))


def wav_seconds(data: bytes) -> float | None:
    """Duration of a PCM WAV from its header, or None when ``data`` is not one."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset = 12
    byte_rate = 0
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        size = int.from_bytes(data[offset + 4 : offset + 8], "little")
        if chunk_id == b"fmt " and size >= 16:
            byte_rate = int.from_bytes(data[offset + 16 : offset + 20], "little")
        elif chunk_id == b"data" and byte_rate:
            available = min(size, len(data) - offset - 8)
            return available / byte_rate
        offset += 8 + size + (size & 1)
    return None


def quantity(entry: ModelEntry, request: RequestModel | None, output: ProviderOutput | None = None) -> Decimal:
    """How many units of ``entry.unit`` the request uses: estimated, or measured from ``output``."""
    usage = output.usage if output is not None else None
    outputs = Decimal(usage.outputs if usage and usage.outputs is not None else requested_outputs(request))
    if output is not None and (usage is None or usage.outputs is None) and output.files:
        outputs = Decimal(len(output.files))
    match entry.unit:
        case "request":
            return Decimal(1)
        case "output":
            return outputs
        case "media_second":
            if usage and usage.media_seconds is not None:
                return Decimal(str(usage.media_seconds))
            return _media_seconds(request) * outputs
        case "audio_minute":
            if usage and usage.input_seconds is not None:
                return Decimal(str(usage.input_seconds)) / 60
            return input_audio_seconds(request) / 60
        case "compute_second":
            if usage and usage.compute_seconds is not None:
                return Decimal(str(usage.compute_seconds))
            assert entry.est_seconds is not None  # enforced by ModelEntry
            return entry.est_seconds * outputs
        case "1k_tokens":
            if usage and usage.output_tokens is not None:
                return Decimal(usage.output_tokens) / 1000
            tokens = request.max_tokens if isinstance(request, TextGeneration) else 0
            return Decimal(math.ceil(tokens)) / 1000
    raise AssertionError(f"unhandled billing unit {entry.unit}")


def estimate(entry: ModelEntry, request: RequestModel) -> Decimal:
    """The price asked before the call: unit price × estimated quantity, rounded up to the micro-dollar.

    Rounded as the ledger rounds the reservation it makes for it, and written plainly (``0.0001``, never
    ``0.0001000000000000000000000000000`` from a quantity such as seconds ÷ 60).
    """
    return to_micro(entry.price * quantity(entry, request), round_up=True)


def usage_hint(entry: ModelEntry, request: RequestModel) -> Usage:
    """What is known of a request's billable quantities before it runs (kept with a job for settling)."""
    return Usage(
        outputs=requested_outputs(request),
        media_seconds=float(_media_seconds(request) * requested_outputs(request)) or None,
        input_seconds=float(input_audio_seconds(request)) or None,
    )


def actual(entry: ModelEntry, request: RequestModel | None, output: ProviderOutput) -> Decimal:
    """The cost after the call: provider-reported when given, else unit price × measured quantity.

    Exact: the caller rounds the sum it charges (with any cost incurred before) with :func:`genroute.money.quantize`.
    """
    if output.actual_cost is not None:
        return output.actual_cost
    return entry.price * quantity(entry, request, output)
