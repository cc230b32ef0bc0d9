"""Deterministic, offline generators of real media files for the mock provider.

Every public function is pure: the same arguments always give byte-identical
output. Images and GIFs are drawn with Pillow; audio uses only the stdlib.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import random
import re
import struct
import wave

from PIL import Image, ImageChops, ImageDraw, ImageFont, ImageOps

MAX_SIDE = 4096
"""Largest width or height any generated image may have."""

Colour = tuple[int, int, int]

_DETERMINERS = ("the", "this", "every", "that", "each", "our")
_ADJECTIVES = ("quiet", "bright", "ancient", "gentle", "curious", "golden", "distant", "vivid", "calm")
_NOUNS = ("river", "garden", "idea", "city", "machine", "story", "signal", "window", "mountain", "library")
_VERBS = ("shapes", "follows", "reveals", "carries", "explains", "reflects", "connects", "guides")
_PREPOSITIONS = ("near", "beyond", "within", "across", "beneath", "around")
_STOPWORDS = frozenset({
    "about", "could", "from", "have", "make", "please", "should", "some", "that",
    "there", "this", "what", "which", "with", "would", "write", "your",
})  # fmt: skip


def _colour(rng: random.Random) -> Colour:
    """A random opaque RGB colour."""
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _check_size(width: int, height: int) -> None:
    """Reject image sizes outside 1..MAX_SIDE."""
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ValueError(f"image size must be between 1x1 and {MAX_SIDE}x{MAX_SIDE}, got {width}x{height}")


def _png(img: Image.Image) -> bytes:
    """Encode an image as PNG, favouring speed over size."""
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _canvas(width: int, height: int, rng: random.Random) -> Image.Image:
    """A two-colour gradient with a few random ellipses and rectangles."""
    ramp = Image.linear_gradient("L")
    if rng.random() < 0.5:
        ramp = ramp.transpose(Image.Transpose.ROTATE_90)
    start, end = _colour(rng), _colour(rng)
    # 256 colour steps already exhaust 8 bits, so NEAREST looks as smooth as BILINEAR and is ~10x faster.
    # NEAREST only picks pixels, so it can come before the per-pixel colouring or after it with the same
    # result: whichever leaves fewer pixels to colour.
    small = width * height < 256 * 256
    if small:
        ramp = ramp.resize((width, height), Image.Resampling.NEAREST)
    channels = [ramp.point([a + (b - a) * v // 255 for v in range(256)]) for a, b in zip(start, end, strict=True)]
    img = Image.merge("RGB", channels)
    if not small:
        img = img.resize((width, height), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 6)):
        x0, x1 = sorted(rng.randrange(width) for _ in range(2))
        y0, y1 = sorted(rng.randrange(height) for _ in range(2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=_colour(rng))
    return img


@functools.cache
def _label_font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Loading Pillow's default font costs more than drawing a small label; the font object is never changed.
    return ImageFont.load_default()


def _draw_label(img: Image.Image, label: str, margin: int = 4) -> None:
    """Write `label` in small text along the bottom edge, cut to fit."""
    font = _label_font()
    text = " ".join(label.split())
    if not isinstance(font, ImageFont.FreeTypeFont):  # bitmap fallback: latin-1
        text = text.encode("latin-1", "replace").decode("latin-1")
    draw = ImageDraw.Draw(img)
    room = img.width - 2 * margin
    text = text[: max(0, room // 2)]
    while text and (length := draw.textlength(text, font=font)) > room:
        text = text[: min(len(text) - 1, int(len(text) * room / length))]
    _, top, right, bottom = draw.textbbox((0, 0), text or " ", font=font)
    y = img.height - margin - bottom
    if not text or y - top < margin:
        return
    draw.rectangle((0, y + top - margin, margin + right + margin, img.height), fill=(0, 0, 0))
    draw.text((margin, y), text, font=font, fill=(255, 255, 255))


def png_image(width: int, height: int, *, seed: int, label: str = "") -> bytes:
    """A width x height RGB PNG whose content is derived from `seed`.

    A non-empty `label` (e.g. the prompt) is printed small at the bottom.
    """
    _check_size(width, height)
    img = _canvas(width, height, random.Random(seed))
    if label:
        _draw_label(img, label)
    return _png(img)


def _decode(data: bytes, what: str) -> Image.Image:
    """Decode image bytes in any format Pillow reads, honouring EXIF rotation."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except Exception as exc:  # Pillow raises many exception types on bad input
        raise ValueError(f"{what} is not a readable image: {exc}") from exc


