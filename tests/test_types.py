"""Request models, MediaInput and Router.parse: good input validates, bad input names the field."""

from __future__ import annotations

import base64
import json
import os
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from genroute.errors import InvalidRequest
from genroute.media import MediaInput, sniff_media_type
from genroute.router import Router
from genroute.types import (
    ASPECT_RATIOS,
    REQUEST_TYPES,
    TASKS,
    ImageToImage,
    Offer,
    TextToImage,
    TextToVideo,
)
from request_samples import PNG, good, wav_bytes

VISUAL = [t for t in TASKS if "num_outputs" in REQUEST_TYPES[t].model_fields]
PROMPTED = [
    t
    for t in TASKS
    if REQUEST_TYPES[t].model_fields.get("prompt") and REQUEST_TYPES[t].model_fields["prompt"].is_required()
]


def invalid(data: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        Router.parse(data)
    return info.value


# -- good input --------------------------------------------------------------------------------------


def test_task_lists_agree() -> None:
    assert set(REQUEST_TYPES) == set(TASKS)
    assert len(TASKS) == 10


@pytest.mark.parametrize("task", TASKS)
def test_good_input_parses_to_its_model(task: str) -> None:
    model = Router.parse(good(task))
    assert isinstance(model, REQUEST_TYPES[task])
    assert model.task_name == task
    assert model.tier == "balanced"
    assert model.cache == "use"


@pytest.mark.parametrize("task", TASKS)
def test_model_passes_through_parse_unchanged(task: str) -> None:
    model = Router.parse(good(task))
    assert Router.parse(model) is model


def test_parse_rejects_non_mapping() -> None:
    with pytest.raises(InvalidRequest):
        Router.parse(["text-to-image"])  # type: ignore[arg-type]


@pytest.mark.parametrize("task", VISUAL)
def test_visual_tasks_accept_size_or_ratio(task: str) -> None:
    for extra in ({"aspect_ratio": "16:9"}, {"width": 512, "height": 768}, {"num_outputs": 4}, {"num_outputs": 1}):
        model = Router.parse({**good(task), **extra})
        for key, value in extra.items():
            assert getattr(model, key) == value


def test_requests_are_frozen() -> None:
    model = TextToImage(prompt="x")
    with pytest.raises(ValidationError):
        model.prompt = "y"  # type: ignore[misc]


def test_media_fields_lists_inputs() -> None:
    model = Router.parse(good("inpaint"))
    assert set(model.media_fields()) == {"image", "mask"}
    assert Router.parse(good("text-to-image")).media_fields() == {}


# -- bad input names the field -----------------------------------------------------------------------


@pytest.mark.parametrize("task", VISUAL)
@pytest.mark.parametrize("count", [0, 5, -1])
def test_num_outputs_out_of_range(task: str, count: int) -> None:
    err = invalid({**good(task), "num_outputs": count})
    assert err.field == "num_outputs"
    assert "num_outputs" in str(err)


@pytest.mark.parametrize("task", VISUAL)
def test_width_without_height_rejected(task: str) -> None:
    with pytest.raises(InvalidRequest, match="width"):
        Router.parse({**good(task), "width": 512})
    with pytest.raises(InvalidRequest, match="height"):
        Router.parse({**good(task), "height": 512})


@pytest.mark.parametrize("task", VISUAL)
def test_aspect_ratio_with_width_rejected(task: str) -> None:
    with pytest.raises(InvalidRequest, match="aspect_ratio"):
        Router.parse({**good(task), "width": 512, "height": 512, "aspect_ratio": "1:1"})


def test_width_without_height_names_a_field() -> None:
    err = invalid({**good("text-to-image"), "width": 512})
    assert err.field in {"width", "height"}


def test_aspect_ratio_with_width_names_a_field() -> None:
    err = invalid({**good("text-to-image"), "width": 512, "height": 512, "aspect_ratio": "1:1"})
    assert err.field in {"aspect_ratio", "width", "height"}


@pytest.mark.parametrize("task", VISUAL)
@pytest.mark.parametrize("ratio", ["5:4", "1:2", "square", ""])
def test_unknown_aspect_ratio(task: str, ratio: str) -> None:
    assert invalid({**good(task), "aspect_ratio": ratio}).field == "aspect_ratio"


@pytest.mark.parametrize(
    ("size", "field"), [({"width": 63, "height": 512}, "width"), ({"width": 512, "height": 4096}, "height")]
)
def test_side_out_of_range(size: dict[str, int], field: str) -> None:
    assert invalid({**good("text-to-image"), **size}).field == field


@pytest.mark.parametrize("strength", [1.01, 2, -0.1])
def test_strength_out_of_range(strength: float) -> None:
    assert invalid({**good("image-to-image"), "strength": strength}).field == "strength"


@pytest.mark.parametrize("strength", [0, 0.0, 0.35, 1, 1.0])
def test_strength_in_range(strength: float) -> None:
    model = Router.parse({**good("image-to-image"), "strength": strength})
    assert isinstance(model, ImageToImage)
    assert model.strength == strength


@pytest.mark.parametrize("task", PROMPTED)
def test_empty_prompt(task: str) -> None:
    assert invalid({**good(task), "prompt": ""}).field == "prompt"


@pytest.mark.parametrize("task", PROMPTED)
def test_missing_prompt(task: str) -> None:
    data = good(task)
    del data["prompt"]
    assert invalid(data).field == "prompt"


def test_empty_tts_text() -> None:
    assert invalid({**good("text-to-speech"), "text": ""}).field == "text"


@pytest.mark.parametrize("task", TASKS)
def test_extra_unknown_field(task: str) -> None:
    err = invalid({**good(task), "promt": "typo"})
    assert err.field == "promt"
    assert "unknown field" in str(err)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("seed", [-1, 2**32, "abc"])
def test_bad_seed(task: str, seed: Any) -> None:
    assert invalid({**good(task), "seed": seed}).field == "seed"


@pytest.mark.parametrize("task", TASKS)
def test_seed_bounds_accepted(task: str) -> None:
    assert Router.parse({**good(task), "seed": 0}).seed == 0
    assert Router.parse({**good(task), "seed": 2**32 - 1}).seed == 2**32 - 1


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize(("field", "value"), [("tier", "ultra"), ("cache", "sometimes"), ("deadline_seconds", 0)])
def test_bad_common_fields(task: str, field: str, value: Any) -> None:
    assert invalid({**good(task), field: value}).field == field


@pytest.mark.parametrize(
    ("task", "field", "value"),
    [
        ("text-to-video", "duration_seconds", 0),
        ("text-to-video", "duration_seconds", 31),
        ("image-to-video", "fps", 0),
        ("upscale", "scale", 1),
        ("upscale", "scale", 9),
        ("text-generation", "max_tokens", 0),
        ("text-generation", "temperature", 2.5),
        ("speech-to-text", "language", "e"),
    ],
)
def test_task_specific_ranges(task: str, field: str, value: Any) -> None:
    assert invalid({**good(task), field: value}).field == field


@pytest.mark.parametrize("task", ["nope", "Text-To-Image", "", 3, None])
def test_unknown_task_names_task(task: Any) -> None:
    err = invalid({"task": task, "prompt": "x"})
    assert err.field == "task"


def test_missing_task_names_task() -> None:
    assert invalid({"prompt": "x"}).field == "task"


@pytest.mark.parametrize(
    "task", [t for t in TASKS if any(f in REQUEST_TYPES[t].model_fields for f in ("image", "audio"))]
)
def test_missing_media_names_field(task: str) -> None:
    data = good(task)
    field = "audio" if "audio" in data else "image"
    del data[field]
    assert invalid(data).field == field


def test_invalid_request_is_exit_code_4() -> None:
    assert invalid({"task": "nope"}).exit_code == 4


# -- MediaInput --------------------------------------------------------------------------------------


@pytest.fixture
def png_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    path.write_bytes(PNG)
    return path


def test_media_from_path_string_reads_bytes(png_file: Path) -> None:
    media = MediaInput.parse(str(png_file))
    assert media.resolved
    assert media.data == PNG
    assert media.path == png_file
    assert media.media_type == "image/png"


def test_media_from_path_object(png_file: Path) -> None:
    media = MediaInput.parse(png_file)
    assert media.data == PNG
    assert media.describe() == str(png_file)


def test_media_from_bytes() -> None:
    media = MediaInput.parse(PNG)
    assert media.data == PNG
    assert media.path is None and media.url is None
    assert media.describe().startswith("bytes:")


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_media_from_bytes_like(kind: type) -> None:
    assert MediaInput.parse(kind(PNG)).data == PNG


def test_media_from_base64_data_uri() -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    media = MediaInput.parse(uri)
    assert media.data == PNG
    assert media.media_type == "image/png"


def test_media_from_percent_encoded_data_uri() -> None:
    assert MediaInput.parse("data:text/plain,hello%20world").data == b"hello world"


def test_same_content_different_sources_equal(png_file: Path) -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    sources = [MediaInput.parse(str(png_file)), MediaInput.parse(PNG), MediaInput.parse(uri)]
    assert len({m.sha256 for m in sources}) == 1
    assert sources[0] == sources[1] == sources[2]
    assert MediaInput.parse(PNG + b"x") != sources[0]


@pytest.mark.parametrize("url", ["https://example.com/cat.png", "http://example.com/a.wav"])
def test_media_url_is_unresolved_until_fetched(url: str) -> None:
    media = MediaInput.parse(url)
    assert not media.resolved
    assert media.url == url
    assert media.describe() == url
    with pytest.raises(InvalidRequest, match="not fetched"):
        _ = media.data


def test_url_through_request_model() -> None:
    model = Router.parse({**good("upscale"), "image": "https://example.com/cat.png"})
    media = model.media_fields()["image"]
    assert not media.resolved
    with pytest.raises(InvalidRequest):
        _ = media.sha256


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(ValueError, match=r"nope\.png"):
        MediaInput.parse(str(missing))
    err = invalid({**good("upscale"), "image": str(missing)})
    assert err.field == "image"
    assert str(missing) in str(err)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "adir"
    folder.mkdir()
    err = invalid({**good("image-to-image"), "image": str(folder)})
    assert err.field == "image" and err.exit_code == 4
    assert err.message == (
        f"image: {folder} is a directory, not a file (give the path of a file in it, bytes, or an http(s) URL)"
    )
    assert "not found" not in str(err)
    (tmp_path / "link").symlink_to(folder)  # a link to a directory is a directory too
    assert (
        f"{tmp_path / 'link'} is a directory, not a file"
        in invalid({**good("upscale"), "image": str(tmp_path / "link")}).message
    )


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    err = invalid({**good("upscale"), "image": str(fifo)})  # reading it would block until a writer came
    assert err.field == "image"
    assert f"{fifo} is not a regular file but a pipe, device or socket" in err.message
    assert "not found" not in str(err)


def test_empty_file_rejected(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        MediaInput.parse(empty)
    err = invalid({**good("upscale"), "image": str(empty)})
    assert err.field == "image"
    assert "empty" in str(err)


@pytest.mark.parametrize("value", [b"", "", "   "])
def test_empty_bytes_or_path_rejected(value: Any) -> None:
    with pytest.raises(ValueError):
        MediaInput.parse(value)
    assert invalid({**good("upscale"), "image": value}).field == "image"


@pytest.mark.parametrize(
    "uri", ["data:image/png;base64,@@not base64@@", "data:image/png;base64", "data:image/png;base64,", "data:,"]
)
def test_garbage_data_uri_rejected(uri: str) -> None:
    with pytest.raises(ValueError):
        MediaInput.parse(uri)
    assert invalid({**good("image-to-image"), "image": uri}).field == "image"


@pytest.mark.parametrize("value", [123, 1.5, None, ["a"], {"path": "x"}])
def test_media_wrong_type_rejected(value: Any) -> None:
    assert invalid({**good("remove-background"), "image": value}).field == "image"


def test_inpaint_mask_error_names_mask(tmp_path: Path) -> None:
    assert invalid({**good("inpaint"), "mask": str(tmp_path / "nope.png")}).field == "mask"


# -- dimensions --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
def test_dimensions_for_each_aspect_ratio(ratio: str) -> None:
    width, height = TextToImage(prompt="x", aspect_ratio=ratio).dimensions()  # type: ignore[arg-type]
    assert width % 8 == 0 and height % 8 == 0
    assert max(width, height) == 1024
    w, h = (int(x) for x in ratio.split(":"))
    assert (width >= height) == (w >= h)
    assert abs(width / height - w / h) < 0.05 * (w / h)


def test_dimensions_default_square() -> None:
    assert TextToImage(prompt="x").dimensions() == (1024, 1024)


@pytest.mark.parametrize(
    ("ratio", "expected"), [("16:9", (1024, 576)), ("9:16", (576, 1024)), ("4:3", (1024, 768)), ("3:4", (768, 1024))]
)
def test_dimensions_exact_for_common_ratios(ratio: str, expected: tuple[int, int]) -> None:
    assert TextToImage(prompt="x", aspect_ratio=ratio).dimensions() == expected  # type: ignore[arg-type]


def test_explicit_size_wins() -> None:
    assert TextToImage(prompt="x", width=640, height=480).dimensions() == (640, 480)
    assert TextToVideo(prompt="x", width=512, height=512).dimensions() == (512, 512)


# -- nothing but InvalidRequest escapes Router.parse ---------------------------------------------------

_FIELDS = sorted({name for cls in REQUEST_TYPES.values() for name in cls.model_fields})
_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=16)
    | st.sampled_from(["1:1", "16:9", "fast", "data:,x", "data:;base64,AAAA", "https://x.test/a", "~", ".", ""])
)
_json = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(st.sampled_from(TASKS), _json),
    st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=8), _json, max_size=6),
)
def test_arbitrary_dicts_raise_only_invalid_request(task: Any, body: dict[str, Any]) -> None:
    data = {**body, "task": task}
    try:
        model = Router.parse(data)
    except InvalidRequest as exc:
        assert exc.field is None or isinstance(exc.field, str)
    else:
        assert model.task_name == task


