"""Generated audio cut short is refused before it is kept: :func:`genroute.media.audio_cut_short`.

A WAV file says how long it is twice: the RIFF header gives the file's size, the ``data`` chunk the sound's. Python's
``wave`` module reads a file cut short without complaint (it returns fewer frames), so a half-delivered answer
would be stored and cached as if whole. The check reads chunk headers only; sizes streaming encoders leave
unknown (0, 0xFFFFFFFF) and metadata chunks after the samples are accepted.
"""

from __future__ import annotations

import io
import struct
import wave
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import FakePlugin, FakeProvider, section
from fakes.hf_server import FakeHF, make_wav
from genroute import errors
from genroute.media import audio_cut_short
from genroute.types import OutputFile, ProviderOutput, RequestModel
from genroute_huggingface import media as hf_media
from genroute_mock.media import wav_audio
from hf_helpers import TOKEN, entry, isolate_hf, router, serve_catalogue, settings
from request_samples import wav_bytes

HEADER = 44  # RIFF header, fmt chunk and data chunk header of a file written by ``wave``


def _with_sizes(data: bytes, *, riff: int | None = None, data_size: int | None = None) -> bytes:
    """``data`` (written by ``wave``, so its data chunk header is at 36) with its RIFF and/or data size replaced."""
    out = bytearray(data)
    assert out[36:40] == b"data"
    if riff is not None:
        out[4:8] = struct.pack("<I", riff)
    if data_size is not None:
        out[40:44] = struct.pack("<I", data_size)
    return bytes(out)


def _chunk(chunk_id: bytes, payload: bytes) -> bytes:
    return chunk_id + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def _list_chunk() -> bytes:
    return _chunk(b"LIST", b"INFO" + _chunk(b"ISFT", b"Lavf60.16.100\0"))


def _read(data: bytes) -> tuple[int, int]:
    """What ``wave`` makes of ``data``: the frames its header counts, and the bytes of samples it reads."""
    with wave.open(io.BytesIO(data), "rb") as w:
        return w.getnframes(), len(w.readframes(w.getnframes()))


# ---- the check itself --------------------------------------------------------------------------------------------


def test_whole_wav_files_pass() -> None:
    assert audio_cut_short(wav_bytes(0.5)) is None
    assert audio_cut_short(wav_bytes(0.0)) is None  # no samples, and says so
    assert audio_cut_short(wav_audio(1.0, seed=7)) is None  # the mock's speech
    assert audio_cut_short(make_wav("hello brave new world")) is None  # the fake's, a private chunk after the data


def test_a_wav_cut_short_says_what_it_declared_and_what_came() -> None:
    whole = wav_bytes(1.0, rate=8000)  # 16000 bytes of samples
    cut = whole[: HEADER + 7990]
    assert _read(cut) == (8000, 7990)  # what the defect let through: wave reads it without complaint
    assert audio_cut_short(cut) == "WAV audio cut short: declared 16000 bytes of sound data, got 7990"


def test_every_cut_of_a_wav_is_found() -> None:
    whole = wav_bytes(0.01, rate=8000, frame=b"\x01\x02")  # 160 bytes of samples
    for end in range(12, len(whole)):
        assert audio_cut_short(whole[:end]) is not None, end
    assert audio_cut_short(whole[: HEADER + 1]) == "WAV audio cut short: declared 160 bytes of sound data, got 1"
    assert audio_cut_short(whole[: HEADER - 2]) == "WAV audio cut short: declared 204 bytes in its RIFF header, got 42"


