"""SRT and WebVTT export of timed transcription segments."""

from __future__ import annotations

from collections.abc import Sequence

from .types import Segment


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cue_text(text: str) -> str:
    # A blank line ends a cue in both formats, so collapse them inside one segment's text.
    return "\n".join(line for line in text.strip().splitlines() if line.strip()) or "…"


def to_srt(segments: Sequence[Segment]) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm`` times."""
    cues = [
        f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{_cue_text(s.text)}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def to_webvtt(segments: Sequence[Segment]) -> str:
    """WebVTT: ``WEBVTT`` header, ``HH:MM:SS.mmm`` times; ``&``, ``<`` and ``>`` escaped as the spec asks."""
    cues = [
        f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{_vtt_escape(_cue_text(s.text))}\n" for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