# -- media fields hold the kind of file they name --------------------------------------------------------

NOTES = b"shopping list: eggs, flour\n"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 16
GIF = b"GIF89a" + b"\x00" * 16
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8 " + b"\x00" * 16
AVI = b"RIFF\x1a\x00\x00\x00AVI LIST" + b"\x00" * 16


@pytest.mark.parametrize(
    ("task", "field", "value", "expected"),
    [
        ("image-to-image", "image", NOTES, "PNG, JPEG, WEBP or GIF"),
        ("upscale", "image", wav_bytes(), "audio/wav"),
        ("remove-background", "image", AVI, "PNG, JPEG, WEBP or GIF"),
        ("inpaint", "mask", NOTES, "PNG, JPEG, WEBP or GIF"),
        ("image-to-video", "image", b"\x00\x00\x00\x18ftypisom" + b"\x00" * 16, "video/mp4"),
        ("speech-to-text", "audio", PNG, "image/png"),
        ("speech-to-text", "audio", NOTES, "WAV, MP3"),
        ("speech-to-text", "audio", WEBP, "image/webp"),
    ],
)
def test_media_of_the_wrong_kind_is_refused_naming_the_field(
    task: str, field: str, value: bytes, expected: str
) -> None:
    err = invalid({**good(task), field: value})
    assert err.field == field
    assert expected in err.message
    assert err.exit_code == 4


