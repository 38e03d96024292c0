"""Money: integer minor units with an ISO 4217 currency. Never float.

The exponent table covers the currencies a payments team meets in practice; a
currency outside it is not supported (the request declines currency_not_supported)
rather than guessed at.
"""

from __future__ import annotations

from decimal import Context, Decimal, DecimalException, Inexact, InvalidOperation

# ISO 4217 minor-unit exponents (number of decimal places).
CURRENCY_EXPONENTS: dict[str, int] = {
    # 0 decimals
    "JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "VND": 0, "XOF": 0, "UGX": 0,
    # 2 decimals
    "USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "SEK": 2, "NOK": 2, "DKK": 2, "PLN": 2,
    "CZK": 2, "HUF": 2, "CAD": 2, "AUD": 2, "NZD": 2, "SGD": 2, "HKD": 2, "CNY": 2, "INR": 2,
    "MXN": 2, "BRL": 2, "ZAR": 2, "TRY": 2, "ILS": 2, "AED": 2, "RON": 2,
    # 3 decimals
    "KWD": 3, "BHD": 3, "OMR": 3, "JOD": 3, "TND": 3, "LYD": 3, "IQD": 3,
}  # fmt: skip

# Avro `long`: the largest amount any message can carry.
AMOUNT_MINOR_MAX = 2**63 - 1

# Scaling must be exact: an Inexact result means digits would be silently dropped.
_EXACT = Context(prec=100, traps=[InvalidOperation, Inexact])


class MoneyError(ValueError):
    """An amount or currency that cannot be represented exactly."""


def exponent(currency: str) -> int:
    """Minor-unit exponent of ``currency``; raises MoneyError for an unknown code."""
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise MoneyError(f"unknown ISO 4217 currency {currency!r}") from None


def to_minor(amount: str | Decimal | int, currency: str) -> int:
    """Parse a major-unit amount ("12.34") into minor units, refusing lost precision.

    "12.345 EUR" is an error, not 1234 or 1235: a payments API must not guess.
    """
    try:
        value = Decimal(str(amount)) if not isinstance(amount, Decimal) else amount
    except InvalidOperation:
        raise MoneyError(f"{amount!r} is not a decimal amount") from None
    if not value.is_finite():
        raise MoneyError(f"{amount!r} is not a finite amount")
    try:
        scaled = value.scaleb(exponent(currency), context=_EXACT)
    except DecimalException:
        raise MoneyError(f"{amount} {currency} cannot be represented in minor units") from None
    if scaled != scaled.to_integral_value():
        raise MoneyError(f"{amount} {currency} has more than {exponent(currency)} decimal places")
    # Compare before int(): converting a huge exponent ("1e999990") to int takes minutes.
    if abs(scaled) > AMOUNT_MINOR_MAX:
        raise MoneyError(f"{amount} {currency} exceeds the largest representable amount")
    return int(scaled)


def to_major(amount_minor: int, currency: str) -> Decimal:
    """Minor units back to an exact Decimal in major units."""
    return Decimal(amount_minor).scaleb(-exponent(currency))


def format_money(amount_minor: int, currency: str) -> str:
    """Human form with the currency's exact number of decimals: ``12.30 EUR``."""
    places = exponent(currency)
    major = to_major(amount_minor, currency)
    return f"{major:.{places}f} {currency}"
