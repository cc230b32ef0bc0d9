"""Saving outputs to files: Artifact.save's file names and overwriting, a file gone from the store, and subtitle
files ending whole."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import genroute
from genroute.errors import ArtifactMissing, GenrouteError, InvalidRequest, StoreError
from genroute.store import ResultStore
from genroute.subtitles import to_srt, to_webvtt
from genroute.types import Artifact, OutputFile, Result, Segment


def artifact(tmp_path: Path, data: bytes = b"png bytes", media_type: str = "image/png", name: str = "blob") -> Artifact:
    path = tmp_path / "store" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Artifact(media_type=media_type, path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- the stem is a file name ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stem", "why"),
    [
        ("", "must be a file name, not ''"),
        ("   ", "must be a file name, not '   '"),
        ("../escaped", "'../escaped' is a path, not a file name"),
        ("sub/pic", "'sub/pic' is a path, not a file name"),
        ("/tmp/pic", "'/tmp/pic' is a path, not a file name"),
        ("a\\b", "is a path, not a file name"),
        ("..", "'..' starts with '.': the file would be hidden"),
        (".", "'.' starts with '.'"),
        (".hidden", "'.hidden' starts with '.'"),
        ("pic.jpg", "'pic.jpg' ends in .jpg, but this artifact is image/png (.png)"),
        ("clip.MP4", "ends in .mp4, but this artifact is image/png"),
    ],
)
def test_a_stem_that_is_no_file_name_is_refused_before_anything_is_written(tmp_path: Path, stem: str, why: str) -> None:
    art = artifact(tmp_path)
    out = tmp_path / "out" / "deeper"

    with pytest.raises(InvalidRequest) as info:
        art.save(out, stem)

    assert info.value.field == "stem"
    assert why in info.value.message
    assert info.value.message.startswith("stem: ")
    assert not (tmp_path / "out").exists()  # not even the directory
    assert files_under(tmp_path) == ["store/blob"]  # nothing escaped the directory either


@pytest.mark.parametrize(
    ("stem", "media_type", "name"),
    [
        ("pic", "image/png", "pic.png"),
        ("pic.png", "image/png", "pic.png"),
        ("pic.PNG", "image/png", "pic.PNG"),
        ("photo.jpeg", "image/jpeg", "photo.jpeg"),
        ("photo.jpg", "image/jpeg", "photo.jpg"),
        ("photo", "image/jpeg", "photo.jpg"),
        ("v1.2", "image/png", "v1.2.png"),
        ("run 3 (final)", "audio/wav", "run 3 (final).wav"),
        ("data", "application/x-unknown", "data.bin"),
    ],
)
def test_the_suffix_is_added_once(tmp_path: Path, stem: str, media_type: str, name: str) -> None:
    saved = artifact(tmp_path, media_type=media_type).save(tmp_path / "out", stem)

    assert saved == tmp_path / "out" / name
    assert saved.read_bytes() == b"png bytes"
    assert files_under(tmp_path / "out") == [name]


def test_the_directory_may_be_a_string_and_is_made(tmp_path: Path) -> None:
    saved = artifact(tmp_path).save(str(tmp_path / "a" / "b"), "pic")
    assert saved == tmp_path / "a" / "b" / "pic.png" and saved.is_file()


def test_a_directory_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out" / "pic.png").mkdir(parents=True)
    with pytest.raises(InvalidRequest, match="is a directory") as info:
        artifact(tmp_path).save(tmp_path / "out", "pic")
    assert info.value.field == "stem"


# -- overwriting ----------------------------------------------------------------------------------------------


def test_by_default_a_later_save_replaces_the_file(tmp_path: Path) -> None:
    """What ``genroute run`` relies on: the same request saves under the same name each time."""
    first = artifact(tmp_path, b"first", name="one").save(tmp_path / "out", "pic")
    second = artifact(tmp_path, b"second", name="two").save(tmp_path / "out", "pic")

    assert first == second
    assert second.read_bytes() == b"second"


def test_without_overwrite_a_file_with_other_contents_is_kept_and_the_save_refused(tmp_path: Path) -> None:
    artifact(tmp_path, b"first", name="one").save(tmp_path / "out", "pic", overwrite=False)

    with pytest.raises(InvalidRequest) as info:
        artifact(tmp_path, b"second", name="two").save(tmp_path / "out", "pic", overwrite=False)

    assert info.value.field == "stem"
    assert "pic.png already exists with other contents" in info.value.message
    assert "overwrite=True" in info.value.hint
    assert (tmp_path / "out" / "pic.png").read_bytes() == b"first"


def test_without_overwrite_the_same_bytes_again_are_fine(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = artifact(tmp_path, b"same", name="one").save(out, "pic", overwrite=False)
    again = artifact(tmp_path, b"same", name="two").save(out, "pic.png", overwrite=False)

    assert first == again == out / "pic.png"
    assert again.read_bytes() == b"same"


@pytest.mark.parametrize("overwrite", [True, False])
def test_saving_the_stored_file_onto_itself_leaves_it_whole(tmp_path: Path, overwrite: bool) -> None:
    art = artifact(tmp_path, b"stored", name="blob.png")
    assert art.save(tmp_path / "store", "blob", overwrite=overwrite) == art.path
    assert art.path.read_bytes() == b"stored"


# -- a file gone from the store -------------------------------------------------------------------------------


def _assert_says_it_is_gone(error: ArtifactMissing, path: Path) -> None:
    assert isinstance(error, StoreError) and isinstance(error, GenrouteError)  # caught as any store error
    assert error.message == (
        f"the artifact's file {path} is gone: probably evicted from the result store to keep it under "
        "store.max_bytes, or deleted"
    )
    assert "run the request again" in error.hint
    assert "Artifact.save()" in error.hint and "raise [store] max_bytes" in error.hint
    assert genroute.ArtifactMissing is ArtifactMissing


def _result(key: str) -> Result:
    return Result(
        request_key=key,
        task="text-to-image",
        provider="mock",
        model="mock/flux",
        tier="fast",
        estimated_cost=Decimal("0.003"),
        actual_cost=Decimal("0.003"),
        latency_seconds=0.1,
        attempts=1,
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


def test_an_artifact_evicted_from_the_store_says_so_on_read_and_save(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "store", max_bytes=1024**2) as store:

        def put(n: int) -> Artifact:
            key = hashlib.sha256(f"request {n}".encode()).hexdigest()
            data = n.to_bytes(8, "big") + bytes(200_000)
            return store.put(key, _result(key), [OutputFile(data=data, media_type="image/png")]).artifacts[0]

        first = put(0)
        assert first.read_bytes()[:8] == bytes(8)  # there on return
        for n in range(1, 30):  # later results push the first out to keep the store under max_bytes
            put(n)
            if not first.path.exists():
                break
        assert not first.path.exists()

        with pytest.raises(ArtifactMissing) as read:
            first.read_bytes()
        _assert_says_it_is_gone(read.value, first.path)
        with pytest.raises(ArtifactMissing) as saved:
            first.save(tmp_path / "out", "first")
        _assert_says_it_is_gone(saved.value, first.path)
        assert not (tmp_path / "out").exists()  # nothing written, not even the directory


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_deleted_artifact_file_is_refused_the_same_way_and_nothing_is_written(
    tmp_path: Path, overwrite: bool
) -> None:
    art = artifact(tmp_path, b"stored")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "pic.png").write_bytes(b"an older copy")
    art.path.unlink()

    with pytest.raises(ArtifactMissing) as info:
        art.save(tmp_path / "out", "pic", overwrite=overwrite)
    _assert_says_it_is_gone(info.value, art.path)
    assert (tmp_path / "out" / "pic.png").read_bytes() == b"an older copy"  # left as it was
    with pytest.raises(ArtifactMissing):
        art.read_bytes()


def test_a_present_artifact_still_reads_and_saves(tmp_path: Path) -> None:
    art = artifact(tmp_path, b"stored")
    assert art.read_bytes() == b"stored"
    assert art.save(tmp_path / "out", "pic").read_bytes() == b"stored"


# -- subtitle files -------------------------------------------------------------------------------------------

_segments = st.lists(
    st.tuples(
        st.floats(0, 10_000, allow_nan=False),
        st.floats(0, 100, allow_nan=False),
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    ).map(lambda t: Segment(start=t[0], end=t[0] + t[1], text=t[2])),
    min_size=1,
    max_size=6,
)


@settings(max_examples=80, deadline=None)
@given(_segments)
def test_subtitle_files_end_with_one_newline_after_the_last_cue(segments: list[Segment]) -> None:
    for text in (to_srt(segments), to_webvtt(segments)):
        assert text.endswith("\n")
        assert not text.endswith("\n\n")  # the last cue ends its line; no stray blank line after it


def test_an_empty_webvtt_file_is_its_header_line() -> None:
    assert to_webvtt([]) == "WEBVTT\n\n"
    assert to_srt([]) == ""
