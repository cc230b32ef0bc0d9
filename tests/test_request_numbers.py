"""Number fields of requests take finite numbers only: NaN or infinity is refused as such, naming the field."""

from __future__ import annotations

import math
from typing import get_args

import pytest

from genroute.errors import InvalidRequest
from genroute.router import Router
from genroute.types import REQUEST_TYPES, TASKS
from request_samples import good

# Every (task, field) whose value is a float: fields added later are covered without touching this test.
FLOAT_FIELDS = [
    (task, name)
    for task in TASKS
    for name, info in REQUEST_TYPES[task].model_fields.items()
    if float in (get_args(info.annotation) or (info.annotation,))
]


def test_the_float_fields_are_found() -> None:
    found = {name for _, name in FLOAT_FIELDS}
    assert {"deadline_seconds", "strength", "temperature", "duration_seconds"} <= found


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(("task", "name"), FLOAT_FIELDS)
def test_nan_or_infinity_is_refused_as_not_finite(task: str, name: str, value: float) -> None:
    with pytest.raises(InvalidRequest) as info:
        Router.parse({**good(task), name: value})

    assert info.value.field == name
    assert info.value.message == f"{name}: must be a finite number, not {value}"
    assert "correct the named field" in info.value.hint


@pytest.mark.parametrize(("task", "name"), FLOAT_FIELDS)
def test_a_finite_number_in_range_is_still_taken(task: str, name: str) -> None:
    request = Router.parse({**good(task), name: 0.5})
    assert getattr(request, name) == 0.5
