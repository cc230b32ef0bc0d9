"""Saving outputs to files: Artifact.save's file names and overwriting, and subtitle files ending whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genroute.errors import InvalidRequest
from genroute.subtitles import to_srt, to_webvtt
from genroute.types import Artifact, Segment


def artifact(tmp_path: Path, data: bytes = b"png bytes", media_type: str = "image/png", name: str = "blob") -> Artifact:
    path = tmp_path / "store" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Artifact(media_type=media_type, path=path, sha256="0" * 64, size=len(data))


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
