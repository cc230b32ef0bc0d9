"""What a prediction used, in the quantities genroute's billing units settle on.

The API returns no price. Per-output models settle on the files returned (``Usage.outputs``),
per-second models on ``metrics.predict_time`` (``Usage.compute_seconds``) times the catalogue's hardware
rate, whisper on the input audio's length (``Usage.input_seconds``), language models on
``metrics.output_token_count``. A failed or canceled prediction still cost what it produced (compute time,
tokens generated, outputs made): that is the ``incurred`` of the error, zero when it made nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from genroute import billing
from genroute.types import ModelEntry, OutputFile, RequestModel, Task, Usage

from .outputs import gif_seconds


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def predict_time(prediction: Mapping[str, Any]) -> float | None:
    metrics = prediction.get("metrics")
    return _number(metrics.get("predict_time")) if isinstance(metrics, Mapping) else None


def usage(
    task: Task,
    prediction: Mapping[str, Any],
    files: Sequence[OutputFile],
    request: RequestModel | None,
) -> Usage:
    """Measured quantities of a succeeded prediction (None where unknown: billing then uses the estimate)."""
    metrics = prediction.get("metrics") if isinstance(prediction.get("metrics"), Mapping) else {}
    assert isinstance(metrics, Mapping)
    tokens = metrics.get("output_token_count")
    input_seconds: float | None = None
    media_seconds: float | None = None
    if task == "speech-to-text":
        measured = billing.input_audio_seconds(request) if request is not None else Decimal(0)
        input_seconds = float(measured) if measured else _number(metrics.get("audio_seconds"))
    elif task == "text-to-speech":
        lengths = [billing.wav_seconds(f.data) for f in files]
        if files and all(length is not None for length in lengths):
            media_seconds = sum(length or 0.0 for length in lengths)
        else:
            media_seconds = _number(metrics.get("audio_seconds"))
    elif task in ("text-to-video", "image-to-video"):
        lengths = [gif_seconds(f.data) if f.media_type == "image/gif" else None for f in files]
        if files and all(length is not None for length in lengths):
            media_seconds = sum(length or 0.0 for length in lengths)
        else:
            per_video = _number(metrics.get("video_seconds"))
            media_seconds = per_video * len(files) if per_video is not None else None
    return Usage(
        outputs=len(files) if files else 1,
        compute_seconds=predict_time(prediction),
        media_seconds=media_seconds,
        input_seconds=input_seconds,
        output_tokens=int(tokens) if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
    )


def incurred(entry: ModelEntry | None, prediction: Mapping[str, Any]) -> Decimal | None:
    """What a failed, canceled (or, raced by a cancel, succeeded) prediction cost, priced on what it produced.

    Per-second models: the compute time ran. Language models: the output tokens generated
    (``metrics.output_token_count``). Per-output models: the outputs actually present. Per-media-second and
    per-audio-minute models: the seconds the metrics report. ``Decimal(0)`` when it is known nothing billable
    was produced (no compute time, no output); None when the prediction does not say (the router then uses
    what it knows otherwise).
    """
    if entry is None:
        return None
    metrics = prediction.get("metrics")
    metrics = metrics if isinstance(metrics, Mapping) else {}
    produced = _produced(prediction.get("output"))
    match entry.unit:
        case "compute_second":
            seconds = predict_time(prediction)
            return None if seconds is None else entry.price * Decimal(str(seconds))
        case "1k_tokens":
            tokens = metrics.get("output_token_count")
            if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
                return entry.price * Decimal(tokens) / 1000
            return Decimal(0) if produced == 0 else None
        case "output":
            return entry.price * produced
        case "request":
            return entry.price if produced else Decimal(0)
        case "media_second" | "audio_minute":
            if produced == 0:
                return Decimal(0)
            key = "video_seconds" if "video_seconds" in metrics else "audio_seconds"
            seconds = _number(metrics.get(key))
            if seconds is None:
                return None
            if key == "video_seconds":
                seconds *= produced
            per = Decimal(60) if entry.unit == "audio_minute" else Decimal(1)
            return entry.price * Decimal(str(seconds)) / per
    return None


def _produced(output: Any) -> int:
    """How many outputs a prediction holds: the non-empty items of a list, one for any other non-empty value."""
    if output is None or output == "" or output == {}:
        return 0
    if isinstance(output, list):
        return sum(1 for item in output if item not in (None, ""))
    return 1
