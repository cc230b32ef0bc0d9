"""SRT and WebVTT export: numbering, timestamps, escaping, and cues that stay whole."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from genroute.errors import InvalidRequest
from genroute.subtitles import to_srt, to_webvtt
from genroute.types import Result, Segment

SRT_TIME = re.compile(r"^\d{2}:\d{2}:\d{2},\d{3} --> \d{2}:\d{2}:\d{2},\d{3}$")
VTT_TIME = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d{3} --> \d{2}:\d{2}:\d{2}\.\d{3}$")


def seg(start: float, end: float, text: str) -> Segment:
    return Segment(start=start, end=end, text=text)


def srt_cues(text: str) -> list[list[str]]:
    return [block.split("\n") for block in text.strip("\n").split("\n\n")]


def make_result(**changes: Any) -> Result:
    fields: dict[str, Any] = {
        "request_key": "k" * 64,
        "task": "speech-to-text",
        "provider": "mock",
        "model": "mock/whisper",
        "tier": "fast",
        "estimated_cost": Decimal("0.001"),
        "actual_cost": Decimal("0.001"),
        "latency_seconds": 0.2,
        "created_at": datetime(2024, 1, 1, tzinfo=UTC),
    }
    fields.update(changes)
    return Result(**fields)


# -- SRT ---------------------------------------------------------------------------------------------------


def test_srt_numbering_and_times() -> None:
    out = to_srt([seg(0, 1.5, "Hello"), seg(1.5, 3.25, "world"), seg(3.25, 4, "again")])
    assert out == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello\n"
        "\n"
        "2\n00:00:01,500 --> 00:00:03,250\nworld\n"
        "\n"
        "3\n00:00:03,250 --> 00:00:04,000\nagain\n"
    )


def test_srt_hours_minutes_millis() -> None:
    out = to_srt([seg(3723.456, 36000 + 59 * 60 + 59.999, "late")])
    assert "01:02:03,456 --> 10:59:59,999" in out


def test_srt_rounds_to_millisecond_with_carry() -> None:
    out = to_srt([seg(59.9996, 60.0004, "x")])
    assert "00:01:00,000 --> 00:01:00,000" in out


def test_srt_empty() -> None:
    assert to_srt([]) == ""


def test_srt_blank_lines_inside_text_do_not_split_cues() -> None:
    out = to_srt([seg(0, 1, "first line\n\nsecond line\n   \nthird"), seg(1, 2, "next")])
    cues = srt_cues(out)
    assert len(cues) == 2
    assert cues[0] == ["1", "00:00:00,000 --> 00:00:01,000", "first line", "second line", "third"]
    assert cues[1][0] == "2"


def test_srt_keeps_single_line_breaks() -> None:
    cues = srt_cues(to_srt([seg(0, 1, "line one\nline two")]))
    assert cues[0][2:] == ["line one", "line two"]


def test_srt_empty_text_still_a_cue() -> None:
    cues = srt_cues(to_srt([seg(0, 1, ""), seg(1, 2, "  \n\n "), seg(2, 3, "x")]))
    assert [c[0] for c in cues] == ["1", "2", "3"]
    assert all(len(c) >= 3 and c[2].strip() for c in cues)


def test_srt_leaves_markup_characters() -> None:
    assert "a & b < c" in to_srt([seg(0, 1, "a & b < c")])


# -- WebVTT --------------------------------------------------------------------------------------------------


def test_webvtt_header_and_dot_separator() -> None:
    out = to_webvtt([seg(0, 1.5, "Hello"), seg(3661.001, 3662, "there")])
    assert out.startswith("WEBVTT\n\n")
    assert "00:00:00.000 --> 00:00:01.500\nHello\n" in out
    assert "01:01:01.001 --> 01:01:02.000\nthere\n" in out
    assert "," not in out.split("\n", 2)[2].replace("Hello", "")


def test_webvtt_empty_has_header() -> None:
    assert to_webvtt([]).startswith("WEBVTT")


def test_webvtt_escapes_markup() -> None:
    out = to_webvtt([seg(0, 1, "Tom & Jerry <b>loud</b> --> 5 > 3")])
    body = out.split("\n")[3]
    assert body == "Tom &amp; Jerry &lt;b&gt;loud&lt;/b&gt; --&gt; 5 &gt; 3"


def test_webvtt_escapes_ampersand_once() -> None:
    assert "&amp;lt;" in to_webvtt([seg(0, 1, "&lt;")])


def test_webvtt_blank_lines_inside_text_do_not_split_cues() -> None:
    out = to_webvtt([seg(0, 1, "one\n\ntwo"), seg(1, 2, "three")])
    blocks = out.split("\n\n")
    assert blocks[0] == "WEBVTT"
    assert blocks[1] == "00:00:00.000 --> 00:00:01.000\none\ntwo"
    assert blocks[2].startswith("00:00:01.000 --> 00:00:02.000\nthree")


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
_segments = st.lists(
    st.tuples(st.floats(0, 100_000, allow_nan=False), st.floats(0, 100, allow_nan=False), _text).map(
        lambda t: seg(t[0], t[0] + t[1], t[2])
    ),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(_segments)
def test_srt_structure_holds_for_any_text(segments: list[Segment]) -> None:
    out = to_srt(segments)
    if not segments:
        return
    cues = srt_cues(out)
    assert len(cues) == len(segments)
    for number, cue in enumerate(cues, start=1):
        assert cue[0] == str(number)
        assert SRT_TIME.match(cue[1]), cue[1]
        assert len(cue) >= 3


@settings(max_examples=60, deadline=None)
@given(_segments)
def test_webvtt_structure_holds_for_any_text(segments: list[Segment]) -> None:
    out = to_webvtt(segments)
    blocks = out.rstrip("\n").split("\n\n")
    assert blocks[0] == "WEBVTT"
    cues = blocks[1:]
    assert len(cues) == len(segments)
    for cue in cues:
        lines = cue.split("\n")
        assert VTT_TIME.match(lines[0]), lines[0]
        assert len(lines) >= 2
        assert "-->" not in "\n".join(lines[1:])
        assert "<" not in cue


# -- Segment ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan"), "inf", "1e400"])
@pytest.mark.parametrize("field", ["start", "end"])
def test_a_segment_time_that_is_not_finite_is_refused_naming_the_field(field: str, bad: Any) -> None:
    # Accepted, it broke SRT export (OverflowError) and was stored as JSON null, so the paid result was discarded.
    times: dict[str, Any] = {"start": 0.0, "end": 1.0, field: bad}
    with pytest.raises(ValidationError) as info:
        Segment(text="hello", **times)
    (error,) = info.value.errors()
    assert error["loc"] == (field,)
    assert error["msg"] == "Input should be a finite number"


def test_a_segment_ending_before_it_starts_is_refused_naming_end() -> None:
    with pytest.raises(ValidationError) as info:
        seg(2.5, 1.0, "backwards")
    (error,) = info.value.errors()
    assert error["loc"] == ("end",)
    assert "segment ends (1.0) before it starts (2.5)" in error["msg"]


def test_a_segment_of_no_duration_exports() -> None:
    assert "00:00:01,000 --> 00:00:01,000" in to_srt([seg(1, 1, "blip")])


def test_a_stored_transcription_round_trips_with_its_times() -> None:
    result = make_result(text="hi", segments=[seg(0, 1.25, "hi")])
    again = Result.model_validate_json(result.model_dump_json())
    assert again.segments == result.segments
    assert again.to_srt() == result.to_srt()


# -- Result ----------------------------------------------------------------------------------------------------


def test_result_exports_segments() -> None:
    result = make_result(text="hi there", segments=[seg(0, 1, "hi"), seg(1, 2, "there")])
    assert result.to_srt() == to_srt(result.segments or [])
    assert result.to_webvtt().startswith("WEBVTT")


@pytest.mark.parametrize("task", ["text-to-image", "text-generation", "text-to-speech"])
def test_non_transcription_result_refuses_subtitles(task: str) -> None:
    result = make_result(task=task, text="some text")
    with pytest.raises(InvalidRequest):
        result.to_srt()
    with pytest.raises(InvalidRequest):
        result.to_webvtt()