def _scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Multiply a size by `scale`, then shrink it so no side exceeds MAX_SIDE."""
    width, height = (max(1, round(side * scale)) for side in size)
    shrink = min(1.0, MAX_SIDE / max(width, height))
    return max(1, round(width * shrink)), max(1, round(height * shrink))


def _cut_out_background(img: Image.Image, tolerance: int = 40) -> Image.Image:
    """RGBA copy where pixels within `tolerance` of the top-left colour vanish."""
    corner = Image.new("RGB", img.size, img.getpixel((0, 0)))
    red, green, blue = ImageChops.difference(img, corner).split()
    distance = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    cut = img.copy()
    cut.putalpha(distance.point(lambda d: 0 if d <= tolerance else 255))
    return cut


def transform_image(
    data: bytes,
    *,
    seed: int,
    scale: float = 1.0,
    remove_background: bool = False,
    mask: bytes | None = None,
) -> bytes:
    """Edit an encoded image deterministically and return it as PNG.

    Without `mask` the whole image gets a seed-derived tint; with `mask`
    (image bytes, white = repaint) only the masked region is repainted with
    seed-derived content and the rest is kept. The result is then resized by
    `scale` (longest side capped at MAX_SIDE) and, if `remove_background`,
    made RGBA with the top-left corner colour turned transparent.
    Raises ValueError if `data` or `mask` cannot be decoded.
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    rng = random.Random(seed)
    img = _decode(data, "image").convert("RGB")
    if mask is None:
        tint = Image.new("RGB", img.size, _colour(rng))
        img = Image.blend(img, tint, rng.uniform(0.15, 0.3))
    else:
        region = _decode(mask, "mask").convert("L")
        region = region.resize(img.size, Image.Resampling.BILINEAR)
        region = region.point(lambda v: 255 if v >= 128 else 0)
        img = Image.composite(_canvas(img.width, img.height, rng), img, region)
    img = img.resize(_scaled_size(img.size, scale), Image.Resampling.BICUBIC)
    if remove_background:
        img = _cut_out_background(img)
    return _png(img)


def video_size(data: bytes, long_side: int, *, min_side: int = 64) -> tuple[int, int]:
    """The size of a video made from the image `data`: the image's shape (after EXIF rotation) with
    `long_side` pixels on its long side, each side rounded to a multiple of 8 and at least `min_side`.

    Raises ValueError if `data` cannot be decoded.
    """
    width, height = _decode(data, "image").size
    scale = long_side / max(width, height)

    def fit(side: int) -> int:
        return max(min_side, round(side * scale / 8) * 8)

    return fit(width), fit(height)