def test_text_file_given_as_image_names_the_file(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_bytes(NOTES)
    err = invalid({**good("image-to-image"), "image": str(notes)})
    assert err.field == "image"
    assert str(notes) in err.message and "not an image" in err.message


@pytest.mark.parametrize("image", [PNG, JPEG, GIF, WEBP], ids=["png", "jpeg", "gif", "webp"])
def test_every_recognised_image_format_is_accepted(image: bytes) -> None:
    model = Router.parse({**good("inpaint"), "image": image, "mask": image})
    assert model.media_fields()["image"].data == image


MP3_HEADER = b"\xff\xfb\x90\x64"
"""MPEG-1 layer III, 128 kbit/s, 44.1 kHz, no padding, no CRC: its frames are 144 * 128000 // 44100 = 417 bytes."""
MP3_MPEG2_HEADER = b"\xff\xf3\x80\xc4"
"""MPEG-2 layer III, 64 kbit/s, 22.05 kHz (as LAME writes speech): its frames are 72 * 64000 // 22050 = 208 bytes."""


def mp3_frames(count: int = 3, header: bytes = MP3_HEADER, length: int = 417) -> bytes:
    """A minimal MP3 without an ID3 tag: ``count`` frames of ``length`` bytes (all-zero data: silence)."""
    return (header + b"\x00" * (length - 4)) * count


@pytest.mark.parametrize(
    "audio",
    [
        wav_bytes(),
        b"ID3\x04\x00" + b"\x00" * 16,  # MP3 with an ID3 tag
        mp3_frames(),  # MP3 starting with a frame, no ID3 tag
        mp3_frames(header=MP3_MPEG2_HEADER, length=208),  # MPEG-2 layer III
        b"fLaC" + b"\x00" * 16,
        b"OggS\x00\x02" + b"\x00" * 16,
        b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 16,  # M4A (an MP4 container)
        b"\x1a\x45\xdf\xa3" + b"\x00" * 16,  # WebM
    ],
    ids=["wav", "mp3-id3", "mp3-frame", "mp3-mpeg2-frame", "flac", "ogg", "m4a", "webm"],
)
def test_every_recognised_audio_format_is_accepted(audio: bytes) -> None:
    model = Router.parse({**good("speech-to-text"), "audio": audio})
    assert model.media_fields()["audio"].data == audio


# UTF-16 LE text starts with the byte-order mark FF FE, which reads as an MPEG-1 layer I frame header.
UTF16_NOTES = b"\xff\xfe" + ("Hello, these are my meeting notes.\n" * 20).encode("utf-16-le")


@pytest.mark.parametrize(
    "data",
    [
        UTF16_NOTES,
        b"\xff\xfe" + "Notizen zur Sitzung: Übersicht, nächste Schritte\n".encode("utf-16-le"),  # shorter than a frame
        MP3_HEADER + random.Random(7).randbytes(2000),  # one valid header, then noise where the next should be
        mp3_frames(count=1),  # a lone frame: nothing confirms it is audio
        MP3_HEADER + b"\x00" * 413 + MP3_MPEG2_HEADER + b"\x00" * 204,  # the next frame changes version
        random.Random(11).randbytes(4096),
    ],
    ids=["utf16le-text", "utf16le-short-text", "header-then-noise", "one-frame", "mixed-versions", "random"],
)
def test_bytes_that_only_look_like_an_mp3_frame_are_refused_naming_the_field(data: bytes) -> None:
    err = invalid({**good("speech-to-text"), "audio": data})
    assert err.field == "audio"
    assert "is not audio genroute recognises" in err.message and "WAV, MP3" in err.message


def test_a_utf16_text_file_given_as_audio_is_refused_naming_the_file(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_bytes(UTF16_NOTES)
    err = invalid({**good("speech-to-text"), "audio": str(notes)})
    assert err.field == "audio" and f"{notes} is not audio genroute recognises" in err.message


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (b"\xff\xfb\xf0\x64", "bitrate index 15"),
        (b"\xff\xfb\x00\x64", "bitrate index 0 (free format: no length to find the next frame)"),
        (b"\xff\xfb\x9c\x64", "sample-rate index 3"),
        (b"\xff\xf9\x90\x64", "layer 0 (AAC's ADTS)"),
        (b"\xff\xeb\x90\x64", "version 0b01 (reserved)"),
        (b"\xff\xfb\x90\x66", "emphasis 0b10 (reserved)"),
    ],
    ids=["bitrate-15", "free-format", "rate-3", "layer-0", "version-01", "emphasis-10"],
)
def test_mp3_frames_with_a_reserved_header_field_are_not_mp3(header: bytes, why: str) -> None:
    assert sniff_media_type(mp3_frames(header=header)) != "audio/mpeg", why


