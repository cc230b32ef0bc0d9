"""The scratch folder: where a result's files go when the store does not keep them.

With ``[store] enabled = false``, and for ``cache = "bypass"`` requests, every result's files are written to
``<store.path>/scratch/``. The folder stays under ``store.scratch_max_bytes``: the oldest files go first,
never the ones a call is returning nor any written in the last ``SCRATCH_GRACE_SECONDS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import FakePlugin, FakeProvider, section, tiny_png
from genroute.config import Settings
from genroute.errors import ConfigError
from genroute.router import Router
from genroute.store import SCRATCH_GRACE_SECONDS
from genroute.types import OutputFile, ProviderOutput, RequestModel, TextToImage


def _png(seed: int) -> bytes:
    """One output per seed, every one the same size, so the limits below count files."""
    return tiny_png() + seed.to_bytes(4, "big")


SIZE = len(_png(0))


def _png_per_seed(request: RequestModel) -> ProviderOutput:
    assert isinstance(request, TextToImage) and request.seed is not None
    return ProviderOutput(files=[OutputFile(data=_png(request.seed), media_type="image/png")])


def _image(seed: int, **fields: Any) -> TextToImage:
    return TextToImage(prompt="a lighthouse", tier="balanced", seed=seed, **fields)


def _age(directory: Path, seconds: float) -> None:
    """Make every file in ``directory`` older by ``seconds``, keeping their order (time passing)."""
    for path in directory.iterdir():
        st = path.stat()
        os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


def _scratch_files(router: Router) -> set[Path]:
    return set((router.settings.store.path / "scratch").iterdir())


@pytest.fixture
def scratch_router(
    settings_factory: Callable[..., Settings], router_factory: Callable[..., Router]
) -> Callable[..., Router]:
    def build(**store: Any) -> Router:
        provider = FakeProvider("a", output=_png_per_seed)
        return router_factory(settings_factory({"a": section("a")}, store=store), FakePlugin(provider))

    return build


def test_store_disabled_keeps_scratch_under_its_limit_oldest_first(scratch_router: Callable[..., Router]) -> None:
    router = scratch_router(enabled=False, scratch_max_bytes=2 * SIZE)
    paths = []
    for seed in range(1, 6):
        result = router.run(_image(seed))
        path = result.artifacts[0].path
        assert path.parent == router.settings.store.path / "scratch"
        assert path.read_bytes() == _png(seed)  # there, whole, when the call returns
        paths.append(path)
        _age(path.parent, 2 * SCRATCH_GRACE_SECONDS)  # the next call comes minutes later

    assert _scratch_files(router) == set(paths[-2:])  # the two newest fit; the older ones were removed
    assert sum(p.stat().st_size for p in paths[-2:]) <= 2 * SIZE


def test_bypass_requests_are_bounded_too_and_the_store_is_left_alone(scratch_router: Callable[..., Router]) -> None:
    router = scratch_router(scratch_max_bytes=SIZE)
    stored = router.run(_image(1))  # kept by the store, not in scratch
    for seed in range(2, 5):
        result = router.run(_image(seed, cache="bypass"))
        assert result.artifacts[0].path.exists()
        _age(result.artifacts[0].path.parent, 2 * SCRATCH_GRACE_SECONDS)

    assert _scratch_files(router) == {result.artifacts[0].path}
    assert stored.artifacts[0].path.exists() and router.run(_image(1)).cached


def test_a_result_larger_than_the_limit_is_still_returned_whole(scratch_router: Callable[..., Router]) -> None:
    router = scratch_router(enabled=False, scratch_max_bytes=0)
    result = router.run(_image(7))
    assert result.artifacts[0].read_bytes() == _png(7)


def test_recent_files_are_not_removed_even_over_the_limit(scratch_router: Callable[..., Router]) -> None:
    # Another caller (another process, say) may still be copying a file it was handed a moment ago.
    router = scratch_router(enabled=False, scratch_max_bytes=0)
    first = router.run(_image(1)).artifacts[0].path
    second = router.run(_image(2)).artifacts[0].path
    assert first.exists() and second.exists()

    _age(first.parent, 2 * SCRATCH_GRACE_SECONDS)
    third = router.run(_image(3)).artifacts[0].path
    assert _scratch_files(router) == {third}  # once old enough, they go


def test_a_file_handed_out_again_counts_as_new(scratch_router: Callable[..., Router]) -> None:
    router = scratch_router(enabled=False, scratch_max_bytes=2 * SIZE)
    x = router.run(_image(1)).artifacts[0].path
    _age(x.parent, 2 * SCRATCH_GRACE_SECONDS)
    y = router.run(_image(2)).artifacts[0].path
    _age(x.parent, 2 * SCRATCH_GRACE_SECONDS)
    assert router.run(_image(1)).artifacts[0].path == x  # same output again: same file, now the newest
    _age(x.parent, 2 * SCRATCH_GRACE_SECONDS)

    z = router.run(_image(3)).artifacts[0].path
    assert _scratch_files(router) == {x, z} and not y.exists()


def test_scratch_limit_is_checked(settings_factory: Callable[..., Settings]) -> None:
    assert settings_factory().store.scratch_max_bytes == 256 * 1024**2
    with pytest.raises(ConfigError, match="scratch_max_bytes"):
        settings_factory(store={"scratch_max_bytes": -1})


# -- one folder, one writer: the store's own overflow is bounded the same way ---------------------------------

BIG = 1024**2 + 1  # a result the smallest store (max_bytes = 1 MiB) cannot keep


def _big(seed: int) -> bytes:
    return _png(seed) + b"\x00" * (BIG - SIZE)


def _big_png_per_seed(request: RequestModel) -> ProviderOutput:
    assert isinstance(request, TextToImage) and request.seed is not None
    return ProviderOutput(files=[OutputFile(data=_big(request.seed), media_type="image/png")])


def test_results_too_large_for_the_store_go_to_the_bounded_scratch_folder(
    settings_factory: Callable[..., Settings], router_factory: Callable[..., Router]
) -> None:
    provider = FakeProvider("a", output=_big_png_per_seed)
    config = settings_factory({"a": section("a")}, store={"max_bytes": 1024**2, "scratch_max_bytes": 2 * BIG})
    router = router_factory(config, FakePlugin(provider))
    paths = []
    for seed in range(1, 5):
        result = router.run(_image(seed))
        path = result.artifacts[0].path
        assert path.parent == config.store.path / "scratch" and path.read_bytes() == _big(seed)
        paths.append(path)
        _age(path.parent, 2 * SCRATCH_GRACE_SECONDS)

    assert router.store is not None and router.store.get(result.request_key) is None  # not kept, as before
    assert _scratch_files(router) == set(paths[-2:])  # the store's overflow no longer piles up


def test_overflow_and_bypass_files_share_one_limit(
    settings_factory: Callable[..., Settings], router_factory: Callable[..., Router]
) -> None:
    def output(request: RequestModel) -> ProviderOutput:
        return (_big_png_per_seed if request.cache == "use" else _png_per_seed)(request)

    provider = FakeProvider("a", output=output)
    config = settings_factory({"a": section("a")}, store={"max_bytes": 1024**2, "scratch_max_bytes": BIG})
    router = router_factory(config, FakePlugin(provider))
    bypassed = router.run(_image(1, cache="bypass")).artifacts[0].path
    _age(bypassed.parent, 2 * SCRATCH_GRACE_SECONDS)
    overflow = router.run(_image(2)).artifacts[0].path

    assert _scratch_files(router) == {overflow}  # the overflow trimmed the older bypass file


def test_store_used_directly_bounds_its_overflow(tmp_path: Path) -> None:
    from genroute.store import ResultStore

    with ResultStore(tmp_path / "s", max_bytes=1024**2, scratch_max_bytes=BIG) as store:
        first = store.put("a" * 64, _result("a" * 64), [OutputFile(data=_big(1), media_type="image/png")])
        _age(store.path / "scratch", 2 * SCRATCH_GRACE_SECONDS)
        second = store.put("b" * 64, _result("b" * 64), [OutputFile(data=_big(2), media_type="image/png")])
        assert second.artifacts[0].read_bytes() == _big(2) and not first.artifacts[0].path.exists()
        assert set((store.path / "scratch").iterdir()) == {second.artifacts[0].path}


def _result(key: str) -> Any:
    from datetime import UTC, datetime
    from decimal import Decimal

    from genroute.types import Result

    return Result(
        request_key=key, task="text-to-image", provider="a", model="a/balanced", tier="balanced",
        estimated_cost=Decimal(0), actual_cost=Decimal(0), latency_seconds=0.0, created_at=datetime.now(UTC),
    )  # fmt: skip


# -- across processes: a file handed out again must not be removed under its caller -------------------------


def test_a_file_removed_just_before_it_is_handed_out_again_is_written_anew(
    scratch_router: Callable[..., Router], monkeypatch: pytest.MonkeyPatch
) -> None:
    router = scratch_router(enabled=False)
    first = router.run(_image(1)).artifacts[0].path
    touch = os.utime

    def removed_meanwhile(path: Any, *args: Any, **kwargs: Any) -> None:
        # Another process's trim removes the file between the check that it is there and the touch.
        Path(path).unlink(missing_ok=True)
        touch(path, *args, **kwargs)

    monkeypatch.setattr(os, "utime", removed_meanwhile)
    again = router.run(_image(1)).artifacts[0].path

    assert again == first and again.read_bytes() == _png(1)  # the path handed out exists


def test_a_file_handed_out_again_after_the_listing_is_not_removed(
    scratch_router: Callable[..., Router], monkeypatch: pytest.MonkeyPatch
) -> None:
    router = scratch_router(enabled=False, scratch_max_bytes=SIZE)
    old = router.run(_image(1)).artifacts[0].path
    _age(old.parent, 2 * SCRATCH_GRACE_SECONDS)
    scandir = os.scandir

    class ListingThenHandOut:
        """The listing is taken; right after it another process hands ``old`` out again (touches it)."""

        def __init__(self, path: Any) -> None:
            self._inner = scandir(path)

        def __enter__(self) -> Any:
            return self._inner.__enter__()

        def __exit__(self, *exc: Any) -> None:
            self._inner.__exit__(*exc)
            if old.exists():
                os.utime(old)

    monkeypatch.setattr(os, "scandir", ListingThenHandOut)
    new = router.run(_image(2)).artifacts[0].path

    assert new.exists() and old.read_bytes() == _png(1)  # still there for the caller it was handed to


def test_files_the_store_did_not_write_in_scratch_are_never_removed(scratch_router: Callable[..., Router]) -> None:
    router = scratch_router(scratch_max_bytes=0)
    scratch = router.settings.store.path / "scratch"
    scratch.mkdir(parents=True)
    mine = scratch / "notes.txt"
    mine.write_text("an old note of the user's, well past the grace period")
    _age(scratch, 10 * SCRATCH_GRACE_SECONDS)
    for seed in range(1, 4):
        result = router.run(_image(seed, cache="bypass"))
        _age(result.artifacts[0].path.parent, 2 * SCRATCH_GRACE_SECONDS)
    router.run(_image(9, cache="bypass"))
    assert mine.read_text().startswith("an old note")
    assert len([p for p in scratch.iterdir() if p.suffix == ".png"]) == 1  # its own old files did go
