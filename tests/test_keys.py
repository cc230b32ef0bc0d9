"""The result store key: stable, blind to how a request is carried out, and sensitive to every other field."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from genroute.keys import canonical_request, request_key
from genroute.media import MediaCheck, MediaInput
from genroute.types import REQUEST_TYPES, TASKS, RequestModel, TextGeneration, TextToImage, TextToVideo

PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 40
OTHER_PNG = b"\x89PNG\r\n\x1a\n" + b"\x02" * 40
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x01" * 32
MEDIA_HEADS = {"image": PNG[:8], "audio": WAV[:12]}  # what each kind of media field needs its bytes to start with


def media_defaults(cls: type[RequestModel]) -> dict[str, Any]:
    """Required fields filled with simple valid values."""
    values: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        if not field.is_required():
            continue
        if field.annotation is MediaInput:
            values[name] = WAV if _bounds(field).get("kind") == "audio" else PNG
        elif field.annotation is str:
            values[name] = "a prompt"
        else:  # pragma: no cover - a new required field type needs a value here
            raise AssertionError(f"no sample value for required field {cls.__name__}.{name}")
    return values


def minimal(task: str) -> RequestModel:
    cls = REQUEST_TYPES[task]  # type: ignore[index]
    return cls.model_validate(media_defaults(cls))


# -- stability ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_same_request_same_key(task: str) -> None:
    assert request_key(minimal(task)) == request_key(minimal(task))
    key = request_key(minimal(task))
    assert len(key) == 64 and int(key, 16) >= 0


@pytest.mark.parametrize("task", TASKS)
def test_defaults_given_or_omitted_same_key(task: str) -> None:
    cls = REQUEST_TYPES[task]  # type: ignore[index]
    base = media_defaults(cls)
    explicit = dict(base)
    for name, field in cls.model_fields.items():
        if not field.is_required():
            explicit[name] = field.get_default(call_default_factory=True)
    assert request_key(cls.model_validate(explicit)) == request_key(cls.model_validate(base))


@pytest.mark.parametrize("task", TASKS)
def test_keys_differ_between_tasks(task: str) -> None:
    keys = {request_key(minimal(t)) for t in TASKS}
    assert len(keys) == len(TASKS)


def test_int_and_float_spelling_same_key() -> None:
    a = TextToVideo(prompt="x", duration_seconds=4)
    b = TextToVideo(prompt="x", duration_seconds=4.0)
    assert request_key(a) == request_key(b)
    c = TextGeneration(prompt="x", temperature=1)
    d = TextGeneration(prompt="x", temperature=1.0)
    assert request_key(c) == request_key(d)


def test_key_does_not_depend_on_field_order() -> None:
    a = TextToImage.model_validate({"prompt": "x", "seed": 3, "tier": "fast"})
    b = TextToImage.model_validate({"tier": "fast", "seed": 3, "prompt": "x"})
    assert request_key(a) == request_key(b)


# -- non-key fields ------------------------------------------------------------------------------------


def test_non_key_fields_are_cache_and_deadline() -> None:
    assert set(TextToImage.NON_KEY_FIELDS) == {"cache", "deadline_seconds"}


@pytest.mark.parametrize("task", TASKS)
def test_cache_and_deadline_do_not_change_key(task: str) -> None:
    cls = REQUEST_TYPES[task]  # type: ignore[index]
    base = media_defaults(cls)
    key = request_key(cls.model_validate(base))
    for cache in ("use", "refresh", "bypass"):
        for deadline in (None, 1, 30.5, 86400):
            other = cls.model_validate({**base, "cache": cache, "deadline_seconds": deadline})
            assert request_key(other) == key
    canonical = canonical_request(cls.model_validate(base))
    assert "cache" not in canonical and "deadline_seconds" not in canonical


# -- media by content ------------------------------------------------------------------------------------


def test_media_path_and_bytes_same_key(tmp_path: Path) -> None:
    path = tmp_path / "img.png"
    path.write_bytes(PNG)
    by_path = REQUEST_TYPES["upscale"].model_validate({"image": str(path)})
    by_path_obj = REQUEST_TYPES["upscale"].model_validate({"image": path})
    by_bytes = REQUEST_TYPES["upscale"].model_validate({"image": PNG})
    assert request_key(by_path) == request_key(by_bytes) == request_key(by_path_obj)


def test_media_key_ignores_file_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(PNG)
    b.write_bytes(PNG)
    ra = REQUEST_TYPES["remove-background"].model_validate({"image": a})
    rb = REQUEST_TYPES["remove-background"].model_validate({"image": b})
    assert request_key(ra) == request_key(rb)


def test_different_media_bytes_different_key() -> None:
    a = REQUEST_TYPES["upscale"].model_validate({"image": PNG})
    b = REQUEST_TYPES["upscale"].model_validate({"image": OTHER_PNG})
    assert request_key(a) != request_key(b)


def test_file_rewritten_changes_key(tmp_path: Path) -> None:
    path = tmp_path / "img.png"
    path.write_bytes(PNG)
    before = request_key(REQUEST_TYPES["upscale"].model_validate({"image": path}))
    path.write_bytes(OTHER_PNG)
    after = request_key(REQUEST_TYPES["upscale"].model_validate({"image": path}))
    assert before != after


def test_inpaint_image_and_mask_are_not_interchangeable() -> None:
    a = REQUEST_TYPES["inpaint"].model_validate({"prompt": "x", "image": PNG, "mask": OTHER_PNG})
    b = REQUEST_TYPES["inpaint"].model_validate({"prompt": "x", "image": OTHER_PNG, "mask": PNG})
    assert request_key(a) != request_key(b)


def test_canonical_form_holds_hash_not_bytes() -> None:
    request = REQUEST_TYPES["upscale"].model_validate({"image": PNG})
    canonical = canonical_request(request)
    assert canonical["image"] == {"sha256": MediaInput.parse(PNG).sha256}


def test_unfetched_url_has_no_key() -> None:
    from genroute.errors import InvalidRequest

    request = REQUEST_TYPES["upscale"].model_validate({"image": "https://example.com/a.png"})
    with pytest.raises(InvalidRequest):
        request_key(request)


# -- every key field changes the key -----------------------------------------------------------------------


def _bounds(field: FieldInfo) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for meta in field.metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            if isinstance(meta, annotated_types.BaseMetadata) and getattr(meta, attr, None) is not None:
                found[attr] = getattr(meta, attr)
        if isinstance(meta, MediaCheck):
            found["kind"] = meta.kind
    return found


def _strategy_for_type(tp: Any, b: dict[str, Any], where: str) -> st.SearchStrategy[Any]:
    origin = get_origin(tp)
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_strategy_for_type(arg, b, where) for arg in get_args(tp)))
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        lo = b.get("ge", b["gt"] + 1 if "gt" in b else -(2**31))
        hi = b.get("le", b["lt"] - 1 if "lt" in b else 2**31)
        return st.integers(lo, hi)
    if tp is float:
        return st.floats(
            min_value=b.get("ge", b.get("gt", -1e6)),
            max_value=b.get("le", b.get("lt", 1e6)),
            exclude_min="gt" in b,
            exclude_max="lt" in b,
            allow_nan=False,
            allow_infinity=False,
        )
    if tp is str:
        return st.text(min_size=b.get("min_length", 0), max_size=min(b.get("max_length", 40), 40))
    if tp is MediaInput:
        head = MEDIA_HEADS[b["kind"]] if "kind" in b else b""
        return st.binary(min_size=0 if head else 1, max_size=64).map(lambda body: head + body)
    raise AssertionError(f"{where}: no value strategy for type {tp!r}; teach test_keys about it")


KEY_FIELDS = [
    (task, name)
    for task in TASKS
    for name in REQUEST_TYPES[task].model_fields  # type: ignore[index]
    if name not in REQUEST_TYPES[task].NON_KEY_FIELDS  # type: ignore[index]
    and name != "task"  # one fixed value per model: the discriminator
]


def _bases(task: str) -> list[dict[str, Any]]:
    """Valid starting points; visual requests need one with a size and one with a ratio."""
    cls = REQUEST_TYPES[task]  # type: ignore[index]
    base = media_defaults(cls)
    out = [base]
    if "width" in cls.model_fields:
        out.append({**base, "width": 512, "height": 768})
        out.append({**base, "aspect_ratio": "16:9"})
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, MediaInput) and isinstance(b, MediaInput):
        return a.sha256 == b.sha256
    return bool(type(a) is type(b) and a == b)


def test_every_request_field_is_covered() -> None:
    covered = {name for _, name in KEY_FIELDS}
    everything = {name for cls in REQUEST_TYPES.values() for name in cls.model_fields}
    assert everything - covered == {"task", "cache", "deadline_seconds"}
    for task, name in KEY_FIELDS:  # a new field must have a strategy, or this fails
        field = REQUEST_TYPES[task].model_fields[name]  # type: ignore[index]
        _strategy_for_type(field.annotation, _bounds(field), f"{task}.{name}")


@pytest.mark.parametrize(("task", "name"), KEY_FIELDS, ids=[f"{t}.{n}" for t, n in KEY_FIELDS])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_changing_any_key_field_changes_key(task: str, name: str, data: st.DataObject) -> None:
    cls = REQUEST_TYPES[task]  # type: ignore[index]
    field = cls.model_fields[name]
    value = data.draw(_strategy_for_type(field.annotation, _bounds(field), f"{task}.{name}"), label=name)
    for base in _bases(task):
        try:
            original = cls.model_validate(base)
            changed = cls.model_validate({**base, name: value})
        except ValidationError:
            continue  # this base cannot take that value (say, width without height); try the next
        if _same(getattr(original, name), getattr(changed, name)):
            continue
        assert request_key(changed) != request_key(original), (name, getattr(original, name), value)
        return
    reject()  # no base takes a different value here; hypothesis fails the test if that is always so
