"""URL inputs are fetched by the router over real HTTP; the key holds their content hash, not the URL."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from pytest_httpserver import HTTPServer

from conftest import mock_section
from genroute.errors import InvalidRequest
from genroute.keys import request_key
from genroute.router import Router
from genroute.types import Upscale
from request_samples import good


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 60), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def router(settings_factory, router_factory):  # type: ignore[no-untyped-def]
    settings = settings_factory({"mock": mock_section()}, routing={"max_input_bytes": 64 * 1024})
    return router_factory(settings, entry_points=True)


async def test_url_input_is_fetched_and_keyed_by_content(router, httpserver: HTTPServer) -> None:  # type: ignore[no-untyped-def]
    red = _png((255, 0, 0))
    httpserver.expect_request("/red.png").respond_with_data(red, content_type="image/png")
    httpserver.expect_request("/same.png").respond_with_data(red, content_type="image/png")

    first = await router.arun({"task": "upscale", "image": httpserver.url_for("/red.png"), "scale": 2})
    with Image.open(first.artifacts[0].path) as image:
        assert image.size == (160, 120)
    assert first.request_key == request_key(Upscale(image=red, scale=2))

    # Another URL serving the same bytes is the same request: a hit, nothing charged.
    again = await router.arun({"task": "upscale", "image": httpserver.url_for("/same.png"), "scale": 2})
    assert again.cached and again.actual_cost == 0


async def test_same_url_with_new_bytes_is_a_new_request(router, httpserver: HTTPServer) -> None:  # type: ignore[no-untyped-def]
    httpserver.expect_ordered_request("/img.png").respond_with_data(_png((0, 0, 255)), content_type="image/png")
    httpserver.expect_ordered_request("/img.png").respond_with_data(_png((0, 255, 0)), content_type="image/png")
    first = await router.arun({"task": "upscale", "image": httpserver.url_for("/img.png")})
    second = await router.arun({"task": "upscale", "image": httpserver.url_for("/img.png")})
    assert first.request_key != second.request_key
    assert not second.cached


async def test_unreachable_or_oversized_url_names_the_field_and_spends_nothing(router, httpserver: HTTPServer) -> None:  # type: ignore[no-untyped-def]
    httpserver.expect_request("/missing.png").respond_with_data("nope", status=404)
    httpserver.expect_request("/huge.png").respond_with_data(b"\x89PNG" + b"0" * (200 * 1024))
    for path, words in (("/missing.png", "HTTP 404"), ("/huge.png", "larger than")):
        with pytest.raises(InvalidRequest) as info:
            await router.arun({"task": "remove-background", "image": httpserver.url_for(path)})
        assert info.value.field == "image" and words in str(info.value)
    assert list(router.ledger.entries()) == []
    assert router.store is not None and router.store.stats().entries == 0


async def test_url_serving_something_else_than_the_field_needs_is_refused_before_any_money_moves(  # type: ignore[no-untyped-def]
    router, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/notes.png").respond_with_data(b"shopping list: eggs, flour\n", content_type="image/png")
    httpserver.expect_request("/photo.png").respond_with_data(_png((0, 0, 0)), content_type="audio/wav")
    cases = [
        ({"task": "upscale", "image": httpserver.url_for("/notes.png")}, "image", "not an image"),
        ({"task": "speech-to-text", "audio": httpserver.url_for("/photo.png")}, "audio", "image/png, not audio"),
    ]
    for request, field, words in cases:
        with pytest.raises(InvalidRequest) as info:
            await router.arun(request)
        assert info.value.field == field and words in str(info.value)
        assert httpserver.url_for("/") in str(info.value)  # names what was fetched
        with pytest.raises(InvalidRequest) as planned:
            await router.aplan(request)
        assert planned.value.field == field
    assert list(router.ledger.entries()) == []
    assert router.store is not None and router.store.stats().entries == 0


async def test_an_input_over_max_input_bytes_names_the_limit_and_how_to_raise_it(  # type: ignore[no-untyped-def]
    router, httpserver: HTTPServer, tmp_path
) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(70 * 1024)
    (tmp_path / "big.png").write_bytes(big)
    httpserver.expect_request("/big.png").respond_with_data(big, content_type="image/png")
    for image, words in (
        (str(tmp_path / "big.png"), f"is {len(big)} bytes, over routing.max_input_bytes (65536)"),
        (httpserver.url_for("/big.png"), "is larger than 65536 bytes (routing.max_input_bytes)"),
    ):
        with pytest.raises(InvalidRequest) as info:
            await router.arun({"task": "upscale", "image": image})
        assert info.value.field == "image" and words in str(info.value)
        assert "raise [routing] max_input_bytes" in str(info.value)
    assert list(router.ledger.entries()) == []


# -- schemes other than http(s) ------------------------------------------------------------------------------

SUPPORTED = "give a file path, bytes, an http(s) URL or a data: URI"


@pytest.mark.parametrize(
    ("task", "field", "value", "scheme"),
    [
        ("image-to-image", "image", "ftp://example.com/x.png", "ftp"),
        ("upscale", "image", "s3://bucket/x.png", "s3"),
        ("inpaint", "mask", "gs://bucket/mask.png", "gs"),
        ("speech-to-text", "audio", "FTP://example.com/talk.wav", "ftp"),
        ("image-to-video", "image", "sftp://user@host/still.png", "sftp"),
    ],
)
def test_an_unsupported_url_scheme_is_named_with_what_is_supported(
    task: str, field: str, value: str, scheme: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        Router.parse({**good(task), field: value})

    assert info.value.field == field
    assert info.value.message == (
        f"{field}: {scheme}:// URLs are not supported; {SUPPORTED} (a file:// URL is read as the local file it names)"
    )
    assert "not found" not in str(info.value)  # never looked up as a mangled path such as ftp:/example.com/x.png


async def test_an_unsupported_scheme_is_refused_before_any_money_moves(router) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequest) as info:
        await router.arun({"task": "upscale", "image": "ftp://example.com/x.png"})
    assert info.value.field == "image" and "ftp:// URLs are not supported" in info.value.message
    assert list(router.ledger.entries()) == []


async def test_a_file_url_is_read_as_the_local_file_it_names(router, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    red = _png((255, 0, 0))
    photo = tmp_path / "my photo #1.png"  # a space and a '#': percent-encoded in the URL
    photo.write_bytes(red)
    uri = photo.as_uri()
    assert "%20" in uri and "%23" in uri

    model = Router.parse({"task": "upscale", "image": uri, "scale": 2})
    assert model.media_fields()["image"].path == photo
    assert request_key(model) == request_key(Upscale(image=red, scale=2))  # the same request as the bytes
    localhost = Router.parse({"task": "upscale", "image": uri.replace("file://", "file://localhost", 1), "scale": 2})
    assert request_key(localhost) == request_key(model)

    result = await router.arun({"task": "upscale", "image": uri, "scale": 2})
    with Image.open(result.artifacts[0].path) as image:
        assert image.size == (160, 120)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("file:///{missing}", "file not found: /{missing} (give an existing file"),  # the path, not file:/…
        ("file://fileserver/share/x.png", "file:// URL names host 'fileserver'; only files on this machine"),
        ("file:///tmp/x.png?size=2", "a file:// URL cannot have a query (?) or fragment (#)"),
        ("file:///", "file:// URL names no file"),
    ],
)
def test_a_file_url_that_names_no_local_file_says_why(url: str, words: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.png").lstrip("/")
    with pytest.raises(InvalidRequest) as info:
        Router.parse({"task": "upscale", "image": url.format(missing=missing)})
    assert info.value.field == "image"
    assert words.format(missing=missing) in info.value.message


def test_a_windows_drive_or_a_colon_in_a_file_name_is_still_a_path(tmp_path: Path) -> None:
    for name in ("C:/pictures/x.png", "C:\\pictures\\x.png", "C:x.png", str(tmp_path / "a:b.png"), "pics/a:b.png"):
        with pytest.raises(InvalidRequest) as info:
            Router.parse({"task": "upscale", "image": name})
        assert f"file not found: {name}" in info.value.message


EVERY_FORM = "a file path, bytes, an http(s) URL, a data: URI or a file:// URL"


def test_file_not_found_lists_every_accepted_form(tmp_path: Path) -> None:
    missing = tmp_path / "gone.png"
    with pytest.raises(InvalidRequest) as info:
        Router.parse({"task": "upscale", "image": str(missing)})
    assert info.value.message == (
        f"image: file not found: {missing} (give an existing file path, bytes, an http(s) URL, a data: URI or a "
        "file:// URL)"
    )


@pytest.mark.parametrize(
    ("task", "field", "value", "scheme"),
    [
        ("upscale", "image", "mailto:a@b", "mailto"),
        ("image-to-image", "image", "javascript:alert(1)", "javascript"),
        ("inpaint", "mask", "urn:isbn:0451450523", "urn"),
        ("speech-to-text", "audio", "Tel:+15551234567", "tel"),
        ("upscale", "image", "blob:https://example.com/1234", "blob"),
    ],
)
def test_a_uri_without_slashes_of_an_unsupported_scheme_is_refused_naming_field_and_scheme(
    task: str, field: str, value: str, scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidRequest) as info:
        Router.parse({**good(task), field: value})

    assert info.value.field == field
    assert info.value.message.startswith(f"{field}: {scheme}: URIs are not supported")
    assert info.value.message.endswith(f"; give {EVERY_FORM}")
    assert "not found" not in info.value.message


def test_a_file_whose_name_looks_like_a_uri_is_still_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    red = _png((255, 0, 0))
    (tmp_path / "notes:v2.png").write_bytes(red)
    monkeypatch.chdir(tmp_path)
    model = Router.parse({"task": "upscale", "image": "notes:v2.png", "scale": 2})
    assert request_key(model) == request_key(Upscale(image=red, scale=2))


def test_a_relative_file_url_names_a_file_of_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    red = _png((255, 0, 0))
    (tmp_path / "my fox.png").write_bytes(red)
    monkeypatch.chdir(tmp_path)

    model = Router.parse({"task": "upscale", "image": "file:my%20fox.png", "scale": 2})
    assert model.media_fields()["image"].path == Path("my fox.png")
    assert request_key(model) == request_key(Upscale(image=red, scale=2))
    with pytest.raises(InvalidRequest) as info:
        Router.parse({"task": "upscale", "image": "file:no%20such.png"})
    assert info.value.field == "image"
    assert info.value.message.startswith("image: file not found: no such.png (give an existing file path")
    with pytest.raises(InvalidRequest) as info:
        Router.parse({"task": "upscale", "image": "file:"})
    assert "file:// URL names no file" in info.value.message


def test_an_http_url_without_slashes_is_named_as_a_bad_url() -> None:
    with pytest.raises(InvalidRequest) as info:
        Router.parse({"task": "upscale", "image": "https:example.com/x.png"})
    assert info.value.field == "image"
    assert "not a valid URL: https: needs //host" in info.value.message and "not found" not in info.value.message
