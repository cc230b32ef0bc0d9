"""The mock provider's media generators make real, deterministic files."""

from __future__ import annotations

import io
import itertools
import wave

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageDraw

from conftest import mock_section
from genroute.types import ImageToVideo
from genroute_mock.media import (
    animated_gif,
    plausible_text,
    png_image,
    speech_duration_seconds,
    transcript_segments,
    transform_image,
    video_size,
    wav_audio,
    wav_duration_seconds,
)


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _solid_with_square(size: int = 64, fmt: str = "PNG") -> bytes:
    """A white image with a red square in the middle."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(img).rectangle((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(255, 0, 0))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


# -- png_image ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(1, 1), (17, 5), (640, 480), (1024, 1024)])
@pytest.mark.parametrize("label", ["", "a lighthouse at dusk, oil painting " * 10])
def test_png_has_exact_size_and_mode(width: int, height: int, label: str) -> None:
    data = png_image(width, height, seed=3, label=label)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    img = _open(data)
    assert img.format == "PNG"
    assert img.size == (width, height)
    assert img.mode == "RGB"


def test_png_is_deterministic_and_seeded() -> None:
    assert png_image(200, 100, seed=1, label="cat") == png_image(200, 100, seed=1, label="cat")
    assert png_image(200, 100, seed=1) != png_image(200, 100, seed=2)
    assert png_image(200, 100, seed=1, label="cat") != png_image(200, 100, seed=1, label="dog")


def test_png_is_not_blank() -> None:
    img = _open(png_image(256, 256, seed=5))
    assert len(img.getcolors(maxcolors=256 * 256) or []) > 10


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, 0), (-1, 5), (5000, 10)])
def test_png_rejects_impossible_sizes(width: int, height: int) -> None:
    with pytest.raises(ValueError, match="image size"):
        png_image(width, height, seed=1)


# -- transform_image ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1, 2, 4, 0.5])
def test_transform_scales_the_image(scale: float) -> None:
    out = _open(transform_image(png_image(120, 80, seed=1), seed=9, scale=scale))
    assert out.format == "PNG"
    assert out.size == (round(120 * scale), round(80 * scale))
    assert out.mode == "RGB"


def test_transform_caps_the_longest_side() -> None:
    out = _open(transform_image(png_image(3000, 1000, seed=1), seed=1, scale=4))
    assert max(out.size) == 4096
    assert out.size == (4096, 1365)


def test_transform_accepts_other_formats() -> None:
    out = _open(transform_image(_solid_with_square(fmt="JPEG"), seed=1, scale=2))
    assert out.format == "PNG"
    assert out.size == (128, 128)


def test_transform_is_deterministic_and_seeded() -> None:
    source = png_image(64, 64, seed=1)
    assert transform_image(source, seed=4) == transform_image(source, seed=4)
    assert transform_image(source, seed=4) != transform_image(source, seed=5)
    assert transform_image(source, seed=4) != source


def test_remove_background_makes_corners_transparent() -> None:
    out = _open(transform_image(_solid_with_square(), seed=1, remove_background=True))
    assert out.mode == "RGBA"
    alpha = out.getchannel("A")
    assert alpha.getpixel((0, 0)) == 0
    assert alpha.getpixel((63, 63)) == 0
    assert alpha.getpixel((32, 32)) == 255  # the red square stays
    assert alpha.getextrema() == (0, 255)


def test_remove_background_works_after_upscaling() -> None:
    out = _open(transform_image(_solid_with_square(), seed=1, scale=2, remove_background=True))
    assert out.size == (128, 128)
    assert out.mode == "RGBA"
    assert out.getchannel("A").getpixel((0, 0)) == 0


@pytest.mark.parametrize("mask_size", [64, 32, 256])
def test_mask_repaints_only_the_masked_region(mask_size: int) -> None:
    source = png_image(64, 64, seed=1)
    mask = Image.new("L", (mask_size, mask_size), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, mask_size // 2 - 1, mask_size - 1), fill=255)  # left half
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    out = _open(transform_image(source, seed=2, mask=buf.getvalue()))
    assert out.size == (64, 64)
    changed = ImageChops.difference(out.convert("RGB"), _open(source).convert("RGB")).convert("L")
    bbox = changed.point(lambda v: 255 if v > 0 else 0).getbbox()
    assert bbox is not None, "the masked region was not repainted"
    left, _, right, _ = bbox
    assert left == 0
    assert right <= 33  # nothing right of the mask edge changed (one pixel of slack for resizing)


def test_mask_output_is_deterministic() -> None:
    source = png_image(48, 48, seed=1)
    mask = png_image(48, 48, seed=99)
    assert transform_image(source, seed=3, mask=mask) == transform_image(source, seed=3, mask=mask)


@pytest.mark.parametrize("garbage", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_transform_rejects_garbage(garbage: bytes) -> None:
    with pytest.raises(ValueError, match="not a readable image"):
        transform_image(garbage, seed=1)


def test_transform_rejects_truncated_image() -> None:
    data = png_image(64, 64, seed=1)
    with pytest.raises(ValueError):
        transform_image(data[: len(data) // 2], seed=1)


def test_transform_rejects_garbage_mask() -> None:
    with pytest.raises(ValueError, match="mask"):
        transform_image(png_image(16, 16, seed=1), seed=1, mask=b"nope")


def test_transform_rejects_non_positive_scale() -> None:
    with pytest.raises(ValueError, match="scale"):
        transform_image(png_image(16, 16, seed=1), seed=1, scale=0)


# -- animated_gif -------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height", "frames"), [(64, 48, 12), (200, 200, 2), (3, 2, 9), (1, 1, 5)])
def test_gif_has_requested_frames_and_is_animated(width: int, height: int, frames: int) -> None:
    gif = _open(animated_gif(width, height, frames=frames, fps=8, seed=4))
    assert gif.format == "GIF"
    assert gif.size == (width, height)
    assert gif.n_frames == frames
    assert gif.is_animated
    assert gif.info["loop"] == 0
    assert 120 <= gif.info["duration"] <= 125  # 1000/8 ms; GIF stores centiseconds


def test_gif_frames_actually_move() -> None:
    gif = _open(animated_gif(96, 96, frames=6, fps=10, seed=4))
    snapshots = []
    for index in range(gif.n_frames):
        gif.seek(index)
        snapshots.append(gif.convert("RGB").tobytes())
    assert len(set(snapshots)) == 6


def test_gif_single_frame_is_still_a_gif() -> None:
    gif = _open(animated_gif(32, 32, frames=1, fps=24, seed=1))
    assert gif.n_frames == 1
    assert abs(gif.info["duration"] - 1000 / 24) < 10  # GIF stores centiseconds


def test_gif_is_deterministic_and_seeded() -> None:
    assert animated_gif(40, 30, frames=5, fps=5, seed=1) == animated_gif(40, 30, frames=5, fps=5, seed=1)
    assert animated_gif(40, 30, frames=5, fps=5, seed=1) != animated_gif(40, 30, frames=5, fps=5, seed=2)


@pytest.mark.parametrize(("frames", "fps"), [(0, 10), (5, 0)])
def test_gif_rejects_bad_timing(frames: int, fps: int) -> None:
    with pytest.raises(ValueError):
        animated_gif(10, 10, frames=frames, fps=fps, seed=1)


# -- video_size and image-to-video ----------------------------------------------------------------


def _still(width: int, height: int, fmt: str = "PNG", orientation: int | None = None) -> bytes:
    img = Image.new("RGB", (width, height), (30, 90, 200))
    buf = io.BytesIO()
    if orientation is None:
        img.save(buf, fmt)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation  # EXIF Orientation, as a phone writes it
        img.save(buf, fmt, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("size", "long_side", "expected"),
    [
        ((1920, 1080), 256, (256, 144)),  # 16:9
        ((1080, 1920), 256, (144, 256)),  # 9:16
        ((300, 300), 256, (256, 256)),
        ((640, 480), 512, (512, 384)),  # 4:3, a longer side asked for
        ((50, 40), 256, (256, 208)),  # a small still is scaled up to the long side
        ((2000, 100), 256, (256, 64)),  # a sliver: the short side stays at the 64 px minimum
        ((999, 561), 250, (248, 144)),  # sides rounded to a multiple of 8
    ],
)
def test_video_size_follows_the_image_shape(size: tuple[int, int], long_side: int, expected: tuple[int, int]) -> None:
    assert video_size(_still(*size), long_side) == expected


def test_video_size_honours_exif_rotation() -> None:
    # Stored landscape, shown portrait (rotated 90°): the video is portrait, as the photo looks.
    assert video_size(_still(320, 180, "JPEG", orientation=6), 256) == (144, 256)


def test_video_size_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a readable image"):
        video_size(b"not an image at all", 256)


@pytest.fixture
def mock_router(settings_factory, router_factory):  # type: ignore[no-untyped-def]
    return router_factory(settings_factory({"mock": mock_section()}), entry_points=True)


async def _video_of(router, **fields: object) -> bytes:  # type: ignore[no-untyped-def]
    request = ImageToVideo(duration_seconds=1, fps=4, tier="fast", cache="bypass", **fields)  # type: ignore[arg-type]
    result = await router.arun(request)
    return result.artifacts[0].read_bytes()


@pytest.mark.parametrize(
    ("still", "expected"),
    [((1280, 720), (256, 144)), ((720, 1280), (144, 256)), ((400, 300), (256, 192)), ((500, 500), (256, 256))],
)
async def test_image_to_video_keeps_the_still_aspect_ratio(mock_router, still, expected) -> None:  # type: ignore[no-untyped-def]
    data = await _video_of(mock_router, image=_still(*still))
    gif = _open(data)
    assert gif.format == "GIF" and gif.n_frames == 4
    assert gif.size == expected
    assert await _video_of(mock_router, image=_still(*still)) == data  # deterministic, as before


async def test_image_to_video_with_an_asked_shape_keeps_that_shape(mock_router) -> None:  # type: ignore[no-untyped-def]
    wide = _still(1280, 720)
    assert _open(await _video_of(mock_router, image=wide, aspect_ratio="1:1")).size == (256, 256)
    assert _open(await _video_of(mock_router, image=wide, aspect_ratio="9:16")).size == (144, 256)
    assert _open(await _video_of(mock_router, image=wide, width=128, height=96)).size == (128, 96)


# -- wav_audio / wav_duration_seconds -----------------------------------------------------------


@pytest.mark.parametrize(("duration", "rate"), [(1.0, 16000), (2.5, 8000), (0.3337, 22050), (3.0, 44100)])
def test_wav_parses_with_right_format_and_duration(duration: float, rate: int) -> None:
    with wave.open(io.BytesIO(wav_audio(duration, seed=1, sample_rate=rate)), "rb") as wav:
        assert wav.getnchannels() == 1
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == rate
        assert abs(wav.getnframes() - duration * rate) <= 1
        frames = wav.readframes(wav.getnframes())
    samples = memoryview(frames).cast("h")
    assert max(abs(s) for s in samples) > 1000, "audio is (nearly) silent"


def test_wav_zero_duration_is_a_valid_empty_wav() -> None:
    data = wav_audio(0, seed=1)
    assert wav_duration_seconds(data) == 0.0


def test_wav_is_deterministic_and_seeded() -> None:
    assert wav_audio(1.5, seed=1) == wav_audio(1.5, seed=1)
    assert wav_audio(1.5, seed=1) != wav_audio(1.5, seed=2)


def test_wav_rejects_negative_duration() -> None:
    with pytest.raises(ValueError):
        wav_audio(-1, seed=1)


@pytest.mark.parametrize("duration", [0.5, 1.0, 7.25, 61.0])
def test_wav_duration_of_generated_audio(duration: float) -> None:
    assert wav_duration_seconds(wav_audio(duration, seed=2)) == pytest.approx(duration, abs=1 / 16000)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"RIFF\x00\x00\x00\x00WAVE", b"RIFF\xff\xff\xff\xffWAVEfmt \x02\x00"],
)
def test_wav_duration_of_non_wav_is_none(data: bytes) -> None:
    assert wav_duration_seconds(data) is None


def test_wav_duration_of_other_media_is_none() -> None:
    assert wav_duration_seconds(png_image(8, 8, seed=1)) is None
    assert wav_duration_seconds(animated_gif(8, 8, frames=2, fps=2, seed=1)) is None


# -- plausible_text -----------------------------------------------------------------------------


@pytest.mark.parametrize("max_words", [1, 2, 5, 9, 20, 1000])
def test_text_respects_word_limit_and_ends_with_period(max_words: int) -> None:
    text = plausible_text("Describe a lighthouse in a storm", seed=1, max_words=max_words)
    assert 1 <= len(text.split()) <= max_words
    assert text.endswith(".")
    assert not text.endswith("..")


def test_text_mentions_the_prompt() -> None:
    text = plausible_text("lighthouse", seed=7, max_words=100)
    assert "lighthouse" in text


def test_text_is_deterministic_and_seeded() -> None:
    prompt = "Tell me about volcanoes"
    assert plausible_text(prompt, seed=1, max_words=50) == plausible_text(prompt, seed=1, max_words=50)
    assert plausible_text(prompt, seed=1, max_words=50) != plausible_text(prompt, seed=2, max_words=50)


def test_text_with_no_room_is_empty() -> None:
    assert plausible_text("anything", seed=1, max_words=0) == ""


@given(prompt=st.text(max_size=200), seed=st.integers(), max_words=st.integers(min_value=1, max_value=120))
def test_text_limit_holds_for_any_prompt(prompt: str, seed: int, max_words: int) -> None:
    text = plausible_text(prompt, seed=seed, max_words=max_words)
    assert 1 <= len(text.split()) <= max_words
    assert text.endswith(".")


# -- transcript_segments / speech_duration_seconds ----------------------------------------------


def _check_segments(segments: list[tuple[float, float, str]], duration: float) -> None:
    assert segments, "a positive duration needs at least one segment"
    assert segments[0][0] == 0.0
    assert segments[-1][1] == pytest.approx(duration, abs=0.001)
    for (_, end, _), (start, _, _) in itertools.pairwise(segments):
        assert start == end, "segments must be contiguous, without gaps or overlaps"
    for start, end, text in segments:
        assert start < end
        assert round(start, 3) == start
        assert round(end, 3) == end
        assert text.strip()
        if len(segments) > 1:
            assert 2.0 <= round(end - start, 3) <= 5.0


@pytest.mark.parametrize("duration", [0.2, 1.999, 2.0, 5.0, 5.001, 12.3456, 90.0])
def test_transcript_covers_the_duration(duration: float) -> None:
    _check_segments(transcript_segments(duration, seed=1), duration)


def test_transcript_of_nothing_is_empty() -> None:
    assert transcript_segments(0, seed=1) == []


def test_transcript_is_deterministic() -> None:
    assert transcript_segments(30, seed=3, language="en") == transcript_segments(30, seed=3, language="en")
    assert transcript_segments(30, seed=3) != transcript_segments(30, seed=4)


@given(
    duration=st.floats(min_value=0, max_value=3600, allow_nan=False),
    seed=st.integers(),
    language=st.none() | st.sampled_from(["en", "de", "fr"]),
)
def test_transcript_invariants(duration: float, seed: int, language: str | None) -> None:
    segments = transcript_segments(duration, seed=seed, language=language)
    if duration == 0:
        assert segments == []
    else:
        _check_segments(segments, duration)


def test_speech_duration() -> None:
    assert speech_duration_seconds(" ".join(["word"] * 150)) == pytest.approx(60.0)
    assert speech_duration_seconds("hello there") == pytest.approx(0.8)
    assert speech_duration_seconds("") == 0.5
    assert speech_duration_seconds("hi") == 0.5
