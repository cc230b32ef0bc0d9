"""Money: Decimal dollars at the edges, integer micro-dollars inside, floats only through str."""

from __future__ import annotations

from decimal import Context, Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genroute.money import MICROS_PER_USD, fmt_usd, micros_to_usd, quantize, to_decimal, to_micro, usd_to_micros

# -- to_decimal ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.1", Decimal("0.1")),
        ("5.00", Decimal("5.00")),
        ("-2.5", Decimal("-2.5")),
        ("1e-6", Decimal("0.000001")),
        (3, Decimal(3)),
        (0, Decimal(0)),
        (10**12, Decimal(10**12)),
        (Decimal("0.003"), Decimal("0.003")),
    ],
)
def test_to_decimal_exact(value: Any, expected: Decimal) -> None:
    result = to_decimal(value)
    assert isinstance(result, Decimal)
    assert result == expected


@pytest.mark.parametrize(
    ("value", "text"), [(0.1, "0.1"), (0.3, "0.3"), (1.1, "1.1"), (0.003, "0.003"), (2.675, "2.675"), (5.0, "5.0")]
)
def test_to_decimal_float_goes_through_str(value: float, text: str) -> None:
    assert to_decimal(value) == Decimal(text)


def test_to_decimal_float_is_not_the_binary_expansion() -> None:
    assert to_decimal(0.1) != Decimal.from_float(0.1)  # what a naive conversion would give
    assert to_decimal(0.1) == Decimal("0.1")


def test_float_sum_is_exact_after_conversion() -> None:
    assert to_decimal(0.1) + to_decimal(0.2) == Decimal("0.3")


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        "NaN",
        "nan",
        "sNaN",
        "inf",
        "-Infinity",
        float("nan"),
        float("inf"),
        float("-inf"),
        "garbage",
        "",
        "1,5",
        "$5",
        None,
        [1],
        object(),
    ],
)
def test_to_decimal_rejects_with_value_error(value: Any) -> None:
    with pytest.raises(ValueError):
        to_decimal(value)


def test_to_decimal_rejects_decimal_nan() -> None:
    with pytest.raises(ValueError):
        to_decimal(Decimal("NaN"))
    with pytest.raises(ValueError):
        to_decimal(Decimal("Infinity"))


# -- micro-dollars ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usd", "micros"),
    [
        ("0", 0),
        ("0.000001", 1),
        ("0.003", 3000),
        ("1", 1_000_000),
        ("5.00", 5_000_000),
        ("123.456789", 123_456_789),
        ("-0.25", -250_000),
    ],
)
def test_micros_known_values(usd: str, micros: int) -> None:
    assert usd_to_micros(Decimal(usd)) == micros
    assert usd_to_micros(Decimal(usd), round_up=True) == micros
    assert micros_to_usd(micros) == Decimal(usd)


def test_micros_are_ints() -> None:
    assert type(usd_to_micros(Decimal("0.5"))) is int
    assert MICROS_PER_USD == 1_000_000


@pytest.mark.parametrize(
    ("usd", "up", "nearest"),
    [
        ("0.0000001", 1, 0),
        ("0.0000005", 1, 0),  # half-even: 0.5 micro → 0
        ("0.0000015", 2, 2),  # half-even: 1.5 micro → 2
        ("0.0000025", 3, 2),  # half-even: 2.5 micro → 2
        ("0.0030001", 3001, 3000),
        ("0.0000019", 2, 2),
    ],
)
def test_estimates_round_up(usd: str, up: int, nearest: int) -> None:
    assert usd_to_micros(Decimal(usd), round_up=True) == up
    assert usd_to_micros(Decimal(usd)) == nearest


def test_tiny_estimate_never_reserves_zero() -> None:
    # 1 token at 0.00025 per 1k tokens: a quarter of a micro-dollar still reserves one
    assert usd_to_micros(Decimal("0.00025") / 1000, round_up=True) == 1


def test_micros_to_usd_has_six_places() -> None:
    assert str(micros_to_usd(1)) == "0.000001"
    assert str(micros_to_usd(5_000_000)) == "5.000000"


six_decimals = st.decimals(
    min_value=Decimal("-1000000"), max_value=Decimal("1000000"), places=6, allow_nan=False, allow_infinity=False
)