def test_mp3_frames_are_found_at_their_computed_length() -> None:
    assert sniff_media_type(mp3_frames(count=2)) == "audio/mpeg"
    padded = b"\xff\xfb\x92\x64"  # the padding bit: a 418-byte frame
    assert sniff_media_type(padded + b"\x00" * 414 + MP3_HEADER + b"\x00" * 413) == "audio/mpeg"
    assert sniff_media_type(padded + b"\x00" * 413 + MP3_HEADER + b"\x00" * 413) != "audio/mpeg"  # one byte short
    layer_2 = b"\xff\xfd\x80\x04"  # MPEG-1 layer II, 128 kbit/s, 44.1 kHz, no CRC: also 417 bytes
    assert sniff_media_type(mp3_frames(header=layer_2)) == "audio/mpeg"
    layer_1 = b"\xff\xff\x40\x00"  # MPEG-1 layer I, 128 kbit/s, 44.1 kHz: (12 * 128000 // 44100) * 4 = 136 bytes
    assert sniff_media_type(mp3_frames(header=layer_1, length=136)) == "audio/mpeg"


HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 16  # an iPhone photo
AVIF = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 16
MIF1_AVIF = b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf" + b"\x00" * 16


@pytest.mark.parametrize(("photo", "found"), [(HEIC, "image/heic"), (AVIF, "image/avif"), (MIF1_AVIF, "image/avif")])
def test_a_heic_or_avif_photo_is_called_an_image_and_never_taken_for_audio(photo: bytes, found: str) -> None:
    # An ISO BMFF still image is not a video: the message must not tell the user their photo is video/mp4.
    err = invalid({**good("upscale"), "image": photo})
    assert err.field == "image" and f"is {found}, a format genroute does not take" in err.message
    assert "video/mp4" not in err.message and "not an image" not in err.message
    err = invalid({**good("speech-to-text"), "audio": photo})
    assert err.field == "audio" and f"is {found}, not audio" in err.message