def animated_gif(width: int, height: int, *, frames: int, fps: int, seed: int) -> bytes:
    """A looping GIF of a disc orbiting the centre, `frames` frames at `fps`.

    Each frame asks for round(1000 / fps) ms; GIF stores centiseconds, so readers see it cut to 10 ms.
    """
    _check_size(width, height)
    if frames < 1 or fps < 1:
        raise ValueError(f"frames and fps must be >= 1, got {frames} and {fps}")
    rng = random.Random(seed)
    background, (red, green, blue) = _colour(rng), _colour(rng)
    phase = rng.uniform(0, 2 * math.pi)
    radius = max(1, min(width, height) // 6)
    orbit_x, orbit_y = max(0, width / 2 - radius), max(0, height / 2 - radius)
    images: list[Image.Image] = []
    for i in range(frames):
        angle = phase + 2 * math.pi * i / frames
        x = width / 2 + orbit_x * math.cos(angle)
        y = height / 2 + orbit_y * math.sin(angle)
        # A faint flicker keeps consecutive frames distinct, so Pillow never
        # merges them and the frame count is always exactly `frames`.
        fill = ((red + 8 * (i % 2)) % 256, green, blue)
        img = Image.new("RGB", (width, height), background)
        ImageDraw.Draw(img).ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
        images.append(img)
    buf = io.BytesIO()
    images[0].save(
        buf,
        "GIF",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
    )
    return buf.getvalue()


def _tone(frequency: float, length: int, sample_rate: int) -> bytes:
    """`length` 16-bit little-endian samples of a sine with 10 ms fades."""
    fade = max(1, min(length // 2, sample_rate // 100))
    step = 2 * math.pi * frequency / sample_rate
    samples = (round(9000 * min(1.0, (n + 1) / fade, (length - n) / fade) * math.sin(step * n)) for n in range(length))
    return struct.pack(f"<{length}h", *samples)


def wav_audio(duration_seconds: float, *, seed: int, sample_rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV: a seed-dependent run of short sine notes."""
    if not duration_seconds >= 0 or sample_rate < 1:
        raise ValueError(f"need duration >= 0 and sample_rate >= 1, got {duration_seconds} and {sample_rate}")
    rng = random.Random(seed)
    remaining = round(duration_seconds * sample_rate)
    notes: list[bytes] = []
    while remaining > 0:
        length = min(remaining, max(1, round(rng.uniform(0.2, 0.6) * sample_rate)))
        frequency = rng.choice((262.0, 294.0, 330.0, 392.0, 440.0, 523.0, 587.0))
        notes.append(_tone(frequency, length, sample_rate))
        remaining -= length
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(b"".join(notes))
    return buf.getvalue()


def wav_duration_seconds(data: bytes) -> float | None:
    """Duration of a PCM WAV given as bytes, or None if it is not one."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            frames, rate = wav.getnframes(), wav.getframerate()
    except (wave.Error, EOFError, struct.error):
        return None
    return frames / rate if rate > 0 else None


def _topics(prompt: str, rng: random.Random, count: int = 3) -> list[str]:
    """Up to `count` distinct content words picked from the prompt."""
    words = [word for word in dict.fromkeys(re.findall(r"[^\W\d_]{4,}", prompt.lower())) if word not in _STOPWORDS]
    return rng.sample(words, min(count, len(words)))


def _sentence(rng: random.Random, topics: list[str], subject: str | None = None) -> list[str]:
    """One English-like sentence as a list of words, ending with a period."""

    def noun() -> str:
        if topics and rng.random() < 0.4:
            return rng.choice(topics)
        return rng.choice(_NOUNS)

    words = [rng.choice(_DETERMINERS), rng.choice(_ADJECTIVES), subject or noun()]
    words += [rng.choice(_VERBS), rng.choice(_DETERMINERS), noun()]
    if rng.random() < 0.6:
        words += [rng.choice(_PREPOSITIONS), "the", noun()]
    words[0] = words[0].capitalize()
    words[-1] += "."
    return words


def plausible_text(prompt: str, *, seed: int, max_words: int) -> str:
    """Two to five readable sentences echoing a few prompt words, at most `max_words` words.

    Whole sentences are dropped to stay within the limit; if even the first is too long it is cut.
    Always ends with a period; returns "" when `max_words` < 1.
    """
    if max_words < 1:
        return ""
    rng = random.Random(f"{seed}:{prompt}")
    topics = _topics(prompt, rng)
    sentences = [_sentence(rng, topics, subject=topics[0] if topics else None)]
    sentences += [_sentence(rng, topics) for _ in range(rng.randint(1, 4))]
    words: list[str] = []
    for sentence in sentences:  # whole sentences while they fit ...
        if len(words) + len(sentence) > max_words:
            break
        words += sentence
    if not words:  # ... else the first one, cut short
        words = sentences[0][:max_words]
        words[-1] = words[-1].rstrip(".") + "."
    return " ".join(words)


def transcript_segments(
    duration_seconds: float, *, seed: int, language: str | None = None
) -> list[tuple[float, float, str]]:
    """Contiguous (start, end, text) segments of 2-5 s covering the duration.

    Times are in seconds rounded to milliseconds; only a total under 2 s gives
    a shorter (single) segment. `language` varies the text, which stays
    English-like.
    """
    if not duration_seconds >= 0:
        raise ValueError(f"duration must be >= 0, got {duration_seconds}")
    if duration_seconds == 0:
        return []
    rng = random.Random(f"{seed}:{language}")
    total_ms = max(1, round(duration_seconds * 1000))
    bounds = [0]
    while (left := total_ms - bounds[-1]) > 5000:
        bounds.append(bounds[-1] + rng.randint(2000, min(5000, left - 2000)))
    bounds.append(total_ms)
    return [(start / 1000, end / 1000, " ".join(_sentence(rng, []))) for start, end in itertools.pairwise(bounds)]


def speech_duration_seconds(text: str) -> float:
    """Seconds needed to say `text` at about 150 words per minute (min 0.5 s)."""
    return max(0.5, round(len(text.split()) * 60 / 150, 3))
