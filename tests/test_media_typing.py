"""Media fields take, for type checkers too, what they take at run time, and read back as a MediaInput.

``ImageToVideo(image=result.artifacts[0])`` (the chaining example in docs/getting-started.md), a ``Path``, a path or
URL string and ``bytes`` all validate; ``mypy --strict`` must accept them as well, with and without the pydantic mypy
plugin, and still refuse what validation refuses.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import REPO_ROOT, tiny_png
from genroute.media import MediaInput
from genroute.types import Artifact, ImageToVideo, Inpaint, Result, SpeechToText, Upscale

mypy_api = pytest.importorskip("mypy.api")

USES = """
from pathlib import Path

from genroute import ImageToVideo, Inpaint, Router, SpeechToText, TextToImage, Upscale
from genroute.media import MediaInput
from genroute.types import MediaSource


def chain(router: Router, source: MediaSource) -> bytes:
    still = router.run(TextToImage(prompt="a fox", tier="fast"))
    video = ImageToVideo(image=still.artifacts[0], prompt="the fox runs")
    big = Upscale(image=Path("x.png"), scale=4)
    words = SpeechToText(audio="talk.wav")
    masked = Inpaint(image=b"png bytes", mask="https://example.com/mask.png", prompt="a hat")
    again = Upscale(image=source)
    kept: MediaInput = video.image
    return kept.data + big.image.data + words.audio.data + masked.mask.data + again.image.data
"""

REFUSED = """
from genroute import Upscale

Upscale(image=42)
"""


def run_mypy(tmp_path: Path, source: str, *config: str) -> tuple[str, int]:
    script = tmp_path / "script.py"
    script.write_text(source, encoding="utf-8")
    args = ["--strict", "--cache-dir", str(tmp_path / ".mypy_cache"), *config, str(script)]
    out, err, status = mypy_api.run(args)
    return out + err, status


@pytest.fixture(params=["plain", "pydantic-plugin"])
def mypy_config(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """No configuration (as a user's own project), or genroute's, which enables the pydantic mypy plugin."""
    if request.param == "plain":
        empty = tmp_path / "mypy.ini"
        empty.write_text("[mypy]\n", encoding="utf-8")
        return ["--config-file", str(empty)]
    return ["--config-file", str(REPO_ROOT / "pyproject.toml")]


@pytest.mark.slow
def test_documented_media_inputs_pass_mypy_strict(tmp_path: Path, mypy_config: list[str]) -> None:
    out, status = run_mypy(tmp_path, USES, *mypy_config)
    assert status == 0, out
    assert "expected MediaInput" not in out


@pytest.mark.slow
def test_mypy_still_refuses_what_a_media_field_refuses(tmp_path: Path) -> None:
    empty = tmp_path / "mypy.ini"
    empty.write_text("[mypy]\n", encoding="utf-8")
    out, status = run_mypy(tmp_path, REFUSED, "--config-file", str(empty))
    assert status == 1
    assert 'Argument "image" to "Upscale" has incompatible type "int"' in out


def test_the_same_inputs_validate_and_read_back_as_media_input(tmp_path: Path) -> None:
    png = tiny_png()
    still = tmp_path / "still.png"
    still.write_bytes(png)
    wav = tmp_path / "talk.wav"
    wav.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 28)
    artifact = Artifact(media_type="image/png", path=still, sha256=MediaInput(data=png).sha256, size=len(png))
    result = Result(
        request_key="k" * 64,
        task="text-to-image",
        provider="mock",
        model="mock/flux",
        tier="fast",
        artifacts=[artifact],
        estimated_cost=Decimal(0),
        actual_cost=Decimal(0),
        latency_seconds=0.1,
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
    )

    video = ImageToVideo(image=result.artifacts[0], prompt="the fox runs")
    big = Upscale(image=still)
    words = SpeechToText(audio=str(wav))
    masked = Inpaint(image=png, mask="https://example.com/mask.png", prompt="a hat")

    for media in (video.image, big.image, words.audio, masked.image, masked.mask):
        assert isinstance(media, MediaInput)
    assert video.image.data == big.image.data == masked.image.data == png
    assert masked.mask.url == "https://example.com/mask.png" and not masked.mask.resolved


def test_a_media_field_still_names_what_it_refuses() -> None:
    with pytest.raises(ValueError, match="expected a file path, bytes, an http"):
        Upscale(image=42)  # type: ignore[arg-type]