def test_the_fakes_truncated_answer_is_found() -> None:
    whole = make_wav("hello")
    assert audio_cut_short(whole[: len(whole) // 2]) == (
        f"WAV audio cut short: declared 8000 bytes of sound data, got {len(whole) // 2 - HEADER}"
    )


@pytest.mark.parametrize("riff", [0, 0xFFFFFFFF, None])
@pytest.mark.parametrize("data_size", [0, 0xFFFFFFFF])
def test_sizes_a_streaming_encoder_leaves_unknown_are_accepted(riff: int | None, data_size: int) -> None:
    assert audio_cut_short(_with_sizes(wav_bytes(0.25), riff=riff, data_size=data_size)) is None


def test_an_unknown_riff_size_does_not_excuse_a_short_data_chunk() -> None:
    cut = _with_sizes(wav_bytes(0.5), riff=0xFFFFFFFF)[:-100]
    assert audio_cut_short(cut) == "WAV audio cut short: declared 8000 bytes of sound data, got 7900"


def test_chunks_after_the_data_are_accepted() -> None:
    whole = wav_bytes(0.25)
    tagged = whole + _list_chunk()
    assert audio_cut_short(_with_sizes(tagged, riff=len(tagged) - 8)) is None  # RIFF size counts the LIST chunk
    assert audio_cut_short(tagged) is None  # a tagger that appended it without fixing the RIFF size
    assert audio_cut_short(whole + b"\0" * 3) is None  # stray bytes after the RIFF form
    assert _read(tagged) == (2000, 4000)


def test_a_file_shorter_than_its_riff_size_is_cut_short_even_with_the_samples_whole() -> None:
    tagged = wav_bytes(0.25) + _list_chunk()
    tagged = _with_sizes(tagged, riff=len(tagged) - 8)
    cut = tagged[:-12]  # the LIST chunk lost its end
    assert (
        audio_cut_short(cut) == f"WAV audio cut short: declared {len(tagged)} bytes in its RIFF header, got {len(cut)}"
    )


def test_riff_sizes_real_encoders_overstate_by_are_accepted() -> None:
    whole = wav_bytes(0.25)
    assert audio_cut_short(_with_sizes(whole, riff=len(whole) - 8 + 1)) is None  # a pad byte counted, not written
    assert audio_cut_short(_with_sizes(whole, riff=len(whole))) is None  # the whole file's size, not less 8
    assert audio_cut_short(_with_sizes(whole, riff=len(whole) + 1)) == (
        f"WAV audio cut short: declared {len(whole) + 9} bytes in its RIFF header, got {len(whole)}"
    )


def test_an_odd_data_chunk_without_its_pad_byte_is_whole() -> None:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(b"\x80" * 101)
    data = buffer.getvalue()
    assert audio_cut_short(data) is None
    assert audio_cut_short(_with_sizes(data, riff=36 + 101 + 1)) is None  # RIFF size counts the missing pad


def test_a_chunk_before_the_data_cut_short_is_found() -> None:
    whole = wav_bytes(0.25)
    fmt = whole[12:36]
    tagged = whole[:12] + fmt + _list_chunk() + whole[36:]
    tagged = tagged[:4] + struct.pack("<I", len(tagged) - 8) + tagged[8:]
    assert audio_cut_short(tagged) is None
    cut = tagged[: 36 + 10]
    assert audio_cut_short(cut) == "WAV audio cut short: its 'LIST' chunk declares 26 bytes, got 2"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"RIFF",
        b"RIFF\x10\x00\x00\x00WEBPVP8 ",  # a RIFF image, not WAVE
        b"fLaC\x00\x00\x00\x22" + b"\x00" * 34,
        b"ID3\x04\x00\x00\x00\x00\x00\x00",
        b"OggS\x00\x02" + b"\x00" * 20,
        b"\x89PNG\r\n\x1a\n",
    ],
)
def test_other_formats_are_not_judged(data: bytes) -> None:
    assert audio_cut_short(data) is None


# ---- through the Hugging Face provider and the router ------------------------------------------------------------

MODEL = str(entry("text-to-speech", "fast")["model"])
ONE_CALL = Decimal("1.5") * Decimal(str(entry("text-to-speech", "fast")["price"]))  # 1.5 compute seconds


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHF]:
    isolate_hf(monkeypatch, tmp_path / "hf_home")
    with FakeHF(token=TOKEN) as server:
        serve_catalogue(server, compute=1.5)
        yield server


def _stored_wavs(store: Path) -> list[bytes]:
    return [p.read_bytes() for p in store.rglob("*") if p.is_file() and p.read_bytes()[:4] == b"RIFF"]


