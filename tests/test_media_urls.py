"""URL inputs are fetched by the router over real HTTP; the key holds their content hash, not the URL."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from pytest_httpserver import HTTPServer

from conftest import mock_section
from genroute.errors import InvalidRequest
from genroute.keys import request_key
from genroute.types import Upscale


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
