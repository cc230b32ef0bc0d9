"""Money as :class:`~decimal.Decimal` dollars at the edges, integer micro-dollars inside the ledger.

Floats never carry money: a float given where money is expected is converted through ``str`` so that
``0.1`` means ten cents, not 0.1000000000000000055…
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000
_MICRO = Decimal("0.000001")


def to_decimal(value: Decimal | int | float | str) -> Decimal:
    """Parse a dollar amount; raise ``ValueError`` for anything that is not a finite number."""
    if isinstance(value, bool):
        raise ValueError("a dollar amount cannot be a boolean")
    try:
        amount = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, TypeError) as exc:
        raise ValueError(f"not a dollar amount: {value!r}") from exc
    if not amount.is_finite():
        raise ValueError(f"not a finite dollar amount: {value!r}")
    return amount


def usd_to_micros(amount: Decimal, *, round_up: bool = False) -> int:
    """Dollars → whole micro-dollars. Estimates round up so a reservation never undercounts."""
    rounding = ROUND_CEILING if round_up else ROUND_HALF_EVEN
    return int((amount * MICROS_PER_USD).to_integral_value(rounding=rounding))


def micros_to_usd(micros: int) -> Decimal:
    """Whole micro-dollars → dollars, exact."""
    return (Decimal(micros) / MICROS_PER_USD).quantize(_MICRO)


def quantize(amount: Decimal) -> Decimal:
    """Round a dollar amount to the micro-dollar, the ledger's resolution."""
    return amount.quantize(_MICRO, rounding=ROUND_HALF_EVEN)


def fmt_usd(amount: Decimal) -> str:
    """Human form: ``$0.003``, ``$12.50``; never scientific notation."""
    text = format(quantize(amount).normalize(), "f")
    if "." not in text or len(text.split(".")[1]) < 2:
        text = format(quantize(amount).quantize(Decimal("0.01")), "f")
    return f"${text}"