def test_checked_audio_refuses_a_wav_cut_short_as_worth_another_try() -> None:
    whole = make_wav("hello")
    with pytest.raises(errors.OutputRejected, match=r"m answered WAV audio cut short: declared 8000 bytes") as info:
        hf_media.checked_audio(whole[: len(whole) // 2], model="m", max_bytes=1_000_000)
    assert info.value.retryable
    assert hf_media.checked_audio(whole, model="m", max_bytes=1_000_000) == "audio/wav"


def test_a_truncated_wav_from_hugging_face_is_retried_and_never_stored(fake: FakeHF, tmp_path: Path) -> None:
    fake.malformed(MODEL, "truncated")  # the first answer is half its bytes; the next is whole
    with router(settings(tmp_path, fake.base_url)) as r:
        result = r.run({"task": "text-to-speech", "text": "hello", "tier": "fast"})
        entries = list(r.ledger.entries())
    assert (result.provider, result.attempts) == ("huggingface", 2)
    assert fake.count(model=MODEL, status=200) == 2
    stored = result.artifacts[0].read_bytes()
    assert stored == make_wav("hello") and audio_cut_short(stored) is None
    assert _stored_wavs(tmp_path / "store") == [stored]
    # Both calls were billed by the service, and both are paid: one settled line for the request.
    assert [(e.status, e.provider, e.actual) for e in entries] == [("settled", "huggingface", 2 * ONE_CALL)]
    assert result.actual_cost == 2 * ONE_CALL


def test_truncated_wavs_on_every_try_fall_back_and_nothing_cut_short_is_cached(fake: FakeHF, tmp_path: Path) -> None:
    fake.malformed(MODEL, "truncated", times=None)
    with router(settings(tmp_path, fake.base_url, providers=("huggingface", "mock"))) as r:
        result = r.run({"task": "text-to-speech", "text": "hello", "tier": "fast"})
        entries = list(r.ledger.entries())
        again = r.run({"task": "text-to-speech", "text": "hello", "tier": "fast"})
    assert fake.count(model=MODEL) == 3  # max_attempts, each answer refused
    assert result.provider == "mock" and audio_cut_short(result.artifacts[0].read_bytes()) is None
    assert again.provider == "mock" and again.cached  # the cache holds the mock's whole file, nothing else
    assert fake.count(model=MODEL) == 3
    assert all(audio_cut_short(data) is None for data in _stored_wavs(tmp_path / "store"))
    failed = [e for e in entries if e.provider == "huggingface"]
    assert [(e.status, e.actual) for e in failed] == [("settled", 3 * ONE_CALL)]
    assert "WAV audio cut short: declared 8000 bytes of sound data" in failed[0].note
    assert [e.status for e in entries if e.provider == "mock"] == ["settled"]


# ---- the router's own check: every provider (mock, Replicate, third-party plugins) -----------------------------


def _speaks(data: bytes) -> Callable[[RequestModel], ProviderOutput]:
    return lambda request: ProviderOutput(files=[OutputFile(data=data, media_type="audio/wav")])


def _tts(settings_factory: Any, *providers: tuple[str, str]) -> Any:
    return settings_factory(
        {name: section(name, price, task="text-to-speech", unit="request") for name, price in providers}
    )


WHOLE = wav_bytes(0.5)
CUT = WHOLE[: len(WHOLE) // 2]


async def test_a_wav_cut_short_from_any_provider_is_not_stored_and_falls_back(settings_factory, router_factory):
    cut, whole = FakeProvider("cut", output=_speaks(CUT)), FakeProvider("whole", output=_speaks(WHOLE))
    settings = _tts(settings_factory, ("cut", "0.01"), ("whole", "0.02"))
    r = router_factory(settings, FakePlugin(cut, whole))

    result = await r.arun({"task": "text-to-speech", "text": "hello"})

    assert result.provider == "whole" and result.artifacts[0].read_bytes() == WHOLE
    assert len(cut.calls) == 1  # bad output, like any other the router refuses: not asked again, it falls back
    assert _stored_wavs(settings.store.path) == [WHOLE]
    entries = list(r.ledger.entries())
    refused = [e for e in entries if e.provider == "cut"]
    # the provider did the work, so its price is settled (not released), and the note says what was wrong
    assert [(e.status, e.actual) for e in refused] == [("settled", Decimal("0.01"))]
    assert "output file 1 of 1 is WAV audio cut short: declared" in refused[0].note
    assert [(e.status, e.actual) for e in entries if e.provider == "whole"] == [("settled", Decimal("0.02"))]
    assert r.ledger.open_reservations() == []
    again = await r.arun({"task": "text-to-speech", "text": "hello"})
    assert again.cached and again.provider == "whole" and len(cut.calls) == 1


async def test_a_wav_cut_short_with_nowhere_to_fall_back_fails_naming_it(settings_factory, router_factory):
    cut = FakeProvider("cut", output=_speaks(CUT))
    settings = _tts(settings_factory, ("cut", "0.01"))
    r = router_factory(settings, FakePlugin(cut))

    with pytest.raises(errors.NoRouteAvailable) as info:
        await r.arun({"task": "text-to-speech", "text": "hello"})

    assert "failed after 1 attempt(s): cut: output file 1 of 1 is WAV audio cut short" in info.value.message
    assert _stored_wavs(settings.store.path) == []
    assert [(e.status, e.actual) for e in r.ledger.entries()] == [("settled", Decimal("0.01"))]
    assert r.ledger.open_reservations() == []


async def test_a_whole_wav_and_other_audio_pass_the_routers_check(settings_factory, router_factory):
    streaming = _with_sizes(WHOLE, riff=0xFFFFFFFF, data_size=0xFFFFFFFF)  # sizes a streaming encoder leaves
    for data in (WHOLE, streaming):
        speaker = FakeProvider("speaker", output=_speaks(data))
        r = router_factory(_tts(settings_factory, ("speaker", "0.01")), FakePlugin(speaker))
        result = await r.arun({"task": "text-to-speech", "text": "hello", "cache": "bypass"})
        assert result.artifacts[0].read_bytes() == data
