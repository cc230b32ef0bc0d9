"""Money as :class:`~decimal.Decimal` dollars at the edges, integer micro-dollars inside the ledger.

Floats never carry money: a float given where money is expected is converted through ``str`` so that
``0.1`` means ten cents, not 0.1000000000000000055…

Every helper here is exact for any finite amount, however large: the context's 28 digits would make
``quantize`` fail on amounts past about 10²¹ dollars, so larger ones get a context wide enough for them.
Configuration keeps amounts within :data:`MAX_USD`.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Context, Decimal, InvalidOperation, getcontext

MICROS_PER_USD = 1_000_000
_MICRO = Decimal("0.000001")
_CENT = Decimal("0.01")

MAX_USD = Decimal(10**12)
"""The largest amount a budget limit or a unit price in configuration may be: a trillion dollars."""


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


def _room(amount: Decimal) -> Context | None:
    """A context with digits enough for ``amount`` down to the micro-dollar; None when the current one has them."""
    context = getcontext()
    needed = amount.adjusted() + 8  # the digits above the point, six below it, and one to spare
    if needed <= context.prec:
        return None
    wide = context.copy()
    wide.prec = needed
    return wide


def usd_to_micros(amount: Decimal, *, round_up: bool = False) -> int:
    """Dollars → whole micro-dollars. Estimates round up so a reservation never undercounts."""
    rounding = ROUND_CEILING if round_up else ROUND_HALF_EVEN
    context = _room(amount)
    return int(amount.scaleb(6, context=context).to_integral_value(rounding=rounding, context=context))


def micros_to_usd(micros: int) -> Decimal:
    """Whole micro-dollars → dollars, exact, with six places (as the ledger reports them)."""
    return Decimal(micros).scaleb(-6, context=_room(Decimal(micros)))


def quantize(amount: Decimal) -> Decimal:
    """Round a dollar amount to the micro-dollar, the ledger's resolution (six places: ``0.003000``)."""
    return amount.quantize(_MICRO, rounding=ROUND_HALF_EVEN, context=_room(amount))


def to_micro(amount: Decimal, *, round_up: bool = False) -> Decimal:
    """``amount`` rounded to the micro-dollar and written plainly: no trailing zeros, never an exponent.

    Half to even, like a settled cost; ``round_up`` rounds toward +∞ instead, like a reservation, so an
    estimate shown is the amount the ledger holds for it.
    """
    rounding = ROUND_CEILING if round_up else ROUND_HALF_EVEN
    text = format(amount.quantize(_MICRO, rounding=rounding, context=_room(amount)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return Decimal(0) if text in ("0", "-0") else Decimal(text)


def fmt_usd(amount: Decimal) -> str:
    """Human form: ``$0.003``, ``$12.50``, ``-$0.015`` (the sign before the dollar); never scientific notation."""
    rounded = to_micro(amount)
    size = rounded.copy_abs()  # exact, where abs() would round to the context's 28 digits
    text = format(size, "f")
    if "." not in text or len(text.split(".")[1]) < 2:
        text = format(size.quantize(_CENT, context=_room(size)), "f")
    return f"-${text}" if rounded < 0 else f"${text}"