@settings(max_examples=100)
@given(six_decimals)
def test_micros_round_trip(amount: Decimal) -> None:
    micros = usd_to_micros(amount)
    assert usd_to_micros(amount, round_up=True) == micros
    assert micros_to_usd(micros) == amount
    assert usd_to_micros(micros_to_usd(micros)) == micros


@settings(max_examples=100)
@given(st.lists(six_decimals, max_size=20))
def test_sum_of_micros_equals_micros_of_sum(amounts: list[Decimal]) -> None:
    assert sum(usd_to_micros(a) for a in amounts) == usd_to_micros(sum(amounts, Decimal(0)))


@settings(max_examples=100)
@given(st.decimals(min_value=Decimal(0), max_value=Decimal(1000), places=10, allow_nan=False))
def test_round_up_never_undercounts(amount: Decimal) -> None:
    up = usd_to_micros(amount, round_up=True)
    assert micros_to_usd(up) >= amount
    assert micros_to_usd(up) - amount < Decimal("0.000001")
    assert up >= usd_to_micros(amount)


@settings(max_examples=100)
@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_float_amount_is_its_shortest_repr(value: float) -> None:
    assert to_decimal(value) == Decimal(repr(value))


# -- quantize and display ------------------------------------------------------------------------------------


def test_quantize_to_micro() -> None:
    assert quantize(Decimal("0.0000015")) == Decimal("0.000002")
    assert quantize(Decimal("0.0000025")) == Decimal("0.000002")
    assert quantize(Decimal("1")) == Decimal("1.000000")


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("0.003", "$0.003"),
        ("12.5", "$12.50"),
        ("0.1", "$0.10"),
        ("0.000001", "$0.000001"),
        ("-0.015", "-$0.015"),  # budget left after a limit was lowered below what was spent
        ("-12.5", "-$12.50"),
        ("-0.000001", "-$0.000001"),
        ("-0.0000001", "$0.00"),  # rounds to nothing: no minus sign on zero
        ("-0", "$0.00"),
    ],
)
def test_fmt_usd(amount: str, text: str) -> None:
    assert fmt_usd(Decimal(amount)) == text


@settings(max_examples=100)
@given(st.decimals(min_value=Decimal(0), max_value=Decimal(10**9), allow_nan=False, allow_infinity=False))
def test_fmt_usd_never_scientific(amount: Decimal) -> None:
    text = fmt_usd(amount)
    assert text.startswith("$")
    assert "E" not in text and "e" not in text
    assert Decimal(text[1:]) == quantize(amount) or abs(Decimal(text[1:]) - amount) < Decimal("0.01")


# -- amounts of any size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", ["1e400", "1e22", "-1e30", "123456789012345678901234567890.1234561"])
def test_every_helper_takes_an_amount_past_the_contexts_28_digits(amount: str) -> None:
    value = Decimal(amount)
    assert quantize(value) == value.quantize(Decimal("0.000001"), context=Context(prec=500))
    micros = usd_to_micros(value)
    assert micros == int(value.quantize(Decimal("0.000001"), context=Context(prec=500)).scaleb(6, Context(prec=500)))
    assert usd_to_micros(value, round_up=True) == micros + (1 if amount.endswith("4561") else 0)
    assert micros_to_usd(micros) == quantize(value)
    text = fmt_usd(value)
    assert "E" not in text and Decimal(text.replace("$", "")) == quantize(value).quantize(
        Decimal("0.000001"), context=Context(prec=500)
    )


@pytest.mark.parametrize(
    ("amount", "up", "text"),
    [
        ("0.0001600000000000000000000000000", False, "0.00016"),
        (str(Decimal("0.006") / 60), False, "0.0001"),
        ("0.0000095", True, "0.00001"),
        ("0.0000095", False, "0.00001"),
        ("0.0000005", False, "0"),
        ("-0.0000001", False, "0"),
        ("5.000000", False, "5"),
        ("1E+2", False, "100"),
        ("0.003000", False, "0.003"),
        ("-0.0150", False, "-0.015"),
    ],
)
def test_to_micro_is_plain_and_rounded(amount: str, up: bool, text: str) -> None:
    assert str(to_micro(Decimal(amount), round_up=up)) == text