# -- a field of another task says so ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "field", "value", "owners"),
    [
        ("upscale", "mask", PNG, ["inpaint"]),
        ("speech-to-text", "prompt", "hello", ["text-to-image", "text-generation"]),
        ("text-to-image", "strength", 0.5, ["image-to-image"]),
        ("text-to-speech", "num_outputs", 2, ["text-to-image", "image-to-video"]),
    ],
)
def test_field_of_another_task_does_not_apply(task: str, field: str, value: Any, owners: list[str]) -> None:
    err = invalid({**good(task), field: value})
    assert err.field == field
    assert f"does not apply to {task}" in err.message
    assert "check the spelling" not in err.message
    for owner in owners:
        assert owner in err.message
    for accepted in REQUEST_TYPES[task].model_fields:  # what this task does take
        assert accepted in err.message


def test_field_that_exists_nowhere_names_the_field_it_is_close_to() -> None:
    err = invalid({**good("upscale"), "scal": 4})
    assert err.field == "scal"
    assert err.message == "scal: unknown field (did you mean 'scale'?)"


def test_field_that_exists_nowhere_and_is_close_to_none_still_says_check_the_spelling() -> None:
    err = invalid({**good("upscale"), "zzzz": 4})
    assert err.field == "zzzz"
    assert "check the spelling" in err.message and "did you mean" not in err.message


def test_every_problem_is_named_the_first_in_field_and_a_misspelt_missing_field_suggested() -> None:
    err = invalid({"task": "text-to-image", "promt": "x"})
    assert err.field == "prompt"
    assert err.message == "prompt: Field required; promt: unknown field (did you mean 'prompt'?)"
    assert "more problem" not in err.message
    err = invalid({**good("text-to-image"), "seed": -1, "widht": 64})
    assert err.field == "seed"
    assert err.message.startswith("seed: ") and err.message.endswith("; widht: unknown field (did you mean 'width'?)")


# -- JSON types are not coerced ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "field", "value"),
    [
        ("text-to-image", "seed", True),
        ("text-to-image", "seed", "3"),
        ("text-to-image", "num_outputs", "2"),
        ("text-to-image", "num_outputs", True),
        ("upscale", "scale", False),
        ("text-to-video", "duration_seconds", "2"),
        ("image-to-video", "fps", "8"),
        ("text-generation", "temperature", "0.5"),
        ("text-generation", "max_tokens", True),
        ("image-to-image", "strength", True),
        ("speech-to-text", "deadline_seconds", "30"),
    ],
)
def test_wrong_json_type_is_refused_not_coerced(task: str, field: str, value: Any) -> None:
    err = invalid({**good(task), field: value})
    assert err.field == field
    assert repr(value) in err.message or json.dumps(value) in err.message


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [("seed", 7, 7), ("seed", None, None), ("num_outputs", 2, 2), ("deadline_seconds", 5, 5.0)],
)
def test_numbers_of_the_right_json_type_still_validate(field: str, value: Any, expected: Any) -> None:
    model = Router.parse({**good("text-to-image"), field: value})
    assert getattr(model, field) == expected


def test_the_errors_getting_started_names_are_importable_from_genroute() -> None:
    import genroute
    from genroute import errors

    for name in ("InvalidRequest", "NoRouteAvailable", "OverBudget", "InputRefused", "DeadlineExceeded"):
        assert getattr(genroute, name) is getattr(errors, name), name
    assert issubclass(genroute.OverBudget, genroute.NoRouteAvailable)


def offer(estimate: Decimal | None) -> Offer:
    return Offer(provider="lab", model="lab/m", task="text-to-image", tier="fast", estimate=estimate)


@pytest.mark.parametrize("estimate", [Decimal("-0.01"), Decimal("-1E-7"), -5])
def test_an_offer_with_a_negative_estimate_is_refused_naming_the_field(estimate: Any) -> None:
    # Accepted, it would sort first as the cheapest and then fail its call with "cannot reserve a negative amount".
    with pytest.raises(ValidationError) as info:
        offer(estimate)
    (error,) = info.value.errors()
    assert error["loc"] == ("estimate",)
    assert error["msg"].startswith("Value error, estimate cannot be negative (an offer's estimated USD is 0 or more)")


@pytest.mark.parametrize("estimate", [Decimal(0), Decimal("0.003"), None])
def test_an_offer_of_zero_or_more_or_unpriced_is_accepted(estimate: Decimal | None) -> None:
    assert offer(estimate).estimate == estimate


def test_a_voice_is_a_short_name_or_a_speaker_sample_given_as_a_url_or_data_uri() -> None:
    # xtts-style models clone a voice from a sample: a data: URI of a few seconds of audio is far past a name's size
    sample = "data:audio/wav;base64," + "UklGR" * 20_000
    assert Router.parse({"task": "text-to-speech", "text": "hi", "voice": sample}).voice == sample
    assert Router.parse({"task": "text-to-speech", "text": "hi", "voice": "af_bella"}).voice == "af_bella"
    url = "https://example.com/samples/" + "s" * 200 + ".wav"
    assert Router.parse({"task": "text-to-speech", "text": "hi", "voice": url}).voice == url
    with pytest.raises(InvalidRequest) as info:
        Router.parse({"task": "text-to-speech", "text": "hi", "voice": "v" * 101})
    assert info.value.field == "voice"
    assert (
        "a voice name is at most 100 characters; give a speaker sample to clone as an https URL" in info.value.message
    )
